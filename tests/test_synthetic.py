"""Tests for the synthetic usage generator."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usage_analytics.synthetic import COLUMNS, Profile, StartLike, generate, iter_batches

STR_COLUMNS = [
    "user_id",
    "tenant",
    "organization",
    "project",
    "api_key_id",
    "api_method",
    "model_id",
]
INT32_COLUMNS = [
    "status_code",
    "latency_ms",
    "time_to_first_token_ms",
    "prompt_tokens",
    "completion_tokens",
    "runtime_latency_ms",
    "runtime_time_to_first_token_ms",
]
ERROR_STATUSES = {400, 401, 404, 429, 500, 503}
NS_PER_DAY = 86_400 * 10**9
START_NS = pd.Timestamp("2026-11-01").as_unit("ns").value
LARGE_ROWS = 200_000


@pytest.fixture(scope="module")
def large() -> pd.DataFrame:
    return generate(LARGE_ROWS, seed=11)


def assert_schema(df: pd.DataFrame) -> None:
    assert list(df.columns) == COLUMNS
    for name in STR_COLUMNS:
        assert df[name].dtype == "str", name
    for name in INT32_COLUMNS:
        assert df[name].dtype == np.int32, name
    assert df["timestamp"].dtype == np.int64


def test_columns_constant() -> None:
    assert len(COLUMNS) == len(set(COLUMNS)) == 15
    assert sorted(COLUMNS) == sorted([*STR_COLUMNS, *INT32_COLUMNS, "timestamp"])


def test_columns_dtypes_and_no_nulls(large: pd.DataFrame) -> None:
    assert_schema(large)
    assert not large.isna().any().any()
    assert large.index.equals(pd.RangeIndex(0, LARGE_ROWS))


@pytest.mark.parametrize("n_rows", [1, 2, 5, 13, 1_000, 70_000])
def test_exact_row_count(n_rows: int) -> None:
    df = generate(n_rows, days=14, seed=2)
    assert len(df) == n_rows
    assert_schema(df)


def test_zero_rows_gives_typed_empty_frame() -> None:
    df = generate(0)
    assert len(df) == 0
    assert_schema(df)
    assert list(iter_batches(0)) == []


def test_deterministic() -> None:
    profile = Profile(n_tenants=5, n_users=60, n_api_keys=90)
    first = generate(5_000, seed=3, days=3, profile=profile)
    second = generate(5_000, seed=3, days=3, profile=profile)
    pd.testing.assert_frame_equal(first, second)


def test_default_profile_is_used_when_none() -> None:
    pd.testing.assert_frame_equal(
        generate(2_000, seed=4), generate(2_000, seed=4, profile=Profile())
    )


def test_different_seed_gives_different_data() -> None:
    first = generate(5_000, seed=1)
    second = generate(5_000, seed=2)
    assert not first.equals(second)
    assert (first["user_id"] != second["user_id"]).mean() > 0.5
    assert (first["timestamp"] != second["timestamp"]).mean() > 0.5


@pytest.mark.parametrize(
    ("n_rows", "batch_size"),
    [(50, 1), (1_000, 7), (140_000, 30_000), (140_000, 65_536), (140_000, 200_000)],
)
def test_batches_concatenate_to_generate(n_rows: int, batch_size: int) -> None:
    batches = list(iter_batches(n_rows, batch_size=batch_size, days=3, seed=5))
    assert all(len(b) <= batch_size for b in batches)
    assert all(len(b) == batch_size for b in batches[:-1])
    assert sum(len(b) for b in batches) == n_rows
    for previous, current in itertools.pairwise(batches):
        assert previous["timestamp"].iloc[-1] < current["timestamp"].iloc[0]
    for batch in batches:
        assert batch["timestamp"].is_monotonic_increasing
    pd.testing.assert_frame_equal(pd.concat(batches), generate(n_rows, days=3, seed=5))


def test_batches_are_lazy_and_bounded() -> None:
    batches = iter_batches(10**12, batch_size=1_000, days=1, seed=6)
    first = next(batches)
    assert len(first) == 1_000
    assert first.index.equals(pd.RangeIndex(0, 1_000))
    assert first["timestamp"].is_monotonic_increasing
    assert len(next(batches)) == 1_000


@settings(max_examples=25, deadline=None, database=None)
@given(
    n_rows=st.integers(0, 3_000),
    batch_size=st.integers(1, 4_000),
    days=st.integers(1, 5),
    seed=st.integers(0, 2**32),
)
def test_batches_property(n_rows: int, batch_size: int, days: int, seed: int) -> None:
    profile = Profile(n_tenants=3, n_users=10, n_api_keys=12, n_methods=8, n_models=5)
    batches = list(
        iter_batches(n_rows, batch_size=batch_size, days=days, seed=seed, profile=profile)
    )
    expected = generate(n_rows, days=days, seed=seed, profile=profile)
    assert len(expected) == n_rows
    assert all(0 < len(b) <= batch_size for b in batches)
    if batches:
        pd.testing.assert_frame_equal(pd.concat(batches), expected)
    ts = expected["timestamp"].to_numpy()
    assert (np.diff(ts) > 0).all()
    assert ((ts >= START_NS) & (ts < START_NS + days * NS_PER_DAY)).all()


def test_timestamps_strictly_increasing_and_keys_unique(large: pd.DataFrame) -> None:
    assert (np.diff(large["timestamp"].to_numpy()) > 0).all()
    assert not large.duplicated(["user_id", "timestamp"]).any()


@pytest.mark.parametrize(
    ("start", "expected_day"),
    [
        ("2026-11-01", "2026-11-01"),
        (datetime(2026, 11, 1, 15, 30), "2026-11-01"),
        (date(2026, 11, 1), "2026-11-01"),
        (pd.Timestamp("2026-11-01 23:59:59"), "2026-11-01"),
        (datetime(2026, 11, 1, 8, tzinfo=UTC), "2026-11-01"),
        (pd.Timestamp("2026-11-01 00:30", tz="Europe/Berlin"), "2026-10-31"),
        ("2024-02-28", "2024-02-28"),
    ],
)
def test_timestamps_within_whole_days(start: StartLike, expected_day: str) -> None:
    days = 3
    df = generate(6_000, start=start, days=days, seed=8)
    lo = pd.Timestamp(expected_day).as_unit("ns").value
    hi = lo + days * NS_PER_DAY
    ts = df["timestamp"]
    assert ts.min() >= lo
    assert ts.max() < hi
    day_index = (ts - lo) // NS_PER_DAY
    assert set(day_index.unique()) == {0, 1, 2}


def test_equivalent_starts_give_identical_frames() -> None:
    reference = generate(3_000, start="2026-11-01", days=2, seed=9)
    for start in (datetime(2026, 11, 1, 12), pd.Timestamp("2026-11-01T06:00:00Z")):
        pd.testing.assert_frame_equal(generate(3_000, start=start, days=2, seed=9), reference)


def test_value_ranges(large: pd.DataFrame) -> None:
    for name in [*INT32_COLUMNS, "timestamp"]:
        assert (large[name] >= 0).all(), name
    assert large["status_code"].between(0, 999).all()
    assert set(large["status_code"].unique()) == {200} | ERROR_STATUSES
    assert large["latency_ms"].gt(0).all()
    for name in ["user_id", "tenant", "organization", "project", "api_key_id", "api_method"]:
        assert (large[name].str.len() > 0).all(), name


def test_identifier_formats(large: pd.DataFrame) -> None:
    assert large["tenant"].str.fullmatch(r"tenant-\d{3}").all()
    assert large["user_id"].str.fullmatch(r"user-\d{5}").all()
    assert large["api_key_id"].str.fullmatch(r"key-\d{5}").all()
    assert large["api_method"].str.startswith("/v1/").all()


def test_non_model_calls_have_no_model_or_tokens(large: pd.DataFrame) -> None:
    no_model = large[large["model_id"] == ""]
    assert len(no_model) > 1_000
    for name in [
        "prompt_tokens",
        "completion_tokens",
        "time_to_first_token_ms",
        "runtime_time_to_first_token_ms",
        "runtime_latency_ms",
    ]:
        assert (no_model[name] == 0).all(), name
    assert set(no_model["api_method"]) >= {"/v1/models", "/v1/files"}
    assert (large.loc[large["api_method"] == "/v1/models", "model_id"] == "").all()
    chat = large[large["api_method"] == "/v1/chat/completions"]
    assert (chat["model_id"] != "").all()


def test_embeddings_have_prompt_only(large: pd.DataFrame) -> None:
    emb = large[large["api_method"] == "/v1/embeddings"]
    assert len(emb) > 1_000
    ok = emb[emb["status_code"] == 200]
    assert (ok["prompt_tokens"] > 0).all()
    assert (emb["completion_tokens"] == 0).all()
    assert (emb["time_to_first_token_ms"] == 0).all()
    assert (emb["model_id"] != "").all()


def test_runtime_never_exceeds_total(large: pd.DataFrame) -> None:
    assert (large["runtime_latency_ms"] <= large["latency_ms"]).all()
    assert (large["runtime_time_to_first_token_ms"] <= large["time_to_first_token_ms"]).all()
    assert (large["time_to_first_token_ms"] <= large["latency_ms"]).all()


def test_streaming_calls_emit_first_token_before_completion(large: pd.DataFrame) -> None:
    chat = large[(large["api_method"] == "/v1/chat/completions") & (large["status_code"] == 200)]
    assert len(chat) > 10_000
    assert (chat["completion_tokens"] > 0).all()
    assert (chat["time_to_first_token_ms"] > 0).all()
    assert (chat["time_to_first_token_ms"] < chat["latency_ms"]).all()
    assert (chat["runtime_time_to_first_token_ms"] < chat["runtime_latency_ms"]).all()


def test_latency_grows_with_tokens_and_has_long_tails(large: pd.DataFrame) -> None:
    chat = large[(large["api_method"] == "/v1/chat/completions") & (large["status_code"] == 200)]
    tokens = chat["completion_tokens"]
    short = chat.loc[tokens <= tokens.quantile(0.25), "latency_ms"].mean()
    long = chat.loc[tokens >= tokens.quantile(0.75), "latency_ms"].mean()
    assert long > 3 * short
    rank_corr = np.corrcoef(tokens.rank(), chat["latency_ms"].rank())[0, 1]
    assert rank_corr > 0.5
    for name in ["prompt_tokens", "completion_tokens", "latency_ms"]:
        assert chat[name].quantile(0.99) > 5 * chat[name].median(), name


def test_errors_are_fast_and_have_no_completion(large: pd.DataFrame) -> None:
    errors = large[large["status_code"] != 200]
    assert (errors["completion_tokens"] == 0).all()
    assert (errors["time_to_first_token_ms"] == 0).all()
    model_calls = large[large["model_id"] != ""]
    ok_latency = model_calls.loc[model_calls["status_code"] == 200, "latency_ms"].median()
    err_latency = model_calls.loc[model_calls["status_code"] != 200, "latency_ms"].median()
    assert err_latency * 10 < ok_latency


def test_error_share_near_default_rate(large: pd.DataFrame) -> None:
    share = (large["status_code"] != 200).mean()
    assert 0.025 < share < 0.035


@pytest.mark.parametrize("error_rate", [0.0, 0.25, 1.0])
def test_error_share_follows_profile(error_rate: float) -> None:
    df = generate(40_000, seed=12, profile=Profile(error_rate=error_rate))
    share = (df["status_code"] != 200).mean()
    assert abs(share - error_rate) < 0.02
    if error_rate == 0.0:
        assert share == 0.0


def test_tenant_traffic_is_skewed(large: pd.DataFrame) -> None:
    per_tenant = large["tenant"].value_counts()
    assert len(per_tenant) == 50
    assert per_tenant.max() > 5 * per_tenant.median()


def test_users_belong_to_one_tenant_org_project(large: pd.DataFrame) -> None:
    per_user = large.groupby("user_id")[["tenant", "organization", "project"]].nunique()
    assert (per_user == 1).all().all()
    per_project = large.groupby("project")["organization"].nunique()
    assert (per_project == 1).all()
    per_org = large.groupby("organization")["tenant"].nunique()
    assert (per_org == 1).all()
    assert large.groupby("tenant")["organization"].nunique().max() > 1


def test_api_keys_belong_to_one_user(large: pd.DataFrame) -> None:
    assert (large.groupby("api_key_id")["user_id"].nunique() == 1).all()
    keys_per_user = large.groupby("user_id")["api_key_id"].nunique()
    assert keys_per_user.max() > 1
    assert large["user_id"].nunique() > 1_500


def test_chat_completions_most_frequent(large: pd.DataFrame) -> None:
    counts = large["api_method"].value_counts()
    assert counts.index[0] == "/v1/chat/completions"
    assert counts.iloc[0] > 2 * counts.iloc[1]
    assert large["api_method"].nunique() == 30
    assert large.loc[large["model_id"] != "", "model_id"].nunique() == 20


def test_profile_extends_methods_and_models(large: pd.DataFrame) -> None:
    profile = Profile(n_tenants=4, n_users=40, n_api_keys=80, n_methods=34, n_models=24)
    df = generate(100_000, seed=13, profile=profile)
    methods = set(df["api_method"])
    models = set(df.loc[df["model_id"] != "", "model_id"])
    assert len(methods) == 34
    assert len(models) == 24
    assert methods > set(large["api_method"])
    assert models > set(large["model_id"]) - {""}
    assert all(m.startswith("/v1/") for m in methods)
    assert df["tenant"].nunique() == 4


def test_small_profile_limits_methods_and_models() -> None:
    profile = Profile(n_tenants=2, n_users=5, n_api_keys=5, n_methods=3, n_models=2)
    df = generate(5_000, seed=14, profile=profile)
    assert df["api_method"].nunique() == 3
    assert df.loc[df["model_id"] != "", "model_id"].nunique() <= 2
    assert df["user_id"].nunique() == 5
    assert df["api_key_id"].nunique() == 5


def test_daily_traffic_cycle(large: pd.DataFrame) -> None:
    hour = (large["timestamp"] // (3_600 * 10**9)) % 24
    per_hour = hour.value_counts().sort_values()
    assert len(per_hour) == 24
    assert per_hour.iloc[-6:].sum() > 2 * per_hour.iloc[:6].sum()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_rows": -1}, "n_rows"),
        ({"n_rows": 10, "days": 0}, "days"),
        ({"n_rows": 10, "days": -3}, "days"),
        ({"n_rows": 10, "seed": -1}, "seed"),
        ({"n_rows": 10, "start": "not a date"}, "start must be"),
        ({"n_rows": 10, "start": ""}, "start must be"),
        ({"n_rows": 10, "start": "1969-12-31"}, "1970-01-01"),
        ({"n_rows": 10, "start": "2262-04-10"}, "range of nanosecond timestamps"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(message)):
        iter_batches(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("batch_size", [0, -5])
def test_invalid_batch_size_raises_immediately(batch_size: int) -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        iter_batches(10, batch_size=batch_size)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_tenants": 0}, "n_tenants"),
        ({"n_tenants": 10, "n_users": 5}, "n_users"),
        ({"n_users": 100, "n_api_keys": 50}, "n_api_keys"),
        ({"n_methods": 0}, "n_methods"),
        ({"n_models": 0}, "n_models"),
        ({"error_rate": -0.1}, "error_rate"),
        ({"error_rate": 1.5}, "error_rate"),
    ],
)
def test_invalid_profile(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Profile(**kwargs)  # type: ignore[arg-type]
