"""A dataset on disk: the writer lock, reading the manifest, snapshots, reads, and recovery.

Layout of a dataset root::

    _delta_log/                    the commit log: every committed state (see ``log``)
    _usage_analytics.json          a marker naming the log (older datasets: the manifest, which
                                   listed the live files; the first commit moves it to the log)
    _usage_analytics.lock          the writers' advisory lock
    _usage_analytics.journal       present only while a write is in flight (or was interrupted)
    date=YYYY-MM-DD/<hex>.parquet  immutable data files, never modified after they are renamed in
    date=YYYY-MM-DD/.<hex>.parquet.tmp  a data file being written (readers skip dot files)
    _rollups/date=YYYY-MM-DD/<hex>.<kind>.rollup  summary files of one data file ("sidecars")
    _rollups/spans/<hex>.<kind>.rollup  summary files of every data file of a block of days

Summary files and their format are described in ``files``.

A write (a *transaction*) goes through these steps, all under the lock:

1. the journal, naming every file the write adds and removes, is written and fsynced;
2. each new file (data, sidecar, span) is written under a temporary name, fsynced, and renamed
   to its final name (a span staged as a future whose computation failed is not written, and
   those of its files already written are removed: the commit goes on without it);
3. the commit, naming the files added and removed, is linked into the log as the next version,
   only if no such version exists yet: **the commit point**;
4. the files the write removes are unlinked and emptied partition folders removed;
5. the journal is removed.

Recovery, run at the start of the next write (and opportunistically by readers when no writer
holds the lock), reads the journal: when the latest commit carries the journal's transaction id the
write committed and steps 4-5 are finished (roll forward); otherwise the files of step 2 are
removed (roll back). Both are idempotent, so an interrupted recovery is simply run again.

Readers load the latest state (a commit file is linked in whole, so it is never seen in part) and
read exactly the files it lists. Files are immutable, so a file that opens has the contents the
state promised; a file removed by a later commit while a reader was on its way to it raises
``FileNotFoundError``, and :meth:`Dataset.read` starts the read again on the newer state.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final, TypeVar

import filelock
import pyarrow as pa

from ..errors import (
    CorruptDatasetError,
    DatasetNotInitializedError,
    IncompatibleDatasetError,
    InvalidArgumentError,
    LockTimeoutError,
    StorageError,
    UsageAnalyticsError,
)
from .faults import fault
from .files import (
    check_partition_folder,
    fsync_dir,
    remove_files,
    replace_bytes,
    rmdir_if_empty,
    unlink_missing_ok,
    write_parquet,
    write_summary,
)
from .history import own_files, pinned_state, remove_own
from .log import CHECKPOINT_EVERY, COMMIT_TMP, Log
from .manifest import (
    JOURNAL_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    MARKER,
    PARTITION_PREFIX,
    Damaged,
    FileEntry,
    Snapshot,
    check_relative_path,
    json_bytes,
    parse_manifest,
    valid_date,
)
from .reading import FileReader
from .transaction import Transaction

__all__ = ["Dataset"]

_READ_ATTEMPTS: Final = 20

T = TypeVar("T")


class Dataset(FileReader):
    """A date-partitioned Parquet dataset under ``root`` with atomic, serialized writes."""

    def __init__(
        self,
        root: Path,
        *,
        schema_version: int,
        columns_for_version: Callable[[int], Sequence[str]],
        schema_for_version: Callable[[int], pa.Schema],
        fill_values: Mapping[str, pa.Scalar],
        stats_columns: Sequence[str],
        pruned_by: Sequence[str] = (),
        lock_timeout: float,
    ) -> None:
        """Args:
        stats_columns: int columns whose min and max the manifest keeps for each data file.
        pruned_by: the columns readers filter data files by, which files keep in order (by
            time, or by tenant and then time): they, and the stats columns, get Parquet
            statistics (the others' would not prune: they are in no order).
        """
        self.root = root
        self.schema_version = schema_version
        self._columns_for_version = columns_for_version
        self._fill_values = dict(fill_values)
        self._stats_columns = tuple(stats_columns)
        #: The columns data files keep Parquet statistics of.
        self.statistics = tuple(dict.fromkeys((*pruned_by, *stats_columns)))
        self._write_data = functools.partial(write_parquet, statistics=self.statistics)
        self.lock_timeout = lock_timeout
        self._cached: tuple[bytes | None, Snapshot | None] = (None, None)
        self._log = Log(
            root,
            read_bytes=self._read_own_file,
            schema_for_version=schema_for_version,
            max_schema_version=schema_version,
            stats_columns=stats_columns,
        )
        #: Read the state of one commit: its version, or the latest at or before a time in
        #: ms (``Store(root, as_of=...)``); writes are refused.
        self.as_of: tuple[int | None, int | None] | None = None
        self._pinned: Snapshot | None = None

    # -- paths -------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def journal_path(self) -> Path:
        return self.root / JOURNAL_NAME

    def partition_dir(self, date: str) -> Path:
        if not valid_date(date) or len(date) != 10:
            raise ValueError(f"not a partition date: {date!r}")
        return self.root / f"{PARTITION_PREFIX}{date}"

    # -- locking -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, timeout: float | None = None) -> Iterator[None]:
        lock = filelock.FileLock(self.root / LOCK_NAME, thread_local=False)
        wait = self.lock_timeout if timeout is None else timeout
        try:
            lock.acquire(timeout=-1 if math.isinf(wait) else wait)
        except filelock.Timeout as exc:
            raise LockTimeoutError(
                f"another writer held the lock on {self.root} for more than {wait:g} s; "
                "retry later or pass a larger lock_timeout"
            ) from exc
        except OSError as exc:
            raise self._write_refused(exc) from exc
        try:
            yield
        finally:
            lock.release()

    def _write_refused(self, exc: OSError) -> UsageAnalyticsError:
        """Why a write could not start (opening the lock file, creating the root), as the
        error a writer gets."""
        path = self.root / LOCK_NAME
        if exc.errno == errno.EROFS:
            return StorageError(
                exc.errno,
                f"{self.root} is on a read-only filesystem: writes are impossible there (reads "
                "work); write to a copy on a writable filesystem",
            )
        if exc.errno in (errno.EACCES, errno.EPERM):
            return StorageError(
                exc.errno,
                f"no permission to write to {self.root} ({exc.strerror}: {exc.filename}): "
                "writes need write access to the dataset folder; reads work without it",
            )
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return DatasetNotInitializedError(
                f"no usage dataset at {self.root}: call Store({str(self.root)!r}).auto_migrate() "
                "to create it"
            )
        return CorruptDatasetError(
            f"cannot open the lock file {path} ({exc.strerror or exc}); it must be a regular "
            "file inside the dataset root"
        )

    # -- reading the manifest ----------------------------------------------------------------

    def exists(self) -> bool:
        """Whether something is at the manifest's path or a log is there (a link there is
        refused on reading)."""
        return os.path.lexists(self.manifest_path) or self._log.exists()

    def _read_own_file(self, path: Path) -> bytes:
        """The bytes of a file of the dataset itself (manifest, journal), never through a link.

        Raises:
            FileNotFoundError: there is no such file.
        """
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._os_error(path, exc) from exc
        try:
            with os.fdopen(fd, "rb") as fh:
                return fh.read()
        except IsADirectoryError as exc:
            raise CorruptDatasetError(f"{path} is a folder, not a file of this dataset") from exc
        except OSError as exc:
            raise self._os_error(path, exc) from exc

    def _os_error(self, path: Path, exc: OSError) -> UsageAnalyticsError:
        if exc.errno == errno.ELOOP:
            return CorruptDatasetError(
                f"{path} is a symbolic link; the store never reads through links: put the file "
                "itself there"
            )
        if exc.errno == errno.ENOTDIR:
            return InvalidArgumentError(
                f"the dataset root {self.root} is not a folder (it, or a folder above it, is a "
                "file): give the dataset's folder"
            )
        if exc.errno in (errno.EACCES, errno.EPERM):
            return StorageError(
                exc.errno,
                f"no permission to read {path}: reading a dataset needs read access to its files",
            )
        return StorageError(exc.errno or errno.EIO, f"cannot read {path} ({exc.strerror or exc})")

    def read_error(self, exc: OSError | pa.ArrowException) -> UsageAnalyticsError:
        """A failure to read the dataset's files as the error a caller gets. pyarrow reports
        a file it cannot decode as an ``ArrowException``, or as an ``OSError`` without an
        errno; the operating system's errors carry one."""
        if isinstance(exc, UsageAnalyticsError):
            return exc
        if isinstance(exc, OSError) and exc.errno is not None:
            return self._os_error(Path(exc.filename or self.root), exc)
        detail = " ".join(str(exc).split())  # pyarrow's messages may span lines
        return CorruptDatasetError(
            f"a file of the dataset at {self.root} cannot be read ({detail}); restore it from "
            "a backup"
        )

    def _load_manifest(self) -> Snapshot:
        if self._log.exists():
            return self._log.load()
        try:
            data = self._read_own_file(self.manifest_path)
        except FileNotFoundError:
            raise DatasetNotInitializedError(
                f"no usage dataset at {self.root}: call Store({str(self.root)!r}).auto_migrate() "
                "to create it"
            ) from None
        if data == self._cached[0]:
            # The same bytes as last time: the same committed state, already parsed.
            return self._cached[1]  # type: ignore[return-value]
        snap = parse_manifest(data, self.manifest_path, self.schema_version, self._stats_columns)
        self._cached = (data, snap)
        return snap

    def snapshot(self) -> Snapshot:
        """The latest committed state.

        The manifest is always a committed state, also while a write is in flight or after one
        was interrupted (before its commit point the manifest is the state before it; after,
        the state it made). A reader that can take the lock finishes an interrupted write;
        one that cannot (another writer holds it, the reader may not write, or the filesystem
        is read-only) reads the manifest as it is.
        """
        if self.as_of is not None:
            if self._pinned is None:
                if not self._log.exists():
                    self._load_manifest()  # no dataset at all says so; one without a log below
                self._pinned = pinned_state(self._log, *self.as_of)
            return self._pinned
        snap = self._load_manifest()
        if self.journal_path.exists() or self._journal_tmp.exists():
            with contextlib.suppress(UsageAnalyticsError, OSError), self._locked(timeout=0):
                self._recover()
            snap = self._load_manifest()
        return snap

    def read(self, fn: Callable[[Snapshot], T]) -> T:
        """Run ``fn`` on a snapshot, again on a newer one if a file vanished under it."""
        for _ in range(_READ_ATTEMPTS):
            snap = self.snapshot()
            try:
                return fn(snap)
            except FileNotFoundError as exc:
                if (error := self.missing(snap, exc)) is not None:
                    raise error from exc
            except (OSError, pa.ArrowException) as exc:
                raise self.read_error(exc) from exc
        raise CorruptDatasetError("the dataset kept changing under the reader; try again")

    def missing(self, snap: Snapshot, exc: OSError) -> CorruptDatasetError | None:
        """The error of a file of ``snap`` that is gone; None when a later commit replaced
        ``snap`` (read the newer state)."""
        if self.as_of is None and self._load_manifest().version != snap.version:
            return None
        if self.as_of is None:
            return CorruptDatasetError(
                f"a file listed by the latest commit is missing: {exc.filename or exc}; "
                "restore it from a backup"
            )
        return CorruptDatasetError(
            f"version {snap.version} lists {exc.filename or exc}, which is gone: the files a "
            f"commit removes stay only for the dataset's history retention ({snap.retention:,} "
            "s; see set_history_retention, or 'usage-analytics history --keep') and until a "
            "vacuum; read a later version"
        )

    def location(self, entry: FileEntry) -> str:
        """Where another engine finds a data file: its path (a URL on object storage)."""
        return str(self.path_of(entry))

    def live_paths(self) -> list[str]:
        """Every file of the latest commit (data and summary files), relative to the root."""
        snap = self.snapshot()
        paths = [p for f in snap.files for p in f.all_paths]
        return sorted(paths + [p for sp in snap.spans for p in sp.all_paths])

    # -- writing -----------------------------------------------------------------------------

    def create(self, rewrite: Callable[[Transaction], object] | None = None) -> bool:
        """Create the dataset, or check the one there; True when something was created or
        upgraded. An upgrade to the current schema version is one commit, in which
        ``rewrite`` stages what it rewrites (the files of the older version)."""
        self._refuse_pinned()
        if self.exists() and self.snapshot().schema_version == self.schema_version:
            return False  # also refuses unknown versions before anything is written
        if self.root.exists() and not self.root.is_dir():
            raise InvalidArgumentError(
                f"the dataset root {self.root} is a file, not a folder: give a folder"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError) as exc:
            raise InvalidArgumentError(
                f"cannot create the dataset folder {self.root}: a file is in the way ({exc})"
            ) from exc
        except OSError as exc:
            raise self._write_refused(exc) from exc
        with self._locked():
            self._recover()
            if not self.exists():
                snap = Snapshot.first(self.schema_version)
                try:
                    self.commit(None, snap, operation="CREATE TABLE")
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        unlink_missing_ok(self.root / COMMIT_TMP)
                        unlink_missing_ok(self.root / ("." + MANIFEST_NAME + ".tmp"))
                    raise StorageError(
                        exc.errno or errno.EIO,
                        f"creating the dataset at {self.root} failed ({exc.strerror or exc}); "
                        "nothing was created",
                    ) from exc
                return True
            snap = self._load_manifest()
            if snap.schema_version == self.schema_version:
                return False
        with self.transaction(upgrade=True) as tx:
            tx.schema_version = self.schema_version
            if rewrite is not None:
                rewrite(tx)
            tx.commit()
        return True

    def commit(self, base: Snapshot | None, new: Snapshot, *, operation: str) -> Snapshot:
        """Commit ``new`` as the state after ``base`` (None: the dataset is being created).
        Call with the lock held; returns the state as committed."""
        moved = not self._log.exists()  # created, or moved from its manifest to the log
        snap = self._log.commit(None if moved else base, new, operation=operation)
        if moved:  # past the commit point: the log wins whatever the manifest holds
            with contextlib.suppress(OSError):
                replace_bytes(self.manifest_path, json_bytes(MARKER), "marker_tmp_written")
        return snap

    def after_commit(self, snap: Snapshot) -> None:
        """Work a commit leaves for after its cleanup: a checkpoint every so many commits."""
        if snap.version and snap.version % CHECKPOINT_EVERY == 0:
            with contextlib.suppress(OSError, pa.ArrowException):
                self._log.checkpoint(snap)

    @property
    def _journal_tmp(self) -> Path:
        return self.root / ("." + JOURNAL_NAME + ".tmp")

    # -- the files of a write (on object storage, see ``objects``) -----------------------------

    @property
    def where(self) -> str:
        """The dataset root, as messages name it."""
        return str(self.root)

    def check_folders(self, paths: Iterable[str]) -> None:
        """Refuse to write into, or remove from, a partition that is a link or not a folder."""
        for rel in paths:
            for folder in check_relative_path(rel, sidecar_ok=True):
                check_partition_folder(self.root / folder)

    def begin_write(self, txid: str, adds: list[str], removes: list[str]) -> None:
        """Name the files a write adds and removes in the journal, before it writes any."""
        journal = {"txid": txid, "adds": adds, "removes": removes}
        replace_bytes(self.journal_path, json_bytes(journal), "journal_tmp_written")

    def write_file(
        self, rel: str, table: pa.Table, kind: str, dirs: set[Path], new_dirs: set[Path]
    ) -> None:
        """Write a new file of ``kind`` ("data" or "summary") under a temporary name, then
        rename it; adds the folders to fsync to ``dirs`` and those it created to
        ``new_dirs``."""
        final = self.root / rel
        for folder in check_relative_path(rel, sidecar_ok=True):
            path = self.root / folder
            check_partition_folder(path)
            if not path.exists():
                path.mkdir()
                new_dirs.add(path)
        dirs.add(final.parent)
        tmp = final.with_name("." + final.name + ".tmp")
        (self._write_data if kind == "data" else write_summary)(table, tmp)
        fault("data_tmp_written")
        os.replace(tmp, final)
        fault("data_renamed")

    def sync_folders(self, dirs: Iterable[Path]) -> None:
        for folder in dirs:
            fsync_dir(folder)

    def discard_files(self, paths: Sequence[str]) -> None:
        """Remove files written for a commit that leaves them out."""
        for rel in paths:
            unlink_missing_ok(self.root / rel)
        for folder in {(self.root / rel).parent for rel in paths}:
            with contextlib.suppress(FileNotFoundError):  # none may have been written
                fsync_dir(folder)

    def commit_write(
        self, tx: Transaction, new: Snapshot, removes: list[str]
    ) -> tuple[Snapshot, list[str]]:
        """Commit a transaction's state; returns it as committed and the files to remove."""
        return self.commit(tx.base, new, operation=tx.operation), removes

    def finish_write(self, removes: Iterable[str]) -> None:
        """After the commit point: remove the files the write removed, then the journal."""
        remove_files(self.root, removes, each=lambda: fault("file_removed"))
        fault("cleanup_done")
        self.journal_path.unlink()
        fsync_dir(self.root)

    def undo_write(self, written: Sequence[str]) -> None:
        """Remove what a write that will not commit wrote (here: by the journal)."""
        self._recover()

    def own_files(self) -> set[str]:
        """The data and summary files under the root that follow the dataset's naming."""
        return own_files(self.root)

    def remove_own(self, paths: list[str]) -> None:
        """Remove files :meth:`own_files` found that no retained version lists."""
        remove_own(self.root, paths)

    def reserve_ids(self, next_id: int, n: int) -> int:
        """Reserve ``n`` row ids from ``next_id`` on (under the lock nobody else can)."""
        return next_id

    @contextlib.contextmanager
    def transaction(
        self, *, upgrade: bool = False, timeout: float | None = None
    ) -> Iterator[Transaction]:
        """Hold the writer lock, recover any interrupted write, and yield a transaction.

        Writes need the dataset at the current schema version; reads do not. ``timeout``
        overrides the dataset's lock timeout.
        """
        self._refuse_pinned()
        self._check_writable(self._load_manifest(), upgrade)  # fail early, before the lock
        with self._locked(timeout):
            self._recover()
            base = self._load_manifest()
            self._check_writable(base, upgrade)
            # Under the lock no other writer removes files: a listed file that is gone was
            # removed from outside.
            with self._running(Transaction(self, base), "restore it from a backup") as tx:
                yield tx

    @contextlib.contextmanager
    def _running(self, tx: Transaction, if_missing: str) -> Iterator[Transaction]:
        """Run ``tx``: abandon what it wrote ahead of a commit that never came (if that
        fails, what it leaves is removed later), and name the errors it meets."""
        try:
            try:
                yield tx
            finally:
                with contextlib.suppress(Exception):
                    tx.abandon()
        except FileNotFoundError as exc:
            raise CorruptDatasetError(
                f"a file listed by the latest commit of {self.where} is missing: "
                f"{exc.filename or exc}; {if_missing}"
            ) from exc
        except (OSError, pa.ArrowException) as exc:
            if isinstance(exc, UsageAnalyticsError):
                raise
            raise self.read_error(exc) from exc

    def _refuse_pinned(self) -> None:
        if self.as_of is not None:
            raise InvalidArgumentError(
                f"this Store reads {self.root} as of an older commit, which cannot change: "
                "write through a Store without as_of"
            )

    def _check_writable(self, snap: Snapshot, upgrade: bool) -> None:
        if snap.schema_version != self.schema_version and not upgrade:
            raise IncompatibleDatasetError(
                f"the dataset at {self.root} has schema version {snap.schema_version}; "
                f"call auto_migrate() to upgrade it to version {self.schema_version} "
                "before writing (reads work as it is)"
            )

    def _read_journal(self) -> tuple[str, list[str], list[str]]:
        """The journal's transaction id and the files it adds and removes.

        Raises:
            FileNotFoundError: there is no journal.
            CorruptDatasetError: the journal is damaged (a journal is only ever renamed in
                whole, so this is damage from outside).
        """
        data = self._read_own_file(self.journal_path)
        try:
            journal = json.loads(data)
            if not isinstance(journal, dict):
                raise Damaged(f"it holds a JSON {type(journal).__name__}, not an object")
            txid, adds, removes = journal.get("txid"), journal.get("adds"), journal.get("removes")
            if not isinstance(txid, str):
                raise Damaged(f"it has no text 'txid' (found {txid!r})")
            for name, paths in (("adds", adds), ("removes", removes)):
                if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                    raise Damaged(f"its {name!r} is not a list of paths (found {paths!r})")
        except (ValueError, UnicodeDecodeError, Damaged) as exc:
            raise CorruptDatasetError(
                f"the journal {self.journal_path} is damaged ({exc}); the committed state is "
                "intact and reads work: remove the journal to let writes go on (files of the "
                "interrupted write may stay behind, unused)"
            ) from None
        return txid, list(adds or ()), list(removes or ())

    def _recover(self) -> None:
        """Finish or undo an interrupted write. Call with the lock held. Idempotent."""
        unlink_missing_ok(self._journal_tmp)
        unlink_missing_ok(self.root / ("." + MANIFEST_NAME + ".tmp"))
        unlink_missing_ok(self.root / COMMIT_TMP)
        try:
            txid, adds, removes = self._read_journal()
        except FileNotFoundError:
            return
        state = self._load_manifest()
        committed = state.txid == txid
        if committed and state.retention:
            removes = []  # kept for the older versions, until a vacuum
        touched: set[str] = set()
        for rel in adds + removes:
            touched.update(check_relative_path(rel, sidecar_ok=True))
        for folder in sorted(touched):
            check_partition_folder(self.root / folder)
        for rel in removes if committed else adds:
            path = self.root / rel
            removed = unlink_missing_ok(path)
            removed = unlink_missing_ok(path.with_name("." + path.name + ".tmp")) or removed
            if removed:
                fault("recovery_file_removed")
        for folder in sorted(touched, reverse=True):  # sub-folders before their parent
            rmdir_if_empty(self.root / folder)
        fsync_dir(self.root)
        self.journal_path.unlink()
        fsync_dir(self.root)
        fault("recovery_done")
