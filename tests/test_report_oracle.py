"""``Store.report`` against an independent oracle: DuckDB SQL over ``store.files()``.

The oracle below is written from the report contract alone (the docstring of ``Store.report``
and the README), not from the engine's code: rows are filtered, bucketed, grouped and
aggregated by DuckDB, the dense skeleton and the top groups are assembled in plain Python.
Random data (skewed tenants and users, rows on day, bucket and DST boundaries and one
nanosecond either side, empty model ids, every status class including 0, 99, 600 and 999) and
random reports are compared after appends, deletes, compaction and a schema upgrade. Integers
must be equal exactly; means, percentiles and costs to 1e-9 relative; buckets exactly. Every
report is also run with summaries switched off and must give the same frame.
"""

from __future__ import annotations

import math
import random
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from _crash_worker import make_v1

from usage_analytics import (
    InvalidArgumentError,
    MissingPriceError,
    Not,
    Prices,
    Store,
    _layout,
)

# -- the contract's vocabulary ----------------------------------------------------------------

TZS = ("UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe")
SUB_DAY = {"1min": 1, "5min": 5, "15min": 15, "1h": 60}  # width in minutes
CALENDAR = {"1d": "day", "1w": "week", "1mo": "month"}
EVERY = (*SUB_DAY, *CALENDAR)
DIMS = (
    "tenant",
    "organization",
    "project",
    "user_id",
    "api_key_id",
    "api_method",
    "model_id",
    "status_code",
    "status_class",
)
TIMED = (
    "latency_ms",
    "time_to_first_token_ms",
    "runtime_latency_ms",
    "runtime_time_to_first_token_ms",
)
INT_METRICS = frozenset(
    {
        "requests",
        "success_requests",
        "failure_requests",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "users",
        "api_keys",
    }
)
COST_METRICS = ("prompt_cost", "completion_cost", "cost")
DEFAULT_METRICS = (
    "requests",
    "success_requests",
    "failure_requests",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms_mean",
)
TIMED_RE = re.compile(
    r"(runtime_latency_ms|runtime_time_to_first_token_ms|latency_ms|time_to_first_token_ms)"
    r"_(?:(mean)|p(\d+(?:\.\d+)?))"
)

NS_US = 1_000
NS_MIN = 60 * 10**9
NS_HOUR = 60 * NS_MIN
NS_DAY = 24 * NS_HOUR
NAT_EFFECTIVE = -(2**62)  # an effective_from of NaT: in force before any dated price


def ns(text: str) -> int:
    """Nanoseconds since the epoch of an ISO time (naive: UTC)."""
    stamp = pd.Timestamp(text)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.value)


#: The DST changes near the data, as UTC instants (test_transitions_are_real checks them).
TRANSITIONS = {
    "America/New_York": ("2025-11-02T06:00Z", "2026-03-08T07:00Z", "2026-11-01T06:00Z"),
    "Europe/Berlin": ("2025-10-26T01:00Z", "2026-03-29T01:00Z", "2026-10-25T01:00Z"),
    "Australia/Lord_Howe": ("2025-10-04T15:30Z", "2026-04-04T15:00Z", "2026-10-03T15:30Z"),
}
ALL_TRANSITIONS = sorted(ns(t) for ts in TRANSITIONS.values() for t in ts)


# -- the SQL oracle ---------------------------------------------------------------------------


def _lit(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(int(value))


def _offset_us(expr: str, tz: str) -> str:
    """The UTC offset of tz at the TIMESTAMPTZ ``expr``, in microseconds."""
    return f"(epoch_us(timezone('{tz}', {expr})) - epoch_us({expr}))"


def bucket_sql(tz: str, every: str, src: str) -> str:
    """``SELECT us, b``: the bucket start ``b`` (µs since the epoch) of each instant ``us`` (µs)
    of table ``src``, in the wall clock of ``tz``."""
    if every in CALENDAR:
        unit = CALENDAR[every]
        local = f"timezone('{tz}', make_timestamp(us)::TIMESTAMPTZ)"
        return (
            f"SELECT us, epoch_us(timezone('{tz}', date_trunc('{unit}', {local}))) AS b FROM {src}"
        )
    width = SUB_DAY[every]
    # wall: local wall clock; off: the instant's UTC offset; inst: the floored wall time taken
    # back to UTC with that offset. When the offset at inst differs (a change inside the slice)
    # the bucket starts at the first minute from inst on whose offset is the row's.
    return f"""
        WITH p AS (SELECT us, make_timestamp(us - us % 60000000)::TIMESTAMPTZ AS m FROM {src}),
        s AS (
            SELECT us, m, {_offset_us("m", tz)} AS off,
                   epoch_us(time_bucket(INTERVAL {width} MINUTE, timezone('{tz}', m))) AS fl
            FROM p
        ),
        s2 AS (SELECT us, m, off, make_timestamp(fl - off)::TIMESTAMPTZ AS inst FROM s)
        SELECT us, epoch_us(
            CASE WHEN {_offset_us("inst", tz)} = off THEN inst ELSE (
                SELECT min(g) FROM generate_series(inst, m, INTERVAL 1 MINUTE) AS t(g)
                WHERE {_offset_us("g", tz)} = off
            ) END
        ) AS b
        FROM s2
    """


def _cost_sql(expr: str) -> str:
    need = "(prompt_tokens + completion_tokens > 0)"
    return (
        f"CASE WHEN bool_or({need} AND pp IS NULL) THEN NULL "
        f"ELSE coalesce(sum(CASE WHEN {need} THEN {expr} ELSE 0.0 END), 0.0) END"
    )


def metric_sql(name: str) -> str:
    """The aggregate of one metric over the rows ``r`` of a group."""
    fail = "(count(*) - count_if(status_code = 200))"
    model = "FILTER (WHERE model_id <> '')"
    simple = {
        "requests": "count(*)",
        "success_requests": "count_if(status_code = 200)::BIGINT",
        "failure_requests": f"{fail}::BIGINT",
        "error_rate": f"{fail}::DOUBLE / count(*)::DOUBLE",
        "prompt_tokens": "sum(prompt_tokens)::BIGINT",
        "completion_tokens": "sum(completion_tokens)::BIGINT",
        "total_tokens": "sum(prompt_tokens::BIGINT + completion_tokens::BIGINT)::BIGINT",
        "users": "count(DISTINCT user_id)",
        "api_keys": "count(DISTINCT api_key_id)",
        "completion_tokens_per_s": (
            f"(sum(completion_tokens) {model})::DOUBLE / NULLIF("
            f"(sum(latency_ms::BIGINT - time_to_first_token_ms) {model})::DOUBLE / 1000.0, 0.0)"
        ),
        "prompt_cost": _cost_sql("prompt_tokens * pp / 1e6"),
        "completion_cost": _cost_sql("completion_tokens * pc / 1e6"),
        "cost": _cost_sql("prompt_tokens * pp / 1e6 + completion_tokens * pc / 1e6"),
    }
    if name in simple:
        return simple[name]
    match = TIMED_RE.fullmatch(name)
    assert match, name
    col, mean, q = match.groups()
    if mean:
        return f"sum({col})::DOUBLE / count(*)::DOUBLE"
    return f"quantile_cont({col}, {float(q) / 100.0!r})"


@dataclass(frozen=True)
class PriceTable:
    """The oracle's copy of a price table: rows of (model, effective_from ns or None, prompt
    price, completion price) per million tokens."""

    rows: tuple[tuple[str, int | None, float, float], ...]
    missing: str = "error"
    form: str = "frame_utc"  # frame_utc, frame_naive, frame_ny or dict

    def build(self) -> Prices:
        if self.form == "dict":
            assert all(eff is None for _, eff, _, _ in self.rows)
            return Prices.from_dict(
                {m: (p, c) for m, _, p, c in self.rows},
                missing=self.missing,  # type: ignore[arg-type]
            )
        eff = pd.Series(
            [
                pd.NaT if e is None else pd.Timestamp(e, unit="ns", tz="UTC")
                for _, e, _, _ in self.rows
            ],
            dtype="datetime64[ns, UTC]",
        )
        if self.form == "frame_naive":
            eff = eff.dt.tz_localize(None)
        elif self.form == "frame_ny":
            eff = eff.dt.tz_convert("America/New_York")
        frame = pd.DataFrame(
            {
                "model_id": [m for m, _, _, _ in self.rows],
                "prompt_per_1m": [p for _, _, p, _ in self.rows],
                "completion_per_1m": [c for _, _, _, c in self.rows],
                "effective_from": eff,
            }
        )
        return Prices.from_frame(frame, missing=self.missing)  # type: ignore[arg-type]


@dataclass
class Case:
    """One report request, in the oracle's terms (``kwargs()`` gives the store's)."""

    tenant_id: str | None
    start: int
    end: int
    by: tuple[str, ...] = ()
    every: str | None = None
    tz: str = "UTC"
    where: tuple[tuple[str, tuple[Any, ...], bool, bool], ...] = ()  # dim, values, negated, scalar
    metrics: tuple[str, ...] | None = None
    prices: str | None = None
    top: int | None = None
    order_by: str | None = None
    by_as_str: bool = False
    bounds_as_timestamps: bool = False

    def metric_names(self) -> tuple[str, ...]:
        return DEFAULT_METRICS if self.metrics is None else self.metrics

    def kwargs(self) -> dict[str, Any]:
        where: dict[str, Any] | None = None
        if self.where:
            where = {}
            for dim, values, negated, scalar in self.where:
                value: Any = values[0] if scalar else list(values)
                where[dim] = Not(value) if negated else value
        by: Any = self.by[0] if self.by_as_str and len(self.by) == 1 else list(self.by)
        start: Any = self.start
        end: Any = self.end
        if self.bounds_as_timestamps:
            start = pd.Timestamp(self.start, unit="ns", tz="UTC").tz_convert(self.tz)
            end = pd.Timestamp(self.end, unit="ns", tz="UTC").tz_convert(self.tz)
        return {
            "tenant_id": self.tenant_id,
            "start": start,
            "end": end,
            "by": by,
            "every": self.every,
            "tz": self.tz,
            "where": where,
            "metrics": None if self.metrics is None else list(self.metrics),
            "prices": None if self.prices is None else PRICE_TABLES[self.prices].build(),
            "top": self.top,
            "order_by": self.order_by,
        }


class ExpectMissingPrice(Exception):
    """The oracle found tokens without a price in force: the store must raise."""


class AmbiguousTop(Exception):
    """The top-N cut falls between values equal to within rounding: either answer is right."""


class Oracle:
    """DuckDB over the live Parquet files of a store."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.con = duckdb.connect(config={"threads": 1})
        self.con.execute("SET TimeZone = 'UTC'")
        self._bucket_maps: dict[tuple[str, str], str] = {}
        self._price_tables: dict[str, str] = {}
        paths = "[" + ", ".join(_lit(str(p)) for p in files) + "]"
        source = f"read_parquet({paths}, union_by_name = true, hive_partitioning = false)"
        present = {r[0] for r in self.con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        runtime = [
            (f"coalesce({c}, 0)" if c in present else "0") + f"::INTEGER AS {c}"
            for c in ("runtime_latency_ms", "runtime_time_to_first_token_ms")
        ]
        self.con.execute(
            f"""
            CREATE TABLE rows AS SELECT
                tenant, organization, project, user_id, api_key_id, api_method, model_id,
                status_code::INTEGER AS status_code,
                CASE WHEN status_code BETWEEN 100 AND 599
                     THEN CAST(status_code // 100 AS VARCHAR) || 'xx' ELSE 'other' END
                    AS status_class,
                "timestamp" AS ts,
                ("timestamp" // {NS_MIN}) * 60000000 AS minute_us,
                latency_ms, time_to_first_token_ms, prompt_tokens, completion_tokens,
                {", ".join(runtime)}
            FROM {source}
            """
        )
        self.files = list(files)

    def count(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM rows").fetchone()[0])  # type: ignore[index]

    def distinct(self, column: str) -> list[Any]:
        return sorted(
            r[0] for r in self.con.execute(f"SELECT DISTINCT {column} FROM rows").fetchall()
        )

    def timestamps(self) -> np.ndarray:
        return np.sort(self.con.execute("SELECT ts FROM rows").fetchnumpy()["ts"].astype(np.int64))

    def bucket_map(self, tz: str, every: str) -> str:
        """A table ``(us, b)``: the bucket of every minute that holds rows."""
        key = (tz, every)
        if key not in self._bucket_maps:
            name = f"bm_{len(self._bucket_maps)}"
            self.con.execute(
                f"CREATE TEMP TABLE mins_{name} AS SELECT DISTINCT minute_us AS us FROM rows"
            )
            self.con.execute(f"CREATE TEMP TABLE {name} AS {bucket_sql(tz, every, f'mins_{name}')}")
            self._bucket_maps[key] = name
        return self._bucket_maps[key]

    def buckets(self, tz: str, every: str, start: int, end: int) -> list[int]:
        """Every bucket (µs) the window [start, end) touches: the buckets of ``start`` and of
        each whole step in (start, end). Bucket starts are whole minutes, and for day, week
        and month buckets of these zones (offsets whole quarter hours) whole quarter hours."""
        if start >= end:
            return []
        step = NS_MIN if every in SUB_DAY else 15 * NS_MIN
        first = (start // step + 1) * step
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE cand AS SELECT ?::BIGINT AS us UNION ALL "
            "SELECT unnest(range(?::BIGINT, ?::BIGINT, ?::BIGINT)) AS us",
            [start // NS_US, first // NS_US, -(-end // NS_US), step // NS_US],
        )
        got = self.con.execute(
            f"SELECT DISTINCT b FROM ({bucket_sql(tz, every, 'cand')}) ORDER BY b"
        ).fetchall()
        return [int(r[0]) for r in got]

    def price_table(self, key: str) -> str:
        if key not in self._price_tables:
            name = f"prices_{len(self._price_tables)}"
            self.con.execute(
                f"CREATE TEMP TABLE {name} (model_id VARCHAR, eff BIGINT, pp DOUBLE, pc DOUBLE)"
            )
            for model, eff, pp, pc in PRICE_TABLES[key].rows:
                self.con.execute(
                    f"INSERT INTO {name} VALUES (?, ?, ?, ?)",
                    [model, NAT_EFFECTIVE if eff is None else eff, pp, pc],
                )
            self._price_tables[key] = name
        return self._price_tables[key]

    def _rows_sql(self, case: Case, with_prices: bool) -> str:
        cond = [f"ts >= {case.start}", f"ts < {case.end}"]
        if case.tenant_id is not None:
            cond.append(f"tenant = {_lit(case.tenant_id)}")
        for dim, values, negated, _ in case.where:
            cond.append(f"{dim} {'NOT IN' if negated else 'IN'} ({', '.join(map(_lit, values))})")
        sql = f"SELECT * FROM rows WHERE {' AND '.join(cond)}"
        joins = ""
        cols = "f.*"
        if case.every is not None:
            bm = self.bucket_map(case.tz, case.every)
            joins += f" JOIN {bm} AS bm ON f.minute_us = bm.us"
            cols += ", bm.b AS bucket"
        if with_prices:
            pt = self.price_table(case.prices)  # type: ignore[arg-type]
            joins += f" ASOF LEFT JOIN {pt} AS p ON f.model_id = p.model_id AND f.ts >= p.eff"
            cols += ", p.pp, p.pc"
        return f"SELECT {cols} FROM ({sql}) AS f{joins}"

    def _aggregate(
        self, case: Case, keys: Sequence[str], metrics: Sequence[str], rows_sql: str
    ) -> list[tuple[Any, ...]]:
        """``(keys..., metrics...)`` of every non-empty group of ``keys``."""
        sel = [*keys, *(metric_sql(m) for m in metrics), "count(*) AS _n"]
        group = f" GROUP BY {', '.join(keys)}" if keys else ""
        got = self.con.execute(f"SELECT {', '.join(sel)} FROM ({rows_sql}) AS r{group}").fetchall()
        return [row[:-1] for row in got if row[-1] > 0]

    def report(self, case: Case) -> pd.DataFrame:
        """The expected frame of ``case``; raises ExpectMissingPrice when the store must raise
        MissingPriceError."""
        metrics = case.metric_names()
        needs_cost = any(m in COST_METRICS for m in (*metrics, case.order_by))
        with_prices = case.prices is not None and needs_cost
        rows_sql = self._rows_sql(case, with_prices)
        if with_prices and PRICE_TABLES[case.prices].missing == "error":  # type: ignore[index]
            unpriced = self.con.execute(
                f"SELECT count(*) FROM ({rows_sql}) AS r "
                "WHERE prompt_tokens + completion_tokens > 0 AND pp IS NULL"
            ).fetchone()[0]  # type: ignore[index]
            if unpriced:
                raise ExpectMissingPrice(f"{unpriced} rows without a price")

        by = list(case.by)
        keys = (["bucket"] if case.every else []) + by
        agg = self._aggregate(case, keys, metrics, rows_sql)
        nk = len(keys)
        offset = 1 if case.every else 0
        groups = sorted({row[offset:nk] for row in agg})

        if case.top is not None:
            totals = self._aggregate(case, by, [case.order_by], rows_sql)  # type: ignore[list-item]
            value = {row[: len(by)]: row[len(by)] for row in totals}

            def rank(g: tuple[Any, ...]) -> tuple[Any, ...]:
                v = value[g]
                v = math.nan if v is None else float(v)
                return (math.isnan(v), 0.0 if math.isnan(v) else -v, g)

            ranked = sorted(groups, key=rank)
            if 0 < case.top < len(ranked):
                a, b = (rank(ranked[case.top - 1])[:2], rank(ranked[case.top])[:2])
                if a != b and not a[0] and not b[0] and math.isclose(a[1], b[1], rel_tol=1e-9):
                    raise AmbiguousTop(f"{ranked[case.top - 1]} vs {ranked[case.top]}")
            groups = sorted(ranked[: case.top])

        gindex = {g: i for i, g in enumerate(groups)}
        if case.every:
            buckets = self.buckets(case.tz, case.every, case.start, case.end)
            skeleton = pd.DataFrame(
                {
                    "_b": np.repeat(np.array(buckets, dtype=np.int64), len(groups)),
                    "_g": np.tile(np.arange(len(groups), dtype=np.int64), len(buckets)),
                }
            )
        else:
            skeleton = pd.DataFrame({"_g": np.arange(len(groups), dtype=np.int64)})
        mcols = [f"_m{i}" for i in range(len(metrics))]
        kept = [row for row in agg if row[offset:nk] in gindex]
        found = pd.DataFrame(
            {
                **({"_b": np.array([r[0] for r in kept], dtype=np.int64)} if case.every else {}),
                "_g": np.array([gindex[r[offset:nk]] for r in kept], dtype=np.int64),
                **{
                    c: pd.Series([r[nk + i] for r in kept], dtype=object)
                    for i, c in enumerate(mcols)
                },
                "_hit": np.ones(len(kept), dtype=bool),
            }
        )
        on = ["_b", "_g"] if case.every else ["_g"]
        merged = skeleton.merge(found, on=on, how="left", sort=False)
        assert len(merged) == len(skeleton)
        hit = merged["_hit"].eq(True).to_numpy()
        assert hit.sum() == len(kept), "a row's bucket is missing from the bucket list"

        out: dict[str, Any] = {}
        if case.every:
            out["bucket"] = pd.Series(
                pd.to_datetime(merged["_b"].to_numpy(dtype=np.int64) * NS_US, utc=True),
                dtype="datetime64[ns, UTC]",
            ).dt.tz_convert(case.tz)
        gi = merged["_g"].to_numpy(dtype=np.int64)
        for j, dim in enumerate(by):
            column = np.array([g[j] for g in groups], dtype=object)[gi] if groups else []
            out[dim] = pd.Series(column, dtype="int32" if dim == "status_code" else "str")
        for name, col in zip(metrics, mcols, strict=True):
            raw = merged[col].to_numpy(dtype=object)
            if name in INT_METRICS:
                out[name] = pd.Series(np.where(hit, raw, 0).astype(np.int64))
            else:
                vals = np.array(
                    [math.nan if v is None else float(v) for v in raw], dtype=np.float64
                )
                if name in COST_METRICS:
                    vals[~hit] = 0.0
                out[name] = pd.Series(vals, dtype=np.float64)
        frame = pd.DataFrame(out, index=pd.RangeIndex(len(merged)))
        return frame[[*(["bucket"] if case.every else []), *by, *metrics]]


# -- comparison -------------------------------------------------------------------------------


def assert_matches(actual: pd.DataFrame, expected: pd.DataFrame, case: Case) -> None:
    """The store's frame equals the oracle's: columns, dtypes, rows, values (1e-9 for floats)."""
    where = f"\ncase: {case!r}"
    assert list(actual.columns) == list(expected.columns), where
    assert len(actual) == len(expected), (
        f"{len(actual)} rows, expected {len(expected)}{where}\n"
        f"actual:\n{actual.head(20)}\nexpected:\n{expected.head(20)}"
    )
    for name in expected.columns:
        a, e = actual[name], expected[name]
        if name == "bucket":
            assert isinstance(a.dtype, pd.DatetimeTZDtype), (a.dtype, where)
            assert str(a.dtype.tz) == case.tz, (a.dtype, where)
            a_ns = np.asarray(a.dt.tz_convert("UTC").dt.as_unit("ns").array.asi8)
            e_ns = np.asarray(e.dt.tz_convert("UTC").dt.as_unit("ns").array.asi8)
            bad = np.flatnonzero(a_ns != e_ns)
            assert bad.size == 0, (
                f"bucket differs at rows {bad[:10].tolist()}{where}\n"
                f"actual:\n{actual.iloc[bad[:10]]}\nexpected:\n{expected.iloc[bad[:10]]}"
            )
            continue
        assert a.dtype == e.dtype, (name, a.dtype, e.dtype, where)
        if e.dtype == np.float64:
            np.testing.assert_allclose(
                a.to_numpy(), e.to_numpy(), rtol=1e-9, atol=0, equal_nan=True, err_msg=name + where
            )
        else:
            av, ev = a.to_numpy(dtype=object), e.to_numpy(dtype=object)
            bad = np.flatnonzero(av != ev)
            assert bad.size == 0, (
                f"{name} differs at rows {bad[:10].tolist()}{where}\n"
                f"actual:\n{actual.iloc[bad[:10]]}\nexpected:\n{expected.iloc[bad[:10]]}"
            )


def assert_same_frame(with_summaries: pd.DataFrame, scanned: pd.DataFrame, case: Case) -> None:
    """Summaries on and off give the same frame: non-floats exactly, floats to 1e-12."""
    where = f"\ncase: {case!r}"
    pd.testing.assert_frame_equal(
        with_summaries, scanned, check_exact=False, rtol=1e-12, atol=0, obj="report" + where
    )
    for name in scanned.columns:
        if scanned[name].dtype != np.float64:
            assert with_summaries[name].tolist() == scanned[name].tolist(), name + where


def run_store(store: Store, case: Case, *, summaries: bool = True) -> pd.DataFrame:
    store._use_rollups = summaries
    try:
        return store.report(**case.kwargs())
    finally:
        store._use_rollups = True


def check_case(stage: Stage, case: Case) -> None:
    """Store (summaries on and off) against the oracle on one case."""
    try:
        expected: pd.DataFrame | None = stage.oracle.report(case)
    except ExpectMissingPrice:
        expected = None
    except AmbiguousTop as exc:
        pytest.skip(f"top-N cut between values equal to rounding: {exc}")
    if expected is None:
        for summaries in (True, False):
            with pytest.raises(MissingPriceError):
                run_store(stage.store, case, summaries=summaries)
                pytest.fail(f"no MissingPriceError (summaries={summaries})\ncase: {case!r}")
        return
    actual = run_store(stage.store, case)
    assert_matches(actual, expected, case)
    scanned = run_store(stage.store, case, summaries=False)
    assert_same_frame(actual, scanned, case)


# -- price tables -----------------------------------------------------------------------------

_FULL = (
    ("m-alpha", None, 2.5, 10.0),
    ("m-alpha", ns("2026-11-01T06:00Z"), 3.0, 12.5),  # mid-data: at the New York change
    ("m-beta", ns("2020-01-01"), 0.15, 0.6),
    ("m-beta", ns("2026-03-29T03:00+02:00"), 0.17, 0.7),  # the Berlin change, to the ns
    ("m-beta", ns("2026-10-25T01:00Z") + 1, 0.2, 0.8),
    ("m-gamma", None, 1.1, 4.4),
    ("m-delta", None, 30.0, 60.0),
    ("m-delta", ns("2026-04-04T15:00Z") - 1, 27.5, 55.25),
    ("m0", None, 0.5, 1.5),
    ("m1", None, 0.6, 1.8),
    ("m1", ns("2025-11-09T12:00Z"), 0.7, 2.1),
)
_PARTIAL = (
    ("m-alpha", None, 2.5, 10.0),
    ("m-alpha", ns("2026-10-25T00:00+02:00"), 2.75, 11.0),
    ("m-beta", ns("2026-04-01T00:00+11:00"), 0.15, 0.6),  # nothing before April: unpriced
    ("m-gamma", None, 1.1, 4.4),
    ("m0", None, 0.5, 1.5),
    ("m1", ns("2025-11-09T00:00Z"), 0.7, 2.1),
)
_CONSTANT = (
    ("m-alpha", None, 2.5, 10.0),
    ("m-beta", None, 0.15, 0.6),
    ("m-gamma", None, 1.1, 4.4),
    ("m-delta", None, 30.0, 60.0),
    ("m0", None, 0.5, 1.5),
    ("m1", None, 0.6, 1.8),
)
PRICE_TABLES: dict[str, PriceTable] = {
    "full": PriceTable(_FULL, form="frame_utc"),
    "full_naive": PriceTable(_FULL, form="frame_naive"),
    "full_ny": PriceTable(_FULL, form="frame_ny"),
    "partial": PriceTable(_PARTIAL, missing="error"),
    "partial_nan": PriceTable(_PARTIAL, missing="nan", form="frame_ny"),
    "dict": PriceTable(_CONSTANT, form="dict"),
    "dict_nan": PriceTable(_CONSTANT[:3], missing="nan", form="dict"),
    "full_nan": PriceTable(_FULL, missing="nan", form="frame_naive"),
}


# -- random data ------------------------------------------------------------------------------

TENANTS = (("t0", 0.5), ("t1", 0.25), ("t2", 0.13), ("T3", 0.08), ("tenant-é", 0.04))
ORGS = ("", "Org", "org", "B", "ørg", "ｚorg", "😀org", "a b")  # noqa: RUF001 (code-point order)
PROJECTS = ("p1", "p2", "", "P1")
METHODS = ("GetFoo", "ListBar", "UpdateFoo", "Ping", "/v1/chat/completions")
MODELS = (("", 0.2), ("m-alpha", 0.3), ("m-beta", 0.2), ("m-gamma", 0.12), ("m-delta", 0.1))
MODELS_ZERO = ("m-zero",)  # a model whose rows never carry tokens (and that has no price)
CODES = (
    (200, 40), (201, 5), (204, 2), (301, 2), (304, 1), (400, 3), (401, 2), (404, 5), (429, 3),
    (500, 4), (502, 2), (503, 2), (100, 1), (101, 1), (199, 1), (599, 1), (0, 2), (99, 1),
    (600, 1), (999, 1),
)  # fmt: skip


def local_midnights(dates: Sequence[str]) -> list[int]:
    out = []
    for d in dates:
        for tz in TZS:
            out.append(int(pd.Timestamp(d).tz_localize(tz).value))
    return out


def interesting_instants(dates: Sequence[str]) -> list[int]:
    """Local midnights of every zone, DST changes and the quarter and whole hours around them."""
    out = set(local_midnights(dates))
    lo, hi = ns(dates[0]) - 2 * NS_DAY, ns(dates[-1]) + 2 * NS_DAY
    for t in ALL_TRANSITIONS:
        if lo <= t <= hi:
            out.update(t + k * 15 * NS_MIN for k in range(-5, 6))
            out.update(t + k * NS_HOUR for k in (-3, -2, 2, 3))
    return sorted(out)


@dataclass(frozen=True)
class Cluster:
    start: str  # ISO day (UTC)
    days: float
    weight: float


def make_batch(
    seed: int,
    n: int,
    clusters: Sequence[Cluster],
    interesting: Sequence[int],
    *,
    users: int = 40,
    user_prefix: str = "u",
    time_sorted: bool = True,
) -> pd.DataFrame:
    """``n`` random rows (fewer after dropping repeated keys) with skewed traffic."""
    rng = np.random.default_rng(seed)
    weights = np.array([c.weight for c in clusters])
    which = rng.choice(len(clusters), size=n, p=weights / weights.sum())
    starts = np.array([ns(c.start) for c in clusters], dtype=np.int64)
    lengths = np.array([int(c.days * NS_DAY) for c in clusters], dtype=np.int64)
    ts = starts[which] + rng.integers(0, lengths[which])
    edge = rng.choice(n, size=n // 6, replace=False)
    ts[edge] = rng.choice(np.array(interesting, dtype=np.int64), size=edge.size) + rng.choice(
        np.array([-1, 0, 0, 1]), size=edge.size
    )

    def pick(pairs: Sequence[tuple[Any, float]], size: int) -> np.ndarray:
        values = np.array([v for v, _ in pairs], dtype=object)
        p = np.array([w for _, w in pairs], dtype=np.float64)
        return rng.choice(values, size=size, p=p / p.sum())

    user = np.minimum(rng.zipf(1.5, size=n), users)
    models = pick([*MODELS, *((m, 0.08) for m in MODELS_ZERO)], n)
    has_tokens = (models != "") & (models != "m-zero")
    prompt = np.where(has_tokens & (rng.random(n) > 0.1), rng.integers(1, 8_000, n), 0)
    completion = np.where(has_tokens & (rng.random(n) > 0.15), rng.integers(1, 4_000, n), 0)
    latency = np.where(rng.random(n) < 0.05, rng.integers(0, 60_000, n), rng.integers(0, 3_000, n))
    ttft = (latency * rng.random(n)).astype(np.int64)
    same = rng.random(n) < 0.06
    ttft[same] = latency[same]  # no generation time
    over = rng.random(n) < 0.03
    ttft[over] = latency[over] + rng.integers(1, 50, over.sum())  # more than the latency
    ttft[~has_tokens & (rng.random(n) < 0.7)] = 0
    frame = pd.DataFrame(
        {
            "user_id": [f"{user_prefix}{u}" for u in user],
            "tenant": pick(TENANTS, n),
            "organization": rng.choice(np.array(ORGS, dtype=object), size=n),
            "project": rng.choice(np.array(PROJECTS, dtype=object), size=n),
            "api_key_id": [f"key{k}" for k in np.minimum(rng.zipf(1.8, size=n), 12)],
            "api_method": rng.choice(np.array(METHODS, dtype=object), size=n),
            "model_id": models,
            "status_code": pick(CODES, n).astype(np.int64),
            "timestamp": ts,
            "latency_ms": latency,
            "time_to_first_token_ms": ttft,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "runtime_latency_ms": rng.integers(0, 4_000, n),
            "runtime_time_to_first_token_ms": np.where(
                rng.random(n) < 0.3, 0, rng.integers(0, 900, n)
            ),
        }
    )
    frame = frame.drop_duplicates(["user_id", "timestamp"])
    if time_sorted:
        frame = frame.sort_values("timestamp", kind="stable")
    return typed(frame.reset_index(drop=True))


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    out = {}
    for name in frame.columns:
        if name == "timestamp":
            out[name] = frame[name].astype(np.int64)
        elif frame[name].dtype == object or name in DIMS[:7]:
            out[name] = frame[name].astype("str")
        else:
            out[name] = frame[name].astype(np.int32)
    return pd.DataFrame(out)


# -- the datasets -----------------------------------------------------------------------------

DATES_2026 = (
    "2026-03-07", "2026-03-08", "2026-03-09", "2026-03-28", "2026-03-29", "2026-03-30",
    "2026-03-31", "2026-04-01", "2026-04-04", "2026-04-05", "2026-04-06", "2026-10-03",
    "2026-10-04", "2026-10-05", "2026-10-24", "2026-10-25", "2026-10-26", "2026-10-31",
    "2026-11-01", "2026-11-02", "2026-12-31", "2027-01-01",
)  # fmt: skip
CLUSTERS_2026 = (
    Cluster("2026-03-07", 2.5, 0.12),  # New York springs forward
    Cluster("2026-03-28", 4.5, 0.12),  # Berlin springs forward, then a month's end
    Cluster("2026-04-04", 2.0, 0.10),  # Lord Howe falls back half an hour
    Cluster("2026-10-03", 2.0, 0.10),  # Lord Howe springs forward half an hour
    Cluster("2026-10-24", 2.0, 0.12),  # Berlin falls back
    Cluster("2026-10-31", 2.5, 0.40),  # New York falls back, a month's end; the heavy days
    Cluster("2026-12-31", 1.5, 0.04),  # a year's end
)
DATES_2025 = (
    "2025-10-04", "2025-10-05", "2025-10-25", "2025-10-26", "2025-11-01", "2025-11-02",
    "2025-11-03", "2025-11-08", "2025-11-09", "2025-11-10",
)  # fmt: skip
CLUSTERS_2025 = (
    Cluster("2025-10-04", 1.5, 0.2),
    Cluster("2025-10-25", 2.0, 0.25),
    Cluster("2025-11-01", 2.5, 0.3),
    Cluster("2025-11-08", 3.0, 0.25),  # the days of make_v1's rows
)


@dataclass
class Stage:
    name: str
    store: Store
    oracle: Oracle
    interesting: list[int]
    values: dict[str, list[Any]] = field(default_factory=dict)
    ts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def of(cls, name: str, store: Store, interesting: list[int]) -> Stage:
        oracle = Oracle(store.files())
        stage = cls(name, store, oracle, interesting)
        stage.values = {d: oracle.distinct(d) for d in DIMS}
        stage.ts = oracle.timestamps()
        assert stage.ts.size == store.info().rows == oracle.count()
        return stage


def price_edge_rows(seed: int, dates: Sequence[str]) -> pd.DataFrame:
    """Rows of each priced model at each price change near ``dates`` and 1 ns either side."""
    rng = np.random.default_rng(seed)
    lo, hi = ns(dates[0]) - NS_DAY, ns(dates[-1]) + NS_DAY
    changes = sorted(
        {
            (m, e)
            for table in PRICE_TABLES.values()
            for m, e, _, _ in table.rows
            if e is not None and lo <= e <= hi
        }
    )
    rows = []
    for i, (model, eff) in enumerate(changes):
        for d in (-1, 0, 1):
            rows.append(
                {
                    "user_id": f"pe{i}",
                    "tenant": str(rng.choice(["t0", "t1", "t2"])),
                    "organization": "",
                    "project": "p1",
                    "api_key_id": f"key{rng.integers(1, 4)}",
                    "api_method": "/v1/chat/completions",
                    "model_id": model,
                    "status_code": 200,
                    "timestamp": eff + d,
                    "latency_ms": int(rng.integers(100, 2_000)),
                    "time_to_first_token_ms": int(rng.integers(0, 100)),
                    "prompt_tokens": int(rng.integers(1, 5_000)),
                    "completion_tokens": int(rng.integers(0, 3_000)),
                    "runtime_latency_ms": int(rng.integers(0, 2_000)),
                    "runtime_time_to_first_token_ms": 0,
                }
            )
    return typed(pd.DataFrame(rows))


def _single_rows(store: Store, frame: pd.DataFrame) -> None:
    for i in range(len(frame)):
        store.create_usage(frame.iloc[i : i + 1].reset_index(drop=True), on_conflict="ignore")


def _build_stages(base: Path) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    edges26 = interesting_instants(DATES_2026)
    mp = pytest.MonkeyPatch()
    try:
        # appended: a bulk load (summaries only for its files of >= 1024 rows), then, with
        # summaries for every file, an unsorted batch with repeated keys, single-row appends
        # (enough on one day to make the store merge them) and one more batch.
        store = Store(base / "appended")
        store.auto_migrate()
        first = make_batch(1, 2600, CLUSTERS_2026, edges26)
        store.create_usage(first)
        mp.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
        mp.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
        second = make_batch(2, 700, CLUSTERS_2026, edges26, time_sorted=False)
        second = pd.concat([second, first.sample(40, random_state=2)], ignore_index=True)
        store.create_usage(second.sample(frac=1.0, random_state=3), on_conflict="ignore")
        singles = make_batch(3, 40, (Cluster("2026-10-04", 1.0, 1.0),), edges26, user_prefix="s")
        _single_rows(store, singles)
        store.create_usage(make_batch(4, 400, CLUSTERS_2026[4:6], edges26), on_conflict="ignore")
        store.create_usage(price_edge_rows(10, DATES_2026), on_conflict="ignore")
        stages["appended"] = Stage.of("appended", store, edges26)

        # deleted: a cutoff inside the first day of data, then one with a limit, then appends.
        shutil.copytree(base / "appended", base / "deleted")
        store = Store(base / "deleted")
        assert store.delete_usage(ns("2026-03-08T07:00Z") + 1) > 0
        assert store.delete_usage(ns("2026-04-05T00:00+11:00"), limit=57) == 57
        store.create_usage(make_batch(5, 300, CLUSTERS_2026, edges26), on_conflict="ignore")
        _single_rows(store, make_batch(6, 6, CLUSTERS_2026[:1], edges26, user_prefix="d"))
        stages["deleted"] = Stage.of("deleted", store, edges26)

        # compacted: the deleted state with every partition's files merged.
        shutil.copytree(base / "deleted", base / "compacted")
        store = Store(base / "compacted")
        assert store.compact() > 0
        stages["compacted"] = Stage.of("compacted", store, edges26)

        # upgraded: a version-1 dataset, upgraded as earlier versions did (the schema alone:
        # its old files stay, as after an upgrade interrupted before it rewrote them), then
        # appended to.
        edges25 = interesting_instants(DATES_2025)
        make_v1(base / "upgraded")
        store = Store(base / "upgraded")
        store._ds.create()
        store.create_usage(make_batch(7, 1500, CLUSTERS_2025, edges25), on_conflict="ignore")
        _single_rows(store, make_batch(8, 12, CLUSTERS_2025[3:], edges25, user_prefix="v"))
        store.create_usage(price_edge_rows(11, DATES_2025), on_conflict="ignore")
        store.create_usage(
            make_batch(9, 300, CLUSTERS_2025, edges25, time_sorted=False), on_conflict="ignore"
        )
        old = [f for f in store.files() if "runtime_latency_ms" not in pq.read_schema(f).names]
        assert old, "the version-1 files should still be live"
        stages["upgraded"] = Stage.of("upgraded", store, edges25)
    finally:
        mp.undo()
    return stages


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stage]]:
    built = _build_stages(tmp_path_factory.mktemp("oracle"))
    yield built
    for stage in built.values():
        stage.oracle.con.close()


# -- random reports ---------------------------------------------------------------------------

#: The longest window per bucket width, so that dense results stay small.
MAX_WINDOW = {
    "1min": 3 * NS_HOUR,
    "5min": 18 * NS_HOUR,
    "15min": 60 * NS_HOUR,
    "1h": 10 * NS_DAY,
    "1d": 90 * NS_DAY,
    "1w": 400 * NS_DAY,
    "1mo": 400 * NS_DAY,
    None: 400 * NS_DAY,
}
PERCENTILES = ("50", "90", "95", "99", "99.9", "0.5", "100", "12.5", "33.3", "1", "75")
SIMPLE_METRICS = (
    "requests",
    "success_requests",
    "failure_requests",
    "error_rate",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "users",
    "api_keys",
    "completion_tokens_per_s",
)


def random_metric(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return rng.choice(SIMPLE_METRICS)
    col = rng.choice(TIMED)
    if r < 0.65:
        return f"{col}_mean"
    return f"{col}_p{rng.choice(PERCENTILES)}"


def local_midnight(t: int, tz: str, *, month: bool = False) -> pd.Timestamp:
    local = pd.Timestamp(t, unit="ns", tz="UTC").tz_convert(tz).tz_localize(None).normalize()
    if month:
        local = local.replace(day=1)
    return local


def random_window(
    rng: random.Random, stage: Stage, every: str | None, tz: str
) -> tuple[int, int, str]:
    cap = MAX_WINDOW[every]
    ts = stage.ts
    some_row = int(ts[rng.randrange(ts.size)])
    kind = rng.choice(
        ("aligned", "aligned", "aligned", "unaligned", "unaligned", "unaligned", "edges", "edges",
         "dst", "dst", "dst", "empty", "one_ns", "everything", "month")
    )  # fmt: skip
    if kind == "aligned":
        local = local_midnight(some_row, tz)
        days = rng.choice((1, 1, 2, 3, 7, 30))
        start = int(local.tz_localize(tz).value)
        end = int((local + pd.Timedelta(days=days)).tz_localize(tz).value)
    elif kind == "month":
        local = local_midnight(some_row, tz, month=True)
        start = int(local.tz_localize(tz).value)
        end = int((local + pd.DateOffset(months=rng.choice((1, 2, 8)))).tz_localize(tz).value)
    elif kind == "unaligned":
        start = some_row + rng.randrange(-6 * NS_HOUR, 6 * NS_HOUR)
        end = start + rng.randrange(1, min(cap, 4 * NS_DAY))
    elif kind == "edges":
        pool = stage.interesting
        a = rng.choice(pool) + rng.choice((-1, 0, 1))
        b = rng.choice(pool) + rng.choice((-1, 0, 1))
        start, end = min(a, b), max(a, b)
        if end - start > cap:
            end = start + rng.choice((NS_HOUR, 6 * NS_HOUR, cap))
    elif kind == "dst":
        near = [x for x in ALL_TRANSITIONS if ts[0] - NS_DAY <= x <= ts[-1] + NS_DAY]
        own = [x for x in near if any(ns(c) == x for c in TRANSITIONS.get(tz, ()))]
        t = rng.choice(own or near)  # mostly a change of the report's own zone
        t += rng.choice((-1, 0, 1, rng.randrange(-NS_HOUR, NS_HOUR)))
        start = t - rng.randrange(0, 6 * NS_HOUR)
        end = t + rng.randrange(1, 6 * NS_HOUR)
    elif kind == "empty":
        start = end = some_row
    elif kind == "one_ns":
        start = some_row + rng.choice((-1, 0, 0, 1))
        end = start + 1
    else:  # everything
        start, end = (
            int(ts[0]) - rng.choice((0, 1, NS_DAY)),
            int(ts[-1]) + rng.choice((1, 2, NS_DAY)),
        )
    start = max(start, 0)
    end = max(end, start)
    if end - start > cap:
        end = start + cap
    return start, end, kind


def random_case(seed: int, stage: Stage) -> Case:
    rng = random.Random(seed)
    every = rng.choice((None, None, None, None, *EVERY, "1h", "1d"))
    tz = rng.choice(TZS)
    n_by = rng.choices((0, 1, 2, 3), weights=(3, 5, 3, 0 if every else 1))[0]
    by = tuple(rng.sample(DIMS, n_by))
    tenants = stage.values["tenant"]
    r = rng.random()
    tenant_id = None if r < 0.25 else ("no-such-tenant" if r < 0.28 else rng.choice(tenants))
    start, end, kind = random_window(rng, stage, every, tz)
    wheres = rng.choices((0, 1, 2), weights=(5, 4, 2))[0]
    if kind == "one_ns" and rng.random() < 0.7:
        tenant_id, wheres = None, 0  # mostly the one row

    where = []
    for dim in rng.sample(DIMS, wheres):
        pool = list(stage.values[dim])
        if dim == "status_code":
            pool.append(777)
        elif dim == "status_class":
            pool = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"]
        else:
            pool.append("no-such-value")
        k = rng.choice((1, 1, 2, 3))
        values = tuple(rng.sample(pool, min(k, len(pool))))
        scalar = len(values) == 1 and rng.random() < 0.6
        where.append((dim, values, rng.random() < 0.45, scalar))

    metrics: tuple[str, ...] | None = None
    prices = None
    if rng.random() > 0.12:
        chosen: list[str] = []
        for _ in range(rng.randint(1, 6)):
            m = random_metric(rng)
            if m not in chosen:
                chosen.append(m)
        if rng.random() < 0.3:
            for m in rng.sample(COST_METRICS, rng.randint(1, 3)):
                chosen.insert(rng.randrange(len(chosen) + 1), m)
            prices = rng.choice(tuple(PRICE_TABLES))
        elif rng.random() < 0.05:
            prices = rng.choice(tuple(PRICE_TABLES))  # prices that no metric needs
        metrics = tuple(chosen)

    top = order_by = None
    if rng.random() < 0.25:
        top = rng.choice((1, 2, 3, 5, 50))
        names = list(metrics if metrics is not None else DEFAULT_METRICS)
        order_by = rng.choice(names)
    return Case(
        tenant_id=tenant_id,
        start=start,
        end=end,
        by=by,
        every=every,
        tz=tz,
        where=tuple(where),
        metrics=metrics,
        prices=prices,
        top=top,
        order_by=order_by,
        by_as_str=rng.random() < 0.5,
        bounds_as_timestamps=kind in ("aligned", "month") and rng.random() < 0.3,
    )


#: Reports the store may answer from summaries: dimensions of one grain, summable metrics,
#: filters on those dimensions, whole-window or calendar buckets (found with ``explain=True``).
GRAINS = (
    (
        ("tenant", "api_method"),
        ("requests", "success_requests", "failure_requests", "error_rate", "latency_ms_mean"),
    ),
    (
        ("tenant", "api_key_id", "user_id", "model_id"),
        (
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "latency_ms_mean",
            "time_to_first_token_ms_mean",
            "completion_tokens_per_s",
        ),
    ),
)


def summary_case(seed: int, stage: Stage) -> Case:
    """A random report of the kind summaries answer, over windows of whole UTC days (some
    of them cut a little or a lot at either end)."""
    rng = random.Random(seed)
    grain, summable = rng.choice(GRAINS)
    if rng.random() < 0.15:  # metrics of both grains: partly or wholly scanned
        summable = tuple(dict.fromkeys(GRAINS[0][1] + GRAINS[1][1]))
    by = tuple(rng.sample(grain, rng.randint(0, min(3, len(grain)))))
    every = rng.choice((None, None, None, "1d", "1d", "1w", "1mo"))
    tz = "UTC" if rng.random() < 0.6 else rng.choice(TZS)
    r = rng.random()
    tenant_id = None if r < 0.3 else rng.choice(stage.values["tenant"])
    a = int(stage.ts[rng.randrange(stage.ts.size)]) // NS_DAY - rng.choice((0, 0, 1, 2))
    span = rng.choice((1, 2, 3, 5, 8, 16, 40, 400))
    if every is not None and len(set(by) & {"api_key_id", "user_id", "model_id"}) >= 2:
        span = min(span, 8)
    start, end = a * NS_DAY, (a + span) * NS_DAY
    cut = rng.random()
    if cut < 0.15:
        start += rng.choice((-1, 1))
        end += rng.choice((-1, 0, 1))
    elif cut < 0.3:
        start += rng.randrange(0, NS_DAY)
        end -= rng.randrange(0, NS_DAY)
        end = max(start, end)
    where = []
    for dim in rng.sample(grain, rng.choices((0, 1, 2), weights=(4, 3, 1))[0]):
        pool = [*stage.values[dim], "no-such-value"]
        values = tuple(rng.sample(pool, min(rng.choice((1, 2, 3)), len(pool))))
        where.append((dim, values, rng.random() < 0.45, len(values) == 1 and rng.random() < 0.5))
    metrics = list(dict.fromkeys(rng.choice(summable) for _ in range(rng.randint(1, 5))))
    prices = None
    if "prompt_tokens" in summable and rng.random() < 0.4:
        for m in rng.sample(COST_METRICS, rng.randint(1, 3)):
            metrics.insert(rng.randrange(len(metrics) + 1), m)
        prices = rng.choice(tuple(PRICE_TABLES))
    top = order_by = None
    if rng.random() < 0.25:
        top, order_by = rng.choice((1, 2, 3, 10)), rng.choice(metrics)
    return Case(
        tenant_id=tenant_id,
        start=start,
        end=end,
        by=by,
        every=every,
        tz=tz,
        where=tuple(where),
        metrics=tuple(metrics),
        prices=prices,
        top=top,
        order_by=order_by,
        by_as_str=rng.random() < 0.5,
    )


STAGE_NAMES = ("appended", "deleted", "compacted", "upgraded")
FAST_CASES = 40
FAST_SUMMARY_CASES = 30
SLOW_CASES = 400


@pytest.mark.parametrize("seed", range(FAST_CASES))
@pytest.mark.parametrize("stage_name", STAGE_NAMES)
def test_random_reports(stages: dict[str, Stage], stage_name: str, seed: int) -> None:
    stage = stages[stage_name]
    check_case(stage, random_case(seed * 7919 + STAGE_NAMES.index(stage_name), stage))


@pytest.mark.parametrize("seed", range(FAST_SUMMARY_CASES))
@pytest.mark.parametrize("stage_name", STAGE_NAMES)
def test_random_summary_reports(stages: dict[str, Stage], stage_name: str, seed: int) -> None:
    stage = stages[stage_name]
    check_case(stage, summary_case(seed * 104729 + STAGE_NAMES.index(stage_name), stage))


@pytest.mark.parametrize("stage_name", STAGE_NAMES)
def test_summary_cases_read_summaries(stages: dict[str, Stage], stage_name: str) -> None:
    """The summary-friendly cases do read summaries (else comparing them with scans is moot)."""
    stage = stages[stage_name]
    using = 0
    for seed in range(FAST_SUMMARY_CASES):
        case = summary_case(seed * 104729 + STAGE_NAMES.index(stage_name), stage)
        plan = stage.store.report(**case.kwargs(), explain=True)
        using += bool((plan["read"] == "summary").any())
    assert using >= FAST_SUMMARY_CASES // 2, using


@pytest.mark.slow
@pytest.mark.parametrize("stage_name", STAGE_NAMES)
def test_random_reports_slow(stages: dict[str, Stage], stage_name: str) -> None:
    stage = stages[stage_name]
    for seed in range(FAST_CASES, FAST_CASES + SLOW_CASES):
        for case in (
            random_case(seed * 7919 + STAGE_NAMES.index(stage_name), stage),
            summary_case(seed * 104729 + STAGE_NAMES.index(stage_name), stage),
        ):
            try:
                check_case(stage, case)
            except pytest.skip.Exception:
                continue


@pytest.mark.parametrize("stage_name", STAGE_NAMES)
def test_oracle_sees_every_row(stages: dict[str, Stage], stage_name: str) -> None:
    """The oracle's table holds every live row, and the store's plainest report agrees."""
    stage = stages[stage_name]
    case = Case(None, 0, 2**63 - 1, by=("tenant",), metrics=("requests",))
    assert_matches(run_store(stage.store, case), stage.oracle.report(case), case)
    assert stage.oracle.count() == stage.store.info().rows


def test_upgraded_runtime_metrics(stages: dict[str, Stage]) -> None:
    """Rows from version-1 files count as zeros in the runtime_* metrics."""
    stage = stages["upgraded"]
    metrics = tuple(f"{c}_{s}" for c in TIMED[2:] for s in ("mean", "p50", "p99.9", "p100"))
    for every, by, tenant in ((None, ("tenant",), None), ("1d", ("model_id",), "t0"),
                              ("1h", (), "t1"), ("1w", ("status_class",), None)):  # fmt: skip
        case = Case(tenant, ns("2025-11-07"), ns("2025-11-11"), by=by, every=every, metrics=metrics)
        check_case(stage, case)
    # The version-1 days alone: every runtime value there is a zero from the upgrade or new.
    case = Case(None, ns("2025-11-08"), ns("2025-11-11"), by=("user_id",), metrics=metrics)
    expected = stage.oracle.report(case)
    old = expected[expected["user_id"].str.startswith("u3-")]
    assert len(old) > 0 and (old[list(metrics)] == 0).all().all()
    check_case(stage, case)


# -- buckets around DST changes ---------------------------------------------------------------


def test_transitions_are_real() -> None:
    """Each listed instant is a change of its zone's UTC offset."""
    for tz, instants in TRANSITIONS.items():
        for text in instants:
            t = pd.Timestamp(text)
            before = (t - pd.Timedelta(1, "ns")).tz_convert(tz).utcoffset()
            assert before != t.tz_convert(tz).utcoffset(), (tz, text)


@pytest.mark.parametrize(
    ("tz", "lo", "hi", "expected"),
    [
        (
            "America/New_York",
            "2025-12-01",
            "2027-01-01",
            ["2026-03-08T07:00Z", "2026-11-01T06:00Z"],
        ),
        (
            "Australia/Lord_Howe",
            "2025-12-01",
            "2026-12-01",
            ["2026-04-04T15:00Z", "2026-10-03T15:30Z"],
        ),
        ("Asia/Kolkata", "2025-01-01", "2027-01-01", []),
        # Local mean time to a standard offset, and Amsterdam's +00:19:32 to +00:20, at a second
        # that is no whole minute.
        ("America/New_York", "1883-11-18", "1883-11-19", ["1883-11-18T17:00Z"]),
        ("Europe/Amsterdam", "1937-06-30", "1937-07-02", ["1937-06-30T22:40:28Z"]),
    ],
)
def test_the_offset_changes_of_a_window_are_found_to_the_second(
    tz: str, lo: str, hi: str, expected: list[str]
) -> None:
    from usage_analytics.reports.buckets import _transitions

    lo_ns, hi_ns = pd.Timestamp(lo, tz="UTC").value, pd.Timestamp(hi, tz="UTC").value
    at, offsets = _transitions(tz, lo_ns, hi_ns)
    assert [pd.Timestamp(t, tz="UTC") for t in at] == [pd.Timestamp(e) for e in expected]
    for t, offset in zip(at, offsets, strict=True):
        now = pd.Timestamp(t, tz="UTC").tz_convert(tz).utcoffset()
        second_before = pd.Timestamp(t - 10**9, tz="UTC").tz_convert(tz).utcoffset()
        assert now != second_before and now == pd.Timedelta(int(offset), "ns")


HAND_BUCKETS = [
    # (tz, every, instant, the start of its bucket)
    ("America/New_York", "1h", "2026-11-01T05:30Z", "2026-11-01T01:00-04:00"),
    ("America/New_York", "1h", "2026-11-01T05:59:59.999999Z", "2026-11-01T01:00-04:00"),
    ("America/New_York", "1h", "2026-11-01T06:00Z", "2026-11-01T01:00-05:00"),
    ("America/New_York", "1h", "2026-11-01T06:30Z", "2026-11-01T01:00-05:00"),
    ("America/New_York", "1h", "2026-11-01T07:10Z", "2026-11-01T02:00-05:00"),
    ("America/New_York", "15min", "2026-11-01T06:00Z", "2026-11-01T01:00-05:00"),
    ("America/New_York", "1h", "2026-03-08T06:59Z", "2026-03-08T01:00-05:00"),
    ("America/New_York", "1h", "2026-03-08T07:00Z", "2026-03-08T03:00-04:00"),
    ("America/New_York", "1h", "2026-03-08T07:30Z", "2026-03-08T03:00-04:00"),
    ("America/New_York", "1d", "2026-11-01T04:00Z", "2026-11-01T00:00-04:00"),
    ("America/New_York", "1d", "2026-11-02T04:59:59Z", "2026-11-01T00:00-04:00"),
    ("America/New_York", "1d", "2026-11-02T05:00Z", "2026-11-02T00:00-05:00"),
    ("America/New_York", "1w", "2026-11-01T23:00Z", "2026-10-26T00:00-04:00"),
    ("America/New_York", "1mo", "2026-11-01T03:59Z", "2026-10-01T00:00-04:00"),
    ("Europe/Berlin", "1h", "2026-10-25T00:30Z", "2026-10-25T02:00+02:00"),
    ("Europe/Berlin", "1h", "2026-10-25T01:00Z", "2026-10-25T02:00+01:00"),
    ("Europe/Berlin", "1h", "2026-10-25T01:59Z", "2026-10-25T02:00+01:00"),
    ("Europe/Berlin", "1h", "2026-10-25T02:00Z", "2026-10-25T03:00+01:00"),
    ("Australia/Lord_Howe", "1h", "2026-04-04T14:45Z", "2026-04-05T01:00+11:00"),
    ("Australia/Lord_Howe", "1h", "2026-04-04T15:00Z", "2026-04-05T01:30+10:30"),
    ("Australia/Lord_Howe", "1h", "2026-04-04T15:29Z", "2026-04-05T01:30+10:30"),
    ("Australia/Lord_Howe", "1h", "2026-04-04T15:30Z", "2026-04-05T02:00+10:30"),
    ("Australia/Lord_Howe", "15min", "2026-04-04T15:10Z", "2026-04-05T01:30+10:30"),
    ("Australia/Lord_Howe", "1h", "2026-10-03T14:30Z", "2026-10-04T01:00+10:30"),
    ("Australia/Lord_Howe", "1h", "2026-10-03T15:29Z", "2026-10-04T01:00+10:30"),
    ("Australia/Lord_Howe", "1h", "2026-10-03T15:30Z", "2026-10-04T02:30+11:00"),
    ("Australia/Lord_Howe", "1h", "2026-10-03T15:59Z", "2026-10-04T02:30+11:00"),
    ("Australia/Lord_Howe", "1h", "2026-10-03T16:00Z", "2026-10-04T03:00+11:00"),
    ("Australia/Lord_Howe", "1d", "2026-04-05T13:29Z", "2026-04-05T00:00+11:00"),
    ("Australia/Lord_Howe", "1d", "2026-04-05T13:30Z", "2026-04-06T00:00+10:30"),
    ("Asia/Kolkata", "1h", "2026-11-01T00:10Z", "2026-11-01T05:00+05:30"),
    ("Asia/Kolkata", "1h", "2026-11-01T00:40Z", "2026-11-01T06:00+05:30"),
    ("Asia/Kolkata", "1d", "2026-10-31T18:29:59Z", "2026-10-31T00:00+05:30"),
    ("Asia/Kolkata", "1d", "2026-10-31T18:30Z", "2026-11-01T00:00+05:30"),
    ("UTC", "5min", "2026-11-01T00:04:59.999999Z", "2026-11-01T00:00Z"),
]


def test_oracle_bucket_sql_hand_cases() -> None:
    """The oracle's bucket SQL on hand-worked DST cases (checks the oracle, not the store)."""
    con = duckdb.connect(config={"threads": 1})
    con.execute("SET TimeZone = 'UTC'")
    try:
        for tz, every, instant, start in HAND_BUCKETS:
            con.execute(
                "CREATE OR REPLACE TEMP TABLE hand AS SELECT ?::BIGINT AS us",
                [ns(instant) // NS_US],
            )
            ((_, b),) = con.execute(bucket_sql(tz, every, "hand")).fetchall()
            assert b * NS_US == ns(start), (tz, every, instant, pd.Timestamp(b * NS_US, tz="UTC"))
    finally:
        con.close()


@pytest.fixture(scope="module")
def dst_stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    """Rows every 7.5 minutes (and 1 ns around each change) for 3 hours either side of
    every DST change of the data, and at every zone's midnights around them."""
    root = tmp_path_factory.mktemp("dst") / "store"
    stamps: set[int] = set()
    for t in ALL_TRANSITIONS:
        stamps.update(t + k * 450 * 10**9 for k in range(-24, 25))
        stamps.update(t + d for d in (-1, 1))
        for day in (-1, 0, 1):
            d = pd.Timestamp(t, unit="ns", tz="UTC").normalize() + pd.Timedelta(days=day)
            for m in local_midnights([str(d.date())]):
                stamps.update((m - 1, m, m + 1))
    ts = np.array(sorted(stamps), dtype=np.int64)
    rng = np.random.default_rng(11)
    n = ts.size
    frame = typed(
        pd.DataFrame(
            {
                "user_id": [f"u{i % 5}" for i in range(n)],
                "tenant": rng.choice(np.array(["t0", "t1"], dtype=object), n),
                "organization": "",
                "project": "",
                "api_key_id": [f"k{i % 3}" for i in range(n)],
                "api_method": "Get",
                "model_id": rng.choice(np.array(["", "m-alpha"], dtype=object), n),
                "status_code": rng.choice(np.array([200, 404, 0]), n),
                "timestamp": ts,
                "latency_ms": rng.integers(0, 1000, n),
                "time_to_first_token_ms": rng.integers(0, 100, n),
                "prompt_tokens": rng.integers(0, 100, n),
                "completion_tokens": rng.integers(0, 100, n),
                "runtime_latency_ms": rng.integers(0, 1000, n),
                "runtime_time_to_first_token_ms": 0,
            }
        )
    )
    mp = pytest.MonkeyPatch()
    mp.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    mp.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    try:
        store = Store(root)
        store.auto_migrate()
        store.create_usage(frame)
        stage = Stage.of("dst", store, sorted(stamps))
    finally:
        mp.undo()
    yield stage
    stage.oracle.con.close()


@pytest.mark.parametrize("tz", TZS)
def test_buckets_across_dst_changes(dst_stage: Stage, tz: str) -> None:
    """Dense buckets over windows across each change, for every width, against the oracle."""
    metrics = ("requests", "latency_ms_mean", "latency_ms_p50", "users")
    changes = [ns(t) for t in TRANSITIONS.get(tz, ())] or ALL_TRANSITIONS[1:3]
    for i, t in enumerate(changes):
        for j, every in enumerate(("1min", "15min", "1h", "1d") if i % 2 else EVERY):
            start = t - (3 * NS_HOUR if every != "1min" else NS_HOUR) + (j % 3) - 1
            end = t + (3 * NS_HOUR if every != "1min" else NS_HOUR) + (j % 2)
            by = ("tenant",) if j % 2 else ()
            check_case(
                dst_stage, Case(None, start, end, by=by, every=every, tz=tz, metrics=metrics)
            )
        # One nanosecond on either side of the change, and the change itself.
        for d in (-1, 0, 1):
            check_case(dst_stage, Case(None, t + d, t + d + 1, every="1h", tz=tz, metrics=metrics))


def test_hand_buckets_of_the_store(dst_stage: Stage) -> None:
    """The repeated New York hour gives two 1h buckets; Lord Howe's hour is cut at the change."""
    store = dst_stage.store
    ny = store.report(None, ns("2026-11-01T04:00Z"), ns("2026-11-01T08:00Z"), every="1h",
                      tz="America/New_York", metrics=["requests"])  # fmt: skip
    assert [b.isoformat() for b in ny["bucket"]] == [
        "2026-11-01T00:00:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T02:00:00-05:00",
    ]
    # Rows every 7.5 minutes, 1 ns either side of the change and of New York's midnight.
    assert ny["requests"].tolist() == [8 + 1, 8 + 1, 8 + 1, 8]
    lh = store.report(None, ns("2026-04-04T13:00Z"), ns("2026-04-04T17:00Z"), every="1h",
                      tz="Australia/Lord_Howe", metrics=["requests"])  # fmt: skip
    assert [b.isoformat() for b in lh["bucket"]] == [
        "2026-04-05T00:00:00+11:00",
        "2026-04-05T01:00:00+11:00",
        "2026-04-05T01:30:00+10:30",
        "2026-04-05T02:00:00+10:30",
        "2026-04-05T03:00:00+10:30",
    ]
    assert lh["requests"].tolist() == [8 + 1, 8 + 1, 4 + 1, 8, 4]  # and 1 ns after midnight


# -- prices -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def price_stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    """A few hand-made rows around a price change, with models priced, unpriced and free."""
    change = ns("2026-11-01T06:00Z")  # m-alpha's price changes here in the "full" table
    rows = [
        # user, tenant, model, timestamp, prompt, completion
        ("a", "t0", "m-alpha", change - 1, 1_000_000, 2_000_000),
        ("a", "t0", "m-alpha", change, 1_000_000, 2_000_000),
        ("a", "t0", "m-alpha", change + 1, 3, 0),
        ("b", "t0", "m-zero", change, 0, 0),  # no price, no tokens: costs 0
        ("b", "t0", "", change + 5, 0, 0),
        ("c", "t1", "m-unpriced", change + 7, 10, 0),  # tokens without a price
        ("c", "t1", "m-gamma", change + 8, 100, 1_000),
    ]
    frame = typed(
        pd.DataFrame(
            {
                "user_id": [r[0] for r in rows],
                "tenant": [r[1] for r in rows],
                "organization": "",
                "project": "",
                "api_key_id": "k",
                "api_method": "Chat",
                "model_id": [r[2] for r in rows],
                "status_code": 200,
                "timestamp": [r[3] for r in rows],
                "latency_ms": 100,
                "time_to_first_token_ms": 10,
                "prompt_tokens": [r[4] for r in rows],
                "completion_tokens": [r[5] for r in rows],
                "runtime_latency_ms": 0,
                "runtime_time_to_first_token_ms": 0,
            }
        )
    )
    store = Store(tmp_path_factory.mktemp("prices") / "store")
    store.auto_migrate()
    store.create_usage(frame)
    stage = Stage.of("prices", store, [change])
    yield stage
    stage.oracle.con.close()


def test_costs_by_hand(price_stage: Stage) -> None:
    store = price_stage.store
    change = ns("2026-11-01T06:00Z")
    metrics = ["prompt_cost", "completion_cost", "cost"]
    for key in ("full", "full_naive", "full_ny"):
        got = store.report("t0", change - 10, change + 10, by="model_id", metrics=metrics,
                           prices=PRICE_TABLES[key].build())  # fmt: skip
        assert got["model_id"].tolist() == ["", "m-alpha", "m-zero"]
        # 1M prompt + 2M completion tokens at (2.5, 10.0) per 1M before the change and at
        # (3.0, 12.5) from it on, plus 3 prompt tokens at 3.0 per 1M.
        prompt = 2.5 + 3.0 + 3 * 3.0 / 1e6
        completion = 20.0 + 25.0
        expected = [[0.0, 0.0, 0.0], [prompt, completion, prompt + completion], [0.0, 0.0, 0.0]]
        np.testing.assert_allclose(got[metrics].to_numpy(), expected, rtol=1e-12, atol=0)
    # A model with tokens and no price: an error, or NaN for its group only.
    with pytest.raises(MissingPriceError):
        store.report(
            "t1", change, change + 10, metrics=["cost"], prices=PRICE_TABLES["full"].build()
        )
    nan = PRICE_TABLES["full_nan"].build()
    got = store.report(
        None, change, change + 10, by=["tenant", "model_id"], metrics=metrics, prices=nan
    )
    assert got["model_id"].tolist() == ["", "m-alpha", "m-zero", "m-gamma", "m-unpriced"]
    assert np.isnan(got[metrics].to_numpy()[4]).all()
    assert not np.isnan(got[metrics].to_numpy()[:4]).any()
    # The unpriced rows are outside the window or filtered out: no error.
    store.report("t1", change, change + 7, metrics=["cost"], prices=PRICE_TABLES["full"].build())
    store.report("t1", change, change + 10, where={"model_id": Not("m-unpriced")},
                 metrics=["cost"], prices=PRICE_TABLES["full"].build())  # fmt: skip
    for seed in range(40):
        rng = random.Random(seed)
        prices = rng.choice(tuple(PRICE_TABLES))
        case = Case(
            rng.choice((None, "t0", "t1")),
            change - rng.randrange(0, 3),
            change + rng.randrange(0, 12),
            by=tuple(rng.sample(("tenant", "model_id", "user_id"), rng.randint(0, 2))),
            every=rng.choice((None, "1min", "1h", "1d")),
            tz=rng.choice(TZS),
            metrics=tuple(rng.sample((*COST_METRICS, "requests", "prompt_tokens"), 3)),
            prices=prices,
        )
        check_case(price_stage, case)


# -- arguments the contract rejects -----------------------------------------------------------


def test_rejected_arguments(stages: dict[str, Stage]) -> None:
    store = stages["appended"].store
    day = ns("2026-11-01")
    with pytest.raises(InvalidArgumentError):
        store.report("t0", day, day + NS_DAY, top=3)
    with pytest.raises(InvalidArgumentError):
        store.report("t0", day, day + NS_DAY, order_by="requests")
    with pytest.raises(InvalidArgumentError):
        store.report("t0", day, day + NS_DAY, metrics=["cost"])  # no prices
    with pytest.raises(InvalidArgumentError):
        store.report("t0", day, "2300-01-01", every="1d")


def test_bucket_limit(stages: dict[str, Stage]) -> None:
    """More than 1,000,000 buckets is refused; exactly 1,000,000 is not."""
    store = stages["appended"].store
    got = store.report("t0", 0, 1_000_000 * NS_MIN - 1, every="1min")
    assert got.empty and got.columns[0] == "bucket"
    got = store.report("t0", 0, 1_000_000 * NS_MIN, every="1min")
    assert got.empty and got.columns[0] == "bucket"
    with pytest.raises(InvalidArgumentError):
        store.report("t0", 0, 1_000_000 * NS_MIN + 1, every="1min")


def test_window_wholly_past_2262_raises(stages: dict[str, Stage]) -> None:
    """A window past year 2262 with every= is rejected, also when it starts there."""
    store = stages["appended"].store
    with pytest.raises(InvalidArgumentError):
        store.report("t0", "2026-11-01", "2263-01-02", every="1h")
    with pytest.raises(InvalidArgumentError):
        store.report("t0", "2263-01-01", "2263-01-02", every="1h")
