"""The two reports as run by each engine, and the check that two engines agree.

Every engine answers ``run(query, tenant, start_ns, end_ns)`` with a DataFrame whose columns and
row order are those of the store's report, so results can be compared cell by cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import duckdb
import numpy as np
import numpy.typing as npt
import pandas as pd

from usage_analytics import Store

__all__ = [
    "QUERIES",
    "SPECS",
    "DuckDBEngine",
    "Engine",
    "QuerySpec",
    "ResultMismatchError",
    "StoreEngine",
    "check_same",
]

AVERAGE_REL_TOL: Final = 1e-9


class ResultMismatchError(AssertionError):
    """Two engines returned different results for the same query."""


@dataclass(frozen=True)
class QuerySpec:
    """The columns of one report, by how they are compared."""

    keys: tuple[str, ...]
    counts: tuple[str, ...]
    averages: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column of the report, in order."""
        return (*self.keys, *self.counts, *self.averages)


SPECS: Final[dict[str, QuerySpec]] = {
    "aggregated_usage": QuerySpec(
        keys=("api_method",),
        counts=("total_requests", "success_requests", "failure_requests"),
        averages=("average_latency",),
    ),
    "get_usages_by_groups": QuerySpec(
        keys=("api_key_id", "user_id", "model_id"),
        counts=("total_requests", "total_prompt_tokens", "total_completion_tokens"),
        averages=("average_latency", "average_time_to_first_token"),
    ),
}
QUERIES: Final[tuple[str, ...]] = tuple(SPECS)


class Engine(Protocol):
    """Something that answers the two reports."""

    def run(self, query: str, tenant: str, start_ns: int, end_ns: int) -> pd.DataFrame:
        """The report ``query`` for ``tenant`` over ``[start_ns, end_ns)``."""
        ...

    def close(self) -> None:
        """Release what the engine holds."""
        ...


class StoreEngine:
    """``usage_analytics.Store``'s own reports."""

    def __init__(self, root: Path) -> None:
        self.store = Store(root)

    def run(self, query: str, tenant: str, start_ns: int, end_ns: int) -> pd.DataFrame:
        """Call the store method named ``query``."""
        if query == "aggregated_usage":
            return self.store.aggregated_usage(tenant, start_ns, end_ns)
        if query == "get_usages_by_groups":
            return self.store.get_usages_by_groups(tenant, start_ns, end_ns)
        raise ValueError(f"unknown query {query!r}")

    def close(self) -> None:
        """Nothing to release."""


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


DUCKDB_SQL: Final[dict[str, str]] = {
    "aggregated_usage": """
        SELECT api_method,
               COUNT(*) AS total_requests,
               CAST(SUM(CASE WHEN status_code = 200 THEN 1 ELSE 0 END) AS BIGINT)
                   AS success_requests,
               CAST(SUM(CASE WHEN status_code = 200 THEN 0 ELSE 1 END) AS BIGINT)
                   AS failure_requests,
               AVG(latency_ms) AS average_latency
        FROM read_parquet({source}, hive_partitioning = true)
        WHERE tenant = {tenant} AND "timestamp" >= {start} AND "timestamp" < {end}
        GROUP BY api_method
        ORDER BY api_method
    """,
    "get_usages_by_groups": """
        SELECT api_key_id, user_id, model_id,
               COUNT(*) AS total_requests,
               CAST(SUM(prompt_tokens) AS BIGINT) AS total_prompt_tokens,
               CAST(SUM(completion_tokens) AS BIGINT) AS total_completion_tokens,
               AVG(latency_ms) AS average_latency,
               AVG(time_to_first_token_ms) AS average_time_to_first_token
        FROM read_parquet({source}, hive_partitioning = true)
        WHERE tenant = {tenant} AND "timestamp" >= {start} AND "timestamp" < {end}
        GROUP BY api_key_id, user_id, model_id
        ORDER BY api_key_id, user_id, model_id
    """,
}


class DuckDBEngine:
    """DuckDB over the dataset's files, one in-process connection reused across runs.

    The query names the tenant and the bounds as literals, so that DuckDB sees constants it
    can push into the Parquet scan, and reads ``<root>/date=*/*.parquet`` with hive partitioning.
    """

    def __init__(self, root: Path) -> None:
        self.source = _sql_text(str(root / "date=*" / "*.parquet"))
        self.con = duckdb.connect()

    def sql(self, query: str, tenant: str, start_ns: int, end_ns: int) -> str:
        """The SQL text of ``query``."""
        return DUCKDB_SQL[query].format(
            source=self.source, tenant=_sql_text(tenant), start=int(start_ns), end=int(end_ns)
        )

    def run(self, query: str, tenant: str, start_ns: int, end_ns: int) -> pd.DataFrame:
        """Run ``query`` and fetch it as a DataFrame."""
        return self.con.execute(self.sql(query, tenant, start_ns, end_ns)).df()

    def close(self) -> None:
        """Close the connection."""
        self.con.close()


def _as_int64(values: pd.Series, what: str) -> npt.NDArray[np.int64]:
    array = np.asarray(values.to_numpy())
    if array.dtype.kind in "iu":
        return np.asarray(array, dtype=np.int64)
    as_float = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.trunc(as_float)):
        raise ResultMismatchError(f"{what}: non-integer values in a count column")
    return np.asarray(as_float, dtype=np.int64)


def check_same(query: str, reference: pd.DataFrame, other: pd.DataFrame, what: str) -> None:
    """Raise :class:`ResultMismatchError` unless ``other`` equals ``reference``.

    Keys and counts must be equal exactly and in the same order; averages within a relative
    tolerance of ``1e-9``.
    """
    spec = SPECS[query]
    if list(reference.columns) != list(spec.columns):
        raise ResultMismatchError(
            f"{what}: the reference has columns {list(reference.columns)}, "
            f"expected {list(spec.columns)}"
        )
    if list(other.columns) != list(spec.columns):
        raise ResultMismatchError(
            f"{what}: columns {list(other.columns)}, expected {list(spec.columns)}"
        )
    if len(other) != len(reference):
        raise ResultMismatchError(f"{what}: {len(other)} rows, the store returned {len(reference)}")
    for name in spec.keys:
        mine, theirs = reference[name].astype(str).tolist(), other[name].astype(str).tolist()
        if mine != theirs:
            i = next(i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b)
            raise ResultMismatchError(
                f"{what}: column {name!r} differs at row {i}: {theirs[i]!r}, store {mine[i]!r}"
            )
    for name in spec.counts:
        mine_i = _as_int64(reference[name], f"{what} (store)")
        theirs_i = _as_int64(other[name], what)
        if not np.array_equal(mine_i, theirs_i):
            i = int(np.flatnonzero(mine_i != theirs_i)[0])
            raise ResultMismatchError(
                f"{what}: column {name!r} differs at row {i}: {theirs_i[i]}, store {mine_i[i]}"
            )
    for name in spec.averages:
        mine_f = reference[name].to_numpy(dtype=np.float64)
        theirs_f = other[name].to_numpy(dtype=np.float64)
        for i, (a, b) in enumerate(zip(mine_f, theirs_f, strict=True)):
            if not math.isclose(a, b, rel_tol=AVERAGE_REL_TOL, abs_tol=0.0):
                raise ResultMismatchError(
                    f"{what}: column {name!r} differs at row {i}: {b!r}, store {a!r} "
                    f"(relative tolerance {AVERAGE_REL_TOL:g})"
                )
