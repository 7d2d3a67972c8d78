"""Deterministic generator of synthetic API / LLM usage records.

The generator produces realistic-looking request logs for an OpenAI-compatible API gateway:
skewed (Zipf-like) traffic across tenants, users that belong to exactly one tenant,
organization and project, a few API keys per user, OpenAI-style endpoints with
``/v1/chat/completions`` dominating, long-tailed (lognormal) token counts and latencies,
a small share of 4xx/5xx errors and a daily/weekly traffic cycle in UTC.

Everything is derived from a single integer seed, so the same arguments always give the
same frame. The module is pure: it performs no I/O and depends only on numpy and pandas.

Rows are produced in fixed-size blocks whose content does not depend on the requested
batch size, which keeps memory bounded when consuming :func:`iter_batches` and guarantees
that concatenating the batches yields exactly :func:`generate`'s output.

Example:
    >>> from usage_analytics.synthetic import COLUMNS, generate
    >>> df = generate(1_000, days=2, seed=7)
    >>> list(df.columns) == COLUMNS
    True
    >>> len(df)
    1000
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

from ._population import (
    N_KINDS,
    NONE,
    TEXT,
    Catalog,
    Profile,
    build_catalog,
    cumulative,
    draw,
    normalized,
    random_stream,
)
from .errors import InvalidArgumentError
from .schema import INPUT_COLUMNS, INT32_COLUMNS, NS_PER_DAY, STRING_COLUMNS

__all__ = ["COLUMNS", "Profile", "StartLike", "generate", "iter_batches"]

StartLike: TypeAlias = str | date | datetime | pd.Timestamp

#: The generated columns: every input column of the schema, in its order.
COLUMNS: Final[list[str]] = list(INPUT_COLUMNS)
_STR_COLUMNS: Final = STRING_COLUMNS
_INT32_COLUMNS: Final = INT32_COLUMNS

_SLICES_PER_DAY: Final[int] = 144
_SLICE_NS: Final[int] = NS_PER_DAY // _SLICES_PER_DAY
_BLOCK_ROWS: Final[int] = 65_536
_INT64_MAX: Final[int] = int(np.iinfo(np.int64).max)

_COUNTS_STREAM: Final[int] = 1
_BLOCK_STREAM: Final[int] = 2

# Per-kind token distributions (lognormal mu/sigma of the count, upper clip) and streaming flag,
# indexed by kind code.
_HAS_PROMPT = np.array([False, True, True, True, False, True, True])
_PROMPT_MU = np.array([0.0, 6.3, 5.0, 4.6, 0.0, 4.2, 3.6])
_PROMPT_SIGMA = np.array([0.0, 1.1, 1.3, 1.0, 0.0, 0.8, 0.5])
_PROMPT_MAX = np.array([0, 128_000, 8_191, 32_768, 0, 4_096, 4_000], dtype=np.int64)
_HAS_COMPLETION = np.array([False, True, False, False, True, False, False])
_COMPLETION_MU = np.array([0.0, 5.2, 0.0, 0.0, 5.6, 0.0, 0.0])
_COMPLETION_SIGMA = np.array([0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
_COMPLETION_MAX = np.array([0, 16_384, 0, 0, 8_192, 0, 0], dtype=np.int64)
_STREAMING = np.array([False, True, False, False, False, False, False])

_ERROR_STATUSES = np.array([400, 401, 404, 429, 500, 503], dtype=np.int64)
_ERROR_STATUS_WEIGHTS = np.array([0.22, 0.08, 0.07, 0.38, 0.15, 0.10])
_REJECTED_STATUSES: Final[tuple[int, ...]] = (401, 404, 429)
_FIRST_SERVER_ERROR: Final[int] = 500

_SATURDAY: Final[int] = 5
_PREFERRED_MODEL_SHARE: Final[float] = 0.6
_MAX_COMPONENT_MS: Final[int] = 300_000


@dataclass(frozen=True)
class _Plan:
    """Everything needed to produce the rows of one call, block by block."""

    n_rows: int
    start_ns: int
    seed: int
    catalog: Catalog
    slice_ends: npt.NDArray[np.int64]


def _slice_ends(n_rows: int, start_ns: int, days: int, seed: int) -> npt.NDArray[np.int64]:
    """Cumulative row counts per 10-minute slice, following the daily and weekly cycle."""
    rng = random_stream(seed, _COUNTS_STREAM)
    n_slices = days * _SLICES_PER_DAY
    slice_idx = np.arange(n_slices)
    hour = (slice_idx % _SLICES_PER_DAY + 0.5) * (24.0 / _SLICES_PER_DAY)
    epoch_day = start_ns // NS_PER_DAY + slice_idx // _SLICES_PER_DAY
    weekday = (epoch_day + 3) % 7
    intensity = 1.0 + 0.65 * np.cos(2.0 * np.pi * (hour - 15.0) / 24.0)
    intensity *= np.where(weekday >= _SATURDAY, 0.55, 1.0)
    intensity *= np.repeat(rng.lognormal(0.0, 0.08, size=days), _SLICES_PER_DAY)
    counts = rng.multinomial(n_rows, normalized(intensity))
    return np.cumsum(counts, dtype=np.int64)


def _to_int(values: npt.NDArray[np.float64], upper: int) -> npt.NDArray[np.int64]:
    return np.clip(np.rint(values), 0, upper).astype(np.int64)


def _timestamps(
    plan: _Plan, r0: int, r1: int, prev_ts: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Strictly increasing timestamps of rows ``[r0, r1)``, all greater than ``prev_ts``."""
    n = r1 - r0
    slice_of_row = np.searchsorted(plan.slice_ends, np.arange(r0, r1), side="right")
    ts = plan.start_ns + slice_of_row.astype(np.int64) * _SLICE_NS
    ts += rng.integers(0, _SLICE_NS, size=n, dtype=np.int64)
    ts.sort()
    pos = np.arange(n, dtype=np.int64)
    return np.maximum(np.maximum.accumulate(ts - pos), prev_ts + 1) + pos


def _pick_models(
    cat: Catalog,
    kind: npt.NDArray[np.int64],
    user: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """Model index per row; ``len(models)`` (the empty model id) for calls without a model."""
    n = len(kind)
    model = np.full(n, len(cat.model_names) - 1, dtype=np.int64)
    u_model = rng.random(n)
    for k in range(1, N_KINDS):
        mask = kind == k
        if mask.any():
            model[mask] = cat.kind_models[k][draw(cat.kind_model_cdfs[k], u_model[mask])]
    preferred = (kind == TEXT) & (rng.random(n) < _PREFERRED_MODEL_SHARE)
    model[preferred] = cat.user_model[user[preferred]]
    return model


def _token_counts(
    kind: npt.NDArray[np.int64],
    enabled: npt.NDArray[np.bool_],
    mu: npt.NDArray[np.float64],
    sigma: npt.NDArray[np.float64],
    upper: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """Lognormal token counts in ``[1, upper]`` for enabled kinds, 0 otherwise."""
    raw = np.rint(np.exp(mu[kind] + sigma[kind] * rng.standard_normal(len(kind))))
    return np.where(enabled[kind], np.clip(raw, 1, upper[kind]), 0).astype(np.int64)


@dataclass
class _Usage:
    """Per-row status, token and timing arrays of one block."""

    status: npt.NDArray[np.int64]
    prompt: npt.NDArray[np.int64]
    completion: npt.NDArray[np.int64]
    overhead: npt.NDArray[np.int64]
    latency: npt.NDArray[np.int64]
    ttft: npt.NDArray[np.int64]
    rt_latency: npt.NDArray[np.int64]
    rt_ttft: npt.NDArray[np.int64]


def _successful_usage(
    cat: Catalog,
    kind: npt.NDArray[np.int64],
    model: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> _Usage:
    """Tokens and timings assuming every request succeeds.

    The gateway adds an overhead on top of the model runtime, so runtime values never exceed
    the totals; streaming calls emit their first token strictly before completing.
    """
    n = len(kind)
    prompt = _token_counts(kind, _HAS_PROMPT, _PROMPT_MU, _PROMPT_SIGMA, _PROMPT_MAX, rng)
    completion = _token_counts(
        kind, _HAS_COMPLETION, _COMPLETION_MU, _COMPLETION_SIGMA, _COMPLETION_MAX, rng
    )
    overhead = _to_int(rng.lognormal(np.log(6.0), 0.45, size=n), 5_000)
    base = cat.model_base_ms[model] * rng.lognormal(0.0, 0.35, size=n)
    prefill = prompt * cat.model_prefill_ms[model] / 1_000.0
    decode = completion * cat.model_decode_ms[model] * rng.lognormal(0.0, 0.2, size=n)
    gateway_only = _to_int(rng.lognormal(np.log(20.0), 0.8, size=n), 60_000)

    streaming = _STREAMING[kind]
    has_model = kind != NONE
    first_token = np.maximum(_to_int(base + prefill, _MAX_COMPONENT_MS), 1)
    rt_ttft = np.where(streaming, first_token, 0).astype(np.int64)
    rt_decode = np.maximum(_to_int(decode, _MAX_COMPONENT_MS), 1)
    whole = np.maximum(_to_int(base + prefill + decode, 2 * _MAX_COMPONENT_MS), 1)
    rt_latency = np.where(streaming, rt_ttft + rt_decode, whole)
    rt_latency = np.where(has_model, rt_latency, 0).astype(np.int64)
    return _Usage(
        status=np.full(n, 200, dtype=np.int64),
        prompt=prompt,
        completion=completion,
        overhead=overhead,
        latency=overhead + np.where(has_model, rt_latency, gateway_only),
        ttft=np.where(streaming, overhead + rt_ttft, 0).astype(np.int64),
        rt_latency=rt_latency,
        rt_ttft=rt_ttft,
    )


def _apply_errors(
    usage: _Usage,
    kind: npt.NDArray[np.int64],
    error_rate: float,
    rng: np.random.Generator,
) -> None:
    """Turn a share of rows into fast 4xx/5xx failures without completion tokens."""
    is_error = rng.random(len(kind)) < error_rate
    rows = np.flatnonzero(is_error)
    if len(rows) == 0:
        return
    status = _ERROR_STATUSES[draw(cumulative(_ERROR_STATUS_WEIGHTS), rng.random(len(rows)))]
    server_error = status >= _FIRST_SERVER_ERROR
    handling = np.where(
        server_error,
        _to_int(rng.lognormal(np.log(40.0), 0.9, size=len(rows)), 30_000),
        _to_int(rng.lognormal(np.log(4.0), 0.6, size=len(rows)), 5_000),
    )
    usage.status[rows] = status
    usage.latency[rows] = usage.overhead[rows] + handling
    usage.rt_latency[rows] = np.where(server_error & (kind[rows] != NONE), handling, 0)
    usage.ttft[rows] = 0
    usage.rt_ttft[rows] = 0
    usage.completion[rows] = 0
    usage.prompt[rows[np.isin(status, _REJECTED_STATUSES)]] = 0


def _block(plan: _Plan, block: int, prev_ts: int) -> pd.DataFrame:
    """Rows ``[block * _BLOCK_ROWS, ...)`` of the output; ``prev_ts`` is the previous timestamp."""
    cat = plan.catalog
    r0 = block * _BLOCK_ROWS
    r1 = min(r0 + _BLOCK_ROWS, plan.n_rows)
    n = r1 - r0
    rng = random_stream(plan.seed, _BLOCK_STREAM, block)

    ts = _timestamps(plan, r0, r1, prev_ts, rng)
    user = draw(cat.user_cdf, rng.random(n))
    key_offset = (rng.random(n) * cat.user_key_count[user]).astype(np.int64)
    key = cat.keys_by_user[cat.user_key_start[user] + key_offset]
    method = draw(cat.method_cdf, rng.random(n))
    kind = cat.method_kind[method]
    model = _pick_models(cat, kind, user, rng)
    usage = _successful_usage(cat, kind, model, rng)
    _apply_errors(usage, kind, cat.error_rate, rng)

    data: dict[str, object] = {
        "user_id": cat.user_names.take(user),
        "tenant": cat.tenant_names.take(cat.user_tenant[user]),
        "organization": cat.org_names.take(cat.user_org[user]),
        "project": cat.project_names.take(cat.user_project[user]),
        "api_key_id": cat.key_names.take(key),
        "api_method": cat.method_names.take(method),
        "status_code": usage.status,
        "timestamp": ts,
        "latency_ms": usage.latency,
        "model_id": cat.model_names.take(model),
        "time_to_first_token_ms": usage.ttft,
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "runtime_latency_ms": usage.rt_latency,
        "runtime_time_to_first_token_ms": usage.rt_ttft,
    }
    return _frame(data, pd.RangeIndex(r0, r1))


def _frame(data: dict[str, object], index: pd.RangeIndex) -> pd.DataFrame:
    columns: dict[str, object] = {}
    for name in COLUMNS:
        values = data[name]
        if name in _STR_COLUMNS:
            columns[name] = pd.array(values, dtype="str")
        elif name in _INT32_COLUMNS:
            columns[name] = np.asarray(values).astype(np.int32)
        else:
            columns[name] = np.asarray(values).astype(np.int64)
    return pd.DataFrame(columns, index=index, columns=COLUMNS)


def _empty_frame() -> pd.DataFrame:
    data: dict[str, object] = {
        name: ([] if name in _STR_COLUMNS else np.empty(0, dtype=np.int64)) for name in COLUMNS
    }
    return _frame(data, pd.RangeIndex(0, 0))


def _start_ns(start: StartLike) -> int:
    message = f"start must be an ISO date string, datetime or pd.Timestamp, got {start!r}"
    try:
        ts = pd.Timestamp(start)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(message) from exc
    if pd.isna(ts):
        raise InvalidArgumentError(message)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    try:
        return int(ts.normalize().as_unit("ns").value)
    except (OverflowError, ValueError) as exc:
        raise InvalidArgumentError(
            f"start is outside the range of nanosecond timestamps: {start!r}"
        ) from exc


def _index(value: object, name: str) -> int:
    """``value`` as an int (any integer type, not a bool or a float)."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be an int, not {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgumentError(
            f"{name} must be an int, not {type(value).__name__} ({value!r})"
        ) from None


def _make_plan(
    n_rows: int, start: StartLike, days: int, seed: int, profile: Profile | None
) -> _Plan:
    n_rows = _index(n_rows, "n_rows")
    days = _index(days, "days")
    seed = _index(seed, "seed")
    if n_rows < 0:
        raise InvalidArgumentError(f"n_rows must be >= 0, got {n_rows}")
    if days < 1:
        raise InvalidArgumentError(f"days must be >= 1, got {days}")
    if seed < 0:
        raise InvalidArgumentError(f"seed must be >= 0, got {seed}")
    start_ns = _start_ns(start)
    if start_ns < 0:
        raise InvalidArgumentError(f"start must not be before 1970-01-01, got {start!r}")
    if start_ns + days * NS_PER_DAY > _INT64_MAX:
        raise InvalidArgumentError("start + days exceeds the range of nanosecond timestamps")
    profile = Profile() if profile is None else profile
    return _Plan(
        n_rows=n_rows,
        start_ns=start_ns,
        seed=seed,
        catalog=build_catalog(profile, seed),
        slice_ends=_slice_ends(n_rows, start_ns, days, seed),
    )


def _iter_blocks(plan: _Plan) -> Iterator[pd.DataFrame]:
    prev_ts = plan.start_ns - 1
    n_blocks = -(-plan.n_rows // _BLOCK_ROWS)
    for block in range(n_blocks):
        frame = _block(plan, block, prev_ts)
        prev_ts = int(frame["timestamp"].iloc[-1])
        yield frame


def _rebatch(blocks: Iterator[pd.DataFrame], batch_size: int) -> Iterator[pd.DataFrame]:
    pending: list[pd.DataFrame] = []
    pending_rows = 0
    for block in blocks:
        pending.append(block)
        pending_rows += len(block)
        if pending_rows < batch_size:
            continue
        buffer = pending[0] if len(pending) == 1 else pd.concat(pending)
        n_full = pending_rows - pending_rows % batch_size
        for offset in range(0, n_full, batch_size):
            yield buffer.iloc[offset : offset + batch_size]
        rest = buffer.iloc[n_full:]
        pending = [rest] if len(rest) else []
        pending_rows = len(rest)
    if pending_rows:
        yield pending[0] if len(pending) == 1 else pd.concat(pending)


def iter_batches(
    n_rows: int,
    *,
    batch_size: int = 100_000,
    start: StartLike = "2026-11-01",
    days: int = 14,
    seed: int = 0,
    profile: Profile | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield the rows of :func:`generate` as consecutive chronological batches.

    Every batch holds ``batch_size`` rows except possibly the last one, and carries the
    global row positions as its index, so ``pd.concat(list(iter_batches(...)))`` equals
    ``generate(...)`` called with the same arguments. The content does not depend on
    ``batch_size``, and memory use is bounded by the batch size rather than ``n_rows``.
    Arguments are validated immediately, before the first batch is requested.

    Args:
        n_rows: Total number of rows over all batches (>= 0).
        batch_size: Maximum number of rows per batch (>= 1).
        start: First day of the time range, as an ISO date string, ``datetime`` or
            ``pd.Timestamp``; naive values are taken as UTC and the time of day is ignored.
        days: Number of whole UTC days covered, starting at ``start``'s midnight (>= 1).
        seed: Non-negative seed; equal arguments always produce equal data.
        profile: Population knobs; ``Profile()`` when ``None``.

    Returns:
        An iterator of DataFrames with columns :data:`COLUMNS`.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> sizes = [len(b) for b in iter_batches(2_500, batch_size=1_000, days=1)]
        >>> sizes
        [1000, 1000, 500]
    """
    batch_size = operator.index(batch_size)
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
    plan = _make_plan(n_rows, start, days, seed, profile)
    return _rebatch(_iter_blocks(plan), batch_size)


def generate(
    n_rows: int,
    *,
    start: StartLike = "2026-11-01",
    days: int = 14,
    seed: int = 0,
    profile: Profile | None = None,
) -> pd.DataFrame:
    """Generate ``n_rows`` synthetic usage records in chronological order.

    Timestamps are nanoseconds since the Unix epoch (UTC), strictly increasing and within
    ``[start, start + days)``, so ``(user_id, timestamp)`` is unique.

    Args:
        n_rows: Number of rows (>= 0).
        start: First day of the time range, as an ISO date string, ``datetime`` or
            ``pd.Timestamp``; naive values are taken as UTC and the time of day is ignored.
        days: Number of whole UTC days covered, starting at ``start``'s midnight (>= 1).
        seed: Non-negative seed; equal arguments always produce equal data.
        profile: Population knobs; ``Profile()`` when ``None``.

    Returns:
        A DataFrame with columns :data:`COLUMNS` and a ``RangeIndex``.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> df = generate(500, start="2026-11-01", days=1, seed=1)
        >>> len(df), bool(df["timestamp"].is_monotonic_increasing)
        (500, True)
        >>> str(df["prompt_tokens"].dtype)
        'int32'
    """
    plan = _make_plan(n_rows, start, days, seed, profile)
    blocks = list(_iter_blocks(plan))
    if not blocks:
        return _empty_frame()
    return blocks[0] if len(blocks) == 1 else pd.concat(blocks)
