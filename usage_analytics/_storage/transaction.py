"""A transaction: the files a write adds and removes, committed at once (see ``dataset``)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import StorageError
from .faults import fault
from .files import (
    check_partition_folder,
    fsync_dir,
    remove_files,
    replace_bytes,
    unlink_missing_ok,
    write_summary,
)
from .manifest import (
    PARTITION_PREFIX,
    SIDECAR_KIND_RE,
    SPAN_DIR,
    FileEntry,
    Snapshot,
    SpanEntry,
    check_relative_path,
    day_number,
    json_bytes,
)

if TYPE_CHECKING:
    from .dataset import Dataset

__all__ = ["TableOrFuture", "Transaction"]

#: A table to write, or the future of one still being computed on another thread.
TableOrFuture: TypeAlias = "pa.Table | Future[pa.Table | None] | None"


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
        #: Seconds the files this commit removes are kept (0: removed right after it).
        self.retention = base.retention
        self._staged: list[_Staged] = []
        self._removed: dict[str, FileEntry] = {}
        self._new_spans: list[_NewSpan] = []
        self._dropped_spans: set[str] = set()
        self._done = False
        #: Spans staged as futures whose computation failed: the commit left them out.
        self.failed_spans: list[SpanEntry] = []
        #: Summary files whose future resolved to None (not worth writing): left out.
        self._unwritten: set[str] = set()
        #: Summaries added to files of the base state, by the file's path.
        self._more: dict[str, dict[str, TableOrFuture]] = {}
        #: How many staged data files flush() has written; the txid their journal names.
        self._flushed = 0
        self._txid: str | None = None
        #: What the commit log names the commit (Delta Lake's operation names).
        self.operation = "WRITE"

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
        for rel in (p for s in pending for p in s.entry.all_paths):  # the others were checked
            for folder in check_relative_path(rel, sidecar_ok=True):
                check_partition_folder(ds.root / folder)
        try:
            journal = {"txid": self._txid, "adds": adds, "removes": []}
            replace_bytes(ds.journal_path, json_bytes(journal), "journal_tmp_written")
            self._write_files(pending, with_others=False)
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                ds._recover()
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | StorageError):
                raise StorageError(
                    exc.errno or errno.EIO,
                    f"writing to {ds.root} failed ({exc.strerror or exc}); nothing was changed",
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
            self._ds._recover()

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
        new, dropped_spans = self._next(self._txid or uuid.uuid4().hex)
        txid = new.txid
        adds = [p for s in self._staged for p in s.entry.all_paths]
        adds += [p for new_span in self._new_spans for p in new_span.span.all_paths]
        by_path = {e.path: e for e in self.base.files}
        adds += [by_path[p].sidecar_path(k) for p, more in self._more.items() for k in more]
        removes = [p for e in self._removed.values() for p in e.all_paths]
        removes += [p for span in dropped_spans for p in span.all_paths]
        for rel in {*adds, *removes}:
            for folder in check_relative_path(rel, sidecar_ok=True):
                check_partition_folder(ds.root / folder)
        committed = False
        try:
            journal = {"txid": txid, "adds": adds, "removes": removes}
            replace_bytes(ds.journal_path, json_bytes(journal), "journal_tmp_written")
            fault("journal_written")
            self._write_files()
            if self._unwritten:
                new = self._without_unwritten(new)
            if self.failed_spans:
                failed = {span.name for span in self.failed_spans}
                for span in self.failed_spans:  # a kind that was computed may be written
                    for rel in span.all_paths:
                        unlink_missing_ok(ds.root / rel)
                with contextlib.suppress(FileNotFoundError):  # none may have been written
                    fsync_dir(ds.root / SPAN_DIR)
                new = dataclasses.replace(
                    new, spans=tuple(sp for sp in new.spans if sp.name not in failed)
                )
            new = ds.commit(self.base, new, operation=self.operation)
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
            # With a retention the removed files stay for older versions, until a vacuum.
            self._cleanup([] if new.retention else removes)
        ds.after_commit(new)

    def _without_unwritten(self, new: Snapshot) -> Snapshot:
        """``new`` with the summary kinds that resolved to None moved from the entries' kinds to
        their ``skipped`` kinds."""
        files = []
        for f in new.files:
            left = tuple(k for k in f.sidecars if f.sidecar_path(k) in self._unwritten)
            if left:
                kept = tuple(k for k in f.sidecars if k not in left)
                f = dataclasses.replace(f, sidecars=kept, skipped=(*f.skipped, *left))
            files.append(f)
        spans = []
        for span in new.spans:
            left = tuple(k for k in span.kinds if span.path(k) in self._unwritten)
            if left:  # a span left with no kind stays, to say its days were summarized
                kept = tuple(k for k in span.kinds if k not in left)
                span = dataclasses.replace(span, kinds=kept, skipped=(*span.skipped, *left))
            spans.append(span)
        return dataclasses.replace(new, files=tuple(files), spans=tuple(spans))

    def pending(self) -> Snapshot:
        """The state this transaction would commit, as staged so far (its txid is empty)."""
        new = self._next("")[0]
        return self._without_unwritten(new) if self._unwritten else new

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
        files = [self._with_more(f) for f in self.base.files if f.path not in self._removed]
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
            retention=self.retention,
        )
        return new, dropped_spans

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
            (staged.entry.path, staged.table, self._ds._write_data, None) for staged in staged_files
        ]
        summaries: list[_Out] = [
            (staged.entry.sidecar_path(k), t, write_summary, None)
            for staged in staged_files
            for k, t in staged.sidecars.items()
        ]
        if not with_others:
            self._write_all(data, summaries, dirs, new_dirs)
            return
        by_path = {e.path: e for e in self.base.files}
        summaries += [
            (by_path[path].sidecar_path(k), t, write_summary, None)
            for path, tables in self._more.items()
            for k, t in tables.items()
        ]
        summaries += [
            (new_span.span.path(k), t, write_summary, new_span)
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
        for written in dirs | {d.parent for d in new_dirs}:
            fsync_dir(written)

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
            if table is None:  # computed, and found not worth writing: left out
                self._unwritten.add(rel)
                continue
            final = root / rel
            for folder in check_relative_path(rel, sidecar_ok=True):
                path = root / folder
                check_partition_folder(path)
                if not path.exists():
                    path.mkdir()
                    new_dirs.add(path)
            dirs.add(final.parent)
            tmp = final.with_name("." + final.name + ".tmp")
            writer(table, tmp)
            fault("data_tmp_written")
            os.replace(tmp, final)
            fault("data_renamed")

    def _cleanup(self, removes: Iterable[str]) -> None:
        ds = self._ds
        fault("committed")
        remove_files(ds.root, removes, each=lambda: fault("file_removed"))
        fault("cleanup_done")
        ds.journal_path.unlink()
        fsync_dir(ds.root)


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
