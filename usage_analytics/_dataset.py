"""The storage layer: partition paths, the manifest, atomic commits, the writer lock, recovery.

Nothing else in the package touches the disk. This module knows files, dates and row statistics;
it knows nothing of tenants, methods or what a usage row means.

Layout of a dataset root::

    _usage_analytics.json          the manifest: format, schema version, live files (commit point)
    _usage_analytics.lock          the writers' advisory lock
    _usage_analytics.journal       present only while a write is in flight (or was interrupted)
    date=YYYY-MM-DD/<hex>.parquet  immutable data files, never modified after they are renamed in
    date=YYYY-MM-DD/.<hex>.parquet.tmp  a data file being written (readers skip dot files)
    _rollups/date=YYYY-MM-DD/<hex>.<kind>.rollup  summary files of one data file ("sidecars")
    _rollups/spans/<hex>.<kind>.rollup  summary files of every data file of a block of days

Summary files are Arrow IPC files, not Parquet, because reading one costs a fraction of a
millisecond: a table sorted by its first column (the tenant) is stored in record batches that
each hold one value of that column, or several values with few rows, and the schema metadata
lists the first and last value of each batch, so a reader that wants one value reads only the
batches that can hold it. Their buffers are not compressed (per-buffer compression costs more
than it saves on such small batches); instead strings are dictionary-encoded, one dictionary
per file, and integers stored in the narrowest type that holds them. Readers get strings as
``SUMMARY_TEXT`` dictionaries, also from files of older versions (lz4 IPC, or Parquet before
0.2), and integers as stored, one table per file.

A write (a *transaction*) goes through these steps, all under the lock:

1. the journal, naming every file the write adds and removes, is written and fsynced;
2. each new file (data, sidecar, span) is written under a temporary name, fsynced, and renamed
   to its final name (a span staged as a future whose computation failed is not written, and
   those of its files already written are removed: the commit goes on without it);
3. the manifest is replaced by a new one that lists the new set of files: **the commit point**;
4. the files the write removes are unlinked and emptied partition folders removed;
5. the journal is removed.

Recovery, run at the start of the next write (and opportunistically by readers when no writer
holds the lock), reads the journal: when the manifest carries the journal's transaction id the
write committed and steps 4-5 are finished (roll forward); otherwise the files of step 2 are
removed (roll back). Both are idempotent, so an interrupted recovery is simply run again.

Readers load the manifest (always whole: it is replaced atomically) and read exactly the files it
lists. Files are immutable, so a file that opens has the contents the manifest promised; a file
removed by a later commit while a reader was on its way to it raises ``FileNotFoundError``, and
:meth:`Dataset.read` starts the read again on the newer manifest.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import errno
import functools
import json
import math
import os
import re
import signal
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeGuard, TypeVar

import filelock
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from .errors import (
    CorruptDatasetError,
    DatasetNotInitializedError,
    IncompatibleDatasetError,
    InvalidArgumentError,
    LockTimeoutError,
    StorageError,
    UsageAnalyticsError,
)

__all__ = ["Dataset", "FileEntry", "Snapshot", "Transaction"]

FORMAT_NAME: Final = "usage_analytics"
FORMAT_VERSION: Final = 1
MANIFEST_NAME: Final = "_usage_analytics.json"
LOCK_NAME: Final = "_usage_analytics.lock"
JOURNAL_NAME: Final = "_usage_analytics.journal"
PARTITION_PREFIX: Final = "date="

_PARTITION_RE: Final = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
_DATA_FILE_RE: Final = re.compile(r"[0-9a-f]{32}\.parquet")
_SIDECAR_FILE_RE: Final = re.compile(r"[0-9a-f]{32}\.[a-z]+\.rollup")
_SIDECAR_KIND_RE: Final = re.compile(r"[a-z]+")
#: Summary files kept beside the data files; hidden from engines that read the folder (the
#: underscore makes hive-partitioned readers skip it, and nothing in it ends in .parquet).
SIDECAR_DIR: Final = "_rollups"
SPAN_DIR: Final = "_rollups/spans"
_SPAN_FILE_RE: Final = re.compile(r"[0-9a-f]{32}\.[a-z]+\.rollup")
_READ_ATTEMPTS: Final = 20
#: The last day an int64 nanosecond timestamp reaches (2262-04-11).
_MAX_DAY: Final = (2**63 - 1) // (86_400 * 10**9)
# Data files are in time order, or sorted by tenant then time: row groups this small let a
# time filter, or a tenant filter, skip most of a file through its statistics.
DATA_ROW_GROUP: Final = 32 * 1024
#: Schema metadata key of a summary file: the JSON list of the first and last first-column
#: value of each of its record batches.
SUMMARY_INDEX_KEY: Final = b"usage_analytics.index"
SUMMARY_BATCH_ROWS: Final = 512
#: How summary tables hold strings, in memory and (with one dictionary per file) on disk.
SUMMARY_TEXT: Final = pa.dictionary(pa.int32(), pa.string())

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Fault points. Tests arm them to prove that an interruption at any step of a write is recovered:
# the environment variable kills the process (SIGKILL) at the named point, and ``FAULT_HOOK`` lets
# an in-process test raise an I/O error there.

FAULT_ENV: Final = "USAGE_ANALYTICS_KILL_AT"
FAULT_HOOK: Callable[[str], None] | None = None
_fault_counts: dict[str, int] = {}
_fault_lock = threading.Lock()  # commits reach fault points from two threads


def _fault(point: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if spec:
        name, _, nth = spec.partition(":")
        if name == point:
            with _fault_lock:
                _fault_counts[point] = _fault_counts.get(point, 0) + 1
                reached = _fault_counts[point] >= int(nth or 1)
            if reached:
                os.kill(os.getpid(), signal.SIGKILL)
    if FAULT_HOOK is not None:
        FAULT_HOOK(point)


#: Every fault point, in the order a write or a recovery reaches them.
FAULT_POINTS: Final = (
    "journal_tmp_written",
    "journal_written",
    "data_tmp_written",
    "data_renamed",
    "manifest_tmp_written",
    "committed",
    "file_removed",
    "cleanup_done",
    "recovery_file_removed",
    "recovery_done",
)

# ---------------------------------------------------------------------------------------------
# Small durable-file helpers.


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _replace_bytes(path: Path, data: bytes, tmp_point: str) -> bytes:
    """Write ``data`` to ``path`` atomically (a temporary file, fsync, rename, fsync of the
    folder); returns ``data``."""
    tmp = path.with_name("." + path.name + ".tmp")
    _write_bytes_durably(tmp, data)
    _fault(tmp_point)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return data


def _json_bytes(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _unlink_missing_ok(path: Path) -> bool:
    try:
        path.unlink()
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _check_partition_folder(part: Path) -> None:
    """Refuse to write into, or remove from, a partition that is a link or not a folder."""
    if part.is_symlink() or (part.exists() and not part.is_dir()):
        raise CorruptDatasetError(
            f"{part} is not a folder of this dataset (a symbolic link or a file); the store does "
            "not write or delete through it: move it out of the dataset root"
        )


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()


# ---------------------------------------------------------------------------------------------
# The manifest.


@dataclass(frozen=True)
class FileEntry:
    """One live data file: where it is and what its rows span."""

    path: str  # relative to the root: "date=YYYY-MM-DD/<hex>.parquet"
    rows: int
    schema_version: int
    stats: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    sidecars: tuple[str, ...] = ()  # kinds of summary file written with it

    @property
    def date(self) -> str:
        return self.path[len(PARTITION_PREFIX) : len(PARTITION_PREFIX) + 10]

    @property
    def day(self) -> int:
        """The partition's day, numbered from the Unix epoch."""
        return day_number(self.date)

    def sidecar_path(self, kind: str) -> str:
        """Where the ``kind`` summary of this file lives, relative to the root."""
        part, name = self.path.split("/")
        return f"{SIDECAR_DIR}/{part}/{name[: -len('.parquet')]}.{kind}.rollup"

    @property
    def all_paths(self) -> list[str]:
        """The data file and its summary files."""
        return [self.path, *(self.sidecar_path(k) for k in self.sidecars)]

    def min(self, column: str) -> int:
        return self.stats[column][0]

    def max(self, column: str) -> int:
        return self.stats[column][1]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "rows": self.rows,
            "schema_version": self.schema_version,
            "stats": {k: list(v) for k, v in self.stats.items()},
        }
        if self.sidecars:
            out["sidecars"] = list(self.sidecars)
        return out

    @functools.cached_property
    def json_bytes(self) -> bytes:
        """The entry as it appears in the manifest (kept: a manifest is mostly old entries)."""
        return _json_bytes(self.to_json())

    @classmethod
    def from_json(
        cls, raw: Any, *, max_schema_version: int, stats_columns: Sequence[str] = ()
    ) -> FileEntry:
        """An entry of the manifest, checked field by field (``CorruptDatasetError`` names the
        first field that is missing or wrong)."""
        if not isinstance(raw, dict):
            raise _Damaged(f"a file entry is {type(raw).__name__}, not an object")
        path = raw.get("path")
        if not isinstance(path, str):
            raise _Damaged(f"a file entry has no path ({raw!r})")
        _check_relative_path(path)
        rows = _int_field(raw, "rows", path)
        version = _int_field(raw, "schema_version", path)
        if rows < 0:
            raise _Damaged(f"{path} has {rows} rows")
        if not 1 <= version <= max_schema_version:
            raise _Damaged(
                f"{path} has schema version {version}; this usage_analytics knows versions 1 "
                f"to {max_schema_version}"
            )
        raw_stats = raw.get("stats", {})
        if not isinstance(raw_stats, dict):
            raise _Damaged(f"the stats of {path} are not an object")
        stats: dict[str, tuple[int, int]] = {}
        for name, bounds in raw_stats.items():
            if (
                not isinstance(bounds, list)
                or len(bounds) != 2
                or not all(_is_int(v) for v in bounds)
                or bounds[0] > bounds[1]
            ):
                raise _Damaged(f"the {name!r} stats of {path} are not [min, max] ({bounds!r})")
            stats[str(name)] = (bounds[0], bounds[1])
        missing = [c for c in stats_columns if c not in stats]
        if missing:
            raise _Damaged(f"{path} has no {', '.join(map(repr, missing))} stats")
        sidecars = raw.get("sidecars", [])
        if not isinstance(sidecars, list) or not all(
            isinstance(k, str) and _SIDECAR_KIND_RE.fullmatch(k) for k in sidecars
        ):
            raise _Damaged(f"{path} lists odd summary kinds {sidecars!r}")
        return cls(path, rows, version, stats, tuple(sidecars))


class _Damaged(Exception):
    """What is wrong with a manifest or journal; the reader turns it into a
    ``CorruptDatasetError`` that names the file."""


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(raw: Mapping[str, Any], name: str, what: str) -> int:
    value = raw.get(name)
    if not _is_int(value):
        raise _Damaged(f"{what} has no integer {name!r} (found {value!r})")
    return int(value)


def _check_relative_path(path: str, *, sidecar_ok: bool = False) -> list[str]:
    """Check a path the manifest or journal names; returns its folders, outermost first."""
    parts = path.split("/")
    if sidecar_ok and path.startswith(SPAN_DIR + "/") and len(parts) == 3:
        if not _SPAN_FILE_RE.fullmatch(parts[2]):
            raise CorruptDatasetError(f"the dataset lists {path!r}, which is not a span path")
        return [SIDECAR_DIR, SPAN_DIR]
    is_sidecar = sidecar_ok and len(parts) == 3 and parts[0] == SIDECAR_DIR
    if is_sidecar:
        folders = [SIDECAR_DIR, f"{SIDECAR_DIR}/{parts[1]}"]
    elif len(parts) == 2:
        folders = [parts[0]]
    else:
        folders = []
    part, name = (parts[-2], parts[-1]) if folders else ("", "")
    name_re = _SIDECAR_FILE_RE if is_sidecar else _DATA_FILE_RE
    if (
        not folders
        or not _PARTITION_RE.fullmatch(part)
        or not name_re.fullmatch(name)
        or not _valid_date(part[len(PARTITION_PREFIX) :])
    ):
        raise CorruptDatasetError(
            f"the dataset lists {path!r}, which is not a file path of this format "
            "(date=YYYY-MM-DD/<hex>.parquet); the manifest or journal was edited or damaged"
        )
    return folders


def _valid_date(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SpanEntry:
    """Summary files covering every data file of the days ``first_day..last_day``.

    Days are numbered from the Unix epoch. A span is dropped by any commit that adds or removes
    a data file in its days, so while it is listed it summarizes exactly those days' files.
    """

    name: str  # hex
    first_day: int
    last_day: int
    kinds: tuple[str, ...]

    def path(self, kind: str) -> str:
        return f"{SPAN_DIR}/{self.name}.{kind}.rollup"

    @property
    def all_paths(self) -> list[str]:
        return [self.path(k) for k in self.kinds]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "first_day": self.first_day,
            "last_day": self.last_day,
            "kinds": list(self.kinds),
        }

    @classmethod
    def from_json(cls, raw: Any) -> SpanEntry:
        if not isinstance(raw, dict):
            raise _Damaged(f"a span entry is {type(raw).__name__}, not an object")
        name, kinds = raw.get("name"), raw.get("kinds")
        if (
            not isinstance(name, str)
            or not re.fullmatch(r"[0-9a-f]{32}", name)
            or not isinstance(kinds, list)
            or not all(isinstance(k, str) and _SIDECAR_KIND_RE.fullmatch(k) for k in kinds)
        ):
            raise _Damaged(f"an odd span entry {raw!r}")
        first, last = _int_field(raw, "first_day", "a span"), _int_field(raw, "last_day", "a span")
        if not 0 <= first <= last <= _MAX_DAY:
            raise _Damaged(f"a span of days {first}..{last}")
        return cls(name, first, last, tuple(kinds))


def day_number(date: str) -> int:
    """Days since the Unix epoch of a partition date."""
    return (dt.date.fromisoformat(date) - dt.date(1970, 1, 1)).days


@dataclass(frozen=True)
class Snapshot:
    """One committed state of the dataset."""

    version: int
    txid: str
    schema_version: int
    next_id: int
    files: tuple[FileEntry, ...]
    spans: tuple[SpanEntry, ...] = ()

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def dates(self) -> list[str]:
        return sorted({f.date for f in self.files})

    def by_date(self) -> dict[str, list[FileEntry]]:
        """The files per partition date, dates ascending (do not modify the lists)."""
        return self._by_date

    @functools.cached_property
    def _by_date(self) -> dict[str, list[FileEntry]]:
        out: dict[str, list[FileEntry]] = {}
        for f in self.files:
            out.setdefault(f.date, []).append(f)
        return dict(sorted(out.items()))

    def to_bytes(self) -> bytes:
        """The manifest's JSON text."""
        header = _json_bytes(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "schema_version": self.schema_version,
                "version": self.version,
                "txid": self.txid,
                "next_id": self.next_id,
            }
        )
        spans = b",".join(_json_bytes(sp.to_json()) for sp in self.spans)
        files = b",".join(f.json_bytes for f in self.files)
        return header[:-1] + b',"spans":[' + spans + b'],"files":[' + files + b"]}"

    @classmethod
    def from_json(
        cls, raw: Mapping[str, Any], max_schema_version: int, stats_columns: Sequence[str] = ()
    ) -> Snapshot:
        """A manifest's state; raises ``_Damaged`` for a missing or wrong field."""
        if raw.get("format") != FORMAT_NAME:
            raise IncompatibleDatasetError(
                f"the manifest names format {raw.get('format')!r}, not {FORMAT_NAME!r}"
            )
        fmt = raw.get("format_version")
        if not _is_int(fmt) or fmt > FORMAT_VERSION or fmt < 1:
            raise IncompatibleDatasetError(
                f"the dataset has format version {fmt!r}; this usage_analytics reads format "
                f"version {FORMAT_VERSION}: upgrade usage_analytics"
            )
        schema_version = raw.get("schema_version")
        if not _is_int(schema_version) or not 1 <= schema_version <= max_schema_version:
            raise IncompatibleDatasetError(
                f"the dataset has schema version {schema_version!r}; this usage_analytics knows "
                f"versions 1 to {max_schema_version}: upgrade usage_analytics"
            )
        files, spans = raw.get("files"), raw.get("spans", [])
        if not isinstance(files, list) or not isinstance(spans, list):
            raise _Damaged("its 'files' or 'spans' is not a list")
        txid = raw.get("txid")
        if not isinstance(txid, str):
            raise _Damaged(f"it has no text 'txid' (found {txid!r})")
        return cls(
            version=_int_field(raw, "version", "it"),
            txid=txid,
            schema_version=schema_version,
            next_id=_int_field(raw, "next_id", "it"),
            files=tuple(
                FileEntry.from_json(
                    f, max_schema_version=max_schema_version, stats_columns=stats_columns
                )
                for f in files
            ),
            spans=tuple(SpanEntry.from_json(sp) for sp in spans),
        )


# ---------------------------------------------------------------------------------------------
# The dataset.


class Dataset:
    """A date-partitioned Parquet dataset under ``root`` with atomic, serialized writes."""

    def __init__(
        self,
        root: Path,
        *,
        schema_version: int,
        columns_for_version: Callable[[int], Sequence[str]],
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
        self._write_data = functools.partial(
            _write_parquet, statistics=tuple(dict.fromkeys((*pruned_by, *stats_columns)))
        )
        self.lock_timeout = lock_timeout
        self._cached: tuple[bytes | None, Snapshot | None] = (None, None)

    # -- paths -------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def journal_path(self) -> Path:
        return self.root / JOURNAL_NAME

    def partition_dir(self, date: str) -> Path:
        if not _valid_date(date) or len(date) != 10:
            raise ValueError(f"not a partition date: {date!r}")
        return self.root / f"{PARTITION_PREFIX}{date}"

    def path_of(self, entry: FileEntry) -> Path:
        return self.root / entry.path

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
        """Whether something is at the manifest's path (a link there is refused on reading)."""
        return os.path.lexists(self.manifest_path)

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
            raise self._read_error(path, exc) from exc
        try:
            with os.fdopen(fd, "rb") as fh:
                return fh.read()
        except IsADirectoryError as exc:
            raise CorruptDatasetError(f"{path} is a folder, not a file of this dataset") from exc
        except OSError as exc:
            raise self._read_error(path, exc) from exc

    def _read_error(self, path: Path, exc: OSError) -> UsageAnalyticsError:
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

    def _unreadable(self, exc: OSError | pa.ArrowException) -> UsageAnalyticsError:
        """A failure to read the dataset's files as the error a caller gets. pyarrow reports
        a file it cannot decode as an ``ArrowException``, or as an ``OSError`` without an
        errno; the operating system's errors carry one."""
        if isinstance(exc, UsageAnalyticsError):
            return exc
        if isinstance(exc, OSError) and exc.errno is not None:
            return self._read_error(Path(exc.filename or self.root), exc)
        return CorruptDatasetError(
            f"a file of the dataset at {self.root} cannot be read ({exc}); restore it from a backup"
        )

    def _load_manifest(self) -> Snapshot:
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
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptDatasetError(f"{self.manifest_path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise CorruptDatasetError(f"{self.manifest_path} does not hold a JSON object")
        try:
            snap = Snapshot.from_json(raw, self.schema_version, self._stats_columns)
        except _Damaged as exc:
            raise CorruptDatasetError(
                f"{self.manifest_path} is damaged: {exc}; restore it from a backup"
            ) from None
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
                if self._load_manifest().version == snap.version:
                    raise CorruptDatasetError(
                        f"a file listed by the manifest is missing: {exc.filename}"
                    ) from exc
            except (OSError, pa.ArrowException) as exc:
                raise self._unreadable(exc) from exc
        raise CorruptDatasetError("the dataset kept changing under the reader; try again")

    def read_file(
        self,
        entry: FileEntry,
        columns: Sequence[str],
        filter: pc.Expression | None = None,
        *,
        dictionary: Sequence[str] = (),
    ) -> pa.Table:
        """Read ``columns`` of one data file, filling columns it predates with their defaults."""
        path = self._checked_path(entry)
        present = set(self._columns_for_version(entry.schema_version))
        wanted = [c for c in columns if c in present]
        missing = [c for c in columns if c not in present]
        if filter is not None and missing:
            # A filter on a column the file predates would fail; such filters are evaluated
            # after filling in the defaults.
            table = pq.read_table(path, columns=wanted, read_dictionary=dictionary or None)
            return self._fill(table, columns).filter(filter)
        table = pq.read_table(
            path, columns=wanted, filters=filter, read_dictionary=dictionary or None
        )
        return self._fill(table, columns)

    def scan(
        self,
        entries: Sequence[FileEntry],
        columns: Sequence[str],
        filter: pc.Expression,
        *,
        dictionary: Sequence[str] = (),
        chunk_rows: int = 1 << 20,
    ) -> Iterator[pa.Table]:
        """Stream the filtered ``columns`` of many data files, in tables of about
        ``chunk_rows`` rows, so that memory stays bounded whatever the number of files.

        The filter may only name columns every schema version has.
        """
        by_version: dict[int, list[FileEntry]] = {}
        for entry in entries:
            by_version.setdefault(entry.schema_version, []).append(entry)
        for version, group in sorted(by_version.items()):
            present = set(self._columns_for_version(version))
            wanted = [c for c in columns if c in present]
            paths = [str(self._checked_path(e)) for e in group]
            fmt = pads.ParquetFileFormat(
                read_options=pads.ParquetReadOptions(
                    dictionary_columns=[c for c in dictionary if c in present]
                )
            )
            batches: list[pa.RecordBatch] = []
            rows = 0
            for batch in pads.dataset(paths, format=fmt).to_batches(columns=wanted, filter=filter):
                if batch.num_rows:
                    batches.append(batch)
                    rows += batch.num_rows
                if rows >= chunk_rows:
                    yield self._fill(pa.Table.from_batches(batches), columns)
                    batches, rows = [], 0
            if batches:
                yield self._fill(pa.Table.from_batches(batches), columns)

    def _fill(self, table: pa.Table, columns: Sequence[str]) -> pa.Table:
        """``table`` with the columns it predates added as their defaults, in order."""
        for name in columns:
            if name not in table.column_names:
                table = table.append_column(
                    name, pa.repeat(self._fill_values[name], table.num_rows)
                )
        return table.select(list(columns))

    def _checked_path(self, entry: FileEntry) -> Path:
        path = self.path_of(entry)
        if path.is_symlink() or path.parent.is_symlink():
            raise CorruptDatasetError(f"{path} is a symbolic link; the store does not follow links")
        return path

    def live_paths(self) -> list[str]:
        """Every file of the latest commit (data and summary files), relative to the root."""
        snap = self.snapshot()
        paths = [p for f in snap.files for p in f.all_paths]
        return sorted(paths + [p for sp in snap.spans for p in sp.all_paths])

    def read_sidecars(
        self, entries: Sequence[FileEntry], kind: str, first: str | None = None
    ) -> list[pa.Table]:
        """The ``kind`` summary files of ``entries``, one table each; with ``first``, only the
        rows whose first column equals it."""
        for entry in entries:
            if (self.root / entry.path.split("/")[0]).is_symlink():
                raise CorruptDatasetError(
                    f"{self.root / entry.path} is in a linked folder; the store does not follow "
                    "links"
                )
        return self.read_summaries([e.sidecar_path(kind) for e in entries], first)

    def read_summaries(self, paths: Sequence[str], first: str | None = None) -> list[pa.Table]:
        """Summary files (rollups of data files or of spans) by relative path, one table each
        (their integer columns may differ in width); with ``first``, only the rows whose first
        column equals it."""
        checked = []
        for rel in paths:
            for folder in _check_relative_path(rel, sidecar_ok=True):
                if (self.root / folder).is_symlink():
                    raise CorruptDatasetError(
                        f"{self.root / folder} is a symbolic link; the store does not follow links"
                    )
            checked.append(self.root / rel)
        tables = []
        for path in checked:
            try:
                tables.append(_read_summary(path, first))
            except (pa.ArrowException, ValueError, IndexError) as exc:
                if isinstance(exc, FileNotFoundError):
                    raise
                raise CorruptDatasetError(
                    f"the summary file {path} is damaged ({exc}); restore it from a backup"
                ) from exc
        return tables

    # -- writing -----------------------------------------------------------------------------

    def create(self) -> bool:
        """Create the dataset, or check the one there; True when something was created or
        upgraded."""
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
                snap = Snapshot(
                    version=0,
                    txid=uuid.uuid4().hex,
                    schema_version=self.schema_version,
                    next_id=1,
                    files=(),
                )
                try:
                    self._write_manifest(snap)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        _unlink_missing_ok(self.root / ("." + MANIFEST_NAME + ".tmp"))
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
            tx.commit()
        return True

    def _write_manifest(self, snap: Snapshot) -> None:
        data = _replace_bytes(self.manifest_path, snap.to_bytes(), "manifest_tmp_written")
        self._cached = (data, snap)

    @property
    def _journal_tmp(self) -> Path:
        return self.root / ("." + JOURNAL_NAME + ".tmp")

    @contextlib.contextmanager
    def transaction(
        self, *, upgrade: bool = False, timeout: float | None = None
    ) -> Iterator[Transaction]:
        """Hold the writer lock, recover any interrupted write, and yield a transaction.

        Writes need the dataset at the current schema version; reads do not. ``timeout``
        overrides the dataset's lock timeout.
        """
        self._check_writable(self._load_manifest(), upgrade)  # fail early, before the lock
        with self._locked(timeout):
            self._recover()
            base = self._load_manifest()
            self._check_writable(base, upgrade)
            try:
                yield Transaction(self, base)
            except FileNotFoundError as exc:
                # Under the lock no other writer removes files: a listed file that is gone
                # was removed from outside.
                raise CorruptDatasetError(
                    f"a file listed by the manifest is missing: {exc.filename or exc}; restore "
                    "it from a backup"
                ) from exc
            except (OSError, pa.ArrowException) as exc:
                if isinstance(exc, UsageAnalyticsError):
                    raise
                raise self._unreadable(exc) from exc

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
                raise _Damaged(f"it holds a JSON {type(journal).__name__}, not an object")
            txid, adds, removes = journal.get("txid"), journal.get("adds"), journal.get("removes")
            if not isinstance(txid, str):
                raise _Damaged(f"it has no text 'txid' (found {txid!r})")
            for name, paths in (("adds", adds), ("removes", removes)):
                if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                    raise _Damaged(f"its {name!r} is not a list of paths (found {paths!r})")
        except (ValueError, UnicodeDecodeError, _Damaged) as exc:
            raise CorruptDatasetError(
                f"the journal {self.journal_path} is damaged ({exc}); the committed state is "
                "intact and reads work: remove the journal to let writes go on (files of the "
                "interrupted write may stay behind, unused)"
            ) from None
        return txid, list(adds or ()), list(removes or ())

    def _recover(self) -> None:
        """Finish or undo an interrupted write. Call with the lock held. Idempotent."""
        _unlink_missing_ok(self._journal_tmp)
        _unlink_missing_ok(self.root / ("." + MANIFEST_NAME + ".tmp"))
        try:
            txid, adds, removes = self._read_journal()
        except FileNotFoundError:
            return
        committed = self._load_manifest().txid == txid
        touched: set[str] = set()
        for rel in adds + removes:
            touched.update(_check_relative_path(rel, sidecar_ok=True))
        for folder in sorted(touched):
            _check_partition_folder(self.root / folder)
        for rel in removes if committed else adds:
            path = self.root / rel
            removed = _unlink_missing_ok(path)
            removed = _unlink_missing_ok(path.with_name("." + path.name + ".tmp")) or removed
            if removed:
                _fault("recovery_file_removed")
        for folder in sorted(touched, reverse=True):  # sub-folders before their parent
            _rmdir_if_empty(self.root / folder)
        _fsync_dir(self.root)
        self.journal_path.unlink()
        _fsync_dir(self.root)
        _fault("recovery_done")


#: A table to write, or the future of one still being computed on another thread.
TableOrFuture: TypeAlias = "pa.Table | Future[pa.Table]"


@dataclass
class _Staged:
    entry: FileEntry
    table: pa.Table
    sidecars: dict[str, TableOrFuture]


@dataclass
class _NewSpan:
    span: SpanEntry
    tables: dict[str, TableOrFuture]
    files: tuple[str, ...]  # the data files it covers, sorted


#: A file a commit writes: its path, its table, the function that writes it, and the span it
#: belongs to (None for the files of data files).
_Out: TypeAlias = "tuple[str, TableOrFuture, Callable[[pa.Table, Path], None], _NewSpan | None]"


class Transaction:
    """A set of file additions and removals committed at once. Use via Dataset.transaction()."""

    def __init__(self, dataset: Dataset, base: Snapshot) -> None:
        self._ds = dataset
        self.base = base
        self.schema_version = base.schema_version
        self.next_id = base.next_id
        self._staged: list[_Staged] = []
        self._removed: dict[str, FileEntry] = {}
        self._new_spans: list[_NewSpan] = []
        self._dropped_spans: set[str] = set()
        self._done = False
        #: Spans staged as futures whose computation failed: the commit left them out.
        self.failed_spans: list[SpanEntry] = []

    def reserve_ids(self, n: int) -> int:
        """Reserve ``n`` consecutive row ids; returns the first."""
        first = self.next_id
        self.next_id += n
        return first

    def add(
        self, date: str, table: pa.Table, sidecars: Mapping[str, TableOrFuture] | None = None
    ) -> FileEntry:
        """Stage ``table`` as a new data file in partition ``date``, with its summary files.

        A summary may be given as a future: the commit writes the data files first, so a
        summary computed on another thread meanwhile is waited for only after them.
        """
        self._ds.partition_dir(date)  # validates the date
        stats: dict[str, tuple[int, int]] = {}
        for name in self._ds._stats_columns:
            mm = pc.min_max(table.column(name))
            stats[name] = (int(mm["min"].as_py()), int(mm["max"].as_py()))
        sidecars = dict(sidecars or {})
        for kind in sidecars:
            if not _SIDECAR_KIND_RE.fullmatch(kind):
                raise ValueError(f"not a summary kind: {kind!r}")
        entry = FileEntry(
            path=f"{PARTITION_PREFIX}{date}/{uuid.uuid4().hex}.parquet",
            rows=table.num_rows,
            schema_version=self.schema_version,
            stats=stats,
            sidecars=tuple(sidecars),
        )
        self._staged.append(_Staged(entry, table, sidecars))
        return entry

    def remove(self, entry: FileEntry) -> None:
        """Stage the removal of a live data file."""
        self._removed[entry.path] = entry

    def add_span(
        self,
        first_day: int,
        last_day: int,
        tables: Mapping[str, TableOrFuture],
        files: Sequence[str],
    ) -> SpanEntry:
        """Stage summary files covering every data file of ``first_day..last_day``, computed
        from exactly the data files ``files``: the commit checks that they are the files it
        leaves in those days (see :meth:`pending`), so a span may be added by the commit that
        changes its days.

        A table may be given as a future, like a data file's summaries. If computing it fails,
        the commit goes on without the span and lists it in :attr:`failed_spans`: a span only
        speeds up reports over rows the commit holds anyway.
        """
        for kind in tables:
            if not _SIDECAR_KIND_RE.fullmatch(kind):
                raise ValueError(f"not a summary kind: {kind!r}")
        span = SpanEntry(uuid.uuid4().hex, first_day, last_day, tuple(tables))
        self._new_spans.append(_NewSpan(span, dict(tables), tuple(sorted(files))))
        return span

    def drop_span(self, span: SpanEntry) -> None:
        """Stage the removal of a span."""
        self._dropped_spans.add(span.name)

    @property
    def changed(self) -> bool:
        return bool(
            self._staged
            or self._removed
            or self._new_spans
            or self._dropped_spans
            or self.schema_version != self.base.schema_version
        )

    def commit(self) -> None:
        """Apply every staged change at once, durably; on failure leave the dataset as it was."""
        if self._done:
            raise RuntimeError("this transaction was already committed")
        self._done = True
        if not self.changed:
            return
        ds = self._ds
        new, dropped_spans = self._next(uuid.uuid4().hex)
        txid = new.txid
        adds = [p for s in self._staged for p in s.entry.all_paths]
        adds += [p for new_span in self._new_spans for p in new_span.span.all_paths]
        removes = [p for e in self._removed.values() for p in e.all_paths]
        removes += [p for span in dropped_spans for p in span.all_paths]
        for rel in {*adds, *removes}:
            for folder in _check_relative_path(rel, sidecar_ok=True):
                _check_partition_folder(ds.root / folder)
        committed = False
        try:
            journal = {"txid": txid, "adds": adds, "removes": removes}
            _replace_bytes(ds.journal_path, _json_bytes(journal), "journal_tmp_written")
            _fault("journal_written")
            self._write_files()
            if self.failed_spans:
                failed = {span.name for span in self.failed_spans}
                for span in self.failed_spans:  # a kind that was computed may be written
                    for rel in span.all_paths:
                        _unlink_missing_ok(ds.root / rel)
                with contextlib.suppress(FileNotFoundError):  # none may have been written
                    _fsync_dir(ds.root / SPAN_DIR)
                new = dataclasses.replace(
                    new, spans=tuple(sp for sp in new.spans if sp.name not in failed)
                )
            ds._write_manifest(new)
            committed = True
        except BaseException as exc:
            if not committed:
                with contextlib.suppress(BaseException):
                    ds._recover()
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | StorageError):
                raise StorageError(
                    exc.errno or errno.EIO,
                    f"writing to {ds.root} failed ({exc.strerror or exc}); "
                    + (
                        "the write was committed, but may not be durable"
                        if committed
                        else "nothing was changed"
                    ),
                ) from exc
            raise
        # Past the commit point: failures only leave garbage that the next recovery removes.
        with contextlib.suppress(OSError):
            self._cleanup(removes)

    def pending(self) -> Snapshot:
        """The state this transaction would commit, as staged so far (its txid is empty)."""
        return self._next("")[0]

    def staged_summaries(self) -> dict[str, dict[str, TableOrFuture]]:
        """The summary tables (or their futures) of the data files staged so far, by path."""
        return {s.entry.path: dict(s.sidecars) for s in self._staged}

    def _next(self, txid: str) -> tuple[Snapshot, list[SpanEntry]]:
        """The snapshot this transaction commits, and the spans it drops."""
        # A span stays only while no data file of its days changes.
        changed_days = {day_number(s.entry.date) for s in self._staged}
        changed_days |= {day_number(e.date) for e in self._removed.values()}
        kept_spans, dropped_spans = [], []
        for span in self.base.spans:
            stale = any(span.first_day <= d <= span.last_day for d in changed_days)
            if stale or span.name in self._dropped_spans:
                dropped_spans.append(span)
            else:
                kept_spans.append(span)
        files = [f for f in self.base.files if f.path not in self._removed]
        files.extend(s.entry for s in self._staged)
        for new_span in self._new_spans:
            days = range(new_span.span.first_day, new_span.span.last_day + 1)
            if new_span.files != tuple(sorted(f.path for f in files if f.day in days)):
                raise ValueError("a span must cover the files this commit leaves in its days")
        new = Snapshot(
            version=self.base.version + 1,
            txid=txid,
            schema_version=self.schema_version,
            next_id=self.next_id,
            files=tuple(files),
            spans=tuple(kept_spans) + tuple(new_span.span for new_span in self._new_spans),
        )
        return new, dropped_spans

    def _write_files(self) -> None:
        """Write every new file: the data files on this thread, meanwhile the summary files
        (waiting for those still being computed) on another; pyarrow releases the GIL."""
        dirs: set[Path] = set()
        new_dirs: set[Path] = set()
        data: list[_Out] = [
            (staged.entry.path, staged.table, self._ds._write_data, None) for staged in self._staged
        ]
        summaries: list[_Out] = [
            (staged.entry.sidecar_path(k), t, _write_summary, None)
            for staged in self._staged
            for k, t in staged.sidecars.items()
        ]
        summaries += [
            (new_span.span.path(k), t, _write_summary, new_span)
            for new_span in self._new_spans
            for k, t in new_span.tables.items()
        ]
        if data and summaries:
            summary_dirs: set[Path] = set()
            summary_new_dirs: set[Path] = set()
            # The pool's exit waits for the summaries even when the data files fail, so that
            # nothing is still being written when recovery looks at the folders.
            with ThreadPoolExecutor(1, "usage-analytics-writer") as pool:
                job = pool.submit(self._write, summaries, summary_dirs, summary_new_dirs)
                try:
                    self._write(data, dirs, new_dirs)
                finally:
                    _join(job)
                job.result()
            dirs |= summary_dirs
            new_dirs |= summary_new_dirs
        else:
            self._write(data + summaries, dirs, new_dirs)
        for written in dirs | {d.parent for d in new_dirs}:
            _fsync_dir(written)

    def _write(
        self,
        files: list[_Out],
        dirs: set[Path],
        new_dirs: set[Path],
    ) -> None:
        """Write each (path, table, writer) under a temporary name, then rename it."""
        root = self._ds.root
        for rel, table, writer, of_span in files:
            if of_span is not None and isinstance(table, Future):
                # A span whose computation failed is left out (see add_span).
                if of_span.span in self.failed_spans:
                    continue
                try:
                    table = table.result()
                except Exception:
                    self.failed_spans.append(of_span.span)
                    continue
            elif isinstance(table, Future):
                table = table.result()
            final = root / rel
            for folder in _check_relative_path(rel, sidecar_ok=True):
                path = root / folder
                _check_partition_folder(path)
                if not path.exists():
                    path.mkdir()
                    new_dirs.add(path)
            dirs.add(final.parent)
            tmp = final.with_name("." + final.name + ".tmp")
            writer(table, tmp)
            _fault("data_tmp_written")
            os.replace(tmp, final)
            _fault("data_renamed")

    def _cleanup(self, removes: Iterable[str]) -> None:
        ds = self._ds
        _fault("committed")
        folders: set[str] = set()
        for rel in removes:
            _unlink_missing_ok(ds.root / rel)
            folders.add(rel.rsplit("/", 1)[0])
            _fault("file_removed")
        if any(f.startswith(SIDECAR_DIR + "/") for f in folders):
            folders.add(SIDECAR_DIR)
        for folder in sorted(folders, reverse=True):  # sub-folders before their parent
            _rmdir_if_empty(ds.root / folder)
            with contextlib.suppress(FileNotFoundError):
                _fsync_dir(ds.root / folder)
        _fsync_dir(ds.root)
        _fault("cleanup_done")
        ds.journal_path.unlink()
        _fsync_dir(ds.root)


def _join(job: Future[Any]) -> None:
    """Wait until ``job`` is done, even through a KeyboardInterrupt (raised again after), so
    that recovery never runs while the job's thread still writes files."""
    interrupted: BaseException | None = None
    while True:
        try:
            concurrent.futures.wait([job])
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def _is_text(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))


def _write_parquet(table: pa.Table, path: Path, *, statistics: Sequence[str]) -> None:
    """Write and fsync one data file.

    Chosen for write speed, which bounds ingest, at a small cost in size: snappy; dictionaries
    for string columns only (for counters and timestamps the writer would build a dictionary
    and then give it up); delta encoding for integer columns; statistics only for
    ``statistics``, the columns readers can prune by.
    """
    strings = [f.name for f in table.schema if _is_text(f.type)]
    ints = (pa.int64(), pa.int32())
    delta = {f.name: "DELTA_BINARY_PACKED" for f in table.schema if f.type in ints}
    with open(path, "wb") as fh:
        pq.write_table(
            table,
            fh,
            compression="snappy",
            row_group_size=DATA_ROW_GROUP,
            use_dictionary=strings,
            column_encoding=delta or None,
            write_statistics=[c for c in statistics if c in table.column_names],
        )
        fh.flush()
        os.fsync(fh.fileno())


def _summary_batches(table: pa.Table) -> tuple[list[pa.RecordBatch], list[list[Any]]]:
    """``table`` (sorted by its first column) cut into record batches for a summary file, with
    the first and last first-column value of each.

    A value with at least ``SUMMARY_BATCH_ROWS`` rows gets batches of its own, so that reading
    it decodes nothing else; values with fewer rows share batches of about that many rows,
    because every batch costs a few buffers to write and read.
    """
    if not table.num_rows:
        return [], []
    table = table.combine_chunks()
    first = table.column(0).chunk(0)
    if pa.types.is_dictionary(first.type):  # equal values have equal indices
        runs = pc.run_end_encode(first.indices)
        values = first.dictionary.take(runs.values).to_pylist()
    else:
        runs = pc.run_end_encode(first)
        values = runs.values.to_pylist()
    cuts: list[tuple[int, int, Any, Any]] = []  # (start, end, first value, last value)
    shared: list[Any] = []
    shared_start = start = 0
    for value, end in zip(values, runs.run_ends.to_pylist(), strict=True):
        if end - start >= SUMMARY_BATCH_ROWS:
            if shared:
                cuts.append((shared_start, start, shared[0], shared[-1]))
            cuts.append((start, end, value, value))
            shared, shared_start = [], end
        else:
            shared.append(value)
            if end - shared_start >= SUMMARY_BATCH_ROWS:
                cuts.append((shared_start, end, shared[0], shared[-1]))
                shared, shared_start = [], end
        start = end
    if shared:
        cuts.append((shared_start, start, shared[0], shared[-1]))
    batches, index = [], []
    for lo, hi, first_value, last_value in cuts:
        for batch in table.slice(lo, hi - lo).to_batches():
            batches.append(batch)
            index.append([first_value, last_value])
    return batches, index


def _narrowest_int(column: pa.ChunkedArray) -> pa.DataType:
    """The smallest signed integer type that holds every value of an int64 ``column``."""
    bounds = pc.min_max(column)
    low, high = bounds["min"].as_py() or 0, bounds["max"].as_py() or 0
    for candidate in (pa.int8(), pa.int16(), pa.int32()):
        bits = candidate.bit_width - 1
        if -(1 << bits) <= low and high < (1 << bits):
            return candidate
    return pa.int64()


def _summary_on_disk(table: pa.Table) -> pa.Table:
    """``table`` as a summary file stores it: strings dictionary-encoded (one dictionary per
    column for the whole file), int64 columns in the narrowest type that holds them."""
    columns = []
    for column in table.columns:
        if _is_text(column.type) or pa.types.is_dictionary(column.type):
            column = _as_summary_text(column)
        elif column.type == pa.int64():
            column = column.cast(_narrowest_int(column))
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names).unify_dictionaries()


def _summary_in_memory(table: pa.Table) -> pa.Table:
    """A summary file's table as readers get it, whatever version wrote the file: strings as
    ``SUMMARY_TEXT`` dictionaries; integers in the type they were stored in (a caller that
    adds them up widens them itself: casting each file's columns costs more than that)."""
    for i, field_ in enumerate(table.schema):
        if field_.type != SUMMARY_TEXT and (
            _is_text(field_.type) or pa.types.is_dictionary(field_.type)
        ):
            table = table.set_column(i, field_.name, _as_summary_text(table.column(i)))
    return table


def _as_summary_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    return column.cast(SUMMARY_TEXT)


def _write_summary(table: pa.Table, path: Path) -> None:
    """Write and fsync one summary file (see the module docstring)."""
    stored = _summary_on_disk(table)
    batches, index = _summary_batches(stored)
    schema = stored.schema.with_metadata({SUMMARY_INDEX_KEY: json.dumps(index).encode()})
    with open(path, "wb") as fh:
        # Written whole from memory: a file object takes every buffer in a call of its own.
        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
        fh.write(sink.getvalue())
        fh.flush()
        os.fsync(fh.fileno())


def _read_summary(path: Path, first: str | None) -> pa.Table:
    """One summary file, whole or only its rows whose first column equals ``first``."""
    # Memory-mapped: a batch is read straight from the page cache. Buffers hold the mapping,
    # so the tables stay valid after it is closed (or the file unlinked).
    with pa.memory_map(str(path)) as source:
        if source.read(4) == b"PAR1":  # summaries written before version 0.2 are Parquet
            return _summary_in_memory(_read_parquet_summary(path, first))
        source.seek(0)
        reader = ipc.open_file(source)
        schema = reader.schema.remove_metadata()
        if first is None:
            return _summary_in_memory(
                pa.Table.from_batches(
                    [reader.get_batch(i) for i in range(reader.num_record_batches)], schema
                )
            )
        index = json.loads((reader.schema.metadata or {}).get(SUMMARY_INDEX_KEY, b"[]"))
        wanted = [i for i, (lo, hi) in enumerate(index) if lo <= first <= hi]
        batches = [reader.get_batch(i) for i in wanted]
    table = pa.Table.from_batches(batches, schema)
    if any(index[i][0] != index[i][1] for i in wanted):  # shared batches: keep ``first`` only
        table = table.filter(pc.equal(table.column(0), first))
    return _summary_in_memory(table)


def _read_parquet_summary(path: Path, first: str | None) -> pa.Table:
    table = pq.read_table(path)
    if first is not None:
        table = table.filter(pc.equal(table.column(0), first))
    return table
