"""The report engine's contract: arguments, result shapes and dtypes, buckets in zones, dense
results, top groups, costs, presets (the source system's reports), explain, scans.

Exactness against an independent engine on random data is in ``test_report_oracle.py``; this
file pins down behaviour case by case, with expected values computed by hand or with pandas.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from helpers import random_usage_frame

from usage_analytics import (
    DatasetChangedError,
    InvalidArgumentError,
    MissingPriceError,
    Not,
    Prices,
    Store,
    ValidationError,
    _layout,
)

S: Final = 10**9
H: Final = 3600 * S
DAY: Final = 24 * H


def ns(text: str) -> int:
    return int(pd.Timestamp(text).tz_convert("UTC").value)


def rows(specs: list[dict[str, Any]]) -> pd.DataFrame:
    base = {
        "tenant": "t0",
        "api_method": "chat",
        "status_code": 200,
        "model_id": "m0",
        "api_key_id": "k0",
        "organization": "o0",
        "project": "p0",
        **dict.fromkeys(
            (
                "latency_ms",
                "time_to_first_token_ms",
                "prompt_tokens",
                "completion_tokens",
                "runtime_latency_ms",
                "runtime_time_to_first_token_ms",
            ),
            0,
        ),
    }
    out = []
    for i, spec in enumerate(specs):
        row = {**base, "user_id": f"u{i}", **spec}
        if isinstance(row["timestamp"], str):
            row["timestamp"] = ns(row["timestamp"])
        out.append(row)
    return pd.DataFrame(out)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "usage")
    s.auto_migrate()
    return s


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Store:
    s = Store(tmp_path_factory.mktemp("reports") / "usage")
    s.auto_migrate()
    frame = random_usage_frame(3000, 5, days=6, tenants=("t0", "t1", "t2"), users=40)
    s.create_usage(frame, on_conflict="ignore")
    return s


# ---------------------------------------------------------------------------------------------
# Arguments.

WINDOW: Final = ("2026-11-01", "2026-11-08")


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"by": "model"}, ["by", "'model'", "model_id"]),
        ({"by": ["model_id", "model_id"]}, ["repeats"]),
        ({"by": 5}, ["by"]),
        ({"metrics": ["requestz"]}, ["'requestz'", "requests"]),
        ({"metrics": ["latency_ms_p0"]}, ["(0, 100]"]),
        ({"metrics": ["latency_ms_p100.5"]}, ["(0, 100]"]),
        ({"metrics": ["latency_ms_p"]}, ["unknown metric"]),
        ({"metrics": []}, ["empty"]),
        ({"metrics": ["requests", "requests"]}, ["twice"]),
        ({"metrics": [5]}, ["metric names"]),
        ({"tz": "Mars/Olympus"}, ["tz", "'Mars/Olympus'"]),
        ({"tz": "america/new_york"}, ["'America/New_York'"]),
        ({"tz": 5}, ["tz"]),
        ({"every": "2h"}, ["every", "'2h'", "'1h'"]),
        ({"metrics": ["cost"]}, ["cost", "prices"]),
        ({"order_by": "requests"}, ["order_by", "top"]),
        ({"top": 5}, ["order_by"]),
        ({"top": 5, "order_by": "users"}, ["'users'", "metrics"]),
        ({"top": 0, "order_by": "requests"}, ["top"]),
        ({"top": True, "order_by": "requests"}, ["top"]),
        ({"where": {"model": "x"}}, ["where", "'model'"]),
        ({"where": {"status_code": "200"}}, ["status_code", "int"]),
        ({"where": {"status_code": 1000}}, ["status_code", "1000"]),
        ({"where": {"status_class": "2XX"}}, ["status_class", "'2xx'"]),
        ({"where": {"model_id": 5}}, ["model_id", "str"]),
        ({"where": ["model_id"]}, ["where", "mapping"]),
        ({"prices": {"m0": (1, 2)}}, ["prices", "Prices"]),
        ({"explain": "yes"}, ["explain"]),
    ],
)
def test_bad_arguments_name_the_argument_and_the_choices(
    sample: Store, kwargs: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        sample.report("t0", *WINDOW, **kwargs)
    for name in names:
        assert name in str(info.value), (name, str(info.value))


def test_bad_windows_and_tenants(sample: Store) -> None:
    with pytest.raises(InvalidArgumentError, match="before start"):
        sample.report("t0", "2026-11-02", "2026-11-01")
    with pytest.raises(InvalidArgumentError, match="tenant_id"):
        sample.report(5, *WINDOW)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="2262"):
        sample.report("t0", 0, 2**63, every="1d")
    with pytest.raises(InvalidArgumentError, match="buckets"):
        sample.report("t0", 0, 3000 * DAY, every="1min")


# ---------------------------------------------------------------------------------------------
# Shapes and dtypes.

EVERY_METRIC: Final = [
    "requests",
    "success_requests",
    "failure_requests",
    "error_rate",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_ms_mean",
    "time_to_first_token_ms_p99.9",
    "users",
    "api_keys",
    "completion_tokens_per_s",
]
INT_METRICS: Final = {
    "requests",
    "success_requests",
    "failure_requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "users",
    "api_keys",
}


@pytest.mark.parametrize("every", [None, "1d"])
@pytest.mark.parametrize("window", ["full", "empty", "unknown tenant"])
def test_columns_and_dtypes_hold_for_empty_and_full_results(
    sample: Store, every: str | None, window: str
) -> None:
    tenant, start, end = "t1", *WINDOW
    if window == "empty":
        start = end
    elif window == "unknown tenant":
        tenant = "nobody"
    got = sample.report(
        tenant, start, end, by=["status_code", "model_id"], every=every, metrics=EVERY_METRIC
    )
    expected = (["bucket"] if every else []) + ["status_code", "model_id", *EVERY_METRIC]
    assert list(got.columns) == expected
    assert (len(got) == 0) == (window != "full")
    assert got["status_code"].dtype == np.int32
    assert got["model_id"].dtype == "str"
    if every:
        assert got["bucket"].dtype == pd.DatetimeTZDtype(unit="ns", tz="UTC")
    for name in EVERY_METRIC:
        assert got[name].dtype == (np.int64 if name in INT_METRICS else np.float64), name


def test_default_metrics_and_a_report_without_dimensions(sample: Store) -> None:
    got = sample.report("t0", *WINDOW)
    assert list(got.columns) == [
        "requests",
        "success_requests",
        "failure_requests",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms_mean",
    ]
    t0 = sample.find_usages().query("tenant == 't0'")
    assert got["requests"].tolist() == [len(t0)]
    assert got["prompt_tokens"].tolist() == [int(t0["prompt_tokens"].sum())]
    assert got["latency_ms_mean"].tolist() == [t0["latency_ms"].sum() / len(t0)]


def test_every_tenant_and_the_status_class(store: Store) -> None:
    codes = [0, 99, 100, 200, 204, 301, 404, 429, 500, 599, 600, 999]
    store.create_usage(
        rows(
            [
                {"tenant": f"t{i % 2}", "status_code": c, "timestamp": 1_000 + i}
                for i, c in enumerate(codes)
            ]
        )
    )
    got = store.report(None, 0, 10**6, by=["tenant", "status_class"], metrics=["requests"])
    expected = {
        ("t0", "1xx"): 1,
        ("t0", "2xx"): 1,
        ("t0", "4xx"): 1,
        ("t0", "5xx"): 1,
        ("t0", "other"): 2,
        ("t1", "2xx"): 1,
        ("t1", "3xx"): 1,
        ("t1", "4xx"): 1,
        ("t1", "5xx"): 1,
        ("t1", "other"): 2,
    }
    assert {(t, c): n for t, c, n in got.itertuples(index=False)} == expected
    assert got[["tenant", "status_class"]].values.tolist() == sorted(map(list, expected))
    only = store.report(None, 0, 10**6, where={"status_class": ["other", "1xx"]})
    assert only["requests"].tolist() == [5]
    errors = store.report(None, 0, 10**6, metrics=["error_rate"])
    assert errors["error_rate"].tolist() == [11 / 12]


def test_where_filters_and_not(store: Store) -> None:
    store.create_usage(
        rows(
            [
                {"model_id": "", "timestamp": 1},
                {"model_id": "a", "timestamp": 2},
                {"model_id": "b", "timestamp": 3, "organization": "o1"},
                {"model_id": "b", "timestamp": 4, "status_code": 500},
            ]
        )
    )

    def requests(**where: Any) -> int:
        got = store.report("t0", 0, 100, where=where, metrics=["requests"])
        return int(got["requests"].sum())

    assert requests(model_id=Not("")) == 3
    assert requests(model_id=Not(["", "a"])) == 2
    assert requests(model_id=["a", "b"], organization="o0") == 2
    assert requests(model_id=[]) == 0
    assert requests(status_code=Not(200)) == 1
    assert requests(status_class="5xx", model_id="b") == 1
    assert requests(model_id={"a", ""}) == 2


# ---------------------------------------------------------------------------------------------
# Buckets in zones.


def test_the_hour_repeated_when_clocks_go_back_gives_two_buckets(store: Store) -> None:
    # America/New_York went back from 02:00 EDT to 01:00 EST on 2026-11-01 (06:00 UTC).
    store.create_usage(
        rows(
            [
                {"timestamp": "2026-11-01T05:10Z"},  # 01:10 EDT
                {"timestamp": "2026-11-01T05:59:59.999999999Z"},  # 01:59:59.999999999 EDT
                {"timestamp": "2026-11-01T06:00Z"},  # 01:00 EST
                {"timestamp": "2026-11-01T07:30Z"},  # 02:30 EST
            ]
        )
    )
    got = store.report(
        "t0", "2026-11-01T04:00Z", "2026-11-01T08:00Z", every="1h", tz="America/New_York"
    )
    assert [str(b) for b in got["bucket"]] == [
        "2026-11-01 00:00:00-04:00",
        "2026-11-01 01:00:00-04:00",
        "2026-11-01 01:00:00-05:00",
        "2026-11-01 02:00:00-05:00",
    ]
    assert got["requests"].tolist() == [0, 2, 1, 1]
    day = store.report(
        "t0", "2026-11-01T04:00Z", "2026-11-02T05:00Z", every="1d", tz="America/New_York"
    )
    assert [str(b) for b in day["bucket"]] == ["2026-11-01 00:00:00-04:00"]  # 25 hours
    assert day["requests"].tolist() == [4]


def test_the_day_clocks_go_forward_has_23_hours(store: Store) -> None:
    store.create_usage(
        rows(
            [
                {"timestamp": "2026-03-08T04:59:59.999999999Z"},  # 23:59:59.999 EST, Mar 7
                {"timestamp": "2026-03-08T05:00Z"},  # 00:00 EST, Mar 8
                {"timestamp": "2026-03-09T03:59:59Z"},  # 23:59:59 EDT, Mar 8
                {"timestamp": "2026-03-09T04:00Z"},  # 00:00 EDT, Mar 9
            ]
        )
    )
    got = store.report(
        "t0", "2026-03-07T05:00Z", "2026-03-10T04:00Z", every="1d", tz="America/New_York"
    )
    assert [str(b) for b in got["bucket"]] == [
        "2026-03-07 00:00:00-05:00",
        "2026-03-08 00:00:00-05:00",
        "2026-03-09 00:00:00-04:00",
    ]
    assert got["requests"].tolist() == [1, 2, 1]
    hours = store.report(
        "t0", "2026-03-08T05:00Z", "2026-03-08T07:30Z", every="1h", tz="America/New_York"
    )
    assert [str(b) for b in hours["bucket"]] == [
        "2026-03-08 00:00:00-05:00",
        "2026-03-08 01:00:00-05:00",
        "2026-03-08 03:00:00-04:00",  # 02:00 never happened
    ]


@pytest.mark.parametrize(
    ("tz", "every", "start", "hours", "labels", "counts"),
    [
        # 00:00 UTC is 05:30 in Kolkata: hours are slices of the local clock.
        (
            "Asia/Kolkata",
            "1h",
            "2026-11-01T00:00Z",
            2,
            ["2026-11-01 05:00:00+05:30", "2026-11-01 06:00:00+05:30", "2026-11-01 07:00:00+05:30"],
            [3, 6, 3],
        ),
        (
            "Asia/Kathmandu",
            "15min",
            "2026-11-01T00:00Z",
            0.5,
            ["2026-11-01 05:45:00+05:45", "2026-11-01 06:00:00+05:45"],
            [2, 1],
        ),
        (
            "Asia/Kolkata",
            "1d",
            "2026-11-01T12:00Z",
            24,
            ["2026-11-01 00:00:00+05:30", "2026-11-02 00:00:00+05:30"],
            [39, 105],  # Nov 1 ends in Kolkata at 18:30 UTC
        ),
        # Lord Howe goes back half an hour at 02:00 (+11:00) on 2026-04-05, 15:00 UTC: the
        # hour from 01:00 is cut there, and the repeated half hour is a bucket of its own.
        (
            "Australia/Lord_Howe",
            "1h",
            "2026-04-04T14:00Z",
            2,
            ["2026-04-05 01:00:00+11:00", "2026-04-05 01:30:00+10:30", "2026-04-05 02:00:00+10:30"],
            [6, 3, 3],
        ),
    ],
)
def test_zones_with_half_and_quarter_hour_offsets(
    store: Store,
    tz: str,
    every: str,
    start: str,
    hours: float,
    labels: list[str],
    counts: list[int],
) -> None:
    lo = ns(start)
    hi = lo + int(hours * H)
    store.create_usage(rows([{"timestamp": t} for t in range(lo, hi, 10 * 60 * S)]))
    got = store.report("t0", lo, hi, every=every, tz=tz)
    assert [str(b) for b in got["bucket"]] == labels
    assert got["requests"].tolist() == counts


def test_weeks_start_on_monday_and_months_on_the_first(store: Store) -> None:
    store.create_usage(
        rows(
            [
                {"timestamp": "2026-11-01T12:00Z"},  # a Sunday
                {"timestamp": "2026-11-02T12:00Z"},  # Monday
                {"timestamp": "2026-12-01T00:00Z"},  # 01:00 in Berlin, Dec 1
                {"timestamp": "2026-11-30T23:30Z"},  # 00:30 in Berlin, Dec 1
            ]
        )
    )
    weeks = store.report("t0", "2026-11-01", "2026-12-02", every="1w", tz="Europe/Berlin")
    assert [str(b.date()) for b in weeks["bucket"]] == [
        "2026-10-26",
        "2026-11-02",
        "2026-11-09",
        "2026-11-16",
        "2026-11-23",
        "2026-11-30",
    ]
    assert weeks["requests"].tolist() == [1, 1, 0, 0, 0, 2]
    months = store.report("t0", "2026-11-01", "2026-12-02", every="1mo", tz="Europe/Berlin")
    assert [str(b) for b in months["bucket"]] == [
        "2026-11-01 00:00:00+01:00",
        "2026-12-01 00:00:00+01:00",
    ]
    assert months["requests"].tolist() == [2, 2]


def test_rows_outside_the_window_never_count_in_cut_buckets(store: Store) -> None:
    store.create_usage(
        rows([{"timestamp": "2026-11-01T00:00Z"}, {"timestamp": "2026-11-01T11:00Z"}])
    )
    got = store.report("t0", "2026-11-01T10:00Z", "2026-11-01T12:00Z", every="1d")
    assert [str(b) for b in got["bucket"]] == ["2026-11-01 00:00:00+00:00"]
    assert got["requests"].tolist() == [1]
    one_ns = store.report("t0", ns("2026-11-01T11:00Z"), ns("2026-11-01T11:00Z") + 1, every="1h")
    assert one_ns["requests"].tolist() == [1]


# ---------------------------------------------------------------------------------------------
# Dense results and top groups.


def test_dense_buckets_are_zero_filled_for_every_group(store: Store) -> None:
    store.create_usage(
        rows(
            [
                {"model_id": "a", "timestamp": "2026-11-01T01:00Z", "latency_ms": 10},
                {"model_id": "b", "timestamp": "2026-11-03T01:00Z", "latency_ms": 20},
            ]
        )
    )
    got = store.report(
        "t0",
        "2026-11-01",
        "2026-11-04",
        by="model_id",
        every="1d",
        metrics=["requests", "latency_ms_mean", "latency_ms_p50", "users", "error_rate"],
    )
    assert len(got) == 6
    assert got["model_id"].tolist() == ["a", "b"] * 3
    assert got["requests"].tolist() == [1, 0, 0, 0, 0, 1]
    assert got["users"].tolist() == [1, 0, 0, 0, 0, 1]
    means = got["latency_ms_mean"].tolist()
    assert means[0] == 10 and means[5] == 20 and all(math.isnan(m) for m in means[1:5])
    assert math.isnan(got["latency_ms_p50"][1]) and math.isnan(got["error_rate"][2])


def test_top_keeps_the_largest_window_totals_and_all_their_buckets(store: Store) -> None:
    specs = []
    for key, n in (("k1", 3), ("k2", 5), ("k3", 5), ("k4", 1)):
        for i in range(n):
            specs.append({"api_key_id": key, "timestamp": f"2026-11-0{1 + i % 2}T0{i}:00Z"})
    store.create_usage(rows(specs))
    got = store.report(
        "t0",
        "2026-11-01",
        "2026-11-04",
        by="api_key_id",
        every="1d",
        metrics=["requests"],
        top=3,
        order_by="requests",
    )
    # k2 and k3 tie at 5 and both come before k1 (3); k4 is left out.
    assert got["api_key_id"].tolist() == ["k1", "k2", "k3"] * 3
    totals = got.groupby("api_key_id")["requests"].sum().to_dict()
    assert totals == {"k1": 3, "k2": 5, "k3": 5}
    two = store.report(
        "t0", "2026-11-01", "2026-11-04", by="api_key_id", top=2, order_by="requests"
    )
    assert two["api_key_id"].tolist() == ["k2", "k3"]  # ties broken by the key
    one = store.report(
        "t0", "2026-11-01", "2026-11-04", by="api_key_id", top=1, order_by="requests"
    )
    assert one["api_key_id"].tolist() == ["k2"]


# ---------------------------------------------------------------------------------------------
# Percentiles, distinct counts, throughput.


def test_percentiles_are_exact_with_linear_interpolation(store: Store) -> None:
    latencies = [5, 1, 9, 9, 3, 7, 100, 2]
    store.create_usage(rows([{"timestamp": i, "latency_ms": v} for i, v in enumerate(latencies)]))
    names = [
        "latency_ms_p50",
        "latency_ms_p95",
        "latency_ms_p99.9",
        "latency_ms_p100",
        "latency_ms_p0.1",
    ]
    got = store.report("t0", 0, 100, metrics=names)
    series = pd.Series(latencies, dtype=float)
    for name in names:
        q = float(name.split("_p")[1]) / 100
        assert got[name].tolist() == pytest.approx([series.quantile(q)], rel=1e-12), name


def test_distinct_users_and_keys_and_throughput(store: Store) -> None:
    store.create_usage(
        rows(
            [
                {
                    "user_id": "u1",
                    "api_key_id": "a",
                    "timestamp": 1,
                    "completion_tokens": 100,
                    "latency_ms": 1100,
                    "time_to_first_token_ms": 100,
                },
                {
                    "user_id": "u1",
                    "api_key_id": "b",
                    "timestamp": 2,
                    "completion_tokens": 50,
                    "latency_ms": 600,
                    "time_to_first_token_ms": 100,
                },
                {
                    "user_id": "u2",
                    "api_key_id": "a",
                    "timestamp": 3,
                    "model_id": "",
                    "completion_tokens": 999,
                    "latency_ms": 5,
                },
            ]
        )
    )
    got = store.report("t0", 0, 10, metrics=["users", "api_keys", "completion_tokens_per_s"])
    assert got["users"].tolist() == [2] and got["api_keys"].tolist() == [2]
    assert got["completion_tokens_per_s"].tolist() == [150 / 1.5]  # the row without a model is out
    none = store.report("t0", 2, 4, by="model_id", metrics=["completion_tokens_per_s"])
    assert math.isnan(none["completion_tokens_per_s"][0])  # no rows with a model: NaN
    assert none["completion_tokens_per_s"][1] == 50 / 0.5


# ---------------------------------------------------------------------------------------------
# Costs.


def test_costs_use_the_price_in_force_at_each_row(store: Store) -> None:
    store.create_usage(
        rows(
            [
                {
                    "model_id": "a",
                    "timestamp": "2026-11-01T10:00Z",
                    "prompt_tokens": 1_000_000,
                    "completion_tokens": 2_000_000,
                },
                {"model_id": "a", "timestamp": "2026-11-02T10:00Z", "prompt_tokens": 1_000_000},
                {"model_id": "", "timestamp": "2026-11-02T11:00Z"},  # no tokens: costs nothing
            ]
        )
    )
    prices = Prices.from_frame(
        pd.DataFrame(
            {
                "model_id": ["a", "a"],
                "prompt_per_1m": [1.0, 3.0],
                "completion_per_1m": [2.0, 6.0],
                "effective_from": [None, "2026-11-02"],
            }
        )
    )
    got = store.report(
        "t0",
        "2026-11-01",
        "2026-11-03",
        every="1d",
        metrics=["prompt_cost", "completion_cost", "cost"],
        prices=prices,
    )
    assert got["prompt_cost"].tolist() == [1.0, 3.0]
    assert got["completion_cost"].tolist() == [4.0, 0.0]
    assert got["cost"].tolist() == [5.0, 3.0]


def test_a_model_without_a_price_is_an_error_or_nan(store: Store) -> None:
    store.create_usage(
        rows(
            [
                {"model_id": "a", "timestamp": 1, "prompt_tokens": 10},
                {"model_id": "zeta", "timestamp": 2, "prompt_tokens": 10},
                {"model_id": "early", "timestamp": 3, "prompt_tokens": 10},
            ]
        )
    )
    table = pd.DataFrame(
        {
            "model_id": ["a", "early"],
            "prompt_per_1m": [1.0, 1.0],
            "completion_per_1m": [1.0, 1.0],
            "effective_from": [None, "2026-01-01"],  # after the row: not in force there
        }
    )
    with pytest.raises(MissingPriceError) as info:
        store.report("t0", 0, 10, metrics=["cost"], prices=Prices.from_frame(table))
    assert info.value.models == ["early", "zeta"]
    assert "'zeta'" in str(info.value) and "missing='nan'" in str(info.value)
    got = store.report(
        "t0",
        0,
        10,
        by="model_id",
        metrics=["cost"],
        prices=Prices.from_frame(table, missing="nan"),
    )
    assert got["cost"][0] == pytest.approx(1e-5) and got["cost"][1:].isna().all()


@pytest.mark.parametrize(
    "table",
    [
        {"model_id": ["a"], "prompt_per_1m": [-1.0], "completion_per_1m": [1.0]},
        {"model_id": ["a"], "prompt_per_1m": [math.nan], "completion_per_1m": [1.0]},
        {"model_id": ["a", "a"], "prompt_per_1m": [1.0, 2.0], "completion_per_1m": [1.0, 1.0]},
        {"model_id": ["a"], "prompt_per_1m": [1.0]},
        {"model_id": ["a"], "prompt_per_1m": [1.0], "completion_per_1m": [1.0], "extra": [1]},
    ],
)
def test_bad_price_tables_are_refused(table: dict[str, list[Any]]) -> None:
    with pytest.raises(ValidationError):
        Prices.from_frame(pd.DataFrame(table))


def test_prices_from_dict_and_csv(tmp_path: Path) -> None:
    from_dict = Prices.from_dict({"b": (1.0, 2.0), "a": (0.5, 1)})
    assert from_dict.frame()["model_id"].tolist() == ["a", "b"]
    path = tmp_path / "prices.csv"
    path.write_text(
        "model_id,prompt_per_1m,completion_per_1m,effective_from\n"
        "a,1.0,2.0,\n"
        "a,1.5,2.5,2026-11-02T00:00:00Z\n"
        ",0,0,\n"
    )
    prices = Prices.read_csv(path)
    frame = prices.frame()
    assert frame["model_id"].tolist() == ["", "a", "a"]
    assert frame["effective_from"].isna().tolist() == [True, True, False]
    with pytest.raises(InvalidArgumentError, match="prompt_per_1m"):
        Prices.from_dict({"a": 1.0})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        Prices.read_csv(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------------------
# Presets: the source system's reports.


def test_model_usage_summaries_fill_every_model_in_every_bucket(store: Store) -> None:
    store.create_usage(
        rows(
            [
                {
                    "model_id": "a",
                    "user_id": "u1",
                    "timestamp": "2026-11-01T10:00Z",
                    "prompt_tokens": 1,
                },
                # Several users share a model in a bucket: all their counts add up.
                {
                    "model_id": "a",
                    "user_id": "u2",
                    "timestamp": "2026-11-01T10:30Z",
                    "prompt_tokens": 2,
                },
                {
                    "model_id": "a",
                    "user_id": "u3",
                    "timestamp": "2026-11-01T10:40Z",
                    "prompt_tokens": 4,
                },
                {
                    "model_id": "b",
                    "user_id": "u1",
                    "timestamp": "2026-11-01T12:00Z",
                    "status_code": 500,
                },
                {"model_id": "", "user_id": "u4", "timestamp": "2026-11-01T10:00Z"},
            ]
        )
    )
    got = store.model_usage_summaries("t0", "2026-11-01T10:00Z", "2026-11-01T13:00Z")
    assert list(got.columns) == [
        "bucket",
        "model_id",
        "total_requests",
        "total_prompt_tokens",
        "total_completion_tokens",
    ]
    assert got["model_id"].tolist() == ["a", "b"] * 3
    assert got["total_requests"].tolist() == [3, 0, 0, 0, 0, 1]
    assert got["total_prompt_tokens"].tolist() == [7, 0, 0, 0, 0, 0]
    ok = store.model_usage_summaries(
        "t0", "2026-11-01T10:00Z", "2026-11-01T13:00Z", status_code=200
    )
    assert ok["model_id"].unique().tolist() == ["a"]


def test_model_usage_summaries_daily_from_a_start_that_is_not_midnight(store: Store) -> None:
    """The source system looked daily buckets up from the start truncated to the hour, so a
    daily interval from a start that is not midnight UTC came back all zeros."""
    store.create_usage(
        rows(
            [
                {"timestamp": f"2026-11-0{d}T{h:02d}:00Z", "model_id": "a"}
                for d in (1, 2)
                for h in (3, 20)
            ]
        )
    )
    got = store.model_usage_summaries("t0", "2026-11-01T15:00Z", "2026-11-03T00:00Z", every="1d")
    assert [str(b) for b in got["bucket"]] == [
        "2026-11-01 00:00:00+00:00",
        "2026-11-02 00:00:00+00:00",
    ]
    assert got["total_requests"].tolist() == [1, 2]
    local = store.model_usage_summaries(
        "t0", "2026-11-01T15:00Z", "2026-11-03T00:00Z", every="1d", tz="Asia/Kolkata"
    )
    assert local["total_requests"].sum() == 3


def test_groups_can_leave_out_rows_without_a_model(store: Store) -> None:
    store.create_usage(rows([{"model_id": "", "timestamp": 1}, {"model_id": "m", "timestamp": 2}]))
    assert store.get_usages_by_groups("t0", 0, 10)["model_id"].tolist() == ["", "m"]
    kept = store.get_usages_by_groups("t0", 0, 10, exclude_empty_model=True)
    assert kept["model_id"].tolist() == ["m"]
    with pytest.raises(InvalidArgumentError, match="exclude_empty_model"):
        store.get_usages_by_groups("t0", 0, 10, exclude_empty_model="yes")  # type: ignore[arg-type]


def test_presets_equal_their_engine_reports(sample: Store) -> None:
    for start, end in (
        (ns("2026-11-01T00:00Z"), ns("2026-11-08T00:00Z")),
        (ns("2026-11-02T13:00Z"), ns("2026-11-04T07:00Z")),
    ):
        summary = sample.aggregated_usage("t1", start, end)
        engine = sample.report(
            "t1",
            start,
            end,
            by="api_method",
            metrics=["requests", "success_requests", "failure_requests", "latency_ms_mean"],
        )
        assert summary.to_numpy().tolist() == engine.to_numpy().tolist()
        groups = sample.get_usages_by_groups("t1", start, end)
        engine = sample.report(
            "t1",
            start,
            end,
            by=["api_key_id", "user_id", "model_id"],
            metrics=[
                "requests",
                "prompt_tokens",
                "completion_tokens",
                "latency_ms_mean",
                "time_to_first_token_ms_mean",
            ],
        )
        assert groups.to_numpy().tolist() == engine.to_numpy().tolist()


# ---------------------------------------------------------------------------------------------
# The planner: explain, and summaries equal to scans.


def test_explain_shows_summaries_for_whole_files_and_scans_at_the_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    store.create_usage(random_usage_frame(600, 3, days=4, tenants=("t0", "t1")))
    metrics = ["requests", "prompt_tokens", "latency_ms_mean"]
    plan = store.report(
        "t0", "2026-10-31", "2026-11-06", by="model_id", metrics=metrics, explain=True
    )
    assert list(plan.columns) == ["piece", "read", "grain", "rows"]
    # Files and spans from the summaries of each day (no buckets: whole pieces).
    assert set(plan["read"]) == {"summary"} and set(plan["grain"]) == {"daily"}
    assert plan["rows"].sum() == store.info().rows
    cut = store.report(
        "t0",
        ns("2026-11-01T12:00Z"),
        "2026-11-06",
        by="api_method",
        metrics=["requests", "success_requests"],
        explain=True,
    )
    assert cut.query("read == 'scan'")["piece"].str.startswith("date=2026-11-01/").all()
    assert (cut["read"] == "summary").any() and set(cut.query("read == 'summary'")["grain"]) == {
        "summary"
    }
    statuses = store.report(
        None, "2026-10-31", "2026-11-06", by=["tenant", "status_class"], every="1d", explain=True
    )
    assert set(statuses["read"]) == {"summary"} and set(statuses["grain"]) == {"statuses"}
    hourly = store.report("t0", "2026-10-31", "2026-11-06", every="1h", explain=True)
    assert set(hourly["read"]) == {"summary"}  # hourly summaries: files hold many hours
    assert set(hourly["grain"]) == {"hourly"}
    # Kolkata's hours start at half past UTC hours: no hourly summary fits them.
    kolkata = store.report(
        "t0", "2026-10-31", "2026-11-06", every="1h", tz="Asia/Kolkata", explain=True
    )
    assert set(kolkata["read"]) == {"scan"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"by": "model_id", "where": {"api_key_id": Not("key1")}, "metrics": ["requests"]},
        {"by": ["user_id"], "metrics": ["requests", "prompt_tokens", "completion_tokens_per_s"]},
        {"by": "api_method", "every": "1d", "metrics": ["requests", "error_rate"]},
        {"by": "api_key_id", "metrics": ["cost", "requests"], "top": 3, "order_by": "cost"},
        {"metrics": ["total_tokens"], "every": "1w", "tz": "Asia/Kolkata"},
    ],
)
def test_summaries_give_what_scans_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any]
) -> None:
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    for seed in range(3):
        store.create_usage(
            random_usage_frame(400, seed, days=6, tenants=("t0", "t1")), on_conflict="ignore"
        )
    store.compact()
    models = store.find_usages()["model_id"].unique()
    prices = Prices.from_dict({m: (1.25, 2.5) for m in models})
    if "cost" in kwargs.get("metrics", []):
        kwargs = {**kwargs, "prices": prices}
    for start, end in (
        ("2026-10-30", "2026-11-08"),
        (ns("2026-11-02T05:00Z"), ns("2026-11-05T19:00Z")),
    ):
        fast = store.report(None, start, end, **kwargs)
        plan = store.report(None, start, end, **kwargs, explain=True)
        store._use_rollups = False
        slow = store.report(None, start, end, **kwargs)
        store._use_rollups = True
        pd.testing.assert_frame_equal(fast, slow, check_exact=False, rtol=1e-12)
        if "every" not in kwargs or kwargs["every"] == "1d":
            assert (plan["read"] == "summary").any(), kwargs


# ---------------------------------------------------------------------------------------------
# Scans.


def test_scan_reads_a_window_of_some_columns_in_time_order(sample: Store) -> None:
    everything = sample.find_usages()
    start, end = ns("2026-11-02T06:00Z"), ns("2026-11-03T18:00Z")
    got = sample.scan("t2", start, end, columns=["timestamp", "model_id", "latency_ms"])
    expected = everything[
        (everything.tenant == "t2") & (everything.timestamp >= start) & (everything.timestamp < end)
    ].sort_values(["timestamp", "id"])
    assert list(got.columns) == ["timestamp", "model_id", "latency_ms"]
    assert got["timestamp"].tolist() == expected["timestamp"].tolist()
    assert got["model_id"].dtype == "str" and got["latency_ms"].dtype == np.int32
    filtered = sample.scan(where={"status_class": "2xx", "model_id": Not("")})
    assert len(filtered) == int(
        ((everything.status_code // 100 == 2) & (everything.model_id != "")).sum()
    )
    whole = sample.scan()
    assert list(whole.columns) == list(everything.columns) and len(whole) == len(everything)
    empty = sample.scan("nobody", columns=["user_id", "timestamp"])
    assert empty.empty and list(empty.columns) == ["user_id", "timestamp"]
    assert empty["timestamp"].dtype == np.int64
    with pytest.raises(InvalidArgumentError, match="unknown column"):
        sample.scan(columns=["nope"])
    with pytest.raises(InvalidArgumentError, match="columns"):
        sample.scan(columns="timestamp")  # type: ignore[arg-type]


def test_scan_batches_stream_every_row_in_bounded_batches(
    sample: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usage_analytics import _reads

    monkeypatch.setattr(_reads, "BATCH_ROWS", 100)
    batches = list(sample.scan_batches(None, columns=["id", "tenant"]))
    assert all(isinstance(b, pa.RecordBatch) and b.num_rows <= 100 for b in batches)
    ids = pa.Table.from_batches(batches).column("id").to_pylist()
    assert sorted(ids) == sample.find_usages()["id"].tolist()
    assert batches[0].schema.field("tenant").type == pa.string()


def test_scan_batches_say_when_a_later_write_removed_a_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    store.create_usage(random_usage_frame(200, 1, days=3))
    stream = store.scan_batches()
    first = next(stream)
    assert first.num_rows
    store.delete_usage("2026-11-10")  # removes every file, those not reached yet too
    with pytest.raises(DatasetChangedError, match="start the scan again"):
        list(stream)


def test_rows_without_tokens_need_no_price_on_any_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    store.create_usage(
        rows(
            [
                {"model_id": "a", "timestamp": "2026-11-01T01:00Z", "prompt_tokens": 500_000},
                {"model_id": "", "api_method": "files", "timestamp": "2026-11-01T02:00Z"},
            ]
        )
    )
    prices = Prices.from_dict({"a": (2.0, 4.0)})
    for use in (True, False):
        store._use_rollups = use
        got = store.report(
            "t0", "2026-11-01", "2026-11-02", by="model_id", metrics=["cost"], prices=prices
        )
        assert got["cost"].tolist() == [0.0, 1.0]
        plan = store.report(
            "t0", "2026-11-01", "2026-11-02", metrics=["cost"], prices=prices, explain=True
        )
        assert set(plan["read"]) == ({"summary"} if use else {"scan"})


@pytest.mark.parametrize("negate", [False, True])
@pytest.mark.parametrize("values", [("b",), ("a", "c"), ("zz",), ()])
def test_a_filter_by_mask_keeps_the_rows_its_expression_keeps(
    values: tuple[str, ...], negate: bool
) -> None:
    """A filter on a dictionary column looks its values up in each chunk's dictionary; the
    rows it keeps are those of its pyarrow expression, chunk by chunk."""
    from usage_analytics.reports.spec import Filter

    chunks = [
        pa.array(["a", "b", "b", "c"]).dictionary_encode(),
        pa.array(["c", "d", "a"]).dictionary_encode(),  # a dictionary of its own
        pa.array([], pa.string()).dictionary_encode(),
    ]
    table = pa.table({"organization": pa.chunked_array(chunks), "n": list(range(7))})
    where = Filter("organization", values, negate)
    mask = where.mask(table)
    assert mask is not None
    assert table.filter(pa.array(mask)).equals(table.filter(where.expression()))
    # Other columns and filters go through the expression.
    assert Filter("status_class", ("2xx",)).mask(pa.table({"status_code": [200]})) is None
    plain = pa.table({"organization": pa.array(["a", None])})
    assert Filter("organization", ("a",)).mask(plain) is None


@pytest.mark.parametrize("ordered", [True, False])
def test_the_hours_of_an_hourly_summary_are_sliced_or_filtered_alike(ordered: bool) -> None:
    """The hours of an edge day are cut out of an hourly summary by a slice where its hours
    ascend, else by a mask: the same rows either way."""
    from usage_analytics.reports.engine import _hour_range

    rng = np.random.default_rng(5)
    hours = np.sort(rng.integers(100, 130, 300)) if ordered else rng.integers(100, 130, 300)
    table = pa.table({"hour": pa.array(hours, pa.int32()), "n": np.arange(300)})
    for first, last in ((100, 129), (105, 110), (90, 99), (131, 140), (110, 110)):
        got = _hour_range(table, first, last)
        want = table.filter(pa.array((hours >= first) & (hours <= last)))
        assert got.equals(want), (first, last)
