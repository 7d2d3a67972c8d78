"""Reading: rows of a snapshot, and reports run as their plans say (summary reads and scans).

Every read runs on one committed snapshot (``Dataset.read`` starts again on a newer one when a
later commit removed a file on the way).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ._storage import Dataset, FileEntry, Snapshot, day_date
from .errors import DatasetChangedError
from .reports import grains, planner
from .reports.engine import Report
from .reports.grains import Grain
from .reports.kernels import Partial
from .reports.planner import Piece
from .reports.spec import Filter
from .schema import (
    COLUMNS,
    CREATED_AT_DTYPE,
    INT32_COLUMNS,
    NS_PER_DAY,
    STRING_COLUMNS,
    arrow_schema,
)

__all__ = [
    "Task",
    "pieces",
    "plan_tasks",
    "read_rows",
    "row_filter",
    "run_report",
    "run_task",
    "scan_batches",
    "scan_frame",
    "scanned_columns",
    "sorted_frame",
    "to_frame",
    "window_files",
]

#: Rows per record batch that ``scan_batches`` yields at most.
BATCH_ROWS: Final = 1 << 16


def read_rows(ds: Dataset, entry: FileEntry, kinds: Sequence[str] | None = None) -> pa.Table:
    """Every column of one file (or those the summaries of grains ``kinds`` are computed
    from), in the current schema (columns it predates are zeros)."""
    if kinds is None:
        return ds.read_file(entry, COLUMNS).cast(arrow_schema())
    columns = list(grains.input_columns(kinds))
    schema = arrow_schema()
    return ds.read_file(entry, columns).cast(pa.schema([schema.field(c) for c in columns]))


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Rows as a frame with the stored dtypes (str, int32, UTC timestamps)."""
    df = table.to_pandas()
    for name in df.columns:
        if name in STRING_COLUMNS:
            df[name] = df[name].astype("str")
        elif name in INT32_COLUMNS:
            df[name] = df[name].astype(np.int32)
        elif name == "created_at":
            df[name] = df[name].astype(CREATED_AT_DTYPE)
    return df


def files_between(snap: Snapshot, lo: int, hi: int) -> list[FileEntry]:
    """The files of the partitions of the days of [lo, hi) (by the date index, so that a
    window costs its days, not the dataset's size)."""
    if lo >= hi:
        return []
    first, last = day_date(lo // NS_PER_DAY), day_date((hi - 1) // NS_PER_DAY)
    return snap.files_between(first, last)


def pieces(snap: Snapshot, lo: int, hi: int) -> tuple[list[Piece], list[Piece]]:
    """The data files and the spans of a snapshot that may hold rows of [lo, hi), as the
    planner sees them."""
    inside = files_between(snap, lo, hi)
    files = [Piece(e, *e.stats["timestamp"], e.rows, e.kinds) for e in inside]
    if not snap.spans:
        return files, []
    rows_by_day: dict[int, int] = {}
    for entry in inside:
        rows_by_day[entry.day] = rows_by_day.get(entry.day, 0) + entry.rows
    spans = []
    for span in snap.spans:
        if span.last_day < lo // NS_PER_DAY or span.first_day > (hi - 1) // NS_PER_DAY:
            continue
        days = range(span.first_day, span.last_day + 1)
        listed = None
        rows = sum(rows_by_day.get(d, 0) for d in days)
        if span.files is not None:  # every file it lists is live (see Log._replay)
            listed = frozenset(span.files)
            rows = sum(snap.by_path[p].rows for p in span.files)
        first, last = span.first_day * NS_PER_DAY, (span.last_day + 1) * NS_PER_DAY - 1
        spans.append(
            Piece(span, first, last, rows, frozenset(span.kinds), (days[0], days[-1]), listed)
        )
    return files, spans


def _summary_path(piece: Piece, kind: str) -> str:
    if piece.days is not None:
        return str(piece.ref.path(kind))
    return str(piece.ref.sidecar_path(kind))


@dataclass(frozen=True)
class Task:
    """One independent part of a report's work on one snapshot, which :func:`run_task` turns
    into partials: a scan of the rows of ``entries`` inside ``ranges``, or (``grain`` set) the
    reads of summaries of one grain, each with the piece it covers and the hours of it used."""

    entries: tuple[FileEntry, ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()
    grain: Grain | None = None
    components: tuple[str, ...] = ()
    reads: tuple[tuple[str, Piece, tuple[int, int] | None], ...] = ()


def plan_tasks(
    report: Report, snap: Snapshot, *, use_summaries: bool = True, task_rows: int | None = None
) -> tuple[planner.Plan, list[Task]]:
    """The plan of ``report`` on ``snap`` and the tasks that compute it. Rows are scanned in
    one task per set of time ranges, or with ``task_rows`` in tasks of files of about that many
    rows (for workers that run them side by side)."""
    files, spans = pieces(snap, report.spec.lo, report.spec.hi)
    plan = planner.plan(report.spec, report.buckets, files, spans, use_summaries=use_summaries)
    tasks: list[Task] = []
    by_ranges: dict[tuple[tuple[int, int], ...], list[FileEntry]] = {}
    for scan in plan.scans:
        by_ranges.setdefault(scan.ranges, []).append(scan.piece.ref)
    for ranges, entries in by_ranges.items():
        group: list[FileEntry] = []
        rows = 0
        for entry in entries:
            if group and task_rows is not None and rows >= task_rows:
                tasks.append(Task(tuple(group), ranges))
                group, rows = [], 0
            group.append(entry)
            rows += entry.rows
        tasks.append(Task(tuple(group), ranges))
    # One partial per grain and set of components, of every summary read for them.
    together: dict[tuple[Grain, tuple[str, ...]], list[tuple[str, Piece, Any]]] = {}
    for read in plan.reads:
        for grain in dict.fromkeys(read.grains.values()):
            wanted = tuple(c for c, g in read.grains.items() if g is grain)
            path = _summary_path(read.piece, grain.name)
            together.setdefault((grain, wanted), []).append((path, read.piece, read.hours))
    for (grain, wanted), reads in together.items():
        tasks.append(Task(grain=grain, components=wanted, reads=tuple(reads)))
    return plan, tasks


def run_task(ds: Dataset, report: Report, task: Task) -> list[Partial]:
    """The partials of one task (see :class:`Task`)."""
    if task.grain is None:
        columns = report.scan_columns
        strings = [c for c in columns if c in STRING_COLUMNS]
        expr = report.scan_filter(task.ranges)
        return [
            report.from_rows(rows)
            for rows in ds.scan(task.entries, columns, expr, dictionary=strings)
        ]
    tables = ds.read_summaries([path for path, _, _ in task.reads], report.spec.tenant)
    parts = [(t, piece, hours) for t, (_, piece, hours) in zip(tables, task.reads, strict=True)]
    return [report.from_summaries(task.grain, parts, task.components)]


def run_report(
    ds: Dataset, report: Report, *, use_summaries: bool = True, explain: bool = False
) -> pd.DataFrame:
    """The report's frame (or, with ``explain``, its plan) on one snapshot."""

    def read(snap: Snapshot) -> pd.DataFrame:
        plan, tasks = plan_tasks(report, snap, use_summaries=use_summaries)
        if explain:
            return plan.frame()
        return report.finish(p for task in tasks for p in run_task(ds, report, task))

    return ds.read(read)


def row_filter(tenant: str | None, lo: int, hi: int, where: Sequence[Filter]) -> pc.Expression:
    expr = (pc.field("timestamp") >= lo) & (pc.field("timestamp") <= hi - 1)
    if tenant is not None:
        expr = (pc.field("tenant") == tenant) & expr
    for condition in where:
        expr = expr & condition.expression()
    return expr


def window_files(snap: Snapshot, lo: int, hi: int) -> list[FileEntry]:
    """The files that may hold rows of [lo, hi), in time order."""
    if lo >= hi:
        return []
    inside = [
        e
        for e in files_between(snap, lo, hi)
        if e.max("timestamp") >= lo and e.min("timestamp") < hi
    ]
    return sorted(inside, key=lambda e: (e.min("timestamp"), e.min("id")))


def scan_frame(
    ds: Dataset,
    tenant: str | None,
    lo: int,
    hi: int,
    columns: Sequence[str],
    where: Sequence[Filter],
) -> pd.DataFrame:
    """The rows of a window as a frame sorted by (timestamp, id), ``columns`` only."""
    wanted = scanned_columns(columns)

    def read(snap: Snapshot) -> pd.DataFrame:
        entries = window_files(snap, lo, hi)
        tables = (
            list(ds.scan(entries, wanted, row_filter(tenant, lo, hi, where))) if entries else []
        )
        return sorted_frame(tables, columns)

    return ds.read(read).reset_index(drop=True)


def scanned_columns(columns: Sequence[str]) -> list[str]:
    """The columns a scan of ``columns`` reads: with those it sorts by."""
    return list(dict.fromkeys([*columns, "timestamp", "id"]))


def sorted_frame(tables: Sequence[pa.Table], columns: Sequence[str]) -> pd.DataFrame:
    """Scanned tables (of :func:`scanned_columns`) as one frame of ``columns``, in the stored
    dtypes, sorted by (timestamp, id)."""
    wanted = scanned_columns(columns)
    if not tables:
        table = arrow_schema().empty_table().select(wanted)
    else:
        table = pa.concat_tables(tables).cast(pa.schema([arrow_schema().field(c) for c in wanted]))
    table = table.sort_by([("timestamp", "ascending"), ("id", "ascending")])
    return to_frame(table.select(list(columns)))


def scan_batches(
    ds: Dataset,
    tenant: str | None,
    lo: int,
    hi: int,
    columns: Sequence[str],
    where: Sequence[Filter],
) -> Iterator[pa.RecordBatch]:
    """The rows of a window as record batches of at most ``BATCH_ROWS`` rows, file by file in
    time order, from one snapshot, in bounded memory.

    Raises:
        DatasetChangedError: a later delete or compaction removed a file of the snapshot
            after the first batch was yielded (a scan cannot start again from where it was).
    """
    snap = ds.snapshot()
    entries = window_files(snap, lo, hi)
    schema = pa.schema([arrow_schema().field(c) for c in columns])
    expr = row_filter(tenant, lo, hi, where)
    for entry in entries:
        try:
            chunks = list(ds.scan([entry], list(columns), expr, chunk_rows=BATCH_ROWS))
        except FileNotFoundError as exc:
            if (error := ds.missing(snap, exc)) is not None:
                raise error from exc
            raise DatasetChangedError(
                f"a later write removed {entry.path} while it was being scanned; start the "
                "scan again (it reads the newest state)"
            ) from exc
        except (OSError, pa.ArrowException) as exc:
            raise ds.read_error(exc) from exc
        for chunk in chunks:
            yield from chunk.cast(schema).to_batches(max_chunksize=BATCH_ROWS)
