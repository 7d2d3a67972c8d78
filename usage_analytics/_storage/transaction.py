"""A transaction: the files a write adds and removes, committed at once (see ``dataset``)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConcurrentWriteError, StorageError
from . import manifest
from .faults import fault
from .manifest import (
    PARTITION_PREFIX,
    SIDECAR_KIND_RE,
    FileEntry,
    Snapshot,
    SpanEntry,
    day_date,
    day_number,
)

if TYPE_CHECKING:
    from .dataset import Dataset

__all__ = ["SpanTable", "TableOrFuture", "Transaction"]


class SpanTable:
    """A span's table of one kind, computed on another thread while the commit writes: a
    future whose table the commit lets go of once written, unless :attr:`keep` (a load's
    commit would hold every table of every span it writes otherwise; those kept are the ones
    the store remembers after the commit). Read after being let go, it is None."""

    def __init__(self) -> None:
        self._set = threading.Event()
        self._table: pa.Table | None = None
        self._error: BaseException | None = None
        #: Whether the table is still there after the commit wrote it.
        self.keep = True

    def set_result(self, table: pa.Table | None) -> None:
        self._table = table
        self._set.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._set.set()

    def done(self) -> bool:
        return self._set.is_set()

    def result(self) -> pa.Table | None:
        """The table (None if not worth writing, or let go); waits until it is computed, and
        raises what its computation raised."""
        self._set.wait()
        if self._error is not None:
            raise self._error
        return self._table

    def exception(self) -> BaseException | None:
        self._set.wait()
        return self._error

    def written(self) -> None:
        """The commit wrote the table: it is let go, unless kept."""
        if not self.keep:
            self._table = None


#: A table to write, or the future of one still being computed on another thread.
TableOrFuture: TypeAlias = "pa.Table | Future[pa.Table | None] | SpanTable | None"


@dataclass
class _Staged:
    entry: FileEntry
    table: pa.Table | None  # None once written by flush()
    sidecars: dict[str, TableOrFuture]


@dataclass
class _NewSpan:
    span: SpanEntry
    tables: dict[str, TableOrFuture]
    files: tuple[str, ...]  # the data files it covers, sorted


#: A file a commit writes: its path, its table, its kind ("data" or "summary"), and the span it
#: belongs to (None for the files of data files).
_Out: TypeAlias = "tuple[str, TableOrFuture, str, _NewSpan | None]"


class Transaction:
    """A set of file additions and removals committed at once. Use via Dataset.transaction()."""

    def __init__(self, dataset: Dataset, base: Snapshot) -> None:
        self._ds = dataset
        self.base = base
        self.schema_version = base.schema_version
        self.next_id = base.next_id
        #: Seconds the files this commit removes are kept (0: removed right after it).
        self.retention = base.retention
        self._staged: list[_Staged] = []
        self._removed: dict[str, FileEntry] = {}
        self._new_spans: list[_NewSpan] = []
        self._dropped_spans: set[str] = set()
        self._done = False
        #: Spans staged as futures whose computation failed: the commit left them out.
        self.failed_spans: list[SpanEntry] = []
        #: Spans left out because another writer changed their days meanwhile.
        self.stale_spans: list[SpanEntry] = []
        #: Summary files whose future resolved to None (not worth writing): left out.
        self._unwritten: set[str] = set()
        #: Summaries added to files of the base state, by the file's path.
        self._more: dict[str, dict[str, TableOrFuture]] = {}
        #: How many staged data files flush() has written; the txid their journal names.
        self._flushed = 0
        self._txid: str | None = None
        #: What the commit log names the commit (Delta Lake's operation names).
        self.operation = "WRITE"
        #: Every file written so far (relative paths): what undoing the write removes.
        self.written: list[str] = []
        #: Checks the data files another writer committed meanwhile against this write's
        #: rows, before the commit goes on top of them (see :meth:`rebased`).
        self.check_added: Callable[[list[FileEntry]], None] | None = None

    def reserve_ids(self, n: int) -> int:
        """Reserve ``n`` consecutive row ids; returns the first."""
        first = self._ds.reserve_ids(self.next_id, n)
        self.next_id = max(self.next_id, first + n)
        return first

    def add(
        self, date: str, table: pa.Table, sidecars: Mapping[str, TableOrFuture] | None = None
    ) -> FileEntry:
        """Stage ``table`` as a new data file in partition ``date``, with its summary files.

        A summary may be given as a future: the commit writes the data files first, so a
        summary computed on another thread meanwhile is waited for only after them. A summary
        (or the result of its future) may be None: the commit then leaves it out, and the
        committed entry does not list it.
        """
        self._ds.partition_dir(date)  # validates the date
        stats: dict[str, tuple[int, int]] = {}
        for name in self._ds._stats_columns:
            mm = pc.min_max(table.column(name))
            stats[name] = (int(mm["min"].as_py()), int(mm["max"].as_py()))
        sidecars = dict(sidecars or {})
        for kind in sidecars:
            if not SIDECAR_KIND_RE.fullmatch(kind):
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

    @property
    def added(self) -> list[FileEntry]:
        """The data files staged so far."""
        return [s.entry for s in self._staged]

    @property
    def flushed(self) -> bool:
        """Whether :meth:`flush` has written files that only the commit makes live."""
        return self._flushed > 0

    def flush(self) -> None:
        """Write the data files staged so far, with their summaries, and let go of their rows,
        so that a write of many batches holds one batch at a time.

        The journal names them first: until the commit they are invisible, and recovery (of
        a failure here, of an abandoned transaction, of a killed process) removes them.
        """
        pending = self._staged[self._flushed :]
        if not pending:
            return
        if self._txid is None:
            self._txid = uuid.uuid4().hex
        ds = self._ds
        adds = [p for s in self._staged for p in s.entry.all_paths]
        ds.check_folders(p for s in pending for p in s.entry.all_paths)  # the others were
        try:
            ds.begin_write(self._txid, adds, [])
            self._write_files(pending, with_others=False)
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                ds.undo_write(self.written)
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | StorageError):
                raise StorageError(
                    exc.errno or errno.EIO,
                    f"writing to {ds.where} failed ({exc.strerror or exc}); nothing was changed",
                ) from exc
            raise
        for staged in pending:
            staged.table = None
            staged.sidecars = {}
        self._flushed = len(self._staged)

    def abandon(self) -> None:
        """Undo what :meth:`flush` wrote, when the transaction ends without a commit."""
        if self._flushed and not self._done:
            self._done = True
            self._ds.undo_write(self.written)

    def remove(self, entry: FileEntry) -> None:
        """Stage the removal of a live data file."""
        self._removed[entry.path] = entry

    def add_summaries(self, entry: FileEntry, tables: Mapping[str, pa.Table | None]) -> None:
        """Stage summary files of kinds ``entry`` does not have yet, for a live data file (the
        data file itself is not touched). A None table is a kind found not worth writing."""
        for kind in tables:
            if not SIDECAR_KIND_RE.fullmatch(kind) or kind in entry.sidecars:
                raise ValueError(f"not a new summary kind of {entry.path}: {kind!r}")
        self._more.setdefault(entry.path, {}).update(tables)

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
            if not SIDECAR_KIND_RE.fullmatch(kind):
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
            or self._more
            or self._removed
            or self._new_spans
            or self._dropped_spans
            or self.schema_version != self.base.schema_version
            or self.retention != self.base.retention
        )

    def commit(self) -> None:
        """Apply every staged change at once, durably; on failure leave the dataset as it was."""
        if self._done:
            raise RuntimeError("this transaction was already committed")
        self._done = True
        if not self.changed:
            return
        ds = self._ds
        if self._txid is None:
            self._txid = uuid.uuid4().hex
        txid = self._txid
        new, dropped_spans = self._next(txid)
        adds = [p for s in self._staged for p in s.entry.all_paths]
        adds += [p for new_span in self._new_spans for p in new_span.span.all_paths]
        by_path = self.base.by_path
        adds += [by_path[p].sidecar_path(k) for p, more in self._more.items() for k in more]
        removes = [p for e in self._removed.values() for p in e.all_paths]
        removes += [p for span in dropped_spans for p in span.all_paths]
        ds.check_folders({*adds, *removes})
        committed = False
        try:
            ds.begin_write(txid, adds, removes)
            fault("journal_written")
            self._write_files()
            if self._unwritten or self.failed_spans:
                self._discard_failed_spans()
                new = self._next(txid)[0]  # without what was not written
            new, removes = ds.commit_write(self, new, removes)
            committed = True
        except BaseException as exc:
            if not committed:
                with contextlib.suppress(BaseException):
                    ds.undo_write(self.written)
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | StorageError):
                raise StorageError(
                    exc.errno or errno.EIO,
                    f"writing to {ds.where} failed ({exc.strerror or exc}); "
                    + (
                        "the write was committed, but may not be durable"
                        if committed
                        else "nothing was changed"
                    ),
                ) from exc
            raise
        # Past the commit point: failures only leave garbage that the next recovery removes.
        with contextlib.suppress(OSError):
            # With a retention the removed files stay for older versions, until a vacuum.
            fault("committed")
            ds.finish_write([] if new.retention else removes)
        ds.after_commit(new)

    def _discard_failed_spans(self) -> None:
        """Remove the files of the spans whose computation failed (a kind that was computed
        may have been written); the state commits without them."""
        self._ds.discard_files([rel for span in self.failed_spans for rel in span.all_paths])

    def rebased(self, latest: Snapshot) -> tuple[Snapshot, list[str]]:
        """The state this transaction commits on top of ``latest``, a state another writer
        committed after :attr:`base`, and the files the commit then removes; raises
        :class:`ConcurrentWriteError` when the two writes conflict.

        Writes conflict when the other removed a file this one removes or adds summaries to
        (both deleted or merged the same rows), or changed the schema version or the
        retention. Rows the other added are checked by :attr:`check_added` (the key check
        of appends); spans of days the other changed are left out (they would not cover its
        files). Appends meet deletes as in Delta Lake's WriteSerializable isolation: a delete
        does not remove rows appended meanwhile.
        """
        base = self.base
        if (latest.schema_version, latest.retention) != (base.schema_version, base.retention):
            raise ConcurrentWriteError(
                f"another writer changed the schema version or the retention of {self._ds.where} "
                "while this write ran; nothing was written: run the write again"
            )
        live = latest.by_path
        gone = base.by_path.keys() - live.keys()
        if gone & (self._removed.keys() | self._more.keys()):
            raise ConcurrentWriteError(
                f"another writer deleted, compacted or merged the same files of {self._ds.where} "
                "while this write ran; nothing was written: run the write again"
            )
        added = [live[p] for p in sorted(live.keys() - base.by_path.keys())]
        if added and self.check_added is not None:
            self.check_added(added)
        changed = {f.day for f in added} | {base.by_path[p].day for p in gone}
        stale = [
            ns.span
            for ns in self._new_spans
            if any(ns.span.first_day <= d <= ns.span.last_day for d in changed)
        ]
        self.stale_spans.extend(stale)
        self._new_spans = [ns for ns in self._new_spans if ns.span not in stale]
        self.base = latest
        self.next_id = max(self.next_id, latest.next_id)
        new, dropped_spans = self._next(self._txid or uuid.uuid4().hex)
        if stale:
            self._ds.discard_files([rel for span in stale for rel in span.all_paths])
        removes = [p for e in self._removed.values() for p in e.all_paths]
        removes += [p for span in dropped_spans for p in span.all_paths]
        return new, removes

    def _without_unwritten(self, entry: FileEntry) -> FileEntry:
        """``entry`` with the summary kinds that resolved to None (nothing was written) moved
        from its kinds to its ``skipped`` kinds."""
        left = tuple(k for k in entry.sidecars if entry.sidecar_path(k) in self._unwritten)
        if not left:
            return entry
        kept = tuple(k for k in entry.sidecars if k not in left)
        return dataclasses.replace(entry, sidecars=kept, skipped=(*entry.skipped, *left))

    def _span_without_unwritten(self, span: SpanEntry) -> SpanEntry:
        left = tuple(k for k in span.kinds if span.path(k) in self._unwritten)
        if not left:  # a span left with no kind stays, to say its days were summarized
            return span
        kept = tuple(k for k in span.kinds if k not in left)
        return dataclasses.replace(span, kinds=kept, skipped=(*span.skipped, *left))

    def pending(self) -> Snapshot:
        """The state this transaction would commit, as staged so far (its txid is empty)."""
        return self._next("")[0]

    def staged_summaries(self) -> dict[str, dict[str, TableOrFuture]]:
        """The summary tables (or their futures) of the data files staged so far, by path."""
        return {s.entry.path: dict(s.sidecars) for s in self._staged}

    def _next(self, txid: str) -> tuple[Snapshot, list[SpanEntry]]:
        """The snapshot this transaction commits, and the spans it drops."""
        kept_spans, dropped_spans = [], []
        added_days = {day_number(s.entry.date) for s in self._staged}
        for span in self.base.spans:
            kept = self._span_after(span, added_days)
            if kept is None:
                dropped_spans.append(span)
            else:
                kept_spans.append(kept)
        # Only the files this transaction adds or changes are touched: the new state is the
        # base's, changed (see Snapshot.evolve).
        by_path = self.base.by_path
        added = [self._with_more(by_path[p]) for p in self._more if p not in self._removed]
        added += [s.entry for s in self._staged]
        failed = {span.name for span in self.failed_spans}
        new_spans = [ns.span for ns in self._new_spans if ns.span.name not in failed]
        if self._unwritten:
            added = [self._without_unwritten(e) for e in added]
            new_spans = [self._span_without_unwritten(sp) for sp in new_spans]
        new = self.base.evolve(
            self._removed.keys(),
            added,
            version=self.base.version + 1,
            txid=txid,
            schema_version=self.schema_version,
            next_id=self.next_id,
            spans=tuple(kept_spans) + tuple(new_spans),
            retention=self.retention,
        )
        by_date = new.by_date()
        for new_span in self._new_spans:
            days = range(new_span.span.first_day, new_span.span.last_day + 1)
            covered = [f.path for d in days for f in by_date.get(day_date(d), ())]
            if new_span.files != tuple(sorted(covered)):
                raise ValueError("a span must cover the files this commit leaves in its days")
        return new, dropped_spans

    def _span_after(self, span: SpanEntry, added_days: set[int]) -> SpanEntry | None:
        """What becomes of a span of the base: dropped (None) when this transaction removes a
        file it summarizes; when it adds files to its days, made partial, listing the files
        the day had, if it is a span of one day of at most ``MAX_SPAN_FILES`` files (a span of
        several days is dropped: listing its files would read the entries of all its days)."""
        if span.name in self._dropped_spans or any(span.covers(e) for e in self._removed.values()):
            return None
        if span.partial or not any(span.first_day <= d <= span.last_day for d in added_days):
            return span
        if span.first_day != span.last_day:
            return None
        files = self.base.files_between(day_date(span.first_day), day_date(span.last_day))
        if len(files) > manifest.MAX_SPAN_FILES:
            return None
        return dataclasses.replace(span, files=tuple(sorted(e.path for e in files)))

    def _with_more(self, entry: FileEntry) -> FileEntry:
        more = self._more.get(entry.path)
        if not more:
            return entry
        return dataclasses.replace(entry, sidecars=(*entry.sidecars, *more))

    def _write_files(
        self, staged_files: Sequence[_Staged] | None = None, *, with_others: bool = True
    ) -> None:
        """Write every new file: the data files on this thread, meanwhile the summary files
        (waiting for those still being computed) on another; pyarrow releases the GIL.

        ``staged_files`` (default: those not flushed yet) are the data files to write; without
        ``with_others``, only they and their summaries are written (see :meth:`flush`).
        """
        dirs: set[Path] = set()
        new_dirs: set[Path] = set()
        if staged_files is None:
            staged_files = self._staged[self._flushed :]
        data: list[_Out] = [
            (staged.entry.path, staged.table, "data", None) for staged in staged_files
        ]
        summaries: list[_Out] = [
            (staged.entry.sidecar_path(k), t, "summary", None)
            for staged in staged_files
            for k, t in staged.sidecars.items()
        ]
        if not with_others:
            self._write_all(data, summaries, dirs, new_dirs)
            return
        by_path = self.base.by_path
        summaries += [
            (by_path[path].sidecar_path(k), t, "summary", None)
            for path, tables in self._more.items()
            for k, t in tables.items()
        ]
        summaries += [
            (new_span.span.path(k), t, "summary", new_span)
            for new_span in self._new_spans
            for k, t in new_span.tables.items()
        ]
        self._write_all(data, summaries, dirs, new_dirs)

    def _write_all(
        self, data: list[_Out], summaries: list[_Out], dirs: set[Path], new_dirs: set[Path]
    ) -> None:
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
        self._ds.sync_folders(dirs | {d.parent for d in new_dirs})

    def _write(
        self,
        files: list[_Out],
        dirs: set[Path],
        new_dirs: set[Path],
    ) -> None:
        """Write each (path, table, kind) (see ``Dataset.write_file``)."""
        for rel, table, kind, of_span in files:
            source = table
            if of_span is not None and isinstance(table, Future | SpanTable):
                # A span whose computation failed is left out (see add_span).
                if of_span.span in self.failed_spans:
                    continue
                try:
                    table = table.result()
                except Exception:
                    self.failed_spans.append(of_span.span)
                    continue
            elif isinstance(table, Future | SpanTable):
                table = table.result()
            if table is None:  # computed, and found not worth writing: left out
                self._unwritten.add(rel)
                continue
            self.written.append(rel)
            self._ds.write_file(rel, table, kind, dirs, new_dirs)
            del table
            if isinstance(source, SpanTable):
                source.written()


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
