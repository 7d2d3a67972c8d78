"""``Store.verify()``: every data file read back and every summary recomputed from its rows.

An integrity check (as SQLite's ``PRAGMA integrity_check``): a file whose rows disagree with
its manifest entry, a summary file or span that differs from the summary of the rows it
covers, or one that cannot be read, is reported, and the checks go on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ._reads import read_rows
from ._storage import Dataset, FileEntry, Snapshot
from ._summaries import KINDS, Computed
from .reports import grains

__all__ = ["verify"]


def _normalized(table: pa.Table) -> pd.DataFrame:
    """A summary table as a frame of strings and int64s, sorted by every column: two
    summaries of the same rows are equal as such frames, whatever their encoding."""
    frame = table.to_pandas()
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.CategoricalDtype) or column.dtype == object:
            frame[name] = column.astype(str)
        elif column.dtype.kind in "iu":
            frame[name] = column.astype(np.int64)
        else:
            frame[name] = column.astype(str)
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


def verify(ds: Dataset, snap: Snapshot) -> pd.DataFrame:
    """Every data file read back and every summary recomputed from the rows it summarizes;
    returns one row per problem found (columns ``piece``, ``kind``, ``problem``), none when
    the dataset is sound. Memory stays bounded: the rows of one file at a time, and the
    summaries of one span."""
    problems: list[tuple[str, str, str]] = []
    unreadable: set[str] = set()

    def summaries(entry: FileEntry, check: bool) -> Computed | None:
        if entry.path in unreadable:
            return None
        try:
            rows = read_rows(ds, entry)
        except Exception as exc:  # a damaged file: said, and the checks go on
            unreadable.add(entry.path)
            problems.append((entry.path, "data", f"cannot be read: {exc}"))
            return None
        if check:
            _check_rows(entry, rows, problems)
        return grains.rollups(rows.select(list(grains.INPUT_COLUMNS)))

    def compare(piece: str, kind: str, path: str, expected: pa.Table) -> None:
        try:
            stored = ds.read_summaries([path])[0]
        except Exception as exc:
            problems.append((piece, kind, f"cannot be read: {exc}"))
            return
        if not _normalized(stored).equals(_normalized(expected)):
            problems.append((piece, kind, "differs from the summary of its rows"))

    for entry in snap.files:
        computed = summaries(entry, check=True)
        if computed is None:
            continue
        for kind in entry.sidecars:
            if kind in computed:
                compare(entry.path, kind, entry.sidecar_path(kind), computed[kind])
            else:
                problems.append((entry.path, kind, "is not a summary kind of this version"))
    by_day: dict[int, list[FileEntry]] = {}
    for entry in snap.files:
        by_day.setdefault(entry.day, []).append(entry)
    for span in snap.spans:
        name = f"span {np.datetime64(span.first_day, 'D')}..{np.datetime64(span.last_day, 'D')}"
        kinds = [k for k in span.kinds if k in KINDS]
        problems += [
            (name, k, "is not a summary kind of this version") for k in span.kinds if k not in KINDS
        ]
        days = range(span.first_day, span.last_day + 1)
        files = [e for d in days for e in by_day.get(d, []) if span.covers(e)]
        combined: dict[str, pa.Table] = {}
        for entry in files:
            computed = summaries(entry, check=False)
            if computed is None:
                break
            for k in kinds:
                combined[k] = grains.combine(
                    k, [combined[k], computed[k]] if k in combined else [computed[k]]
                )
        else:
            for k in kinds:
                compare(name, k, span.path(k), combined.get(k, grains.combine(k, [])))
    frame = pd.DataFrame(problems, columns=["piece", "kind", "problem"])
    return frame.astype("str")


def _check_rows(entry: FileEntry, rows: pa.Table, problems: list[tuple[str, str, str]]) -> None:
    """The rows of a file against what the manifest says of them."""
    if rows.num_rows != entry.rows:
        problems.append(
            (entry.path, "data", f"holds {rows.num_rows} rows, the manifest says {entry.rows}")
        )
    for column, (low, high) in entry.stats.items():
        if rows.num_rows and column in rows.column_names:
            bounds = (int(pc.min(rows[column]).as_py()), int(pc.max(rows[column]).as_py()))
            if bounds != (low, high):
                problems.append(
                    (
                        entry.path,
                        "data",
                        f"{column} spans {bounds}, the manifest says {(low, high)}",
                    )
                )
