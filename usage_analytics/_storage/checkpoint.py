"""The file entries of a checkpoint, parsed column by column.

A checkpoint lists every live file: with 100,000 files, parsing and checking each entry's JSON
one field at a time costs seconds. Entries of the plain shape this package writes are parsed
here in bulk instead (pyarrow's JSON reader, vectorized checks of every field the entry-by-entry
parser checks); anything else (a field missing, mistyped or out of range, an odd path) makes
:func:`entries` return None, and the caller parses entry by entry, which names what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from .manifest import FileEntry, valid_date

__all__ = ["entries"]

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
