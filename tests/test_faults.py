"""Disk failures (ENOSPC, EIO) injected at each step of every write.

Before the commit point the write raises StorageError, leaves every file byte-identical and
releases the lock; after it, the write has happened and the next operation finishes its clean-up.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _crash_worker import DAY, T0, batch, run
from helpers import snapshot_files

from usage_analytics import LockTimeoutError, StorageError, Store, UsageAnalyticsError
from usage_analytics._storage import faults
from usage_analytics._summaries import SPAN_PARTS
from usage_analytics.reports import grains

BEFORE_COMMIT = (
    "journal_tmp_written",
    "journal_written",
    "data_tmp_written",
    "data_renamed",
    "commit_tmp_written",
)
AFTER_COMMIT = ("committed", "file_removed", "cleanup_done")
OPS = ("append", "delete", "delete_limit", "compact")


@pytest.fixture
def inject() -> Iterator[Callable[[str, int], None]]:
    def arm(point: str, code: int) -> None:
        def hook(name: str) -> None:
            if name == point:
                raise OSError(code, f"injected {errno.errorcode[code]}")

        faults.FAULT_HOOK = hook

    yield arm
    faults.FAULT_HOOK = None


def make_base(root: Path) -> Store:
    store = Store(root, lock_timeout=0)
    store.auto_migrate()
    store.create_usage(batch(1))
    store.create_usage(batch(2))
    return store


def rows(root: Path) -> pd.DataFrame:
    return Store(root).find_usages().drop(columns=["created_at"])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("point", BEFORE_COMMIT)
@pytest.mark.parametrize("op", OPS)
def test_disk_error_before_commit_changes_nothing(
    tmp_path: Path, inject: Callable[[str, int], None], op: str, point: str, code: int
) -> None:
    store = make_base(tmp_path / "root")
    before = snapshot_files(store.root)
    inject(point, code)
    with pytest.raises(StorageError) as info:
        run(store, op)
    faults.FAULT_HOOK = None
    assert isinstance(info.value, UsageAnalyticsError)
    assert info.value.errno == code
    assert "nothing was changed" in str(info.value)
    assert snapshot_files(store.root) == before
    # The lock was released (lock_timeout=0 would raise otherwise) and the next write works.
    assert store.create_usage(batch(60, days=(4,))) == 10
    assert len(store.find_usages()) == 70


@pytest.mark.parametrize("point", AFTER_COMMIT)
@pytest.mark.parametrize("op", OPS)
def test_disk_error_after_commit_keeps_the_write(
    tmp_path: Path, inject: Callable[[str, int], None], op: str, point: str
) -> None:
    expected_root = tmp_path / "expected"
    run(make_base(expected_root), op)
    store = make_base(tmp_path / "root")
    inject(point, errno.EIO)
    run(store, op)  # committed: the error only hit the clean-up, which the next write finishes
    faults.FAULT_HOOK = None
    pd.testing.assert_frame_equal(rows(store.root), rows(expected_root))
    assert store.create_usage(batch(60, days=(4,))) == 10
    assert not (store.root / "_usage_analytics.journal").exists()
    on_disk = sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*.parquet"))
    assert on_disk == sorted(p.relative_to(store.root).as_posix() for p in store.files())


@pytest.mark.parametrize("with_rollups", [False, True])
def test_interrupt_before_commit_rolls_back_and_reraises(
    tmp_path: Path,
    inject: Callable[[str, int], None],
    monkeypatch: pytest.MonkeyPatch,
    with_rollups: bool,
) -> None:
    store = make_base(tmp_path / "root")
    if with_rollups:  # the summaries are computed and written on other threads meanwhile
        from usage_analytics import _layout

        monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
        monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    before = snapshot_files(store.root)

    def hook(name: str) -> None:
        if name == "data_renamed":
            raise KeyboardInterrupt

    faults.FAULT_HOOK = hook
    with pytest.raises(KeyboardInterrupt):
        store.create_usage(batch(9, days=(1, 2)))
    faults.FAULT_HOOK = None
    assert snapshot_files(store.root) == before


def test_lock_timeout_is_typed_and_leaves_files(tmp_path: Path) -> None:
    store = make_base(tmp_path / "root")
    before = snapshot_files(store.root)
    with store._ds._locked(), pytest.raises(LockTimeoutError, match="lock_timeout"):
        Store(store.root, lock_timeout=0.05).create_usage(batch(9))
    assert snapshot_files(store.root) == before
    assert store.delete_usage(T0 + DAY) == 20


def test_failed_span_build_in_an_append_is_only_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spans go into the same commit as the rows; when computing one fails, the rows and the
    spans computed before it are committed without it, and a warning says so."""
    from usage_analytics import _layout

    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    store = Store(tmp_path / "root")
    store.auto_migrate()
    for seed in (1, 2):  # two files on each of days 0 and 1, no span yet (day 1 may be loading)
        assert store.create_usage(batch(seed, days=(0, 1))) == 20
    assert store._ds.snapshot().spans == ()
    version = store._ds.snapshot().version
    combine = grains.combine
    calls: dict[tuple[str, ...], int] = {}

    def fails_from_the_third_span(kind: str, parts: Any) -> Any:
        # Each part of the kinds is computed on a thread of its own, span after span: days 0
        # and 1 are computed, not block 0-1.
        (part,) = [p for p in SPAN_PARTS if kind in p]
        calls[part] = calls.get(part, 0) + 1
        if calls[part] > 2 * len(part):
            raise RuntimeError("injected failure")
        return combine(kind, parts)

    day0 = T0 // DAY
    with monkeypatch.context() as patch:
        patch.setattr(grains, "combine", fails_from_the_third_span)
        with pytest.warns(RuntimeWarning, match="rows were written.*injected failure"):
            assert store.create_usage(batch(3, days=(3,))) == 10
    snap = store._ds.snapshot()
    assert snap.version == version + 1  # one commit
    assert len(store.find_usages()) == 50
    assert {(s.first_day, s.last_day) for s in snap.spans} == {(day0, day0), (day0 + 1, day0 + 1)}
    on_disk = {p.relative_to(store.root).as_posix() for p in store.root.rglob("*.rollup")}
    assert on_disk == {p for p in store._ds.live_paths() if p.endswith(".rollup")}
    # The next load builds the span it missed, in its own commit.
    store.create_usage(batch(4, days=(4,)))
    snap = store._ds.snapshot()
    assert snap.version == version + 2
    assert (day0, day0 + 1) in {(s.first_day, s.last_day) for s in snap.spans}


def test_failed_span_build_after_an_import_of_several_days_is_only_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of several days too small for rollups of its own gets the spans of its whole
    days from their rows, in a commit after its own; when that fails, the rows stay."""
    from usage_analytics import _layout

    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 40)  # the batch, not each day
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    store = Store(tmp_path / "root")
    store.auto_migrate()

    def broken(kind: str, parts: Any) -> Any:
        raise RuntimeError("injected failure")

    with monkeypatch.context() as patch:
        patch.setattr(grains, "combine", broken)
        with pytest.warns(RuntimeWarning, match="rows were written.*injected failure"):
            assert store.create_usage(batch(1, days=(0, 1, 2, 3))) == 40
    assert len(store.find_usages()) == 40
    assert store._ds.snapshot().spans == ()
    store.compact()
    assert store._ds.snapshot().spans  # compact() builds them


@pytest.mark.parametrize("nth", range(1, 6))
def test_disk_error_writing_any_file_of_an_append_with_spans_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    """An append that carries spans writes five files (its data file, its two rollups, a
    span's two); a disk error at any of them fails the append and leaves every file as it was."""
    from usage_analytics import _layout

    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    store = Store(tmp_path / "root", lock_timeout=0)
    store.auto_migrate()
    store.create_usage(batch(1, days=(0, 1)))
    before = snapshot_files(store.root)
    written: list[str] = []

    def hook(name: str) -> None:
        if name == "data_tmp_written":
            written.append(name)
            if len(written) == nth:
                raise OSError(errno.EIO, "injected EIO")

    faults.FAULT_HOOK = hook
    try:
        with pytest.raises(StorageError, match="nothing was changed"):
            store.create_usage(batch(2, days=(3,)))
    finally:
        faults.FAULT_HOOK = None
    assert snapshot_files(store.root) == before
    store.create_usage(batch(2, days=(3,)))
    # The two days before, and each of them (a day of one file gets a span of the kinds that
    # only days have: the distributions).
    first = T0 // DAY
    assert {(s.first_day, s.last_day) for s in store._ds.snapshot().spans} == {
        (first, first + 1),
        (first, first),
        (first + 1, first + 1),
    }
