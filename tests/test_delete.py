"""delete_usage: the cutoff, the limit, the order, and what happens to the partitions."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import (
    DAY0,
    NS_PER_DAY,
    assert_stored_dtypes,
    data_files,
    list_entries,
    new_store,
    partition_dirs,
    snapshot_files,
    usage_row,
)

from usage_analytics import DuplicateUsageError, Store

D1 = DAY0 + NS_PER_DAY
D2 = DAY0 + 2 * NS_PER_DAY
D3 = DAY0 + 3 * NS_PER_DAY
P0, P1, P2 = "date=2026-11-01", "date=2026-11-02", "date=2026-11-03"

# Insertion order (and so id order) differs from timestamp order; r2 and r3 share a timestamp,
# r2 is inserted first but its tenant sorts after r3's.
ROWS: list[tuple[str, str, int]] = [
    ("r1", "t0", DAY0 + 10),
    ("r2", "t9", DAY0 + 20),
    ("r3", "t0", DAY0 + 20),
    ("r4", "t0", DAY0 + 5),
    ("r5", "t0", D1 + 100),
    ("r6", "t1", D1 + 50),
    ("r7", "t0", D1 + 200),
    ("r8", "t0", D2 + 1),
    ("r9", "t0", D2 + 2),
]
OLDEST_FIRST = ["r4", "r1", "r2", "r3", "r6", "r5", "r7", "r8", "r9"]
ALL = set(OLDEST_FIRST)


def _build(root: Path) -> Store:
    store = new_store(root)
    rows = [
        usage_row(
            user_id=label,
            tenant=tenant,
            api_method="M",
            status_code=200,
            timestamp=ts,
            latency_ms=i,
        )
        for i, (label, tenant, ts) in enumerate(ROWS)
    ]
    assert store.create_usage(rows) == len(ROWS)
    assert partition_dirs(store.root) == [P0, P1, P2]
    return store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return _build(tmp_path / "usage")


def _ids(store: Store) -> dict[str, int]:
    found = store.find_usages()
    return dict(zip(found["user_id"], found["id"], strict=True))


def _remaining(store: Store) -> set[str]:
    found = store.find_usages()
    assert_stored_dtypes(found)
    assert found["id"].is_monotonic_increasing
    pd.testing.assert_index_equal(found.index, pd.RangeIndex(len(found)))
    return set(found["user_id"])


def _partition_bytes(root: Path, part: str) -> dict[str, bytes]:
    return {k: v for k, v in snapshot_files(root).items() if k.startswith(part + "/")}


def _later_partitions(root: Path) -> dict[str, bytes]:
    """The data files of every partition after the first day."""
    return {k: v for k, v in snapshot_files(root).items() if k.startswith((P1, P2))}


def _users_in_partition(root: Path, part: str) -> set[str]:
    users: set[str] = set()
    for name in data_files(root)[part]:
        users |= set(pq.read_table(root / part / name, columns=["user_id"])["user_id"].to_pylist())
    return users


# -- without a limit -------------------------------------------------------------------------


def test_cutoff_inside_a_day_removes_earlier_days_and_rewrites_that_day(store: Store) -> None:
    ids = _ids(store)
    day1_files = data_files(store.root)[P1]
    day2 = _partition_bytes(store.root, P2)
    assert store.delete_usage(D1 + 150) == 6
    assert _remaining(store) == {"r7", "r8", "r9"}
    assert set(store.find_usages()["id"]) == {ids["r7"], ids["r8"], ids["r9"]}
    assert partition_dirs(store.root) == [P1, P2]
    assert not (store.root / P0).exists()
    assert data_files(store.root)[P1] != day1_files
    assert not set(data_files(store.root)[P1]) & set(day1_files)
    assert _users_in_partition(store.root, P1) == {"r7"}
    assert _partition_bytes(store.root, P2) == day2


def test_cutoff_at_midnight_removes_whole_days_only(store: Store) -> None:
    later = _later_partitions(store.root)
    assert sorted({k.split("/")[0] for k in later}) == [P1, P2]
    assert store.delete_usage(D1) == 4
    assert _remaining(store) == {"r5", "r6", "r7", "r8", "r9"}
    assert partition_dirs(store.root) == [P1, P2]
    assert _later_partitions(store.root) == later


def test_cutoff_after_every_row_removes_everything(store: Store) -> None:
    assert store.delete_usage(D3) == 9
    found = store.find_usages()
    assert found.empty
    assert_stored_dtypes(found)
    assert partition_dirs(store.root) == []
    assert [e for e in list_entries(store.root) if e.startswith("date=")] == []
    assert store.aggregated_usage("t0", 0, D3).empty
    assert store.delete_usage(D3) == 0


def test_cutoff_is_exclusive(store: Store) -> None:
    before = snapshot_files(store.root)
    assert store.delete_usage(DAY0 + 5) == 0
    assert snapshot_files(store.root) == before
    assert store.delete_usage(DAY0 + 6) == 1
    assert _remaining(store) == ALL - {"r4"}
    assert store.delete_usage(DAY0 + 20) == 1
    assert _remaining(store) == ALL - {"r4", "r1"}
    assert store.delete_usage(DAY0 + 21) == 2
    assert _remaining(store) == ALL - {"r4", "r1", "r2", "r3"}


@pytest.mark.parametrize("cutoff", [0, DAY0, DAY0 + 4, "2026-10-01", dt.datetime(2026, 11, 1)])
def test_cutoff_before_every_row_deletes_nothing(store: Store, cutoff: Any) -> None:
    before = snapshot_files(store.root)
    entries = list_entries(store.root)
    assert store.delete_usage(cutoff) == 0
    assert store.delete_usage(cutoff, limit=5) == 0
    assert snapshot_files(store.root) == before
    assert list_entries(store.root) == entries
    assert _remaining(store) == ALL


_PLUS1 = dt.timezone(dt.timedelta(hours=1))


@pytest.mark.parametrize(
    "cutoff",
    [
        D1,
        "2026-11-02",
        "2026-11-02T00:00:00",
        "2026-11-02T01:00:00+01:00",
        dt.datetime(2026, 11, 2),
        dt.datetime(2026, 11, 2, 1, tzinfo=_PLUS1),
        pd.Timestamp("2026-11-02"),
        pd.Timestamp("2026-11-02 09:00", tz="Asia/Tokyo"),
    ],
    ids=lambda v: repr(v),
)
def test_cutoff_forms(store: Store, cutoff: Any) -> None:
    assert store.delete_usage(cutoff) == 4
    assert _remaining(store) == {"r5", "r6", "r7", "r8", "r9"}
    assert partition_dirs(store.root) == [P1, P2]


def test_aware_cutoff_with_nanoseconds(store: Store) -> None:
    # 2026-11-02 00:00:00.000000150 UTC, given in UTC-1.
    assert store.delete_usage(pd.Timestamp("2026-11-01 23:00:00.000000150", tz="Etc/GMT+1")) == 6
    assert _remaining(store) == {"r7", "r8", "r9"}


def test_delete_across_several_files_of_one_partition(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    assert store.create_usage([usage_row(user_id="a", timestamp=DAY0 + 10)]) == 1
    assert (
        store.create_usage(
            [
                usage_row(user_id="b", timestamp=DAY0 + 20),
                usage_row(user_id="c", timestamp=DAY0 + 40),
            ]
        )
        == 2
    )
    assert store.create_usage([usage_row(user_id="d", timestamp=DAY0 + 30)]) == 1
    files = data_files(store.root)[P0]
    assert store.delete_usage(DAY0 + 25) == 2
    assert _remaining(store) == {"c", "d"}
    assert partition_dirs(store.root) == [P0]
    assert _users_in_partition(store.root, P0) == {"c", "d"}
    assert len(set(data_files(store.root)[P0]) - set(files)) >= 1


# -- with a limit ----------------------------------------------------------------------------


def test_limit_inside_the_first_day(store: Store) -> None:
    ids = _ids(store)
    later = _later_partitions(store.root)
    assert sorted({k.split("/")[0] for k in later}) == [P1, P2]
    day0_files = data_files(store.root)[P0]
    assert store.delete_usage(D3, limit=3) == 3
    assert _remaining(store) == ALL - {"r4", "r1", "r2"}
    assert ids["r3"] in set(store.find_usages()["id"])
    assert partition_dirs(store.root) == [P0, P1, P2]
    assert not set(data_files(store.root)[P0]) & set(day0_files)
    assert _users_in_partition(store.root, P0) == {"r3"}
    assert _later_partitions(store.root) == later


def test_limit_across_partitions(store: Store) -> None:
    day2 = _partition_bytes(store.root, P2)
    assert store.delete_usage(D3, limit=5) == 5
    assert _remaining(store) == {"r5", "r7", "r8", "r9"}
    assert partition_dirs(store.root) == [P1, P2]
    assert _users_in_partition(store.root, P1) == {"r5", "r7"}
    assert _partition_bytes(store.root, P2) == day2


def test_limit_equal_to_a_whole_day(store: Store) -> None:
    assert store.delete_usage(D3, limit=4) == 4
    assert _remaining(store) == {"r5", "r6", "r7", "r8", "r9"}
    assert partition_dirs(store.root) == [P1, P2]


def test_limit_larger_than_what_the_cutoff_allows(store: Store) -> None:
    assert store.delete_usage(D1 + 150, limit=100) == 6
    assert _remaining(store) == {"r7", "r8", "r9"}


def test_oldest_first_with_ties_broken_by_id(store: Store) -> None:
    deleted: list[str] = []
    for _ in OLDEST_FIRST:
        before = _remaining(store)
        assert store.delete_usage(D3, limit=1) == 1
        (gone,) = before - _remaining(store)
        deleted.append(gone)
    assert deleted == OLDEST_FIRST
    assert store.delete_usage(D3, limit=1) == 0
    assert partition_dirs(store.root) == []


def test_ties_across_files_of_one_partition_follow_id(store: Store) -> None:
    assert store.create_usage(usage_row(user_id="r10", tenant="a", timestamp=DAY0 + 20)) == 1
    assert store.create_usage(usage_row(user_id="r11", tenant="0", timestamp=DAY0 + 20)) == 1
    assert store.delete_usage(DAY0 + 21, limit=3) == 3
    assert _remaining(store) == ALL - {"r4", "r1", "r2"} | {"r10", "r11"}
    assert store.delete_usage(DAY0 + 21, limit=2) == 2
    assert _remaining(store) == ALL - {"r4", "r1", "r2", "r3"} | {"r11"}
    assert store.delete_usage(DAY0 + 21, limit=2) == 1
    assert _remaining(store) == ALL - {"r4", "r1", "r2", "r3"}


def test_limit_zero_deletes_nothing(store: Store) -> None:
    before = snapshot_files(store.root)
    entries = list_entries(store.root)
    assert store.delete_usage(D3, limit=0) == 0
    assert snapshot_files(store.root) == before
    assert list_entries(store.root) == entries
    assert _remaining(store) == ALL


@pytest.mark.parametrize("limit", [-1, -100])
def test_negative_limit_raises(store: Store, limit: int) -> None:
    before = snapshot_files(store.root)
    with pytest.raises(ValueError):
        store.delete_usage(D3, limit=limit)
    assert snapshot_files(store.root) == before
    assert _remaining(store) == ALL


def test_delete_on_an_empty_store(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    before = snapshot_files(store.root)
    assert store.delete_usage(D3) == 0
    assert store.delete_usage(D3, limit=2) == 0
    assert snapshot_files(store.root) == before


# -- after a delete --------------------------------------------------------------------------


def test_new_rows_after_a_delete_get_new_ids(store: Store) -> None:
    top = max(_ids(store).values())
    assert store.delete_usage(D3) == 9
    assert store.create_usage(usage_row(user_id="n1", timestamp=DAY0)) == 1
    found = store.find_usages()
    assert found["id"].tolist()[0] > top


def test_deleted_keys_can_be_written_again(store: Store) -> None:
    assert store.delete_usage(D1) == 4
    again = [usage_row(user_id="r1", tenant="t0", timestamp=DAY0 + 10, latency_ms=77)]
    assert store.create_usage(again) == 1
    found = store.find_usages()
    assert found.loc[found["user_id"] == "r1", "latency_ms"].tolist() == [77]
    with pytest.raises(DuplicateUsageError):
        store.create_usage(usage_row(user_id="r5", tenant="t0", timestamp=D1 + 100))


def test_reports_after_a_delete(store: Store) -> None:
    assert store.delete_usage(D1 + 150) == 6
    got = store.aggregated_usage("t0", DAY0, D3)
    assert got["api_method"].tolist() == ["M"]
    assert got["total_requests"].tolist() == [3]
    assert got["average_latency"].tolist() == [(6 + 7 + 8) / 3]
    assert store.aggregated_usage("t1", DAY0, D3).empty
    assert store.aggregated_usage("t9", DAY0, D3).empty
