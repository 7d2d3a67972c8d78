"""Summary maintenance: the summaries of each grain beside every large data file, and spans.

Each data file of ``ROLLUP_MIN_ROWS`` rows or more gets a summary file of every grain that is
much smaller than its rows (``Grain.max_ratio``), written and removed in the same commit as the
file; a kind computed and not worth writing is listed as ``skipped``. Aligned blocks of 1, 2, 4,
... whole days get *span* summaries of each grain whose rows shrink over days, combined from
their two halves (single days from their files' summaries, or from their rows where a file has
no summary of that kind), written where they are much smaller than the rows they cover. A
report over a window of whole days then reads a few spans instead of every file. A span
summarizes every file of its days, or (a partial span, see ``SpanEntry``) the files it lists.

This module maintains the spans (with the grains of ``reports``; ``_file_summaries`` computes
those of files) and stages them into transactions (of ``_storage``); it keeps the summaries it
computed last in memory, to build the next spans from them instead of reading them back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Final, TypeAlias

import numpy as np
import pyarrow as pa

from . import _layout
from ._compressed import Compressed
from ._file_summaries import (
    FILE_KINDS,
    KINDS,
    ROLLUP_THREADS,
    Computed,
    day_groups,
    file_worth,
    fits,
    missing_kinds,
    submit_rollups,
    summaries_of,
    worth,
)
from ._reads import read_rows
from ._storage import Dataset, FileEntry, Snapshot, SpanEntry, SpanTable, day_number, manifest
from ._storage.fileset import DayPaths, date_of
from .reports import grains

__all__ = [
    "KINDS",
    "ROLLUP_THREADS",
    "SPAN_KINDS",
    "SPAN_PARTS",
    "Compressed",
    "Computed",
    "SpanPlan",
    "Summaries",
    "day_groups",
    "file_worth",
    "missing_kinds",
    "open_day_is_due",
    "span_kinds",
    "submit_rollups",
    "summaries_of",
    "worth",
]

#: The summary kinds spans get.
SPAN_KINDS: Final = tuple(g.name for g in grains.GRAINS if g.spans)


#: Kinds of days only, not of single files: a day of one file gets a span for them.
_SPAN_ONLY: Final = tuple(k for k in SPAN_KINDS if k not in FILE_KINDS)


def span_kinds(days: int, only: Collection[str] | None = None) -> tuple[str, ...]:
    """The kinds a span of ``days`` days gets (of those in ``only``, when given)."""
    return tuple(
        k
        for k in SPAN_KINDS
        if ((limit := grains.grain(k).max_span_days) is None or days <= limit)
        and (only is None or k in only)
    )


def _span_parts() -> tuple[tuple[str, ...], ...]:
    """``SPAN_KINDS`` in two parts of about equal work, for two threads."""
    first = tuple(k for k in SPAN_KINDS if k in _FIRST_PART)
    return (first, tuple(k for k in SPAN_KINDS if k not in first)) if first else (SPAN_KINDS,)


#: The kinds of the first part: combining the day's files into a day span took, per
#: 100,000-row batch of the benchmark's 10M-row load, 13 ms for ``groups``, 10 for
#: ``latency``, 1-2 for each other kind; on one thread, the spans of a finished day made its
#: last batch wait 30 ms for them.
_FIRST_PART: Final = frozenset(("groups", "users", "projects"))

#: The kinds a write computes its spans in, each part on a thread of its own.
SPAN_PARTS: Final = _span_parts()


@dataclass(frozen=True)
class SpanPlan:
    """A span summary to compute: days first..last, from exactly the data files ``files``;
    ``replaces`` is the span of the same days it supersedes (one lacking kinds)."""

    first: int
    last: int
    files: tuple[str, ...]
    replaces: SpanEntry | None = None


@dataclass(frozen=True)
class _Carry:
    """A kind of a day's span as computed: the data files it combined, its table, and the rows
    a report reads of that kind for those files."""

    files: frozenset[str]  # paths: a data file never changes (a rewrite is a new file)
    table: pa.Table
    reads: int


@dataclass(frozen=True)
class NewSpan:
    """A span summary computed from a snapshot, not yet committed."""

    first: int
    last: int
    files: tuple[str, ...]  # the data files of its days it was computed from
    tables: dict[str, pa.Table | None]  # None: not worth writing (or not computable now)
    replaces: SpanEntry | None = None


def open_day_is_due(snap: Snapshot, day: int) -> bool:
    """Whether ``day``, which a load may still be writing, gets a span of its own now: when it
    holds ``OPEN_DAY_FILES`` files with summaries and no span, or when the files with
    summaries added since its (partial) span number ``OPEN_DAY_FILES`` and an eighth of those
    the span summarizes. A report over the day then reads one summary and a few files'; the
    span is built from the last one and the files added since, about eight times for each
    doubling of the day's files (past ``MAX_SPAN_FILES``, at doubling counts)."""
    files = [
        f for f in snap.by_date().get(str(np.datetime64(day, "D")), []) if f.sidecars or f.skipped
    ]
    every = _layout.OPEN_DAY_FILES
    span = next((sp for sp in snap.spans if sp.first_day == sp.last_day == day), None)
    if span is None:
        if len(files) > manifest.MAX_SPAN_FILES:
            # The next file would drop a span of so many files (see SpanEntry): from then on,
            # at doubling counts.
            return len(files) % every == 0 and (len(files) // every).bit_count() == 1
        return len(files) >= every
    covered = sum(span.covers(f) for f in files)
    newer = len(files) - covered
    return newer >= every and newer >= covered / 8


def _complete(span: SpanEntry) -> bool:
    """Whether a span was given every kind of a span of its days (written or found not worth
    writing)."""
    kinds = span_kinds(span.last_day - span.first_day + 1)
    return all(k in span.kinds or k in span.skipped for k in kinds)


def _too_large(kind: str, pieces: Sequence[pa.Table], most: float, rows: int) -> bool:
    """Whether the span of ``kind`` that ``pieces`` combine into (of days of ``rows`` rows)
    would have more than ``most`` rows, or too many to write, known before combining them:
    it has at least the rows of the largest piece (each holds a key once). Spans of two days
    of every kind but ``groups`` mostly do (the days differ): of the 208 combinations a
    2M-row CSV load over 30 days made, 119 were such (latency spans of its days of 67,000
    rows too)."""
    least = max(t.num_rows for t in pieces)
    return least > most or not fits(kind, least, rows)


#: What a block of days holds, per kind: the tables that add up to it, or None when it cannot
#: be summarized now (a file of the commit being made lacks that kind).
_Parts: TypeAlias = "dict[str, list[pa.Table] | None]"


class Summaries:
    """The summary maintenance of one store, with the summaries it computed last."""

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self._recent_spans: dict[str, dict[str, pa.Table]] = {}
        # The summaries of the files this store wrote last, by path (all kinds computed, also
        # those not written): a load summarizes each day into a span right after it, from
        # these rather than from the disk.
        self._recent_rollups: dict[str, Computed] = {}
        # The last day spans computed (also those of a commit that failed), each with the data
        # files it combined: a day's next span combines its tables with the files added since,
        # instead of every file of the day again (a day still loading gets a span every few
        # files: without this, each would combine every file of the day).
        # (By day, then kind: the parts of a commit's spans are computed on threads of their
        # own, each keeping its kinds.)
        self._day_carry: dict[int, dict[str, _Carry]] = {}
        self._carry_lock = threading.Lock()

    def remember_rollups(self, computed: Mapping[str, Future[Computed]]) -> None:
        for path, future in computed.items():
            self._recent_rollups[path] = future.result()
        while len(self._recent_rollups) > _layout.RECENT_ROLLUPS:
            del self._recent_rollups[next(iter(self._recent_rollups))]

    def remember_spans(self, built: Mapping[str, Mapping[str, pa.Table | None]]) -> None:
        """Keep the tables of the latest few committed spans (spans are immutable), to build
        their parents without reading them."""
        for name, tables in built.items():
            self._recent_spans[name] = {k: t for k, t in tables.items() if t is not None}
        while len(self._recent_spans) > _layout.RECENT_SPANS:
            del self._recent_spans[next(iter(self._recent_spans))]

    # -- file summaries ----------------------------------------------------------------------

    def fill_missing(self, lock_timeout: float | None = None) -> int:
        """Give every large data file the summaries of the kinds it was never given (files
        written by an older version, or before a grain was declared); returns how many files
        got some. One commit per partition."""
        done = 0
        for date in self._ds.snapshot().dates():
            with self._ds.transaction(timeout=lock_timeout) as tx:
                entries = [e for e in tx.base.by_date().get(date, []) if missing_kinds(e)]
                for entry in entries:
                    kinds = missing_kinds(entry)
                    encoded = grains.encode_keys(read_rows(self._ds, entry, kinds), kinds)
                    tables = {k: grains.rollup(k, encoded) for k in kinds}
                    tx.add_summaries(
                        entry, {k: file_worth(k, t, entry.rows) for k, t in tables.items()}
                    )
                tx.operation = "SUMMARIZE"
                tx.commit()
                done += len(entries)
        return done

    # -- spans -------------------------------------------------------------------------------

    def build_spans(self, before_day: int | None = None, lock_timeout: float | None = None) -> int:
        """Commit the missing spans of aligned blocks of whole days before ``before_day`` (all
        days when None); returns how many were added."""
        with self._ds.transaction(timeout=lock_timeout) as tx:
            plans = self.plan_spans(tx.base, before_day)
            spans = self.span_tables(tx.base, plans, {})
            built = {}
            for span in spans:
                if span.replaces is not None:
                    tx.drop_span(span.replaces)
                entry = tx.add_span(span.first, span.last, span.tables, span.files)
                built[entry.name] = span.tables
            tx.operation = "SUMMARIZE"
            tx.commit()
        self.remember_spans(built)
        return len(built)

    def plan_spans(
        self,
        snap: Snapshot,
        before_day: int | None,
        staged: Mapping[str, Future[Computed] | None] | None = None,
        open_day: int | None = None,
    ) -> list[SpanPlan]:
        """The missing spans of ``snap``, smallest first (each combined from spans before it in
        the list, or from file summaries).

        Only blocks that end before ``before_day`` are built (a load passes the first day it
        writes: it may still be loading that day and those after it), and only blocks with
        data in both halves: otherwise the half with data says it all. The day ``open_day``
        gets a span of its own all the same (see :func:`open_day_is_due`). A block whose span
        lacks some kinds (written by an older version) is built again, except in a write's
        commit (``staged`` given).

        ``snap`` may be the state a write is about to commit: ``staged`` then holds its new
        files, not on disk yet, each with the future of every summary computed for it (None
        for a file too small for summaries).
        """
        # The files of a day are read only for the blocks planned (a state of many files
        # reads its checkpoint a date at a time).
        by_day = DayPaths(snap.fileset)
        if not by_day or not SPAN_KINDS:
            return []
        first, last = min(by_day), max(by_day)
        if open_day is not None and open_day not in by_day:
            open_day = None
        if before_day is not None:
            last = min(last, before_day - 1)
        # A small file of the write being committed is not on disk yet: its day can be
        # summarized only from summaries, which it has none of.
        in_commit = staged is not None
        staged = staged or {}
        without = [day_number(date_of(p)) for p, f in staged.items() if not f and p in snap.by_path]
        if without:
            last = min(last, min(without) - 1)
            if open_day is not None and open_day >= min(without):
                open_day = None
        have: dict[tuple[int, int], SpanEntry] = {}
        for sp in snap.spans:
            have[(sp.first_day, sp.last_day)] = sp
        plans: list[SpanPlan] = []
        for level in range(_layout.MAX_SPAN_LEVEL + 1):
            size = 1 << level
            top = last if open_day is None else max(last, open_day)
            for start in range(first - first % size, top + 1, size):
                end = start + size - 1
                existing = have.get((start, end))
                # A span lacking kinds is built again, but not in a load's commit: its days'
                # files may lack them too (written by an older version), and summarizing their
                # rows is maintenance work (build_spans, compact).
                # A partial span is built again (complete) once due: its days are done.
                if (end > last and not (size == 1 and start == open_day)) or (
                    existing is not None
                    and not existing.partial
                    and (_complete(existing) or in_commit)
                ):
                    continue
                n_files = len(by_day.get(start, ())) if size == 1 else 0
                if size == 1 and (not n_files or (n_files == 1 and not _SPAN_ONLY)):
                    continue  # a single file's own summaries already cover its day
                half = size // 2
                if size > 1 and not (
                    any(d in by_day for d in range(start, start + half))
                    and any(d in by_day for d in range(start + half, end + 1))
                ):
                    continue
                files = tuple(sorted(p for d in range(start, end + 1) for p in by_day.get(d, ())))
                plans.append(SpanPlan(start, end, files, existing))
        return plans

    def span_tables(
        self,
        snap: Snapshot,
        plans: Sequence[SpanPlan],
        staged: Mapping[str, Future[Computed] | None],
        out: Sequence[Mapping[str, SpanTable]] | None = None,
        only: Collection[str] | None = None,
    ) -> list[NewSpan]:
        """Compute the ``plans`` of ``snap``; with ``out``, set each span's tables (None where
        not worth writing) as its futures' results as soon as computed, instead of returning
        them (the commit writes them meanwhile), and any error as the exception of every future
        not yet set (a commit waits for them: none may be left unset).

        With ``only``, just the kinds it names are computed (and only their futures set): a
        commit computes its spans a part of the kinds per thread (see ``SPAN_PARTS``).
        """
        new: list[NewSpan] = []
        try:
            by_day: dict[int, list[FileEntry]] = {}
            rows_by_day: dict[int, int] = {}
            for entry in snap.files:
                day = day_number(entry.date)
                by_day.setdefault(day, []).append(entry)
                rows_by_day[day] = rows_by_day.get(day, 0) + entry.rows
            have = {(sp.first_day, sp.last_day): sp for sp in snap.spans}
            memo: dict[tuple[int, int], _Parts] = {}
            # Per block and kind, the rows a report reads for the block's days: the rows of
            # its span when it has one, else what it reads for each half (or, for one day,
            # each file's summary, or the file's rows where it has none).
            reads: dict[tuple[int, int], dict[str, int]] = {}

            def parts(lo: int, hi: int) -> _Parts:
                """The summary tables of days lo..hi per kind."""
                if (lo, hi) not in memo:
                    memo[(lo, hi)] = self._block_parts(
                        lo, hi, by_day, have, parts, staged, reads.setdefault((lo, hi), {}), only
                    )
                return memo[(lo, hi)]

            def read_in_place(lo: int, hi: int, kind: str) -> int:
                """The rows a report reads for days lo..hi of ``kind`` without their span."""
                if lo == hi:
                    return reads.get((lo, hi), {}).get(f"files:{kind}", 0)
                half = (hi - lo + 1) // 2
                return sum(
                    reads.get(block, {}).get(kind, read_in_place(*block, kind))
                    for block in ((lo, lo + half - 1), (lo + half, hi))
                )

            for i, plan in enumerate(plans):
                found = parts(plan.first, plan.last)
                rows = sum(rows_by_day.get(d, 0) for d in range(plan.first, plan.last + 1))
                block = (plan.first, plan.last)
                one_file = plan.first == plan.last and len(by_day.get(plan.first, ())) < 2
                kinds = span_kinds(plan.last - plan.first + 1, only)
                # Kept for the spans of more days, so without the kinds those never get.
                wider = span_kinds(2 * (plan.last - plan.first + 1), only)
                kept: _Parts = {}
                block_reads = reads.setdefault(block, {})
                tables: dict[str, pa.Table | None] = dict.fromkeys(SPAN_KINDS)
                for kind in kinds:
                    pieces = found[kind]
                    in_place = read_in_place(plan.first, plan.last, kind)
                    block_reads[kind] = in_place
                    if one_file and kind in FILE_KINDS:
                        # The file's own summary covers its day: nothing to write or combine.
                        kept[kind] = pieces
                        continue
                    # Worth writing when small, and when it shrinks what a report would read
                    # in its place (its halves' spans, files' summaries or rows) enough to
                    # save reading that.
                    days = plan.last - plan.first + 1
                    share = grains.grain(kind).shrink_of(days)
                    if share is None:
                        share = _layout.DAY_SPAN_SHRINK if days == 1 else _layout.SPAN_SHRINK
                    stays = plan.replaces is not None and kind in plan.replaces.kinds
                    if pieces and not stays and _too_large(kind, pieces, share * in_place, rows):
                        kept[kind] = pieces  # the wider span combines the pieces instead
                        continue
                    table = None if pieces is None else grains.combine(kind, pieces)
                    kept[kind] = None if table is None else [table]
                    if table is not None and stays:
                        # A kind the replaced span has stays (reports read it in its place).
                        tables[kind] = table
                        block_reads[kind] = table.num_rows
                        continue
                    if table is not None and table.num_rows <= share * in_place:
                        tables[kind] = done = worth(kind, table, rows)
                        if done is not None:
                            block_reads[kind] = done.num_rows
                if plan.first == plan.last and not one_file:
                    self._carry(plan.first, by_day.get(plan.first, []), kept, block_reads)
                memo[block] = {
                    k: kept.get(k) if k in wider else None
                    for k in SPAN_KINDS
                    if only is None or k in only
                }
                # A block's parts are used only by the one block around it, built after it:
                # those inside this block are let go.
                for inner in [b for b in memo if plan.first <= b[0] and b[1] <= plan.last]:
                    if inner != block:
                        del memo[inner]
                del found, kept
                if out is None:
                    new.append(NewSpan(plan.first, plan.last, plan.files, tables, plan.replaces))
                else:  # the commit holds them (and lets them go once written)
                    for kind, future in out[i].items():
                        if only is None or kind in only:
                            future.set_result(tables[kind])
                    del tables
        except BaseException as exc:
            if out is None:
                raise
            for futures in out:
                for kind, future in futures.items():
                    if (only is None or kind in only) and not future.done():
                        future.set_exception(exc)
        return new

    def _block_parts(
        self,
        lo: int,
        hi: int,
        by_day: dict[int, list[FileEntry]],
        have: dict[tuple[int, int], SpanEntry],
        parts: Callable[[int, int], _Parts],
        staged: Mapping[str, Future[Computed] | None],
        reads: dict[str, int],
        only: Collection[str] | None = None,
    ) -> _Parts:
        """The summary tables of days lo..hi per kind (None: not computable now); fills
        ``reads`` with the rows a report reads for the block: of each kind its span has
        (by kind), and for one day of its files (by ``files:<kind>``)."""
        found: _Parts = {}
        wanted = list(span_kinds(hi - lo + 1, only))
        span = have.get((lo, hi))
        entries = by_day.get(lo, []) if lo == hi else []
        carry: dict[str, _Carry] = {}
        if lo == hi:
            with self._carry_lock:
                known = dict(self._day_carry.get(lo, {}))
            paths = {e.path for e in entries}
            carry = {k: c for k, c in known.items() if k in wanted and c.files <= paths}
        if (
            span is not None
            and span.partial
            and carry
            and all(k in carry for k in span.kinds if k in wanted)
        ):
            span = None  # the day's last span as computed, which the carry holds, is as good
        if span is not None:
            # The kinds of the block's span, with the files added to its days since a partial
            # one (combined in any order: a combined summary is sorted by its keys).
            cached = self._recent_spans.get(span.name, {})
            kinds = [k for k in span.kinds if k in wanted]
            for k in kinds:
                read = [cached[k]] if k in cached else None
                found[k] = read or self._ds.read_summaries([span.path(k)])
            days = range(lo, hi + 1) if span.partial else range(0)
            for entry in (e for d in days for e in by_day.get(d, ()) if not span.covers(e)):
                self._add_file(entry, kinds, found, staged, {})
            for k in kinds:
                reads[k] = sum(t.num_rows for t in found[k] or ())
            wanted = [k for k in wanted if k not in found]
        if not wanted:
            return found
        if lo < hi:
            half = (hi - lo + 1) // 2
            left, right = parts(lo, lo + half - 1), parts(lo + half, hi)
            for k in wanted:
                a, b = left[k], right[k]
                found[k] = None if a is None or b is None else a + b
            return found
        for k in wanted:
            found[k] = []
        # The tables of the day's last span, of the files it combined (unchanged since): only
        # the day's other files are added to them.
        for k, carried in carry.items():
            found[k] = [carried.table]
            reads[f"files:{k}"] = carried.reads
        for entry in entries:
            need = [k for k in wanted if k not in carry or entry.path not in carry[k].files]
            if need:
                self._add_file(entry, need, found, staged, reads)
        return found

    def _add_file(
        self,
        entry: FileEntry,
        wanted: Sequence[str],
        found: _Parts,
        staged: Mapping[str, Future[Computed] | None],
        reads: dict[str, int],
    ) -> None:
        """Add the summaries of ``wanted`` kinds of one data file to ``found`` (see
        :meth:`_block_parts`)."""
        # One lookup per file: the writing thread may drop old entries meanwhile. Files
        # of the write being committed have theirs in ``staged`` (computed by now).
        recent = self._recent_rollups.get(entry.path)
        pending = staged.get(entry.path)
        if recent is None and pending is not None:
            recent = pending.result()
        on_disk = [k for k in wanted if k in entry.sidecars and not (recent and k in recent)]
        tables = dict(zip(on_disk, self._read_kinds(entry, on_disk), strict=True))
        if recent:
            tables.update((k, recent[k]) for k in wanted if k in recent and k not in tables)
        lacking = [k for k in wanted if k not in tables]
        if lacking and entry.path in staged:
            # A file being committed, not on disk yet: the block has no summary of that
            # kind now.
            for k in lacking:
                found[k] = None
            lacking = []
        if lacking:
            # A small file, or a large one whose summary of a kind was not worth writing
            # (or that an older version wrote without it): summarize its rows here.
            encoded = grains.encode_keys(read_rows(self._ds, entry, lacking), lacking)
            tables.update((k, grains.rollup(k, encoded)) for k in lacking)
        for k in wanted:
            pieces = found[k]
            if pieces is not None and k in tables:
                pieces.append(tables[k])
            # A report reads the file's summary of the kind where it has one written,
            # else the file's rows.
            kept = k in entry.sidecars or (
                entry.path in staged
                and k in tables
                and entry.rows >= _layout.ROLLUP_MIN_ROWS
                and file_worth(k, tables[k], entry.rows) is not None
            )
            size = tables[k].num_rows if kept and k in tables else entry.rows
            reads[f"files:{k}"] = reads.get(f"files:{k}", 0) + size

    def _carry(
        self, day: int, entries: Sequence[FileEntry], kept: _Parts, reads: Mapping[str, int]
    ) -> None:
        """Keep the tables of the span of ``day`` just computed from ``entries`` (see
        ``_day_carry``); only the last two days' are kept."""
        tables = {
            k: v[0]
            for k, v in kept.items()
            if v is not None and len(v) == 1 and f"files:{k}" in reads
        }
        files = frozenset(e.path for e in entries)
        with self._carry_lock:  # the threads of the parts of one commit's spans
            known = self._day_carry.setdefault(day, {})
            for k, table in tables.items():
                known[k] = _Carry(files, table, reads[f"files:{k}"])
            for old in sorted(self._day_carry)[:-2]:
                del self._day_carry[old]

    def _read_kinds(self, entry: FileEntry, kinds: Sequence[str]) -> list[pa.Table]:
        return [self._ds.read_sidecars([entry], k)[0] for k in kinds]
