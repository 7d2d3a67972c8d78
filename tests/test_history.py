"""History: reading a dataset as of a commit, the retention of removed files, and vacuum."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import (
    DAY0,
    NS_PER_DAY,
    random_usage_frame,
    small_files_get_summaries,
    snapshot_files,
    to_manifest_format,
)

from usage_analytics import CorruptDatasetError, InvalidArgumentError, Store
from usage_analytics._storage import faults, history

deltalake = pytest.importorskip("deltalake", reason="the Delta tests need the deltalake package")
END = DAY0 + 10 * NS_PER_DAY


rollups_for_small_files = pytest.fixture(autouse=True)(small_files_get_summaries)


def rows(n: int, seed: int, days: int = 3) -> pd.DataFrame:
    frame = random_usage_frame(n, seed, days=days)
    frame["timestamp"] += seed * 1_000  # keys unlike those of every other seed
    return frame


def state(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows (by id) and a report, to compare versions by."""
    found = store.find_usages().sort_values("id").reset_index(drop=True)
    report = store.report(
        None, DAY0, END, by=["tenant", "model_id"], every="1d", metrics=["requests", "users"]
    )
    return found, report


def assert_same(a: tuple[pd.DataFrame, pd.DataFrame], b: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y, check_exact=True)


@pytest.fixture
def kept(tmp_path: Path) -> tuple[Store, dict[int, tuple[pd.DataFrame, pd.DataFrame]]]:
    """A dataset with a week's retention, through appends, a delete and a compaction; and the
    state after each of its commits, by version."""
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.set_history_retention("7d")
    states = {}
    for seed in range(4):
        store.create_usage(rows(120, seed))
        states[store._ds.snapshot().version] = state(store)
    store.delete_usage(DAY0 + NS_PER_DAY + NS_PER_DAY // 3)  # rewrites the second day
    states[store._ds.snapshot().version] = state(store)
    store.compact()
    states[store._ds.snapshot().version] = state(store)
    return store, states


def test_as_of_a_version_reads_that_commit(
    kept: tuple[Store, dict[int, tuple[pd.DataFrame, pd.DataFrame]]],
) -> None:
    store, states = kept
    assert len({len(s[0]) for s in states.values()}) >= 4  # the states differ
    for version, expected in states.items():
        old = Store(store.root, as_of=version)
        assert_same(state(old), expected)
        assert old.info().rows == len(expected[0])
        assert len(old.files()) == len(old._ds.snapshot().files)
        # The Delta view of that version holds the same rows.
        delta = deltalake.DeltaTable(store.root, version=version).to_pyarrow_table()
        assert delta.num_rows == len(expected[0])
        assert sorted(delta.column("id").to_pylist()) == expected[0]["id"].tolist()


def test_as_of_a_time_reads_the_commit_current_then(
    kept: tuple[Store, dict[int, tuple[pd.DataFrame, pd.DataFrame]]],
) -> None:
    store, states = kept
    commits = store.history()
    assert list(commits.columns) == ["version", "time", "operation"]
    assert commits["version"].tolist() == list(range(len(commits)))
    assert commits["time"].is_monotonic_increasing
    assert str(commits["time"].dt.tz) == "UTC"
    assert commits["operation"].iloc[0] == "CREATE TABLE"
    for version, expected in states.items():
        at = commits.loc[commits["version"] == version, "time"].iloc[0]
        later = commits.loc[commits["version"] == version + 1, "time"]
        if not later.empty and later.iloc[0] == at:
            continue  # two commits in one millisecond: a time names the later one
        assert_same(state(Store(store.root, as_of=at)), expected)
        assert_same(state(Store(store.root, as_of=at.isoformat())), expected)
    assert_same(state(Store(store.root, as_of=dt.datetime(2100, 1, 1))), state(store))
    with pytest.raises(InvalidArgumentError, match="no commit at or before"):
        Store(store.root, as_of="2000-01-01").find_usages()


def test_history_names_each_commit_by_its_operation(
    kept: tuple[Store, dict[int, tuple[pd.DataFrame, pd.DataFrame]]],
) -> None:
    store, _ = kept
    ops = store.history()["operation"].tolist()
    assert ops[:2] == ["CREATE TABLE", "SET TBLPROPERTIES"]
    # Appends write, the delete deletes, compaction optimizes (one commit per partition), and
    # the commits that only add span summaries say so.
    data = [op for op in ops[2:] if op != "SUMMARIZE"]
    assert data[:5] == ["WRITE"] * 4 + ["DELETE"]
    assert set(data[5:]) == {"OPTIMIZE"}
    assert "SUMMARIZE" in ops
    # Delta readers see the same names.
    theirs = [c["operation"] for c in deltalake.DeltaTable(store.root).history()]
    assert sorted(theirs) == sorted(ops)


def test_a_store_as_of_a_version_refuses_every_write(
    kept: tuple[Store, dict[int, tuple[pd.DataFrame, pd.DataFrame]]],
) -> None:
    store, states = kept
    old = Store(store.root, as_of=min(states))
    before = snapshot_files(store.root)
    for write in (
        old.auto_migrate,
        lambda: old.create_usage(rows(3, seed=50)),
        lambda: old.delete_usage(END),
        old.compact,
        lambda: old.set_history_retention(0),
        old.vacuum,
    ):
        with pytest.raises(InvalidArgumentError, match="as of an older commit"):
            write()
    assert snapshot_files(store.root) == before


def test_without_retention_a_version_whose_files_were_removed_says_so(tmp_path: Path) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage(rows(100, seed=1))
    first = store._ds.snapshot().version
    expected = state(store)
    assert_same(state(Store(store.root, as_of=first)), expected)  # nothing removed yet
    store.delete_usage(DAY0 + NS_PER_DAY + 5)
    with pytest.raises(CorruptDatasetError, match="retention") as info:
        Store(store.root, as_of=first).find_usages()
    assert "set_history_retention" in str(info.value)
    assert store.vacuum() == []  # removed at the commit already


def test_vacuum_removes_only_what_no_retained_version_lists(
    kept: tuple[Store, dict[int, tuple[pd.DataFrame, pd.DataFrame]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, states = kept
    latest = state(store)
    stray = store.root / "date=2026-11-01" / "notes.txt"
    stray.write_text("not the store's")
    before = snapshot_files(store.root)
    assert store.vacuum() == []  # every version is younger than the week
    assert store.vacuum(dry_run=True) == []
    # A week and a day later, only the versions current since then are kept: the latest.
    now = time.time() + 8 * 86_400
    monkeypatch.setattr(history.time, "time", lambda: now)
    doomed = store.vacuum(dry_run=True)
    assert doomed and snapshot_files(store.root) == before
    live = set(store._ds.live_paths())
    assert not {p.relative_to(store.root).as_posix() for p in doomed} & live
    assert store.vacuum() == doomed
    assert all(not p.exists() for p in doomed)
    assert stray.read_text() == "not the store's"
    assert_same(state(Store(store.root)), latest)
    with pytest.raises(CorruptDatasetError, match="gone"):
        Store(store.root, as_of=min(states) + 1).find_usages()
    assert store.vacuum() == []


def test_vacuum_with_a_retention_of_zero_keeps_the_latest_version_only(
    kept: tuple[Store, dict[int, tuple[pd.DataFrame, pd.DataFrame]]],
) -> None:
    store, _ = kept
    latest = state(store)
    removed = store.vacuum(retention=0)
    assert removed
    assert_same(state(store), latest)
    on_disk = {
        p.relative_to(store.root).as_posix()
        for p in store.root.rglob("*")
        if p.is_file() and (p.suffix == ".parquet" or p.suffix == ".rollup")
    }
    assert {p for p in on_disk if not p.startswith("_delta_log/")} == set(store._ds.live_paths())


def test_compaction_vacuums_what_the_retention_no_longer_keeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.set_history_retention(dt.timedelta(hours=1))
    for seed in range(3):
        store.create_usage(rows(50, seed, days=1))
    store.compact()
    replaced = [p for p in store.root.glob("date=*/*.parquet") if p not in set(store.files())]
    assert replaced  # kept for the hour
    now = time.time() + 2 * 3600
    monkeypatch.setattr(history.time, "time", lambda: now)
    store.create_usage(rows(50, seed=9, days=1))
    store.compact()
    assert not any(p.exists() for p in replaced)


def test_a_write_interrupted_after_its_commit_keeps_the_files_it_removed(
    kept: tuple[Store, dict[int, tuple[pd.DataFrame, pd.DataFrame]]],
) -> None:
    """Recovery of a committed write with a retention leaves the files it removed."""
    store, states = kept
    version = store._ds.snapshot().version

    def stop(point: str) -> None:
        if point == "committed":
            raise OSError(5, "injected")

    faults.FAULT_HOOK = stop
    try:
        store.delete_usage(DAY0 + 2 * NS_PER_DAY + 7)
    finally:
        faults.FAULT_HOOK = None
    assert (store.root / "_usage_analytics.journal").exists()
    Store(store.root).create_usage(rows(5, seed=77, days=1))  # recovers first
    assert not (store.root / "_usage_analytics.journal").exists()
    assert_same(state(Store(store.root, as_of=version)), states[version])


def test_the_retention_is_the_datasets_and_is_checked(tmp_path: Path) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.set_history_retention("30d")
    assert Store(store.root)._ds.snapshot().retention == 30 * 86_400
    store.set_history_retention(dt.timedelta(0))
    assert Store(store.root)._ds.snapshot().retention == 0
    for bad in (-1, 1.5, "7 days", "", None, True, dt.timedelta(microseconds=1)):
        with pytest.raises(InvalidArgumentError, match="duration"):
            store.set_history_retention(bad)
    with pytest.raises(InvalidArgumentError, match="dry_run"):
        store.vacuum(dry_run="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 3.5, True, object(), [1], "garbage"])
def test_bad_as_of_values_are_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="as_of"):
        Store(tmp_path, as_of=bad)


def test_as_of_a_version_the_log_does_not_have(tmp_path: Path) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    with pytest.raises(InvalidArgumentError, match="versions 0 to 0"):
        Store(store.root, as_of=5).find_usages()


def test_the_readme_example_runs(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    api = readme[readme.index("## The API\n") : readme.index("## Asking other questions")]
    [code] = [b for b in re.findall(r"```python\n(.*?)```", api, re.S) if "as_of" in b]
    shutil.copytree(Path(__file__).parents[1] / "data" / "sample", tmp_path / "sample")
    store = Store(tmp_path / "sample")
    namespace = {"Store": Store, "store": store}
    exec(compile(code, "README.md", "exec"), namespace)
    assert store._ds.snapshot().retention == 60 * 86_400
    assert namespace["version"] == store._ds.snapshot().version  # the latest, after the setting
    assert store.vacuum(dry_run=True) == []  # the sample's files are all live


def test_an_older_dataset_has_no_history_until_its_first_write(tmp_path: Path) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage(rows(10, seed=1))
    to_manifest_format(store.root)
    assert Store(store.root).history().empty
    with pytest.raises(InvalidArgumentError, match="no history"):
        Store(store.root, as_of=0).find_usages()
    assert store.create_usage(rows(10, seed=2)) == 10
    versions = Store(store.root).history()["version"].tolist()
    assert versions[0] == 0 and versions == list(range(len(versions)))
    assert len(Store(store.root, as_of=0).find_usages()) == 20  # the move kept every row
