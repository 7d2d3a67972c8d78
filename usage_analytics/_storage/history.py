"""The history a commit log keeps: older versions to read (``as_of``), the list of commits, and
the vacuum that removes the files no retained version needs.

A commit that removes files (a delete, a compaction, a merge of small files) unlinks them just
after its commit point when the dataset's retention is 0, the default. With a retention of
``n`` seconds it leaves them, so that every version committed in the last ``n`` seconds (and
the one that was current ``n`` seconds ago) stays readable, by ``Store(root, as_of=...)`` and by
Delta readers' time travel, until :func:`vacuum` removes what none of those versions lists.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    CorruptDatasetError,
    InvalidArgumentError,
    StorageError,
    UsageAnalyticsError,
)
from .delta import is_span_domain
from .files import remove_files
from .manifest import (
    PARTITION_PREFIX,
    SIDECAR_DIR,
    Snapshot,
    SpanEntry,
    check_relative_path,
    is_int,
)

if TYPE_CHECKING:
    from .dataset import Dataset
    from .log import Log

__all__ = ["commits", "committed_paths", "own_files", "pinned_state", "remove_own", "vacuum"]


def pinned_state(log: Log, version: int | None, at_ms: int | None) -> Snapshot:
    """The state of commit ``version``, or the latest one committed at or before ``at_ms``."""
    if not log.exists():
        raise InvalidArgumentError(
            f"the dataset at {log.label} keeps no history yet (an older version of "
            "usage_analytics wrote it; its next write starts the commit log): read it without "
            "as_of"
        )
    if version is not None:
        return log.state_at(version)
    assert at_ms is not None
    for row in reversed(commits(log)):
        if row["timestamp"] is not None and row["timestamp"] <= at_ms:
            return log.state_at(row["version"])
    raise InvalidArgumentError(
        f"the dataset at {log.label} has no commit at or before the as_of time; its oldest "
        "kept commit is later: give a later time"
    )


def commits(log: Log) -> list[dict[str, Any]]:
    """Each commit the log keeps: version, time (ms since the epoch) and operation."""
    out = []
    for version in log.listing()[0]:
        info = log.commit_info(version)
        stamp = info.get("timestamp")
        out.append(
            {
                "version": version,
                "timestamp": stamp if is_int(stamp) else None,
                "operation": str(info.get("operation", "")),
            }
        )
    return out


def vacuum(ds: Dataset, retention: int | None, *, dry_run: bool) -> list[str]:
    """Remove the data and summary files that no retained version lists; returns their paths
    (relative to the root), sorted. ``retention`` overrides the dataset's, in seconds.

    Retained are the versions committed in the last ``retention`` seconds and the one that was
    current then. Files of the dataset's own naming that no commit lists (left by a cleanup
    that failed) go too; files of other names are never touched.
    """
    with ds.transaction() as tx:  # the lock, and recovery of an interrupted write first
        latest = tx.base
        keep_s = latest.retention if retention is None else retention
        # The files first, then what the versions list, up to the newest: on object storage
        # (no lock) another writer may commit meanwhile, and the files of such a commit are
        # either listed by the versions read after them or too young to be taken as left over.
        own = ds.own_files()
        first = latest.version
        if ds._log.exists():
            latest = ds._log.load()
            cutoff = int(time.time() * 1000) - keep_s * 1000
            for row in reversed(commits(ds._log)):
                first = row["version"]
                if row["timestamp"] is not None and row["timestamp"] <= cutoff:
                    break
            states: Iterable[Snapshot] = ds._log.states(first, latest.version)
        else:
            states = [latest]
        keep: set[str] = set()
        for snap in states:
            keep.update(p for f in snap.files for p in f.all_paths)
            keep.update(p for span in snap.spans for p in span.all_paths)
        doomed = sorted(own - keep)
        if not dry_run:
            ds.remove_own(doomed)
    return doomed


def committed_paths(log: Log) -> set[str]:
    """Every data and summary file that a commit the log keeps added (and the state of its
    oldest checkpoint, when older commits are gone): files no running write can still own."""
    out: set[str] = set()
    commits, checkpoints = log.listing()
    if checkpoints and (not commits or commits[0] > 0):
        snap = log.state_at(checkpoints[0])
        out.update(p for f in snap.files for p in f.all_paths)
        out.update(p for span in snap.spans for p in span.all_paths)
    for version in commits:
        name = f"{version:020d}.json"
        try:
            for line in log._read(name).splitlines():
                action = json.loads(line) if line.strip() else {}
                if "add" in action:
                    out.update(log._entry(action["add"]).all_paths)
                meta = action.get("domainMetadata") or {}
                if is_span_domain(meta) and not meta.get("removed"):
                    span = SpanEntry.from_json(json.loads(meta["configuration"]))
                    out.update(span.all_paths)
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise log._damaged(log.where(name), f"an action is odd ({exc})") from exc
    return out


def own_files(root: Path) -> set[str]:
    """The data and summary files under ``root`` that follow the dataset's naming."""
    folders = [p for p in _subdirs(root) if p.name.startswith(PARTITION_PREFIX)]
    rollups = root / SIDECAR_DIR
    if rollups.is_dir() and not rollups.is_symlink():
        folders += _subdirs(rollups)
    out = set()
    for folder in folders:
        if folder.is_symlink():
            continue
        for name in os.listdir(folder):
            rel = (folder / name).relative_to(root).as_posix()
            with contextlib.suppress(CorruptDatasetError):
                check_relative_path(rel, sidecar_ok=True)
                out.add(rel)
    return out


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
    except FileNotFoundError:
        return []


def remove_own(root: Path, paths: list[str]) -> None:
    try:
        remove_files(root, paths)
    except OSError as exc:
        if isinstance(exc, UsageAnalyticsError):
            raise
        raise StorageError(
            exc.errno or errno.EIO,
            f"vacuuming {root} failed ({exc.strerror or exc}); the files removed so far were "
            "no longer needed, and a vacuum run again removes the rest",
        ) from exc
