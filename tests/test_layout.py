"""The files on disk: hive-style day partitions that other engines read as they are."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from helpers import (
    DAY0,
    EXPECTED_COLUMNS,
    METADATA_FILE,
    NS_PER_DAY,
    PARTITION_RE,
    data_files,
    dataset_state,
    day_of,
    new_store,
    partition_dirs,
    random_usage_frame,
    reference_groups,
    reference_summary,
    usage_row,
)

from usage_analytics import Store

EDGE_STAMPS = [
    0,
    NS_PER_DAY - 1,
    NS_PER_DAY,
    DAY0 - 1,
    DAY0,
    DAY0 + NS_PER_DAY - 1,
    DAY0 + 4 * NS_PER_DAY,
    2**62,
]


def _build(root: Path) -> Store:
    store = new_store(root)
    frame = random_usage_frame(240, seed=99, days=4)
    assert store.create_usage(frame.iloc[:100]) == 100
    assert store.create_usage(frame.iloc[100:]) == len(frame) - 100
    edges = [usage_row(user_id="edge", tenant="t0", timestamp=t) for t in EDGE_STAMPS]
    assert store.create_usage(edges) == len(EDGE_STAMPS)
    return store


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """One store for the tests that only read."""
    return _build(tmp_path_factory.mktemp("layout") / "usage")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A store of its own, for the tests that change it."""
    return _build(tmp_path / "usage")


def _expected_days(store: Store) -> list[str]:
    return sorted({day_of(t) for t in store.find_usages()["timestamp"]})


def _assert_same_rows(other: pd.DataFrame, store: Store) -> None:
    """``other`` (read by another engine) holds exactly the rows of ``find_usages``."""
    expected = store.find_usages()
    assert len(expected) > 0
    other = other.sort_values("id", kind="stable").reset_index(drop=True)
    assert len(other) == len(expected)
    for name in EXPECTED_COLUMNS:
        assert name in other.columns, name
        if name == "created_at":
            got = pd.to_datetime(other[name], utc=True).dt.as_unit("us")
            assert got.tolist() == expected[name].tolist()
        else:
            assert other[name].tolist() == expected[name].tolist(), name
    assert "date" in other.columns
    got_days = [str(v)[:10] for v in other["date"]]
    assert got_days == [day_of(t) for t in expected["timestamp"]]


def _check_layout(store: Store) -> None:
    root = store.root
    for entry in root.iterdir():
        if entry.is_dir() and PARTITION_RE.match(entry.name):
            day = PARTITION_RE.match(entry.name)
            assert day is not None
            dt.date.fromisoformat(day.group(1))
            for child in entry.iterdir():
                assert child.is_file(), child
                assert child.name.endswith(".parquet") or child.name.startswith(("_", ".")), child
        else:
            assert entry.name.startswith(("_", ".")), entry
    assert partition_dirs(root) == [f"date={d}" for d in _expected_days(store)]
    seen: list[int] = []
    for part, names in data_files(root).items():
        assert names, part
        for name in names:
            assert name.endswith(".parquet")
            path = root / part / name
            schema = pq.read_schema(path)
            assert "date" not in schema.names
            assert set(EXPECTED_COLUMNS) <= set(schema.names)
            table = pq.read_table(path, columns=["id", "timestamp"])
            assert table.num_rows > 0
            days = {day_of(t) for t in table["timestamp"].to_pylist()}
            assert days == {part.removeprefix("date=")}
            seen.extend(table["id"].to_pylist())
    assert sorted(seen) == store.find_usages()["id"].tolist()


def _read_pyarrow(root: Path) -> pd.DataFrame:
    return pads.dataset(root, partitioning="hive").to_table().to_pandas()


def _read_duckdb(root: Path) -> pd.DataFrame:
    with duckdb.connect() as con:
        return con.execute(
            f"select * from read_parquet('{root}/*/*.parquet', hive_partitioning=true)"
        ).df()


def test_partition_folders_follow_the_utc_day(shared: Store) -> None:
    _check_layout(shared)
    assert partition_dirs(shared.root) == [
        "date=1970-01-01",
        "date=1970-01-02",
        "date=2026-10-31",
        "date=2026-11-01",
        "date=2026-11-02",
        "date=2026-11-03",
        "date=2026-11-04",
        "date=2026-11-05",
        f"date={day_of(2**62)}",
    ]
    assert day_of(2**62).startswith("2116-")


def test_root_holds_only_partitions_and_hidden_files(shared: Store) -> None:
    names = sorted(p.name for p in shared.root.iterdir())
    assert METADATA_FILE in names
    for name in names:
        assert PARTITION_RE.match(name) or name.startswith(("_", ".")), name


def test_metadata_file(shared: Store) -> None:
    meta = json.loads((shared.root / METADATA_FILE).read_text())
    assert meta == {"format": "usage_analytics", "format_version": 2, "log": "_delta_log"}
    assert dataset_state(shared.root)["schema_version"] == 2


def test_files_keep_stored_types(shared: Store) -> None:
    for part, names in data_files(shared.root).items():
        for name in names:
            schema = pq.read_schema(shared.root / part / name)
            assert str(schema.field("id").type) == "int64"
            assert str(schema.field("timestamp").type) == "int64"
            assert str(schema.field("status_code").type) == "int32"
            assert str(schema.field("user_id").type) in ("string", "large_string")


def test_pyarrow_dataset_reads_the_same_rows(shared: Store) -> None:
    _assert_same_rows(_read_pyarrow(shared.root), shared)


def test_duckdb_reads_the_same_rows(shared: Store) -> None:
    _assert_same_rows(_read_duckdb(shared.root), shared)


def test_other_engines_after_deletes(store: Store) -> None:
    assert store.delete_usage(DAY0 - 1) == 3
    assert store.delete_usage(DAY0 + NS_PER_DAY + 1, limit=7) == 7
    _check_layout(store)
    assert "date=1970-01-01" not in partition_dirs(store.root)
    _assert_same_rows(_read_pyarrow(store.root), store)
    _assert_same_rows(_read_duckdb(store.root), store)
    assert store.delete_usage(DAY0 + 2 * NS_PER_DAY + 12_345) > 0
    _check_layout(store)
    _assert_same_rows(_read_pyarrow(store.root), store)
    _assert_same_rows(_read_duckdb(store.root), store)


def test_other_engines_after_more_writes(store: Store) -> None:
    more = random_usage_frame(50, seed=100, start=DAY0 + 3 * NS_PER_DAY, days=3)
    assert store.create_usage(more, on_conflict="ignore") > 0
    _check_layout(store)
    _assert_same_rows(_read_pyarrow(store.root), store)
    _assert_same_rows(_read_duckdb(store.root), store)


def test_an_empty_store_has_no_partitions(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    assert partition_dirs(store.root) == []
    for entry in store.root.iterdir():
        assert entry.name.startswith(("_", ".")), entry


@pytest.mark.parametrize("in_time_order", [True, False], ids=["in-time-order", "shuffled"])
def test_rows_in_time_order_keep_it_others_are_sorted_by_tenant_and_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_time_order: bool
) -> None:
    """An append keeps rows that come in time order as they came (each day's rows are a slice
    of the batch, not a copy); other rows are sorted by tenant, then time. Either way the
    reports, from the files' rollups or from their rows, are those of the same rows."""
    from usage_analytics import _layout

    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 50)  # rollups for each day's file
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    frame = random_usage_frame(400, 17, days=3)
    if in_time_order:
        frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    store = new_store(tmp_path / "usage")
    store.create_usage(frame)
    assert len(store.files()) == 3
    for path in store.files():
        rows = pq.read_table(path, columns=["user_id", "tenant", "timestamp"]).to_pandas()
        if in_time_order:
            day = frame[frame["timestamp"] // NS_PER_DAY == rows["timestamp"].iloc[0] // NS_PER_DAY]
            assert rows["user_id"].tolist() == day["user_id"].tolist()
            assert rows["timestamp"].tolist() == day["timestamp"].tolist()
        else:
            assert rows["timestamp"].is_monotonic_increasing is False
            ordered = rows.sort_values(["tenant", "timestamp"], kind="stable")
            assert ordered.index.tolist() == list(range(len(rows)))
    assert all(entry.sidecars for entry in store._ds.snapshot().files)
    stored = store.find_usages()
    windows = [(DAY0, DAY0 + 3 * NS_PER_DAY), (DAY0 + 5 * 10**12, DAY0 + 2 * 10**14)]
    for use_rollups, tenant, (start, end) in itertools.product(
        (True, False), ("t0", "t1"), windows
    ):
        store._use_rollups = use_rollups
        pd.testing.assert_frame_equal(
            store.aggregated_usage(tenant, start, end),
            reference_summary(stored, tenant, start, end),
        )
        pd.testing.assert_frame_equal(
            store.get_usages_by_groups(tenant, start, end),
            reference_groups(stored, tenant, start, end),
        )
