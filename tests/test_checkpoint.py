"""A checkpoint's entries parsed column by column equal those parsed entry by entry, and
anything but the plain shape falls back to the entry-by-entry parser, which names it."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import DAY0, NS_PER_DAY, random_usage_frame, small_files_get_summaries

from usage_analytics import CorruptDatasetError, Store
from usage_analytics._storage import checkpoint, dataset
from usage_analytics._storage.log import TAG
from usage_analytics._storage.manifest import FileEntry

rollups_for_small_files = pytest.fixture(autouse=True)(small_files_get_summaries)

PATH = "date=2026-11-01/" + "ab" * 16 + ".parquet"


def entry_json(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "path": PATH,
        "rows": 3,
        "schema_version": 2,
        "stats": {"timestamp": [5, 9], "id": [1, 3]},
        "sidecars": ["daily", "groups"],
        "skipped": ["users"],
    }
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not ...}


def adds(*raws: dict[str, Any], sizes: list[int] | None = None) -> pa.Table:
    return pa.table(
        {
            "path": [str(r.get("path")) for r in raws],
            "size": sizes or [100] * len(raws),
            "tags": pa.array(
                [[(TAG, json.dumps(r))] for r in raws], pa.map_(pa.string(), pa.string())
            ),
        }
    )


def parse(table: pa.Table) -> list[FileEntry] | None:
    return checkpoint.entries(table, TAG, 2, ("timestamp", "id"))


def test_plain_entries_parse_as_one_by_one() -> None:
    raws = [
        entry_json(),
        entry_json(path=PATH.replace("ab", "cd"), sidecars=..., skipped=...),
        entry_json(path=PATH.replace("ab", "ef"), schema_version=1, skipped=[]),
    ]
    got = parse(adds(*raws, sizes=[10, 20, 30]))
    expected = [
        FileEntry.from_json(r, max_schema_version=2, stats_columns=("timestamp", "id"))
        for r in raws
    ]
    assert got == expected
    assert got is not None and [e.size for e in got] == [10, 20, 30]
    assert [e.json_bytes for e in got] == [e.json_bytes for e in expected]
    assert parse(adds()) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"rows": -1},
        {"rows": 1.5},
        {"rows": True},
        {"schema_version": 9},
        {"schema_version": 0},
        {"path": "date=2026-13-01/" + "ab" * 16 + ".parquet"},
        {"path": "../escape.parquet"},
        {"stats": {"timestamp": [9, 5], "id": [1, 3]}},
        {"stats": {"timestamp": [5, 9]}},
        {"stats": {"timestamp": [5, 9, 10], "id": [1, 3]}},
        {"stats": {"timestamp": 5, "id": [1, 3]}},
        {"sidecars": None},
        {"sidecars": ["Daily"]},
        {"skipped": [1]},
        {"extra": 1},
        {"rows": ...},
        {"path": "date=2026-11-01/" + "ab" * 16 + ".parquet\n"},
    ],
    ids=repr,
)
def test_anything_else_is_left_to_the_entry_by_entry_parser(changes: dict[str, Any]) -> None:
    raw = entry_json(**changes)
    assert parse(adds(entry_json(path=PATH.replace("ab", "cd")), raw)) is None


def test_a_path_that_differs_from_the_add_falls_back() -> None:
    table = adds(entry_json())
    table = table.set_column(0, "path", pa.array([PATH.replace("ab", "cd")]))
    assert parse(table) is None
    assert parse(adds(entry_json(), sizes=[-1])) is None


def _rows(n: int, seed: int, start: int) -> Any:
    frame = random_usage_frame(n, seed, start=start, days=1)
    frame["timestamp"] += seed * 1_000  # keys of their own (midnights shifted)
    return frame


def _store_with_checkpoint(root: Path) -> Store:
    store = Store(root)
    store.auto_migrate()
    for i in range(12):
        day = DAY0 + (i % 7) * NS_PER_DAY
        store.create_usage(_rows(3, 900 + i, day))
    store.compact()
    for i in range(3):
        store.create_usage(_rows(2, 1_900 + i, DAY0))
    # A checkpoint of this state now, as the 100th commit would write one.
    store._ds._log.checkpoint(store._ds.snapshot())
    return store


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset whose latest checkpoint lists files with summaries, spans and sizes."""
    root = tmp_path_factory.mktemp("checkpoint") / "usage"
    with contextlib.contextmanager(small_files_get_summaries)():
        _store_with_checkpoint(root)
    return root


def test_a_checkpoint_of_a_store_reads_alike_both_ways(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(built, tmp_path / "usage")
    store = Store(tmp_path / "usage")
    log = store._ds._log
    version = max(log.listing()[1])
    fast = log._checkpoint(version)
    assert any(f.sidecars for f in fast.files)
    monkeypatch.setattr(checkpoint, "entries", lambda *args: None)
    slow = Store(store.root)._ds._log._checkpoint(version)
    assert fast == slow
    assert [f.size for f in fast.files] == [f.size for f in slow.files]
    assert [f.json_bytes for f in fast.files] == [f.json_bytes for f in slow.files]


def test_a_damaged_entry_in_a_checkpoint_is_named(built: Path, tmp_path: Path) -> None:
    shutil.copytree(built, tmp_path / "usage")
    store = Store(tmp_path / "usage")
    log_dir = store.root / "_delta_log"
    version = max(store._ds._log.listing()[1])
    name = log_dir / f"{version:020d}.checkpoint.parquet"
    table = pq.read_table(name)
    rows = table.to_pylist()
    for row in rows:
        if row["add"] is not None:
            tags = dict(row["add"]["tags"])
            raw = json.loads(tags[TAG])
            raw["rows"] = -5
            tags[TAG] = json.dumps(raw)
            row["add"]["tags"] = list(tags.items())
            break
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), name)
    for old in log_dir.glob("*.json"):  # the checkpoint alone holds the state
        if int(old.name.split(".")[0]) <= version:
            old.unlink()
    with pytest.raises(CorruptDatasetError, match=r"has -5 rows"):
        Store(store.root).find_usages()


# ---------------------------------------------------------------------------------------------
# A checkpoint is read a row group at a time, when a date in it is first used.


@pytest.fixture
def days_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A dataset of 2 files on each of 20 days whose checkpoint holds 3 adds a row group."""
    monkeypatch.setattr(checkpoint, "ROW_GROUP_ROWS", 3)
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    for day in range(20):
        for k in range(2):
            store.create_usage(_rows(2, 10 * day + k, DAY0 + day * NS_PER_DAY))
    store._ds._log.checkpoint(store._ds.snapshot())
    return store


def _counting_parses(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Record the row groups of each parse of a checkpoint's adds."""
    from usage_analytics._storage.log import Log

    calls: list[list[int]] = []
    parse = Log._checkpoint_adds

    def counting(self: Log, file: Any, groups: list[int], path: str) -> list[FileEntry]:
        calls.append(list(groups))
        return parse(self, file, groups, path)

    monkeypatch.setattr(Log, "_checkpoint_adds", counting)
    return calls


def test_a_report_of_a_day_reads_the_row_groups_of_that_day(
    days_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = max(days_store.root.glob("_delta_log/*.checkpoint.parquet"))
    ranges = checkpoint._date_ranges(pq.ParquetFile(name).metadata)
    with_adds = [i for i, days in enumerate(ranges) if days is not None]
    assert len(with_adds) >= 14  # 40 adds, 3 a row group
    monkeypatch.setattr(dataset, "CHECKPOINT_EVERY", 10**9)  # no checkpoint in the test
    expected = days_store.find_usages()
    day = DAY0 + 7 * NS_PER_DAY
    on_day = expected[expected["timestamp"].between(day, day + NS_PER_DAY - 1)]
    tenant = on_day["tenant"].iloc[0]
    # The same report, from a state whose every date was read first.
    whole = Store(days_store.root)
    assert len(whole.files()) == 40
    calls = _counting_parses(monkeypatch)
    store = Store(days_store.root)
    report = store.aggregated_usage(tenant, day, day + NS_PER_DAY)
    assert 1 <= len(calls) <= 2  # the day's two adds, in one row group or across two
    pd.testing.assert_frame_equal(report, whole.aggregated_usage(tenant, day, day + NS_PER_DAY))
    assert report["total_requests"].sum() == (on_day["tenant"] == tenant).sum() > 0
    # An append to another day reads that day's row groups, not the rest.
    before = len(calls)
    store.create_usage(_rows(1, 999, DAY0 + 15 * NS_PER_DAY))
    assert 1 <= len(calls) - before <= 2
    # Every file, in date order; each row group read once.
    files = store.files()
    assert sorted(g for groups in calls for g in groups) == with_adds
    assert len(files) == 41
    assert sorted(files, key=lambda p: p.parent.name) == files
    assert len(store.find_usages()) == len(expected) + 1


def test_damage_in_a_row_group_no_read_uses_is_named_when_one_does(days_store: Store) -> None:
    tenant = days_store.find_usages()["tenant"].iloc[0]
    name = max(days_store.root.glob("_delta_log/*.checkpoint.parquet"))
    table = pq.read_table(name)
    rows = table.to_pylist()
    last = max(i for i, row in enumerate(rows) if row["add"] is not None)
    tags = dict(rows[last]["add"]["tags"])
    raw = json.loads(tags[TAG])
    raw["schema_version"] = 99
    tags[TAG] = json.dumps(raw)
    rows[last]["add"]["tags"] = list(tags.items())
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), name, row_group_size=3)
    store = Store(days_store.root)
    store.aggregated_usage(tenant, DAY0, DAY0 + NS_PER_DAY)  # the first day: not damaged
    with pytest.raises(CorruptDatasetError, match=r"schema version 99"):
        store.find_usages()
    with pytest.raises(CorruptDatasetError, match=r"checkpoint\.parquet is damaged"):
        Store(days_store.root).verify()


def test_an_older_checkpoint_of_one_row_group_reads_whole(
    days_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = days_store.find_usages()
    name = max(days_store.root.glob("_delta_log/*.checkpoint.parquet"))
    pq.write_table(pq.read_table(name), name)  # one row group, as earlier versions wrote
    calls = _counting_parses(monkeypatch)
    store = Store(days_store.root)
    pd.testing.assert_frame_equal(store.find_usages(), expected)
    assert calls == [[0]]


def test_a_checkpoint_copies_the_row_groups_of_the_dates_no_commit_changed(
    days_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usage_analytics._storage.log import Log

    monkeypatch.setattr(dataset, "CHECKPOINT_EVERY", 10**9)  # checkpoints written by the test
    store = Store(days_store.root)
    calls = _counting_parses(monkeypatch)
    store.create_usage(_rows(1, 999, DAY0 + 15 * NS_PER_DAY))  # a date changes
    store.create_usage(_rows(1, 998, DAY0 + 25 * NS_PER_DAY))  # a date appears
    store.delete_usage(DAY0 + NS_PER_DAY)  # a date goes
    snap = store._ds.snapshot()
    first, day15, day25 = (str(pd.Timestamp(DAY0 + d * NS_PER_DAY).date()) for d in (0, 15, 25))
    assert snap.fileset.changed() == [first, day15, day25]
    parsed = {g for groups in calls for g in groups}
    store._ds._log.checkpoint(snap)
    parsed_by_checkpoint = {g for groups in calls for g in groups} - parsed
    assert len(parsed_by_checkpoint) <= 2  # the neighbours of the changed dates, at most
    # The new checkpoint holds the adds a checkpoint made from every entry holds, in order.
    name = max(days_store.root.glob("_delta_log/*.checkpoint.parquet"))
    rows = [r["add"] for r in pq.read_table(name).to_pylist() if r["add"] is not None]
    made = [Log._checkpoint_add(store._ds._log, e, 0) for e in snap.files]
    strip = [{k: v for k, v in add.items() if k != "modificationTime"} for add in rows]
    assert strip == [{k: v for k, v in add.items() if k != "modificationTime"} for add in made]
    ranges = [r for r in checkpoint._date_ranges(pq.ParquetFile(name).metadata) if r]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    hint = json.loads((days_store.root / "_delta_log" / "_last_checkpoint").read_text())
    assert hint["numOfAddFiles"] == len(made) == 40 - 2 + 2
    # A store opened from it (the commits before it gone) reads the same rows.
    version = int(name.name.split(".")[0])
    for commit in days_store.root.glob("_delta_log/*.json"):
        if int(commit.name.split(".")[0]) <= version:
            commit.unlink()
    reopened = Store(days_store.root)
    pd.testing.assert_frame_equal(reopened.find_usages(), store.find_usages())
    assert reopened.verify().empty
    deltalake = pytest.importorskip("deltalake")
    assert deltalake.DeltaTable(days_store.root).to_pyarrow_table().num_rows == len(
        store.find_usages()
    )
    # A checkpoint of a state read from that one copies from it in turn.
    reopened.create_usage(_rows(1, 997, DAY0 + 10 * NS_PER_DAY))
    later = reopened._ds.snapshot()
    source = later.fileset.source
    assert isinstance(source, checkpoint.Adds) and source.version == version
    copy = checkpoint.reusable(source, later.fileset.changed())
    assert sum(copy) >= len(ranges) - 1  # all but the row group of the changed date
    reopened._ds._log.checkpoint(later)
    again = max(days_store.root.glob("_delta_log/*.checkpoint.parquet"))
    assert again != name
    pd.testing.assert_frame_equal(Store(days_store.root).find_usages(), reopened.find_usages())
