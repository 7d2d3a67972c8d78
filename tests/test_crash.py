"""The kill matrix: every write path killed (SIGKILL) at every named step, then recovered.

After each kill the dataset must hold exactly the rows of the state before the write or of the
state after it (the point decides which), no temporary file or journal may be left once a
``Store`` has touched the root again, and the next write must work.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from _crash_worker import batch, loop_op, make_v1, run, single_row
from helpers import is_bookkeeping

from usage_analytics import Store, _layout
from usage_analytics._storage.faults import FAULT_ENV, FAULT_POINTS

WORKER = Path(__file__).with_name("_crash_worker.py")
BEFORE_COMMIT = (
    "journal_tmp_written",
    "journal_written",
    "data_tmp_written",
    "data_renamed",
    "commit_tmp_written",
)
CLEANUP = ("committed", "file_removed", "cleanup_done")
#: The marker is written by the first commit of a dataset moved from its manifest to the log.
AFTER_COMMIT = ("marker_tmp_written", *CLEANUP)

# The points each operation reaches (others must leave the operation to finish normally).
REACHED = {
    "append": set(BEFORE_COMMIT) | {"committed", "cleanup_done"},
    "append_merge": set(BEFORE_COMMIT) | set(CLEANUP),
    "delete": set(BEFORE_COMMIT) | set(CLEANUP),
    "delete_limit": set(BEFORE_COMMIT) | set(CLEANUP),
    "compact": set(BEFORE_COMMIT) | set(CLEANUP),
    # The first commit moves the dataset from its manifest to the log; then the version-1
    # files are rewritten.
    "upgrade": set(BEFORE_COMMIT) | set(AFTER_COMMIT),
}


def rows(root: Path) -> pd.DataFrame:
    return Store(root).find_usages().drop(columns=["created_at"])


def leftovers(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.endswith(".tmp") or p.name.endswith(".journal")
    )


def orphans(root: Path) -> set[str]:
    """Files on disk that the latest commit does not list (nor the manifest and the lock)."""
    on_disk = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not is_bookkeeping(p.relative_to(root).as_posix())
    }
    return on_disk - set(Store(root)._ds.live_paths())


def make_base(root: Path) -> None:
    store = Store(root)
    store.auto_migrate()
    store.create_usage(batch(1))
    store.create_usage(batch(2))


def run_child(root: Path | str, op: str, kill_at: str | None, **env_vars: str) -> int:
    """Run ``op`` on ``root`` in a child killed at ``kill_at``; returns its exit code."""
    env = dict(os.environ, **env_vars)
    env.pop(FAULT_ENV, None)
    if kill_at:
        env[FAULT_ENV] = kill_at
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(root), op],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode


@pytest.fixture(scope="module", autouse=True)
def rollups_for_small_files() -> Iterator[None]:
    """As in the worker: small batches get rollups and spans, so kills land in their writes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
        mp.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
        yield


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, pd.DataFrame]]:
    """For each operation: a pristine base dataset and the rows after the operation."""
    out = {}
    for op in REACHED:
        base = tmp_path_factory.mktemp(op) / "base"
        make_v1(base) if op == "upgrade" else make_base(base)
        if op == "append_merge":
            for i in range(_layout.MERGE_FANOUT - 1):
                Store(base).create_usage(single_row(i))
        after = base.parent / "after"
        shutil.copytree(base, after)
        run(Store(after), op)
        if op == "append_merge":  # the append did merge the day's files into one
            assert len(list(base.glob("date=2025-11-12/*.parquet"))) == 31
            assert len(list(after.glob("date=2025-11-12/*.parquet"))) == 1
        out[op] = (base, rows(after))
    return out


def test_the_matrix_names_every_write_fault_point() -> None:
    named = set(BEFORE_COMMIT) | set(AFTER_COMMIT)
    assert named | {"recovery_file_removed", "recovery_done"} == set(FAULT_POINTS)


CASES = [(op, point) for op in REACHED for point in (*BEFORE_COMMIT, *AFTER_COMMIT)]
CASES += [("append", "data_tmp_written:2"), ("append", "data_renamed:3")]
CASES += [("delete", "file_removed:2"), ("compact", "data_renamed:2")]


@pytest.mark.parametrize(("op", "kill_at"), CASES, ids=[f"{o}@{p}" for o, p in CASES])
def test_kill_at_each_point(
    states: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, op: str, kill_at: str
) -> None:
    base, after = states[op]
    root = tmp_path / "root"
    shutil.copytree(base, root)
    before = rows(base)
    point = kill_at.split(":")[0]

    code = run_child(root, op, kill_at)

    if point in REACHED[op]:
        assert code == -signal.SIGKILL, f"{op} never reached {kill_at}"
    expected = before if (code != 0 and point in BEFORE_COMMIT) else after
    pd.testing.assert_frame_equal(rows(root), expected)
    assert leftovers(root) == []
    assert orphans(root) == set()
    # The next write works and lands on top of the recovered state.
    if op == "upgrade":
        Store(root).auto_migrate()  # a rolled-back upgrade is simply run again
    assert Store(root).create_usage(batch(50, days=(5,))) == 10
    assert len(rows(root)) == len(expected) + 10


@pytest.mark.parametrize("first", ["data_renamed", "committed"])
@pytest.mark.parametrize("op", ["delete", "compact"])
def test_recovery_killed_part_way_is_run_again(
    states: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, op: str, first: str
) -> None:
    base, after = states[op]
    root = tmp_path / "root"
    shutil.copytree(base, root)
    assert run_child(root, op, first) == -signal.SIGKILL
    assert (root / "_usage_analytics.journal").exists()
    # Recovery itself is killed after it removed its first file, then run again.
    assert run_child(root, "read", "recovery_file_removed") == -signal.SIGKILL
    assert run_child(root, "read", "recovery_done") == -signal.SIGKILL
    expected = rows(base) if first.startswith("data_renamed") else after
    pd.testing.assert_frame_equal(rows(root), expected)
    assert leftovers(root) == []


def test_kill_during_first_migrate_leaves_a_root_that_migrates(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_child(root, "migrate", "commit_tmp_written") == -signal.SIGKILL
    Store(root).auto_migrate()
    assert len(rows(root)) == 0
    assert leftovers(root) == []


def _replay(root: Path, n: int) -> pd.DataFrame:
    make_base(root)
    store = Store(root)
    for i in range(n):
        loop_op(store, i)
    return rows(root)


def _random_kills(tmp_path: Path, runs: int, seed: int) -> None:
    rnd = random.Random(seed)
    for k in range(runs):
        work = tmp_path / f"run{k}"
        work.mkdir()
        root = work / "root"
        make_base(root)
        env = dict(os.environ, PYTHONPATH=str(WORKER.parent))
        env.pop(FAULT_ENV, None)
        child = subprocess.Popen([sys.executable, str(WORKER), str(root), "loop", "40"], env=env)
        time.sleep(rnd.uniform(1.5, 4.0))  # import time, then somewhere in the workload
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        log = work / "done.log"
        done = len(log.read_text().split()) if log.exists() else 0
        got = rows(root)
        candidates = [_replay(work / f"replay{n}", n) for n in (done, done + 1) if n <= 40]
        assert any(got.equals(c) for c in candidates), f"run {k}: not a committed state"
        assert leftovers(root) == []
        assert Store(root).create_usage(batch(99, days=(30,))) == 10


def test_killed_at_random_moments(tmp_path: Path) -> None:
    _random_kills(tmp_path, runs=3, seed=1)


@pytest.mark.slow
def test_killed_at_random_moments_long(tmp_path: Path) -> None:
    _random_kills(tmp_path, runs=30, seed=2)
