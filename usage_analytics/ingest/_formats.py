"""Telling the format of an export and reading it as raw chunks of text columns, each row
with its 1-based line (a header is line 1)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from ..errors import InvalidArgumentError

__all__ = [
    "FORMATS",
    "Bad",
    "Chunk",
    "check_file",
    "compression_of",
    "detect",
    "first_line",
    "named",
    "raw_chunks",
]

FORMATS: Final = ("csv", "tsv", "jsonl", "parquet")
#: Rows per chunk: what a load holds in memory at a time (with the store's own batch).


_BLOCK_BYTES: Final = 1 << 20


@dataclass
class Bad:
    """A bad row: its file, 1-based line, reasons and what it held."""

    file: str
    line: int
    reasons: list[str]
    row: str


@dataclass
class Chunk:
    """Raw rows of a file and the 1-based line of each, with the lines that could not be
    read as rows at all."""

    table: pa.Table
    lines: np.ndarray
    bad: list[Bad] = field(default_factory=list)


_MAGIC: Final = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


_EXTENSIONS: Final = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def check_file(path: Path) -> None:
    if not path.exists():
        raise InvalidArgumentError(f"cannot load {path}: it does not exist; nothing was written")
    if not path.is_file():
        raise InvalidArgumentError(f"cannot load {path}: it is not a file; nothing was written")
    if path.stat().st_size == 0:
        raise InvalidArgumentError(f"cannot load {path}: it is empty; nothing was written")


def compression_of(path: Path) -> str | None:
    """The compression of ``path`` by its first bytes (its extension is only a name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise InvalidArgumentError(
            f"cannot read {path} ({exc.strerror or exc}); nothing was written"
        ) from exc
    for magic, codec in _MAGIC.items():
        if head.startswith(magic):
            return codec
    return None


def _open(path: Path, compression: str | None) -> tuple[pa.NativeFile, pa.NativeFile]:
    """The raw file (whose position tells the progress) and a stream of its content."""
    raw = pa.OSFile(str(path), mode="r")
    if compression is not None:
        return raw, pa.CompressedInputStream(raw, compression)
    return raw, raw


def _is_text(head: bytes) -> bool:
    """Whether the first bytes of a file are UTF-8 text (a character cut at the end counts)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def detect(path: Path, compression: str | None, forced: str | None) -> str:
    raw, stream = _open(path, compression)
    try:
        head = stream.read(65536)
    except (OSError, pa.ArrowException) as exc:
        raise InvalidArgumentError(
            f"cannot read {path}: its {compression} content is damaged ({first_line(exc)}); "
            "nothing was written"
        ) from exc
    finally:
        raw.close()
    parquet = head.startswith(b"PAR1")
    if not parquet and forced != "parquet" and not _is_text(head):
        raise InvalidArgumentError(
            f"cannot load {path}: it is neither UTF-8 text nor Parquet; give a CSV, TSV, JSON "
            "lines or Parquet file (gzip or zstd compressed or not); nothing was written"
        )
    if forced is not None:
        if parquet != (forced == "parquet"):
            held = "Parquet" if parquet else "not Parquet"
            raise InvalidArgumentError(
                f"cannot read {path} as {named(forced, compression)}: it is {held}; pass "
                "another format, or none to tell it from the content; nothing was written"
            )
        return forced
    if parquet:
        return "parquet"
    name = path.name.lower()
    for suffix in (".gz", ".gzip", ".zst", ".zstd"):
        name = name.removesuffix(suffix)
    by_name = _EXTENSIONS.get(os.path.splitext(name)[1])
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"[") and text[1:].lstrip(b" \t\r\n")[:1] in (b"{", b"]"):
        raise InvalidArgumentError(
            f"cannot load {path}: it holds a JSON array; give JSON lines, one object per line "
            f"(jq -c '.[]' {path.name} > export.jsonl makes them); nothing was written"
        )
    if text.startswith(b"{"):
        return "jsonl"
    if by_name in ("csv", "tsv"):
        return by_name
    first = text.split(b"\n", 1)[0]
    return "tsv" if b"\t" in first and b"," not in first else "csv"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def named(fmt: str, compression: str | None) -> str:
    name = {"csv": "CSV", "tsv": "TSV", "jsonl": "JSON lines", "parquet": "Parquet"}[fmt]
    return f"{compression}-compressed {name}" if compression else name


def _csv_header(path: Path, compression: str | None, delimiter: str) -> list[str]:
    """The column names of a CSV file's header (its first block only is read)."""
    raw, stream = _open(path, compression)
    try:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, newlines_in_values=True, invalid_row_handler=lambda r: "skip"
            ),
        )
        return [str(n) for n in reader.schema.names]
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise InvalidArgumentError(
                f"cannot load {path}: it has no header line; nothing was written"
            ) from None
        raise
    finally:
        raw.close()


def _csv_chunks(
    path: Path,
    stream: pa.NativeFile,
    delimiter: str,
    header: list[str],
    integers: frozenset[str] = frozenset(),
) -> Iterator[Chunk]:
    """The rows of a CSV file, every column as text but ``integers``, parsed as int64 (a value
    that is not one raises ``ArrowInvalid``: read the file as text then)."""
    dupes = sorted({n for n in header if header.count(n) > 1})
    if dupes:
        raise InvalidArgumentError(
            f"cannot load {path}: its header repeats column(s) {dupes}; nothing was written"
        )
    invalid: list[tuple[int, str, str]] = []

    def on_invalid(row: Any) -> str:
        reason = f"the line has {row.actual_columns} fields, the header {row.expected_columns}"
        try:
            text = str(row.text)
        except UnicodeDecodeError:  # binary content: the reason says enough
            text = "(not UTF-8 text)"
        invalid.append((int(row.number or 0), reason, text))
        return "skip"

    reader = pacsv.open_csv(  # the header was read already: the file is not empty
        stream,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter,
            newlines_in_values=True,
            ignore_empty_lines=False,
            invalid_row_handler=on_invalid,
        ),
        convert_options=pacsv.ConvertOptions(
            # Texts as they are (this module converts them, naming each bad value), and the
            # integer columns as integers.
            column_types={n: pa.int64() if n in integers else pa.string() for n in header},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    record = 2  # the line of the next row: the header is line 1
    skipped: list[int] = []
    empty = pa.table({n: pa.array([], pa.string()) for n in header})
    batches = 0
    last: pa.RecordBatch | None = None
    with contextlib.closing(reader):  # its read-ahead stops with the reading
        for batch in reader:
            batches += 1
            # The rows the handler skipped so far (it may have read ahead of this batch).
            bad = [Bad(str(path), line, [reason], text) for line, reason, text in invalid]
            skipped.extend(line for line, _, _ in invalid)
            invalid.clear()
            n = batch.num_rows
            lines = np.empty(n, dtype=np.int64)
            i = 0
            while i < n:  # the lines of the rows, past the ones skipped
                later = [s for s in skipped if s >= record]
                take = min(n - i, later[0] - record) if later else n - i
                lines[i : i + take] = np.arange(record, record + take)
                i += take
                record += take
                while later and record == later[0]:
                    record += 1
                    later.pop(0)
            skipped = [s for s in skipped if s >= record]
            last = batch
            yield Chunk(pa.Table.from_batches([batch]), lines, bad)
    if last is not None and last.num_rows and _runs_to_the_end(last):
        raise InvalidArgumentError(
            f"cannot load {path}: line {record - 1} opens a quoted value that is never closed "
            "(it runs to the end of the file); close or remove the quote; nothing was written"
        )
    if invalid or not batches:  # (a header alone is checked as a file of rows is)
        bad = [Bad(str(path), line, [reason], text) for line, reason, text in invalid]
        yield Chunk(empty, np.array([], np.int64), bad)


def _runs_to_the_end(batch: pa.RecordBatch) -> bool:
    """Whether the last row of a CSV file (the last of ``batch``) holds a value that an
    unclosed quote ran to the end of the file: it spans lines and ends with a line's end (a
    quoted value that spans lines ends with its closing quote)."""
    for column in batch.columns:
        if pa.types.is_string(column.type):
            value = column[-1].as_py()
            if value and "\n" in value and value.endswith("\n"):
                return True
    return False


def _jsonl_chunks(path: Path, stream: pa.NativeFile) -> Iterator[Chunk]:
    line = 1
    rest = b""
    while True:
        block = stream.read(_BLOCK_BYTES)
        data = rest + block
        if not block:
            rest = b""
        else:
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            data, rest = data[: cut + 1], data[cut + 1 :]
        if data:
            texts = data.split(b"\n")
            if texts and texts[-1] == b"":
                texts.pop()
            yield _json_lines(path, texts, line)
            line += len(texts)
        if not block:
            return


def _json_lines(path: Path, texts: list[bytes], first_line: int) -> Chunk:
    numbers = [first_line + i for i, t in enumerate(texts) if t.strip()]
    kept = [t for t in texts if t.strip()]
    if not kept:
        return Chunk(pa.table({}), np.array([], np.int64))
    try:
        table = pajson.read_json(
            io.BytesIO(b"\n".join(kept)),
            read_options=pajson.ReadOptions(use_threads=False, block_size=_BLOCK_BYTES * 2),
        )
        if table.num_rows == len(kept):
            return Chunk(table, np.array(numbers, np.int64))
    except pa.ArrowInvalid:
        pass
    # Some line is not one JSON object: find which, line by line.
    bad: list[Bad] = []
    good: list[dict[str, Any]] = []
    good_lines: list[int] = []
    for number, text in zip(numbers, kept, strict=True):
        try:
            value = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            bad.append(Bad(str(path), number, [f"not valid JSON ({exc})"], _shown(text)))
            continue
        if not isinstance(value, dict):
            reason = f"a JSON {type(value).__name__}, not an object"
            bad.append(Bad(str(path), number, [reason], _shown(text)))
            continue
        good.append({k: _json_cell(v) for k, v in value.items()})
        good_lines.append(number)
    # Every key of every line (a line without one has it missing), not only the first's.
    names = list(dict.fromkeys(k for record in good for k in record))
    table = pa.table({n: pa.array([r.get(n) for r in good], pa.string()) for n in names})
    return Chunk(table, np.array(good_lines, np.int64), bad)


def _json_cell(value: Any) -> Any:
    """A JSON value as a cell: nested values stay text, for conversion to name."""
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, bool | int | float) and not isinstance(value, bool):
        return str(value)
    return value if value is None or isinstance(value, str) else str(value)


def _shown(text: bytes) -> str:
    return text.decode("utf-8", "replace")[:500]


def _parquet_chunks(path: Path, compression: str | None, rows: int) -> Iterator[Chunk]:
    with contextlib.ExitStack() as stack:
        if compression is None:
            source: Any = str(path)
        else:  # Parquet needs to seek: decompress into a temporary file first
            raw, stream = _open(path, compression)
            stack.callback(raw.close)
            spooled = stack.enter_context(tempfile.TemporaryFile())
            while chunk := stream.read(_BLOCK_BYTES):
                spooled.write(chunk)
            spooled.seek(0)
            source = spooled
        parquet = pq.ParquetFile(source)
        line = 1
        for batch in parquet.iter_batches(batch_size=rows):
            n = batch.num_rows
            yield Chunk(pa.Table.from_batches([batch]), np.arange(line, line + n))
            line += n


def raw_chunks(
    path: Path,
    fmt: str,
    compression: str | None,
    parquet_rows: int,
    integers: Callable[[list[str]], frozenset[str]] | None = None,
) -> Generator[tuple[int, Chunk], None, None]:
    """The raw chunks of ``path`` read as ``fmt``, each with the bytes of the file read so far
    (Parquet files are read ``parquet_rows`` rows at a time).

    The columns of a CSV file that ``integers`` names (given the header) are first parsed as
    integers, which is faster; when one holds something else, the rest of the file is read
    again as text, for the conversion to name each bad value by its line.
    """
    if fmt == "parquet":
        size = path.stat().st_size
        for chunk in _parquet_chunks(path, compression, parquet_rows):
            yield size, chunk
        return
    if fmt == "jsonl":
        raw, stream = _open(path, compression)
        try:
            for chunk in _jsonl_chunks(path, stream):
                yield raw.tell(), chunk
        finally:
            raw.close()
        return
    delimiter = "\t" if fmt == "tsv" else ","
    header = _csv_header(path, compression, delimiter)
    typed = integers(header) if integers is not None else frozenset()
    done = 1  # the last line of the rows yielded
    reported: set[int] = set()  # the lines of the bad rows yielded
    if typed:
        raw, stream = _open(path, compression)
        try:
            for chunk in _csv_chunks(path, stream, delimiter, header, typed):
                if len(chunk.lines):
                    done = int(chunk.lines[-1])
                reported.update(b.line for b in chunk.bad)
                yield raw.tell(), chunk
            return
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc):
                raise
        finally:
            raw.close()
    raw, stream = _open(path, compression)
    try:
        for chunk in _csv_chunks(path, stream, delimiter, header):
            keep = chunk.lines > done
            if not keep.all():
                chunk = Chunk(chunk.table.filter(pa.array(keep)), chunk.lines[keep], chunk.bad)
            chunk.bad = [b for b in chunk.bad if b.line not in reported]
            if chunk.table.num_rows or chunk.bad or done == 1:  # (a header alone: checked)
                yield raw.tell(), chunk
    finally:
        raw.close()
