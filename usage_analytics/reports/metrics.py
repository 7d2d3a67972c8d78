"""The metric registry: what each metric needs from a partial, and how it finishes.

A metric names the exact partial pieces it is computed from: integer sums (*measures*, summed
per group), the distribution of a column (for percentiles), the distinct values of a column (for
distinct counts), or priced token sums (for costs). Partials of disjoint rows combine exactly
(see ``kernels``), and each metric finishes once, from the combined pieces: averages from sums
and counts, percentiles from distributions, distinct counts from sets, never from other
averages.

Example:
    >>> [m.name for m in parse_metrics(["requests", "latency_ms_p95"])]
    ['requests', 'latency_ms_p95']
    >>> parse_metrics(["latency_ms_p95"])[0].needs.hists
    frozenset({'latency_ms'})
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidArgumentError
from .kernels import ints

if TYPE_CHECKING:
    from .combined import Combined

__all__ = [
    "DEFAULT_METRICS",
    "DISTRIBUTION_COLUMNS",
    "MEASURES",
    "Measure",
    "Metric",
    "Needs",
    "holds",
    "measure_array",
    "measure_values",
    "metric_names",
    "parse_metrics",
]

#: Columns whose means and exact percentiles a report can ask for (int milliseconds).
DISTRIBUTION_COLUMNS: Final = (
    "latency_ms",
    "time_to_first_token_ms",
    "runtime_latency_ms",
    "runtime_time_to_first_token_ms",
)
SUMMED_COLUMNS: Final = ("prompt_tokens", "completion_tokens", *DISTRIBUTION_COLUMNS)
SUCCESS_STATUS: Final = 200

DEFAULT_METRICS: Final = (
    "requests",
    "success_requests",
    "failure_requests",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms_mean",
)


@dataclass(frozen=True)
class Measure:
    """An integer sum kept per group: of ``column`` (1 per row when None), minus ``subtract``,
    over the rows where ``when`` holds (a dimension, "==" or "!=", a value)."""

    name: str
    column: str | None = None
    subtract: str | None = None
    when: tuple[str, Literal["==", "!="], object] | None = None


MEASURES: Final[dict[str, Measure]] = {
    m.name: m
    for m in (
        Measure("requests"),
        Measure("success_requests", when=("status_code", "==", SUCCESS_STATUS)),
        *(Measure(f"sum_{c}", c) for c in SUMMED_COLUMNS),
        # completion_tokens_per_s: over the rows with a model only.
        Measure("model_completion_tokens", "completion_tokens", when=("model_id", "!=", "")),
        Measure(
            "model_generation_ms",
            "latency_ms",
            subtract="time_to_first_token_ms",
            when=("model_id", "!=", ""),
        ),
    )
}


@dataclass(frozen=True)
class Needs:
    """The partial pieces a set of metrics is computed from."""

    measures: frozenset[str] = frozenset({"requests"})
    hists: frozenset[str] = frozenset()
    distinct: frozenset[str] = frozenset()
    cost: bool = False

    def __or__(self, other: Needs) -> Needs:
        return Needs(
            self.measures | other.measures,
            self.hists | other.hists,
            self.distinct | other.distinct,
            self.cost or other.cost,
        )

    @property
    def columns(self) -> frozenset[str]:
        """The row columns these pieces are computed from (apart from the keys)."""
        out: set[str] = set(self.hists) | set(self.distinct)
        for name in self.measures:
            m = MEASURES[name]
            out.update(c for c in (m.column, m.subtract) if c)
            if m.when:
                out.add(m.when[0])
        if self.cost:
            out.update(("model_id", "timestamp", "prompt_tokens", "completion_tokens"))
        return frozenset(out)


@dataclass(frozen=True)
class Metric:
    """One metric: its result column, dtype, the pieces it needs, how it finishes, and its
    value for a bucket without rows (0 for counts and sums, NaN for the rest)."""

    name: str
    dtype: Literal["int64", "float64"]
    needs: Needs
    finish: Callable[[Combined], np.ndarray] = field(compare=False)
    is_cost: bool = False

    @property
    def fill(self) -> float:
        return 0 if self.dtype == "int64" or self.is_cost else math.nan


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator as float64, NaN where the denominator is 0."""
    den = np.asarray(denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out: np.ndarray = np.asarray(numerator, dtype=np.float64) / den
    out[den == 0] = np.nan
    return out


def _base(name: str) -> Callable[[Combined], np.ndarray]:
    return lambda c: c.base[name]


def _needs(*measures: str, **other: object) -> Needs:
    return Needs(frozenset({"requests", *measures}), **other)  # type: ignore[arg-type]


def _fixed_metrics() -> dict[str, Metric]:
    out = [
        Metric("requests", "int64", _needs(), _base("requests")),
        Metric("success_requests", "int64", _needs("success_requests"), _base("success_requests")),
        Metric(
            "failure_requests",
            "int64",
            _needs("success_requests"),
            lambda c: c.base["requests"] - c.base["success_requests"],
        ),
        Metric(
            "error_rate",
            "float64",
            _needs("success_requests"),
            lambda c: _ratio(c.base["requests"] - c.base["success_requests"], c.base["requests"]),
        ),
        Metric("prompt_tokens", "int64", _needs("sum_prompt_tokens"), _base("sum_prompt_tokens")),
        Metric(
            "completion_tokens",
            "int64",
            _needs("sum_completion_tokens"),
            _base("sum_completion_tokens"),
        ),
        Metric(
            "total_tokens",
            "int64",
            _needs("sum_prompt_tokens", "sum_completion_tokens"),
            lambda c: c.base["sum_prompt_tokens"] + c.base["sum_completion_tokens"],
        ),
        Metric(
            "users",
            "int64",
            _needs(distinct=frozenset({"user_id"})),
            lambda c: c.count_distinct("user_id"),
        ),
        Metric(
            "api_keys",
            "int64",
            _needs(distinct=frozenset({"api_key_id"})),
            lambda c: c.count_distinct("api_key_id"),
        ),
        Metric(
            "completion_tokens_per_s",
            "float64",
            _needs("model_completion_tokens", "model_generation_ms"),
            lambda c: _ratio(
                c.base["model_completion_tokens"], c.base["model_generation_ms"] / 1000.0
            ),
        ),
    ]
    for column in DISTRIBUTION_COLUMNS:
        total = f"sum_{column}"
        out.append(
            Metric(
                f"{column}_mean",
                "float64",
                _needs(total),
                lambda c, t=total: _ratio(c.base[t], c.base["requests"]),  # type: ignore[misc]
            )
        )
    for kind in ("prompt_cost", "completion_cost", "cost"):
        out.append(
            Metric(
                kind,
                "float64",
                _needs(cost=True),
                lambda c, k=kind: c.costs[k],  # type: ignore[misc]
                is_cost=True,
            )
        )
    return {m.name: m for m in out}


_FIXED: Final = _fixed_metrics()
_PERCENTILE: Final = re.compile(
    r"(?P<column>" + "|".join(DISTRIBUTION_COLUMNS) + r")_p(?P<q>\d+(?:\.\d+)?)"
)


def metric_names() -> list[str]:
    """The metrics a report can ask for (percentiles as one pattern per column)."""
    return [*_FIXED, *(f"{c}_p<q>" for c in DISTRIBUTION_COLUMNS)]


def _percentile(name: str) -> Metric | None:
    match = _PERCENTILE.fullmatch(name)
    if match is None:
        return None
    q = float(match["q"])
    if not 0 < q <= 100:
        raise InvalidArgumentError(
            f"metric {name!r}: the percentile must be in (0, 100], not {match['q']}; "
            f"for example {match['column']}_p95 or {match['column']}_p99.9"
        )
    column = match["column"]
    return Metric(
        name,
        "float64",
        Needs(frozenset({"requests"}), hists=frozenset({column})),
        lambda c: c.quantile(column, q / 100.0),
    )


def parse_metrics(names: Iterable[object]) -> tuple[Metric, ...]:
    """The metrics of ``names``, in order.

    Raises:
        InvalidArgumentError: a name is not a metric, or repeats.
    """
    out: list[Metric] = []
    for name in names:
        if not isinstance(name, str):
            raise InvalidArgumentError(
                f"metrics must be metric names (str), not {type(name).__name__} ({name!r})"
            )
        metric = _FIXED.get(name) or _percentile(name)
        if metric is None:
            close = difflib.get_close_matches(name, [*_FIXED, *_examples()], n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise InvalidArgumentError(
                f"unknown metric {name!r}{hint} Metrics: {', '.join(metric_names())} "
                "(q in (0, 100], e.g. latency_ms_p95)"
            )
        if any(m.name == name for m in out):
            raise InvalidArgumentError(f"metric {name!r} is given twice")
        out.append(metric)
    if not out:
        raise InvalidArgumentError("metrics is empty: give at least one metric, or None")
    return tuple(out)


def _examples() -> Sequence[str]:
    return [f"{c}_p{q}" for c in DISTRIBUTION_COLUMNS for q in (50, 95, 99)]


def measure_values(rows: pa.Table | pd.DataFrame, name: str) -> np.ndarray:
    """Measure ``name`` of each row, as integers of the column's own width where that holds
    every value (int64 for a difference)."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pandas(rows)
    m = MEASURES[name]
    if m.column is None:
        if m.when is not None:
            return holds(table, m.when).astype(np.int8)
        return np.ones(table.num_rows, dtype=np.int8)
    column = table.column(m.column)
    values = np.asarray(column.to_numpy() if column.num_chunks == 1 else ints(column))
    if m.subtract is not None:
        values = values.astype(np.int64) - ints(table.column(m.subtract))
    if m.when is not None:
        values = np.where(holds(table, m.when), values, 0)
    return values


def measure_array(rows: pa.Table, name: str) -> pa.Array | pa.ChunkedArray:
    """Measure ``name`` of each row, as a pyarrow array (computed in C++, for aggregations)."""
    m = MEASURES[name]
    if m.column is None:
        values: pa.Array | pa.ChunkedArray = pa.repeat(pa.scalar(1, pa.int8()), rows.num_rows)
    else:
        values = rows.column(m.column)
        if m.subtract is not None:
            values = pc.subtract(values.cast(pa.int64()), rows.column(m.subtract))
    if m.when is not None:
        dim, op, value = m.when
        column = rows.column(dim)
        if pa.types.is_dictionary(column.type):
            column = column.cast(pa.string())
        test = pc.equal(column, value) if op == "==" else pc.not_equal(column, value)
        values = pc.if_else(test, values, pa.scalar(0, values.type))
    return values


def holds(table: pa.Table, when: tuple[str, str, object]) -> np.ndarray:
    """Whether ``dim == value`` (or ``!=``) holds in each row of ``table``."""
    dim, op, value = when
    column = table.column(dim)
    if pa.types.is_dictionary(column.type):
        column = column.cast(pa.string())
    mask = np.asarray(pc.equal(column, value).to_numpy(zero_copy_only=False), dtype=bool)
    return mask if op == "==" else ~mask
