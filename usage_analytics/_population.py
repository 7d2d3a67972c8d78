"""The population of :mod:`usage_analytics.synthetic`: the knobs (:class:`Profile`), the
endpoints and models with their request kinds, and the catalog of tenants, organizations,
projects, users, API keys and their preferred models that one generation run draws rows from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from .errors import InvalidArgumentError

_CATALOG_STREAM: Final[int] = 0  # the random stream of the catalog
_TENANT_ZIPF_EXPONENT: Final[float] = 1.1

# Request kinds. A model's kind is the kind of request it serves.
NONE: Final[int] = 0
TEXT: Final[int] = 1
_EMBEDDING: Final[int] = 2
_MODERATION: Final[int] = 3
_TRANSCRIPTION: Final[int] = 4
_SPEECH: Final[int] = 5
_IMAGE: Final[int] = 6
N_KINDS: Final[int] = 7

# (path, kind, relative weight); the first entries are the most common endpoints.
_METHODS: Final[tuple[tuple[str, int, float], ...]] = (
    ("/v1/chat/completions", TEXT, 50.0),
    ("/v1/embeddings", _EMBEDDING, 18.0),
    ("/v1/completions", TEXT, 8.0),
    ("/v1/responses", TEXT, 6.0),
    ("/v1/moderations", _MODERATION, 3.0),
    ("/v1/models", NONE, 3.0),
    ("/v1/files", NONE, 1.5),
    ("/v1/audio/transcriptions", _TRANSCRIPTION, 1.2),
    ("/v1/images/generations", _IMAGE, 1.0),
    ("/v1/batches", NONE, 0.8),
    ("/v1/fine_tuning/jobs", NONE, 0.5),
    ("/v1/audio/speech", _SPEECH, 0.8),
    ("/v1/audio/translations", _TRANSCRIPTION, 0.3),
    ("/v1/images/edits", _IMAGE, 0.3),
    ("/v1/images/variations", _IMAGE, 0.1),
    ("/v1/models/{model}", NONE, 0.8),
    ("/v1/files/{file_id}", NONE, 0.5),
    ("/v1/files/{file_id}/content", NONE, 0.4),
    ("/v1/batches/{batch_id}", NONE, 0.6),
    ("/v1/batches/{batch_id}/cancel", NONE, 0.05),
    ("/v1/fine_tuning/jobs/{fine_tuning_job_id}", NONE, 0.3),
    ("/v1/fine_tuning/jobs/{fine_tuning_job_id}/events", NONE, 0.2),
    ("/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel", NONE, 0.03),
    ("/v1/uploads", NONE, 0.2),
    ("/v1/vector_stores", NONE, 0.3),
    ("/v1/vector_stores/{vector_store_id}/files", NONE, 0.3),
    ("/v1/assistants", NONE, 0.2),
    ("/v1/threads", NONE, 0.3),
    ("/v1/threads/{thread_id}/runs", NONE, 0.4),
    ("/v1/threads/{thread_id}/messages", NONE, 0.4),
)
_EXTRA_METHOD_WEIGHT: Final[float] = 0.05

# (model id, kind, relative weight, base ms, prefill ms per 1k prompt tokens, ms per output token)
_MODELS: Final[tuple[tuple[str, int, float, float, float, float], ...]] = (
    ("gpt-4o", TEXT, 30.0, 250.0, 60.0, 14.0),
    ("gpt-4o-mini", TEXT, 34.0, 180.0, 30.0, 8.0),
    ("text-embedding-3-small", _EMBEDDING, 60.0, 15.0, 6.0, 0.0),
    ("llama-3.1-8b-instruct", TEXT, 18.0, 90.0, 15.0, 6.0),
    ("whisper-1", _TRANSCRIPTION, 10.0, 400.0, 0.0, 3.0),
    ("omni-moderation-latest", _MODERATION, 10.0, 25.0, 10.0, 0.0),
    ("dall-e-3", _IMAGE, 6.0, 7_000.0, 0.0, 0.0),
    ("tts-1", _SPEECH, 8.0, 250.0, 8_000.0, 0.0),
    ("llama-3.1-70b-instruct", TEXT, 9.0, 300.0, 80.0, 24.0),
    ("text-embedding-3-large", _EMBEDDING, 25.0, 25.0, 12.0, 0.0),
    ("mistral-7b-instruct", TEXT, 6.0, 80.0, 14.0, 6.0),
    ("mixtral-8x7b-instruct", TEXT, 5.0, 150.0, 35.0, 10.0),
    ("qwen2.5-72b-instruct", TEXT, 5.0, 320.0, 85.0, 25.0),
    ("gpt-4.1", TEXT, 12.0, 280.0, 55.0, 13.0),
    ("gpt-4.1-mini", TEXT, 10.0, 170.0, 25.0, 7.0),
    ("o3-mini", TEXT, 6.0, 1_500.0, 50.0, 9.0),
    ("gemma-2-9b-it", TEXT, 3.0, 100.0, 18.0, 7.0),
    ("deepseek-v3", TEXT, 4.0, 400.0, 70.0, 18.0),
    ("bge-large-en-v1.5", _EMBEDDING, 8.0, 12.0, 8.0, 0.0),
    ("llama-3.2-3b-instruct", TEXT, 4.0, 60.0, 8.0, 4.0),
)


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
class Catalog:
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


def random_stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def cumulative(weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    cdf = np.cumsum(weights, dtype=np.float64)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def draw(cdf: npt.NDArray[np.float64], u: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
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
        kinds.append(NONE)
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
                TEXT,
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


def build_catalog(profile: Profile, seed: int) -> Catalog:
    rng = random_stream(seed, _CATALOG_STREAM)
    n_t, n_u, n_k = profile.n_tenants, profile.n_users, profile.n_api_keys

    ranks = rng.permutation(n_t).astype(np.float64) + 1.0
    tenant_weight = ranks**-_TENANT_ZIPF_EXPONENT
    tenant_weight /= tenant_weight.sum()

    extra_users = rng.choice(n_t, size=n_u - n_t, p=normalized(tenant_weight**0.7))
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
    user_cdf = cumulative(tenant_weight[user_tenant] * activity / tenant_activity[user_tenant])

    extra_keys = rng.choice(n_u, size=n_k - n_u, p=normalized(np.sqrt(activity)))
    key_user = rng.permutation(np.concatenate([np.arange(n_u), extra_keys])).astype(np.int64)
    keys_by_user = np.argsort(key_user, kind="stable").astype(np.int64)
    user_key_count = np.bincount(key_user, minlength=n_u).astype(np.int64)
    user_key_start = np.concatenate([[0], np.cumsum(user_key_count)[:-1]]).astype(np.int64)

    method_names, method_kinds, method_weights = _method_table(profile.n_methods)
    model_names, model_kinds, model_weights, base, prefill, decode = _model_table(profile.n_models)
    kinds_arr = np.asarray(model_kinds, dtype=np.int64)
    weights_arr = np.asarray(model_weights, dtype=np.float64)
    text_models = np.flatnonzero(kinds_arr == TEXT).astype(np.int64)
    kind_models: list[npt.NDArray[np.int64]] = []
    kind_model_cdfs: list[npt.NDArray[np.float64]] = []
    for kind in range(N_KINDS):
        models = np.flatnonzero(kinds_arr == kind).astype(np.int64)
        if kind == NONE:
            models = np.empty(0, dtype=np.int64)
        elif len(models) == 0:
            models = text_models
        kind_models.append(models)
        kind_model_cdfs.append(cumulative(weights_arr[models]) if len(models) else np.empty(0))
    user_model = text_models[draw(kind_model_cdfs[TEXT], rng.random(n_u))]

    return Catalog(
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
        method_cdf=cumulative(np.asarray(method_weights, dtype=np.float64)),
        method_kind=np.asarray(method_kinds, dtype=np.int64),
        kind_models=tuple(kind_models),
        kind_model_cdfs=tuple(kind_model_cdfs),
        model_base_ms=np.asarray([*base, 0.0], dtype=np.float64),
        model_prefill_ms=np.asarray([*prefill, 0.0], dtype=np.float64),
        model_decode_ms=np.asarray([*decode, 0.0], dtype=np.float64),
        error_rate=profile.error_rate,
    )


def normalized(weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(weights / weights.sum(), dtype=np.float64)
