"""The file entries of a checkpoint: read a row group at a time, parsed column by column.

A checkpoint lists every live file: with 100,000 files, parsing and checking each entry's JSON
one field at a time costs seconds, and even in bulk a few hundred milliseconds. So a
checkpoint is written in date order, in row groups of :data:`ROW_GROUP_ROWS` adds, and
:class:`Adds` reads a row group only when a date in it is first used (the row groups'
statistics of ``add.path`` say which dates each holds). Entries of the plain shape this
package writes are parsed in bulk (pyarrow's JSON reader, vectorized checks of every field the
entry-by-entry parser checks); anything else (a field missing, mistyped or out of range, an
odd path) makes :func:`entries` return None, and the caller parses entry by entry, which names
what is wrong. Damage is named when the row group that holds it is read.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from .delta import CHECKPOINT_SCHEMA
from .fileset import FileSet, date_of
from .manifest import FileEntry, valid_date

__all__ = ["ROW_GROUP_ROWS", "Adds", "adds_table", "assemble", "entries", "reusable", "write"]

#: Rows of a checkpoint's row group: a date's first use reads one or two of them.
ROW_GROUP_ROWS: Final = 2048
_LOWEST, HIGHEST = "", "\uffff"


class Adds:
    """The add actions of the checkpoint ``file``, as a :class:`~.fileset.FileSet`'s source.

    ``parse`` turns the row groups it is given into their entries (raising
    ``CorruptDatasetError`` for damage). A checkpoint of another shape (one row group, no
    statistics) is read whole at its first use.
    """

    def __init__(
        self,
        file: pq.ParquetFile,
        parse: Callable[[pq.ParquetFile, list[int]], list[FileEntry]],
        version: int | None = None,
    ) -> None:
        #: The version of the checkpoint (None: not one a later checkpoint may copy from).
        self.version = version
        self._file: pq.ParquetFile | None = file
        self._parse = parse
        self._ranges = _date_ranges(file.metadata)
        #: The entries of each row group read, per date.
        self._read: dict[int, dict[str, list[FileEntry]]] = {}
        self._groups: dict[str, dict[str, FileEntry]] = {}
        self._dates: list[str] | None = None
        self._lock = threading.Lock()

    def _row_groups(self, first: str, last: str) -> list[int]:
        """The row groups that may hold dates of ``first..last``, read."""
        wanted = [
            i
            for i, span in enumerate(self._ranges)
            if span is not None and span[0] <= last and first <= span[1]
        ]
        if any(i not in self._read for i in wanted):
            with self._lock:  # threads of one process may share a state
                for i in wanted:
                    if i not in self._read:
                        assert self._file is not None  # dropped once every row group is read
                        per_date: dict[str, list[FileEntry]] = {}
                        for entry in self._parse(self._file, [i]):
                            per_date.setdefault(entry.date, []).append(entry)
                        self._read[i] = per_date
                if len(self._read) == sum(span is not None for span in self._ranges):
                    self._file = None  # every row group is read: its bytes are not needed
        return wanted

    def row_group(self, i: int) -> dict[str, list[FileEntry]]:
        """The entries of row group ``i``, per date (for a checkpoint that copies the rest)."""
        lo, hi = self._ranges[i] or (_LOWEST, HIGHEST)
        self._row_groups(lo, hi)
        return self._read.get(i, {})

    @property
    def ranges(self) -> list[tuple[str, str] | None]:
        """Each row group's first and last date (None: no adds)."""
        return self._ranges

    def group(self, date: str) -> dict[str, FileEntry]:
        out = self._groups.get(date)
        if out is None:
            out = {}
            for i in self._row_groups(date, date):
                for entry in self._read[i].get(date, ()):
                    out[entry.path] = entry
            self._groups[date] = out
        return out

    def dates_between(self, first: str, last: str) -> list[str]:
        found = {d for i in self._row_groups(first, last) for d in self._read[i]}
        return sorted(d for d in found if first <= d <= last)

    def dates(self) -> list[str]:
        """From the paths alone while a row group is unread (its entries are read when used;
        a path of no valid date makes every row group read, which names the damage)."""
        if self._dates is None:
            dates = None if self._file is None else _path_dates(self._file)
            if dates is None:
                dates = self.dates_between(_LOWEST, HIGHEST)
            self._dates = dates
        return self._dates


def reusable(source: Adds, changed: Sequence[str]) -> list[bool]:
    """For each row group of ``source``'s checkpoint, whether a checkpoint of a state that
    differs from ``source``'s only on the dates ``changed`` (ascending) can copy it unparsed:
    when no changed date falls within its range of dates. Row groups without statistics are
    never copied."""
    ranges = source._ranges
    if any(r == (_LOWEST, HIGHEST) for r in ranges if r is not None):
        return [False] * len(ranges)
    return [
        r is not None and bisect.bisect_right(changed, r[1]) == bisect.bisect_left(changed, r[0])
        for r in ranges
    ]


def reusable_from(
    files: FileSet, read: Callable[[str], pq.ParquetFile]
) -> tuple[pq.ParquetFile | None, list[bool]]:
    """The checkpoint ``files`` came from (``read`` reads a file of the log by name), if any,
    and which of its row groups a checkpoint of ``files`` can copy (see :func:`reusable`)."""
    source = files.source
    if not isinstance(source, Adds) or source.version is None:
        return None, []
    copy = reusable(source, files.changed())
    if not any(copy):
        return None, []
    try:
        old = read(f"{source.version:020d}.checkpoint.parquet")
        if not old.schema_arrow.equals(CHECKPOINT_SCHEMA):
            return None, []
    except (FileNotFoundError, pa.ArrowException, OSError):
        return None, []  # gone (or damaged): every date from its entries
    return old, copy


def assemble(
    header: pa.Table,
    files: FileSet,
    make_add: Callable[[FileEntry], dict[str, Any]],
    old: pq.ParquetFile | None,
    copy: Sequence[bool],
) -> tuple[list[pa.Table], int]:
    """The rows of a checkpoint of the state whose files are ``files``, in date order: the
    ``header`` rows, then the adds, and how many adds. When ``old`` is the checkpoint of
    ``files``'s source, the row groups ``copy`` marks (see :func:`reusable`) are copied from
    it as they are; every other add is ``make_add`` of its entry, in row groups of at most
    :data:`ROW_GROUP_ROWS`."""
    tables, adds = [header], 0
    rows: list[dict[str, Any]] = []

    def emit(entries: Iterable[FileEntry]) -> None:
        rows.extend(make_add(e) for e in entries)
        if len(rows) >= ROW_GROUP_ROWS:
            flush()

    def flush() -> None:
        nonlocal adds
        if rows:
            tables.append(adds_table(rows))  # (the table holds its own copy)
            adds += len(rows)
            rows.clear()

    changed = files.changed()
    fresh = [d for d in changed if files.on(d)]  # dates made from their entries
    source = files.source
    if old is None or not isinstance(source, Adds):
        for date in files.dates():
            emit(files.on(date))
    else:
        for i, span in enumerate(source.ranges):
            if span is None:
                continue
            table = None
            if copy[i]:  # no changed date in it: copied as it is, if it reads
                with contextlib.suppress(pa.ArrowException, OSError):
                    table = old.read_row_group(i)
            if table is not None:
                while fresh and fresh[0] < span[0]:
                    emit(files.on(fresh.pop(0)))
                flush()
                tables.append(table.filter(pc.is_valid(table.column("add"))))
                adds += tables[-1].num_rows
                continue
            # Its unchanged dates' entries as it holds them, and the changed dates
            # within its range (or before it) from the state.
            part = {d: e for d, e in source.row_group(i).items() if d not in changed}
            while fresh and fresh[0] <= span[1]:
                date = fresh.pop(0)
                part[date] = files.on(date)
            for date in sorted(part):
                emit(part[date])
        for date in fresh:
            emit(files.on(date))
    flush()
    return tables, adds


def adds_table(adds: list[dict[str, Any]]) -> pa.Table:
    """Checkpoint rows of the add actions ``adds``."""
    none = [None] * len(adds)
    return pa.table(
        {"add": adds, "metaData": none, "protocol": none, "domainMetadata": none},
        schema=CHECKPOINT_SCHEMA,
    )


def write(tables: Sequence[pa.Table], where: Any) -> None:
    """Write a checkpoint's rows (``tables``, in order; the first its header rows) to the
    path or file ``where``, in row groups of at most :data:`ROW_GROUP_ROWS` rows, none
    holding both the header and adds."""
    with pq.ParquetWriter(where, tables[0].schema) as writer:
        for table in tables:
            if table.num_rows:
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)


def _path_dates(file: pq.ParquetFile) -> list[str] | None:
    """The dates of the paths the adds of ``file`` name, or None for an odd path."""
    try:
        column = file.read(columns=["add.path"]).column("add").combine_chunks()
        paths = column.flatten()[0].drop_null()
        prefixes = pc.unique(pc.utf8_slice_codeunits(paths, 0, 16)).to_pylist()
    except (pa.ArrowException, OSError, ValueError, IndexError):
        return None
    dates = sorted(date_of(p) for p in prefixes)
    if not all(p == f"date={date_of(p)}/" and valid_date(date_of(p)) for p in prefixes):
        return None
    return dates


def _date_ranges(metadata: pq.FileMetaData) -> list[tuple[str, str] | None]:
    """For each row group, the first and last date of its adds' paths by its statistics (all
    dates when it has none), or None when it holds no add."""
    column = next(
        (j for j in range(metadata.num_columns) if metadata.schema.column(j).path == "add.path"),
        None,
    )
    out: list[tuple[str, str] | None] = []
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        stats = None if column is None else group.column(column).statistics
        if stats is None or not stats.has_min_max:
            if stats is not None and stats.null_count == group.num_rows:
                out.append(None)
            else:
                out.append((_LOWEST, HIGHEST))
            continue
        low, high = str(stats.min), str(stats.max)
        out.append(
            (
                date_of(low) if len(low) >= 15 else _LOWEST,
                date_of(high) if len(high) >= 15 and date_of(high) else HIGHEST,
            )
        )
    return out


_PATH_RE = r"^date=\d{4}-\d{2}-\d{2}/[0-9a-f]{32}\.parquet$"
_KIND_RE = r"^[a-z]+$"
_FIELDS = {"path", "rows", "schema_version", "stats", "sidecars", "skipped"}


def entries(
    adds: pa.Table, tag: str, max_schema_version: int, stats_columns: Sequence[str]
) -> list[FileEntry] | None:
    """The entries of the add actions ``adds`` (columns ``path``, ``size``, ``tags``, one row
    per add), in order, or None when they are not all of the plain shape (see above)."""
    if adds.num_rows == 0:
        return []
    try:
        raw = pc.map_lookup(adds.column("tags"), tag, "first").combine_chunks()
        if raw.null_count or not _all(pc.equal(pc.count_substring(raw, "\n"), 0)):
            return None
        text = "\n".join(raw.to_pylist()).encode()
        parsed = pj.read_json(pa.BufferReader(text)).combine_chunks()
    except (pa.ArrowException, TypeError, ValueError):
        return None
    if parsed.num_rows != adds.num_rows or not _plain(parsed, raw, max_schema_version):
        return None
    paths = parsed.column("path")
    if not _all(pc.equal(paths, adds.column("path"))):
        return None
    sizes = adds.column("size")
    if sizes.null_count or pc.min(sizes).as_py() < 0:
        return None
    if not all(valid_date(str(d)[5:]) for d in pc.unique(pc.utf8_slice_codeunits(paths, 0, 15))):
        return None
    stats = parsed.column("stats").chunk(0)
    names = [stats.type.field(i).name for i in range(stats.type.num_fields)]
    if sorted(names) != sorted(set(names)) or not set(stats_columns) <= set(names):
        return None
    bounds = []
    if not names:
        return None
    for name in names:
        values = pc.struct_field(stats, name)
        if values.null_count or not pa.types.is_list(values.type):
            return None
        if not pa.types.is_int64(values.type.value_type):
            return None
        if not _all(pc.equal(pc.list_value_length(values), 2)):
            return None
        lo, hi = pc.list_element(values, 0), pc.list_element(values, 1)
        if lo.null_count or hi.null_count or not _all(pc.less_equal(lo, hi)):
            return None
        bounds.append(zip(lo.to_pylist(), hi.to_pylist(), strict=True))
    kinds = [_kinds(parsed, name) for name in ("sidecars", "skipped")]
    if kinds[0] is None or kinds[1] is None:
        return None
    per_row = zip(*bounds, strict=True)
    return [
        FileEntry(path, rows, version, dict(zip(names, row, strict=True)), cars, skip, size=size)
        for path, rows, version, row, cars, skip, size in zip(
            paths.to_pylist(),
            parsed.column("rows").to_pylist(),
            parsed.column("schema_version").to_pylist(),
            per_row,
            kinds[0],
            kinds[1],
            sizes.to_pylist(),
            strict=True,
        )
    ]


def _all(mask: Any) -> bool:
    """Whether every value of the boolean array ``mask`` is true (an empty one is)."""
    return pc.all(mask, min_count=0).as_py() is True


def _plain(parsed: pa.Table, raw: pa.Array, max_schema_version: int) -> bool:
    """Whether the entries have the fields and types this package writes, in range."""
    names = set(parsed.column_names)
    if not {"path", "rows", "schema_version", "stats"} <= names <= _FIELDS:
        return False
    types = parsed.schema
    if (
        types.field("path").type != pa.string()
        or types.field("rows").type != pa.int64()
        or types.field("schema_version").type != pa.int64()
        or not pa.types.is_struct(types.field("stats").type)
    ):
        return False
    for name in ("path", "rows", "schema_version", "stats"):
        if parsed.column(name).null_count:
            return False
    if not _all(pc.match_substring_regex(parsed.column("path"), _PATH_RE)):
        return False
    if pc.min(parsed.column("rows")).as_py() < 0:
        return False
    versions = pc.min_max(parsed.column("schema_version")).as_py()
    if not 1 <= versions["min"] <= versions["max"] <= max_schema_version:
        return False
    for name in ("sidecars", "skipped"):
        # An absent list is empty; a null one is damage, which the entry-by-entry parser names.
        if name in names and parsed.column(name).null_count:
            missing = pc.is_null(parsed.column(name))
            if pc.any(pc.match_substring(pc.filter(raw, missing), f'"{name}"')).as_py():
                return False
    return True


def _kinds(parsed: pa.Table, name: str) -> list[tuple[str, ...]] | None:
    """The summary kinds of each entry, or None when one is odd."""
    if name not in parsed.column_names:
        return [()] * parsed.num_rows
    column: Any = parsed.column(name).chunk(0)
    if not pa.types.is_list(column.type) or column.type.value_type != pa.string():
        return None
    flat = column.flatten()
    if flat.null_count or not _all(pc.match_substring_regex(flat, _KIND_RE)):
        return None
    return [tuple(k) if k else () for k in column.to_pylist()]
