"""The summaries of one data file: which grains a file gets (those much smaller than its rows,
``Grain.max_ratio``), and their computation on a write's threads while it writes the rows."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, TypeAlias

import numpy as np
import pyarrow as pa

from . import _layout
from ._storage import FileEntry
from .reports import grains

__all__ = [
    "FILE_KINDS",
    "KINDS",
    "ROLLUP_THREADS",
    "Computed",
    "day_groups",
    "file_worth",
    "fits",
    "missing_kinds",
    "submit_rollups",
    "summaries_of",
    "worth",
]

#: The summary kinds (one per declared grain), and those data files get.
KINDS: Final = tuple(g.name for g in grains.GRAINS)
FILE_KINDS: Final = tuple(g.name for g in grains.GRAINS if g.files)

#: Every summary computed for a data file, by kind (also those not worth writing).
Computed: TypeAlias = "Mapping[str, pa.Table]"


def day_groups(days: np.ndarray, order: np.ndarray | None = None) -> list[tuple[int, np.ndarray]]:
    """Row positions per day, days ascending; ``order`` (sorted by day first) is kept within."""
    if order is None:
        if len(days) and days.min() == days.max():  # the common case: one day
            return [(int(days[0]), np.arange(len(days)))]
        order = np.argsort(days, kind="stable")
    sorted_days = days[order]
    bounds = np.flatnonzero(sorted_days[1:] != sorted_days[:-1]) + 1
    return [(int(days[chunk[0]]), chunk) for chunk in np.split(order, bounds) if len(chunk)]


def fits(kind: str, n: int, rows: int, limit: float | None = None) -> bool:
    """Whether a summary of ``kind`` of ``n`` rows is small enough to write for ``rows`` rows
    (at most ``limit``, by default its grain's ``max_ratio``, rows per row)."""
    if _layout.SUMMARY_MAX_RATIO is not None:
        limit = _layout.SUMMARY_MAX_RATIO
    elif limit is None:
        limit = grains.grain(kind).max_ratio
    return n <= limit * rows


def worth(
    kind: str, table: pa.Table | None, rows: int, limit: float | None = None
) -> pa.Table | None:
    """``table`` if it is worth writing as a summary of ``rows`` rows (see :func:`fits`),
    else None."""
    if table is None or not fits(kind, table.num_rows, rows, limit):
        return None
    return table


def file_worth(kind: str, table: pa.Table | None, rows: int) -> pa.Table | None:
    """``table`` if a data file of ``rows`` rows gets it as its summary of ``kind`` (at most
    its grain's ``file_max_ratio`` rows per row)."""
    grain = grains.grain(kind)
    return worth(kind, table, rows, grain.file_max_ratio) if grain.files else None


def summaries_of(table: pa.Table) -> dict[str, pa.Table | None] | None:
    """The summaries a data file of ``table`` gets, by kind (None: not worth writing), or None
    when the file is smaller than ``ROLLUP_MIN_ROWS`` (reports scan it; ``compact()`` merges
    it later)."""
    if table.num_rows < _layout.ROLLUP_MIN_ROWS:
        return None
    return {k: file_worth(k, t, table.num_rows) for k, t in grains.rollups(table).items()}


def missing_kinds(entry: FileEntry) -> tuple[str, ...]:
    """The kinds a data file of ``ROLLUP_MIN_ROWS`` rows or more should have and was never
    given (written by an older version, or before a grain was declared)."""
    if entry.rows < _layout.ROLLUP_MIN_ROWS:
        return ()
    return tuple(k for k in FILE_KINDS if k not in entry.sidecars and k not in entry.skipped)


#: Threads a write computes a file's summaries on (each a part of the grains; see
#: ``grains.compute_parts``) while the write's own thread writes the rows; then each takes a
#: part of the spans' kinds (``SPAN_PARTS``). On two cores, two threads take a 100,000-row
#: file's summaries from 46 to 38 ms alone, and the spans of a day run beside the next file's
#: summaries.
ROLLUP_THREADS: Final = 2


def submit_rollups(
    pool: ThreadPoolExecutor, batch: pa.Table, days: np.ndarray
) -> dict[int, tuple[dict[str, Future[pa.Table | None]], Future[Computed]]]:
    """Start computing, on ``pool`` (of ``ROLLUP_THREADS`` threads), the summaries of the file
    each day of ``batch`` becomes (days with fewer than ``ROLLUP_MIN_ROWS`` rows get none),
    one part of the grains per thread. Returns, per day, the futures of what the commit
    writes (None where not worth it) and the future of every summary computed (for spans)."""
    out: dict[int, tuple[dict[str, Future[pa.Table | None]], Future[Computed]]] = {}
    parts: list[tuple[int, np.ndarray | None]] = []
    groups = day_groups(days)
    for day, idx in groups:
        if len(idx) >= _layout.ROLLUP_MIN_ROWS:
            out[day] = ({kind: Future() for kind in grains.COMPUTE_ORDER}, Future())
            parts.append((day, None if len(groups) == 1 else idx))
    inputs = batch.select(list(grains.INPUT_COLUMNS))
    jobs = grains.compute_parts(ROLLUP_THREADS)
    lock = threading.Lock()
    found: dict[int, dict[str, pa.Table]] = {day: {} for day in out}

    def compute(kinds: tuple[str, ...]) -> None:
        for day, idx in parts:
            written, computed = out[day]
            try:
                if idx is None:
                    rows = inputs
                elif idx[-1] - idx[0] + 1 == len(idx):  # the day's rows are in one run
                    rows = inputs.slice(int(idx[0]), len(idx))
                else:
                    rows = inputs.take(pa.array(idx))
                for kind, table in grains.iter_rollups(rows, kinds):  # written as they come
                    written[kind].set_result(file_worth(kind, table, rows.num_rows))
                    with lock:
                        found[day][kind] = table
                with lock:  # the last part done gives them all
                    if len(found[day]) == len(grains.COMPUTE_ORDER):
                        computed.set_result({k: found[day][k] for k in grains.COMPUTE_ORDER})
            except BaseException as exc:  # raised in the commit that waits for it
                with lock:
                    futures: list[Future[Any]] = [*written.values(), computed]
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
        # Give back what this thread freed (pyarrow's allocator keeps each thread's pages).
        pa.default_memory_pool().release_unused()

    for kinds in jobs:
        pool.submit(compute, kinds)
    return out
