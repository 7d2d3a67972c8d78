"""The usage schema: column order, dtypes, zero values and the Pandera models that enforce them.

Two versions of the stored schema exist. Version 1 holds the fifteen columns of the source
system; version 2 adds ``runtime_latency_ms`` and ``runtime_time_to_first_token_ms``. Files
written under version 1 lack those two columns and read back with zeros in them.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_
from pandera.typing import Series

__all__ = [
    "COLUMNS",
    "INPUT_COLUMNS",
    "INT32_COLUMNS",
    "KEY_COLUMNS",
    "NS_PER_DAY",
    "SCHEMA_VERSION",
    "STRING_COLUMNS",
    "ZERO_VALUES",
    "UsageSchema",
    "arrow_schema",
    "columns_for_version",
]

SCHEMA_VERSION: Final = 2
#: Nanoseconds in a day: ``timestamp // NS_PER_DAY`` is a row's UTC day since the epoch.
NS_PER_DAY: Final = 86_400 * 1_000_000_000
INT32_MAX: Final = int(np.iinfo(np.int32).max)

STRING_COLUMNS: Final = (
    "user_id",
    "tenant",
    "organization",
    "project",
    "api_key_id",
    "api_method",
    "model_id",
)
INT32_COLUMNS: Final = (
    "status_code",
    "latency_ms",
    "time_to_first_token_ms",
    "prompt_tokens",
    "completion_tokens",
    "runtime_latency_ms",
    "runtime_time_to_first_token_ms",
)
#: Columns of every stored row, in order (schema version 2).
COLUMNS: Final = (
    "id",
    "created_at",
    "user_id",
    "tenant",
    "organization",
    "project",
    "api_key_id",
    "api_method",
    "status_code",
    "timestamp",
    "latency_ms",
    "model_id",
    "time_to_first_token_ms",
    "prompt_tokens",
    "completion_tokens",
    "runtime_latency_ms",
    "runtime_time_to_first_token_ms",
)
#: Columns a caller provides; ``id`` and ``created_at`` are set by the store.
INPUT_COLUMNS: Final = COLUMNS[2:]
#: The unique key of the source system's ``idx_user_ts`` index.
KEY_COLUMNS: Final = ("user_id", "timestamp")
#: Columns added by schema version 2, with the value rows written before read back with.
ADDED_IN_V2: Final = ("runtime_latency_ms", "runtime_time_to_first_token_ms")

ZERO_VALUES: Final[dict[str, Any]] = {
    **dict.fromkeys(STRING_COLUMNS, ""),
    **dict.fromkeys(INT32_COLUMNS, 0),
}

CREATED_AT_DTYPE: Final = pd.DatetimeTZDtype(unit="us", tz="UTC")


def columns_for_version(version: int) -> tuple[str, ...]:
    """The stored columns of schema ``version`` (1 or 2), in order."""
    if version == 1:
        return tuple(c for c in COLUMNS if c not in ADDED_IN_V2)
    if version == SCHEMA_VERSION:
        return COLUMNS
    raise ValueError(f"unknown schema version {version!r}")


def _utf8_strings(series: pd.Series) -> pd.Series | bool:
    """Every value is a ``str`` that UTF-8 can encode (no lone surrogates)."""
    if series.dtype == object:
        return series.map(_is_utf8_string).astype(bool)
    return True


def _is_utf8_string(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string_field() -> Any:
    return pa.Field(nullable=False)


def _int32_field(upper: int = INT32_MAX) -> Any:
    return pa.Field(ge=0, le=upper, nullable=False)


class UsageSchema(pa.DataFrameModel):
    """The stored usage rows, as :meth:`Store.find_usages` returns them.

    Example:
        >>> from usage_analytics import Store, UsageSchema
        >>> UsageSchema.validate(Store("data/sample").find_usages()).shape[1]
        17
    """

    id: Series[np.int64] = pa.Field(ge=0, unique=True, nullable=False)
    created_at: Series[pd.DatetimeTZDtype] = pa.Field(
        dtype_kwargs={"unit": "us", "tz": "UTC"}, nullable=False
    )
    user_id: Series[str] = _string_field()
    tenant: Series[str] = _string_field()
    organization: Series[str] = _string_field()
    project: Series[str] = _string_field()
    api_key_id: Series[str] = _string_field()
    api_method: Series[str] = _string_field()
    status_code: Series[np.int32] = _int32_field(999)
    timestamp: Series[np.int64] = pa.Field(ge=0, nullable=False)
    latency_ms: Series[np.int32] = _int32_field()
    model_id: Series[str] = _string_field()
    time_to_first_token_ms: Series[np.int32] = _int32_field()
    prompt_tokens: Series[np.int32] = _int32_field()
    completion_tokens: Series[np.int32] = _int32_field()
    runtime_latency_ms: Series[np.int32] = _int32_field()
    runtime_time_to_first_token_ms: Series[np.int32] = _int32_field()

    class Config:
        strict = True
        ordered = True
        coerce = False


def _input_schema() -> pa.DataFrameSchema:
    """The schema a caller's batch is checked against, before the store narrows it.

    Integers are checked as int64 so that a value past the int32 range is reported as such
    rather than wrapped; strings carry an extra check that names non-string values.
    """
    stored = UsageSchema.to_schema()
    columns: dict[str, pa.Column] = {}
    for name in INPUT_COLUMNS:
        checks = list(stored.columns[name].checks)
        if name in STRING_COLUMNS:
            dtype: Any = str
            checks.append(pa.Check(_utf8_strings, name="utf8_string", error="must be UTF-8 text"))
        else:
            dtype = np.int64
        columns[name] = pa.Column(dtype, checks=checks, nullable=False, name=name)
    return pa.DataFrameSchema(columns, strict=True, ordered=False, coerce=False, name="usage input")


INPUT_SCHEMA: Final = _input_schema()


def arrow_schema(version: int = SCHEMA_VERSION) -> pa_.Schema:
    """The Arrow schema of the data files of schema ``version``."""
    types: dict[str, pa_.DataType] = {
        "id": pa_.int64(),
        "created_at": pa_.timestamp("us", tz="UTC"),
        "timestamp": pa_.int64(),
        **dict.fromkeys(STRING_COLUMNS, pa_.string()),
        **dict.fromkeys(INT32_COLUMNS, pa_.int32()),
    }
    return pa_.schema(
        [pa_.field(name, types[name], nullable=False) for name in columns_for_version(version)]
    )
