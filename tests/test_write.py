"""create_usage, auto_migrate and the life cycle of a store."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import (
    DAY0,
    EXPECTED_COLUMNS,
    INPUT_COLUMNS,
    INT32_COLUMNS,
    METADATA_FILE,
    NS_PER_DAY,
    STRING_COLUMNS,
    assert_stored_dtypes,
    data_files,
    dataset_state,
    day_of,
    edit_latest_commit,
    list_entries,
    new_store,
    partition_dirs,
    random_usage_frame,
    snapshot_files,
    stored_input_columns,
    usage_frame,
    usage_row,
)

import usage_analytics
from usage_analytics import (
    COLUMNS,
    CorruptDatasetError,
    DatasetNotInitializedError,
    DuplicateUsageError,
    IncompatibleDatasetError,
    InvalidArgumentError,
    LockTimeoutError,
    StorageError,
    Store,
    Usage,
    UsageAnalyticsError,
    ValidationError,
)

T1 = DAY0 + 3_600 * 10**9  # 2026-11-01 01:00 UTC


def _full_usage(**values: Any) -> Usage:
    base = dict(
        user_id="u1",
        tenant="t1",
        organization="org",
        project="proj",
        api_key_id="key1",
        api_method="GetFoo",
        status_code=200,
        timestamp=T1,
        latency_ms=120,
        model_id="model-a",
        time_to_first_token_ms=15,
        prompt_tokens=300,
        completion_tokens=40,
        runtime_latency_ms=90,
        runtime_time_to_first_token_ms=11,
    )
    base.update(values)
    return Usage(**base)


def _values(usage: Usage) -> dict[str, Any]:
    return {name: getattr(usage, name) for name in INPUT_COLUMNS}


def _assert_rows(store: Store, expected: list[dict[str, Any]]) -> pd.DataFrame:
    """The stored rows, in id order, hold exactly ``expected`` in their input columns."""
    found = store.find_usages()
    assert_stored_dtypes(found)
    pd.testing.assert_index_equal(found.index, pd.RangeIndex(len(expected)))
    got = stored_input_columns(found).to_dict("records")
    assert got == [usage_row(**row) for row in expected]
    return found


# -- the accepted inputs ---------------------------------------------------------------------


def test_create_with_usage_objects(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    a = _full_usage()
    b = _full_usage(user_id="u2", timestamp=T1 + 5, status_code=500, latency_ms=7)
    assert store.create_usage(a, b) == 2
    found = _assert_rows(store, [_values(a), _values(b)])
    assert found["id"].is_unique
    assert found["id"].is_monotonic_increasing
    assert found["created_at"].notna().all()
    assert found.loc[1, "status_code"] == 500
    assert found.loc[0, "runtime_time_to_first_token_ms"] == 11


def test_create_with_mappings(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    rows = [
        {"user_id": "m1", "tenant": "t", "timestamp": T1, "latency_ms": 5},
        {"user_id": "m2", "tenant": "t", "timestamp": T1 + 1, "prompt_tokens": 12},
    ]
    assert store.create_usage(*rows) == 2
    _assert_rows(store, rows)


def test_create_with_a_single_list(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    usages = [_full_usage(user_id=f"l{i}", timestamp=T1 + i) for i in range(3)]
    assert store.create_usage(usages) == 3
    mappings = [{"user_id": f"m{i}", "timestamp": T1 + i} for i in range(2)]
    assert store.create_usage(mappings) == 2
    _assert_rows(store, [_values(u) for u in usages] + mappings)


def test_create_with_a_dataframe(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    frame = random_usage_frame(40, seed=3, days=2)
    frame.index = pd.Index(np.arange(100, 100 + len(frame)) * 3)
    assert store.create_usage(frame) == len(frame)
    found = store.find_usages()
    assert_stored_dtypes(found)
    pd.testing.assert_frame_equal(stored_input_columns(found), frame.reset_index(drop=True))


def test_dataframe_with_columns_in_another_order_and_object_dtypes(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    frame = pd.DataFrame(
        {
            "latency_ms": [3, 4],
            "timestamp": [T1, T1 + 1],
            "user_id": pd.Series(["x", "y"], dtype=object),
            "status_code": np.array([200, 404], dtype=np.int64),
        }
    )
    assert store.create_usage(frame) == 2
    _assert_rows(
        store,
        [
            {"user_id": "x", "timestamp": T1, "latency_ms": 3, "status_code": 200},
            {"user_id": "y", "timestamp": T1 + 1, "latency_ms": 4, "status_code": 404},
        ],
    )


def test_missing_optional_columns_get_zero_values(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    assert store.create_usage({"timestamp": T1}) == 1
    assert store.create_usage(pd.DataFrame({"timestamp": [T1 + 1], "user_id": ["z"]})) == 1
    assert store.create_usage(Usage(timestamp=T1 + 2)) == 1
    found = store.find_usages()
    assert_stored_dtypes(found)
    for name in STRING_COLUMNS:
        expected = ["", "z", ""] if name == "user_id" else ["", "", ""]
        assert found[name].tolist() == expected, name
    for name in INT32_COLUMNS:
        assert found[name].tolist() == [0, 0, 0], name
    assert found["timestamp"].tolist() == [T1, T1 + 1, T1 + 2]


def test_rows_with_different_keys_in_one_batch(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    rows = [
        {"user_id": "a", "timestamp": T1, "latency_ms": 9},
        {"user_id": "b", "timestamp": T1, "model_id": "m"},
    ]
    assert store.create_usage(rows) == 2
    _assert_rows(store, rows)


# -- timestamps ------------------------------------------------------------------------------

_PLUS2 = dt.timezone(dt.timedelta(hours=2))
_NS_STAMP = pd.Timestamp(1_793_494_800_123_456_789, unit="ns")

TIMESTAMP_INPUTS: list[tuple[str, Callable[[], Any], int]] = [
    ("int", lambda: {"timestamp": T1}, T1),
    ("numpy int", lambda: {"timestamp": np.int64(T1)}, T1),
    ("naive datetime", lambda: {"timestamp": dt.datetime(2026, 11, 1, 1)}, T1),
    (
        "aware datetime",
        lambda: {"timestamp": dt.datetime(2026, 11, 1, 3, tzinfo=_PLUS2)},
        T1,
    ),
    (
        "datetime with microseconds",
        lambda: {"timestamp": dt.datetime(2026, 11, 1, 1, 0, 0, 250)},
        T1 + 250_000,
    ),
    ("naive Timestamp", lambda: {"timestamp": pd.Timestamp("2026-11-01 01:00")}, T1),
    (
        "aware Timestamp",
        lambda: {"timestamp": pd.Timestamp("2026-11-01 10:00", tz="Asia/Tokyo")},
        T1,
    ),
    ("Timestamp with nanoseconds", lambda: {"timestamp": _NS_STAMP}, _NS_STAMP.value),
    ("Usage with Timestamp", lambda: Usage(timestamp=pd.Timestamp("2026-11-01 01:00")), T1),
    (
        "frame datetime64[ns]",
        lambda: pd.DataFrame({"timestamp": pd.to_datetime(["2026-11-01 01:00"])}),
        T1,
    ),
    (
        "frame datetime64[us]",
        lambda: pd.DataFrame({"timestamp": pd.to_datetime(["2026-11-01 01:00"]).as_unit("us")}),
        T1,
    ),
    (
        "frame datetime64[s]",
        lambda: pd.DataFrame({"timestamp": pd.to_datetime(["2026-11-01 01:00"]).as_unit("s")}),
        T1,
    ),
    (
        "frame datetime64[ns, tz]",
        lambda: pd.DataFrame(
            {"timestamp": pd.to_datetime(["2026-10-31 21:00"]).tz_localize("America/New_York")}
        ),
        T1,
    ),
    (
        "frame of datetime objects",
        lambda: pd.DataFrame({"timestamp": pd.Series([dt.datetime(2026, 11, 1, 1)], dtype=object)}),
        T1,
    ),
]


@pytest.mark.parametrize(
    ("label", "make", "expected"), TIMESTAMP_INPUTS, ids=[t[0] for t in TIMESTAMP_INPUTS]
)
def test_timestamp_forms_are_stored_as_int_ns(
    tmp_path: Path, label: str, make: Callable[[], Any], expected: int
) -> None:
    store = new_store(tmp_path / "usage")
    assert store.create_usage(make()) == 1
    found = store.find_usages()
    assert found["timestamp"].dtype == np.int64
    assert found["timestamp"].tolist() == [expected]
    assert partition_dirs(store.root) == [f"date={day_of(expected)}"]


def test_naive_and_aware_timestamps_in_one_batch(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    rows = [
        {"user_id": "n", "timestamp": pd.Timestamp("2026-11-01 01:00")},
        {"user_id": "a", "timestamp": pd.Timestamp("2026-11-01 01:00", tz="Etc/GMT-3")},
        {"user_id": "d", "timestamp": dt.datetime(2026, 11, 2, 23, 30, tzinfo=_PLUS2)},
    ]
    assert store.create_usage(rows) == 3
    assert store.find_usages()["timestamp"].tolist() == [
        T1,
        T1 - 3 * 3_600 * 10**9,
        DAY0 + NS_PER_DAY + 21 * 3_600 * 10**9 + 30 * 60 * 10**9,
    ]
    assert partition_dirs(store.root) == ["date=2026-10-31", "date=2026-11-01", "date=2026-11-02"]


@pytest.mark.parametrize("unit", ["s", "us", "ns"])
def test_numpy_datetime64_values_in_mappings(tmp_path: Path, unit: str) -> None:
    store = new_store(tmp_path / "usage")
    value = np.datetime64("2026-11-01T01:00:00", unit)
    assert store.create_usage({"user_id": "a", "timestamp": value}) == 1
    assert store.create_usage(Usage(user_id="b", timestamp=value)) == 1
    assert store.find_usages()["timestamp"].tolist() == [T1, T1]


def test_timestamp_forms_mixed_in_one_batch(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    usages = [
        Usage(user_id="int", timestamp=T1),
        Usage(user_id="ts", timestamp=pd.Timestamp("2026-11-01 01:00")),
        Usage(user_id="dt", timestamp=dt.datetime(2026, 11, 1, 3, tzinfo=_PLUS2)),
    ]
    assert store.create_usage(usages) == 3
    found = store.find_usages()
    assert found["user_id"].tolist() == ["int", "ts", "dt"]
    assert found["timestamp"].tolist() == [T1, T1, T1]


# -- ids, created_at, counts -----------------------------------------------------------------


def test_ids_unique_and_increasing_in_insertion_order(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    # Insertion order deliberately differs from timestamp, tenant and day order.
    first = [
        {"user_id": "c", "tenant": "t2", "timestamp": DAY0 + 2 * NS_PER_DAY},
        {"user_id": "a", "tenant": "t0", "timestamp": DAY0 + NS_PER_DAY + 5},
        {"user_id": "b", "tenant": "t1", "timestamp": DAY0},
        {"user_id": "d", "tenant": "t0", "timestamp": DAY0 + NS_PER_DAY + 1},
    ]
    second = [
        {"user_id": "f", "tenant": "t0", "timestamp": DAY0 - 10},
        {"user_id": "e", "tenant": "t9", "timestamp": DAY0 + NS_PER_DAY + 3},
    ]
    assert store.create_usage(first) == 4
    ids_first = store.find_usages()["id"].tolist()
    assert store.create_usage(second) == 2
    found = store.find_usages()
    ids = found["id"].tolist()
    assert len(set(ids)) == 6
    assert ids == sorted(ids)
    assert ids[:4] == ids_first
    assert min(ids[4:]) > max(ids_first)
    assert found["user_id"].tolist() == ["c", "a", "b", "d", "f", "e"]
    assert found["timestamp"].tolist() == [r["timestamp"] for r in first + second]


def test_created_at_is_set_by_the_store_and_input_ignored(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    before = pd.Timestamp.now(tz="UTC").floor("us")
    given = pd.Timestamp("2000-01-01", tz="UTC")
    rows: list[Any] = [
        Usage(user_id="a", timestamp=T1, id=777, created_at=given),
        {"user_id": "b", "timestamp": T1, "id": -5, "created_at": "not a time"},
    ]
    assert store.create_usage(rows) == 2
    frame = pd.DataFrame({"user_id": ["c"], "timestamp": [T1], "id": [None], "created_at": [None]})
    assert store.create_usage(frame) == 1
    after = pd.Timestamp.now(tz="UTC").ceil("us")
    found = store.find_usages()
    assert found["created_at"].dtype == "datetime64[us, UTC]"
    assert found["created_at"].between(before, after).all()
    assert 777 not in found["id"].tolist()
    assert -5 not in found["id"].tolist()
    assert found["id"].is_unique
    assert (found["id"] >= 0).all()
    assert found["user_id"].tolist() == ["a", "b", "c"]


def test_returns_the_number_of_rows_written(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    assert store.create_usage(random_usage_frame(25, seed=1)) == 25
    assert store.create_usage({"user_id": "solo", "timestamp": 1}) == 1
    assert len(store.find_usages()) == 26


def test_reopened_store_sees_the_same_rows(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    store.create_usage(random_usage_frame(30, seed=2, days=3))
    before = store.find_usages()
    again = Store(tmp_path / "usage")
    pd.testing.assert_frame_equal(again.find_usages(), before)
    again.auto_migrate()
    pd.testing.assert_frame_equal(Store(str(tmp_path / "usage")).find_usages(), before)
    assert again.create_usage({"user_id": "new", "timestamp": T1}) == 1
    after = store.find_usages()
    assert len(after) == 31
    assert after["id"].iloc[-1] > before["id"].max()


def test_find_usages_of_an_empty_store(tmp_path: Path) -> None:
    found = new_store(tmp_path / "usage").find_usages()
    assert found.empty
    assert_stored_dtypes(found)
    pd.testing.assert_index_equal(found.index, pd.RangeIndex(0))


def test_a_batch_spanning_several_days_writes_one_partition_per_day(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    stamps = [DAY0 - 1, DAY0, DAY0 + 1, DAY0 + NS_PER_DAY + 7, DAY0 + 3 * NS_PER_DAY - 1]
    rows = [{"user_id": f"u{i}", "timestamp": t} for i, t in enumerate(stamps)]
    assert store.create_usage(rows) == 5
    assert partition_dirs(store.root) == [
        "date=2026-10-31",
        "date=2026-11-01",
        "date=2026-11-02",
        "date=2026-11-03",
    ]
    files = data_files(store.root)
    assert all(len(names) >= 1 for names in files.values())
    assert sorted(store.find_usages()["timestamp"].tolist()) == stamps


# -- duplicates ------------------------------------------------------------------------------


def test_duplicate_inside_the_batch_raises_and_writes_nothing(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    store.create_usage({"user_id": "keep", "timestamp": T1})
    before = snapshot_files(store.root)
    rows = [
        {"user_id": "dup", "timestamp": T1 + 1, "latency_ms": 1},
        {"user_id": "fine", "timestamp": T1 + 2},
        {"user_id": "dup", "timestamp": T1 + 1, "latency_ms": 2},
        {"user_id": "dup", "timestamp": T1 + 3},
    ]
    with pytest.raises(DuplicateUsageError) as info:
        store.create_usage(rows)
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, UsageAnalyticsError)
    assert isinstance(err.keys, pd.DataFrame)
    keys = err.keys[["user_id", "timestamp"]].drop_duplicates()
    assert keys.astype(object).to_dict("records") == [{"user_id": "dup", "timestamp": T1 + 1}]
    assert "dup" in str(err)
    assert str(T1 + 1) in str(err)
    assert snapshot_files(store.root) == before
    assert store.find_usages()["user_id"].tolist() == ["keep"]


def test_duplicate_of_a_stored_row_raises_and_writes_nothing(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    store.create_usage(
        [
            {"user_id": "a", "timestamp": T1},
            {"user_id": "b", "timestamp": T1 + NS_PER_DAY},
        ]
    )
    before = snapshot_files(store.root)
    entries = list_entries(store.root)
    batch = [
        {"user_id": "new", "timestamp": T1 + 10},
        {"user_id": "b", "timestamp": T1 + NS_PER_DAY, "latency_ms": 3},
        {"user_id": "a", "timestamp": T1 + 1},
        {"user_id": "new2", "timestamp": T1 + 2 * NS_PER_DAY},
    ]
    with pytest.raises(DuplicateUsageError) as info:
        store.create_usage(batch)
    keys = info.value.keys
    assert keys[["user_id", "timestamp"]].astype(object).to_dict("records") == [
        {"user_id": "b", "timestamp": T1 + NS_PER_DAY}
    ]
    assert "'b'" in str(info.value) or '"b"' in str(info.value)
    assert str(T1 + NS_PER_DAY) in str(info.value)
    assert snapshot_files(store.root) == before
    assert list_entries(store.root) == entries
    assert store.find_usages()["user_id"].tolist() == ["a", "b"]


def test_every_repeated_key_is_listed(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    store.create_usage([{"user_id": "s1", "timestamp": T1}, {"user_id": "s2", "timestamp": T1}])
    before = snapshot_files(store.root)
    batch = [
        {"user_id": "s1", "timestamp": T1},
        {"user_id": "s2", "timestamp": T1},
        {"user_id": "s3", "timestamp": T1 + 99},
        {"user_id": "s1", "timestamp": T1 + NS_PER_DAY},
    ]
    with pytest.raises(DuplicateUsageError) as info:
        store.create_usage(batch)
    keys = info.value.keys[["user_id", "timestamp"]].astype(object)
    assert sorted(map(tuple, keys.to_numpy().tolist())) == [("s1", T1), ("s2", T1)]
    message = str(info.value)
    for user in ("s1", "s2"):
        assert f"'{user}'" in message or f'"{user}"' in message
    assert "s3" not in message
    assert snapshot_files(store.root) == before


def test_same_timestamp_other_user_is_not_a_duplicate(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    assert store.create_usage({"user_id": "a", "timestamp": T1}) == 1
    pair = [{"user_id": "b", "timestamp": T1}, {"user_id": "A", "timestamp": T1}]
    assert store.create_usage(pair) == 2
    assert store.create_usage({"user_id": "a", "timestamp": T1 + 1}) == 1
    assert len(store.find_usages()) == 4


def test_duplicate_given_as_another_timestamp_form(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    store.create_usage({"user_id": "a", "timestamp": T1})
    before = snapshot_files(store.root)
    with pytest.raises(DuplicateUsageError):
        store.create_usage({"user_id": "a", "timestamp": pd.Timestamp("2026-11-01 01:00")})
    assert snapshot_files(store.root) == before


def test_ignore_skips_in_batch_repeats_keeping_the_first(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    rows = [
        {"user_id": "dup", "timestamp": T1, "latency_ms": 1},
        {"user_id": "other", "timestamp": T1},
        {"user_id": "dup", "timestamp": T1, "latency_ms": 2},
        {"user_id": "dup", "timestamp": T1, "latency_ms": 3},
    ]
    assert store.create_usage(rows, on_conflict="ignore") == 2
    found = store.find_usages()
    assert found["user_id"].tolist() == ["dup", "other"]
    assert found["latency_ms"].tolist() == [1, 0]


def test_ignore_skips_stored_keys_and_writes_the_rest(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    store.create_usage({"user_id": "a", "timestamp": T1, "latency_ms": 5})
    batch = [
        {"user_id": "a", "timestamp": T1, "latency_ms": 99},
        {"user_id": "b", "timestamp": T1, "latency_ms": 6},
        {"user_id": "c", "timestamp": T1 + NS_PER_DAY, "latency_ms": 7},
    ]
    assert store.create_usage(batch, on_conflict="ignore") == 2
    found = store.find_usages()
    assert found["user_id"].tolist() == ["a", "b", "c"]
    assert found["latency_ms"].tolist() == [5, 6, 7]


def test_ignore_makes_a_reload_idempotent(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    frame = random_usage_frame(120, seed=11, days=3)
    assert store.create_usage(frame, on_conflict="ignore") == len(frame)
    before = snapshot_files(store.root)
    rows = store.find_usages()
    assert store.create_usage(frame, on_conflict="ignore") == 0
    assert snapshot_files(store.root) == before
    pd.testing.assert_frame_equal(store.find_usages(), rows)
    with pytest.raises(DuplicateUsageError) as info:
        store.create_usage(frame)
    assert len(info.value.keys) == len(frame)
    assert snapshot_files(store.root) == before


def test_bad_on_conflict_raises_value_error(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    before = snapshot_files(store.root)
    for value in ("skip", "IGNORE", None, ""):
        with pytest.raises(ValueError):
            store.create_usage({"user_id": "a", "timestamp": T1}, on_conflict=value)
    assert snapshot_files(store.root) == before
    assert store.find_usages().empty


# -- empty batches ---------------------------------------------------------------------------


def test_empty_dataframe_returns_zero_and_writes_nothing(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    store.create_usage({"user_id": "a", "timestamp": T1})
    before = snapshot_files(store.root)
    assert store.create_usage(usage_frame([])) == 0
    assert store.create_usage(pd.DataFrame({"timestamp": pd.Series([], dtype=np.int64)})) == 0
    assert snapshot_files(store.root) == before
    assert len(store.find_usages()) == 1


@pytest.mark.parametrize("args", [(), ([],)], ids=["no arguments", "empty list"])
def test_empty_batch_of_items_returns_zero(tmp_path: Path, args: tuple[Any, ...]) -> None:
    store = new_store(tmp_path / "usage")
    before = snapshot_files(store.root)
    assert store.create_usage(*args) == 0
    assert snapshot_files(store.root) == before


# -- life cycle: auto_migrate, versions ------------------------------------------------------


def _methods() -> list[tuple[str, Callable[[Store], Any]]]:
    return [
        ("create_usage", lambda s: s.create_usage({"user_id": "a", "timestamp": T1})),
        ("create_usage empty frame", lambda s: s.create_usage(usage_frame([]))),
        ("find_usages", lambda s: s.find_usages()),
        ("aggregated_usage", lambda s: s.aggregated_usage("t0", 0, T1)),
        ("get_usages_by_groups", lambda s: s.get_usages_by_groups("t0", 0, T1)),
        ("delete_usage", lambda s: s.delete_usage(T1)),
        ("delete_usage with limit", lambda s: s.delete_usage(T1, limit=1)),
    ]


@pytest.mark.parametrize(("name", "call"), _methods(), ids=[m[0] for m in _methods()])
@pytest.mark.parametrize("root_exists", [False, True], ids=["no folder", "empty folder"])
def test_methods_before_auto_migrate_raise_not_initialized(
    tmp_path: Path, name: str, call: Callable[[Store], Any], root_exists: bool
) -> None:
    root = tmp_path / "usage"
    if root_exists:
        root.mkdir()
    store = Store(root)
    with pytest.raises(DatasetNotInitializedError, match=r"auto_migrate\(\)") as info:
        call(store)
    assert isinstance(info.value, UsageAnalyticsError)
    assert root.exists() == root_exists
    assert list_entries(root) == []


def test_auto_migrate_creates_the_dataset(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "usage"
    store = Store(root)
    assert store.auto_migrate() is None
    assert root.is_dir()
    meta = json.loads((root / METADATA_FILE).read_text())
    assert meta == {"format": "usage_analytics", "format_version": 2, "log": "_delta_log"}
    assert dataset_state(root)["schema_version"] == 2 == usage_analytics.SCHEMA_VERSION
    assert all(name.startswith(("_", ".")) for name in os.listdir(root))
    assert store.find_usages().empty


def test_auto_migrate_is_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "usage"
    store = Store(root)
    store.auto_migrate()
    first = snapshot_files(root)
    entries = list_entries(root)
    store.auto_migrate()
    Store(root).auto_migrate()
    assert snapshot_files(root) == first
    assert list_entries(root) == entries
    store.create_usage(random_usage_frame(20, seed=5, days=2))
    with_data = snapshot_files(root)
    rows = store.find_usages()
    store.auto_migrate()
    Store(str(root)).auto_migrate()
    assert snapshot_files(root) == with_data
    pd.testing.assert_frame_equal(store.find_usages(), rows)


def _bump_schema_version(root: Path, version: int = 99) -> None:
    def bump(actions: list[dict[str, Any]]) -> None:
        for action in actions:
            if action.get("domainMetadata", {}).get("domain") == "usage_analytics":
                action["domainMetadata"]["configuration"]["schema_version"] = version

    edit_latest_commit(root, bump)


@pytest.mark.parametrize(
    ("name", "call"),
    [("auto_migrate", lambda s: s.auto_migrate()), *_methods()],
    ids=["auto_migrate", *[m[0] for m in _methods()]],
)
def test_newer_schema_version_raises_incompatible(
    tmp_path: Path, name: str, call: Callable[[Store], Any]
) -> None:
    root = tmp_path / "usage"
    store = new_store(root)
    store.create_usage({"user_id": "x", "tenant": "t0", "timestamp": 5})
    _bump_schema_version(root)
    before = snapshot_files(root)
    with pytest.raises(IncompatibleDatasetError) as info:
        call(Store(root))
    assert isinstance(info.value, UsageAnalyticsError)
    assert snapshot_files(root) == before


def test_store_accepts_str_and_pathlike(tmp_path: Path) -> None:
    class Where:
        def __init__(self, path: Path) -> None:
            self.path = path

        def __fspath__(self) -> str:
            return str(self.path)

    for i, make in enumerate([str, Path, Where]):
        target = tmp_path / f"usage{i}"
        store = Store(make(target))
        assert isinstance(store.root, Path)
        assert store.root == target
        store.auto_migrate()
        assert (target / METADATA_FILE).is_file()
        assert store.create_usage({"user_id": "a", "timestamp": T1}) == 1
        assert store.find_usages()["timestamp"].tolist() == [T1]


def test_columns_constant() -> None:
    assert tuple(COLUMNS) == EXPECTED_COLUMNS
    assert tuple(usage_analytics.UsageSchema.to_schema().columns) == EXPECTED_COLUMNS


@pytest.mark.parametrize(
    "error",
    [
        ValidationError,
        DuplicateUsageError,
        DatasetNotInitializedError,
        IncompatibleDatasetError,
        InvalidArgumentError,
        LockTimeoutError,
        StorageError,
        CorruptDatasetError,
    ],
)
def test_errors_derive_from_the_base_error(error: type[Exception]) -> None:
    assert issubclass(error, UsageAnalyticsError)
    assert getattr(usage_analytics, error.__name__) is error


def test_input_errors_are_value_errors() -> None:
    for error in (ValidationError, DuplicateUsageError, InvalidArgumentError):
        assert issubclass(error, ValueError)


def test_every_stored_row_keeps_every_value(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    big = 2**31 - 1
    row = usage_row(
        user_id="ü-ñ 日本 😀",
        tenant="t",
        organization="o",
        project="p",
        api_key_id="k",
        api_method="M",
        status_code=999,
        timestamp=2**62,
        latency_ms=big,
        model_id="m",
        time_to_first_token_ms=big,
        prompt_tokens=big,
        completion_tokens=big,
        runtime_latency_ms=big,
        runtime_time_to_first_token_ms=big,
    )
    zero = usage_row(timestamp=0)
    assert store.create_usage([row, zero]) == 2
    _assert_rows(store, [row, zero])


def test_stored_rows_satisfy_usage_schema(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    assert store.create_usage(random_usage_frame(30, seed=12, days=2)) == 30
    found = store.find_usages()
    pd.testing.assert_frame_equal(usage_analytics.UsageSchema.validate(found), found)
    empty = new_store(tmp_path / "empty").find_usages()
    assert usage_analytics.UsageSchema.validate(empty).empty


def _append_one_by_one(store: Store, rows: pd.DataFrame) -> None:
    for i in range(len(rows)):
        assert store.create_usage(rows.iloc[i : i + 1]) == 1


def test_single_row_appends_merge_their_files_and_keep_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usage_analytics import _layout

    monkeypatch.setattr(_layout, "MERGE_FANOUT", 4)  # size classes 1-3, 4-15, 16-63, ...
    store = new_store(tmp_path)
    rows = random_usage_frame(65, 71, days=1, tenants=("t0", "t1"))
    bulk = random_usage_frame(1500, 72, days=1, users=500)  # never merged: too large
    bulk["timestamp"] += 1  # keeps its keys apart from the small rows'
    store.create_usage(bulk, on_conflict="ignore")
    kept = len(store.find_usages())
    _append_one_by_one(store, rows.iloc[:3])
    assert sum(map(len, data_files(store.root).values())) == 4  # the bulk file, 3 single rows
    _append_one_by_one(store, rows.iloc[3:4])
    assert sorted(e.rows for e in store._ds.snapshot().files) == [4, kept]
    _append_one_by_one(store, rows.iloc[4:64])
    assert sorted(e.rows for e in store._ds.snapshot().files) == [64, kept]  # 4 -> 16 -> 64
    _append_one_by_one(store, rows.iloc[64:])
    assert sorted(e.rows for e in store._ds.snapshot().files) == [1, 64, kept]
    assert sum(map(len, data_files(store.root).values())) == 3  # merged files left the disk
    stored = store.find_usages()
    assert stored["id"].tolist() == list(range(1, kept + 66))
    got = stored.iloc[kept:].reset_index(drop=True)
    for column in INPUT_COLUMNS:
        assert got[column].tolist() == rows[column].tolist(), column


def test_files_at_the_merge_cutoff_are_never_merged_on_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usage_analytics import _layout

    monkeypatch.setattr(_layout, "MERGE_FANOUT", 4)
    monkeypatch.setattr(_layout, "MERGE_BELOW_ROWS", 16)
    store = new_store(tmp_path)
    rows = random_usage_frame(64, 73, days=1, tenants=("t0", "t1"))
    _append_one_by_one(store, rows)
    # A file of 16 rows is never merged again: four of them stay apart (below the cutoff,
    # four files of one size class would have become one of 64 rows).
    assert sorted(e.rows for e in store._ds.snapshot().files) == [16, 16, 16, 16]
    assert store.find_usages()["user_id"].tolist() == rows["user_id"].tolist()
