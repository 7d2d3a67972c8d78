"""The commit log: every committed state of a dataset, as a Delta Lake transaction log.

Layout, under the dataset root::

    _delta_log/<version, 20 digits>.json     one commit: Delta actions, one JSON object a line
    _delta_log/<version>.checkpoint.parquet  the whole state at a version (every 100 commits)
    _delta_log/_last_checkpoint              the latest checkpoint's version (a hint)

A commit is one new file, created only if absent (a hard link of a fully written temporary
file: no reader ever sees part of a commit, and no commit replaces another). So the cost of a
commit is the size of its change, not of the dataset, and a reader that knows version ``v``
catches up by reading ``v+1``, ``v+2``, ... until one is missing.

The log is a valid Delta Lake table (reader version 1; writer version 7 with the
``domainMetadata`` feature): ``deltalake``, Polars' ``scan_delta``, DuckDB's and Spark's
Delta readers read exactly the files of one committed state, partitioned by ``date``. What
only this package needs rides along where Delta readers ignore it: each ``add`` carries its
file's entry (rows, schema version, statistics, summary kinds) in the tag ``usage_analytics``,
and each commit a ``domainMetadata`` action of the domain ``usage_analytics`` with the
transaction id, schema version, next row id and history retention, and one of the domain
``usage_analytics.span.<name>`` for each span it adds or drops (a checkpoint holds them all);
a partial span (see ``SpanEntry``) moves to ``usage_analytics.partial_span.<name>``, which
versions before partial spans do not read as a span.
Summary files live under ``_rollups/``, which no Delta action names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import CorruptDatasetError, IncompatibleDatasetError, InvalidArgumentError
from . import checkpoint
from .delta import (
    CHECKPOINT_SCHEMA,
    DOMAIN,
    PROTOCOL,
    REARRANGING,
    TAG,
    add_action,
    apply_span_domain,
    check_protocol,
    domain,
    is_span_domain,
    line,
    metadata_action,
    remove_action,
    span_domain,
    span_domains,
)
from .faults import fault
from .files import fsync_dir, replace_bytes, unlink_missing_ok, write_bytes_durably
from .fileset import FileSet
from .manifest import (
    LOG_DIR_NAME as LOG_DIR,
)
from .manifest import (
    Damaged,
    FileEntry,
    Snapshot,
    SpanEntry,
    gc_paused,
    int_field,
    is_int,
)

__all__ = ["CHECKPOINT_EVERY", "LOG_DIR", "Log"]

LAST_CHECKPOINT: Final = "_last_checkpoint"
#: A checkpoint is written after every this many commits.
CHECKPOINT_EVERY: Final = 100
#: Where a commit is written before it is linked into the log (skipped by every reader).
COMMIT_TMP: Final = "._usage_analytics.commit.tmp"
#: The state before version 0.
_EMPTY: Final = Snapshot(version=-1, txid="", schema_version=1, next_id=1)


class Log:
    """The commit log of the dataset at ``root``: reading states and committing new ones.

    Args:
        read_bytes: reads a file of the dataset itself (refusing links).
        schema_for_version: the Arrow schema of data files of a schema version.
    """

    def __init__(
        self,
        root: Path,
        *,
        read_bytes: Callable[[Path], bytes],
        schema_for_version: Callable[[int], pa.Schema],
        max_schema_version: int,
        stats_columns: Iterable[str],
    ) -> None:
        self.root = root
        #: The dataset root, as messages name it.
        self.label = str(root)
        self.dir = root / LOG_DIR
        self._read_bytes = read_bytes
        self._schema_for_version = schema_for_version
        self._max_schema_version = max_schema_version
        self._stats_columns = tuple(stats_columns)
        #: The latest state read or committed, and the identity of its commit file.
        self._cached: tuple[Snapshot, tuple[int, int, int]] | None = None
        #: The version and time (ms) of the last commit this log made.
        self._last_commit: tuple[int, int] = (-1, 0)

    def commit_path(self, version: int) -> Path:
        return self.dir / _commit_name(version)

    def exists(self) -> bool:
        """Whether the dataset keeps its states in this log (else in the older manifest)."""
        return self.commit_path(0).exists() or (self.dir / LAST_CHECKPOINT).exists()

    # -- the files of the log (on object storage, see ``objects``) ----------------------------

    def where(self, name: str) -> str:
        """A file of the log, as messages name it."""
        return str(self.dir / name)

    def _check_dir(self) -> None:
        if self.dir.is_symlink():
            raise CorruptDatasetError(
                f"{self.dir} is a symbolic link; the store never reads through links: put the "
                "folder itself there"
            )

    def _read(self, name: str) -> bytes:
        """A file of the log. Raises FileNotFoundError when there is none."""
        return self._read_bytes(self.dir / name)

    def _names(self) -> list[str]:
        return os.listdir(self.dir)

    def _read_parquet(self, name: str) -> pq.ParquetFile:
        """A Parquet file of the log, read whole into memory (its parts are parsed later)."""
        return pq.ParquetFile(pa.py_buffer(self._read(name)))

    def _put(self, version: int, data: bytes) -> None:
        """Create commit ``version`` with ``data`` unless it exists: the commit point."""
        tmp = self.root / COMMIT_TMP
        self.dir.mkdir(exist_ok=True)
        write_bytes_durably(tmp, data)
        fault("commit_tmp_written")
        final = self.commit_path(version)
        try:
            os.link(tmp, final)  # put-if-absent: the commit point
        except FileExistsError:
            raise CorruptDatasetError(
                f"{final} appeared while this write held the lock: another program writes to "
                "the dataset; only usage_analytics may write to it"
            ) from None
        finally:
            unlink_missing_ok(tmp)
        fsync_dir(self.dir)

    def _size(self, path: str) -> int:
        return os.stat(self.root / path).st_size

    def _write_checkpoint(self, version: int, tables: list[pa.Table], hint: bytes) -> None:
        path = self.dir / f"{version:020d}.checkpoint.parquet"
        tmp = self.root / ("." + path.name + ".tmp")
        checkpoint.write(tables, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        replace_bytes(self.dir / LAST_CHECKPOINT, hint, "checkpoint_hint_tmp_written")

    # -- reading -----------------------------------------------------------------------------

    def load(self) -> Snapshot:
        """The latest committed state."""
        self._check_dir()
        cached = self._cached
        if cached is not None and self._identity(cached[0].version) == cached[1]:
            snap = cached[0]
        else:
            snap = self._from_checkpoint()
        newer: list[tuple[int, list[Any], str]] = []  # the commits after it, as one change
        while True:
            version = snap.version + 1 + len(newer)
            try:
                data = self._read(_commit_name(version))
            except FileNotFoundError:
                break
            newer.append(self._parsed(version, data))
        if newer:
            snap = self._replay(snap, newer)
        if cached is None or cached[0] is not snap:
            self._remember(snap)
        return snap

    # -- history -----------------------------------------------------------------------------

    def listing(self) -> tuple[list[int], list[int]]:
        """The versions of the commits and of the checkpoints in the log, ascending."""
        commits, checkpoints = [], []
        for name in self._names():
            stem, _, rest = name.partition(".")
            if len(stem) == 20 and stem.isdigit():
                if rest == "json":
                    commits.append(int(stem))
                elif rest == "checkpoint.parquet":
                    checkpoints.append(int(stem))
        return sorted(commits), sorted(checkpoints)

    def states(self, first: int, last: int) -> Iterator[Snapshot]:
        """The committed states of versions ``first`` to ``last``, in order."""
        commits, checkpoints = self.listing()
        start = max((c for c in checkpoints if c <= first), default=None)
        snap = _EMPTY if start is None else self._checkpoint(start)
        if snap.version < first and snap.version + 1 not in commits:
            oldest = min(commits + checkpoints, default=None)
            raise InvalidArgumentError(
                f"version {first} is older than the log of {self.label} keeps (its oldest "
                f"state is version {oldest}): give a later version"
            )
        if snap.version == first:
            yield snap
        while snap.version < last:
            version = snap.version + 1
            snap = self._apply(snap, version, self._read(_commit_name(version)))
            if version >= first:
                yield snap

    def state_at(self, version: int) -> Snapshot:
        """The committed state of ``version``."""
        latest = self.load().version
        if not 0 <= version <= latest:
            raise InvalidArgumentError(
                f"the dataset at {self.label} has versions 0 to {latest}, not {version}"
            )
        if version == latest:
            return self.load()
        return next(self.states(version, version))

    def commit_info(self, version: int) -> dict[str, Any]:
        """The ``commitInfo`` of a commit (its time in ms since the epoch, its operation), or
        an empty dict when the log no longer keeps the commit."""
        try:
            first = self._read(_commit_name(version)).split(b"\n", 1)[0]
            info = json.loads(first).get("commitInfo")
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise self._damaged(
                self.where(_commit_name(version)), f"its first line is odd ({exc})"
            ) from exc
        return info if isinstance(info, dict) else {}

    def _commit_ms(self, version: int) -> int:
        """The time of commit ``version`` (ms since the epoch; 0 when the log has none)."""
        if self._last_commit[0] == version:
            return self._last_commit[1]
        stamp = self.commit_info(version).get("timestamp")
        return stamp if is_int(stamp) else 0

    def _identity(self, version: int) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.commit_path(version))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _remember(self, snap: Snapshot) -> None:
        identity = self._identity(snap.version)
        self._cached = None if identity is None else (snap, identity)

    def _from_checkpoint(self) -> Snapshot:
        """The state of the latest checkpoint, or the empty state before version 0."""
        try:
            hint = json.loads(self._read(LAST_CHECKPOINT))
            version = hint["version"]
            if not is_int(version) or version < 0:
                raise ValueError(f"version {version!r}")
        except FileNotFoundError:
            return _EMPTY
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise self._damaged(
                self.where(LAST_CHECKPOINT), f"not a checkpoint hint ({exc})"
            ) from exc
        return self._checkpoint(version)

    def _checkpoint(self, version: int) -> Snapshot:
        """The state the checkpoint of ``version`` holds: its files are read a row group at a
        time, when first used (see ``checkpoint``)."""
        name = f"{version:020d}.checkpoint.parquet"
        path = self.where(name)
        try:
            file = self._read_parquet(name)
            table = file.read(columns=["protocol", "domainMetadata"])
            actions: list[dict[str, Any]] = []
            for kind in ("protocol", "domainMetadata"):
                column = table.column(kind)
                actions += [{kind: a} for a in column.filter(pc.is_valid(column)).to_pylist()]
        except FileNotFoundError:
            raise CorruptDatasetError(
                f"the checkpoint {path} that {self.where(LAST_CHECKPOINT)} names is missing; "
                "restore it from a backup"
            ) from None
        except (pa.ArrowException, OSError, KeyError) as exc:
            raise self._damaged(path, f"not a checkpoint ({' '.join(str(exc).split())})") from exc
        adds = checkpoint.Adds(
            file, lambda file, groups: self._checkpoint_adds(file, groups, path), version
        )
        base = dataclasses.replace(_EMPTY, fileset=FileSet(source=adds))
        return self._state(base, version, actions, path)

    def _checkpoint_adds(
        self, file: pq.ParquetFile, groups: list[int], path: str
    ) -> list[FileEntry]:
        """The entries of the adds in the row groups ``groups`` of the checkpoint ``file``."""
        with gc_paused():
            try:
                table = file.read_row_groups(groups, columns=["add.path", "add.size", "add.tags"])
                fields = table.column("add").combine_chunks().flatten()
                adds = pa.table(dict(zip(("path", "size", "tags"), fields, strict=True)))
                listed = adds.filter(pc.is_valid(adds.column("path")))
                entries = checkpoint.entries(
                    listed, TAG, self._max_schema_version, self._stats_columns
                )
                if entries is not None:  # the plain shape: parsed column by column
                    return entries
                # Parsed add by add, which names what is odd.
                column = file.read_row_groups(groups, columns=["add"]).column("add")
                raw = [add for add in column.to_pylist() if add is not None]
            except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
                raise self._damaged(
                    path, f"not a checkpoint ({' '.join(str(exc).split())})"
                ) from exc
            out = []
            for add in raw:
                try:
                    add["tags"] = dict(add["tags"] or ())
                    add["partitionValues"] = dict(add["partitionValues"] or ())
                    out.append(self._entry(add))
                except (Damaged, ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise self._damaged(path, str(exc)) from None
            return out

    def _apply(self, snap: Snapshot, version: int, data: bytes) -> Snapshot:
        """``snap`` changed by commit ``version``, whose bytes are ``data``."""
        return self._replay(snap, [self._parsed(version, data)])

    def _parsed(self, version: int, data: bytes) -> tuple[int, list[Any], str]:
        """The actions of commit ``version``, whose bytes are ``data``."""
        path = self.where(_commit_name(version))
        try:
            actions = [json.loads(line) for line in data.splitlines() if line.strip()]
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._damaged(path, f"a line is not JSON ({exc})") from exc
        return version, actions, path

    def _state(self, base: Snapshot, version: int, actions: list[Any], path: str) -> Snapshot:
        """``base`` changed by ``actions`` of commit ``version``."""
        return self._replay(base, [(version, actions, path)])

    def _replay(self, base: Snapshot, commits: Sequence[tuple[int, list[Any], str]]) -> Snapshot:
        """``base`` changed by the ``(version, actions, path)`` of each of ``commits`` in turn,
        as one change (so that catching up on many commits costs their changes)."""
        live = base.by_path
        added: dict[str, FileEntry] = {}
        removed: dict[str, None] = {}  # paths of base's files, in order
        spans = {sp.name: sp for sp in base.spans}
        fields: dict[str, Any] = {}
        for version, actions, path in commits:
            try:
                fields = self._actions(actions, path, live, added, removed, spans)
            except (Damaged, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise self._damaged(path, str(exc)) from None
            fields["version"] = version
        # A partial span that lists a file since removed (by a version that knows no partial
        # spans, which leaves them as they are) no longer summarizes its days' files: left out.
        kept = [
            sp
            for sp in spans.values()
            if sp.files is None
            or all(p in added or (p in live and p not in removed) for p in sp.files)
        ]
        return base.evolve(removed, list(added.values()), spans=tuple(kept), **fields)

    def _actions(
        self,
        actions: list[Any],
        path: str,
        live: Mapping[str, FileEntry],
        added: dict[str, FileEntry],
        removed: dict[str, None],
        spans: dict[str, SpanEntry],
    ) -> dict[str, Any]:
        """Apply the actions of one commit to ``added``, ``removed`` and ``spans``; returns
        the state's fields its domain metadata sets."""
        state: Mapping[str, Any] | None = None
        for action in actions:
            if not isinstance(action, dict) or len(action) != 1:
                raise Damaged(f"an action is not an object of one key ({action!r:.80})")
            ((kind, body),) = action.items()
            if not isinstance(body, dict):
                raise Damaged(f"the {kind!r} action is not an object")
            if kind == "add":
                entry = self._entry(body)
                added[entry.path] = entry
            elif kind == "remove":
                gone = body.get("path")
                if not isinstance(gone, str):
                    raise Damaged(f"it removes {gone!r}, which is not live")
                if gone in added:
                    del added[gone]
                    if gone in live:
                        removed[gone] = None
                elif gone in live and gone not in removed:
                    removed[gone] = None
                else:
                    raise Damaged(f"it removes {gone!r}, which is not live")
            elif kind == "protocol":
                check_protocol(body, path)
            elif kind == "domainMetadata" and body.get("domain") == DOMAIN:
                state = json.loads(body["configuration"])
            elif kind == "domainMetadata" and is_span_domain(body):
                apply_span_domain(body, spans)
        if state is None:
            raise Damaged(
                f"it has no {DOMAIN!r} domain metadata (another program wrote it? only "
                "usage_analytics may write to its datasets)"
            )
        schema_version = state.get("schema_version")
        if not is_int(schema_version) or not 1 <= schema_version <= self._max_schema_version:
            raise IncompatibleDatasetError(
                f"the dataset has schema version {schema_version!r}; this usage_analytics "
                f"knows versions 1 to {self._max_schema_version}: upgrade usage_analytics"
            )
        txid = state.get("txid")
        retention = state.get("retention_s", 0)
        if not isinstance(txid, str):
            raise Damaged(f"its domain metadata has no text 'txid' (found {txid!r})")
        if not is_int(retention) or retention < 0:
            raise Damaged(f"its domain metadata has an odd retention {retention!r}")
        return {
            "txid": txid,
            "schema_version": schema_version,
            "next_id": int_field(state, "next_id", "its domain metadata"),
            "retention": retention,
        }

    def _entry(self, add: Mapping[str, Any]) -> FileEntry:
        tags = add.get("tags") or {}
        if not isinstance(tags, dict) or not isinstance(tags.get(TAG), str):
            raise Damaged(
                f"it adds {add.get('path')!r} without the {TAG!r} tag (another program wrote "
                "it? only usage_analytics may write to its datasets)"
            )
        entry = FileEntry.from_json(
            json.loads(tags[TAG]),
            max_schema_version=self._max_schema_version,
            stats_columns=self._stats_columns,
        )
        size = add.get("size")
        if add.get("path") != entry.path or not is_int(size) or size < 0:
            raise Damaged(f"the add of {add.get('path')!r} does not match its entry")
        return FileEntry(
            entry.path,
            entry.rows,
            entry.schema_version,
            entry.stats,
            entry.sidecars,
            entry.skipped,
            size=size,
        )

    def _damaged(self, path: str, why: str) -> CorruptDatasetError:
        return CorruptDatasetError(
            f"the commit log file {path} is damaged: {why}; restore it from a backup"
        )

    # -- writing -----------------------------------------------------------------------------

    def commit(self, base: Snapshot | None, new: Snapshot, *, operation: str) -> Snapshot:
        """Commit ``new`` as the state after ``base`` (the state the log holds now, or None
        when the dataset is being created or moved from its manifest to the log: the commit
        is then version 0 and holds the whole state). Call with the writer lock held.

        The commit point is the link of the commit file; returns the state as committed.
        """
        version = 0 if base is None else base.version + 1
        # Commit times only increase, whatever the writers' clocks (as Delta's in-commit
        # timestamps): a version found by a time was committed at or before it.
        now = int(time.time() * 1000)
        if base is not None:
            now = max(now, self._commit_ms(base.version) + 1)
        out = [
            line(
                {
                    "commitInfo": {
                        "timestamp": now,
                        "operation": operation,
                        "engineInfo": "usage_analytics",
                        "txnId": new.txid,
                    }
                }
            )
        ]
        old = {} if base is None else base.by_path
        if base is None or base.schema_version != new.schema_version:
            if base is None:
                out.append(line({"protocol": PROTOCOL}))
            schema = self._schema_for_version(new.schema_version)
            out.append(line({"metaData": metadata_action(schema, now)}))
        change = None if base is None else new.change_from(base)
        if change is None:  # the whole difference
            live = new.by_path
            removed = [path for path in old if path not in live]
            added: Iterable[FileEntry] = new.files
        else:  # the change new was made with (Snapshot.evolve): cheap with many files
            removed, added = list(change[0]), change[1]
        changes = operation not in REARRANGING
        for path in removed:
            out.append(line({"remove": remove_action(old[path], now, data_change=changes)}))
        for entry in added:
            before = old.get(entry.path)
            if before is None or before.json_bytes != entry.json_bytes:
                new_file = before is None and changes
                out.append(line({"add": self._add(entry, now, new_file)}))
        before_spans = () if base is None else base.spans
        out += [line({"domainMetadata": d}) for d in span_domains(before_spans, new.spans)]
        out.append(line({"domainMetadata": domain(new)}))
        data = b"".join(out)
        self._put(version, data)
        self._last_commit = (version, now)
        snap = self._apply(base or _EMPTY, version, data)
        self._remember(snap)
        return snap

    def checkpoint(self, snap: Snapshot) -> None:
        """Write the whole state ``snap`` (the latest, just committed) as a checkpoint.

        When ``snap`` was read from an earlier checkpoint, the row groups of its adds that
        hold only dates no commit since has changed are copied from it as they are (see
        :func:`checkpoint.reusable`); the other dates' adds are made from their entries.
        """
        now = int(time.time() * 1000)
        meta = metadata_action(self._schema_for_version(snap.schema_version), now)
        meta.update(name=None, description=None, configuration=[])
        meta["format"]["options"] = []
        domains = [domain(snap), *(span_domain(sp) for sp in snap.spans)]
        n = 2 + len(domains)
        protocol = dict(PROTOCOL, readerFeatures=None)
        header = pa.table(
            {
                "add": [None] * n,
                "metaData": [meta] + [None] * (n - 1),
                "protocol": [None, protocol] + [None] * (n - 2),
                "domainMetadata": [None, None, *domains],
            },
            schema=CHECKPOINT_SCHEMA,
        )
        old, copy = checkpoint.reusable_from(snap.fileset, self._read_parquet)
        tables, adds = checkpoint.assemble(
            header, snap.fileset, lambda e: self._checkpoint_add(e, now), old, copy
        )
        hint = {"version": snap.version, "size": n + adds, "numOfAddFiles": adds}
        self._write_checkpoint(snap.version, tables, line(hint))

    def _add(self, entry: FileEntry, now: int, data_change: bool) -> dict[str, Any]:
        return add_action(entry, entry.size or self._size(entry.path), now, data_change)

    def _checkpoint_add(self, entry: FileEntry, now: int) -> dict[str, Any]:
        add = self._add(entry, now, True)
        add["partitionValues"] = list(add["partitionValues"].items())
        add["tags"] = list(add["tags"].items())
        return add


def _commit_name(version: int) -> str:
    return f"{version:020d}.json"
