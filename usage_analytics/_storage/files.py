"""The file formats and durable writes: data files (Parquet), summary files (compressed Arrow
IPC streams), and the small helpers that write a file durably (fsync, atomic rename, fsync of
the folder).

A summary file is read in a fraction of a millisecond. Its table, sorted by its first column
(the tenant), is cut into record batches that each hold one value of that column, or several
values with few rows; each batch is one Arrow IPC stream (its strings dictionary-encoded with
the values of that batch only, integers in the narrowest type that holds them) compressed as
one frame (lz4 or zstd). A footer lists where each frame is and the rows of each first-column
value in it, so a reader that wants one tenant decompresses one frame and slices it. One frame
per batch, not compressed buffers inside one IPC file, because decompressing a buffer has a
fixed cost that a batch's twenty-odd small buffers paid each: reading one tenant of a day's
summary took 0.9 ms, and takes 0.25 ms. On the benchmark's data the summaries are a fifth
smaller in all (files' summaries a third smaller, spans a sixth larger). Reading every tenant of a
file is slower than it was (a frame each), which only all-tenant reports and maintenance do.

Layout: ``MAGIC``, the frames, the schema (an uncompressed IPC schema message), the footer
(binary, see ``_FOOTER_HEAD``), the footer's length (8 bytes, little-endian), ``MAGIC``.
Readers get strings as ``SUMMARY_TEXT`` dictionaries and integers as stored, one table per file,
also from files of older versions: Arrow IPC files (0.2 and 0.3) and Parquet (before 0.2).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ..errors import CorruptDatasetError
from .faults import fault
from .manifest import SIDECAR_DIR

__all__ = [
    "DATA_ROW_GROUP",
    "SUMMARY_BATCH_ROWS",
    "SUMMARY_INDEX_KEY",
    "SUMMARY_MAGIC",
    "SUMMARY_TEXT",
    "read_summary",
    "summary_batches",
    "summary_bytes",
    "write_parquet",
    "write_parquet_to",
    "write_summary",
]

# Data files are in time order, or sorted by tenant then time (compacted files: in time order
# from row group to row group, each sorted by tenant then time): row groups this small let a
# time filter, or a tenant filter, skip most of a file through its statistics.
DATA_ROW_GROUP: Final = 32 * 1024
#: Schema metadata key of a summary file of 0.2 and 0.3 (Arrow IPC files): the JSON list of the
#: first and last first-column value of each of its record batches.
SUMMARY_INDEX_KEY: Final = b"usage_analytics.index"
#: The first and the last bytes of a summary file (0.4 and later).
SUMMARY_MAGIC: Final = b"UASUM04\n"
_TRAILER: Final = 8 + len(SUMMARY_MAGIC)  # the footer's length, then the magic
SUMMARY_BATCH_ROWS: Final = 2048
#: Rows a frame of a summary file holds at most when its first-column values share it: a frame
#: costs a schema and a decompression more, but a reader of one value decompresses only its own.
SUMMARY_FRAME_ROWS: Final = 1024
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


def remove_files(
    root: Path, paths: Iterable[str], *, each: Callable[[], None] = lambda: None
) -> None:
    """Unlink ``paths`` (relative to ``root``; ``each`` runs after every one), then the folders
    they leave empty, sub-folders before their parents, and fsync what changed."""
    folders: set[str] = set()
    for rel in paths:
        unlink_missing_ok(root / rel)
        folders.add(rel.rsplit("/", 1)[0])
        each()
    if any(f.startswith(SIDECAR_DIR + "/") for f in folders):
        folders.add(SIDECAR_DIR)
    for folder in sorted(folders, reverse=True):  # sub-folders before their parent
        rmdir_if_empty(root / folder)
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(root / folder)
    fsync_dir(root)


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
    with open(path, "wb") as fh:
        write_parquet_to(table, fh, statistics=statistics)
        fh.flush()
        _sync(fh.fileno())


def write_parquet_to(table: pa.Table, fh: BinaryIO, *, statistics: Sequence[str]) -> None:
    """Write one data file to the open file ``fh`` (see :func:`write_parquet`)."""
    strings = [f.name for f in table.schema if _is_text(f.type)]
    ints = (pa.int64(), pa.int32())
    delta = {f.name: "DELTA_BINARY_PACKED" for f in table.schema if f.type in ints}
    pq.write_table(
        table,
        fh,
        compression="snappy",
        row_group_size=DATA_ROW_GROUP,
        use_dictionary=strings,
        column_encoding=delta or None,
        write_statistics=[c for c in statistics if c in table.column_names],
    )


def summary_batches(
    table: pa.Table, batch_rows: int = SUMMARY_BATCH_ROWS
) -> tuple[list[pa.RecordBatch], list[list[Any]]]:
    """``table`` (sorted by its first column) cut into record batches for a summary file, with
    the first and last first-column value of each (see :func:`_cuts`)."""
    table = table.combine_chunks()
    batches, index = [], []
    for lo, hi, runs in _cuts(table, batch_rows):
        for batch in table.slice(lo, hi - lo).to_batches():
            batches.append(batch)
            index.append([runs[0][0], runs[-1][0]])
    return batches, index


def _cuts(table: pa.Table, batch_rows: int) -> list[tuple[int, int, list[tuple[Any, int, int]]]]:
    """Where ``table`` (sorted by its first column, one chunk) is cut into batches: (start,
    stop, runs of first-column values inside as (value, start, stop) from the batch's start).

    A value with at least ``batch_rows`` rows gets a batch of its own, so that reading it
    decodes nothing else; values with fewer rows share batches of about that many rows,
    because every batch costs a few buffers to write and read.
    """
    if not table.num_rows:
        return []
    cuts: list[tuple[int, int, list[tuple[Any, int, int]]]] = []
    shared: list[tuple[Any, int, int]] = []
    shared_start = 0

    def cut(lo: int, hi: int, runs: list[tuple[Any, int, int]]) -> None:
        cuts.append((lo, hi, [(v, a - lo, b - lo) for v, a, b in runs]))

    for run in _runs(table.column(0).chunk(0)):
        start, end = run[1], run[2]
        if end - start >= batch_rows:
            if shared:
                cut(shared_start, start, shared)
            cut(start, end, [run])
            shared, shared_start = [], end
        else:
            shared.append(run)
            if end - shared_start >= batch_rows:
                cut(shared_start, end, shared)
                shared, shared_start = [], end
    if shared:
        cut(shared_start, shared[-1][2], shared)
    return cuts


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


_STREAM_OPTIONS: Final = ipc.IpcWriteOptions(use_threads=False)
_READ_OPTIONS: Final = ipc.IpcReadOptions(use_threads=False)
#: Bytes read from a summary file's end at first: its footer, and for most files every frame.
_TAIL_BYTES: Final = 64 * 1024


def _in_first_use_order(table: pa.Table) -> pa.Table:
    """``table`` (one chunk) with each large dictionary holding only the values its rows use,
    in the order the rows first use them: the rows of one tenant then mostly use a run of
    codes of their own (users and keys belong to a tenant), which a frame cuts out as a slice
    (see :func:`_compact_dictionaries`)."""
    for i, column in enumerate(table.columns):
        if not pa.types.is_dictionary(column.type) or column.null_count or not column.num_chunks:
            continue
        array = column.chunk(0)
        if len(array.dictionary) <= _SMALL_DICTIONARY:
            continue
        codes, in_order = pd.factorize(array.indices.to_numpy())  # codes by first use
        array = pa.DictionaryArray.from_arrays(
            pa.array(codes.astype(array.type.index_type.to_pandas_dtype())),
            array.dictionary.take(pa.array(in_order)),
        )
        table = table.set_column(i, table.field(i), pa.chunked_array([array]))
    return table


def _compact_dictionaries(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with each large dictionary cut to the values its rows use (a slice of a table
    keeps the whole table's dictionary, which every frame would store again)."""
    columns = []
    for column in batch.columns:
        if pa.types.is_dictionary(column.type) and len(column.dictionary) > _SMALL_DICTIONARY:
            if column.null_count:  # summaries have no missing keys; other tables may
                column = pc.dictionary_encode(column.dictionary_decode()).cast(column.type)
            else:
                indices = column.indices.to_numpy()
                lo, hi = (int(indices.min()), int(indices.max())) if len(indices) else (0, -1)
                if hi - lo < len(indices):  # a run of codes no longer than the rows: cut it out
                    column = pa.DictionaryArray.from_arrays(
                        pa.array(indices - indices.dtype.type(lo)),
                        column.dictionary.slice(lo, hi - lo + 1),
                    )
                    columns.append(column)
                    continue
                present = np.bincount(indices, minlength=len(column.dictionary)) > 0
                if not present.all():
                    codes = (np.cumsum(present, dtype=np.int32) - 1)[indices]
                    used = pa.array(np.flatnonzero(present))
                    column = pa.DictionaryArray.from_arrays(
                        pa.array(codes), column.dictionary.take(used)
                    )
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


#: Dictionaries of at most this many values are stored in each frame as they are.
_SMALL_DICTIONARY: Final = 64


def _runs(first: pa.Array) -> list[tuple[Any, int, int]]:
    """Each run of equal values of ``first``: (value, start, stop)."""
    if pa.types.is_dictionary(first.type):  # equal values have equal indices
        runs = pc.run_end_encode(first.indices)
        values = first.dictionary.take(runs.values).to_pylist()
    else:
        runs = pc.run_end_encode(first)
        values = runs.values.to_pylist()
    out, start = [], 0
    for value, end in zip(values, runs.run_ends.to_pylist(), strict=True):
        out.append((value, start, end))
        start = end
    return out


def write_summary(table: pa.Table, path: Path, *, compression: str = "zstd") -> None:
    """Write and fsync one summary file (see the module docstring), each batch compressed as
    one frame with ``compression`` ("zstd", or "lz4": written and read faster, 1.6x larger)."""
    with open(path, "wb") as fh:
        fh.write(summary_bytes(table, compression=compression))
        fh.flush()
        _sync(fh.fileno())


def summary_bytes(table: pa.Table, *, compression: str = "zstd") -> bytes:
    """The bytes of the summary file of ``table`` (see :func:`write_summary`)."""
    stored = _in_first_use_order(_summary_on_disk(table).combine_chunks())
    codec = pa.Codec(compression)
    parts: list[bytes] = [SUMMARY_MAGIC]
    offset = len(SUMMARY_MAGIC)
    frames: list[int] = []  # offset, length, decompressed length of each frame
    runs: list[int] = []  # frame, start, stop of each run of a first-column value
    values: list[bytes] = []
    for start, stop, inside in _cuts(stored, SUMMARY_FRAME_ROWS):
        batch = _compact_dictionaries(stored.slice(start, stop - start).to_batches()[0])
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, batch.schema, options=_STREAM_OPTIONS) as writer:
            writer.write_batch(batch)
        raw = sink.getvalue()
        frame = codec.compress(raw, asbytes=True)
        for value, lo, hi in inside:
            values.append(str(value).encode())
            runs += (len(frames) // 3, lo, hi)
        frames += (offset, len(frame), raw.size)
        parts.append(frame)
        offset += len(frame)
    schema = stored.schema.serialize().to_pybytes()
    footer = b"".join(
        (
            _FOOTER_HEAD.pack(_CODECS[compression], len(frames) // 3, len(values)),
            struct.pack(f"<{len(frames) + 2 + len(runs)}q", *frames, offset, len(schema), *runs),
            struct.pack(f"<{len(values)}i", *map(len, values)),
            *values,
        )
    )
    parts += [schema, footer, len(footer).to_bytes(8, "little"), SUMMARY_MAGIC]
    return b"".join(parts)


#: The footer of a summary file starts with its codec, number of frames and number of runs;
#: then come int64 (offset, length, decompressed length) of each frame, (offset, length) of the
#: schema, (frame, start, stop) of each run, then int32 byte lengths of the runs' values and
#: the values (UTF-8).
_FOOTER_HEAD: Final = struct.Struct("<4sII")
_CODECS: Final = {"lz4": b"lz4\0", "zstd": b"zstd"}
_CODEC_NAMES: Final = {v: k for k, v in _CODECS.items()}


def read_summary(
    path: Path | str, first: str | None, *, opener: Callable[[str], BinaryIO] | None = None
) -> pa.Table:
    """One summary file, whole or only its rows whose first column equals ``first``;
    ``opener`` opens it for reading (default: the local file ``path``)."""
    with open(path, "rb") if opener is None else opener(str(path)) as fh:
        head = fh.read(len(SUMMARY_MAGIC))
        if head == SUMMARY_MAGIC:
            return _read_frames(fh, first)
        if opener is not None:  # formats before 0.4, read whole
            fh.seek(0)
            path = pa.BufferReader(fh.read())
    if head[:4] == b"PAR1":  # summaries written before version 0.2 are Parquet
        return _summary_in_memory(_read_parquet_summary(path, first))
    return _summary_in_memory(_read_ipc_file(path, first))


def _read_frames(fh: BinaryIO, first: str | None) -> pa.Table:
    """The rows of a summary file of 0.4 or later (see the module docstring)."""
    size = fh.seek(0, os.SEEK_END)
    tail_start = max(0, size - _TAIL_BYTES)
    fh.seek(tail_start)
    tail = fh.read()
    if len(tail) < _TRAILER or tail[-len(SUMMARY_MAGIC) :] != SUMMARY_MAGIC:
        raise ValueError("the file is cut short: its end is missing")
    length = int.from_bytes(tail[-_TRAILER : -len(SUMMARY_MAGIC)], "little")
    if length > size - _TRAILER:
        raise ValueError(f"a footer of {length} bytes in a file of {size}")

    def read(offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > size:
            raise ValueError(f"bytes {offset}..{offset + n} are outside the file ({size})")
        if offset >= tail_start:
            return tail[offset - tail_start : offset - tail_start + n]
        fh.seek(offset)
        return bytes(fh.read(n))

    footer = read(size - _TRAILER - length, length)
    try:
        name, n_frames, n_runs = _FOOTER_HEAD.unpack_from(footer)
        codec = pa.Codec(_CODEC_NAMES[name])
        ints = struct.unpack_from(f"<{3 * n_frames + 2 + 3 * n_runs}q", footer, _FOOTER_HEAD.size)
        at = _FOOTER_HEAD.size + 8 * len(ints)
        lengths = struct.unpack_from(f"<{n_runs}i", footer, at)
    except (KeyError, struct.error) as exc:
        raise ValueError(f"its footer is malformed ({exc})") from exc
    frames, schema_at, runs = ints[: 3 * n_frames], ints[3 * n_frames], ints[3 * n_frames + 2 :]
    picked: list[tuple[int, int, int]] = []  # (frame, start, stop) of the runs to read
    if first is None:
        picked = [(i, -1, -1) for i in range(n_frames)]
    else:
        wanted, at = first.encode(), at + 4 * n_runs
        for i, n in enumerate(lengths):
            if n == len(wanted) and footer[at : at + n] == wanted:
                picked.append((runs[3 * i], runs[3 * i + 1], runs[3 * i + 2]))
            at += n
    if not picked:
        return ipc.read_schema(pa.py_buffer(read(schema_at, ints[3 * n_frames + 1]))).empty_table()
    parts = []
    for i, lo, hi in picked:
        if not 0 <= i < n_frames:
            raise ValueError(f"a run in frame {i} of {n_frames}")
        offset, n, raw = frames[3 * i : 3 * i + 3]
        data = codec.decompress(read(offset, n), decompressed_size=raw)
        table = ipc.open_stream(data, options=_READ_OPTIONS).read_all()
        parts.append(table if lo < 0 or (lo, hi) == (0, table.num_rows) else table[lo:hi])
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables(parts).unify_dictionaries()


def _read_ipc_file(path: Path | str | pa.BufferReader, first: str | None) -> pa.Table:
    """The rows of a summary file of 0.2 or 0.3: an Arrow IPC file, batches by first column,
    their first and last values in the schema metadata."""
    # Memory-mapped: a batch is read straight from the page cache. Buffers hold the mapping,
    # so the tables stay valid after it is closed (or the file unlinked).
    with pa.memory_map(str(path)) if isinstance(path, str | Path) else path as source:
        reader = ipc.open_file(source, options=_READ_OPTIONS)
        schema = reader.schema.remove_metadata()
        if first is None:
            return pa.Table.from_batches(
                [reader.get_batch(i) for i in range(reader.num_record_batches)], schema
            )
        index = json.loads((reader.schema.metadata or {}).get(SUMMARY_INDEX_KEY, b"[]"))
        wanted = [i for i, (lo, hi) in enumerate(index) if lo <= first <= hi]
        batches = [reader.get_batch(i) for i in wanted]
    table = pa.Table.from_batches(batches, schema)
    if any(index[i][0] != index[i][1] for i in wanted):  # shared batches: keep ``first`` only
        table = table.filter(pc.equal(table.column(0), first))
    return table


def _read_parquet_summary(path: Path | str | pa.BufferReader, first: str | None) -> pa.Table:
    table = pq.read_table(path)
    if first is not None:
        table = table.filter(pc.equal(table.column(0), first))
    return table
