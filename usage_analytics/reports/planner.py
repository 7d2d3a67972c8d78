"""The planner: which parts of a window are read from summaries, and which as rows.

A snapshot offers *pieces*: data files (with the time range of their rows and the grains they
have summaries of) and spans (every file of an aligned block of whole days, with the grains of
their summaries). For a report the planner picks, left to right, the largest spans whose days
lie inside the window, then for every other file inside the window the smallest grain that
covers the report, and scans the rows of everything else it needs. A summary covers a report
when it keeps every dimension the report groups by, filters on or conditions a measure on, and
every measure the report needs, when the piece lies wholly inside the window and inside one
bucket of the report, and (for costs) when no price changes inside it. So every fast path
adds up exactly the rows a plain scan would.

Nothing here reads a file: pieces are descriptions, and ``ref`` is whatever the caller needs to
read one.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pandas as pd

from .buckets import Buckets
from .grains import GRAINS, Grain
from .spec import ReportSpec

__all__ = ["Piece", "Plan", "plan"]

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

    @property
    def name(self) -> str:
        if self.days is not None:
            first, last = (str(pd.Timestamp(d * NS_PER_DAY, unit="ns").date()) for d in self.days)
            return f"span {first}..{last}"
        return str(getattr(self.ref, "path", self.ref))


@dataclass
class Plan:
    """Summaries to read (piece and grain) and pieces to scan."""

    summaries: list[tuple[Piece, Grain]] = field(default_factory=list)
    scans: list[Piece] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """The plan as a frame: each piece read, how, and the rows it holds."""
        rows = [(p.name, "summary", g.name, p.rows) for p, g in self.summaries]
        rows += [(p.name, "scan", "", p.rows) for p in self.scans]
        frame = pd.DataFrame(rows, columns=["piece", "read", "grain", "rows"])
        return frame.astype({"piece": "str", "read": "str", "grain": "str", "rows": "int64"})


def covering_grains(spec: ReportSpec) -> list[Grain]:
    """The grains whose summaries hold what ``spec`` needs, smallest first."""
    needs = spec.needs
    if needs.hists or needs.distinct:
        return []  # no declared grain keeps distributions or value sets yet
    measures = set(needs.measures)
    if needs.cost:
        measures |= {"sum_prompt_tokens", "sum_completion_tokens"}
    return [g for g in GRAINS if spec.dims <= set(g.dims) and g.provides(measures)]


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
    grains = covering_grains(spec) if use_summaries else []

    def usable(piece: Piece) -> Grain | None:
        if not (lo <= piece.first and piece.last <= last):
            return None
        if buckets is not None and not buckets.same_bucket(piece.first, piece.last):
            return None
        prices = spec.prices
        if (
            spec.needs.cost
            and prices is not None
            and not prices.constant_over(piece.first, piece.last)
        ):
            return None
        return next((g for g in grains if g.name in piece.grains), None)

    covered_days: set[int] = set()
    if grains:
        for span, grain in _tile(spans, lo, last, usable):
            out.summaries.append((span, grain))
            assert span.days is not None
            covered_days.update(range(span.days[0], span.days[1] + 1))
    for piece in files:
        if piece.last < lo or piece.first > last or piece.first // NS_PER_DAY in covered_days:
            continue
        chosen = usable(piece) if grains else None
        if chosen is not None:
            out.summaries.append((piece, chosen))
        else:
            out.scans.append(piece)
    return out


def _tile(spans: Sequence[Piece], lo: int, last: int, usable: Any) -> list[tuple[Piece, Grain]]:
    """The fewest usable spans that tile whole days inside [lo, last], largest first, left to
    right; days no usable span starts at are left to the files."""
    by_start: dict[int, list[tuple[int, Piece, Grain]]] = {}
    for span in spans:
        grain = usable(span)
        if grain is not None and span.days is not None:
            first, last_day = span.days
            by_start.setdefault(first, []).append((last_day, span, grain))
    if not by_start:
        return []
    starts = sorted(by_start)
    picked: list[tuple[Piece, Grain]] = []
    i = 0
    while i < len(starts):
        last_day, span, grain = max(by_start[starts[i]], key=lambda found: found[0])
        picked.append((span, grain))
        i = bisect.bisect_left(starts, last_day + 1, lo=i + 1)
    return picked
