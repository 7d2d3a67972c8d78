"""The commit log: a Delta Lake table that other engines read one committed state of, commits
that cost their own change, checkpoints, and the move of older datasets from their manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from helpers import (
    DAY0,
    METADATA_FILE,
    NS_PER_DAY,
    dataset_state,
    random_usage_frame,
    small_files_get_summaries,
    snapshot_files,
    to_manifest_format,
)

from usage_analytics import CorruptDatasetError, Store
from usage_analytics._storage import faults
from usage_analytics._storage.log import CHECKPOINT_EVERY
from usage_analytics.schema import arrow_schema

deltalake = pytest.importorskip("deltalake", reason="the Delta tests need the deltalake package")
pl = pytest.importorskip("polars")
duckdb = pytest.importorskip("duckdb")


rollups_for_small_files = pytest.fixture(autouse=True)(small_files_get_summaries)


def rows(n: int, seed: int, *, start: int = DAY0, days: int = 2) -> pd.DataFrame:
    """Random rows whose keys differ from those of every other seed (midnights shifted)."""
    frame = random_usage_frame(n, seed, start=start, days=days)
    frame["timestamp"] += seed * 1_000
    return frame


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by id, with the types of ``find_usages()`` (engines differ in string types)."""
    frame = frame.drop(columns=["date"], errors="ignore").sort_values("id")
    return frame.reset_index(drop=True)


def store_rows(store: Store) -> pd.DataFrame:
    return _ordered(store.find_usages())


def _as_store_types(frame: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    return _ordered(frame)[list(like.columns)].astype(like.dtypes.to_dict())


def delta_rows(root: Path, like: pd.DataFrame, version: int | None = None) -> pd.DataFrame:
    table = deltalake.DeltaTable(root, version=version)
    return _as_store_types(table.to_pyarrow_table().to_pandas(), like)


def assert_every_engine_reads(store: Store) -> None:
    """deltalake, Polars' scan_delta and DuckDB over the Delta table see the store's rows."""
    expected = store_rows(store)
    table = deltalake.DeltaTable(store.root)
    assert table.version() == store._ds.snapshot().version
    assert table.metadata().partition_columns == ["date"]
    pd.testing.assert_frame_equal(delta_rows(store.root, expected), expected)
    polars = pl.scan_delta(str(store.root)).collect().to_pandas()
    pd.testing.assert_frame_equal(_as_store_types(polars, expected), expected)
    relation = duckdb.from_arrow(table.to_pyarrow_dataset())
    counted = relation.aggregate("count(*) AS n, sum(prompt_tokens) AS p").fetchall()
    assert counted == [(len(expected), int(expected["prompt_tokens"].sum()))]
    # Each data file sits in its partition, with its rows' date.
    files = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    for path, date in zip(files["path"], files["partition.date"], strict=True):
        assert path.startswith(f"date={date}/")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    return store


def test_other_engines_read_exactly_the_committed_rows(store: Store) -> None:
    store.create_usage(rows(300, seed=1, days=4))
    store.create_usage(rows(200, seed=2, start=DAY0 + 2 * NS_PER_DAY, days=3))
    assert_every_engine_reads(store)


def test_a_delete_that_rewrites_a_partition_and_a_compaction_read_alike(store: Store) -> None:
    for seed in range(4):
        store.create_usage(rows(150, seed=10 + seed, days=3))
    store.delete_usage(DAY0 + NS_PER_DAY + NS_PER_DAY // 2)  # rewrites the second day
    assert_every_engine_reads(store)
    store.compact()
    assert_every_engine_reads(store)
    assert len(deltalake.DeltaTable(store.root).file_uris()) == len(store.files())


def test_every_commit_is_a_delta_version_readable_as_of_it(store: Store) -> None:
    states = {}
    for seed in range(3):
        store.create_usage(rows(100, seed=20 + seed, days=2))
        states[store._ds.snapshot().version] = store_rows(store)
    for version, expected in states.items():
        pd.testing.assert_frame_equal(delta_rows(store.root, expected, version), expected)
    # A delete unlinks the files it replaced just after its commit (no retention yet): the
    # versions before it then fail to read, never read wrong rows.
    store.delete_usage(DAY0 + NS_PER_DAY)
    latest = store_rows(store)
    pd.testing.assert_frame_equal(delta_rows(store.root, latest), latest)
    with pytest.raises(FileNotFoundError):
        delta_rows(store.root, latest, max(states))


def test_a_commit_holds_its_change_only(store: Store) -> None:
    """The cost of a commit does not grow with the files already there."""
    for i in range(30):
        store.create_usage(rows(3, seed=100 + i, start=DAY0 + i * NS_PER_DAY, days=1))
    assert len(store.files()) == 30
    commits = sorted((store.root / "_delta_log").glob("*.json"))
    with_spans = 0
    for commit in commits[-10:]:
        actions = [json.loads(line) for line in commit.read_text().split()]
        kinds = [next(iter(a)) for a in actions]
        assert kinds.count("add") <= 1, commit.name
        assert "remove" not in kinds and "metaData" not in kinds and "protocol" not in kinds
        # Spans ride along only when the commit adds or drops them.
        version = int(commit.name.split(".")[0])
        before = {sp.name: sp for sp in Store(store.root, as_of=version - 1)._ds.snapshot().spans}
        after = {sp.name: sp for sp in Store(store.root, as_of=version)._ds.snapshot().spans}
        changed = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
        named = {
            a["domainMetadata"]["domain"].removeprefix("usage_analytics.span.")
            for a in actions
            if a.get("domainMetadata", {}).get("domain", "").startswith("usage_analytics.span.")
        }
        assert named == changed, commit.name
        with_spans += bool(named)
    assert with_spans and len(store._ds.snapshot().spans) >= 2  # spans to name and to leave out


def test_a_checkpoint_holds_the_whole_state(store: Store, tmp_path: Path) -> None:
    for i in range(CHECKPOINT_EVERY + 4):
        day = DAY0 + (i % 9) * NS_PER_DAY
        store.create_usage(rows(2, seed=500 + i, start=day, days=1))
    store.compact()  # spans and summaries in the state as well as files
    log = store.root / "_delta_log"
    hint = json.loads((log / "_last_checkpoint").read_text())
    assert hint["version"] % CHECKPOINT_EVERY == 0 and hint["version"] >= CHECKPOINT_EVERY
    expected, snap = store_rows(store), store._ds.snapshot()
    assert snap.spans
    # Without the commits the checkpoint replaces, the store and Delta readers read the same.
    for old in log.glob("*.json"):
        if int(old.name.split(".")[0]) <= hint["version"]:
            old.unlink()
    reopened = Store(store.root)
    pd.testing.assert_frame_equal(store_rows(reopened), expected)
    assert reopened._ds.snapshot() == snap
    pd.testing.assert_frame_equal(delta_rows(store.root, expected), expected)
    assert reopened.create_usage(rows(5, seed=9, days=1)) == 5


def test_a_damaged_checkpoint_is_a_corrupt_dataset_error(store: Store) -> None:
    for i in range(CHECKPOINT_EVERY):
        store.create_usage(rows(1, seed=700 + i, days=1))
    checkpoint = next((store.root / "_delta_log").glob("*.checkpoint.parquet"))
    checkpoint.write_bytes(b"PAR1 not a checkpoint")
    with pytest.raises(CorruptDatasetError, match="checkpoint"):
        Store(store.root).find_usages()
    checkpoint.unlink()
    with pytest.raises(CorruptDatasetError, match="missing"):
        Store(store.root).find_usages()


def test_an_older_dataset_moves_to_the_log_at_its_first_write(store: Store) -> None:
    store.create_usage(rows(200, seed=3, days=3))
    to_manifest_format(store.root)
    before = store_rows(Store(store.root))
    assert not (store.root / "_delta_log").exists()
    assert Store(store.root).info().rows == len(before)  # reads change nothing
    assert not (store.root / "_delta_log").exists()

    assert Store(store.root).create_usage(rows(20, seed=4, days=1)) == 20
    marker = json.loads((store.root / METADATA_FILE).read_text())
    assert marker == {"format": "usage_analytics", "format_version": 2, "log": "_delta_log"}
    assert dataset_state(store.root)["schema_version"] == 2
    after = store_rows(Store(store.root))
    assert len(after) == len(before) + 20
    assert_every_engine_reads(Store(store.root))


def test_a_commit_another_program_wrote_first_fails_the_write(store: Store) -> None:
    """A commit never replaces one: a version that appears while the writer holds the lock
    (another program writing to the folder) fails the write, which then changes nothing."""
    store.create_usage(rows(50, seed=5, days=2))
    expected = store_rows(store)
    version = store._ds.snapshot().version
    log = store.root / "_delta_log"

    def squat(point: str) -> None:
        if point == "commit_tmp_written":
            shutil.copy(log / f"{version:020d}.json", log / f"{version + 1:020d}.json")

    faults.FAULT_HOOK = squat
    try:
        with pytest.raises(CorruptDatasetError, match="another program"):
            store.create_usage(rows(10, seed=6, days=1))
    finally:
        faults.FAULT_HOOK = None
    pd.testing.assert_frame_equal(store_rows(Store(store.root)), expected)
    assert not any(p.name.endswith(".tmp") for p in store.root.rglob("*"))
    assert not (store.root / "_usage_analytics.journal").exists()


def test_reads_change_no_file_of_the_log(store: Store) -> None:
    store.create_usage(rows(40, seed=8, days=2))
    before = snapshot_files(store.root)
    reader = Store(store.root)
    reader.find_usages()
    reader.report("t0", DAY0, DAY0 + 3 * NS_PER_DAY, by="model_id")
    assert snapshot_files(store.root) == before


def test_the_delta_schema_is_the_stored_schema(store: Store) -> None:
    store.create_usage(rows(10, seed=9, days=1))
    schema = pa.schema(deltalake.DeltaTable(store.root).schema().to_arrow())
    assert schema.names == [*arrow_schema().names, "date"]
    strings = (pa.string(), pa.large_string(), pa.string_view())
    for field in arrow_schema():
        got = schema.field(field.name)
        assert not got.nullable, field.name
        assert got.type == field.type or (field.type == pa.string() and got.type in strings)
