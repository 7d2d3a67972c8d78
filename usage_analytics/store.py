"""``Store``: the usage store on a date-partitioned Parquet dataset.

The store validates input, asks the dataset layer (``_dataset``) to commit files, and asks
``queries`` to aggregate what it reads. It never touches the disk itself.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import queries
from ._storage import Dataset, FileEntry, Snapshot, SpanEntry, Transaction, day_number
from ._validation import prepare_batch, to_bound, to_window
from .errors import (
    DuplicateUsageError,
    InvalidArgumentError,
    LockTimeoutError,
)
from .schema import (
    ADDED_IN_V2,
    COLUMNS,
    CREATED_AT_DTYPE,
    INT32_COLUMNS,
    KEY_COLUMNS,
    NS_PER_DAY,
    SCHEMA_VERSION,
    STRING_COLUMNS,
    arrow_schema,
    columns_for_version,
)

__all__ = ["DatasetInfo", "Store"]

_DUPLICATES_SHOWN: Final = 10
ROLLUP_MIN_ROWS: Final = 1024
#: Spans cover aligned blocks of 1, 2, 4, ... days, up to 2**MAX_SPAN_LEVEL days.
MAX_SPAN_LEVEL: Final = 10
_KINDS: Final = ("summary", "groups")
#: Small files of a partition are merged on append once this many share a size class.
MERGE_FANOUT: Final = 32
#: Files of this many rows or more are never merged on append (compact() rewrites them along
#: with the small files of their partition).
MERGE_BELOW_ROWS: Final = MERGE_FANOUT * MERGE_FANOUT
#: compact() writes files of at most this many rows, each a range of time.
COMPACT_FILE_ROWS: Final = 1 << 17
#: A day still being loaded gets spans once it holds this many files with rollups (and again
#: at twice, four times ... as many).
OPEN_DAY_FILES: Final = 4
_RECENT_SPANS: Final = 16
_RECENT_ROLLUPS: Final = 8


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds (:meth:`Store.info`)."""

    root: Path
    schema_version: int
    rows: int
    files: int
    partitions: int
    first_timestamp: int | None
    last_timestamp: int | None


def _date_name(day: int) -> str:
    """The partition date of a day number (days since the epoch)."""
    return str(np.datetime64(day, "D"))


def _day_groups(days: np.ndarray, order: np.ndarray | None = None) -> list[tuple[int, np.ndarray]]:
    """Row positions per day, days ascending; ``order`` (sorted by day first) is kept within."""
    if order is None:
        if len(days) and days.min() == days.max():  # the common case: one day
            return [(int(days[0]), np.arange(len(days)))]
        order = np.argsort(days, kind="stable")
    sorted_days = days[order]
    bounds = np.flatnonzero(sorted_days[1:] != sorted_days[:-1]) + 1
    return [(int(days[chunk[0]]), chunk) for chunk in np.split(order, bounds) if len(chunk)]


def _to_frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    for name in df.columns:
        if name in STRING_COLUMNS:
            df[name] = df[name].astype("str")
        elif name in INT32_COLUMNS:
            df[name] = df[name].astype(np.int32)
        elif name == "created_at":
            df[name] = df[name].astype(CREATED_AT_DTYPE)
    return df


class Store:
    """API and LLM usage records in a date-partitioned Parquet dataset.

    Args:
        root: the dataset's folder; ``auto_migrate()`` creates it.
        lock_timeout: seconds a write waits for another writer before raising
            :class:`~usage_analytics.LockTimeoutError` (``math.inf``: as long as it takes).

    Example:
        >>> from usage_analytics import Usage
        >>> store = Store(tmp / "usage")
        >>> store.auto_migrate()
        >>> store.create_usage(Usage(user_id="u0", tenant="t0", api_method="GetFoo",
        ...                          status_code=200, timestamp=1_610_000_000, latency_ms=100))
        1
        >>> store.aggregated_usage("t0", 0, 2_000_000_000)
          api_method  total_requests  success_requests  failure_requests  average_latency
        0     GetFoo               1                 1                 0            100.0
    """

    def __init__(self, root: str | os.PathLike[str], *, lock_timeout: float = 60.0) -> None:
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, int | float):
            raise InvalidArgumentError(f"lock_timeout must be seconds, not {lock_timeout!r}")
        if math.isnan(lock_timeout) or lock_timeout < 0:
            raise InvalidArgumentError(
                f"lock_timeout must be seconds >= 0 (math.inf: wait as long as it takes), not "
                f"{lock_timeout!r}"
            )
        if not isinstance(root, str | os.PathLike):
            raise InvalidArgumentError(
                f"root must be a path (str or os.PathLike), not {type(root).__name__} ({root!r})"
            )
        self._root = Path(os.fspath(root))
        # Reports read the per-file rollups where a window covers a whole file; switched off
        # only by tests that compare them with plain row scans.
        self._use_rollups = True
        self._recent_spans: dict[str, dict[str, pa.Table]] = {}
        # The rollups of the files this store wrote last, by path: a load summarizes each
        # day into a span right after it, from these rather than from the disk.
        self._recent_rollups: dict[str, dict[str, pa.Table]] = {}
        self._ds = Dataset(
            self._root,
            schema_version=SCHEMA_VERSION,
            columns_for_version=columns_for_version,
            fill_values={name: pa.scalar(0, pa.int32()) for name in ADDED_IN_V2},
            stats_columns=("timestamp", "id"),
            pruned_by=("tenant", "timestamp"),
            lock_timeout=float(lock_timeout),
        )

    @property
    def root(self) -> Path:
        """The dataset root."""
        return self._root

    def __repr__(self) -> str:
        return f"Store({str(self._root)!r})"

    # -- set-up ------------------------------------------------------------------------------

    def auto_migrate(self) -> None:
        """Create the dataset, or check (and upgrade) the one at ``root``. Idempotent.

        A dataset of an older schema version is upgraded in place without rewriting its data
        files: rows written before read back with zeros in the columns added since.

        Raises:
            IncompatibleDatasetError: the dataset was written by a newer usage_analytics.

        Example:
            >>> Store(tmp / "fresh").auto_migrate()
        """
        self._ds.create()

    def info(self) -> DatasetInfo:
        """Rows, files, partitions and the time span of the dataset, from its manifest alone.

        Example:
            >>> Store("data/sample").info().partitions
            14
        """
        snap = self._ds.snapshot()
        return DatasetInfo(
            root=self._root,
            schema_version=snap.schema_version,
            rows=snap.rows,
            files=len(snap.files),
            partitions=len(snap.dates()),
            first_timestamp=min((f.min("timestamp") for f in snap.files), default=None),
            last_timestamp=max((f.max("timestamp") for f in snap.files), default=None),
        )

    def files(self) -> list[Path]:
        """The data files of the latest committed state, for reading with another engine.

        Reading exactly these files (rather than globbing the folder) never sees a write in
        progress. A later delete or compaction may remove some of them.

        Example:
            >>> import duckdb
            >>> files = [str(p) for p in Store("data/sample").files()]
            >>> duckdb.sql(f"select count(*) from read_parquet({files})").fetchall()[0][0]
            40000
        """
        return [self._ds.path_of(f) for f in self._ds.snapshot().files]

    # -- writing -----------------------------------------------------------------------------

    def create_usage(self, *usages: Any, on_conflict: Literal["error", "ignore"] = "error") -> int:
        """Validate and append usage rows, all or nothing.

        Args:
            *usages: ``Usage`` objects, mappings with the same keys, a list of either, or one
                DataFrame. Missing optional columns get their zero values; ``timestamp`` may be
                int nanoseconds, datetime64 values or datetime objects (naive ones are UTC).
                ``id`` and ``created_at`` are set by the store.
            on_conflict: ``"error"`` raises when a ``(user_id, timestamp)`` key repeats, inside
                the batch or against stored rows; ``"ignore"`` skips such rows (the first of
                in-batch repeats is kept), which makes re-running a load idempotent.

        Each day of the batch becomes one data file: its rows in the order they came when
        the batch is in time order (the fastest way in), else sorted by tenant and time. When
        a day would then hold 32 small files of one size class, they are merged into one in
        the same commit, so that appending row by row does not leave a file per row. The
        same commit adds the span summaries of the days before the batch's first day, which
        a load running forward in time has finished.

        Returns:
            The number of rows written.

        Raises:
            ValidationError: the batch breaks the schema (every problem is listed).
            DuplicateUsageError: a key repeats and ``on_conflict="error"``.

        Example:
            >>> store = Store(tmp / "append"); store.auto_migrate()
            >>> row = {"user_id": "u1", "timestamp": pd.Timestamp("2026-11-01 12:00")}
            >>> store.create_usage(row)
            1
            >>> store.create_usage(row, on_conflict="ignore")
            0
        """
        if on_conflict not in ("error", "ignore"):
            raise InvalidArgumentError(
                f"on_conflict must be 'error' or 'ignore', not {on_conflict!r}"
            )
        batch = prepare_batch(usages)
        repeated = _repeated_keys(batch)
        if repeated.any():
            if on_conflict == "error":
                raise _duplicate_error(batch.loc[repeated], "inside the batch")
            batch = batch.loc[~repeated]
        with contextlib.ExitStack() as stack:
            tx = stack.enter_context(self._ds.transaction())
            if batch.empty:
                return 0
            batch = batch.reset_index(drop=True)
            days = batch["timestamp"].to_numpy() // NS_PER_DAY
            stored = self._stored_keys(tx.base, batch, days)
            if stored.any():
                if on_conflict == "error":
                    raise _duplicate_error(batch.loc[stored], "already stored")
                batch = batch.loc[~stored].reset_index(drop=True)
                days = days[~stored]
                if batch.empty:
                    return 0
            first = tx.reserve_ids(len(batch))
            batch.insert(0, "created_at", pd.Timestamp.now(tz="UTC").as_unit("us"))
            batch.insert(0, "id", np.arange(first, first + len(batch), dtype=np.int64))
            table = pa.Table.from_pandas(batch, schema=arrow_schema(), preserve_index=False)
            rollups: dict[int, dict[str, Future[pa.Table]]] = {}
            spans: list[tuple[SpanEntry, dict[str, Future[pa.Table]]]] = []
            if len(batch) >= ROLLUP_MIN_ROWS:
                # A second thread summarizes while this one stages and writes the rows (pyarrow
                # releases the GIL): first the rollups of the new files, then the spans the
                # commit can add. The pool is shut down only after the commit.
                pool = stack.enter_context(ThreadPoolExecutor(1, "usage-analytics-rollups"))
                rollups = _submit_rollups(pool, table, days)
                staged = self._stage_by_date(tx, table, days, batch["tenant"], rollups)
                # Spans go into the same commit: those of the days before this batch (loads
                # run forward in time, so those days are taken as loaded), and that of the day
                # still loading when it is due. They are planned on the state the commit will
                # leave and computed while this thread writes the data files; the commit
                # writes them as they come, and leaves out any whose computation fails.
                after = tx.pending()
                last_day = int(days.max())
                summaries = tx.staged_summaries()
                plans = self._plan_spans(
                    after,
                    int(days.min()),
                    summaries,
                    last_day if _open_day_is_due(after, last_day) else None,
                )
                for plan in plans:
                    tables: dict[str, Future[pa.Table]] = {kind: Future() for kind in _KINDS}
                    spans.append((tx.add_span(plan.first, plan.last, tables, plan.files), tables))
                if plans:
                    pool.submit(self._span_tables, after, plans, summaries, [f for _, f in spans])
            else:
                staged = self._stage_by_date(tx, table, days, batch["tenant"], rollups)
            tx.commit()
            for path, futures in staged.items():  # all resolved by the commit
                self._recent_rollups[path] = _resolved(futures)
            while len(self._recent_rollups) > _RECENT_ROLLUPS:
                del self._recent_rollups[next(iter(self._recent_rollups))]
            failed = {span.name for span in tx.failed_spans}
            self._remember_spans(
                {span.name: _resolved(tables) for span, tables in spans if span.name not in failed}
            )
        if tx.failed_spans:
            exc = next(e for _, fs in spans for f in fs.values() if (e := f.exception()))
            warnings.warn(
                f"the rows were written, but summarizing their days failed ({exc}); "
                f"compact() or the next load builds those summaries",
                RuntimeWarning,
                stacklevel=2,
            )
        if len(batch) >= ROLLUP_MIN_ROWS and days.max() - days.min() >= 2:
            # A batch of several days (an import of history) brought whole days of its own;
            # those of them without rollups are summarized from their rows, which can be read
            # only now. They are committed apart, skipped when another writer holds the lock,
            # and a failure to build them is only a warning (compact() builds them later).
            try:
                self._build_spans(before_day=int(days.max()), lock_timeout=0)
            except LockTimeoutError:
                pass
            except Exception as exc:  # the rows are committed: nothing here may undo that
                warnings.warn(
                    f"the rows were written, but summarizing the days before them failed "
                    f"({exc}); compact() builds those summaries later",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return len(batch)

    def _stage_by_date(
        self,
        tx: Transaction,
        table: pa.Table,
        days: np.ndarray,
        tenant: pd.Series,
        rollups: Mapping[int, Mapping[str, Future[pa.Table]]],
    ) -> dict[str, Mapping[str, Future[pa.Table]]]:
        """Stage one file per day, with the rollups of each day's rows when ``rollups`` has them
        (being computed); returns those rollups by the path of their file.

        Rows already in time order (as loads usually are) keep it: each day's rows are then a
        slice of ``table``, not a copy, and statistics prune them by time. Other rows are
        sorted by (tenant, timestamp), so that statistics prune them by tenant as well.
        """
        staged: dict[str, Mapping[str, Future[pa.Table]]] = {}
        timestamps = table.column("timestamp").to_numpy()
        order: np.ndarray | None = None
        ordered = table
        if not (timestamps[1:] >= timestamps[:-1]).all():
            tenant_codes = pd.factorize(tenant, sort=True)[0]
            order = np.lexsort((timestamps, tenant_codes, days))
            ordered = table.take(pa.array(order))
        start = 0
        for day, chunk in _day_groups(days, order):
            rows = ordered.slice(start, len(chunk))
            merged = self._merge_small(tx, _date_name(day), rows)
            if merged is not None:
                self._add(tx, _date_name(day), merged)
            elif day in rollups:
                staged[tx.add(_date_name(day), rows, rollups[day]).path] = rollups[day]
            else:
                self._add(tx, _date_name(day), rows)
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
            if len(peers) + 1 < MERGE_FANOUT:
                break
            for entry in peers:
                tx.remove(entry)
                del peers_of[entry.path]
            current = pa.concat_tables([*(self._read_rows(e) for e in peers), current])
            current = current.sort_by([("tenant", "ascending"), ("timestamp", "ascending")])
            merged = current
        return merged

    def _stored_keys(self, snap: Snapshot, batch: pd.DataFrame, days: np.ndarray) -> np.ndarray:
        """A mask of the batch rows whose key is already stored.

        Only files whose timestamp range overlaps the batch's in the same partition are read,
        and only their key columns within that range.
        """
        found = np.zeros(len(batch), dtype=bool)
        by_date = snap.by_date()
        timestamps = batch["timestamp"].to_numpy()
        for day, idx in _day_groups(days):
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

    def delete_usage(self, timestamp: Any, limit: int | None = None) -> int:
        """Delete rows with ``timestamp`` before the cutoff, oldest first; all or nothing.

        Partitions whose rows all go are removed whole without being read; a partition that
        keeps some rows is rewritten without the deleted ones.

        Args:
            timestamp: the cutoff (exclusive): int ns, datetime, pd.Timestamp or ISO string.
            limit: delete at most this many rows (``None``: no limit).

        Returns:
            The number of rows deleted.

        Example:
            >>> store = Store(tmp / "retention"); store.auto_migrate()
            >>> store.create_usage([{"user_id": "u", "timestamp": t} for t in (1, 2, 3)])
            3
            >>> store.delete_usage(3, limit=1), store.delete_usage(3)
            (1, 1)
        """
        cutoff = to_bound(timestamp, "timestamp")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int | np.integer):
                raise InvalidArgumentError(f"limit must be an int or None, not {limit!r}")
            if limit < 0:
                raise InvalidArgumentError(f"limit must be >= 0, not {limit}")
        remaining = None if limit is None else int(limit)
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
        table = self._read_rows(entry)
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

    def compact(self) -> int:
        """Merge the files of each partition that holds several, some of them small, into
        files of at most ``COMPACT_FILE_ROWS`` rows; returns how many partitions were rewritten.
        Each partition is committed on its own, all or nothing, and keeps every row exactly.

        The rows are cut into files by time (each file sorted by tenant and time inside), so
        that a report whose window starts or ends inside the day reads the summaries of the
        files within the window and scans only the file it cuts, as after a bulk load.
        Partitions whose files all hold at least half that many rows are left as they are.

        Example:
            >>> store = Store(tmp / "small"); store.auto_migrate()
            >>> for t in (1, 2, 3): _ = store.create_usage({"user_id": "u", "timestamp": t})
            >>> store.compact(), len(store.files())
            (1, 1)
        """
        done = 0
        for date in self._ds.snapshot().dates():
            with self._ds.transaction() as tx:
                entries = tx.base.by_date().get(date, [])
                if len(entries) < 2 or all(e.rows >= COMPACT_FILE_ROWS // 2 for e in entries):
                    continue
                merged = pa.concat_tables([self._read_rows(e) for e in entries])
                merged = merged.sort_by([("timestamp", "ascending"), ("id", "ascending")])
                pieces = -(-merged.num_rows // COMPACT_FILE_ROWS)
                size = -(-merged.num_rows // pieces)
                for entry in entries:
                    tx.remove(entry)
                for start in range(0, merged.num_rows, size):
                    piece = merged.slice(start, size)
                    piece = piece.sort_by([("tenant", "ascending"), ("timestamp", "ascending")])
                    self._add(tx, date, piece)
                tx.commit()
                done += 1
        self._build_spans()
        return done

    def _add(self, tx: Transaction, date: str, table: pa.Table) -> None:
        """Stage a data file with its rollups, computed from the same rows.

        Files smaller than ``ROLLUP_MIN_ROWS`` get none: their rollups would be about as large
        as their rows, so reports scan them, and ``compact()`` later merges them into a file
        that has rollups.
        """
        if table.num_rows < ROLLUP_MIN_ROWS:
            tx.add(date, table)
            return
        tx.add(date, table, queries.rollups(table))

    def _build_spans(self, before_day: int | None = None, lock_timeout: float | None = None) -> int:
        """Commit the missing span rollups of aligned blocks of whole days before
        ``before_day`` (all days when None); returns how many spans were added."""
        with self._ds.transaction(timeout=lock_timeout) as tx:
            spans = self._span_tables(tx.base, self._plan_spans(tx.base, before_day), {})
            built = {
                tx.add_span(span.first, span.last, span.tables, span.files).name: span.tables
                for span in spans
            }
            tx.commit()
        self._remember_spans(built)
        return len(built)

    def _remember_spans(self, built: Mapping[str, dict[str, pa.Table]]) -> None:
        """Keep the tables of the latest few committed spans (spans are immutable), to build
        their parents without reading them."""
        self._recent_spans.update(built)
        while len(self._recent_spans) > _RECENT_SPANS:
            del self._recent_spans[next(iter(self._recent_spans))]

    def _plan_spans(
        self,
        snap: Snapshot,
        before_day: int | None,
        staged: Mapping[str, Mapping[str, pa.Table | Future[pa.Table]]] | None = None,
        open_day: int | None = None,
    ) -> list[_SpanPlan]:
        """The missing span rollups of ``snap``, smallest first (each combined from spans
        before it in the list, or from file rollups).

        A block of 2**k days starting at a multiple of 2**k gets one summary file per report,
        combined from its two halves (single days, when they have several files, from their
        files' rollups), so that a window of whole days reads a few spans instead of every
        file's rollups. Only blocks that end before ``before_day`` are built (a load passes the
        first day it writes: it may still be loading that day and those after it), and only
        blocks with data in both halves: otherwise the half with data says it all. The day
        ``open_day`` gets a span of its own all the same (see :func:`_open_day_is_due`).

        ``snap`` may be the state a write is about to commit: ``staged`` then holds the
        rollups (or their futures) of its new files, which are not on disk yet.
        """
        by_day: dict[int, list[str]] = {}
        for entry in snap.files:
            by_day.setdefault(day_number(entry.date), []).append(entry.path)
        if not by_day:
            return []
        first, last = min(by_day), max(by_day)
        if open_day is not None and open_day not in by_day:
            open_day = None
        if before_day is not None:
            last = min(last, before_day - 1)
        # A file of the write being committed is not on disk yet: its day can be summarized
        # only from its rollups.
        staged = staged or {}
        without = [
            day_number(e.date)
            for e in snap.files
            if e.path in staged and not all(k in staged[e.path] for k in _KINDS)
        ]
        if without:
            last = min(last, min(without) - 1)
            if open_day is not None and open_day >= min(without):
                open_day = None
        have = {(sp.first_day, sp.last_day) for sp in snap.spans}
        plans: list[_SpanPlan] = []
        for level in range(MAX_SPAN_LEVEL + 1):
            size = 1 << level
            top = last if open_day is None else max(last, open_day)
            for start in range(first - first % size, top + 1, size):
                end = start + size - 1
                if (end > last and not (size == 1 and start == open_day)) or (start, end) in have:
                    continue
                if size == 1 and len(by_day.get(start, ())) < 2:
                    continue  # a single file's own rollups already cover its day
                half = size // 2
                if size > 1 and not (
                    any(d in by_day for d in range(start, start + half))
                    and any(d in by_day for d in range(start + half, end + 1))
                ):
                    continue
                files = tuple(sorted(p for d in range(start, end + 1) for p in by_day.get(d, ())))
                plans.append(_SpanPlan(start, end, files))
        return plans

    def _span_tables(
        self,
        snap: Snapshot,
        plans: Sequence[_SpanPlan],
        staged: Mapping[str, Mapping[str, pa.Table | Future[pa.Table]]],
        out: Sequence[Mapping[str, Future[pa.Table]]] | None = None,
    ) -> list[_NewSpan]:
        """Compute the ``plans`` of ``snap``; with ``out``, also set each span's tables as the
        results of its futures as soon as they are computed, and any error as the exception of
        every future not yet set (a commit waits for them: none may be left unset)."""
        new: list[_NewSpan] = []
        try:
            by_day: dict[int, list[FileEntry]] = {}
            for entry in snap.files:
                by_day.setdefault(day_number(entry.date), []).append(entry)
            have = {(sp.first_day, sp.last_day): sp for sp in snap.spans}
            memo: dict[tuple[int, int], dict[str, list[pa.Table]]] = {}

            def parts(lo: int, hi: int) -> dict[str, list[pa.Table]]:
                """The rollup tables of days lo..hi per kind."""
                if (lo, hi) not in memo:
                    memo[(lo, hi)] = self._block_parts(lo, hi, by_day, have, parts, staged)
                return memo[(lo, hi)]

            for i, plan in enumerate(plans):
                found = parts(plan.first, plan.last)
                tables = {kind: queries.combine_rollups(kind, found[kind]) for kind in _KINDS}
                memo[(plan.first, plan.last)] = {k: [t] for k, t in tables.items()}
                new.append(_NewSpan(plan.first, plan.last, plan.files, tables))
                if out is not None:
                    for kind, future in out[i].items():
                        future.set_result(tables[kind])
        except BaseException as exc:
            if out is None:
                raise
            for futures in out:
                for future in futures.values():
                    if not future.done():
                        future.set_exception(exc)
        return new

    def _block_parts(
        self,
        lo: int,
        hi: int,
        by_day: dict[int, list[FileEntry]],
        have: dict[tuple[int, int], SpanEntry],
        parts: Callable[[int, int], dict[str, list[pa.Table]]],
        staged: Mapping[str, Mapping[str, pa.Table | Future[pa.Table]]],
    ) -> dict[str, list[pa.Table]]:
        if (lo, hi) in have:
            span = have[(lo, hi)]
            cached = self._recent_spans.get(span.name)
            if cached is not None:
                return {k: [cached[k]] for k in _KINDS}
            return {k: self._ds.read_summaries([span.path(k)]) for k in _KINDS}
        if lo == hi:
            files = by_day.get(lo, [])
            with_rollups = [f for f in files if all(k in f.sidecars for k in _KINDS)]
            found: dict[str, list[pa.Table]] = {k: [] for k in _KINDS}
            # One lookup per file: the writing thread may drop old entries meanwhile. Files
            # of the write being committed have theirs in ``staged`` (computed by now).
            recent = {
                f.path: self._recent_rollups.get(f.path)
                or (_resolved(staged[f.path]) if f.path in staged else None)
                for f in with_rollups
            }
            unread = [f for f in with_rollups if recent[f.path] is None]
            for k in _KINDS:
                found[k] = [r[k] for r in recent.values() if r is not None]
                if unread:
                    found[k] += self._ds.read_sidecars(unread, k)
            for entry in files:
                if entry not in with_rollups:  # a small file: summarize its rows here
                    columns = list(queries.ROLLUP_INPUT_COLUMNS)
                    rows = self._read_rows(entry).select(columns)
                    for k, table in queries.rollups(rows).items():
                        found[k].append(table)
            return found
        half = (hi - lo + 1) // 2
        left, right = parts(lo, lo + half - 1), parts(lo + half, hi)
        return {k: left[k] + right[k] for k in _KINDS}

    # -- reading -----------------------------------------------------------------------------

    def _read_rows(self, entry: FileEntry) -> pa.Table:
        """Every column of one file, in the current schema (columns it predates are zeros)."""
        return self._ds.read_file(entry, COLUMNS).cast(arrow_schema())

    def find_usages(self) -> pd.DataFrame:
        """Every stored row, columns as in :class:`UsageSchema`, sorted by ``id``.

        Example:
            >>> Store("data/sample").find_usages().columns[:4].tolist()
            ['id', 'created_at', 'user_id', 'tenant']
        """

        def read(snap: Snapshot) -> pd.DataFrame:
            tables = [self._read_rows(e) for e in snap.files]
            if not tables:
                return _to_frame(arrow_schema().empty_table())
            return _to_frame(pa.concat_tables(tables).sort_by("id"))

        return self._ds.read(read).reset_index(drop=True)

    def aggregated_usage(self, tenant_id: str, start: Any, end: Any) -> pd.DataFrame:
        """Requests per API method for ``tenant_id`` with ``start <= timestamp < end``.

        Returns:
            Columns ``api_method, total_requests, success_requests, failure_requests,
            average_latency`` (success: ``status_code == 200``), sorted by ``api_method``.

        Example:
            >>> Store("data/sample").aggregated_usage("tenant-000", "2026-11-01",
            ...                                       "2026-11-02").columns.tolist()[:2]
            ['api_method', 'total_requests']
        """
        return self._report(
            tenant_id,
            start,
            end,
            "summary",
            queries.SUMMARY_INPUT_COLUMNS,
            queries.summary_partial,
            queries.finish_summary,
        )

    def get_usages_by_groups(self, tenant_id: str, start: Any, end: Any) -> pd.DataFrame:
        """Usage per (API key, user, model) for ``tenant_id`` with ``start <= timestamp < end``.

        Returns:
            Columns ``api_key_id, user_id, model_id, total_requests, total_prompt_tokens,
            total_completion_tokens, average_latency, average_time_to_first_token``, sorted by
            the three keys.

        Example:
            >>> Store("data/sample").get_usages_by_groups("tenant-000", "2026-11-01",
            ...                                           "2026-11-02").columns.tolist()[:3]
            ['api_key_id', 'user_id', 'model_id']
        """
        return self._report(
            tenant_id,
            start,
            end,
            "groups",
            queries.GROUP_INPUT_COLUMNS,
            queries.groups_partial,
            queries.finish_groups,
        )

    def _report(
        self,
        tenant_id: str,
        start: Any,
        end: Any,
        kind: Literal["summary", "groups"],
        columns: tuple[str, ...],
        partial: Callable[[pa.Table], pa.Table],
        finish: Callable[[Iterable[pa.Table]], pd.DataFrame],
    ) -> pd.DataFrame:
        """One report: rollups for files inside the window, row scans for the others."""
        if not isinstance(tenant_id, str):
            raise InvalidArgumentError(f"tenant_id must be a str, not {tenant_id!r}")
        lo, hi = to_window(start, end)

        def read(snap: Snapshot) -> pd.DataFrame:
            spans = _pick_spans(snap, lo, hi, kind) if self._use_rollups else []
            span_days = {d for sp in spans for d in range(sp.first_day, sp.last_day + 1)}
            covered, scanned = [], []
            for entry in snap.files:
                first, last = entry.min("timestamp"), entry.max("timestamp")
                if last < lo or first >= hi or day_number(entry.date) in span_days:
                    continue
                inside = lo <= first and last < hi
                if inside and self._use_rollups and kind in entry.sidecars:
                    covered.append(entry)
                else:
                    scanned.append(entry)
            parts = [partial(rows) for rows in self._scan(scanned, tenant_id, lo, hi, columns)]
            summaries = [sp.path(kind) for sp in spans]
            summaries += [entry.sidecar_path(kind) for entry in covered]
            for table in self._ds.read_summaries(summaries, tenant_id):
                parts.append(table.drop_columns(["tenant"]))
            return finish(parts)

        return self._ds.read(read)

    def _scan(
        self,
        entries: Sequence[FileEntry],
        tenant_id: str,
        lo: int,
        hi: int,
        columns: tuple[str, ...],
    ) -> Iterator[pa.Table]:
        """The rows of one tenant in [lo, hi) from ``entries``, streamed in bounded chunks."""
        if not entries:
            return
        expr = (
            (pc.field("tenant") == tenant_id)
            & (pc.field("timestamp") >= lo)
            & (pc.field("timestamp") <= hi - 1)  # both in int64 range: lo < hi <= 2**63
        )
        keys = [c for c in columns if c in STRING_COLUMNS]
        yield from self._ds.scan(entries, columns, expr, dictionary=keys)


@dataclass(frozen=True)
class _SpanPlan:
    """A span rollup to compute: days first..last, from exactly the data files ``files``."""

    first: int
    last: int
    files: tuple[str, ...]


@dataclass(frozen=True)
class _NewSpan:
    """A span rollup computed from a snapshot, not yet committed."""

    first: int
    last: int
    files: tuple[str, ...]  # the data files of its days it was computed from
    tables: dict[str, pa.Table]


def _size_class(rows: int) -> int | None:
    """The size class small files are merged within: rows below ``MERGE_FANOUT``, below its
    square, ...; None from ``MERGE_BELOW_ROWS`` rows up (never merged on append)."""
    if rows >= MERGE_BELOW_ROWS:
        return None
    size_class, bound = 0, MERGE_FANOUT
    while rows >= bound:
        size_class, bound = size_class + 1, bound * MERGE_FANOUT
    return size_class


def _submit_rollups(
    pool: ThreadPoolExecutor, batch: pa.Table, days: np.ndarray
) -> dict[int, dict[str, Future[pa.Table]]]:
    """Start computing, on ``pool``, the rollups of the file each day of ``batch`` becomes
    (days with fewer than ``ROLLUP_MIN_ROWS`` rows get none); returns their futures."""
    futures: dict[int, dict[str, Future[pa.Table]]] = {}
    parts: list[tuple[dict[str, Future[pa.Table]], np.ndarray | None]] = []
    groups = _day_groups(days)
    for day, idx in groups:
        if len(idx) >= ROLLUP_MIN_ROWS:
            futures[day] = {kind: Future() for kind in _KINDS}
            parts.append((futures[day], None if len(groups) == 1 else idx))
    inputs = batch.select(list(queries.ROLLUP_INPUT_COLUMNS))

    def compute() -> None:
        for out, idx in parts:
            try:
                if idx is None:
                    rows = inputs
                elif idx[-1] - idx[0] + 1 == len(idx):  # the day's rows are in one run
                    rows = inputs.slice(int(idx[0]), len(idx))
                else:
                    rows = inputs.take(pa.array(idx))
                rows = queries.encode_keys(rows)  # once for both kinds
                for future_kind, future in out.items():
                    future.set_result(queries.rollup(future_kind, rows))
            except BaseException as exc:  # raised in the commit that waits for it
                for future in out.values():
                    if not future.done():
                        future.set_exception(exc)

    pool.submit(compute)
    return futures


def _resolved(tables: Mapping[str, pa.Table | Future[pa.Table]]) -> dict[str, pa.Table]:
    """``tables`` with each future replaced by its result."""
    return {k: t.result() if isinstance(t, Future) else t for k, t in tables.items()}


def _open_day_is_due(snap: Snapshot, day: int) -> bool:
    """Whether ``day``, which a load may still be writing, gets a span of its own now: when it
    holds ``OPEN_DAY_FILES`` files with rollups, or twice, four times ... as many. A report
    over the day then reads one summary instead of theirs; if more rows come, the span is
    dropped, and rebuilding at doubling counts keeps the work linear in the files."""
    files = snap.by_date().get(_date_name(day), [])
    n = sum(1 for f in files if all(k in f.sidecars for k in _KINDS))
    return (
        n >= OPEN_DAY_FILES and n % OPEN_DAY_FILES == 0 and (n // OPEN_DAY_FILES).bit_count() == 1
    )


def _pick_spans(snap: Snapshot, lo: int, hi: int, kind: str) -> list[SpanEntry]:
    """The fewest spans that tile the whole days inside [lo, hi), largest first, left to right.

    Days no span starts at are left to the per-file rollups and scans.
    """
    by_start: dict[int, list[SpanEntry]] = {}
    for span in snap.spans:
        if kind in span.kinds:
            by_start.setdefault(span.first_day, []).append(span)
    if not by_start:
        return []
    first, last = -(-lo // NS_PER_DAY), hi // NS_PER_DAY - 1  # whole days inside the window
    starts = sorted(by_start)
    picked = []
    i = bisect.bisect_left(starts, first)
    while i < len(starts) and starts[i] <= last:
        fitting = [sp for sp in by_start[starts[i]] if sp.last_day <= last]
        if fitting:
            best = max(fitting, key=lambda sp: sp.last_day)
            picked.append(best)
            i = bisect.bisect_left(starts, best.last_day + 1, lo=i + 1)
        else:
            i += 1
    return picked


def _repeated_keys(batch: pd.DataFrame) -> np.ndarray:
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


def _duplicate_error(rows: pd.DataFrame, where: str) -> DuplicateUsageError:
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
