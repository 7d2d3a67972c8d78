"""Declared summary grains: which partial sums are kept beside the rows, at which dimensions.

A *grain* is data, not code: a name (the kind of its summary files), the dimensions it keeps
rows for (tenant first: files are cut into batches by tenant), and the measures it stores under
which column names. Every data file of 1,024 rows or more has a summary file of each grain,
and aligned blocks of days (*spans*) have one combined from their files; the planner reads one
instead of the rows wherever a grain covers a report (see ``planner``).

A grain serves a measure it stores, and also one it can derive: ``success_requests`` from the
requests of a grain that keeps ``status_code``, the sums over rows with a model from a grain
that keeps ``model_id`` (see ``metrics.MEASURES``).

The two grains below answer the two reports of the source system; they keep their file names
and column names from earlier versions, so that datasets written then are read as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa

from .kernels import KEY_TYPE, as_table, group_sums, ints, with_key_type
from .metrics import MEASURES, holds, measure_values

__all__ = [
    "GRAINS",
    "INPUT_COLUMNS",
    "Grain",
    "combine",
    "encode_keys",
    "rollup",
    "rollups",
]


@dataclass(frozen=True)
class Grain:
    """A declared summary: one row per distinct ``dims`` tuple of the rows it summarizes, with
    the sums of ``stored`` (canonical measure name -> column name in its files)."""

    name: str
    dims: tuple[str, ...]
    stored: Mapping[str, str]

    @property
    def columns(self) -> tuple[str, ...]:
        """The row columns its summaries are computed from."""
        out = dict.fromkeys(self.dims)
        for name in self.stored:
            m = MEASURES[name]
            out.update(dict.fromkeys(c for c in (m.column, m.subtract) if c))
            if m.when:
                out[m.when[0]] = None
        return tuple(out)

    def _source(self, name: str) -> tuple[str, str | None] | None:
        """The stored columns a measure is derived from (its own, or its sum minus another)."""
        if name in self.stored:
            return self.stored[name], None
        m = MEASURES[name]
        total = "requests" if m.column is None else f"sum_{m.column}"
        if total not in self.stored or (m.when is not None and m.when[0] not in self.dims):
            return None
        if m.subtract is None:
            return self.stored[total], None
        other = f"sum_{m.subtract}"
        return (self.stored[total], self.stored[other]) if other in self.stored else None

    def provides(self, measures: Iterable[str]) -> bool:
        """Whether every one of ``measures`` is stored or derivable."""
        return all(self._source(name) is not None for name in measures)

    def measure(self, table: pa.Table, name: str) -> np.ndarray:
        """The values of measure ``name`` in a summary table of this grain, per row."""
        source = self._source(name)
        if source is None:
            raise KeyError(f"grain {self.name!r} cannot give {name!r}")
        column, minus = source
        values = ints(table.column(column))
        if minus is not None:
            values = values - ints(table.column(minus))
        m = MEASURES[name]
        if name not in self.stored and m.when is not None:
            values = np.where(holds(table, m.when), values, 0)
        return values

    def compute(self, rows: pa.Table) -> pa.Table:
        """This grain's summary of ``rows`` (the columns of :attr:`columns`), sorted by its
        dimensions, tenant first."""
        sums = {}
        for name, column in self.stored.items():
            sums[column] = measure_values(rows, name)
        return group_sums(rows, self.dims, sums)

    def combine(self, parts: Iterable[pa.Table]) -> pa.Table:
        """Summaries of disjoint sets of rows combined into one, sorted by the dimensions."""
        tables = [p for p in parts if p.num_rows]
        sums = list(self.stored.values())
        if not tables:
            empty = {k: pa.array([], KEY_TYPE) for k in self.dims}
            return pa.table({**empty, **{s: pa.array([], pa.int64()) for s in sums}})
        keys = [with_key_type(t.select(list(self.dims)), self.dims) for t in tables]
        both = keys[0] if len(keys) == 1 else pa.concat_tables(keys)
        values = {s: np.concatenate([ints(t.column(s)) for t in tables]) for s in sums}
        return group_sums(both, self.dims, values)


#: The grains every large data file and every span has summaries of.
GRAINS: Final = (
    Grain(
        "summary",
        ("tenant", "api_method"),
        {
            "requests": "total_requests",
            "success_requests": "success_requests",
            "sum_latency_ms": "latency_sum",
        },
    ),
    Grain(
        "groups",
        ("tenant", "api_key_id", "user_id", "model_id"),
        {
            "requests": "total_requests",
            "sum_prompt_tokens": "total_prompt_tokens",
            "sum_completion_tokens": "total_completion_tokens",
            "sum_latency_ms": "latency_sum",
            "sum_time_to_first_token_ms": "ttft_sum",
        },
    ),
)
_BY_NAME: Final = {g.name: g for g in GRAINS}
#: The row columns every grain's summaries are computed from.
INPUT_COLUMNS: Final = tuple(dict.fromkeys(c for g in GRAINS for c in g.columns))


def encode_keys(rows: pa.Table | pd.DataFrame) -> pa.Table:
    """The input columns, their string dimensions dictionary-encoded once for every grain."""
    keys = list(dict.fromkeys(k for g in GRAINS for k in g.dims))
    return with_key_type(as_table(rows, INPUT_COLUMNS), keys)


def rollup(kind: str, rows: pa.Table | pd.DataFrame) -> pa.Table:
    """The summary of grain ``kind`` of ``rows``.

    Example:
        >>> df = pd.DataFrame({"tenant": ["t1", "t0"], "api_method": ["a", "a"],
        ...     "status_code": [200, 404], "latency_ms": [10, 20]})
        >>> rollup("summary", df).to_pandas()
          tenant api_method  total_requests  success_requests  latency_sum
        0     t0          a               1                 0           20
        1     t1          a               1                 1           10
    """
    grain = _BY_NAME.get(kind)
    if grain is None:
        raise ValueError(f"not a grain: {kind!r}")
    table = rows if isinstance(rows, pa.Table) else as_table(rows, list(rows.columns))
    return grain.compute(table)


def rollups(rows: pa.Table | pd.DataFrame) -> dict[str, pa.Table]:
    """The summaries of every grain of ``rows``, by grain name."""
    encoded = encode_keys(rows)
    return {g.name: g.compute(encoded) for g in GRAINS}


def combine(kind: str, parts: Iterable[pa.Table]) -> pa.Table:
    """Summaries of grain ``kind`` of disjoint sets of rows combined into one.

    Example:
        >>> part = rollups(pd.DataFrame({"tenant": ["t"], "api_method": ["a"],
        ...     "status_code": [200], "latency_ms": [10], "api_key_id": ["k"], "user_id": ["u"],
        ...     "model_id": ["m"], "prompt_tokens": [1], "completion_tokens": [3],
        ...     "time_to_first_token_ms": [5]}))["summary"]
        >>> combine("summary", [part, part]).to_pandas()
          tenant api_method  total_requests  success_requests  latency_sum
        0      t          a               2                 2           20
    """
    return _BY_NAME[kind].combine(parts)


def grain(name: str) -> Grain:
    """The grain of summary files of kind ``name``."""
    return _BY_NAME[name]
