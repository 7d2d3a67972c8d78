"""The planner: which parts of a window are read from summaries, and which as rows.

A snapshot offers *pieces*: data files (with the time range of their rows and the grains they
have summaries of) and spans (every file of an aligned block of whole days, or the files a
partial span lists, with the grains of their summaries). A report needs a few partial
*components* (its sums, the distribution of each column it takes percentiles of, the value set
of each column it counts distinct values of, its priced tokens); each can come from any grain
that gives it. For each piece the planner takes,
for every component, the smallest grain that covers it:

- a grain of whole files or spans covers a piece that lies inside the window and inside one
  bucket of the report;
- an hourly grain covers the hours of a piece that lie wholly inside the window, when the
  report's buckets start on whole hours there; the rest of the piece inside the window (a
  window's unaligned edge) is scanned;
- a grain keeps every dimension the report groups by or filters on, and every measure it needs
  (see ``Grain.provides`` and ``Grain.gives``); for costs, no price may change inside the piece.
- a span of several days is read only with the smallest grain that fits (a span lacking it
  may hold a larger one only, and more rows than the spans of its days).

Spans are picked first, largest first, left to right, over the whole days they cover; then
spans of the window's first and last day by their hours (where the day has two or more files
there), with the window's unaligned edges in that day scanned from its files; then files
(those of days no span was read for, and those a partial span read does not list);
everything no summary covers is scanned. So every fast path adds up exactly the rows a
plain scan would. Nothing here reads a file: pieces are descriptions, and ``ref`` is whatever
the caller needs to read one.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd

from .buckets import Buckets
from .grains import GRAINS, HOUR_NS, Grain
from .spec import ReportSpec

__all__ = ["Piece", "Plan", "Read", "Scan", "components", "plan"]

NS_PER_DAY: Final = 86_400 * 10**9


@dataclass(frozen=True)
class Piece:
    """A part of a snapshot a plan can read: a data file, or a span of whole days."""

    ref: Any
    first: int  # the first and last timestamps it may hold
    last: int
    rows: int
    grains: frozenset[str]
    days: tuple[int, int] | None = None  # a span's first and last day
    #: The names of the files a partial span summarizes (None: every file of its days).
    files: frozenset[str] | None = None

    def covers(self, piece: Piece) -> bool:
        """Whether this span summarizes the rows of the file ``piece``."""
        assert self.days is not None
        return self.days[0] <= piece.first // NS_PER_DAY <= self.days[1] and (
            self.files is None or piece.name in self.files
        )

    @property
    def name(self) -> str:
        if self.days is not None:
            first, last = (str(pd.Timestamp(d * NS_PER_DAY, unit="ns").date()) for d in self.days)
            return f"span {first}..{last}"
        return str(getattr(self.ref, "path", self.ref))


@dataclass(frozen=True)
class Read:
    """Summaries of one piece: the grain each component is read from, and the hours used
    (``(first, last)`` hour numbers, inclusive; None: the whole piece)."""

    piece: Piece
    grains: dict[str, Grain]
    hours: tuple[int, int] | None = None


@dataclass(frozen=True)
class Scan:
    """Rows of one piece, in the time ranges ``[start, end)`` given."""

    piece: Piece
    ranges: tuple[tuple[int, int], ...]


@dataclass
class Plan:
    """Summaries to read and rows to scan."""

    reads: list[Read] = field(default_factory=list)
    scans: list[Scan] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """The plan as a frame: each piece read, how (and which grains), and the rows it holds
        (for a piece read partly, the rows of the whole piece)."""
        rows = []
        for r in self.reads:
            grains = ",".join(dict.fromkeys(g.name for g in r.grains.values()))
            part = "" if r.hours is None else " (hours)"
            rows.append((r.piece.name, "summary" + part, grains, r.piece.rows))
        rows += [(s.piece.name, "scan", "", s.piece.rows) for s in self.scans]
        frame = pd.DataFrame(rows, columns=["piece", "read", "grain", "rows"])
        return frame.astype({"piece": "str", "read": "str", "grain": "str", "rows": "int64"})


def components(spec: ReportSpec) -> list[str]:
    """The partial components ``spec`` needs: its sums, then the others."""
    needs = spec.needs
    out = ["base"]
    out += [f"hist:{c}" for c in sorted(needs.hists)]
    out += [f"distinct:{c}" for c in sorted(needs.distinct)]
    if needs.cost:
        out.append("cost")
    return out


def _covering(spec: ReportSpec) -> dict[str, list[Grain]]:
    """The grains that can give each component of ``spec``, smallest first."""
    dims = spec.dims
    out: dict[str, list[Grain]] = {}
    for component in components(spec):
        fits = []
        for grain in GRAINS:
            if not dims <= set(grain.dims):
                continue
            if component == "base":
                ok = grain.provides(spec.needs.measures)
            else:
                ok = grain.gives(component)
            if ok:
                fits.append(grain)
        out[component] = fits
    return out


def _hour_aligned(buckets: Buckets | None, start: int, end: int) -> bool:
    """Whether no bucket starts inside an hour within [start, end)."""
    if buckets is None:
        return True
    starts = buckets.starts
    i, j = np.searchsorted(starts, [start, end], side="left")
    return bool((starts[i:j] % HOUR_NS == 0).all())


def plan(
    spec: ReportSpec,
    buckets: Buckets | None,
    files: Sequence[Piece],
    spans: Sequence[Piece] = (),
    *,
    use_summaries: bool = True,
) -> Plan:
    """How to read the pieces of a snapshot for ``spec`` (see the module docstring)."""
    out = Plan()
    if spec.empty:
        return out
    lo, last = spec.lo, spec.hi - 1
    covering = _covering(spec) if use_summaries else {}
    if not all(covering.values()):
        covering = {}
    prices = spec.prices if spec.needs.cost else None

    def priced(first: int, end: int) -> bool:
        return prices is None or prices.constant_over(first, end)

    def whole(piece: Piece) -> dict[str, Grain] | None:
        """Grains that give every component for the whole piece, or None."""
        if not covering or not (lo <= piece.first and piece.last <= last):
            return None
        if not priced(piece.first, piece.last):
            return None
        one_bucket = buckets is None or buckets.same_bucket(piece.first, piece.last)
        aligned = _hour_aligned(buckets, piece.first - piece.first % HOUR_NS, piece.last + 1)
        # A span of several days only with the smallest grain that fits: one with a larger
        # grain (a pair of days of ``groups`` only) can hold more rows than its days' spans.
        several = piece.days is not None and piece.days[0] != piece.days[1]
        chosen = {}
        for component, grains in covering.items():
            fit = [g for g in grains if (one_bucket if not g.hourly else aligned)]
            grain = next((g for g in fit if g.name in piece.grains), None)
            if grain is None or (several and grain is not fit[0]):
                return None
            chosen[component] = grain
        return chosen

    # The span read for each day it covers (spans read never share a day).
    read_days: dict[int, Piece] = {}
    if covering:
        for span, tiled in _tile(spans, whole):
            out.reads.append(Read(span, tiled))
            assert span.days is not None
            read_days.update(dict.fromkeys(range(span.days[0], span.days[1] + 1), span))
        for read, scans in _edge_days(
            spans,
            files,
            read_days.keys(),
            (lo, last + 1),
            lambda p: _hours(p, lo, last + 1, covering, buckets, priced),
        ):
            out.reads.append(read)
            out.scans += scans
            assert read.piece.days is not None
            read_days[read.piece.days[0]] = read.piece
    for piece in files:
        if piece.last < lo or piece.first > last:
            continue
        day_read = read_days.get(piece.first // NS_PER_DAY)
        if day_read is not None and day_read.covers(piece):
            continue  # else a file added to the days of a partial span since
        found = whole(piece)
        if found is not None:
            out.reads.append(Read(piece, found))
            continue
        start, end = max(lo, piece.first), min(last, piece.last) + 1  # the part in the window
        hours = _hours(piece, lo, last + 1, covering, buckets, priced) if covering else None
        if hours is None:
            # The whole window, not its part in this piece: the same for every such piece,
            # so that they are scanned together (in parallel, as one dataset).
            out.scans.append(Scan(piece, ((lo, last + 1),)))
            continue
        (first_hour, last_hour), hourly = hours
        out.reads.append(Read(piece, hourly, (first_hour, last_hour)))
        edges = [
            (start, first_hour * HOUR_NS),
            ((last_hour + 1) * HOUR_NS, end),
        ]
        edges = [(a, b) for a, b in edges if a < b]
        if edges:
            out.scans.append(Scan(piece, tuple(edges)))
    return out


def _hours(
    piece: Piece,
    start: int,
    end: int,
    covering: dict[str, list[Grain]],
    buckets: Buckets | None,
    priced: Callable[[int, int], bool],
) -> tuple[tuple[int, int], dict[str, Grain]] | None:
    """The hours of ``piece`` that lie wholly inside the window [start, end) and the hourly
    grains that give every component for them, or None. (An hour the piece holds only part
    of is whole in its summary: the piece has no rows in the rest of it.)"""
    first_hour = max(-(-start // HOUR_NS), piece.first // HOUR_NS)
    last_hour = min(end // HOUR_NS - 1, piece.last // HOUR_NS)
    if first_hour > last_hour:
        return None
    span = (first_hour * HOUR_NS, (last_hour + 1) * HOUR_NS)
    if not _hour_aligned(buckets, *span) or not priced(span[0], span[1] - 1):
        return None
    chosen = {}
    for component, grains in covering.items():
        grain = next((g for g in grains if g.hourly and g.name in piece.grains), None)
        if grain is None:
            return None
        chosen[component] = grain
    return (first_hour, last_hour), chosen


def _edge_days(
    spans: Sequence[Piece],
    files: Sequence[Piece],
    covered_days: Collection[int],
    window: tuple[int, int],
    hours_of: Callable[[Piece], tuple[tuple[int, int], dict[str, Grain]] | None],
) -> list[tuple[Read, list[Scan]]]:
    """Spans of one day that the window ``[start, end)`` holds only part of (its first or last
    day), read by the hours of an hourly grain where that saves reading the summaries of two
    or more files; each with the scans of the parts of the window in that day outside those
    hours (unaligned edges), in the day's files it summarizes that may hold rows there."""
    start, end = window
    out: list[tuple[Read, list[Scan]]] = []
    taken = set(covered_days)
    for span in spans:
        if span.days is None or span.days[0] != span.days[1] or span.days[0] in taken:
            continue
        found = hours_of(span)
        if found is None:
            continue
        (first_hour, last_hour), hourly = found
        day = span.days[0]
        of_day = [p for p in files if p.first // NS_PER_DAY == day and span.covers(p)]
        lo, hi = first_hour * HOUR_NS, (last_hour + 1) * HOUR_NS
        if sum(p.first < hi and p.last >= lo for p in of_day) < 2:
            continue  # no fewer reads than the files'
        around = ((max(start, span.first), lo), (hi, min(end, span.last + 1)))
        edges = tuple((a, b) for a, b in around if a < b)
        scans = [
            Scan(p, edges) for p in of_day if any(p.first < b and p.last >= a for a, b in edges)
        ]
        out.append((Read(span, hourly, (first_hour, last_hour)), scans))
        taken.add(day)
    return out


def _tile(
    spans: Sequence[Piece], whole: Callable[[Piece], dict[str, Grain] | None]
) -> list[tuple[Piece, dict[str, Grain]]]:
    """The fewest usable spans that tile the whole days they cover, largest first, left to
    right; days no usable span starts at are left to the files."""
    by_start: dict[int, list[tuple[int, Piece, dict[str, Grain]]]] = {}
    for span in spans:
        grains = whole(span)
        if grains is not None and span.days is not None:
            first, last_day = span.days
            by_start.setdefault(first, []).append((last_day, span, grains))
    if not by_start:
        return []
    starts = sorted(by_start)
    picked: list[tuple[Piece, dict[str, Grain]]] = []
    i = 0
    while i < len(starts):
        last_day, span, grains = max(by_start[starts[i]], key=lambda found: found[0])
        picked.append((span, grains))
        i = bisect.bisect_left(starts, last_day + 1, lo=i + 1)
    return picked
