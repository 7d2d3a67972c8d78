"""Several processes on one store: writers, readers, killed writers and external engines."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import _workers
import duckdb
import pandas as pd
import pyarrow.dataset as pads
import pytest
from helpers import is_bookkeeping

from usage_analytics import LockTimeoutError, Store, UsageAnalyticsError

CTX = mp.get_context("spawn")
#: Upper bound of every wait on a child process, in seconds.
WAIT = 180.0
WORKERS_SCRIPT = Path(__file__).with_name("_workers.py")


def _start(procs: list[BaseProcess], target: Any, *args: Any) -> BaseProcess:
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    procs.append(proc)
    return proc


def _collect(out: Any, n: int, timeout: float = WAIT) -> list[tuple[Any, ...]]:
    """``n`` reports from ``out``; fails on a worker error or when they do not come in time."""
    results: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + timeout
    while len(results) < n:
        remaining = deadline - time.monotonic()
        try:
            item = out.get(timeout=max(remaining, 0.01))
        except queue.Empty:
            pytest.fail(f"workers did not report within {timeout} s; got {results}")
        if item[0] == "error":
            pytest.fail(f"worker {item[1]} failed:\n{item[2]}")
        results.append(item)
    return results


def _join(procs: list[BaseProcess], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(deadline - time.monotonic(), 0.01))
    alive = [p.pid for p in procs if p.is_alive()]
    assert not alive, f"processes {alive} did not finish"
    assert [p.exitcode for p in procs] == [0] * len(procs)


def _new_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    return store


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes, by path relative to the root."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _assert_clean(store: Store) -> None:
    """Only the manifest, the lock and the manifest's data files are left under the root."""
    on_disk = {
        p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if not p.is_dir()
    }
    live = set(store._ds.live_paths())  # the data files and their rollups
    assert {p for p in on_disk if not is_bookkeeping(p)} == live
    assert {p for p in live if p.endswith(".parquet")} == {
        p.relative_to(store.root).as_posix() for p in store.files()
    }
    for part in store.root.iterdir():
        if part.is_dir():
            assert any(part.iterdir()), f"empty partition folder {part.name} left"


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def _keyed(df: pd.DataFrame, columns: list[str]) -> list[tuple[Any, ...]]:
    return sorted(df[columns].itertuples(index=False, name=None))


# ---------------------------------------------------------------------------------------------
# 1. Parallel appends.


def test_parallel_writers_on_a_fresh_root_keep_every_row_once(
    tmp_path: Path, procs: list[BaseProcess]
) -> None:
    writers, batches, rows = 4, 50, 10
    store = Store(tmp_path / "fresh" / "ds")
    go = CTX.Event()
    out = CTX.Queue()
    for w in range(writers):
        _start(procs, _workers.append_batches, str(store.root), w, batches, rows, go, out)
    go.set()
    results = _collect(out, writers)
    _join(procs)
    assert sorted(results) == [("ok", w, batches * rows) for w in range(writers)]

    df = store.find_usages()
    assert_every_row_once(df, writers, batches, rows)
    assert df["id"].tolist() == list(range(1, writers * batches * rows + 1))
    assert {p.parent.name for p in store.files()} == {"date=2026-11-01", "date=2026-11-02"}
    _assert_clean(store)


def assert_every_row_once(df: pd.DataFrame, writers: int, batches: int, rows: int) -> None:
    """``df`` holds each row of ``writer_batch`` of every writer and batch, once, and each
    batch got consecutive ids, in the order its rows were given."""
    assert len(df) == writers * batches * rows
    assert not df.duplicated(["user_id", "timestamp"]).any()
    assert df["id"].is_unique
    expected = _frame(
        [
            r
            for w in range(writers)
            for b in range(batches)
            for r in _workers.writer_batch(w, b, rows)
        ]
    )
    columns = ["user_id", "tenant", "api_method", "status_code", "timestamp", "latency_ms"]
    assert _keyed(df, columns) == _keyed(expected, columns)
    seq = df["latency_ms"] % 1_000_000
    for _, batch in df.assign(batch=seq // rows, seq=seq).groupby(["user_id", "batch"]):
        ids = batch["id"].to_numpy()
        assert ids.max() - ids.min() == rows - 1
        assert batch.sort_values("id")["seq"].is_monotonic_increasing


# ---------------------------------------------------------------------------------------------
# 2. Racing writers with overlapping keys.


def test_racing_overlapping_batches_exactly_one_lands(
    tmp_path: Path, procs: list[BaseProcess]
) -> None:
    rounds = 6
    store = _new_store(tmp_path)
    barrier = CTX.Barrier(2)
    out = CTX.Queue()
    for who in (0, 1):
        _start(procs, _workers.racing_writer, str(store.root), who, rounds, barrier, out)
    results = _collect(out, 2 * rounds)
    _join(procs)

    df = store.find_usages()
    assert len(df) == 10 * rounds
    for r in range(rounds):
        outcome = sorted((item for item in results if item[2] == r), key=lambda i: i[1])
        kinds = sorted(item[0] for item in outcome)
        assert kinds == ["ok", "raised"], outcome
        (winner,) = [item[1] for item in outcome if item[0] == "ok"]
        (loser,) = [item for item in outcome if item[0] == "raised"]
        assert loser[3] == "DuplicateUsageError", outcome
        assert [item[3] for item in outcome if item[0] == "ok"] == [10]
        got = df[df["user_id"] == f"u{r}"]
        columns = ["user_id", "organization", "timestamp", "latency_ms"]
        assert _keyed(got, columns) == _keyed(_frame(_workers.race_batch(winner, r)), columns)
    _assert_clean(store)


# ---------------------------------------------------------------------------------------------
# 3. A reader while another process appends, compacts and deletes.


def test_reader_sees_whole_batches_and_a_contiguous_range(
    tmp_path: Path, procs: list[BaseProcess]
) -> None:
    steps, rows = 30, 6
    store = _new_store(tmp_path)
    done = CTX.Event()
    started = CTX.Event()
    reader_out = CTX.Queue()
    writer_out = CTX.Queue()
    _start(procs, _workers.slot_reader, str(store.root), rows, done, started, WAIT, reader_out)
    assert started.wait(WAIT)
    _start(procs, _workers.slot_mutator, str(store.root), steps, rows, done, writer_out)
    ((_, (lo, hi), rewrites, deletes),) = _collect(writer_out, 1)
    ((_, observations, states, violations),) = _collect(reader_out, 1)
    _join(procs)

    assert violations == []
    assert observations >= 10
    assert states >= 3
    assert deletes >= 8
    assert rewrites >= 1
    df = store.find_usages()
    counts = df.groupby("api_method").size()
    assert sorted(_workers.parse_slot_method(str(m)) for m in counts.index) == list(range(lo, hi))
    assert set(counts) == {rows}
    _assert_clean(store)


# ---------------------------------------------------------------------------------------------
# 4. A writer killed while it holds the lock.


def _run_worker(*args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("USAGE_ANALYTICS_KILL_AT", None)
    if kill_at is not None:
        env["USAGE_ANALYTICS_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, str(WORKERS_SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def _user_rows(store: Store) -> list[tuple[Any, ...]]:
    return _keyed(store.find_usages(), ["user_id", "timestamp", "latency_ms"])


def _expected_rows(*batches: int) -> list[tuple[Any, ...]]:
    rows = [r for k in batches for r in _workers.kill_batch(k)]
    return _keyed(_frame(rows), ["user_id", "timestamp", "latency_ms"])


def test_lock_holder_killed_releases_the_lock(tmp_path: Path, procs: list[BaseProcess]) -> None:
    store = _new_store(tmp_path)
    store.create_usage(_workers.kill_batch(0))
    ready, release = CTX.Event(), CTX.Event()
    holder = _start(procs, _workers.hold_lock, str(store.root), ready, release, WAIT)
    assert ready.wait(WAIT)
    with pytest.raises(LockTimeoutError):
        Store(store.root, lock_timeout=0.2).create_usage(_workers.kill_batch(1))
    holder.kill()
    holder.join(WAIT)
    assert holder.exitcode == -signal.SIGKILL
    assert Store(store.root, lock_timeout=1.0).create_usage(_workers.kill_batch(1)) == 12
    assert _user_rows(store) == _expected_rows(0, 1)
    _assert_clean(store)


def _check_kill(tmp_path: Path, args: list[str], kill_at: str, survives: bool) -> None:
    """Run ``args`` in a child killed at ``kill_at``; check the state, then a next writer."""
    store = _new_store(tmp_path)
    store.create_usage(_workers.kill_batch(0))
    store.create_usage(_workers.kill_batch(1))
    before = _expected_rows(0, 1)
    if args[0] == "write":
        effect = _expected_rows(0, 1, int(args[1]))
    else:
        effect = [row for row in before if row[1] >= int(args[1])]
    result = _run_worker(args[0], str(store.root), *args[1:], kill_at=kill_at)
    assert result.returncode == -signal.SIGKILL, (result.stdout, result.stderr)
    expected = effect if survives else before
    assert _user_rows(store) == expected
    # The read found no writer holding the lock, so it finished the interrupted write.
    _assert_clean(store)
    next_writer = Store(store.root, lock_timeout=1.0)
    assert next_writer.create_usage(_workers.kill_batch(2)) == 12
    assert _user_rows(store) == sorted(expected + _expected_rows(2))
    assert store.find_usages()["id"].is_unique
    _assert_clean(store)


@pytest.mark.parametrize(
    ("kill_at", "survives"),
    [("journal_written", False), ("data_renamed:2", False), ("committed", True)],
)
def test_writer_killed_mid_write(tmp_path: Path, kill_at: str, survives: bool) -> None:
    _check_kill(tmp_path, ["write", "3"], kill_at, survives)


DELETE_CUTOFF = _workers.D0 + _workers.HOUR + 6 * _workers.SEC


def test_delete_killed_mid_rewrite(tmp_path: Path) -> None:
    _check_kill(tmp_path, ["delete", str(DELETE_CUTOFF)], "data_renamed", False)
    assert len(Store(tmp_path / "ds").find_usages()) == 36


ALL_POINTS = [
    ("journal_tmp_written", False),
    ("journal_written", False),
    ("data_tmp_written", False),
    ("data_tmp_written:3", False),
    ("data_renamed", False),
    ("data_renamed:3", False),
    ("commit_tmp_written", False),
    ("committed", True),
    ("cleanup_done", True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("kill_at", "survives"), ALL_POINTS)
def test_writer_killed_at_every_point(tmp_path: Path, kill_at: str, survives: bool) -> None:
    _check_kill(tmp_path, ["write", "3"], kill_at, survives)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_at", "survives"),
    [p for p in ALL_POINTS if not p[0].endswith(":3")] + [("file_removed", True)],
)
def test_delete_killed_at_every_point(tmp_path: Path, kill_at: str, survives: bool) -> None:
    _check_kill(tmp_path, ["delete", str(DELETE_CUTOFF)], kill_at, survives)


# ---------------------------------------------------------------------------------------------
# 5. Lock timeout.


def test_lock_timeout_leaves_files_unchanged(tmp_path: Path, procs: list[BaseProcess]) -> None:
    store = _new_store(tmp_path)
    store.create_usage(_workers.kill_batch(0))
    before = _tree(store.root)
    ready, release = CTX.Event(), CTX.Event()
    holder = _start(procs, _workers.hold_lock, str(store.root), ready, release, WAIT)
    assert ready.wait(WAIT)
    impatient = Store(store.root, lock_timeout=0.2)
    try:
        with pytest.raises(LockTimeoutError) as excinfo:
            impatient.create_usage(_workers.kill_batch(1))
        assert isinstance(excinfo.value, UsageAnalyticsError)
        with pytest.raises(LockTimeoutError):
            impatient.delete_usage(_workers.D0 + 5 * _workers.DAY)
        with pytest.raises(LockTimeoutError):
            Store(store.root, lock_timeout=0).create_usage(_workers.kill_batch(1))
        assert _tree(store.root) == before
        assert _user_rows(store) == _expected_rows(0)
    finally:
        release.set()
    holder.join(WAIT)
    assert holder.exitcode == 0
    assert Store(store.root, lock_timeout=5.0).create_usage(_workers.kill_batch(1)) == 12
    assert _user_rows(store) == _expected_rows(0, 1)


# ---------------------------------------------------------------------------------------------
# 6. External engines reading the folder while a process writes.


def _bad_paths(paths: list[str], root: Path) -> list[str]:
    bad = []
    for path in paths:
        rel = Path(path).resolve().relative_to(root.resolve())
        if ".tmp" in path or any(part.startswith((".", "_")) for part in rel.parts):
            bad.append(path)
    return bad


def _vanished_duckdb(exc: Exception) -> bool:
    text = str(exc)
    return isinstance(exc, duckdb.IOException) and (
        "No files found" in text or "No such file" in text
    )


def test_external_readers_never_meet_torn_or_temporary_files(
    tmp_path: Path, procs: list[BaseProcess]
) -> None:
    store = _new_store(tmp_path)
    root = store.root
    for k in range(12):
        store.create_usage(_workers.churn_batch(k))
    phase_id = CTX.Value("i", 0)
    reads = CTX.Value("i", 0)
    done = CTX.Event()
    out = CTX.Queue()
    _start(procs, _workers.churn, str(root), 12, 4, 8, 6, phase_id, reads, done, out)
    con = duckdb.connect()
    query = (
        f"select filename, count(*) from read_parquet('{root}/date=*/*.parquet', "
        "hive_partitioning=true, filename=true) group by filename"
    )
    hard: list[str] = []
    bad: list[str] = []
    vanished = {"append": 0, "mixed": 0}
    ok = {"append": 0, "mixed": 0}
    deadline = time.monotonic() + WAIT
    while not done.is_set() and time.monotonic() < deadline:
        for engine in ("pyarrow", "duckdb"):
            start = phase_id.value
            failed = False
            try:
                if engine == "pyarrow":
                    dataset = pads.dataset(root, format="parquet", partitioning="hive")
                    bad.extend(_bad_paths(list(dataset.files), root))
                    dataset.to_table()
                else:
                    result = con.sql(query).fetchall()
                    bad.extend(_bad_paths([str(name) for name, _ in result], root))
            except FileNotFoundError:
                failed = True
            except Exception as exc:
                if engine == "duckdb" and _vanished_duckdb(exc):
                    failed = True
                else:
                    hard.append(f"{engine}: {type(exc).__name__}: {exc}")
            end = phase_id.value
            kind = "append" if start == end and (start == 0 or start % 2 == 1) else "mixed"
            if failed:
                vanished[kind] += 1
            else:
                ok[kind] += 1
        with reads.get_lock():
            reads.value += 1
    ((_, ops),) = _collect(out, 1)
    _join(procs)

    assert hard == []
    assert bad == []
    assert vanished["append"] == 0, (vanished, ok)
    assert ok["append"] >= 10, (vanished, ok)
    assert ok["mixed"] + vanished["mixed"] >= 10, (vanished, ok)
    assert ops >= 32

    # With no writer running, store.files() is exactly what the store reads.
    files = [str(p) for p in store.files()]
    n = len(store.find_usages())
    assert n > 0
    assert pads.dataset(files, format="parquet").count_rows() == n
    assert con.sql(f"select count(*) from read_parquet({files})").fetchall() == [(n,)]
    assert pads.dataset(root, format="parquet", partitioning="hive").count_rows() == n
    _assert_clean(store)


def test_store_files_snapshot_matches_find_usages_under_the_lock(tmp_path: Path) -> None:
    store = _new_store(tmp_path)
    for k in range(6):
        store.create_usage(_workers.kill_batch(k))
    assert store.delete_usage(_workers.D0 + 2 * _workers.HOUR + 4 * _workers.SEC) == 10
    assert store.compact() == 3
    store.create_usage(_workers.kill_batch(9))
    with store._ds._locked(timeout=5.0):
        files = [str(p) for p in store.files()]
        df = store.find_usages()
    table = pads.dataset(files, format="parquet").to_table()
    assert table.num_rows == len(df) == 6 * 12 - 10 + 12
    assert sorted(table.column("id").to_pylist()) == df["id"].tolist()
