"""Property tests: exact round trips, and the store against an in-memory pandas model."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import INT32_COLUMNS, STRING_COLUMNS
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from usage_analytics import COLUMNS, DuplicateUsageError, Store, Usage

INPUT_COLUMNS: Final = list(COLUMNS[2:])
INT32_MAX: Final = 2**31 - 1
HOUR: Final = 3_600 * 10**9
DAY: Final = 24 * HOUR
D0: Final = int(pd.Timestamp("2026-11-01", tz="UTC").value)
ODD_TEXT: Final = ["", "a", "\x00", "a\x00b", "é", "😀", "\u202eabc", "日本語", " ", "Z"]

BASE: Final = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------------------------
# Strategies.

text = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=10))
int32 = st.one_of(st.sampled_from([0, 1, 200, INT32_MAX - 1, INT32_MAX]), st.integers(0, INT32_MAX))
status = st.one_of(st.sampled_from([0, 200, 404, 500, 999]), st.integers(0, 999))
#: Timestamps over five days around D0, day boundaries included, and the epoch itself.
timestamp = st.one_of(
    st.sampled_from([0, D0, D0 - 1, D0 + DAY, D0 + DAY - 1, D0 + 3 * DAY]),
    st.integers(D0 - DAY, D0 + 4 * DAY),
)


def _row(strings: st.SearchStrategy[str], ts: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    fields: dict[str, st.SearchStrategy[Any]] = dict.fromkeys(STRING_COLUMNS, strings)
    fields.update(dict.fromkeys(INT32_COLUMNS, int32))
    fields["status_code"] = status
    fields["timestamp"] = ts
    return st.fixed_dictionaries(fields)


def _key(row: dict[str, Any]) -> tuple[str, int]:
    return (row["user_id"], row["timestamp"])


unique_rows = st.lists(_row(text, timestamp), min_size=1, max_size=30, unique_by=_key)

# Small pools make key collisions, shared tenants and shared groups common in the model test.
pool_text = st.sampled_from(["", "a", "b", "é", "\x00"])
grid_timestamp = st.integers(0, 40).map(lambda i: D0 - DAY + i * 3 * HOUR)
model_row = _row(pool_text, grid_timestamp)
tenants = st.sampled_from(["", "a", "b", "é", "\x00"])


@st.composite
def windows(draw: st.DrawFn) -> tuple[str, int, int]:
    bounds = st.one_of(st.just(0), st.just(D0 + 10 * DAY), grid_timestamp, timestamp)
    lo, hi = sorted((draw(bounds), draw(bounds)))
    return draw(tenants), lo, hi


append_op = st.tuples(
    st.just("append"),
    st.lists(model_row, min_size=1, max_size=12),
    st.sampled_from(["error", "ignore"]),
)
delete_op = st.tuples(
    st.just("delete"),
    st.one_of(grid_timestamp, grid_timestamp.map(lambda t: t + 1), timestamp),
    st.one_of(st.none(), st.integers(0, 15)),
)
compact_op = st.tuples(st.just("compact"))
#: Appends the rows of the last append again, followed by new rows.
replay_op = st.tuples(
    st.just("replay"),
    st.lists(model_row, max_size=4),
    st.sampled_from(["error", "ignore"]),
)
first_append = st.tuples(
    st.just("append"),
    st.lists(model_row, min_size=10, max_size=25, unique_by=_key),
    st.just("error"),
)
operations = st.tuples(
    st.tuples(first_append, windows()),
    st.lists(
        st.tuples(st.one_of(append_op, replay_op, delete_op, compact_op), windows()),
        min_size=3,
        max_size=7,
    ),
).map(lambda t: [t[0], *t[1]])


# ---------------------------------------------------------------------------------------------
# Helpers.


@contextmanager
def _fresh_store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "ds")
        store.auto_migrate()
        yield store


def _as_input(rows: list[dict[str, Any]], form: str) -> Any:
    if form == "frame":
        return pd.DataFrame(rows, columns=INPUT_COLUMNS)
    if form == "usages":
        return [Usage(**row) for row in rows]
    return rows


def _tuples(df: pd.DataFrame, columns: list[str]) -> list[tuple[Any, ...]]:
    return [
        tuple(v.item() if isinstance(v, np.generic) else v for v in row)
        for row in df[columns].itertuples(index=False, name=None)
    ]


def _assert_dtypes(df: pd.DataFrame) -> None:
    assert list(df.columns) == list(COLUMNS)
    assert df["id"].dtype == np.int64
    assert df["timestamp"].dtype == np.int64
    assert str(df["created_at"].dtype) == "datetime64[us, UTC]"
    for name in STRING_COLUMNS:
        assert df[name].dtype == "str", name
    for name in INT32_COLUMNS:
        assert df[name].dtype == np.int32, name


def _assert_partitioned(store: Store) -> None:
    """Every data file sits in the folder of the UTC day of each of its rows."""
    for path in store.files():
        days = pq.read_table(path, columns=["timestamp"]).column("timestamp").to_numpy() // DAY
        folder = path.parent.name.removeprefix("date=")
        assert {str(np.datetime64(int(d), "D")) for d in days} == {folder}


# ---------------------------------------------------------------------------------------------
# Round trips.


def _check_round_trip(rows: list[dict[str, Any]], cuts: list[int], form: str) -> None:
    bounds = [0, *sorted(set(cuts)), len(rows)]
    batches = [rows[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    with _fresh_store() as store:
        for batch in batches:
            assert store.create_usage(_as_input(batch, form)) == len(batch)
        df = store.find_usages()
        _assert_partitioned(store)
    _assert_dtypes(df)
    assert df["id"].tolist() == list(range(1, len(rows) + 1))
    expected = [tuple(row[c] for c in INPUT_COLUMNS) for row in rows]
    assert _tuples(df, INPUT_COLUMNS) == expected
    assert df["created_at"].notna().all()
    sizes = [len(b) for b in batches]
    per_batch = np.repeat(np.arange(len(batches)), sizes)
    assert (df.groupby(per_batch)["created_at"].nunique() == 1).all()


@settings(BASE, max_examples=15)
@given(
    rows=unique_rows,
    cuts=st.lists(st.integers(0, 30), max_size=3),
    form=st.sampled_from(["dicts", "frame", "usages"]),
)
def test_valid_batches_round_trip_exactly(
    rows: list[dict[str, Any]], cuts: list[int], form: str
) -> None:
    _check_round_trip(rows, [c for c in cuts if c < len(rows)], form)


@pytest.mark.slow
@settings(BASE, max_examples=300)
@given(
    rows=unique_rows,
    cuts=st.lists(st.integers(0, 30), max_size=5),
    form=st.sampled_from(["dicts", "frame", "usages"]),
)
def test_valid_batches_round_trip_exactly_many(
    rows: list[dict[str, Any]], cuts: list[int], form: str
) -> None:
    _check_round_trip(rows, [c for c in cuts if c < len(rows)], form)


def test_round_trip_extremes() -> None:
    rows: list[dict[str, Any]] = [
        {
            **dict.fromkeys(STRING_COLUMNS, ""),
            **dict.fromkeys(INT32_COLUMNS, 0),
            "timestamp": 0,
        },
        {
            **{c: f"{c}-\x00-😀-\u202e-" + "x" * 1000 for c in STRING_COLUMNS},
            **dict.fromkeys(INT32_COLUMNS, INT32_MAX),
            "status_code": 999,
            "timestamp": 2**63 - 1,
        },
    ]
    _check_round_trip(rows, [1], "dicts")


aware_datetimes = st.builds(
    lambda naive, minutes: naive.replace(tzinfo=dt.timezone(dt.timedelta(minutes=minutes))),
    st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1)),
    st.integers(-14 * 60 + 1, 14 * 60 - 1),
)


@settings(BASE, max_examples=15)
@given(
    values=st.lists(
        st.one_of(
            aware_datetimes,
            st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2200, 1, 1)),
            aware_datetimes.map(pd.Timestamp),
        ),
        min_size=1,
        max_size=12,
        unique_by=lambda v: pd.Timestamp(v).value if v.tzinfo else pd.Timestamp(v, tz="UTC").value,
    ),
    form=st.sampled_from(["dicts", "frame"]),
)
def test_datetime_timestamps_are_stored_as_utc_nanoseconds(
    values: list[dt.datetime], form: str
) -> None:
    expected = [
        pd.Timestamp(v).value if v.tzinfo else pd.Timestamp(v, tz="UTC").value for v in values
    ]
    rows = [{"user_id": "u", "timestamp": v} for v in values]
    batch: Any = rows if form == "dicts" else pd.DataFrame({"user_id": "u", "timestamp": values})
    with _fresh_store() as store:
        assert store.create_usage(batch) == len(rows)
        assert store.find_usages()["timestamp"].tolist() == expected
        _assert_partitioned(store)


# ---------------------------------------------------------------------------------------------
# The store against a model.


def _model_frame(rows: list[dict[str, Any]], first_id: int) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=INPUT_COLUMNS).astype(object)
    df.insert(0, "id", range(first_id, first_id + len(rows)))
    return df


def _model_summary(model: pd.DataFrame, tenant: str, lo: int, hi: int) -> list[tuple[Any, ...]]:
    sel = model[
        (model["tenant"] == tenant) & (model["timestamp"] >= lo) & (model["timestamp"] < hi)
    ]
    out = []
    for method, group in sorted(sel.groupby("api_method"), key=lambda kv: kv[0]):
        total = len(group)
        success = int((group["status_code"] == 200).sum())
        out.append((method, total, success, total - success, group["latency_ms"].sum() / total))
    return out


def _model_groups(model: pd.DataFrame, tenant: str, lo: int, hi: int) -> list[tuple[Any, ...]]:
    sel = model[
        (model["tenant"] == tenant) & (model["timestamp"] >= lo) & (model["timestamp"] < hi)
    ]
    keys = ["api_key_id", "user_id", "model_id"]
    out = []
    for key, group in sorted(sel.groupby(keys), key=lambda kv: kv[0]):
        total = len(group)
        out.append(
            (
                *key,
                total,
                int(group["prompt_tokens"].sum()),
                int(group["completion_tokens"].sum()),
                group["latency_ms"].sum() / total,
                group["time_to_first_token_ms"].sum() / total,
            )
        )
    return out


def _same_report(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> bool:
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if len(g) != len(w):
            return False
        for a, b in zip(g, w, strict=True):
            same = math.isclose(a, b, rel_tol=1e-12) if isinstance(b, float) else a == b
            if not same:
                return False
    return True


def _check_against_model(ops: list[tuple[tuple[Any, ...], tuple[str, int, int]]]) -> None:
    model = _model_frame([], 1)
    next_id = 1
    last: list[dict[str, Any]] = []
    with _fresh_store() as store:
        for op, (tenant, lo, hi) in ops:
            if op[0] in ("append", "replay"):
                rows, on_conflict = op[1], op[2]
                if op[0] == "replay":
                    rows = last + rows
                last = rows
                batch = pd.DataFrame(rows, columns=INPUT_COLUMNS)
                repeated = batch.duplicated(["user_id", "timestamp"], keep="first")
                stored = pd.MultiIndex.from_frame(batch[["user_id", "timestamp"]]).isin(
                    pd.MultiIndex.from_frame(model[["user_id", "timestamp"]].astype(object))
                )
                clash = repeated.to_numpy() | stored
                if on_conflict == "error" and clash.any():
                    event("append rejected")
                    with pytest.raises(DuplicateUsageError):
                        store.create_usage(rows)
                else:
                    event(f"append {on_conflict}, {int(clash.sum() > 0)} clash")
                    kept = [r for r, c in zip(rows, clash, strict=True) if not c]
                    assert store.create_usage(rows, on_conflict=on_conflict) == len(kept)
                    model = pd.concat([model, _model_frame(kept, next_id)], ignore_index=True)
                    next_id += len(kept)
            elif op[0] == "delete":
                cutoff, limit = op[1], op[2]
                doomed = model[model["timestamp"] < cutoff].sort_values(["timestamp", "id"])
                if limit is not None:
                    doomed = doomed.head(limit)
                event(f"delete {len(doomed)} of {len(model)}, limit {limit is not None}")
                assert store.delete_usage(cutoff, limit=limit) == len(doomed)
                model = model[~model["id"].isin(doomed["id"])].reset_index(drop=True)
            else:
                before = Counter(p.parent.name for p in store.files())
                event(f"compact {sum(1 for n in before.values() if n > 1)}")
                assert store.compact() == sum(1 for n in before.values() if n > 1)
                after = Counter(p.parent.name for p in store.files())
                assert after == Counter(dict.fromkeys(before, 1))

            df = store.find_usages()
            _assert_dtypes(df)
            _assert_partitioned(store)
            assert _tuples(df, ["id", *INPUT_COLUMNS]) == _tuples(
                model.sort_values("id"), ["id", *INPUT_COLUMNS]
            )
            event(f"report window non-empty: {bool(_model_summary(model, tenant, lo, hi))}")
            summary = _tuples(store.aggregated_usage(tenant, lo, hi), SUMMARY_COLUMNS)
            assert _same_report(summary, _model_summary(model, tenant, lo, hi)), (tenant, lo, hi)
            groups = _tuples(store.get_usages_by_groups(tenant, lo, hi), GROUP_COLUMNS)
            assert _same_report(groups, _model_groups(model, tenant, lo, hi)), (tenant, lo, hi)


SUMMARY_COLUMNS: Final = [
    "api_method",
    "total_requests",
    "success_requests",
    "failure_requests",
    "average_latency",
]
GROUP_COLUMNS: Final = [
    "api_key_id",
    "user_id",
    "model_id",
    "total_requests",
    "total_prompt_tokens",
    "total_completion_tokens",
    "average_latency",
    "average_time_to_first_token",
]


@settings(BASE, max_examples=10)
@given(ops=operations)
def test_operations_match_a_pandas_model(
    ops: list[tuple[tuple[Any, ...], tuple[str, int, int]]],
) -> None:
    _check_against_model(ops)


@pytest.mark.slow
@settings(BASE, max_examples=150)
@given(ops=st.lists(operations, min_size=1, max_size=3).map(lambda c: list(itertools.chain(*c))))
def test_operations_match_a_pandas_model_many(
    ops: list[tuple[tuple[Any, ...], tuple[str, int, int]]],
) -> None:
    _check_against_model(ops)
