"""``Prices``: a price table for the cost metrics.

A price is per million prompt tokens and per million completion tokens of one model, in the
currency of the table, optionally in force from a timestamp on (prices change; a row is priced
by the price in force at its timestamp). Rows without tokens cost nothing and need no price;
a model with tokens in a report and no price in force is never priced at 0: the report raises
:class:`~usage_analytics.MissingPriceError` listing those models, unless the table was built
with ``missing="nan"`` (their costs are then NaN).

Example:
    >>> prices = Prices.from_dict({"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.6)})
    >>> prices.frame()
          model_id  prompt_per_1m  completion_per_1m effective_from
    0       gpt-4o           2.50               10.0            NaT
    1  gpt-4o-mini           0.15                0.6            NaT
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import pandas as pd
import pandera.errors
import pandera.pandas as pdr
import pyarrow as pa

from ..errors import InvalidArgumentError, MissingPriceError, ValidationError

__all__ = ["PRICES_SCHEMA", "Prices"]

_COLUMNS: Final = ("model_id", "prompt_per_1m", "completion_per_1m", "effective_from")

PRICES_SCHEMA: Final = pdr.DataFrameSchema(
    {
        "model_id": pdr.Column(str, nullable=False),
        "prompt_per_1m": pdr.Column(
            float, [pdr.Check.ge(0), pdr.Check(np.isfinite, name="finite")], nullable=False
        ),
        "completion_per_1m": pdr.Column(
            float, [pdr.Check.ge(0), pdr.Check(np.isfinite, name="finite")], nullable=False
        ),
        "effective_from": pdr.Column("datetime64[ns, UTC]", nullable=True),
    },
    unique=["model_id", "effective_from"],
    strict=True,
    coerce=True,
    name="prices",
)


@dataclass(frozen=True, eq=False)
class Prices:
    """A validated price table; build it with :meth:`from_dict`, :meth:`from_frame` or
    :meth:`read_csv`."""

    _frame: pd.DataFrame  # sorted by model_id, then effective_from (NaT first)
    missing: Literal["error", "nan"] = "error"

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls,
        prices: Mapping[str, tuple[float, float]],
        *,
        missing: Literal["error", "nan"] = "error",
    ) -> Prices:
        """Prices from ``{model_id: (prompt_per_1m, completion_per_1m)}``, in force always."""
        if not isinstance(prices, Mapping):
            raise InvalidArgumentError(
                "Prices.from_dict takes {model_id: (prompt_per_1m, completion_per_1m)}, not "
                f"{type(prices).__name__}"
            )
        rows = []
        for model, pair in prices.items():
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise InvalidArgumentError(
                    f"the price of {model!r} must be (prompt_per_1m, completion_per_1m), not "
                    f"{pair!r}"
                )
            rows.append((model, pair[0], pair[1], pd.NaT))
        return cls.from_frame(pd.DataFrame(rows, columns=list(_COLUMNS)), missing=missing)

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, *, missing: Literal["error", "nan"] = "error"
    ) -> Prices:
        """Prices from a frame with columns ``model_id, prompt_per_1m, completion_per_1m`` and
        optionally ``effective_from`` (a time; naive times are UTC; empty: in force always).

        Raises:
            ValidationError: a price is negative or not a number, a (model, effective_from)
                pair repeats, or a column is missing or unknown.
        """
        if missing not in ("error", "nan"):
            raise InvalidArgumentError(f"missing must be 'error' or 'nan', not {missing!r}")
        if not isinstance(frame, pd.DataFrame):
            raise InvalidArgumentError(
                f"Prices.from_frame takes a DataFrame, not {type(frame).__name__}"
            )
        frame = frame.copy()
        if "effective_from" not in frame:
            frame["effective_from"] = pd.NaT
        frame["effective_from"] = _utc_times(frame["effective_from"])
        try:
            checked = PRICES_SCHEMA.validate(frame, lazy=True)
        except pandera.errors.SchemaErrors as exc:
            cases = exc.failure_cases
            lines = [
                f"  - column {c!r}: check {k!r} failed for {v!r}"
                for c, k, v in cases[["column", "check", "failure_case"]]
                .head(10)
                .itertuples(index=False)
            ]
            raise ValidationError(
                f"{len(cases)} problem(s) in the price table:\n" + "\n".join(lines), cases
            ) from None
        checked = checked[list(_COLUMNS)].sort_values(
            ["model_id", "effective_from"], na_position="first", kind="stable"
        )
        return cls(checked.reset_index(drop=True), missing)

    @classmethod
    def read_csv(
        cls, path: str | os.PathLike[str], *, missing: Literal["error", "nan"] = "error"
    ) -> Prices:
        """Prices from a CSV file with the columns of :meth:`from_frame`."""
        try:
            frame = pd.read_csv(
                path, dtype={"model_id": str}, keep_default_na=False, na_values={"": []}
            )
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"cannot read prices from {path}: {exc}") from exc
        for name in ("prompt_per_1m", "completion_per_1m"):
            if name in frame:
                frame[name] = pd.to_numeric(frame[name], errors="coerce")
        if "effective_from" in frame:
            frame["effective_from"] = frame["effective_from"].replace("", None)
        return cls.from_frame(frame, missing=missing)

    # -- reading -----------------------------------------------------------------------------

    def frame(self) -> pd.DataFrame:
        """The table: ``model_id, prompt_per_1m, completion_per_1m, effective_from``."""
        return self._frame.copy()

    def __repr__(self) -> str:
        return f"Prices({len(self._frame)} prices of {self._frame['model_id'].nunique()} models)"

    @functools.cached_property
    def _starts(self) -> np.ndarray:
        """effective_from of each row as int64 ns (NaT, in force always, as the int64 minimum)."""
        eff = self._frame["effective_from"].dt.tz_localize(None)
        return np.asarray(eff.to_numpy(dtype="datetime64[ns]").view(np.int64))

    def lookup(self, model: pa.ChunkedArray | pa.Array, timestamps: np.ndarray) -> np.ndarray:
        """The row of the price in force for each (model, timestamp), as int32; -1 where none
        is."""
        out = np.full(len(timestamps), -1, dtype=np.int32)
        if not len(out):
            return out
        encoded = model.dictionary_encode() if not pa.types.is_dictionary(model.type) else model
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        names = encoded.dictionary.to_pylist()
        codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        starts = self._starts
        models = self._frame["model_id"].to_numpy()
        # A model of one price (the common case) is priced by a lookup of its code; those of
        # several, from the one in force at each timestamp.
        only_row = np.full(len(names), -1, dtype=np.int32)
        only_start = np.full(len(names), np.iinfo(np.int64).max, dtype=np.int64)
        several: list[tuple[int, np.ndarray]] = []
        for code, name in enumerate(names):
            rows = np.flatnonzero(models == name)
            if len(rows) == 1:
                only_row[code], only_start[code] = rows[0], starts[rows[0]]
            elif len(rows):
                several.append((code, rows))
        out = np.where(timestamps >= only_start[codes], only_row[codes], -1).astype(np.int32)
        for code, rows in several:
            mine = np.flatnonzero(codes == code)
            at = np.searchsorted(starts[rows], timestamps[mine], side="right") - 1
            out[mine] = np.where(at >= 0, rows[np.maximum(at, 0)], -1)
        return out

    def constant_over(self, first: int, last: int) -> bool:
        """Whether no price changes in ``(first, last]``: rows of that time can be priced by
        the price in force at ``first``."""
        starts = self._starts
        return not bool(((starts > first) & (starts <= last)).any())

    def price_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Prompt and completion prices per million tokens, by row."""
        return (
            self._frame["prompt_per_1m"].to_numpy(dtype=np.float64),
            self._frame["completion_per_1m"].to_numpy(dtype=np.float64),
        )

    def costs(
        self,
        group: np.ndarray,
        model: pa.Array,
        price: np.ndarray,
        prompt: np.ndarray,
        completion: np.ndarray,
        groups: int,
    ) -> dict[str, np.ndarray]:
        """Prompt, completion and total cost per group of priced token sums.

        Raises:
            MissingPriceError: tokens of a model without a price in force (``missing="error"``).
        """
        has_tokens = (prompt > 0) | (completion > 0)  # pieces without tokens cost nothing
        unpriced = (price < 0) & has_tokens
        if unpriced.any():
            names = sorted(set(model.take(pa.array(np.flatnonzero(unpriced))).to_pylist()))
            if self.missing == "error":
                raise MissingPriceError(
                    f"{len(names)} model(s) have tokens in the window and no price in force: "
                    + ", ".join(repr(n) for n in names[:20])
                    + ("" if len(names) <= 20 else f" and {len(names) - 20} more")
                    + "; add them to the price table, or build it with missing='nan' to get "
                    "NaN costs for them",
                    names,
                )
        # Unpriced pieces index one past the prices: NaN.
        at = np.where(price < 0, len(self._frame), price)
        out = {}
        for name, tokens, per_1m in zip(
            ("prompt_cost", "completion_cost"),
            (prompt, completion),
            self.price_arrays(),
            strict=True,
        ):
            values = np.where(has_tokens, tokens * np.append(per_1m, np.nan)[at] / 1e6, 0.0)
            total = np.zeros(groups)
            np.add.at(total, group, values)
            out[name] = total
        out["cost"] = out["prompt_cost"] + out["completion_cost"]
        return out


def _utc_times(values: pd.Series) -> pd.Series:
    """Times (or empty values) as UTC nanosecond timestamps; naive times are UTC."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.as_unit("ns")
    try:
        parsed: Any = pd.to_datetime(values, utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(
            f"effective_from holds values that are not times: {exc}"
        ) from exc
    return parsed.dt.as_unit("ns")
