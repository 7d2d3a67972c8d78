"""A dataset on object storage (S3, GCS, an fsspec filesystem): the same files and commit log as
on a local disk, written with a protocol that needs neither a lock nor a rename.

Object stores have no atomic rename, no ``flock`` and no folders to fsync; what they have is
that an object appears whole or not at all, and (S3 with ``If-None-Match: *``, GCS with a
generation precondition) a write that only creates an object that does not exist yet. So:

- data and summary files are written straight to their final names: until a commit lists them
  they are invisible to the store and to Delta readers;
- the commit point is the put-if-absent of the next commit object of the Delta log
  (``_delta_log/<version>.json``), as Delta Lake's own writers do on S3 with conditional puts;
- there is no writer lock: each write runs on the latest state it read (optimistic
  concurrency). When another writer took the version first, the write is checked against what
  committed in between and committed again on top of it (see ``Transaction.rebased``): appends
  that do not conflict all land; the ``(user_id, timestamp)`` keys of an append are checked
  again against the rows committed meanwhile; writes that removed the same files fail with
  :class:`ConcurrentWriteError`, having changed nothing;
- row ids come from the log too: an append reserves its ids with a commit of its own (a
  ``domainMetadata`` change only), so that two appends never share an id and a rebase never
  has to rewrite a file;
- there is no journal: a write that fails or is killed before its commit point leaves files no
  commit lists. Readers never see them, and :func:`~usage_analytics._storage.history.vacuum`
  removes them once they are older than :data:`ORPHAN_AGE_S` (a younger one may belong to a
  write still running on another machine). Files a commit added and a later one removed are
  no write's: a vacuum removes them at any age, once no retained version lists them.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import pyarrow as pa

from ..errors import (
    ConcurrentWriteError,
    CorruptDatasetError,
    DatasetNotInitializedError,
    InvalidArgumentError,
    StorageError,
    UsageAnalyticsError,
)
from . import checkpoint
from .dataset import Dataset
from .faults import fault
from .files import summary_bytes, write_parquet_to
from .history import committed_paths
from .log import LAST_CHECKPOINT, LOG_DIR, Log
from .manifest import (
    MANIFEST_NAME,
    MARKER,
    PARTITION_PREFIX,
    SIDECAR_DIR,
    FileEntry,
    Snapshot,
    check_relative_path,
    json_bytes,
)
from .transaction import Transaction

__all__ = ["ORPHAN_AGE_S", "ObjectDataset", "is_url", "open_filesystem"]

#: Files no commit lists are removed by a vacuum only once they are this old (seconds): a
#: younger one may belong to a write that is still running, on this machine or another.
ORPHAN_AGE_S: Final = 24 * 3600
T = TypeVar("T")
#: Filesystems (fsspec protocols) whose ``pipe_file(..., mode="create")`` creates an object
#: only if it is absent, atomically: the commit point needs it. Others are read only.
PUT_IF_ABSENT: Final = frozenset({"s3", "s3a", "gs", "gcs", "memory"})
_COMMIT_ATTEMPTS: Final = 200
#: A local path that no file can be under (``/dev/null`` is not a folder): the dataset's local
#: root, so that a local file operation the object store forgot fails instead of writing.
_NOWHERE: Final = Path("/dev/null/object-storage")


def is_url(root: str) -> bool:
    """Whether ``root`` names object storage (``scheme://...``, not ``file://``)."""
    scheme, sep, _ = root.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme not in ("file", "local")


def open_filesystem(root: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem of the URL ``root`` and the root's path on it."""
    try:
        import fsspec
    except ImportError:
        raise UsageAnalyticsError(
            f"{root} is on object storage, which needs fsspec and the filesystem of its scheme: "
            "pip install 'usage_analytics[s3]' (or fsspec with gcsfs, adlfs, ...)"
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    except ImportError as exc:
        raise UsageAnalyticsError(
            f"the filesystem of {root} is not installed ({exc}): pip install "
            "'usage_analytics[s3]' for s3://, gcsfs for gs://, adlfs for az://"
        ) from None
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(
            f"cannot open {root} with storage_options {sorted(storage_options or {})}: {exc}"
        ) from None
    return fs, str(path).rstrip("/")


class VersionTaken(Exception):
    """Another writer created the commit object of this version first."""


class ObjectLog(Log):
    """The commit log of a dataset on an fsspec filesystem."""

    def __init__(self, fs: Any, path: str, url: str, **kwargs: Any) -> None:
        super().__init__(_NOWHERE, read_bytes=_no_local_read, **kwargs)
        self.fs = fs
        self.label = url
        self._dir = f"{path}/{LOG_DIR}"
        self._root = path

    def exists(self) -> bool:
        self.fs.invalidate_cache(self._dir)  # listings cached by fsspec go stale
        return any(
            self.fs.exists(f"{self._dir}/{name}") for name in (f"{0:020d}.json", LAST_CHECKPOINT)
        )

    def where(self, name: str) -> str:
        return f"{self.label}/{LOG_DIR}/{name}"

    def _check_dir(self) -> None:
        pass  # no links on object storage

    def _read(self, name: str) -> bytes:
        data: bytes = self.fs.cat_file(f"{self._dir}/{name}")
        return data

    def _names(self) -> list[str]:
        self.fs.invalidate_cache(self._dir)
        try:
            return [p.rsplit("/", 1)[-1] for p in self.fs.ls(self._dir, detail=False)]
        except FileNotFoundError:
            return []

    def _identity(self, version: int) -> tuple[int, int, int] | None:
        # Commit objects are created once and never replaced: a version that exists is the
        # commit read before (unless the dataset was deleted and created again meanwhile,
        # which its size and time tell).
        self.fs.invalidate_cache(self._dir)
        try:
            info = self.fs.info(f"{self._dir}/{version:020d}.json")
        except FileNotFoundError:
            return None
        stamp = info.get("LastModified") or info.get("mtime") or info.get("created") or 0
        if hasattr(stamp, "timestamp"):
            stamp = stamp.timestamp()
        return (0, int(info.get("size") or 0), int(float(stamp) * 1e9))

    def _put(self, version: int, data: bytes) -> None:
        fault("commit_tmp_written")
        try:
            self.fs.pipe_file(f"{self._dir}/{version:020d}.json", data, mode="create")
        except FileExistsError:
            raise VersionTaken(version) from None
        self.fs.invalidate_cache(self._dir)

    def _size(self, path: str) -> int:
        return int(self.fs.size(f"{self._root}/{path}"))

    def _write_checkpoint(self, version: int, tables: list[pa.Table], hint: bytes) -> None:
        # Objects appear whole: no temporary name. A checkpoint of a version holds the same
        # state whoever writes it, so two writers racing to write it write the same.
        with self.fs.open(f"{self._dir}/{version:020d}.checkpoint.parquet", "wb") as fh:
            checkpoint.write(tables, fh)
        self.fs.pipe_file(f"{self._dir}/{LAST_CHECKPOINT}", hint)


def _no_local_read(path: Path) -> bytes:
    raise AssertionError(f"a local read of {path} on object storage")


class ObjectDataset(Dataset):
    """A dataset under ``url`` on the fsspec filesystem ``fs`` (see the module docstring)."""

    def __init__(
        self, fs: Any, path: str, url: str, storage_options: dict[str, Any] | None, **kwargs: Any
    ) -> None:
        super().__init__(_NOWHERE, **kwargs)
        self.filesystem = fs
        #: What opens the same filesystem elsewhere (Dask workers).
        self.storage_options = storage_options
        self.url = url
        self._path = path
        self._log = ObjectLog(
            fs,
            path,
            url,
            schema_for_version=kwargs["schema_for_version"],
            max_schema_version=kwargs["schema_version"],
            stats_columns=kwargs["stats_columns"],
        )
        self._writable = (fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]) in (
            PUT_IF_ABSENT
        )

    # -- reading -----------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return self.url

    def location(self, entry: FileEntry) -> str:
        return f"{self.url}/{entry.path}"

    def _source(self, rel: str) -> str:
        return f"{self._path}/{rel}"

    def _checked_path(self, entry: FileEntry) -> str:
        check_relative_path(entry.path)
        return self._source(entry.path)

    def _check_folder(self, folder: str, of: str | None = None) -> None:
        pass  # no links on object storage

    def exists(self) -> bool:
        return self._log.exists()

    def _load_manifest(self) -> Snapshot:
        if self._log._cached is None and not self._log.exists():
            raise DatasetNotInitializedError(
                f"no usage dataset at {self.url}: call Store({self.url!r}).auto_migrate() to "
                "create it"
            )
        return self._log.load()

    def snapshot(self) -> Snapshot:
        with self._client_errors():
            if self.as_of is not None:
                return super().snapshot()
            return self._load_manifest()

    def read(self, fn: Callable[[Snapshot], T]) -> T:
        with self._client_errors():
            return super().read(fn)

    @contextlib.contextmanager
    def _client_errors(self) -> Iterator[None]:
        """Errors of the object store's client library (a mistyped storage option, an
        endpoint that does not answer) as errors of this package."""
        try:
            yield
        except (UsageAnalyticsError, OSError):
            raise
        except Exception as exc:
            if not _from_client(exc):
                raise
            detail = " ".join(str(exc).split()) or type(exc).__name__
            if isinstance(exc, TypeError):
                raise InvalidArgumentError(
                    f"the filesystem of {self.url} refused its storage_options ({detail}); "
                    "check their names against the filesystem's (s3fs: key, secret, token, "
                    "endpoint_url, client_kwargs, config_kwargs)"
                ) from exc
            raise StorageError(
                5,
                f"cannot reach {self.url} ({type(exc).__name__}: {detail}); check the "
                "endpoint, the network and the credentials in storage_options",
            ) from exc

    def read_error(self, exc: OSError | pa.ArrowException) -> UsageAnalyticsError:
        if isinstance(exc, UsageAnalyticsError):
            return exc
        if isinstance(exc, PermissionError):
            return StorageError(
                exc.errno or 13,
                f"no permission to read {self.url} ({exc}): check the credentials in "
                "storage_options",
            )
        if isinstance(exc, OSError):
            return StorageError(exc.errno or 5, f"cannot read {self.url} ({exc})")
        return super().read_error(exc)

    # -- writing -----------------------------------------------------------------------------

    def _check_writes(self) -> None:
        self._refuse_pinned()
        if not self._writable:
            raise UsageAnalyticsError(
                f"{self.url} is on a filesystem without an atomic create-if-absent, which "
                f"commits need (supported: {', '.join(sorted(PUT_IF_ABSENT))}); reads work"
            )

    def create(self, rewrite: Callable[[Transaction], object] | None = None) -> bool:
        self._check_writes()
        if not self.exists():
            snap = Snapshot.first(self.schema_version)
            outcome = (
                "nothing was created: check that the bucket exists and that the credentials in "
                "storage_options may write to it"
            )
            try:
                with self._storage_errors("creating the dataset at", outcome):
                    self._log.commit(None, snap, operation="CREATE TABLE")
            except VersionTaken:
                pass  # another writer created it first: check it below
            else:
                with self._storage_errors("creating the dataset at", "run it again"):
                    self.filesystem.pipe_file(f"{self._path}/{MANIFEST_NAME}", json_bytes(MARKER))
                return True
        if self._load_manifest().schema_version == self.schema_version:
            return False
        with self.transaction(upgrade=True) as tx:
            tx.schema_version = self.schema_version
            if rewrite is not None:
                rewrite(tx)
            tx.commit()
        return True

    def commit(self, base: Snapshot | None, new: Snapshot, *, operation: str) -> Snapshot:
        try:
            return self._log.commit(base, new, operation=operation)
        except VersionTaken:
            raise ConcurrentWriteError(
                f"another writer committed to {self.url} meanwhile; nothing was changed: run "
                "the write again"
            ) from None

    @contextlib.contextmanager
    def transaction(
        self, *, upgrade: bool = False, timeout: float | None = None
    ) -> Iterator[Transaction]:
        """A transaction on the latest state; no lock (see the module docstring)."""
        self._check_writes()
        with self._client_errors():
            base = self._load_manifest()
            self._check_writable(base, upgrade)
            if_missing = (
                "run the write again if another writer deleted or compacted meanwhile, else "
                "restore it from a backup"
            )
            with self._running(Transaction(self, base), if_missing) as tx:
                yield tx

    def check_folders(self, paths: Iterable[str]) -> None:
        for rel in paths:
            check_relative_path(rel, sidecar_ok=True)

    def begin_write(self, txid: str, adds: list[str], removes: list[str]) -> None:
        pass  # no journal: files no commit lists are invisible, and vacuum removes them

    def write_file(
        self, rel: str, table: pa.Table, kind: str, dirs: set[Path], new_dirs: set[Path]
    ) -> None:
        with self.filesystem.open(self._source(rel), "wb") as fh:
            if kind == "data":
                write_parquet_to(table, fh, statistics=self.statistics)
            else:
                fh.write(summary_bytes(table))
        fault("data_renamed")

    def sync_folders(self, dirs: Iterable[Path]) -> None:
        pass

    def discard_files(self, paths: Sequence[str]) -> None:
        self._remove(paths)

    def commit_write(
        self, tx: Transaction, new: Snapshot, removes: list[str]
    ) -> tuple[Snapshot, list[str]]:
        """Commit on top of the latest state: when another writer took the version, check
        this write against what it committed and try the next (see the module docstring)."""
        for attempt in range(_COMMIT_ATTEMPTS):
            try:
                return self._log.commit(tx.base, new, operation=tx.operation), removes
            except VersionTaken:
                pass
            if attempt:  # many writers at once: let them through, then try again
                time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
            new, removes = tx.rebased(self._log.load())
        raise ConcurrentWriteError(
            f"{self.url} kept changing under this write ({_COMMIT_ATTEMPTS} commits of others "
            "came first); nothing was written: run the write again"
        )

    def finish_write(self, removes: Iterable[str]) -> None:
        removes = list(removes)
        self._remove(removes)
        for _ in removes:
            fault("file_removed")
        fault("cleanup_done")

    def undo_write(self, written: Sequence[str]) -> None:
        self._remove(written)

    def reserve_ids(self, next_id: int, n: int) -> int:
        """Reserve ``n`` row ids with a commit of their own; returns the first."""
        for attempt in range(_COMMIT_ATTEMPTS):
            latest = self._log.load()
            reserved = latest.evolve(
                (),
                (),
                version=latest.version + 1,
                txid=uuid.uuid4().hex,
                next_id=latest.next_id + n,
            )
            try:
                self._log.commit(latest, reserved, operation="RESERVE IDS")
            except VersionTaken:
                if attempt:
                    time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
                continue
            self.after_commit(reserved)
            return latest.next_id
        raise ConcurrentWriteError(
            f"{self.url} kept changing while this write reserved row ids; nothing was written: "
            "run the write again"
        )

    def own_files(self) -> set[str]:
        """The files under the root that follow the dataset's naming and that a commit added
        or that are older than :data:`ORPHAN_AGE_S` (see the module docstring)."""
        cutoff = time.time() - ORPHAN_AGE_S
        committed = committed_paths(self._log)
        out = set()
        self.filesystem.invalidate_cache(self._path)
        for path, info in self.filesystem.find(self._path, detail=True).items():
            rel = path[len(self._path) + 1 :]
            if not rel.startswith((PARTITION_PREFIX, SIDECAR_DIR + "/")):
                continue
            with contextlib.suppress(CorruptDatasetError):
                check_relative_path(rel, sidecar_ok=True)
                if rel in committed or _modified(info) < cutoff:
                    out.add(rel)
        return out

    def remove_own(self, paths: list[str]) -> None:
        with self._storage_errors(
            "vacuuming", "the files removed so far were no longer needed; run it again"
        ):
            self._remove(paths)

    def _remove(self, paths: Iterable[str]) -> None:
        targets = [self._source(rel) for rel in paths]
        if targets:
            with contextlib.suppress(FileNotFoundError):
                self.filesystem.rm(targets)

    @contextlib.contextmanager
    def _storage_errors(self, doing: str, outcome: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if isinstance(exc, UsageAnalyticsError):
                raise
            raise StorageError(
                exc.errno or 5, f"{doing} {self.url} failed ({exc}); {outcome}"
            ) from exc


#: The packages whose errors are those of an object store's client (see ``_client_errors``).
_CLIENT_PACKAGES: Final = frozenset(
    ("aiobotocore", "aiohttp", "botocore", "s3fs", "gcsfs", "adlfs", "google", "azure", "fsspec")
)


def _from_client(exc: BaseException) -> bool:
    """Whether ``exc`` is an error of the object store's client library (its class is, or it
    was raised inside it)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    raised_in = "" if tb is None else str(tb.tb_frame.f_globals.get("__name__", ""))
    packages = {type(exc).__module__.split(".")[0], raised_in.split(".")[0]}
    return bool(packages & _CLIENT_PACKAGES)


def _modified(info: dict[str, Any]) -> float:
    stamp = info.get("LastModified") or info.get("mtime") or info.get("created")
    if stamp is None:
        return 0.0
    return float(stamp.timestamp() if hasattr(stamp, "timestamp") else stamp)
