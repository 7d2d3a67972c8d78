"""The file formats and durable writes: data files (Parquet), summary files (Arrow IPC), and the
small helpers that write a file durably (fsync, atomic rename, fsync of the folder).

Summary files are Arrow IPC files, not Parquet, because reading one costs a fraction of a
millisecond: a table sorted by its first column (the tenant) is stored in record batches that
each hold one value of that column, or several values with few rows, and the schema metadata
lists the first and last value of each batch, so a reader that wants one value reads only the
batches that can hold it. Strings are dictionary-encoded, one dictionary per file, integers
stored in the narrowest type that holds them, and buffers lz4-compressed (decompressed on the
reading thread: pyarrow's thread pool costs more than it saves on such small buffers).
Readers get strings as ``SUMMARY_TEXT`` dictionaries, also from files of older versions
(uncompressed IPC, or Parquet before 0.2), and integers as stored, one table per file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ..errors import CorruptDatasetError
from .faults import fault

__all__ = [
    "DATA_ROW_GROUP",
    "SUMMARY_BATCH_ROWS",
    "SUMMARY_INDEX_KEY",
    "SUMMARY_TEXT",
    "read_summary",
    "summary_batches",
    "write_parquet",
    "write_summary",
]

# Data files are in time order, or sorted by tenant then time: row groups this small let a
# time filter, or a tenant filter, skip most of a file through its statistics.
DATA_ROW_GROUP: Final = 32 * 1024
#: Schema metadata key of a summary file: the JSON list of the first and last first-column
#: value of each of its record batches.
SUMMARY_INDEX_KEY: Final = b"usage_analytics.index"
SUMMARY_BATCH_ROWS: Final = 2048
#: How summary tables hold strings, in memory and (with one dictionary per file) on disk.
SUMMARY_TEXT: Final = pa.dictionary(pa.int32(), pa.string())


def _sync(fd: int) -> None:
    """Make a file's data durable: ``fdatasync`` where there is one (it flushes the data and
    the size needed to read it back, not the times), else ``fsync``."""
    getattr(os, "fdatasync", os.fsync)(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        _sync(fh.fileno())


def replace_bytes(path: Path, data: bytes, tmp_point: str) -> bytes:
    """Write ``data`` to ``path`` atomically (a temporary file, fsync, rename, fsync of the
    folder); returns ``data``."""
    tmp = path.with_name("." + path.name + ".tmp")
    write_bytes_durably(tmp, data)
    fault(tmp_point)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return data


def unlink_missing_ok(path: Path) -> bool:
    try:
        path.unlink()
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def check_partition_folder(part: Path) -> None:
    """Refuse to write into, or remove from, a partition that is a link or not a folder."""
    if part.is_symlink() or (part.exists() and not part.is_dir()):
        raise CorruptDatasetError(
            f"{part} is not a folder of this dataset (a symbolic link or a file); the store does "
            "not write or delete through it: move it out of the dataset root"
        )


def rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()


def _is_text(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))


def write_parquet(table: pa.Table, path: Path, *, statistics: Sequence[str]) -> None:
    """Write and fsync one data file.

    Chosen for write speed, which bounds ingest, at a small cost in size: snappy; dictionaries
    for string columns only (for counters and timestamps the writer would build a dictionary
    and then give it up); delta encoding for integer columns; statistics only for
    ``statistics``, the columns readers can prune by.
    """
    strings = [f.name for f in table.schema if _is_text(f.type)]
    ints = (pa.int64(), pa.int32())
    delta = {f.name: "DELTA_BINARY_PACKED" for f in table.schema if f.type in ints}
    with open(path, "wb") as fh:
        pq.write_table(
            table,
            fh,
            compression="snappy",
            row_group_size=DATA_ROW_GROUP,
            use_dictionary=strings,
            column_encoding=delta or None,
            write_statistics=[c for c in statistics if c in table.column_names],
        )
        fh.flush()
        _sync(fh.fileno())


def summary_batches(table: pa.Table) -> tuple[list[pa.RecordBatch], list[list[Any]]]:
    """``table`` (sorted by its first column) cut into record batches for a summary file, with
    the first and last first-column value of each.

    A value with at least ``SUMMARY_BATCH_ROWS`` rows gets batches of its own, so that reading
    it decodes nothing else; values with fewer rows share batches of about that many rows,
    because every batch costs a few buffers to write and read.
    """
    if not table.num_rows:
        return [], []
    table = table.combine_chunks()
    first = table.column(0).chunk(0)
    if pa.types.is_dictionary(first.type):  # equal values have equal indices
        runs = pc.run_end_encode(first.indices)
        values = first.dictionary.take(runs.values).to_pylist()
    else:
        runs = pc.run_end_encode(first)
        values = runs.values.to_pylist()
    cuts: list[tuple[int, int, Any, Any]] = []  # (start, end, first value, last value)
    shared: list[Any] = []
    shared_start = start = 0
    for value, end in zip(values, runs.run_ends.to_pylist(), strict=True):
        if end - start >= SUMMARY_BATCH_ROWS:
            if shared:
                cuts.append((shared_start, start, shared[0], shared[-1]))
            cuts.append((start, end, value, value))
            shared, shared_start = [], end
        else:
            shared.append(value)
            if end - shared_start >= SUMMARY_BATCH_ROWS:
                cuts.append((shared_start, end, shared[0], shared[-1]))
                shared, shared_start = [], end
        start = end
    if shared:
        cuts.append((shared_start, start, shared[0], shared[-1]))
    batches, index = [], []
    for lo, hi, first_value, last_value in cuts:
        for batch in table.slice(lo, hi - lo).to_batches():
            batches.append(batch)
            index.append([first_value, last_value])
    return batches, index


def _narrowest_int(column: pa.ChunkedArray) -> pa.DataType:
    """The smallest signed integer type that holds every value of an int64 ``column``."""
    bounds = pc.min_max(column)
    low, high = bounds["min"].as_py() or 0, bounds["max"].as_py() or 0
    for candidate in (pa.int8(), pa.int16(), pa.int32()):
        bits = candidate.bit_width - 1
        if -(1 << bits) <= low and high < (1 << bits):
            return candidate
    return pa.int64()


def _summary_on_disk(table: pa.Table) -> pa.Table:
    """``table`` as a summary file stores it: strings dictionary-encoded (one dictionary per
    column for the whole file), int64 columns in the narrowest type that holds them."""
    columns = []
    for column in table.columns:
        if _is_text(column.type) or pa.types.is_dictionary(column.type):
            column = _as_summary_text(column)
        elif column.type == pa.int64():
            column = column.cast(_narrowest_int(column))
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names).unify_dictionaries()


def _summary_in_memory(table: pa.Table) -> pa.Table:
    """A summary file's table as readers get it, whatever version wrote the file: strings as
    ``SUMMARY_TEXT`` dictionaries; integers in the type they were stored in (a caller that
    adds them up widens them itself: casting each file's columns costs more than that)."""
    for i, field_ in enumerate(table.schema):
        if field_.type != SUMMARY_TEXT and (
            _is_text(field_.type) or pa.types.is_dictionary(field_.type)
        ):
            table = table.set_column(i, field_.name, _as_summary_text(table.column(i)))
    return table


def _as_summary_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    return column.cast(SUMMARY_TEXT)


#: lz4 buffers: summaries a third of their size, read about as fast, since their buffers are
#: decompressed on the reading thread (pyarrow's thread pool costs more than it saves on them).
#: Spans, of which a report reads a few, take zstd: a third smaller again, read a little slower.
_WRITE_OPTIONS: Final = {
    codec: ipc.IpcWriteOptions(compression=codec, use_threads=False) for codec in ("lz4", "zstd")
}
_READ_OPTIONS: Final = ipc.IpcReadOptions(use_threads=False)


def write_summary(table: pa.Table, path: Path, *, compression: str = "lz4") -> None:
    """Write and fsync one summary file (see the module docstring), its buffers compressed
    with ``compression`` ("lz4" or "zstd")."""
    stored = _summary_on_disk(table)
    batches, index = summary_batches(stored)
    schema = stored.schema.with_metadata({SUMMARY_INDEX_KEY: json.dumps(index).encode()})
    with open(path, "wb") as fh:
        # Written whole from memory: a file object takes every buffer in a call of its own.
        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, schema, options=_WRITE_OPTIONS[compression]) as writer:
            for batch in batches:
                writer.write_batch(batch)
        fh.write(sink.getvalue())
        fh.flush()
        _sync(fh.fileno())


def read_summary(path: Path, first: str | None) -> pa.Table:
    """One summary file, whole or only its rows whose first column equals ``first``."""
    # Memory-mapped: a batch is read straight from the page cache. Buffers hold the mapping,
    # so the tables stay valid after it is closed (or the file unlinked).
    with pa.memory_map(str(path)) as source:
        if source.read(4) == b"PAR1":  # summaries written before version 0.2 are Parquet
            return _summary_in_memory(_read_parquet_summary(path, first))
        source.seek(0)
        reader = ipc.open_file(source, options=_READ_OPTIONS)
        schema = reader.schema.remove_metadata()
        if first is None:
            return _summary_in_memory(
                pa.Table.from_batches(
                    [reader.get_batch(i) for i in range(reader.num_record_batches)], schema
                )
            )
        index = json.loads((reader.schema.metadata or {}).get(SUMMARY_INDEX_KEY, b"[]"))
        wanted = [i for i, (lo, hi) in enumerate(index) if lo <= first <= hi]
        batches = [reader.get_batch(i) for i in wanted]
    table = pa.Table.from_batches(batches, schema)
    if any(index[i][0] != index[i][1] for i in wanted):  # shared batches: keep ``first`` only
        table = table.filter(pc.equal(table.column(0), first))
    return _summary_in_memory(table)


def _read_parquet_summary(path: Path, first: str | None) -> pa.Table:
    table = pq.read_table(path)
    if first is not None:
        table = table.filter(pc.equal(table.column(0), first))
    return table
