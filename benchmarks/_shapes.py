"""The report shapes of the engine, as the store runs them and as DuckDB SQL over the same files.

Each shape is one question a user of usage data asks (tokens per model per day, errors per
method per hour in New York, latency percentiles per model, active users per day, cost per API
key, every tenant by status class, one organization by project and model). The store answers
with ``Store.report``; DuckDB answers the same question with hand-written SQL that returns the
same frame (dense buckets included), so the two are checked equal before either is timed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from usage_analytics import Prices, Store

from ._engines import ResultMismatchError

__all__ = [
    "SHAPES",
    "Context",
    "DuckDBShapes",
    "Shape",
    "StoreShapes",
    "check_same_frame",
    "context_for",
    "prices_for",
]

_NS_DAY: Final = 86_400 * 10**9
_NS_HOUR: Final = 3_600 * 10**9
REL_TOL: Final = 1e-9


@dataclass(frozen=True)
class Shape:
    """A report shape: the keywords of ``Store.report`` and the DuckDB SQL of the same result.

    The SQL is a template with ``{source}``, ``{where}`` (tenant and window), ``{start}``,
    ``{end}``, ``{first_bucket}``, ``{prices}`` and ``{organization}``.
    """

    name: str
    title: str
    report: Mapping[str, Any]
    sql: str
    all_tenants: bool = False
    tz: str = "UTC"
    bucket_ns: int | None = None  # the width of its buckets, which are whole UTC days or hours
    needs: tuple[str, ...] = field(default=())  # "prices", "organization"


_STATUS_CLASS: Final = (
    "CASE WHEN status_code BETWEEN 100 AND 599 THEN CAST(status_code // 100 AS VARCHAR) || 'xx' "
    "ELSE 'other' END"
)

SHAPES: Final[dict[str, Shape]] = {
    s.name: s
    for s in (
        Shape(
            "tokens_by_model_day",
            "1: tokens and requests per model per day",
            {
                "by": "model_id",
                "every": "1d",
                "metrics": ["requests", "prompt_tokens", "completion_tokens"],
            },
            """
            WITH src AS (SELECT * FROM read_parquet({source}) WHERE {where}),
            agg AS (
                SELECT ("timestamp" // 86400000000000) * 86400000000000 AS bucket, model_id,
                       COUNT(*) AS requests, CAST(SUM(prompt_tokens) AS BIGINT) AS p,
                       CAST(SUM(completion_tokens) AS BIGINT) AS c
                FROM src GROUP BY ALL),
            series AS (SELECT DISTINCT model_id FROM agg),
            buckets AS (SELECT range AS bucket FROM range({first_bucket}, {end}, 86400000000000))
            SELECT b.bucket, s.model_id, COALESCE(a.requests, 0) AS requests,
                   COALESCE(a.p, 0) AS prompt_tokens, COALESCE(a.c, 0) AS completion_tokens
            FROM buckets b CROSS JOIN series s LEFT JOIN agg a USING (bucket, model_id)
            ORDER BY b.bucket, s.model_id
            """,
            bucket_ns=_NS_DAY,
        ),
        Shape(
            "errors_by_method_hour_ny",
            "2: requests and error rate per API method per hour, America/New_York",
            {
                "by": "api_method",
                "every": "1h",
                "tz": "America/New_York",
                "metrics": ["requests", "error_rate"],
            },
            # New York's offsets are whole hours, so its wall-clock hours are the UTC hours
            # (the repeated hour in November is two of them, as the store has it).
            """
            WITH src AS (SELECT * FROM read_parquet({source}) WHERE {where}),
            agg AS (
                SELECT ("timestamp" // 3600000000000) * 3600000000000 AS bucket, api_method,
                       COUNT(*) AS requests,
                       SUM(CASE WHEN status_code = 200 THEN 0 ELSE 1 END) AS failures
                FROM src GROUP BY ALL),
            series AS (SELECT DISTINCT api_method FROM agg),
            buckets AS (SELECT range AS bucket FROM range({first_bucket}, {end}, 3600000000000))
            SELECT b.bucket, s.api_method, COALESCE(a.requests, 0) AS requests,
                   a.failures / a.requests AS error_rate
            FROM buckets b CROSS JOIN series s LEFT JOIN agg a USING (bucket, api_method)
            ORDER BY b.bucket, s.api_method
            """,
            tz="America/New_York",
            bucket_ns=_NS_HOUR,
        ),
        Shape(
            "latency_percentiles_by_model",
            "3: latency p50/p95/p99 and time-to-first-token p95 per model",
            {
                "by": "model_id",
                "metrics": [
                    "latency_ms_p50",
                    "latency_ms_p95",
                    "latency_ms_p99",
                    "time_to_first_token_ms_p95",
                ],
            },
            """
            SELECT model_id,
                   quantile_cont(latency_ms, 0.5) AS latency_ms_p50,
                   quantile_cont(latency_ms, 0.95) AS latency_ms_p95,
                   quantile_cont(latency_ms, 0.99) AS latency_ms_p99,
                   quantile_cont(time_to_first_token_ms, 0.95) AS time_to_first_token_ms_p95
            FROM read_parquet({source}) WHERE {where}
            GROUP BY model_id ORDER BY model_id
            """,
        ),
        Shape(
            "users_by_day",
            "4: distinct users per day",
            {"every": "1d", "metrics": ["users"]},
            """
            WITH src AS (SELECT * FROM read_parquet({source}) WHERE {where}),
            agg AS (
                SELECT ("timestamp" // 86400000000000) * 86400000000000 AS bucket,
                       COUNT(DISTINCT user_id) AS users
                FROM src GROUP BY ALL),
            buckets AS (SELECT range AS bucket FROM range({first_bucket}, {end}, 86400000000000))
            SELECT b.bucket, COALESCE(a.users, 0) AS users
            FROM buckets b LEFT JOIN agg a USING (bucket) ORDER BY b.bucket
            """,
            bucket_ns=_NS_DAY,
        ),
        Shape(
            "cost_by_key_top20",
            "5: cost per API key, the top 20 by cost",
            {"by": "api_key_id", "metrics": ["cost"], "top": 20, "order_by": "cost"},
            """
            WITH src AS (SELECT * FROM read_parquet({source}) WHERE {where}),
            prices(model_id, p, c) AS (VALUES {prices}),
            per_model AS (
                SELECT api_key_id, model_id, SUM(prompt_tokens) AS pt,
                       SUM(completion_tokens) AS ct
                FROM src GROUP BY ALL),
            cost AS (
                SELECT api_key_id, SUM(pt * p / 1e6) + SUM(ct * c / 1e6) AS cost
                FROM per_model JOIN prices USING (model_id) GROUP BY api_key_id),
            top AS (SELECT * FROM cost ORDER BY cost DESC, api_key_id LIMIT 20)
            SELECT api_key_id, cost FROM top ORDER BY api_key_id
            """,
            needs=("prices",),
        ),
        Shape(
            "tenants_by_status_class_day",
            "6: every tenant, requests per tenant and status class per day",
            {"by": ["tenant", "status_class"], "every": "1d", "metrics": ["requests"]},
            """
            WITH src AS (SELECT * FROM read_parquet({source}) WHERE {where}),
            agg AS (
                SELECT ("timestamp" // 86400000000000) * 86400000000000 AS bucket, tenant,
                       """
            + _STATUS_CLASS
            + """ AS status_class, COUNT(*) AS requests
                FROM src GROUP BY ALL),
            series AS (SELECT DISTINCT tenant, status_class FROM agg),
            buckets AS (SELECT range AS bucket FROM range({first_bucket}, {end}, 86400000000000))
            SELECT b.bucket, s.tenant, s.status_class, COALESCE(a.requests, 0) AS requests
            FROM buckets b CROSS JOIN series s
                LEFT JOIN agg a USING (bucket, tenant, status_class)
            ORDER BY b.bucket, s.tenant, s.status_class
            """,
            all_tenants=True,
            bucket_ns=_NS_DAY,
        ),
        Shape(
            "organization_by_project_model_day",
            "7: one organization, requests and tokens per project and model per day",
            {
                "by": ["project", "model_id"],
                "every": "1d",
                "metrics": ["requests", "prompt_tokens", "completion_tokens"],
            },
            """
            WITH src AS (
                SELECT * FROM read_parquet({source})
                WHERE {where} AND organization = {organization}),
            agg AS (
                SELECT ("timestamp" // 86400000000000) * 86400000000000 AS bucket, project,
                       model_id, COUNT(*) AS requests, CAST(SUM(prompt_tokens) AS BIGINT) AS p,
                       CAST(SUM(completion_tokens) AS BIGINT) AS c
                FROM src GROUP BY ALL),
            series AS (SELECT DISTINCT project, model_id FROM agg),
            buckets AS (SELECT range AS bucket FROM range({first_bucket}, {end}, 86400000000000))
            SELECT b.bucket, s.project, s.model_id, COALESCE(a.requests, 0) AS requests,
                   COALESCE(a.p, 0) AS prompt_tokens, COALESCE(a.c, 0) AS completion_tokens
            FROM buckets b CROSS JOIN series s LEFT JOIN agg a USING (bucket, project, model_id)
            ORDER BY b.bucket, s.project, s.model_id
            """,
            bucket_ns=_NS_DAY,
            needs=("organization",),
        ),
    )
}

#: Example prices per million tokens of the benchmark's models (not a real price list).
_PRICES: Final = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "o3-mini": (1.10, 4.40),
    "llama-3.1-8b-instruct": (0.05, 0.08),
    "llama-3.1-70b-instruct": (0.60, 0.80),
    "text-embedding-3-small": (0.02, 0.00),
    "text-embedding-3-large": (0.13, 0.00),
}


#: The price of a model the example list lacks (the benchmark needs every model priced).
_OTHER_PRICE: Final = (1.00, 3.00)


def prices_for(models: list[str]) -> dict[str, tuple[float, float]]:
    """A price for each model id: the example price where there is one, else ``_OTHER_PRICE``;
    the empty model id (calls without tokens) costs nothing."""
    return {m: (0.0, 0.0) if m == "" else _PRICES.get(m, _OTHER_PRICE) for m in sorted(models)}


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class Context:
    """What a shape needs beyond its window: the price table and the organization."""

    prices: dict[str, tuple[float, float]]
    organization: str


class StoreShapes:
    """The shapes as ``Store.report`` runs them."""

    def __init__(self, root: Path, context: Context) -> None:
        self.store = Store(root)
        self.prices = Prices.from_dict(context.prices)
        self.context = context

    def run(self, shape: Shape, tenant: str, start_ns: int, end_ns: int) -> pd.DataFrame:
        kwargs = dict(shape.report)
        if "prices" in shape.needs:
            kwargs["prices"] = self.prices
        if "organization" in shape.needs:
            kwargs["where"] = {"organization": self.context.organization}
        return self.store.report(None if shape.all_tenants else tenant, start_ns, end_ns, **kwargs)

    def close(self) -> None:
        """Nothing to release."""


class DuckDBShapes:
    """The shapes as DuckDB SQL over ``<root>/date=*/*.parquet``, one connection reused."""

    def __init__(self, root: Path, context: Context) -> None:
        import duckdb  # here: the store's memory is measured without it

        self.source = _sql_text(str(root / "date=*" / "*.parquet"))
        self.con = duckdb.connect()
        self.context = context

    def sql(self, shape: Shape, tenant: str, start_ns: int, end_ns: int) -> str:
        where = f'"timestamp" >= {start_ns} AND "timestamp" < {end_ns}'
        if not shape.all_tenants:
            where = f"tenant = {_sql_text(tenant)} AND {where}"
        first = start_ns
        if shape.bucket_ns is not None:
            first = start_ns - start_ns % shape.bucket_ns
        prices = ", ".join(
            f"({_sql_text(m)}, {p!r}, {c!r})" for m, (p, c) in self.context.prices.items()
        )
        return shape.sql.format(
            source=self.source,
            where=where,
            start=start_ns,
            end=end_ns,
            first_bucket=first,
            prices=prices,
            organization=_sql_text(self.context.organization),
        )

    def run(self, shape: Shape, tenant: str, start_ns: int, end_ns: int) -> pd.DataFrame:
        return self.con.execute(self.sql(shape, tenant, start_ns, end_ns)).df()

    def close(self) -> None:
        self.con.close()


def _bucket_ns(values: pd.Series) -> np.ndarray:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return np.asarray(values.dt.tz_convert("UTC").dt.as_unit("ns").array.asi8, dtype=np.int64)
    return np.asarray(values.to_numpy(), dtype=np.int64)


def check_same_frame(reference: pd.DataFrame, other: pd.DataFrame, what: str) -> None:
    """Raise :class:`ResultMismatchError` unless ``other`` equals the store's ``reference``:
    same columns and rows in the same order; buckets as instants, strings and integers exact,
    floats within a relative ``1e-9`` (NaN equal to NaN)."""
    if list(reference.columns) != list(other.columns):
        raise ResultMismatchError(
            f"{what}: columns {list(other.columns)}, the store has {list(reference.columns)}"
        )
    if len(reference) != len(other):
        raise ResultMismatchError(f"{what}: {len(other)} rows, the store returned {len(reference)}")
    for name in reference.columns:
        mine, theirs = reference[name], other[name]
        if name == "bucket":
            same = np.array_equal(_bucket_ns(mine), _bucket_ns(theirs))
        elif mine.dtype.kind == "f":
            a = mine.to_numpy(dtype=np.float64)
            b = theirs.to_numpy(dtype=np.float64, na_value=np.nan)
            same = all(
                (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=REL_TOL)
                for x, y in zip(a, b, strict=True)
            )
        elif mine.dtype.kind in "iu":
            same = np.array_equal(mine.to_numpy(dtype=np.int64), theirs.to_numpy(dtype=np.int64))
        else:
            same = mine.astype(str).tolist() == theirs.astype(str).tolist()
        if not same:
            raise ResultMismatchError(f"{what}: column {name!r} differs")


def context_for(root: Path, tenant: str) -> Context:
    """The price table of every model of the dataset, and a mid-sized organization of the
    busiest tenant (the median of its organizations by rows), read from the data."""
    import duckdb

    files = [str(p) for p in Store(root).files()]
    con = duckdb.connect()
    try:
        models = [
            r[0]
            for r in con.execute(f"SELECT DISTINCT model_id FROM read_parquet({files})").fetchall()
        ]
        orgs = con.execute(
            f"SELECT organization, COUNT(*) AS n FROM read_parquet({files}) "
            f"WHERE tenant = {_sql_text(tenant)} GROUP BY 1 ORDER BY n DESC, organization"
        ).fetchall()
    finally:
        con.close()
    return Context(prices_for(models), orgs[len(orgs) // 2][0])
