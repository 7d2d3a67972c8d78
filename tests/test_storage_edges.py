"""Edges of object storage, the Delta log, time travel, vacuum and the readers of other engines:
writes that race a vacuum, versions as history() gives them, clocks that differ, gone files."""

from __future__ import annotations

import json
import socket
import time
import types
import uuid
from pathlib import Path

import pandas as pd
import pytest
from _crash_worker import make_v1
from helpers import DAY0, NS_PER_DAY, random_usage_frame

from conftest import Remote
from usage_analytics import (
    CorruptDatasetError,
    DatasetNotInitializedError,
    InvalidArgumentError,
    Store,
    UsageAnalyticsError,
)
from usage_analytics._storage import faults, history, objects
from usage_analytics._storage import log as log_module


def rows(n: int, seed: int, days: int = 3) -> pd.DataFrame:
    frame = random_usage_frame(n, seed, days=days)
    frame["timestamp"] += seed * 1_000  # keys unlike those of every other seed
    return frame


# -- 1. vacuum on object storage deletes the files of a write that committed while it ran -----


def test_vacuum_on_object_storage_keeps_files_of_a_write_committed_meanwhile(
    memory: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = memory.store()
    store.auto_migrate()
    store.create_usage(rows(20, seed=1))
    original = objects.ObjectDataset.own_files

    def another_machine_appends_first(self: objects.ObjectDataset) -> set[str]:
        # An ETL job on another machine commits an append while the vacuum runs.
        memory.store().create_usage(rows(20, seed=2))
        return original(self)

    monkeypatch.setattr(objects.ObjectDataset, "own_files", another_machine_appends_first)
    removed = store.vacuum()
    monkeypatch.setattr(objects.ObjectDataset, "own_files", original)
    assert removed == []  # every file is listed by a committed version
    assert len(memory.store().find_usages()) == 40


# -- 2. as_of: the versions history() gives, and a missing dataset ----------------------------


def test_as_of_takes_the_version_history_gives(tmp_path: Path) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage(rows(10, seed=1))
    version = store.history()["version"].iloc[-1]  # numpy.int64
    assert Store(store.root, as_of=version).info().rows == 10


def test_as_of_on_a_missing_dataset_says_it_is_not_initialized(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotInitializedError, match=r"auto_migrate"):
        Store(tmp_path / "nothing", as_of=0).find_usages()


# -- 3. file:// URLs -----------------------------------------------------------------------


def test_a_file_url_root_is_not_a_folder_named_file_colon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    target = tmp_path / "ds"
    try:
        Store(f"file://{target}").auto_migrate()
    except InvalidArgumentError:
        pass  # refusing file:// clearly is fine too
    else:
        assert (target / "_delta_log").is_dir()
    assert list(cwd.iterdir()) == []  # nothing created under ./file:/...


# -- 4. errors of the object store's client escape raw ---------------------------------------


def test_an_unknown_storage_option_is_an_invalid_argument() -> None:
    store = Store("s3://some-bucket/usage", storage_options={"endpoint_urll": "http://x"})
    with pytest.raises(UsageAnalyticsError, match="storage_options"):
        store.info()


def test_an_unreachable_endpoint_is_a_storage_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "key": "k",
        "secret": "s",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    with pytest.raises(UsageAnalyticsError):
        Store("s3://some-bucket/usage", storage_options=options).info()


# -- 5. Delta readers during / after an interrupted upgrade read nulls ------------------------


def test_delta_readers_read_zeros_for_rows_of_before_an_interrupted_upgrade(
    tmp_path: Path,
) -> None:
    import deltalake
    import polars as pl

    root = tmp_path / "v1"
    make_v1(root)

    class Killed(BaseException):
        """The process dies (after the upgrade's first commit)."""

    def killed(point: str) -> None:
        if point == "committed":
            raise Killed

    faults.FAULT_HOOK = killed
    try:
        with pytest.raises(Killed):
            Store(root).auto_migrate()
    finally:
        faults.FAULT_HOOK = None
    store = Store(root)
    expected = store.find_usages()
    assert (expected["runtime_latency_ms"] == 0).all()
    table = deltalake.DeltaTable(str(root)).to_pyarrow_table()
    assert table.num_rows == len(expected)
    assert table.column("runtime_latency_ms").null_count == 0
    assert pl.scan_delta(str(root)).collect()["runtime_latency_ms"].null_count() == 0


# -- 6. compaction tells Delta readers it changed data ----------------------------------------


def test_a_compaction_commit_marks_its_actions_as_no_data_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    for seed in range(3):
        store.create_usage(rows(20, seed, days=1))
    assert store.compact() == 1
    optimize = []
    for path in sorted((store.root / "_delta_log").glob("*.json")):
        actions = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if actions[0]["commitInfo"]["operation"] == "OPTIMIZE":
            optimize += [a for a in actions if "add" in a or "remove" in a]
    assert optimize
    # Rows were only rearranged: Delta's OPTIMIZE writes dataChange=false, else streaming
    # readers (Spark readStream) fail on the removes or read the rows a second time.
    assert {next(iter(a.values()))["dataChange"] for a in optimize} == {False}


# -- 7. commit times from machines whose clocks differ ----------------------------------------


def test_as_of_a_time_never_reads_a_commit_made_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage(rows(10, seed=1))
    first = store.history().iloc[-1]
    # A second writer whose clock is an hour behind appends afterwards.
    behind = time.time() - 3600
    monkeypatch.setattr(log_module, "time", types.SimpleNamespace(time=lambda: behind))
    store.create_usage(rows(10, seed=2))
    monkeypatch.undo()
    times = store.history()["time"]
    assert times.is_monotonic_increasing
    before_first = first["time"] - pd.Timedelta(milliseconds=1)
    # The rows of the first append committed after that time: the state then has none.
    assert Store(store.root, as_of=before_first).info().rows == 0


# -- 8. to_duckdb / to_polars of a version whose files are gone -------------------------------


def test_to_duckdb_of_a_version_whose_files_are_gone_says_so(tmp_path: Path) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage(rows(30, seed=1))
    version = int(store.history()["version"].iloc[-1])
    store.delete_usage(DAY0 + NS_PER_DAY + NS_PER_DAY // 2)  # retention 0: files removed
    old = Store(store.root, as_of=version)
    with pytest.raises(UsageAnalyticsError) as info:
        old.find_usages()
    assert "retention" in str(info.value)  # the store's own reads say why
    with pytest.raises(UsageAnalyticsError, match="retention") as info:
        old.to_duckdb()
    assert "damaged" not in str(info.value)


@pytest.mark.parametrize("engine", ["duckdb", "polars"])
def test_on_object_storage_a_gone_version_is_not_a_raw_file_not_found(
    memory: Remote, engine: str
) -> None:
    store = memory.store()
    store.auto_migrate()
    store.create_usage(rows(30, seed=1))
    version = int(store.history()["version"].iloc[-1])
    store.delete_usage(DAY0 + NS_PER_DAY + NS_PER_DAY // 2)
    old = memory.store(as_of=version)
    with pytest.raises(UsageAnalyticsError):
        old.to_duckdb().fetchall() if engine == "duckdb" else old.to_polars().collect()


# -- 9. the versions history() lists after a vacuum ------------------------------------------


def test_after_a_vacuum_history_versions_read_or_say_they_are_past_the_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.set_history_retention("1h")
    store.create_usage(rows(60, seed=1))
    store.delete_usage(DAY0 + NS_PER_DAY + NS_PER_DAY // 2)
    store.create_usage(rows(60, seed=2))
    later = time.time() + 2 * 3600
    monkeypatch.setattr(history.time, "time", lambda: later)
    assert store.vacuum()  # the retention is over: removed files go
    log = store.history()
    deleted = int(log.loc[log["operation"] == "DELETE", "version"].iloc[0])
    first_write = int(log.loc[log["operation"] == "WRITE", "version"].iloc[0])
    for version in log["version"]:
        old = Store(store.root, as_of=int(version))
        if first_write <= version < deleted:  # lists files the delete removed, now vacuumed
            with pytest.raises(CorruptDatasetError, match=r"retention.*read a later version"):
                old.find_usages()
        else:
            old.find_usages()


# -- 10. usage_analytics.dask.report with a keyword Store.report does not take ----------------


def test_dask_report_names_a_bad_keyword_without_internal_names(tmp_path: Path) -> None:
    import usage_analytics.dask as ua_dask

    store = Store(tmp_path / "ds")
    store.auto_migrate()
    with pytest.raises((UsageAnalyticsError, TypeError)) as info:
        ua_dask.report(store, None, "2026-11-01", "2026-11-02", metric=["requests"])
    assert "metric" in str(info.value)
    assert "parse_spec" not in str(info.value)


# -- 11. a memory:// root at the top of the filesystem ----------------------------------------


def test_a_bare_memory_root_gives_urls_that_reopen_it() -> None:
    import fsspec

    name = f"ua-{uuid.uuid4().hex[:8]}"
    store = Store("memory://")
    try:
        store.auto_migrate()
        store.create_usage({"user_id": name, "timestamp": DAY0})
        assert str(store.root).startswith("memory://")
        assert Store(store.root).info().rows == store.info().rows
        for url in store.files():
            assert fsspec.core.split_protocol(str(url))[0] == "memory"
    finally:
        fs = fsspec.filesystem("memory")
        for path in ("/_delta_log", "/_usage_analytics.json", "/_rollups"):
            if fs.exists(path):
                fs.rm(path, recursive=True)
        for path in fs.ls("/", detail=False):
            if path.lstrip("/").startswith("date="):
                fs.rm(path, recursive=True)
