"""A checkpoint's entries parsed column by column equal those parsed entry by entry, and
anything but the plain shape falls back to the entry-by-entry parser, which names it."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import DAY0, NS_PER_DAY, random_usage_frame, small_files_get_summaries

from usage_analytics import CorruptDatasetError, Store
from usage_analytics._storage import checkpoint
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
