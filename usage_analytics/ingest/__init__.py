"""Reading other systems' exports (CSV, TSV, JSON lines, Parquet; plain, gzip or zstd) into
usage rows, in bounded chunks, and loading them into a store in one commit.

A file is read in chunks of about :data:`CHUNK_ROWS` rows. Each chunk's columns are renamed,
filled with defaults, converted to the stored types and checked against the schema row by
row, so that every bad row is named by its file and 1-based line. What a file must hold:

- ``timestamp``: int (``timestamp_unit`` says which unit; nanoseconds by default), an ISO 8601
  text (``2026-11-02T10:00:00Z``, with an offset, or naive: UTC), or a date-time type;
- ``tenant`` and ``user_id``, unless ``defaults`` gives them;
- any other column of :data:`usage_analytics.COLUMNS` (missing ones get their zero values);
  ``id`` and ``created_at`` are set by the store and ignored. Other columns are refused:
  ``rename`` maps foreign names.
"""

from __future__ import annotations

import contextlib
import csv
import os
import queue
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import (
    ConcurrentWriteError,
    DuplicateUsageError,
    InvalidArgumentError,
    ValidationError,
)
from ..schema import INT32_COLUMNS, KEY_COLUMNS, NS_PER_DAY
from ._convert import Options, convert, empty, joined, parse_options
from ._formats import (
    FORMATS,
    Bad,
    Chunk,
    check_file,
    compression_of,
    detect,
    first_line,
    named,
    raw_chunks,
)

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["CHUNK_ROWS", "FORMATS", "LoadResult", "load_files", "read_usage_file"]

CHUNK_ROWS: Final = 1 << 16
#: The most rows of one day a load holds before writing them (a day's file of a load).
_DAY_ROWS: Final = 1 << 19

#: How many times a load runs when other writers' commits conflict with it (object storage).
LOAD_ATTEMPTS: Final = 5


_SHOWN: Final = 20


@dataclass(frozen=True)
class LoadResult:
    """What a load did.

    Attributes:
        files: files read.
        rows_read: data rows read (blank lines not counted).
        rows_written: rows committed.
        duplicates_skipped: rows skipped because their ``(user_id, timestamp)`` key was
            stored already or came earlier in the load (``on_conflict="ignore"``).
        rows_rejected: bad rows written to ``rejects`` instead of loaded.
        rejects: the rejects file, when one was written.
    """

    files: int
    rows_read: int
    rows_written: int
    duplicates_skipped: int
    rows_rejected: int
    rejects: Path | None = None

    def __str__(self) -> str:
        rows = f"{self.rows_read:,} row{'' if self.rows_read == 1 else 's'}"
        files = f"{self.files} file{'' if self.files == 1 else 's'}"
        text = (
            f"{rows} read from {files}: {self.rows_written:,} written, "
            f"{self.duplicates_skipped:,} skipped as duplicates, {self.rows_rejected:,} rejected"
        )
        if self.rejects is not None and self.rows_rejected:
            text += f" (listed in {self.rejects})"
        return text


class _Reader:
    """Reads files as chunks of good rows, keeping the bad ones and the counts."""

    def __init__(self, paths: Sequence[Path], options: Options, progress: bool) -> None:
        self.paths = paths
        self.options = options
        self.rows_read = 0
        self.rows_good = 0
        self.bad: list[Bad] = []
        self.bad_count = 0
        self._keep_bad: Any = None
        self._progress = progress

    def chunks(self, *, raise_on_bad: bool) -> Iterator[pd.DataFrame]:
        """The good rows of every file, in batches cut at UTC midnights where the rows run
        forward in time (see :func:`_by_days`)."""
        return _by_days(self._chunks(raise_on_bad))

    def _chunks(self, raise_on_bad: bool) -> Iterator[pd.DataFrame]:
        from tqdm import tqdm

        total = sum(p.stat().st_size for p in self.paths)
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc="loading",
            disable=not self._progress,
            delay=1.0,
            file=sys.stderr,
            leave=False,
        ) as bar:
            for path in self.paths:
                done = bar.n
                failed: list[Bad] = []
                file_bad = 0
                for position, frame, bad, _ in self._file_chunks(path):
                    bar.update(done + position - bar.n)
                    self.rows_read += len(frame) + len(bad)
                    self.bad_count += len(bad)
                    file_bad += len(bad)
                    if bad and raise_on_bad:
                        failed.extend(bad[: _SHOWN - len(failed)] if len(failed) < _SHOWN else [])
                    elif bad:
                        self._keep_bad(bad)
                    if failed:
                        continue  # the rest of the file is read only to count its bad rows
                    self.rows_good += len(frame)
                    if len(frame):
                        yield frame
                if failed:
                    raise _bad_rows_error(failed, file_bad)

    def _integers(self, header: list[str]) -> frozenset[str]:
        """The columns of a header that become integer columns (the timestamp too: if it holds
        times as text, the file is read as text)."""
        wanted = {*INT32_COLUMNS, "timestamp"}
        return frozenset(h for h in header if self.options.rename.get(h, h) in wanted)

    def locate(self, keys: pd.DataFrame) -> list[tuple[str, int]]:
        """Where the rows with the ``(user_id, timestamp)`` keys of ``keys`` are in the
        files: (file, 1-based line) of each, in file order (read again, on an error path)."""
        wanted = pd.MultiIndex.from_frame(keys[list(KEY_COLUMNS)])
        found: list[tuple[str, int]] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path in self.paths:
                for _, frame, _, lines in self._file_chunks(path):
                    if len(frame):
                        at = pd.MultiIndex.from_frame(frame[list(KEY_COLUMNS)]).isin(wanted)
                        found += [(str(path), int(line)) for line in lines[at]]
        return found

    def _file_chunks(self, path: Path) -> Iterator[tuple[int, pd.DataFrame, list[Bad], np.ndarray]]:
        """Chunks of about ``CHUNK_ROWS`` good rows of ``path``, each with the position in the
        file reached, the bad rows met and the line of each good row."""
        compression = compression_of(path)
        fmt = detect(path, compression, self.options.format)
        raw: list[Chunk] = []
        rows = 0
        position = 0
        try:
            with warnings.catch_warnings(), contextlib.ExitStack() as stack:
                warnings.simplefilter("ignore")  # nothing of pandas' or pyarrow's leaks out
                chunks = raw_chunks(path, fmt, compression, CHUNK_ROWS, self._integers)
                # Closed as soon as this ends, also by an error, whose traceback would keep
                # the file's reader (and the threads reading ahead for it) alive until the
                # interpreter exits, which then aborted now and then.
                stack.callback(chunks.close)
                for position, chunk in chunks:
                    raw.append(chunk)
                    rows += chunk.table.num_rows
                    if rows >= CHUNK_ROWS:
                        yield position, *convert(path, joined(raw), self.options)
                        raw, rows = [], 0
                if raw:
                    yield position, *convert(path, joined(raw), self.options)
        except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(
                f"cannot read {path} as {named(fmt, compression)} ({first_line(exc)}); "
                "nothing was written"
            ) from None


def _by_days(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``frames`` regrouped into batches of about ``CHUNK_ROWS`` rows or more, cut at the last
    UTC midnight of each while rows run forward in time, so that the store writes one file
    per day of a load (of one large file or of many small ones), not one per day of each
    chunk. Rows out of time order are passed on as they come."""
    held: list[pd.DataFrame] = []
    rows = 0
    for frame in frames:
        held.append(frame)
        rows += len(frame)
        if rows < CHUNK_ROWS:
            continue
        batch = pd.concat(held, ignore_index=True) if len(held) > 1 else held[0]
        held, rows = [], 0
        days = batch["timestamp"].to_numpy() // NS_PER_DAY
        cut = len(batch)
        if (days[1:] >= days[:-1]).all() and days[0] != days[-1]:
            cut = int(np.searchsorted(days, days[-1]))  # the rows of the last day wait
        elif days[0] == days[-1] and len(batch) < _DAY_ROWS:
            held, rows = [batch], len(batch)  # one day so far: wait for more
            continue
        if cut < len(batch):
            held, rows = [batch.iloc[cut:].reset_index(drop=True)], len(batch) - cut
        yield batch.iloc[:cut] if cut < len(batch) else batch
    if held:
        yield pd.concat(held, ignore_index=True) if len(held) > 1 else held[0]


def _located(exc: DuplicateUsageError, reader: _Reader) -> DuplicateUsageError:
    """``exc``, a key of a load found twice (or stored already), with the file and line of
    each row that holds one."""
    places = reader.locate(exc.keys)
    if not places:
        return exc
    shown = "; ".join(f"{file}, line {line}" for file, line in places[:_SHOWN])
    more = f"; ... and {len(places) - _SHOWN} more" if len(places) > _SHOWN else ""
    head, _, tail = str(exc).partition("; nothing was written")
    head = head.replace("inside a batch", "repeated in the files")
    return DuplicateUsageError(
        f"{head} (rows with them: {shown}{more}); nothing was written{tail}", exc.keys
    )


def _bad_rows_error(bad: Sequence[Bad], count: int) -> ValidationError:
    """The error of a load stopped by bad rows: ``bad`` (the first of them) shown, of
    ``count`` in the file."""
    shown = [f"  - {b.file}, line {b.line}: {'; '.join(b.reasons)}" for b in bad]
    more = f"\n  ... and {count - len(bad)} more bad line(s)" if count > len(bad) else ""
    cases = pd.DataFrame(
        {
            "file": [b.file for b in bad],
            "line": [b.line for b in bad],
            "reasons": ["; ".join(b.reasons) for b in bad],
        }
    )
    return ValidationError(
        f"{count} bad line(s) in {bad[0].file}; nothing was written (pass rejects= / "
        "--rejects FILE to load the good rows and list the bad ones):\n" + "\n".join(shown) + more,
        cases,
    )


@contextlib.contextmanager
def _ahead(chunks: Iterator[pd.DataFrame]) -> Iterator[Iterator[pd.DataFrame]]:
    """``chunks`` read one ahead on another thread, so that reading the next chunk (pyarrow
    parses without the GIL) overlaps writing this one. The thread stops when the caller
    does, and its errors are raised in the caller."""
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(("chunk", chunk)):
                    return
                pa.default_memory_pool().release_unused()  # see Writer.append_batches
            put(("done", None))
        except BaseException as exc:
            put(("error", exc))

    def consume() -> Iterator[pd.DataFrame]:
        while True:
            kind, value = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value

    worker = threading.Thread(target=produce, name="usage-analytics-reader", daemon=True)
    worker.start()
    try:
        yield consume()
    finally:
        stop.set()
        worker.join()


def _paths(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not isinstance(paths, Sequence) or not paths:
        raise InvalidArgumentError("give one or more files to load")
    out = []
    for p in paths:
        if not isinstance(p, str | os.PathLike):
            raise InvalidArgumentError(f"a file to load is a path, not {type(p).__name__}")
        path = Path(p)
        check_file(path)
        out.append(path)
    return out


def read_usage_file(
    path: str | os.PathLike[str],
    *,
    format: Literal["csv", "tsv", "jsonl", "parquet"] | None = None,
    timestamp_unit: Literal["s", "ms", "us", "ns"] | None = None,
    rename: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    fill_nulls: bool = False,
) -> pd.DataFrame:
    """Read a usage export into a frame of the stored dtypes, as :meth:`Store.create_usage`
    takes it.

    Args:
        path: a CSV, TSV, JSON-lines or Parquet file, plain or gzip- or zstd-compressed (told
            by its first bytes and its name).
        format: force the format instead of telling it from the content and extension.
        timestamp_unit: the unit of integer timestamps. Without it, integers are nanoseconds,
            and an integer that would read as a time before 2000 stops the read with an error
            that names the likely unit.
        rename: ``{name in the file: usage column}``.
        defaults: ``{usage column: value}`` for columns the file lacks.
        fill_nulls: read missing values (nulls; empty fields of number columns) as the
            column's zero value (``""`` or 0) instead of refusing their rows.

    Raises:
        ValidationError: some rows are bad; the message names each by file and 1-based line
            (a header is line 1), and ``failure_cases`` lists them all.
        InvalidArgumentError: the file is missing, empty, unreadable, or lacks a column.

    Example:
        >>> p = tmp / "export.csv"
        >>> _ = p.write_text("timestamp,tenant,user_id,model_id\\n"
        ...                  "2026-11-02T10:00:00Z,t0,u1,gpt-4o\\n2026-11-02T10:00:01Z,t0,u1,\\n")
        >>> rows = read_usage_file(p)
        >>> rows["timestamp"].tolist(), rows["model_id"].tolist()
        ([1793613600000000000, 1793613601000000000], ['gpt-4o', ''])
    """
    options = parse_options(format, timestamp_unit, rename, defaults, fill_nulls)
    reader = _Reader(_paths([path]), options, progress=False)
    frames = list(reader.chunks(raise_on_bad=True))
    if not frames:
        return empty()
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def load_files(
    store: Store,
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    format: Literal["csv", "tsv", "jsonl", "parquet"] | None = None,
    timestamp_unit: Literal["s", "ms", "us", "ns"] | None = None,
    rename: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    fill_nulls: bool = False,
    on_conflict: Literal["error", "ignore"] = "error",
    rejects: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> LoadResult:
    """Load usage exports into ``store``: the rows of every file in one commit, or none.

    The files are read in chunks (see :func:`read_usage_file` for the options), so memory
    stays bounded whatever their size; each chunk is written as it comes, and the commit
    at the end makes them all live at once. On object storage, when another writer commits
    rows with keys of this load meanwhile (and ``on_conflict="ignore"``), nothing of this
    attempt lands and the files are read and loaded again on the newer state, which then
    skips those rows (up to :data:`LOAD_ATTEMPTS` times).

    Args:
        store: the store to load into (created with ``auto_migrate()`` or ``init``).
        paths: the files.
        on_conflict: ``"ignore"`` skips rows whose ``(user_id, timestamp)`` key is stored
            already or came earlier in the load (counted in ``duplicates_skipped``), so that a
            load can be re-run.
        rejects: a CSV file to list each bad row in (columns ``file``, ``line``, ``reasons``,
            ``row``) while the good rows load; without it a bad row stops the load.
        progress: show a progress bar on stderr when the load takes longer than a second.

    Returns:
        What was read, written, skipped and rejected.

    Example:
        >>> from usage_analytics import Store
        >>> store = Store(tmp / "loaded"); store.auto_migrate()
        >>> p = tmp / "export.jsonl"
        >>> _ = p.write_text('{"timestamp": 1793613600000, "tenant": "t0", "user_id": "u1"}\\n')
        >>> print(load_files(store, [p], timestamp_unit="ms"))
        1 row read from 1 file: 1 written, 0 skipped as duplicates, 0 rejected
    """
    options = parse_options(format, timestamp_unit, rename, defaults, fill_nulls)
    files = _paths(paths)
    if not isinstance(progress, bool):
        raise InvalidArgumentError(f"progress must be True or False, not {progress!r}")
    target: Path | None = None
    if rejects is not None:
        target = Path(rejects)
        if target.resolve() in {f.resolve() for f in files}:
            raise InvalidArgumentError(f"rejects file {target} is one of the files to load")
        if target.is_dir():
            raise InvalidArgumentError(f"rejects file {target} is a folder")
    for attempt in range(1, LOAD_ATTEMPTS + 1):
        try:
            reader, written = _load_once(store, files, options, on_conflict, target, progress)
        except ConcurrentWriteError:
            # Another writer committed rows with keys of this load (on object storage); the
            # files are read again, and the rows now stored are skipped (or refused).
            if attempt == LOAD_ATTEMPTS:
                raise
            continue
        return LoadResult(
            files=len(files),
            rows_read=reader.rows_read,
            rows_written=written,
            duplicates_skipped=reader.rows_good - written,
            rows_rejected=reader.bad_count,
            rejects=target,
        )
    raise AssertionError("unreachable")


def _load_once(
    store: Store,
    files: list[Path],
    options: Options,
    on_conflict: Literal["error", "ignore"],
    target: Path | None,
    progress: bool,
) -> tuple[_Reader, int]:
    """One attempt of :func:`load_files`: the reader (for its counts) and the rows written."""
    reader = _Reader(files, options, progress)
    with contextlib.ExitStack() as stack:
        if target is not None:
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                out = stack.enter_context(open(tmp, "w", newline="", encoding="utf-8"))
            except OSError as exc:
                raise InvalidArgumentError(
                    f"cannot write the rejects file {target} ({exc.strerror or exc}); give a "
                    "path in a folder that exists and can be written; nothing was written"
                ) from exc
            stack.callback(lambda: tmp.unlink(missing_ok=True))
            writer = csv.writer(out)
            writer.writerow(["file", "line", "reasons", "row"])
            reader._keep_bad = lambda bad: writer.writerows(
                [b.file, b.line, "; ".join(b.reasons), b.row] for b in bad
            )
        chunks = stack.enter_context(_ahead(reader.chunks(raise_on_bad=target is None)))
        try:
            written = store.create_usage_batches(chunks, on_conflict=on_conflict)
        except DuplicateUsageError as exc:
            raise _located(exc, _Reader(files, options, progress=False)) from None
        if target is not None:
            out.close()
            os.replace(tmp, target)
    return reader, written
