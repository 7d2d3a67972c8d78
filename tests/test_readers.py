"""Readers that may not write: a second Unix user, and a read-only filesystem.

A reader never needs the writers' lock: the manifest is a committed state at every moment, also
while a write is in flight or after one was interrupted before or after its commit point. These
tests read as a user without write access (a forked child that switched to uid 65534, when the
tests run as root; otherwise the dataset is made read-only for this user), and through a
read-only bind mount (where mounting is permitted), and check that every read answers with the
committed state while every write raises a ``StorageError`` that says why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _crash_worker import DAY, T0, batch

from usage_analytics import StorageError, Store, UsageAnalyticsError
from usage_analytics._storage.faults import FAULT_ENV

WORKER = Path(__file__).with_name("_crash_worker.py")
OTHER_UID = 65534  # "nobody" on Debian; any uid other than the owner's will do
WINDOW = (T0 - DAY, T0 + 10 * DAY)


def _reads(store: Store) -> dict[str, Any]:
    """Every read of the public API, as plain values that compare with ``==``."""
    info = store.info()
    return {
        "info": (info.rows, info.files, info.partitions, info.first_timestamp, info.last_timestamp),
        "files": sorted(p.relative_to(store.root).as_posix() for p in store.files()),
        "rows": store.find_usages().drop(columns=["created_at"]).to_dict("list"),
        "summary": store.aggregated_usage("t0", *WINDOW).to_dict("list"),
        "groups": store.get_usages_by_groups("t1", *WINDOW).to_dict("list"),
    }


def _writes(store: Store) -> dict[str, Callable[[], Any]]:
    return {
        "create_usage": lambda: store.create_usage(batch(40, days=(5,))),
        "delete_usage": lambda: store.delete_usage(T0 + DAY),
        "compact": store.compact,
    }


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every user can enter (pytest's own tmp folders are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix="usage-readers-"))
    path.chmod(0o755)
    yield path
    _make_writable(path)
    shutil.rmtree(path, ignore_errors=True)


def _make_writable(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            with contextlib.suppress(OSError):
                Path(dirpath, name).chmod(0o755)
    with contextlib.suppress(OSError):
        root.chmod(0o755)


def _base(root: Path) -> Store:
    store = Store(root)
    store.auto_migrate()
    store.create_usage(batch(1))
    store.create_usage(batch(2))
    return store


def _interrupt(root: Path, op: str, point: str) -> None:
    """Run ``op`` in a child process killed at fault point ``point``; a journal stays behind."""
    env = {**os.environ, FAULT_ENV: point}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(root), op], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr.decode()
    assert (root / "_usage_analytics.journal").exists()


# ---------------------------------------------------------------------------------------------
# A second Unix user.


def _as_reader(fn: Callable[[], Any]) -> tuple[str, Any]:
    """Run ``fn`` as a user without write access to the dataset: a forked child that switched
    to another uid (as root), else this user (the tests then take write access away). Returns
    ("ok", result) or ("error", (type name, message, is a UsageAnalyticsError))."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_fd)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(OTHER_UID)
                os.setuid(OTHER_UID)
            try:
                result: tuple[str, Any] = ("ok", fn())
            except BaseException as exc:  # reported to the parent
                result = (
                    "error",
                    (type(exc).__name__, str(exc), isinstance(exc, UsageAnalyticsError)),
                )
            data = pickle.dumps(result)
            with os.fdopen(write_fd, "wb") as fh:
                fh.write(data)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and data, "the reader process failed"
    outcome: tuple[str, Any] = pickle.loads(data)
    return outcome


@contextlib.contextmanager
def _without_write_access(root: Path) -> Iterator[None]:
    """As root, the forked reader switches user and the dataset stays as it is; otherwise write
    access is taken from the dataset's folders and files for the length of the block."""
    if os.geteuid() == 0:
        yield
        return
    paths = [Path(d) for d, _, _ in os.walk(root)] + [
        Path(d, f) for d, _, files in os.walk(root) for f in files
    ]
    modes = {p: p.stat().st_mode for p in paths}
    for p, mode in modes.items():
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def _other_user_sees(root: Path) -> dict[str, Any]:
    with _without_write_access(root):
        status, value = _as_reader(lambda: _reads(Store(root)))
    assert status == "ok", value
    return value  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("op", "point", "committed"),
    [
        ("append", "data_renamed", False),
        ("append", "committed", True),
        ("delete", "journal_written", False),
        ("delete", "file_removed", True),
        ("compact", "commit_tmp_written", False),
        ("compact", "committed", True),
    ],
)
def test_a_reader_without_write_access_reads_an_interrupted_write(
    shared_dir: Path, op: str, point: str, committed: bool
) -> None:
    root = shared_dir / "ds"
    before = _reads(_base(root))
    _interrupt(root, op, point)
    seen = _other_user_sees(root)
    assert (root / "_usage_analytics.journal").exists()  # the reader changed nothing
    after = _reads(Store(root))  # the owner recovers the write
    assert not (root / "_usage_analytics.journal").exists()
    assert seen == (after if committed else before)
    assert (after != before) == committed


def test_a_reader_without_write_access_reads_while_a_writer_holds_the_lock(
    shared_dir: Path,
) -> None:
    root = shared_dir / "ds"
    store = _base(root)
    expected = _reads(store)
    # A write in flight: the lock is held and its journal is there.
    (root / "_usage_analytics.journal").write_text(
        '{"txid": "' + "0" * 32 + '", "adds": [], "removes": []}'
    )
    with store._ds._locked():
        assert _other_user_sees(root) == expected
    assert _reads(store) == expected  # the owner's next read recovers the stale journal
    assert not (root / "_usage_analytics.journal").exists()


def test_a_reader_without_write_access_never_fails_during_a_loop_of_writes(
    shared_dir: Path,
) -> None:
    root = shared_dir / "ds"
    _base(root)
    writer = subprocess.Popen(
        [sys.executable, str(WORKER), str(root), "loop", "40"], stderr=subprocess.PIPE
    )

    log = shared_dir / "done.log"  # the worker adds a line for each operation that returned

    def writer_done() -> bool:
        return log.exists() and len(log.read_text().split()) == 40

    def read_until_the_writer_stops() -> tuple[int, int, list[str]]:
        calls, with_journal, errors = 0, 0, []
        deadline = time.monotonic() + 240
        while (not writer_done() or calls < 20) and time.monotonic() < deadline:
            journal = (root / "_usage_analytics.journal").exists()
            try:
                Store(root).aggregated_usage("t0", *WINDOW)
                Store(root).get_usages_by_groups("t1", *WINDOW)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            calls += 1
            with_journal += journal
        return calls, with_journal, errors

    try:
        with _without_write_access(root):
            status, value = _as_reader(read_until_the_writer_stops)
    finally:
        writer.wait(timeout=300)
    assert writer.returncode == 0, writer.stderr.read().decode() if writer.stderr else ""
    assert status == "ok", value
    calls, _, errors = value
    assert errors == [], f"{len(errors)} of {calls} reads failed; first: {errors[0]}"


def test_writes_without_write_access_raise_a_storage_error(shared_dir: Path) -> None:
    root = shared_dir / "ds"
    _base(root)
    _interrupt(root, "append", "committed")  # the lock file exists and a journal is left

    def try_writes() -> dict[str, tuple[str, str]]:
        store = Store(root, lock_timeout=0)
        outcome = {}
        for name, write in _writes(store).items():
            try:
                write()
                outcome[name] = ("returned", "")
            except Exception as exc:
                outcome[name] = (type(exc).__name__, str(exc))
        return outcome

    with _without_write_access(root):
        status, outcome = _as_reader(try_writes)
    assert status == "ok", outcome
    for name, (kind, message) in outcome.items():
        assert kind == "StorageError", (name, kind, message)
        assert "no permission to write" in message, (name, message)


# ---------------------------------------------------------------------------------------------
# A read-only filesystem.


@contextlib.contextmanager
def _read_only_view(src: Path, mountpoint: Path) -> Iterator[Path]:
    """``src`` seen through a read-only bind mount at ``mountpoint``."""
    mountpoint.mkdir()
    try:
        subprocess.run(
            ["mount", "--bind", str(src), str(mountpoint)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"this machine does not permit a bind mount here ({exc}); run as root")
    try:
        subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(mountpoint)], check=True, capture_output=True
        )
        probe = mountpoint / ".probe"
        with pytest.raises(OSError) as info:
            probe.write_text("x")
        assert info.value.errno == errno.EROFS
        yield mountpoint
    finally:
        for _ in range(50):  # a file a pyarrow thread still maps can keep the mount busy a moment
            if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


@pytest.fixture
def mountable(tmp_path: Path) -> Path:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root and mount(8)")
    return tmp_path


@pytest.mark.parametrize(
    ("op", "point", "committed"),
    [
        ("append", "data_renamed", False),
        ("append", "committed", True),
        ("delete", "file_removed", True),
        ("compact", "journal_written", False),
    ],
)
def test_reads_on_a_read_only_filesystem_see_the_committed_state(
    mountable: Path, op: str, point: str, committed: bool
) -> None:
    root = mountable / "ds"
    before = _reads(_base(root))
    _interrupt(root, op, point)
    with _read_only_view(root, mountable / "ro") as ro:
        seen = _reads(Store(ro))
        assert (ro / "_usage_analytics.journal").exists()
    after = _reads(Store(root))
    assert seen == (after if committed else before)


def test_writes_on_a_read_only_filesystem_say_so(mountable: Path) -> None:
    root = mountable / "ds"
    _base(root)
    _interrupt(root, "append", "committed")
    with _read_only_view(root, mountable / "ro") as ro:
        store = Store(ro, lock_timeout=0)
        for name, write in _writes(store).items():
            with pytest.raises(StorageError, match="read-only filesystem") as info:
                write()
            assert info.value.errno == errno.EROFS, name
        with pytest.raises(StorageError, match="read-only filesystem"):
            Store(ro / "new").auto_migrate()
        assert store.auto_migrate() is None  # already current: nothing to write, no error
    assert len(Store(root).find_usages()) == len(pd.concat([batch(1), batch(2), batch(7)]))
