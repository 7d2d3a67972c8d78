"""Writing: appends, deletes and compaction, each one transaction of ``_storage``.

The caller (``Store``) validates arguments; this module lays out the files. An append writes one
data file per day of its batch, with the summaries of each grain for large ones, merges a
day's small files as they accumulate, and commits the spans of the days before the batch with
its rows. A delete unlinks whole files and rewrites the files it cuts; compaction rewrites
each partition with small files as files cut by time.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import _layout
from ._reads import read_rows
from ._storage import (
    Dataset,
    FileEntry,
    Snapshot,
    SpanEntry,
    SpanTable,
    Transaction,
    history,
)
from ._storage.files import DATA_ROW_GROUP
from ._storage.fileset import date_of
from ._storage.manifest import day_number
from ._summaries import (
    ROLLUP_THREADS,
    SPAN_KINDS,
    SPAN_PARTS,
    Compressed,
    Computed,
    Summaries,
    day_groups,
    file_worth,
    open_day_is_due,
    submit_rollups,
)
from .errors import ConcurrentWriteError, DuplicateUsageError, LockTimeoutError
from .reports import grains
from .schema import KEY_COLUMNS, NS_PER_DAY, arrow_schema

__all__ = ["Writer", "repeated_keys"]

_DUPLICATES_SHOWN: Final = 10
#: How many times an append on object storage is run again after a conflicting commit.
_APPEND_ATTEMPTS: Final = 20


def _date_name(day: int) -> str:
    """The partition date of a day number (days since the epoch)."""
    return str(np.datetime64(day, "D"))


def _size_class(rows: int) -> int | None:
    """The size class small files are merged within: rows below ``MERGE_FANOUT``, below its
    square, ...; None from ``MERGE_BELOW_ROWS`` rows up (never merged on append)."""
    if rows >= _layout.MERGE_BELOW_ROWS:
        return None
    size_class, bound = 0, _layout.MERGE_FANOUT
    while rows >= bound:
        size_class, bound = size_class + 1, bound * _layout.MERGE_FANOUT
    return size_class


class Writer:
    """The write paths of one store."""

    def __init__(self, ds: Dataset, summaries: Summaries) -> None:
        self._ds = ds
        self._summaries = summaries

    # -- appends -----------------------------------------------------------------------------

    def append(self, batch: pd.DataFrame, on_conflict: str) -> int:
        """Append a validated batch (stored dtypes, no repeated keys); returns rows written.

        On object storage, a write that another writer's commit conflicted with (see
        ``objects``) is run again on the newer state, up to ``_APPEND_ATTEMPTS`` times.
        """
        for attempt in range(1, _APPEND_ATTEMPTS + 1):
            try:
                return self.append_batches([batch], on_conflict)
            except ConcurrentWriteError:
                if attempt == _APPEND_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def append_batches(self, batches: Iterable[pd.DataFrame], on_conflict: str) -> int:
        """Append validated batches (stored dtypes, no key repeated inside a batch) in one
        commit; returns rows written. Each batch is checked against the stored rows and those
        of the batches before it, and its files are written before the next batch is taken
        (``Transaction.flush``), so only one batch is held at a time."""
        summaries = self._summaries
        with contextlib.ExitStack() as stack:
            tx = stack.enter_context(self._ds.transaction())
            tx.check_added = functools.partial(self._check_added, tx, on_conflict)
            pool: ThreadPoolExecutor | None = None
            staged: dict[str, Future[Computed] | None] = {}
            # The summaries of the files of earlier batches (on disk by now), for the spans.
            earlier: dict[str, Future[Computed]] = {}
            first_day = last_day = -1
            written = 0
            for batch in batches:
                if batch.empty:
                    continue
                if staged:
                    tx.flush()  # the rows of the batches before go to disk and are let go
                    # ... and the memory they held goes back to the system (pyarrow's
                    # allocator keeps freed pages otherwise: up to a fifth of a load's peak).
                    pa.default_memory_pool().release_unused()
                    # Their summaries are computed by now (the flush wrote them); the spans
                    # need only the kinds that spans have, kept compressed (by the second
                    # thread, while this one goes on) for the spans of the commit.
                    for path, future in staged.items():
                        if future is not None and pool is not None:
                            kinds = {k: t for k, t in future.result().items() if k in SPAN_KINDS}
                            earlier[path] = pool.submit(Compressed, kinds)
                batch = batch.reset_index(drop=True)
                days = batch["timestamp"].to_numpy() // NS_PER_DAY
                stored = self._stored_keys(tx.pending() if tx.flushed else tx.base, batch, days)
                if stored.any():
                    if on_conflict == "error":
                        raise duplicate_error(batch.loc[stored], "already stored")
                    batch = batch.loc[~stored].reset_index(drop=True)
                    days = days[~stored]
                    if batch.empty:
                        continue
                first = tx.reserve_ids(len(batch))
                batch.insert(0, "created_at", pd.Timestamp.now(tz="UTC").as_unit("us"))
                batch.insert(0, "id", np.arange(first, first + len(batch), dtype=np.int64))
                table = pa.Table.from_pandas(batch, schema=arrow_schema(), preserve_index=False)
                rollups: dict[int, tuple[dict[str, Future[pa.Table | None]], Future[Computed]]]
                rollups = {}
                if len(batch) >= _layout.ROLLUP_MIN_ROWS:
                    # Other threads summarize while this one stages and writes the rows
                    # (pyarrow releases the GIL). The pool is shut down only after the commit.
                    if pool is None:
                        pool = ThreadPoolExecutor(ROLLUP_THREADS, "usage-analytics-rollups")
                        stack.enter_context(pool)
                    rollups = submit_rollups(pool, table, days)
                # Only the files of the last batch are still staged in memory (the spans below
                # need to know which of them have summaries); the others are on disk.
                staged = self._stage_by_date(tx, table, days, batch["tenant"], rollups)
                del table, batch
                lo, hi = int(days.min()), int(days.max())
                first_day = lo if written == 0 else min(first_day, lo)
                last_day = max(last_day, hi)
                written += len(days)
            if written == 0:
                return 0
            spans: list[tuple[SpanEntry, dict[str, SpanTable]]] = []
            if pool is not None:
                # Spans go into the same commit: those of the days before the first day
                # written (loads run forward in time, so those days are taken as loaded), and
                # that of the day still loading when it is due. They are planned on the state
                # the commit will leave and computed while this thread writes the data files;
                # the commit writes them as they come, and leaves out any whose computation
                # fails.
                after = tx.pending()
                # Every day before the last batch's first day is complete: batches run
                # forward in time (a batch that does not only delays its days' spans).
                batch_first_day = min(day_number(date_of(p)) for p in staged if p in after.by_path)
                plans = summaries.plan_spans(
                    after,
                    max(first_day, batch_first_day),
                    staged,
                    last_day if open_day_is_due(after, last_day) else None,
                )
                staged_and_earlier = {**earlier, **staged}
                for plan in plans:
                    if plan.replaces is not None:
                        tx.drop_span(plan.replaces)
                    tables = {k: SpanTable() for k in SPAN_KINDS}
                    spans.append((tx.add_span(plan.first, plan.last, tables, plan.files), tables))
                if plans:
                    # A part of the kinds per thread, each setting the futures of its kinds
                    # (the day's file summaries are computed by then, or being computed:
                    # their jobs were submitted first).
                    futures = [f for _, f in spans]
                    for part in SPAN_PARTS:
                        pool.submit(
                            summaries.span_tables, after, plans, staged_and_earlier, futures, part
                        )
            # The commit lets go of each span's tables once written, but for those of the
            # spans the store remembers after it.
            for _, tables in spans[: -_layout.RECENT_SPANS]:
                for table in tables.values():
                    table.keep = False
            if tx.flushed:
                # A load of many batches: the memory of those written goes back before the
                # commit's spans (in a single batch's write, that costs 15% of its time:
                # every page is faulted in again).
                pa.default_memory_pool().release_unused()
            tx.commit()
            summaries.remember_rollups({p: f for p, f in staged.items() if f is not None})
            failed = {span.name for span in (*tx.failed_spans, *tx.stale_spans)}
            summaries.remember_spans(
                {
                    span.name: {k: f.result() for k, f in tables.items()}
                    for span, tables in spans
                    if span.name not in failed
                }
            )
        if tx.failed_spans:
            exc = next(e for _, fs in spans for f in fs.values() if (e := f.exception()))
            warnings.warn(
                f"the rows were written, but summarizing their days failed ({exc}); "
                f"compact() or the next load builds those summaries",
                RuntimeWarning,
                stacklevel=4,
            )
        if pool is not None and last_day - first_day >= 2:
            # A write of several days (an import of history) brought whole days of its own;
            # those of them without summaries are summarized from their rows, which can be
            # read only now. They are committed apart, skipped when another writer holds the
            # lock, and a failure to build them is only a warning (compact() builds them).
            try:
                summaries.build_spans(before_day=last_day, lock_timeout=0)
            except LockTimeoutError:
                pass
            except Exception as exc:  # the rows are committed: nothing here may undo that
                warnings.warn(
                    f"the rows were written, but summarizing the days before them failed "
                    f"({exc}); compact() builds those summaries later",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return written

    def _stage_by_date(
        self,
        tx: Transaction,
        table: pa.Table,
        days: np.ndarray,
        tenant: pd.Series,
        rollups: Mapping[int, tuple[Mapping[str, Future[pa.Table | None]], Future[Computed]]],
    ) -> dict[str, Future[Computed] | None]:
        """Stage one file per day, with the summaries of each day's rows when ``rollups`` has
        them (being computed); returns, by the path of each file staged, the future of every
        summary computed for it (None for a file too small for summaries).

        Rows already in time order (as loads usually are) keep it: each day's rows are then a
        slice of ``table``, not a copy, and statistics prune them by time. Other rows are
        sorted by (tenant, timestamp), so that statistics prune them by tenant as well.
        """
        staged: dict[str, Future[Computed] | None] = {}
        timestamps = table.column("timestamp").to_numpy()
        order: np.ndarray | None = None
        ordered = table
        if not (timestamps[1:] >= timestamps[:-1]).all():
            tenant_codes = pd.factorize(tenant, sort=True)[0]
            order = np.lexsort((timestamps, tenant_codes, days))
            ordered = table.take(pa.array(order))
        start = 0
        for day, chunk in day_groups(days, order):
            rows = ordered.slice(start, len(chunk))
            merged = self._merge_small(tx, _date_name(day), rows)
            if day in rollups and merged is None:
                written, computed_future = rollups[day]
                staged[tx.add(_date_name(day), rows, written).path] = computed_future
            else:
                entry, computed = self._add(tx, _date_name(day), rows if merged is None else merged)
                staged[entry.path] = _done(computed)
            start += len(chunk)
        return staged

    def _merge_small(self, tx: Transaction, date: str, rows: pa.Table) -> pa.Table | None:
        """When ``rows`` would be the ``MERGE_FANOUT``-th small file of its size class in
        partition ``date``, stage the removal of the others and return all their rows with
        ``rows``, sorted, to be written as one file (and so on up the size classes); None when
        there is nothing to merge.

        Single-row appends would otherwise leave a file each, and every report over their day
        would open them all: with merges, a day of n such appends holds O(log n) files, and
        each row is rewritten at most once per size class.
        """
        if _size_class(rows.num_rows) is None:
            return None  # a large file, as bulk loads write: nothing to look at
        peers_of = {e.path: e for e in tx.base.by_date().get(date, [])}
        merged: pa.Table | None = None
        current = rows
        while (size_class := _size_class(current.num_rows)) is not None:
            peers = [e for e in peers_of.values() if _size_class(e.rows) == size_class]
            if len(peers) + 1 < _layout.MERGE_FANOUT:
                break
            for entry in peers:
                tx.remove(entry)
                del peers_of[entry.path]
            current = pa.concat_tables([*(read_rows(self._ds, e) for e in peers), current])
            current = current.sort_by([("tenant", "ascending"), ("timestamp", "ascending")])
            merged = current
        return merged

    def _check_added(self, tx: Transaction, on_conflict: str, added: list[FileEntry]) -> None:
        """Another writer committed ``added`` while this append ran (on object storage):
        refuse to commit on top of it when one of its rows has a key this append writes."""
        by_date: dict[str, list[FileEntry]] = {}
        for entry in added:
            by_date.setdefault(entry.date, []).append(entry)
        for entry in tx.added:
            lo, hi = entry.min("timestamp"), entry.max("timestamp")
            theirs = [
                self._ds.read_file(
                    o, KEY_COLUMNS, (pc.field("timestamp") >= lo) & (pc.field("timestamp") <= hi)
                )
                for o in by_date.get(entry.date, [])
                if o.max("timestamp") >= lo and o.min("timestamp") <= hi
            ]
            if not theirs:
                continue
            ours = self._ds.read_file(entry, KEY_COLUMNS).to_pandas()
            common = ours.merge(pa.concat_tables(theirs).to_pandas(), on=list(KEY_COLUMNS))
            if common.empty:
                continue
            if on_conflict == "error":
                raise duplicate_error(common, "were committed by another writer meanwhile")
            raise ConcurrentWriteError(
                f"another writer committed rows with {len(common)} of the keys this write "
                f"adds to {self._ds.where} meanwhile; nothing was written: run the write "
                "again (it then skips them)"
            )

    def _stored_keys(self, snap: Snapshot, batch: pd.DataFrame, days: np.ndarray) -> np.ndarray:
        """A mask of the batch rows whose key is already stored.

        Only files whose timestamp range overlaps the batch's in the same partition are read,
        and only their key columns within that range.
        """
        found = np.zeros(len(batch), dtype=bool)
        by_date = snap.by_date()
        timestamps = batch["timestamp"].to_numpy()
        for day, idx in day_groups(days):
            lo, hi = int(timestamps[idx].min()), int(timestamps[idx].max())
            tables = [
                self._ds.read_file(
                    entry,
                    KEY_COLUMNS,
                    (pc.field("timestamp") >= lo) & (pc.field("timestamp") <= hi),
                )
                for entry in by_date.get(_date_name(day), [])
                if entry.max("timestamp") >= lo and entry.min("timestamp") <= hi
            ]
            tables = [t for t in tables if t.num_rows]
            if not tables:
                continue
            existing = pa.concat_tables(tables).to_pandas()
            candidates = idx[np.isin(timestamps[idx], existing["timestamp"].to_numpy())]
            if not len(candidates):
                continue
            stored_index = pd.MultiIndex.from_frame(existing[list(KEY_COLUMNS)].astype(object))
            keys = pd.MultiIndex.from_frame(batch.loc[candidates, list(KEY_COLUMNS)].astype(object))
            found[candidates[keys.isin(stored_index)]] = True
        return found

    def _add(
        self, tx: Transaction, date: str, table: pa.Table
    ) -> tuple[FileEntry, Computed | None]:
        """Stage a data file with its summaries worth writing, computed from the same rows;
        returns its entry and every summary computed (None: the file is too small for any)."""
        if table.num_rows < _layout.ROLLUP_MIN_ROWS:
            return tx.add(date, table), None
        computed = grains.rollups(table)
        written = {k: file_worth(k, t, table.num_rows) for k, t in computed.items()}
        return tx.add(date, table, written), computed

    # -- deletes -----------------------------------------------------------------------------

    def delete(self, cutoff: int, limit: int | None) -> int:
        """Delete rows before ``cutoff`` (clamped), oldest first, at most ``limit``."""
        remaining = limit
        deleted = 0
        with self._ds.transaction() as tx:
            for entries in tx.base.by_date().values():
                if remaining == 0:
                    break
                candidates = [e for e in entries if e.min("timestamp") < cutoff]
                if not candidates:
                    break  # later partitions hold only later rows
                n = self._delete_in_partition(tx, candidates, cutoff, remaining)
                deleted += n
                if remaining is not None:
                    remaining -= n
            tx.operation = "DELETE"
            tx.commit()
        return deleted

    def _delete_in_partition(
        self, tx: Transaction, candidates: list[FileEntry], cutoff: int, limit: int | None
    ) -> int:
        whole = [e for e in candidates if e.max("timestamp") < cutoff]
        partial = [e for e in candidates if e.max("timestamp") >= cutoff]
        whole_rows = sum(e.rows for e in whole)
        if limit is None or (not partial and whole_rows <= limit):
            for entry in whole:
                tx.remove(entry)
            return whole_rows + sum(self._rewrite_without(tx, e, cutoff, None) for e in partial)
        # A limit falls inside this partition: pick the oldest rows by (timestamp, id).
        keys = pa.concat_tables(
            [
                self._ds.read_file(e, ("timestamp", "id"), pc.field("timestamp") <= cutoff - 1)
                for e in candidates
            ]
        ).to_pandas()
        keys = keys.sort_values(["timestamp", "id"], kind="stable").iloc[:limit]
        doomed = pa.array(keys["id"].to_numpy())
        total = 0
        for entry in candidates:
            total += self._rewrite_without(tx, entry, cutoff, doomed)
        return total

    def _rewrite_without(
        self, tx: Transaction, entry: FileEntry, cutoff: int, ids: pa.Array | None
    ) -> int:
        """Stage ``entry`` rewritten without its rows before ``cutoff`` (and, when ``ids`` is
        given, only those among them); returns how many rows go."""
        table = read_rows(self._ds, entry)
        gone = pc.less_equal(table.column("timestamp"), cutoff - 1)  # int64 even at 2**63
        if ids is not None:
            gone = pc.and_(gone, pc.is_in(table.column("id"), value_set=ids))
        n = int(pc.sum(gone).as_py() or 0)
        if n == 0:
            return 0
        tx.remove(entry)
        if n < table.num_rows:
            self._add(tx, entry.date, table.filter(pc.invert(gone)))
        return n

    # -- upgrades ----------------------------------------------------------------------------

    def upgrade(self) -> int:
        """Create the dataset, or upgrade it to the current schema version in one commit: its
        data files of older versions rewritten in the current one, the columns they predate as
        zeros (as the store reads them), so that engines reading the files or the Delta log
        see what the store does, and never a state between; returns how many files. Rows are
        unchanged (ids included), one file in memory at a time."""
        done = 0

        def rewrite(tx: Transaction) -> None:
            nonlocal done
            done += self._stage_old_files(tx, tx.base.files)

        self._ds.create(rewrite)
        # Files an upgrade by an earlier version left (it committed the schema first).
        snap = self._ds.snapshot()
        dates = sorted({e.date for e in snap.files if e.schema_version < self._ds.schema_version})
        for date in dates:
            with self._ds.transaction() as tx:
                done += self._stage_old_files(tx, tx.base.by_date().get(date, []))
                tx.commit()
        if done:
            self._summaries.build_spans()
        return done

    def _stage_old_files(self, tx: Transaction, entries: Iterable[FileEntry]) -> int:
        """Stage each of ``entries`` of an older schema version than ``tx``'s rewritten in it,
        each written before the next is read; returns how many."""
        old = [e for e in entries if e.schema_version < tx.schema_version]
        for entry in old:
            tx.remove(entry)
            self._add(tx, entry.date, read_rows(self._ds, entry))
            tx.flush()
        if old:
            tx.operation = "UPGRADE"
        return len(old)

    # -- compaction --------------------------------------------------------------------------

    def compact(self, progress: bool = False) -> int:
        """Rewrite each partition with small files as files cut by time; returns how many.
        With ``progress``, a bar on stderr counts the partitions (shown after a second)."""
        from tqdm import tqdm

        done = 0
        dates = self._ds.snapshot().dates()
        bar = tqdm(
            dates,
            desc="compacting",
            unit="partition",
            disable=not progress,
            delay=1.0,
            file=sys.stderr,
            leave=False,
        )
        for date in bar:
            with self._ds.transaction() as tx:
                entries = tx.base.by_date().get(date, [])
                target = _layout.COMPACT_FILE_ROWS
                if len(entries) < 2 or all(e.rows >= target // 2 for e in entries):
                    continue
                merged = pa.concat_tables([read_rows(self._ds, e) for e in entries])
                merged = merged.sort_by([("timestamp", "ascending"), ("id", "ascending")])
                pieces = -(-merged.num_rows // target)
                size = -(-merged.num_rows // pieces)
                for entry in entries:
                    tx.remove(entry)
                for start in range(0, merged.num_rows, size):
                    self._add(tx, date, _by_tenant_in_row_groups(merged.slice(start, size)))
                tx.operation = "OPTIMIZE"
                tx.commit()
                done += 1
        self._summaries.fill_missing()
        self._summaries.build_spans()
        if self._ds.snapshot().retention:  # the files replaced long enough ago go
            history.vacuum(self._ds, None, dry_run=False)
        return done


def _by_tenant_in_row_groups(rows: pa.Table) -> pa.Table:
    """Rows in time order as a compacted file holds them: each row group (a range of time, as
    in a bulk-loaded file, which a time filter prunes) sorted by tenant, then time (runs of a
    tenant, which compress better and summarize in order)."""
    step = DATA_ROW_GROUP
    parts = [
        rows.slice(at, step).sort_by([("tenant", "ascending"), ("timestamp", "ascending")])
        for at in range(0, rows.num_rows, step)
    ]
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def _done(computed: Computed | None) -> Future[Computed] | None:
    """``computed`` as a resolved future (None stays None)."""
    if computed is None:
        return None
    future: Future[Computed] = Future()
    future.set_result(computed)
    return future


def repeated_keys(batch: pd.DataFrame) -> np.ndarray:
    """A mask of the rows whose ``(user_id, timestamp)`` key an earlier row of the batch has.

    Keys can repeat only among rows with equal timestamps, which are few in real data: only
    those rows are hashed, so that a large batch costs one sort of its timestamps.
    """
    timestamps = batch["timestamp"].to_numpy()
    order = np.argsort(timestamps, kind="stable")
    ordered = timestamps[order]
    same = ordered[1:] == ordered[:-1]
    repeated = np.zeros(len(batch), dtype=bool)
    if not same.any():
        return repeated
    tied = np.zeros(len(batch), dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    rows = np.sort(order[tied])  # batch order, so that the first of each key is kept
    keys = batch.iloc[rows][list(KEY_COLUMNS)]
    repeated[rows] = keys.duplicated(keep="first").to_numpy()
    return repeated


def duplicate_error(rows: pd.DataFrame, where: str) -> DuplicateUsageError:
    keys = rows[list(KEY_COLUMNS)].drop_duplicates().reset_index(drop=True)
    shown = ", ".join(
        f"({u!r}, {t})" for u, t in keys.head(_DUPLICATES_SHOWN).itertuples(index=False)
    )
    more = f" and {len(keys) - _DUPLICATES_SHOWN} more" if len(keys) > _DUPLICATES_SHOWN else ""
    return DuplicateUsageError(
        f"{len(keys)} (user_id, timestamp) key(s) {where}: {shown}{more}; nothing was written. "
        "Pass on_conflict='ignore' to skip rows whose key is already there.",
        keys,
    )
