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

_CATALOG_STREAM: Final[int] = 0
_COUNTS_STREAM: Final[int] = 1
_BLOCK_STREAM: Final[int] = 2

# Request kinds. A model's kind is the kind of request it serves.
_NONE: Final[int] = 0
_TEXT: Final[int] = 1
_EMBEDDING: Final[int] = 2
_MODERATION: Final[int] = 3
_TRANSCRIPTION: Final[int] = 4
_SPEECH: Final[int] = 5
_IMAGE: Final[int] = 6
_N_KINDS: Final[int] = 7

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

# (path, kind, relative weight); the first entries are the most common endpoints.
_METHODS: Final[tuple[tuple[str, int, float], ...]] = (
    ("/v1/chat/completions", _TEXT, 50.0),
    ("/v1/embeddings", _EMBEDDING, 18.0),
    ("/v1/completions", _TEXT, 8.0),
    ("/v1/responses", _TEXT, 6.0),
    ("/v1/moderations", _MODERATION, 3.0),
    ("/v1/models", _NONE, 3.0),
    ("/v1/files", _NONE, 1.5),
    ("/v1/audio/transcriptions", _TRANSCRIPTION, 1.2),
    ("/v1/images/generations", _IMAGE, 1.0),
    ("/v1/batches", _NONE, 0.8),
    ("/v1/fine_tuning/jobs", _NONE, 0.5),
    ("/v1/audio/speech", _SPEECH, 0.8),
    ("/v1/audio/translations", _TRANSCRIPTION, 0.3),
    ("/v1/images/edits", _IMAGE, 0.3),
    ("/v1/images/variations", _IMAGE, 0.1),
    ("/v1/models/{model}", _NONE, 0.8),
    ("/v1/files/{file_id}", _NONE, 0.5),
    ("/v1/files/{file_id}/content", _NONE, 0.4),
    ("/v1/batches/{batch_id}", _NONE, 0.6),
    ("/v1/batches/{batch_id}/cancel", _NONE, 0.05),
    ("/v1/fine_tuning/jobs/{fine_tuning_job_id}", _NONE, 0.3),
    ("/v1/fine_tuning/jobs/{fine_tuning_job_id}/events", _NONE, 0.2),
    ("/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel", _NONE, 0.03),
    ("/v1/uploads", _NONE, 0.2),
    ("/v1/vector_stores", _NONE, 0.3),
    ("/v1/vector_stores/{vector_store_id}/files", _NONE, 0.3),
    ("/v1/assistants", _NONE, 0.2),
    ("/v1/threads", _NONE, 0.3),
    ("/v1/threads/{thread_id}/runs", _NONE, 0.4),
    ("/v1/threads/{thread_id}/messages", _NONE, 0.4),
)
_EXTRA_METHOD_WEIGHT: Final[float] = 0.05

# (model id, kind, relative weight, base ms, prefill ms per 1k prompt tokens, ms per output token)
_MODELS: Final[tuple[tuple[str, int, float, float, float, float], ...]] = (
    ("gpt-4o", _TEXT, 30.0, 250.0, 60.0, 14.0),
    ("gpt-4o-mini", _TEXT, 34.0, 180.0, 30.0, 8.0),
    ("text-embedding-3-small", _EMBEDDING, 60.0, 15.0, 6.0, 0.0),
    ("llama-3.1-8b-instruct", _TEXT, 18.0, 90.0, 15.0, 6.0),
    ("whisper-1", _TRANSCRIPTION, 10.0, 400.0, 0.0, 3.0),
    ("omni-moderation-latest", _MODERATION, 10.0, 25.0, 10.0, 0.0),
    ("dall-e-3", _IMAGE, 6.0, 7_000.0, 0.0, 0.0),
    ("tts-1", _SPEECH, 8.0, 250.0, 8_000.0, 0.0),
    ("llama-3.1-70b-instruct", _TEXT, 9.0, 300.0, 80.0, 24.0),
    ("text-embedding-3-large", _EMBEDDING, 25.0, 25.0, 12.0, 0.0),
    ("mistral-7b-instruct", _TEXT, 6.0, 80.0, 14.0, 6.0),
    ("mixtral-8x7b-instruct", _TEXT, 5.0, 150.0, 35.0, 10.0),
    ("qwen2.5-72b-instruct", _TEXT, 5.0, 320.0, 85.0, 25.0),
    ("gpt-4.1", _TEXT, 12.0, 280.0, 55.0, 13.0),
    ("gpt-4.1-mini", _TEXT, 10.0, 170.0, 25.0, 7.0),
    ("o3-mini", _TEXT, 6.0, 1_500.0, 50.0, 9.0),
    ("gemma-2-9b-it", _TEXT, 3.0, 100.0, 18.0, 7.0),
    ("deepseek-v3", _TEXT, 4.0, 400.0, 70.0, 18.0),
    ("bge-large-en-v1.5", _EMBEDDING, 8.0, 12.0, 8.0, 0.0),
    ("llama-3.2-3b-instruct", _TEXT, 4.0, 60.0, 8.0, 4.0),
)

_ERROR_STATUSES = np.array([400, 401, 404, 429, 500, 503], dtype=np.int64)
_ERROR_STATUS_WEIGHTS = np.array([0.22, 0.08, 0.07, 0.38, 0.15, 0.10])
_REJECTED_STATUSES: Final[tuple[int, ...]] = (401, 404, 429)
_FIRST_SERVER_ERROR: Final[int] = 500

_SATURDAY: Final[int] = 5
_TENANT_ZIPF_EXPONENT: Final[float] = 1.1
_PREFERRED_MODEL_SHARE: Final[float] = 0.6
_MAX_COMPONENT_MS: Final[int] = 300_000


@dataclass(frozen=True)
class Profile:
    """Shape of the synthetic population; the defaults suit a 10M-row benchmark.

    Attributes:
        n_tenants: Number of tenants; traffic across tenants is Zipf-distributed.
        n_users: Number of users; each belongs to one tenant. Must be >= ``n_tenants``.
        n_api_keys: Number of API keys; each user holds at least one. Must be >= ``n_users``.
        n_methods: Number of distinct API methods (endpoints); at least 1.
        n_models: Number of distinct model ids; at least 1.
        error_rate: Expected share of rows with a 4xx/5xx status, in ``[0, 1]``.

    Example:
        >>> Profile(n_tenants=5, n_users=100, n_api_keys=150).n_methods
        30
    """

    n_tenants: int = 50
    n_users: int = 2000
    n_api_keys: int = 3000
    n_methods: int = 30
    n_models: int = 20
    error_rate: float = 0.03

    def __post_init__(self) -> None:
        """Reject inconsistent or out-of-range knobs with a ValueError."""
        if self.n_tenants < 1:
            raise InvalidArgumentError(f"n_tenants must be >= 1, got {self.n_tenants}")
        if self.n_users < self.n_tenants:
            raise InvalidArgumentError(
                f"n_users must be >= n_tenants ({self.n_tenants}), got {self.n_users}"
            )
        if self.n_api_keys < self.n_users:
            raise InvalidArgumentError(
                f"n_api_keys must be >= n_users ({self.n_users}), got {self.n_api_keys}"
            )
        if self.n_methods < 1:
            raise InvalidArgumentError(f"n_methods must be >= 1, got {self.n_methods}")
        if self.n_models < 1:
            raise InvalidArgumentError(f"n_models must be >= 1, got {self.n_models}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise InvalidArgumentError(f"error_rate must be within [0, 1], got {self.error_rate}")


@dataclass(frozen=True)
class _Catalog:
    """Entities shared by all rows of one generation run."""

    user_names: pd.api.extensions.ExtensionArray
    tenant_names: pd.api.extensions.ExtensionArray
    org_names: pd.api.extensions.ExtensionArray
    project_names: pd.api.extensions.ExtensionArray
    key_names: pd.api.extensions.ExtensionArray
    method_names: pd.api.extensions.ExtensionArray
    model_names: pd.api.extensions.ExtensionArray
    user_cdf: npt.NDArray[np.float64]
    user_tenant: npt.NDArray[np.int64]
    user_org: npt.NDArray[np.int64]
    user_project: npt.NDArray[np.int64]
    user_key_start: npt.NDArray[np.int64]
    user_key_count: npt.NDArray[np.int64]
    keys_by_user: npt.NDArray[np.int64]
    user_model: npt.NDArray[np.int64]
    method_cdf: npt.NDArray[np.float64]
    method_kind: npt.NDArray[np.int64]
    kind_models: tuple[npt.NDArray[np.int64], ...]
    kind_model_cdfs: tuple[npt.NDArray[np.float64], ...]
    model_base_ms: npt.NDArray[np.float64]
    model_prefill_ms: npt.NDArray[np.float64]
    model_decode_ms: npt.NDArray[np.float64]
    error_rate: float


@dataclass(frozen=True)
class _Plan:
    """Everything needed to produce the rows of one call, block by block."""

    n_rows: int
    start_ns: int
    seed: int
    catalog: _Catalog
    slice_ends: npt.NDArray[np.int64]


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _cdf(weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    cdf = np.cumsum(weights, dtype=np.float64)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def _sample(cdf: npt.NDArray[np.float64], u: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    idx = np.searchsorted(cdf, u, side="right").astype(np.int64)
    return np.minimum(idx, len(cdf) - 1)


def _str_array(values: list[str]) -> pd.api.extensions.ExtensionArray:
    return pd.array(values, dtype="str")


def _method_table(n_methods: int) -> tuple[list[str], list[int], list[float]]:
    names = [m[0] for m in _METHODS[:n_methods]]
    kinds = [m[1] for m in _METHODS[:n_methods]]
    weights = [m[2] for m in _METHODS[:n_methods]]
    for i in range(n_methods - len(_METHODS)):
        names.append(f"/v1/extensions/{i:03d}")
        kinds.append(_NONE)
        weights.append(_EXTRA_METHOD_WEIGHT)
    return names, kinds, weights


def _model_table(
    n_models: int,
) -> tuple[list[str], list[int], list[float], list[float], list[float], list[float]]:
    rows = list(_MODELS[:n_models])
    for i in range(n_models - len(_MODELS)):
        rows.append(
            (
                f"ft:llama-3.1-8b-instruct:custom-{i:03d}",
                _TEXT,
                1.0,
                90.0 + 10.0 * (i % 5),
                15.0,
                6.0 + (i % 3),
            )
        )
    names, kinds, weights, base, prefill, decode = (list(col) for col in zip(*rows, strict=True))
    return (
        [str(v) for v in names],
        [int(v) for v in kinds],
        [float(v) for v in weights],
        [float(v) for v in base],
        [float(v) for v in prefill],
        [float(v) for v in decode],
    )


def _build_catalog(profile: Profile, seed: int) -> _Catalog:
    rng = _rng(seed, _CATALOG_STREAM)
    n_t, n_u, n_k = profile.n_tenants, profile.n_users, profile.n_api_keys

    ranks = rng.permutation(n_t).astype(np.float64) + 1.0
    tenant_weight = ranks**-_TENANT_ZIPF_EXPONENT
    tenant_weight /= tenant_weight.sum()

    extra_users = rng.choice(n_t, size=n_u - n_t, p=_normalize(tenant_weight**0.7))
    user_tenant = rng.permutation(np.concatenate([np.arange(n_t), extra_users])).astype(np.int64)

    orgs_per_tenant = 1 + rng.binomial(2, 0.35, size=n_t).astype(np.int64)
    org_start = np.concatenate([[0], np.cumsum(orgs_per_tenant)[:-1]]).astype(np.int64)
    n_orgs = int(orgs_per_tenant.sum())
    projects_per_org = 1 + rng.binomial(4, 0.4, size=n_orgs).astype(np.int64)
    project_start = np.concatenate([[0], np.cumsum(projects_per_org)[:-1]]).astype(np.int64)
    n_projects = int(projects_per_org.sum())

    org_offset = (rng.random(n_u) * orgs_per_tenant[user_tenant]).astype(np.int64)
    user_org = org_start[user_tenant] + org_offset
    project_offset = (rng.random(n_u) * projects_per_org[user_org]).astype(np.int64)
    user_project = project_start[user_org] + project_offset

    activity = rng.lognormal(0.0, 1.2, size=n_u)
    tenant_activity = np.bincount(user_tenant, weights=activity, minlength=n_t)
    user_cdf = _cdf(tenant_weight[user_tenant] * activity / tenant_activity[user_tenant])

    extra_keys = rng.choice(n_u, size=n_k - n_u, p=_normalize(np.sqrt(activity)))
    key_user = rng.permutation(np.concatenate([np.arange(n_u), extra_keys])).astype(np.int64)
    keys_by_user = np.argsort(key_user, kind="stable").astype(np.int64)
    user_key_count = np.bincount(key_user, minlength=n_u).astype(np.int64)
    user_key_start = np.concatenate([[0], np.cumsum(user_key_count)[:-1]]).astype(np.int64)

    method_names, method_kinds, method_weights = _method_table(profile.n_methods)
    model_names, model_kinds, model_weights, base, prefill, decode = _model_table(profile.n_models)
    kinds_arr = np.asarray(model_kinds, dtype=np.int64)
    weights_arr = np.asarray(model_weights, dtype=np.float64)
    text_models = np.flatnonzero(kinds_arr == _TEXT).astype(np.int64)
    kind_models: list[npt.NDArray[np.int64]] = []
    kind_model_cdfs: list[npt.NDArray[np.float64]] = []
    for kind in range(_N_KINDS):
        models = np.flatnonzero(kinds_arr == kind).astype(np.int64)
        if kind == _NONE:
            models = np.empty(0, dtype=np.int64)
        elif len(models) == 0:
            models = text_models
        kind_models.append(models)
        kind_model_cdfs.append(_cdf(weights_arr[models]) if len(models) else np.empty(0))
    user_model = text_models[_sample(kind_model_cdfs[_TEXT], rng.random(n_u))]

    return _Catalog(
        user_names=_str_array([f"user-{i:05d}" for i in range(n_u)]),
        tenant_names=_str_array([f"tenant-{i:03d}" for i in range(n_t)]),
        org_names=_str_array([f"org-{i:04d}" for i in range(n_orgs)]),
        project_names=_str_array([f"proj-{i:05d}" for i in range(n_projects)]),
        key_names=_str_array([f"key-{i:05d}" for i in range(n_k)]),
        method_names=_str_array(method_names),
        model_names=_str_array([*model_names, ""]),
        user_cdf=user_cdf,
        user_tenant=user_tenant,
        user_org=user_org,
        user_project=user_project,
        user_key_start=user_key_start,
        user_key_count=user_key_count,
        keys_by_user=keys_by_user,
        user_model=user_model,
        method_cdf=_cdf(np.asarray(method_weights, dtype=np.float64)),
        method_kind=np.asarray(method_kinds, dtype=np.int64),
        kind_models=tuple(kind_models),
        kind_model_cdfs=tuple(kind_model_cdfs),
        model_base_ms=np.asarray([*base, 0.0], dtype=np.float64),
        model_prefill_ms=np.asarray([*prefill, 0.0], dtype=np.float64),
        model_decode_ms=np.asarray([*decode, 0.0], dtype=np.float64),
        error_rate=profile.error_rate,
    )


def _normalize(weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def _slice_ends(n_rows: int, start_ns: int, days: int, seed: int) -> npt.NDArray[np.int64]:
    """Cumulative row counts per 10-minute slice, following the daily and weekly cycle."""
    rng = _rng(seed, _COUNTS_STREAM)
    n_slices = days * _SLICES_PER_DAY
    slice_idx = np.arange(n_slices)
    hour = (slice_idx % _SLICES_PER_DAY + 0.5) * (24.0 / _SLICES_PER_DAY)
    epoch_day = start_ns // NS_PER_DAY + slice_idx // _SLICES_PER_DAY
    weekday = (epoch_day + 3) % 7
    intensity = 1.0 + 0.65 * np.cos(2.0 * np.pi * (hour - 15.0) / 24.0)
    intensity *= np.where(weekday >= _SATURDAY, 0.55, 1.0)
    intensity *= np.repeat(rng.lognormal(0.0, 0.08, size=days), _SLICES_PER_DAY)
    counts = rng.multinomial(n_rows, _normalize(intensity))
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
    cat: _Catalog,
    kind: npt.NDArray[np.int64],
    user: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """Model index per row; ``len(models)`` (the empty model id) for calls without a model."""
    n = len(kind)
    model = np.full(n, len(cat.model_names) - 1, dtype=np.int64)
    u_model = rng.random(n)
    for k in range(1, _N_KINDS):
        mask = kind == k
        if mask.any():
            model[mask] = cat.kind_models[k][_sample(cat.kind_model_cdfs[k], u_model[mask])]
    preferred = (kind == _TEXT) & (rng.random(n) < _PREFERRED_MODEL_SHARE)
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
    cat: _Catalog,
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
    has_model = kind != _NONE
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
    status = _ERROR_STATUSES[_sample(_cdf(_ERROR_STATUS_WEIGHTS), rng.random(len(rows)))]
    server_error = status >= _FIRST_SERVER_ERROR
    handling = np.where(
        server_error,
        _to_int(rng.lognormal(np.log(40.0), 0.9, size=len(rows)), 30_000),
        _to_int(rng.lognormal(np.log(4.0), 0.6, size=len(rows)), 5_000),
    )
    usage.status[rows] = status
    usage.latency[rows] = usage.overhead[rows] + handling
    usage.rt_latency[rows] = np.where(server_error & (kind[rows] != _NONE), handling, 0)
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
    rng = _rng(plan.seed, _BLOCK_STREAM, block)

    ts = _timestamps(plan, r0, r1, prev_ts, rng)
    user = _sample(cat.user_cdf, rng.random(n))
    key_offset = (rng.random(n) * cat.user_key_count[user]).astype(np.int64)
    key = cat.keys_by_user[cat.user_key_start[user] + key_offset]
    method = _sample(cat.method_cdf, rng.random(n))
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
        catalog=_build_catalog(profile, seed),
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
