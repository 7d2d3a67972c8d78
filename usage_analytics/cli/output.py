"""The shared output options and the formats: every command that prints a table writes exactly
one document, to stdout or atomically to ``--output``.

- ``table`` (aligned text) and ``markdown``: a title line (what, tenant, window to the second and
  zone), a blank line, then the table. Numbers follow one rule per kind of column (see
  :func:`cell_text`), times are shown to the second in the report's zone.
- ``json``: one object: the document's context (``report``, ``root``, ``tenant``, ``start``,
  ``end``, ``tz``, ...), ``columns`` and ``rows``, a list of records (``info``: its one record).
- ``jsonl``: one record per line. ``csv``, ``tsv``: a header line, then one line per row.
- ``parquet``: the table, with the context as JSON in the schema metadata key
  ``usage_analytics``; to ``--output`` or to a stdout that is not a terminal.

Machine formats keep full precision: ints exact, floats as ``repr``, NaN as ``null`` (JSON) or
an empty field (CSV), times as ISO 8601 with their UTC offset (a fraction of a second only when
there is one).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import click
import numpy as np
import pandas as pd

from ..reports.spec import DIMENSIONS
from ._app import LibraryError

__all__ = [
    "FORMATS",
    "Document",
    "Output",
    "cell_text",
    "column_kind",
    "json_time",
    "output_options",
    "render",
    "show_time",
    "stdout_is_terminal",
]

FORMATS: Final = ("table", "csv", "tsv", "json", "jsonl", "markdown", "parquet")
#: The format an --output file's extension implies when --format is not given.
_BY_EXTENSION: Final = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".md": "markdown",
    ".parquet": "parquet",
}
#: Integer columns that are codes, not quantities: printed without thousands separators.
_CODES: Final = frozenset({*DIMENSIONS, "schema_version"})
_NONE: Final = "(none)"  # an empty string value in table and markdown
_NAN: Final = "-"  # a mean or percentile without rows, in table and markdown
Kind = Literal["count", "code", "rate", "cost", "float", "time", "text"]
_RIGHT: Final = frozenset({"count", "code", "rate", "cost", "float"})


@dataclass
class Document:
    """What a command prints: a title, its context, one table.

    Attributes:
        kind: the command (``"report"``, ``"summary"``, ...): the JSON ``report`` field.
        title: the human title line of ``table`` and ``markdown``.
        frame: the table.
        context: JSON fields before ``columns`` and ``rows`` (times as int ns: see ``times``).
        tz: the zone in which times are shown.
        record: the table is one record (``info``): shown as field/value lines, and as one
            flat JSON object.
        failure: after writing the document, fail with this message (exit 1): ``verify``.
    """

    kind: str
    title: str
    frame: pd.DataFrame
    context: dict[str, Any] = field(default_factory=dict)
    tz: str = "UTC"
    record: bool = False
    failure: str | None = None


# -- times ------------------------------------------------------------------------------------


def _timestamp(ns: int, tz: str) -> pd.Timestamp | None:
    if not pd.Timestamp.min.value <= ns <= pd.Timestamp.max.value:
        return None
    return pd.Timestamp(ns, tz="UTC").tz_convert(tz)


def show_time(value: Any, tz: str, *, precise: bool = False) -> str:
    """A time (int ns or a Timestamp) for people (to the second, in ``tz``; the UTC offset
    shown unless ``tz`` is UTC) or, with ``precise``, ISO 8601 with the offset and any
    fraction of a second. Ints beyond what a timestamp can show print as they are.

    Example:
        >>> show_time(1_793_491_266_931_246_127, "UTC")
        '2026-11-01 00:01:06'
        >>> show_time(1_793_491_266_931_246_127, "America/New_York", precise=True)
        '2026-10-31T20:01:06.931246127-04:00'
    """
    ts = _timestamp(int(value), tz) if isinstance(value, int | np.integer) else value
    if ts is None:
        return str(int(value))
    ts = pd.Timestamp(ts).tz_convert(tz)
    if precise:
        return str(ts.isoformat())
    text = str(ts.replace(microsecond=0, nanosecond=0).isoformat(sep=" "))
    return text[: -len("+00:00")] if tz == "UTC" and text.endswith("+00:00") else text


def json_time(value: int, tz: str) -> str | int:
    ts = _timestamp(value, tz)
    return int(value) if ts is None else str(ts.isoformat())


# -- cells ------------------------------------------------------------------------------------


def column_kind(name: str, values: pd.Series) -> Kind:
    """How a column is printed in ``table`` and ``markdown``.

    - ``count``: integer quantities (requests, tokens, rows, bytes): thousands separators;
    - ``code``: integer codes (``status_code``, ``schema_version``): as they are;
    - ``rate``: ``error_rate``: a percentage with 2 decimals;
    - ``cost``: ``*cost``: 4 decimals with thousands separators;
    - ``float``: other floats (means, percentiles, rates per second): 2 decimals with
      thousands separators;
    - ``time``: to the second in the document's zone;
    - ``text``: as it is (an empty value as ``(none)``).
    """
    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        return "time"
    if pd.api.types.is_bool_dtype(dtype):
        return "text"
    if pd.api.types.is_integer_dtype(dtype):
        return "code" if name in _CODES else "count"
    if pd.api.types.is_float_dtype(dtype):
        if name == "error_rate":
            return "rate"
        return "cost" if name.endswith("cost") else "float"
    return "text"


def _missing(value: Any) -> bool:
    """None, NaN, NaT or NA: no value."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def cell_text(value: Any, kind: Kind, tz: str) -> str:
    """One value as ``table`` and ``markdown`` show it (see :func:`column_kind`).

    Example:
        >>> [cell_text(v, k, "UTC") for v, k in [(17504, "count"), (0.02908, "rate"),
        ...                                      (1995.75417, "float"), (0.01234567, "cost")]]
        ['17,504', '2.91%', '1,995.75', '0.0123']
    """
    if _missing(value):
        return _NAN
    if kind == "count":
        return f"{int(value):,}"
    if kind == "code":
        return str(int(value))
    if kind == "rate":
        return f"{float(value):.2%}"
    if kind == "cost":
        return f"{float(value):,.4f}"
    if kind == "float":
        return f"{float(value):,.2f}"
    if kind == "time":
        return show_time(value, tz)
    text = str(value)
    return text if text else _NONE


def _texts(frame: pd.DataFrame, tz: str) -> tuple[list[Kind], list[list[str]]]:
    kinds = [column_kind(str(c), frame[c]) for c in frame.columns]
    columns = [
        [cell_text(v, kind, tz) for v in frame[c].tolist()]
        for c, kind in zip(frame.columns, kinds, strict=True)
    ]
    rows = [list(r) for r in zip(*columns, strict=True)] if columns else []
    return kinds, rows


def _plain(value: Any, tz: str) -> Any:
    """A value for the machine formats: ints exact, floats full precision (NaN: None), times
    ISO 8601 with their offset."""
    if _missing(value):
        return None
    if isinstance(value, pd.Timestamp):
        return str(value.tz_convert(tz).isoformat()) if value.tzinfo else str(value.isoformat())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    return str(value)


def _records(frame: pd.DataFrame, tz: str) -> list[dict[str, Any]]:
    names = [str(c) for c in frame.columns]
    columns = [frame[c].tolist() for c in frame.columns]
    return [
        {n: _plain(v, tz) for n, v in zip(names, row, strict=True)}
        for row in zip(*columns, strict=True)
    ]


# -- formats ----------------------------------------------------------------------------------


def _aligned(header: Sequence[str], rows: list[list[str]], right: Sequence[bool]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return [line(header), *(line(r) for r in rows)]


def _fields(doc: Document) -> list[list[str]]:
    """A one-record document as (field, value) lines."""
    _, rows = _texts(doc.frame, doc.tz)
    values = rows[0] if rows else [""] * len(doc.frame.columns)
    return [[str(c), v] for c, v in zip(doc.frame.columns, values, strict=True)]


def _table(doc: Document) -> str:
    if doc.record:
        body = _aligned(["field", "value"], _fields(doc), [False, False])
        return "\n".join([doc.title, "", *body]) + "\n"
    kinds, rows = _texts(doc.frame, doc.tz)
    header = [str(c) for c in doc.frame.columns]
    lines = _aligned(header, rows, [k in _RIGHT for k in kinds])
    if not rows:
        lines.append("(no rows)")
    return "\n".join([doc.title, "", *lines]) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _markdown(doc: Document) -> str:
    if doc.record:
        header, rows, rule = ["field", "value"], _fields(doc), [":---", ":---"]
    else:
        kinds, rows = _texts(doc.frame, doc.tz)
        header = [str(c) for c in doc.frame.columns]
        rule = ["---:" if k in _RIGHT else ":---" for k in kinds]
    lines = [
        "| " + " | ".join(_md_cell(h) for h in header) + " |",
        "|" + "|".join(rule) + "|",
        *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows),
    ]
    return "\n".join([_md_cell(doc.title), "", *lines]) + "\n"


def _context(doc: Document) -> dict[str, Any]:
    return {"report": doc.kind, **doc.context}


def _json(doc: Document) -> str:
    records = _records(doc.frame, doc.tz)
    if doc.record:
        value: Any = records[0] if records else {}
    else:
        value = {
            **_context(doc),
            "columns": [str(c) for c in doc.frame.columns],
            "rows": records,
        }
    return json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _jsonl(doc: Document) -> str:
    return "".join(
        json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n"
        for r in _records(doc.frame, doc.tz)
    )


def _delimited(doc: Document, delimiter: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow([str(c) for c in doc.frame.columns])
    for record in _records(doc.frame, doc.tz):
        writer.writerow(["" if v is None else v for v in record.values()])
    return buffer.getvalue()


def _parquet(doc: Document) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(doc.frame, preserve_index=False)
    meta = json.dumps(_context(doc), ensure_ascii=False, default=str)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"usage_analytics": meta.encode()}
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


_RENDER: Final[Mapping[str, Callable[[Document], str | bytes]]] = {
    "table": _table,
    "markdown": _markdown,
    "json": _json,
    "jsonl": _jsonl,
    "csv": lambda d: _delimited(d, ","),
    "tsv": lambda d: _delimited(d, "\t"),
    "parquet": _parquet,
}


def render(doc: Document, fmt: str) -> str | bytes:
    """The whole document in format ``fmt`` (text, or bytes for ``parquet``).

    Example:
        >>> doc = Document("demo", "A title", pd.DataFrame({"a": ["x|y"], "n": [1234]}))
        >>> print(render(doc, "markdown"), end="")
        A title
        <BLANKLINE>
        | a | n |
        |:---|---:|
        | x\\|y | 1,234 |
    """
    if fmt not in _RENDER:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return _RENDER[fmt](doc)


# -- where it goes ----------------------------------------------------------------------------


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in its folder and ``os.replace``:
    the file is either absent, as before, or complete.

    Raises:
        LibraryError: the file cannot be written.
    """
    tmp: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as handle:
            tmp = handle.name
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise LibraryError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def stdout_is_terminal() -> bool:
    """Whether stdout is a terminal (where parquet, being binary, is refused)."""
    return sys.stdout.isatty()


@dataclass(frozen=True)
class Output:
    """Where and how a command's document goes (``--format``, ``--output``)."""

    fmt: str
    path: Path | None

    @classmethod
    def of(cls, fmt: str | None, output: str | None) -> Output:
        """Check the options before the command runs.

        Raises:
            click.UsageError: parquet to a terminal.
        """
        path = None if output in (None, "-") else Path(output)  # "-": stdout, as usual
        if fmt is None:
            fmt = "table" if path is None else _BY_EXTENSION.get(path.suffix.lower(), "table")
        if fmt == "parquet" and path is None and stdout_is_terminal():
            raise click.UsageError(
                "parquet is binary: give --output FILE, or redirect stdout to a file or pipe"
            )
        return cls(fmt, path)

    def emit(self, doc: Document) -> None:
        """Render the whole document, then write it (atomically to a file)."""
        data = render(doc, self.fmt)
        if self.path is not None:
            write_atomically(self.path, data.encode() if isinstance(data, str) else data)
        elif isinstance(data, bytes):
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            click.echo(data, nl=False)


def output_options(command: Callable[..., Document]) -> Callable[..., None]:
    """Add ``--format`` and ``--output/-o`` to a command that returns a :class:`Document`."""

    @functools.wraps(command)
    def run(*args: Any, fmt: str | None, output: str | None, **kwargs: Any) -> None:
        out = Output.of(fmt, output)
        doc = command(*args, **kwargs)
        out.emit(doc)
        if doc.failure is not None:
            raise LibraryError(doc.failure)

    run = click.option(
        "-o",
        "--output",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Write the document to FILE (atomically: complete or not at all) instead of "
        "stdout ('-': stdout); its extension (.csv .tsv .json .jsonl .md .parquet) sets the "
        "format unless --format is given.",
    )(run)
    run = click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=None,
        help="Output format (default: table, or what --output's extension names). Each "
        "invocation writes one document: json is one object, csv and tsv one table.",
    )(run)
    return run
