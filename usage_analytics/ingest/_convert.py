"""Raw chunks of an export -> frames of the stored dtypes, with the reasons each bad row is
refused."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pandera.errors
import pyarrow as pa
import pyarrow.compute as pc

from .._validation import passes_fast_checks, widened_for_checks
from ..errors import InvalidArgumentError
from ..schema import INPUT_COLUMNS, INPUT_SCHEMA, INT32_COLUMNS, STRING_COLUMNS, ZERO_VALUES
from ._formats import FORMATS, Bad, Chunk

__all__ = ["Options", "convert", "empty", "joined", "parse_options"]

_UNITS: Final = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
#: Integer timestamps below this many ns (2000-01-01) are taken to be in another unit.


_YEAR_2000_NS: Final = 946_684_800 * 10**9


_IGNORED: Final = ("id", "created_at")


_REQUIRED: Final = ("timestamp", "tenant", "user_id")


_STR = pd.StringDtype(storage="pyarrow", na_value=np.nan)


@dataclass(frozen=True)
class Options:
    format: str | None
    timestamp_unit: str | None
    rename: Mapping[str, str]
    defaults: Mapping[str, str]
    fill_nulls: bool


def parse_options(
    format: str | None,
    timestamp_unit: str | None,
    rename: Mapping[str, str] | None,
    defaults: Mapping[str, Any] | None,
    fill_nulls: bool,
) -> Options:
    if format is not None and format not in FORMATS:
        raise InvalidArgumentError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if timestamp_unit is not None and timestamp_unit not in _UNITS:
        raise InvalidArgumentError(
            f"timestamp_unit must be one of {', '.join(_UNITS)}, not {timestamp_unit!r}"
        )
    known = (*INPUT_COLUMNS, *_IGNORED)
    rename = dict(rename or {})
    for old, new in rename.items():
        if not isinstance(old, str) or not isinstance(new, str) or not old:
            raise InvalidArgumentError(f"rename maps column names to names, not {old!r}: {new!r}")
        if new not in known:
            raise InvalidArgumentError(
                f"rename {old!r} to {new!r}: {new!r} is not a usage column; choose one of "
                f"{', '.join(INPUT_COLUMNS)}"
            )
    texts: dict[str, str] = {}
    for column, value in dict(defaults or {}).items():
        if column not in INPUT_COLUMNS:
            raise InvalidArgumentError(
                f"default for {column!r}: not a usage column; choose one of "
                f"{', '.join(INPUT_COLUMNS)}"
            )
        texts[column] = str(value)
    if not isinstance(fill_nulls, bool):
        raise InvalidArgumentError(f"fill_nulls must be True or False, not {fill_nulls!r}")
    return Options(format, timestamp_unit, rename, texts, fill_nulls)


def _columns(path: Path, names: Sequence[str], options: Options) -> dict[str, str]:
    """The usage column each of ``names`` becomes (renames applied); raises on what is not a
    usage column, and on required columns neither the file nor a default gives."""
    mapping = {n: options.rename.get(n, n) for n in names}
    unknown = [n for n, new in mapping.items() if new not in (*INPUT_COLUMNS, *_IGNORED)]
    if unknown:
        raise InvalidArgumentError(
            f"cannot load {path}: column(s) {unknown} are not usage columns; map them with "
            f"rename (--rename OLD=NEW) to one of {', '.join(INPUT_COLUMNS)}, or drop them "
            "from the file; nothing was written"
        )
    targets = list(mapping.values())
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise InvalidArgumentError(
            f"cannot load {path}: more than one column becomes {twice} after renaming; "
            "nothing was written"
        )
    missing = [c for c in _REQUIRED if c not in targets and c not in options.defaults]
    if missing:
        hint = "" if missing == ["timestamp"] else " (or give a default: --default COL=VALUE)"
        raise InvalidArgumentError(
            f"cannot load {path}: it has no column {', '.join(map(repr, missing))}; rename a "
            f"column to it (--rename OLD=NEW){hint}; nothing was written"
        )
    return mapping


class _Problems:
    """Reasons per row of a chunk."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reasons: dict[int, list[str]] = {}

    def add(self, mask: np.ndarray, reason: str | Callable[[int], str]) -> None:
        """``reason``: a text, or a function of the row number giving one."""
        for i in np.flatnonzero(mask).tolist():
            self.reasons.setdefault(i, []).append(reason(i) if callable(reason) else reason)

    def mask(self) -> np.ndarray:
        bad = np.zeros(self.n, dtype=bool)
        bad[list(self.reasons)] = True
        return bad


def _no_value(name: str, fill: str) -> str:
    return f"column {name!r} has no value (fill_nulls / --fill-nulls reads it as {fill})"


def _text_column(
    name: str, column: pa.ChunkedArray, options: Options, problems: _Problems
) -> pd.Series:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        try:
            column = pc.cast(column, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            column = pa.chunked_array([pa.array([_text_of(v) for v in column.to_pylist()])])
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    if nulls.any():
        if not options.fill_nulls:
            problems.add(nulls, _no_value(name, "''"))
        column = pc.fill_null(column, "")
    return pd.Series(column.to_pandas(types_mapper={pa.string(): _STR}.get), dtype=_STR)


def _text_of(value: Any) -> str | None:
    return None if value is None else str(value)


def _int_values(
    name: str, column: pa.ChunkedArray | pa.Array, problems: _Problems
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The integers of a column of any type; a mask of the rows that hold one, and a mask of
    those that hold something else (named in ``problems``). Rows in neither hold nothing."""
    kind = column.type
    n = len(column)
    if kind == pa.int64() and column.null_count == 0:  # the common case: parsed as int64
        values = column.to_numpy() if isinstance(column, pa.Array) else _int64s(column)
        return values, np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    if pa.types.is_integer(kind):
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        invalid = np.zeros(n, dtype=bool)
        if pa.types.is_unsigned_integer(kind):
            big = pc.greater(column, 2**63 - 1)
            invalid = pc.fill_null(big, False).to_numpy(zero_copy_only=False)
            problems.add(invalid, f"column {name!r}: a value beyond int64")
            valid &= ~invalid
        values = pc.fill_null(pc.cast(column, pa.int64(), safe=False), 0).to_numpy()
        return np.where(valid, values, 0), valid, invalid
    if pa.types.is_floating(kind):
        floats = column.to_numpy(zero_copy_only=False).astype(np.float64)
        present = ~np.isnan(floats)
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(floats) & (floats == np.trunc(floats)) & (np.abs(floats) < 2.0**63)
        invalid = present & ~valid
        problems.add(invalid, lambda i: f"column {name!r}: {floats[i]!r} is not an integer")
        return np.where(valid, floats, 0).astype(np.int64), valid, invalid
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        column = pc.cast(column, pa.string())
    if column.null_count == 0:
        try:  # the common case: every value an integer
            values = pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
            return values, np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
        except pa.ArrowInvalid:
            pass
    texts = pc.utf8_trim_whitespace(column)
    present = pc.fill_null(pc.not_equal(texts, ""), False).to_numpy(zero_copy_only=False)
    digits = pc.fill_null(pc.match_substring_regex(texts, r"^[+-]?\d{1,19}$"), False)
    valid = digits.to_numpy(zero_copy_only=False).copy()
    values = np.zeros(n, dtype=np.int64)
    if valid.any():
        picked = pc.filter(texts, digits)
        try:
            values[valid] = pc.cast(picked, pa.int64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # 19 digits beyond int64
            parsed = [int(v) for v in picked.to_pylist()]
            fits = np.array([-(2**63) <= v < 2**63 for v in parsed])
            idx = np.flatnonzero(valid)
            values[idx[fits]] = [v for v, f in zip(parsed, fits, strict=True) if f]
            valid[idx[~fits]] = False
    invalid = present & ~valid
    problems.add(invalid, lambda i: f"column {name!r}: {texts[i].as_py()!r} is not an integer")
    return values, valid, invalid


def _int64s(column: pa.ChunkedArray) -> np.ndarray:
    values: np.ndarray = (column.chunk(0) if column.num_chunks == 1 else column).to_numpy()
    return values


def _int_column(
    name: str, column: pa.ChunkedArray, options: Options, problems: _Problems
) -> pd.Series:
    values, valid, invalid = _int_values(name, column, problems)
    if not options.fill_nulls:
        problems.add(~valid & ~invalid, _no_value(name, "0"))
    return pd.Series(values, dtype=np.int64, copy=False)


def _timestamp_column(
    path: Path, column: pa.ChunkedArray, lines: np.ndarray, options: Options, problems: _Problems
) -> pd.Series:
    kind = column.type
    n = len(column)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        if pa.types.is_date(kind):
            column = pc.cast(column, pa.timestamp("s"))
            kind = column.type
        if kind.tz is None:
            column = pc.assume_timezone(column, "UTC")
        as_ns = pc.cast(column, pa.timestamp("ns", tz="UTC"), safe=False)
        valid = as_ns.is_valid().to_numpy(zero_copy_only=False)
        problems.add(~valid, "column 'timestamp' has no value")
        return pd.Series(pc.fill_null(pc.cast(as_ns, pa.int64()), 0).to_numpy(), dtype=np.int64)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        values, ints, invalid = _int_values("timestamp", column, problems)
        empty = ~ints & ~invalid
    else:
        texts = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
        present = pc.fill_null(pc.not_equal(texts, ""), False).to_numpy(zero_copy_only=False)
        digits = pc.fill_null(pc.match_substring_regex(texts, r"^[+-]?\d+$"), False)
        ints = digits.to_numpy(zero_copy_only=False)
        values = np.zeros(n, dtype=np.int64)
        if ints.any():
            values, ints, _ = _int_values("timestamp", pc.if_else(digits, texts, ""), problems)
        iso = present & ~digits.to_numpy(zero_copy_only=False)
        if iso.any():
            parsed_values, parsed = _iso(pc.filter(texts, pa.array(iso)))
            values[iso] = parsed_values
            bad = np.zeros(n, dtype=bool)
            bad[np.flatnonzero(iso)[~parsed]] = True
            problems.add(
                bad,
                lambda i: (
                    f"column 'timestamp': {texts[i].as_py()!r} is neither an ISO 8601 "
                    "time (such as 2026-11-02T10:00:00Z) nor an integer"
                ),
            )
        empty = ~present
    problems.add(empty, "column 'timestamp' has no value")
    if ints.any():
        values = _apply_unit(path, values, ints, lines, options.timestamp_unit, problems)
    return pd.Series(values, dtype=np.int64, copy=False)


def _iso(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 texts as int ns (naive ones UTC), and a mask of those that parsed."""
    try:
        parsed = pc.cast(texts, pa.timestamp("ns", tz="UTC"))
        return pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False), np.ones(len(texts), bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = pd.to_datetime(
            pd.Series(texts.to_pylist(), dtype=object), utc=True, format="ISO8601", errors="coerce"
        )
    ok = times.notna().to_numpy()
    values = np.zeros(len(texts), dtype=np.int64)
    if ok.any():
        values[ok] = times[ok].dt.as_unit("ns").astype(np.int64).to_numpy()
    return values, ok


def _apply_unit(
    path: Path,
    values: np.ndarray,
    is_int: np.ndarray,
    lines: np.ndarray,
    unit: str | None,
    problems: _Problems,
) -> np.ndarray:
    if unit is None:
        early = is_int & (values < _YEAR_2000_NS) & (values >= 0)
        if early.any():
            i = int(np.flatnonzero(early)[0])
            raise InvalidArgumentError(
                f"{path}, line {lines[i]}: the integer timestamp {values[i]} reads as "
                f"{_as_date(values[i])} in nanoseconds; it looks like {_likely_unit(values[i])}: "
                "pass timestamp_unit (--timestamp-unit s|ms|us|ns) to say which; nothing was "
                "written"
            )
        return values
    factor = _UNITS[unit]
    if factor == 1:
        return values
    limit = (2**63 - 1) // factor
    over = is_int & (np.abs(values) > limit)
    problems.add(over, lambda i: f"column 'timestamp': {values[i]} {unit} is beyond 2262")
    out = values.copy()  # the unit is that of the integers: ISO times of the column stay
    scaled = is_int & ~over
    out[scaled] = values[scaled] * factor
    out[over] = 0
    return out


def _as_date(ns: int) -> str:
    return str(pd.Timestamp(int(ns), unit="ns", tz="UTC").date())


def _likely_unit(value: int) -> str:
    for unit in ("us", "ms", "s"):
        scaled = value * (_UNITS[unit])
        if _YEAR_2000_NS <= scaled < 2**63:
            name = {"us": "microseconds", "ms": "milliseconds", "s": "seconds"}[unit]
            return f"{name} ({_as_date(scaled)} as {unit})"
    return "a unit coarser than seconds, or not a timestamp"


def convert(
    path: Path, chunk: Chunk, options: Options
) -> tuple[pd.DataFrame, list[Bad], np.ndarray]:
    """The good rows of a chunk as a frame of stored dtypes, the bad ones, and the 1-based
    line of each good row."""
    table, lines = chunk.table, chunk.lines
    n = table.num_rows
    bad = list(chunk.bad)
    if n == 0:
        if table.num_columns:
            _columns(path, table.column_names, options)  # a header alone is checked too
        return pd.DataFrame(), bad, np.zeros(0, dtype=np.int64)
    mapping = _columns(path, table.column_names, options)
    present = {new: old for old, new in mapping.items()}
    blank = _blank_rows(table)
    problems = _Problems(n)
    columns: dict[str, pd.Series] = {}
    for name in INPUT_COLUMNS:
        if name in present:
            column = table.column(present[name])
        elif name in options.defaults:
            column = pa.chunked_array([pa.array([options.defaults[name]] * n, pa.string())])
        elif name == "timestamp":
            raise AssertionError("checked by _columns")
        else:
            zero = ZERO_VALUES[name]
            dtype: Any = _STR if isinstance(zero, str) else np.int64
            columns[name] = pd.Series(np.full(n, zero), dtype=dtype)
            continue
        if name in STRING_COLUMNS:
            columns[name] = _text_column(name, column, options, problems)
        elif name == "timestamp":
            columns[name] = _timestamp_column(path, column, lines, options, problems)
        else:
            columns[name] = _int_column(name, column, options, problems)
    frame = pd.DataFrame(columns, index=pd.RangeIndex(n), copy=False)
    if not passes_fast_checks(frame):
        _schema_problems(frame, problems)
    bad_mask = problems.mask() & ~blank
    if bad_mask.any():
        rows = table.filter(pa.array(bad_mask)).to_pylist()
        for i, row in zip(np.flatnonzero(bad_mask).tolist(), rows, strict=True):
            text = json.dumps(row, default=str, ensure_ascii=False)
            bad.append(Bad(str(path), int(lines[i]), problems.reasons[i], text))
    bad.sort(key=lambda b: b.line)
    keep = ~(problems.mask() | blank)
    if not keep.all():
        frame = frame.loc[keep].reset_index(drop=True)
        lines = lines[keep]
    for name in INT32_COLUMNS:
        frame[name] = frame[name].astype(np.int32)
    return frame, bad, lines


def _blank_rows(table: pa.Table) -> np.ndarray:
    """Rows of nothing but empty texts or nulls: blank lines of a text file."""
    blank = np.ones(table.num_rows, dtype=bool)
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            empty = pc.fill_null(pc.equal(column, ""), True)
        else:
            empty = column.is_null()
        blank &= empty.to_numpy(zero_copy_only=False)
        if not blank.any():
            break
    return blank


def _schema_problems(frame: pd.DataFrame, problems: _Problems) -> None:
    """Add the rows the usage schema refuses (range checks and the like) to ``problems``."""
    try:
        INPUT_SCHEMA.validate(widened_for_checks(frame), lazy=True)
    except pandera.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        for column, check, value, index in cases[
            ["column", "check", "failure_case", "index"]
        ].itertuples(index=False):
            if pd.isna(index):
                continue
            problems.reasons.setdefault(int(index), []).append(
                f"column {column!r}: {value!r} fails {check}"
            )


def joined(chunks: list[Chunk]) -> Chunk:
    """One chunk of the rows of ``chunks``, in order."""
    if len(chunks) == 1:
        return chunks[0]
    tables = [c.table for c in chunks if c.table.num_rows]
    if not tables:
        table = chunks[0].table
    else:
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # types differ (JSON; a CSV read again)
            texts = [t.cast(pa.schema([(n, pa.string()) for n in t.column_names])) for t in tables]
            table = pa.concat_tables(texts, promote_options="permissive")
    lines = np.concatenate([c.lines for c in chunks])
    return Chunk(table, lines, [b for c in chunks for b in c.bad])


def empty() -> pd.DataFrame:
    columns = {
        c: pd.Series([], dtype=_STR if c in STRING_COLUMNS else np.int64) for c in INPUT_COLUMNS
    }
    frame = pd.DataFrame(columns)
    for c in INT32_COLUMNS:
        frame[c] = frame[c].astype(np.int32)
    return frame
