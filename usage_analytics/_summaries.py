"""Summary maintenance: the summaries of each grain beside every large data file, and spans.

Each data file of ``ROLLUP_MIN_ROWS`` rows or more gets a summary file of every grain, written
and removed in the same commit as the file. Aligned blocks of 1, 2, 4, ... whole days get
*span* summaries, combined from their two halves (single days, when they have several files,
from their files' summaries), so that a window of whole days reads a few spans instead of every
file's summaries. A span is dropped by any commit that changes a file in its days, so while it
is listed it summarizes exactly those days' files.

This module computes them (with the grains of ``reports``) and stages them into transactions
(of ``_storage``); it keeps the summaries it wrote last in memory, to build the next spans from
them instead of reading them back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa

from . import _layout
from ._reads import read_rows
from ._storage import Dataset, FileEntry, Snapshot, SpanEntry, TableOrFuture, day_number
from .reports import grains

__all__ = [
    "KINDS",
    "SpanPlan",
    "Summaries",
    "day_groups",
    "open_day_is_due",
    "resolved",
    "submit_rollups",
    "summaries_of",
]

#: The summary kinds every large file and every span has: one per declared grain.
KINDS: Final = tuple(g.name for g in grains.GRAINS)


@dataclass(frozen=True)
class SpanPlan:
    """A span summary to compute: days first..last, from exactly the data files ``files``."""

    first: int
    last: int
    files: tuple[str, ...]


@dataclass(frozen=True)
class NewSpan:
    """A span summary computed from a snapshot, not yet committed."""

    first: int
    last: int
    files: tuple[str, ...]  # the data files of its days it was computed from
    tables: dict[str, pa.Table]


def day_groups(days: np.ndarray, order: np.ndarray | None = None) -> list[tuple[int, np.ndarray]]:
    """Row positions per day, days ascending; ``order`` (sorted by day first) is kept within."""
    if order is None:
        if len(days) and days.min() == days.max():  # the common case: one day
            return [(int(days[0]), np.arange(len(days)))]
        order = np.argsort(days, kind="stable")
    sorted_days = days[order]
    bounds = np.flatnonzero(sorted_days[1:] != sorted_days[:-1]) + 1
    return [(int(days[chunk[0]]), chunk) for chunk in np.split(order, bounds) if len(chunk)]


def resolved(tables: Mapping[str, TableOrFuture]) -> dict[str, pa.Table]:
    """``tables`` with each future replaced by its result."""
    return {k: t.result() if isinstance(t, Future) else t for k, t in tables.items()}


def summaries_of(table: pa.Table) -> dict[str, pa.Table] | None:
    """The summaries a data file of ``table`` gets: one per grain, or None when it is smaller
    than ``ROLLUP_MIN_ROWS`` (reports scan it, and ``compact()`` later merges it)."""
    if table.num_rows < _layout.ROLLUP_MIN_ROWS:
        return None
    return grains.rollups(table)


def submit_rollups(
    pool: ThreadPoolExecutor, batch: pa.Table, days: np.ndarray
) -> dict[int, dict[str, Future[pa.Table]]]:
    """Start computing, on ``pool``, the summaries of the file each day of ``batch`` becomes
    (days with fewer than ``ROLLUP_MIN_ROWS`` rows get none); returns their futures."""
    futures: dict[int, dict[str, Future[pa.Table]]] = {}
    parts: list[tuple[dict[str, Future[pa.Table]], np.ndarray | None]] = []
    groups = day_groups(days)
    for day, idx in groups:
        if len(idx) >= _layout.ROLLUP_MIN_ROWS:
            futures[day] = {kind: Future() for kind in KINDS}
            parts.append((futures[day], None if len(groups) == 1 else idx))
    inputs = batch.select(list(grains.INPUT_COLUMNS))

    def compute() -> None:
        for out, idx in parts:
            try:
                if idx is None:
                    rows = inputs
                elif idx[-1] - idx[0] + 1 == len(idx):  # the day's rows are in one run
                    rows = inputs.slice(int(idx[0]), len(idx))
                else:
                    rows = inputs.take(pa.array(idx))
                rows = grains.encode_keys(rows)  # once for every grain
                for kind, future in out.items():
                    future.set_result(grains.rollup(kind, rows))
            except BaseException as exc:  # raised in the commit that waits for it
                for future in out.values():
                    if not future.done():
                        future.set_exception(exc)

    pool.submit(compute)
    return futures


def open_day_is_due(snap: Snapshot, day: int) -> bool:
    """Whether ``day``, which a load may still be writing, gets a span of its own now: when it
    holds ``OPEN_DAY_FILES`` files with summaries, or twice, four times ... as many. A report
    over the day then reads one summary instead of theirs; if more rows come, the span is
    dropped, and rebuilding at doubling counts keeps the work linear in the files."""
    files = snap.by_date().get(str(np.datetime64(day, "D")), [])
    n = sum(1 for f in files if all(k in f.sidecars for k in KINDS))
    every = _layout.OPEN_DAY_FILES
    return n >= every and n % every == 0 and (n // every).bit_count() == 1


class Summaries:
    """The summary maintenance of one store, with the summaries it wrote last."""

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self._recent_spans: dict[str, dict[str, pa.Table]] = {}
        # The summaries of the files this store wrote last, by path: a load summarizes each
        # day into a span right after it, from these rather than from the disk.
        self._recent_rollups: dict[str, dict[str, pa.Table]] = {}

    def remember_rollups(self, staged: Mapping[str, Mapping[str, TableOrFuture]]) -> None:
        for path, futures in staged.items():
            self._recent_rollups[path] = resolved(futures)
        while len(self._recent_rollups) > _layout.RECENT_ROLLUPS:
            del self._recent_rollups[next(iter(self._recent_rollups))]

    def remember_spans(self, built: Mapping[str, dict[str, pa.Table]]) -> None:
        """Keep the tables of the latest few committed spans (spans are immutable), to build
        their parents without reading them."""
        self._recent_spans.update(built)
        while len(self._recent_spans) > _layout.RECENT_SPANS:
            del self._recent_spans[next(iter(self._recent_spans))]

    def build_spans(self, before_day: int | None = None, lock_timeout: float | None = None) -> int:
        """Commit the missing spans of aligned blocks of whole days before ``before_day`` (all
        days when None); returns how many were added."""
        with self._ds.transaction(timeout=lock_timeout) as tx:
            spans = self.span_tables(tx.base, self.plan_spans(tx.base, before_day), {})
            built = {
                tx.add_span(span.first, span.last, span.tables, span.files).name: span.tables
                for span in spans
            }
            tx.commit()
        self.remember_spans(built)
        return len(built)

    def plan_spans(
        self,
        snap: Snapshot,
        before_day: int | None,
        staged: Mapping[str, Mapping[str, TableOrFuture]] | None = None,
        open_day: int | None = None,
    ) -> list[SpanPlan]:
        """The missing spans of ``snap``, smallest first (each combined from spans before it in
        the list, or from file summaries).

        Only blocks that end before ``before_day`` are built (a load passes the first day it
        writes: it may still be loading that day and those after it), and only blocks with
        data in both halves: otherwise the half with data says it all. The day ``open_day``
        gets a span of its own all the same (see :func:`open_day_is_due`).

        ``snap`` may be the state a write is about to commit: ``staged`` then holds the
        summaries (or their futures) of its new files, which are not on disk yet.
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
        # only from its summaries.
        staged = staged or {}
        without = [
            day_number(e.date)
            for e in snap.files
            if e.path in staged and not all(k in staged[e.path] for k in KINDS)
        ]
        if without:
            last = min(last, min(without) - 1)
            if open_day is not None and open_day >= min(without):
                open_day = None
        have = {(sp.first_day, sp.last_day) for sp in snap.spans}
        plans: list[SpanPlan] = []
        for level in range(_layout.MAX_SPAN_LEVEL + 1):
            size = 1 << level
            top = last if open_day is None else max(last, open_day)
            for start in range(first - first % size, top + 1, size):
                end = start + size - 1
                if (end > last and not (size == 1 and start == open_day)) or (start, end) in have:
                    continue
                if size == 1 and len(by_day.get(start, ())) < 2:
                    continue  # a single file's own summaries already cover its day
                half = size // 2
                if size > 1 and not (
                    any(d in by_day for d in range(start, start + half))
                    and any(d in by_day for d in range(start + half, end + 1))
                ):
                    continue
                files = tuple(sorted(p for d in range(start, end + 1) for p in by_day.get(d, ())))
                plans.append(SpanPlan(start, end, files))
        return plans

    def span_tables(
        self,
        snap: Snapshot,
        plans: Sequence[SpanPlan],
        staged: Mapping[str, Mapping[str, TableOrFuture]],
        out: Sequence[Mapping[str, Future[pa.Table]]] | None = None,
    ) -> list[NewSpan]:
        """Compute the ``plans`` of ``snap``; with ``out``, also set each span's tables as the
        results of its futures as soon as they are computed, and any error as the exception of
        every future not yet set (a commit waits for them: none may be left unset)."""
        new: list[NewSpan] = []
        try:
            by_day: dict[int, list[FileEntry]] = {}
            for entry in snap.files:
                by_day.setdefault(day_number(entry.date), []).append(entry)
            have = {(sp.first_day, sp.last_day): sp for sp in snap.spans}
            memo: dict[tuple[int, int], dict[str, list[pa.Table]]] = {}

            def parts(lo: int, hi: int) -> dict[str, list[pa.Table]]:
                """The summary tables of days lo..hi per kind."""
                if (lo, hi) not in memo:
                    memo[(lo, hi)] = self._block_parts(lo, hi, by_day, have, parts, staged)
                return memo[(lo, hi)]

            for i, plan in enumerate(plans):
                found = parts(plan.first, plan.last)
                tables = {kind: grains.combine(kind, found[kind]) for kind in KINDS}
                memo[(plan.first, plan.last)] = {k: [t] for k, t in tables.items()}
                new.append(NewSpan(plan.first, plan.last, plan.files, tables))
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
        staged: Mapping[str, Mapping[str, TableOrFuture]],
    ) -> dict[str, list[pa.Table]]:
        if (lo, hi) in have:
            span = have[(lo, hi)]
            cached = self._recent_spans.get(span.name)
            if cached is not None:
                return {k: [cached[k]] for k in KINDS}
            return {k: self._ds.read_summaries([span.path(k)]) for k in KINDS}
        if lo == hi:
            files = by_day.get(lo, [])
            with_summaries = [f for f in files if all(k in f.sidecars for k in KINDS)]
            found: dict[str, list[pa.Table]] = {k: [] for k in KINDS}
            # One lookup per file: the writing thread may drop old entries meanwhile. Files
            # of the write being committed have theirs in ``staged`` (computed by now).
            recent = {
                f.path: self._recent_rollups.get(f.path)
                or (resolved(staged[f.path]) if f.path in staged else None)
                for f in with_summaries
            }
            unread = [f for f in with_summaries if recent[f.path] is None]
            for k in KINDS:
                found[k] = [r[k] for r in recent.values() if r is not None]
                if unread:
                    found[k] += self._ds.read_sidecars(unread, k)
            for entry in files:
                if entry not in with_summaries:  # a small file: summarize its rows here
                    rows = read_rows(self._ds, entry).select(list(grains.INPUT_COLUMNS))
                    for k, table in grains.rollups(rows).items():
                        found[k].append(table)
            return found
        half = (hi - lo + 1) // 2
        left, right = parts(lo, lo + half - 1), parts(lo + half, hi)
        return {k: left[k] + right[k] for k in KINDS}
