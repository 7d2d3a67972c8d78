"""Turning what callers pass to ``create_usage`` into a validated frame of stored dtypes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
import pandera.errors

from .errors import InvalidArgumentError, ValidationError
from .records import Usage
from .schema import (
    COLUMNS,
    INPUT_COLUMNS,
    INPUT_SCHEMA,
    INT32_COLUMNS,
    STRING_COLUMNS,
    ZERO_VALUES,
)

if TYPE_CHECKING:
    from .reports.spec import Filter

__all__ = ["TIME_END", "prepare_batch", "scan_args", "to_bound", "to_ns", "to_window"]

_STORE_SET = ("id", "created_at")
_USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))
_INT64_MAX = np.iinfo(np.int64).max
_EXAMPLES = 5
_NS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


_S: Final = 10**9
#: Age units: seconds, minutes, hours, days, weeks.
_UNITS: Final = {
    "s": _S,
    "m": 60 * _S,
    "min": 60 * _S,
    "h": 3600 * _S,
    "d": 86_400 * _S,
    "w": 7 * 86_400 * _S,
}
_AGE: Final = re.compile(r"\s*(\d+)\s*(s|min|m|h|d|w)\s*")


def age_ns(text: str) -> int | None:
    """An age such as ``30d`` in ns, or None when ``text`` is not one.

    Example:
        >>> age_ns("720h") == age_ns("30d") == 30 * 86_400 * 10**9
        True
    """
    match = _AGE.fullmatch(text)
    if match is None:
        return None
    return int(match[1]) * _UNITS[match[2]]


def to_ns(value: object, what: str) -> int:
    """A time bound as int nanoseconds since the Unix epoch, UTC (naive values are UTC).

    Example:
        >>> to_ns("2021-01-07", "start")
        1609977600000000000
    """
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be a time, not a bool ({value!r})")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, str | dt.date | np.datetime64 | pd.Timestamp):
        try:
            ts = pd.Timestamp(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidArgumentError(f"{what}: cannot read {value!r} as a time ({exc})") from exc
        if ts is pd.NaT:
            raise InvalidArgumentError(f"{what} is NaT; give a time")
        if ts.tzinfo is None:
            ts = ts.tz_localize("UTC")
        # In the Timestamp's own unit, then exact: far dates do not fit in int64 nanoseconds.
        return int(ts.asm8.view("i8")) * _NS_PER_UNIT[ts.unit]
    raise InvalidArgumentError(
        f"{what} must be int nanoseconds since the epoch, a datetime, a pd.Timestamp or an ISO "
        f"string such as '2026-11-01', not {type(value).__name__} ({value!r})"
    )


#: Every stored timestamp t has 0 <= t < TIME_END (int64 nanoseconds, never negative).
TIME_END: Final = 2**63


def to_bound(value: object, what: str) -> int:
    """A time bound (see :func:`to_ns`) clamped into ``[0, TIME_END]``: a bound before every
    possible timestamp acts as 0 and one after all of them as ``TIME_END``, so that windows of
    any width select the same rows as the widest one that still means something.

    Example:
        >>> to_bound(-2**80, "start"), to_bound(2**80, "end") == TIME_END
        (0, True)
    """
    return min(max(to_ns(value, what), 0), TIME_END)


def to_window(start: object, end: object) -> tuple[int, int]:
    """``start <= timestamp < end`` as clamped int bounds ``(lo, hi)``; ``lo == hi`` selects no
    row. The time filter of the window is ``lo <= timestamp <= hi - 1``, whose bounds both fit
    in int64 whenever ``lo < hi``.

    Raises:
        InvalidArgumentError: a bound is not a time, or ``end`` is before ``start``.
    """
    lo, hi = to_ns(start, "start"), to_ns(end, "end")
    if hi < lo:
        raise InvalidArgumentError(f"end ({end!r}) is before start ({start!r})")
    return min(max(lo, 0), TIME_END), min(max(hi, 0), TIME_END)


def _rows_to_frame(items: Iterable[Any]) -> pd.DataFrame:
    rows: list[Mapping[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, Usage):
            rows.append({name: getattr(item, name) for name in _USAGE_FIELDS})
        elif isinstance(item, Mapping):
            rows.append(item)
        else:
            raise InvalidArgumentError(
                "create_usage takes Usage objects, mappings with the same keys, or one "
                f"DataFrame; item {i} is a {type(item).__name__}"
            )
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    columns = {}
    for name in names:
        values = np.empty(len(rows), dtype=object)
        zero = ZERO_VALUES.get(name)
        values[:] = [row.get(name, zero) for row in rows]
        columns[name] = pd.Series(values, dtype=object)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(rows)))


def _to_frame(usages: tuple[Any, ...]) -> pd.DataFrame:
    if len(usages) == 1 and isinstance(usages[0], pd.DataFrame):
        df = usages[0]
        if df.columns.has_duplicates:
            dupes = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
            raise InvalidArgumentError(f"the frame has duplicate columns: {dupes}")
        return df.reset_index(drop=True)
    if any(isinstance(u, pd.DataFrame) for u in usages):
        raise InvalidArgumentError("pass one DataFrame on its own, not mixed with other items")
    if len(usages) == 1 and isinstance(usages[0], list | tuple):
        usages = tuple(usages[0])
    if not usages:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in INPUT_COLUMNS})
    return _rows_to_frame(usages)


def _coerce_string(s: pd.Series) -> pd.Series:
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(object)
    if isinstance(s.dtype, pd.StringDtype):
        return s if s.dtype == "str" else s.astype("str")
    if _inferred(s) in ("string", "empty"):
        try:
            return s.astype("str")
        except UnicodeEncodeError:
            return s  # the utf8_string check names the values
    return s


def _datetimes_to_ns(s: pd.Series) -> pd.Series:
    if s.isna().any():
        return s
    try:
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            s = s.dt.tz_convert("UTC")
        elif s.dtype == object:
            s = pd.to_datetime(s, utc=True)
        else:
            s = s.dt.tz_localize("UTC")
        return s.dt.as_unit("ns").astype(np.int64)
    except (ValueError, TypeError, OverflowError):
        return s


def _iso_to_ns(s: pd.Series) -> pd.Series:
    """ISO 8601 texts (``2026-11-02T10:00:00Z``, with an offset, or naive: UTC) as int ns."""
    try:
        parsed = pd.to_datetime(s, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        return s  # validation names the values
    if parsed.isna().any():
        return s
    return parsed.dt.as_unit("ns").astype(np.int64)


def _mixed_to_ns(s: pd.Series) -> pd.Series:
    """Int nanoseconds and datetimes mixed in one object column, each converted on its own."""
    out = np.empty(len(s), dtype=np.int64)
    for i, value in enumerate(s.tolist()):
        if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
            if not -(2**63) <= int(value) < 2**63:
                return s
            out[i] = int(value)
        elif isinstance(value, dt.date | np.datetime64) and not pd.isna(value):
            try:
                ns = to_ns(value, "timestamp")
            except InvalidArgumentError:
                return s
            if not -(2**63) <= ns < 2**63:
                return s
            out[i] = ns
        else:
            return s
    return pd.Series(out, index=s.index, name=s.name)


def _inferred(s: pd.Series) -> str:
    """pandas' guess of what an object column holds ("" for other dtypes)."""
    if not pd.api.types.is_object_dtype(s.dtype):
        return ""
    return str(pd.api.types.infer_dtype(s, skipna=False))


def _coerce_int(s: pd.Series, name: str) -> pd.Series:
    dtype = s.dtype
    if name == "timestamp":
        if pd.api.types.is_datetime64_any_dtype(dtype):
            return _datetimes_to_ns(s)
        inferred = _inferred(s)
        if inferred in ("datetime", "datetime64", "date"):
            return _datetimes_to_ns(s)
        if inferred == "string":
            return _iso_to_ns(s)
        if inferred.startswith("mixed"):
            return _mixed_to_ns(s)
    if pd.api.types.is_bool_dtype(dtype):
        return s
    if isinstance(dtype, pd.CategoricalDtype):
        s = s.astype(object)
        dtype = s.dtype
    if pd.api.types.is_integer_dtype(dtype):
        if dtype == _INT32 and name in INT32_COLUMNS:
            return s  # already the stored dtype (Pandera sees it as int64, see prepare_batch)
        if s.isna().any():
            return s
        if pd.api.types.is_unsigned_integer_dtype(dtype) and len(s) and s.max() > _INT64_MAX:
            return s
        return s.astype(np.int64)
    if pd.api.types.is_float_dtype(dtype):
        values = s.to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isfinite(values).all() and (values == np.trunc(values)).all()
        if ok and (len(values) == 0 or np.abs(values).max() < 2.0**63):
            return pd.Series(values.astype(np.int64), index=s.index, name=s.name)
        return s
    if _inferred(s) in ("integer", "empty"):
        try:
            return s.astype(np.int64)
        except (OverflowError, ValueError, TypeError):
            return s
    return s


def _describe(failure_cases: pd.DataFrame) -> str:
    lines = []
    grouped = failure_cases.groupby(["column", "check"], sort=False, dropna=False)
    for (column, check), cases in grouped:
        values = [repr(v) for v in cases["failure_case"].tolist()[:_EXAMPLES]]
        rows = [int(i) for i in cases["index"].tolist() if pd.notna(i)][:_EXAMPLES]
        if check == "column_in_schema":
            names = ", ".join(repr(c) for c in cases["failure_case"])
            lines.append(f"unknown column(s) {names}: not in UsageSchema; drop or rename them")
            continue
        if check == "column_in_dataframe":
            names = ", ".join(repr(c) for c in cases["failure_case"])
            lines.append(f"missing required column(s) {names}")
            continue
        more = f" and {len(cases) - _EXAMPLES} more" if len(cases) > _EXAMPLES else ""
        where = f" at rows {rows}" if rows else ""
        shown = f"; values {', '.join(values)}{more}" if values else ""
        lines.append(f"column {column!r}: check {check!r} failed{where}{shown}")
    return "\n".join(f"  - {line}" for line in lines)


_INT64 = np.dtype(np.int64)
_INT32 = np.dtype(np.int32)
_STR = pd.StringDtype(storage="pyarrow", na_value=np.nan)


def _bounds(column: Any) -> tuple[int, int] | None:
    """The value bounds of an integer column's checks; None when a check is not a bound."""
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    for check in column.checks:
        stats = check.statistics
        if check.name == "greater_than_or_equal_to":
            lo = max(lo, int(stats["min_value"]))
        elif check.name == "less_than_or_equal_to":
            hi = min(hi, int(stats["max_value"]))
        else:
            return None
    return lo, hi


def _fast_plan() -> dict[str, tuple[int, int] | None]:
    """What the fast path checks per column, read off the Pandera input schema itself.

    String columns need the text dtype and no nulls (their UTF-8 check always holds for that
    dtype); integer columns need int64 and the bounds of their checks. A column with any other
    kind of check is left to Pandera.
    """
    plan: dict[str, tuple[int, int] | None] = {}
    for name, column in INPUT_SCHEMA.columns.items():
        if name in STRING_COLUMNS:
            known = all(c.name == "utf8_string" for c in column.checks)
            plan[name] = (0, 0) if known else None
        else:
            plan[name] = _bounds(column)
    return plan


_FAST_PLAN = _fast_plan()


def passes_fast_checks(frame: pd.DataFrame) -> bool:
    """True when ``frame`` certainly passes the input schema, decided with plain vector ops.

    A False answer decides nothing: Pandera then validates the batch and reports every
    problem. The fast path only spares Pandera's per-column overhead for clean batches.
    """
    if list(frame.columns) != list(INPUT_COLUMNS):
        return False
    for name, bounds in _FAST_PLAN.items():
        if bounds is None:
            return False
        values = frame[name]
        if name in STRING_COLUMNS:
            if values.dtype != _STR or values.isna().any():
                return False
            continue
        if values.dtype != _INT64 and not (values.dtype == _INT32 and name in INT32_COLUMNS):
            return False
        if len(values):
            array = values.to_numpy()
            if array.min() < bounds[0] or array.max() > bounds[1]:
                return False
    return True


def normalize_batch(usages: tuple[Any, ...]) -> pd.DataFrame:
    """The batch as one frame, each column converted to its checked dtype where that is exact
    (values that cannot be converted are left as they are, for validation to name)."""
    df = _to_frame(usages)
    df = df.drop(columns=[c for c in _STORE_SET if c in df.columns])
    columns: dict[str, pd.Series] = {}
    for name in df.columns:
        s = df[name]
        if name in STRING_COLUMNS:
            s = _coerce_string(s)
        elif name in INT32_COLUMNS or name == "timestamp":
            s = _coerce_int(s, name)
        columns[str(name)] = s
    for name in INPUT_COLUMNS:
        if name not in columns and name != "timestamp":
            zero = ZERO_VALUES[name]
            dtype: Any = "str" if isinstance(zero, str) else np.int64
            columns[name] = pd.Series(np.full(len(df), zero, dtype=object), dtype=dtype)
    order = [c for c in INPUT_COLUMNS if c in columns] + [
        c for c in columns if c not in INPUT_COLUMNS
    ]
    return pd.DataFrame({c: columns[c] for c in order}, index=pd.RangeIndex(len(df)), copy=False)


def widened_for_checks(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its int32 columns as int64, as the input schema checks integers (so that
    it can name values past the int32 range)."""
    widened = {c: np.int64 for c in INT32_COLUMNS if c in frame and frame[c].dtype == _INT32}
    return frame.astype(widened) if widened else frame


def prepare_batch(usages: tuple[Any, ...]) -> pd.DataFrame:
    """Validate a batch as a whole and return it with the stored dtypes and a RangeIndex.

    Raises:
        ValidationError: anything in the batch breaks the schema; every problem is listed.
        InvalidArgumentError: the arguments are not Usage objects, mappings or one DataFrame.
    """
    frame = normalize_batch(usages)
    try:
        if not passes_fast_checks(frame):
            INPUT_SCHEMA.validate(widened_for_checks(frame), lazy=True)
    except pandera.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        raise ValidationError(
            f"{len(cases)} problem(s) in the batch of {len(frame)} rows; nothing was written:\n"
            + _describe(cases),
            cases,
        ) from None
    except pandera.errors.SchemaError as exc:  # pragma: no cover - lazy mode collects all
        raise ValidationError(str(exc), pd.DataFrame()) from None
    for name in INT32_COLUMNS:
        if frame[name].dtype != _INT32:
            frame[name] = frame[name].astype(np.int32)
    return frame


def scan_args(
    tenant_id: object, start: object, end: object, columns: object, where: object
) -> tuple[str | None, int, int, list[str], tuple[Filter, ...]]:
    """The arguments of ``Store.scan``, checked: tenant, window, columns, filters."""
    if tenant_id is not None and not isinstance(tenant_id, str):
        raise InvalidArgumentError(
            f"tenant_id must be a str, or None for every tenant, not {tenant_id!r}"
        )
    lo, hi = to_window(0 if start is None else start, TIME_END if end is None else end)
    if columns is None:
        names = list(COLUMNS)
    elif isinstance(columns, str) or not isinstance(columns, Sequence):
        raise InvalidArgumentError(
            f"columns must be a list of column names, not {columns!r}; e.g. "
            "['timestamp', 'model_id', 'latency_ms']"
        )
    else:
        names = list(columns)
        unknown = [c for c in names if c not in COLUMNS]
        if unknown:
            raise InvalidArgumentError(
                f"unknown column(s) {unknown}; the columns are {', '.join(COLUMNS)}"
            )
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"columns repeat a name: {names}")
        if not names:
            raise InvalidArgumentError("columns is empty: give at least one column, or None")
    from .reports.spec import parse_where  # the report engine imports this module

    return tenant_id, lo, hi, names, parse_where(where)
