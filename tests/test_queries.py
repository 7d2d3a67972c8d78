"""The two reports: the source system's own cases, windows, bounds and cross-checks."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from helpers import (
    DAY0,
    GROUP_COLUMNS,
    GROUP_DTYPES,
    NS_PER_DAY,
    SUMMARY_COLUMNS,
    SUMMARY_DTYPES,
    assert_report_equal,
    empty_groups,
    empty_summary,
    new_store,
    partition_dirs,
    random_usage_frame,
    reference_groups,
    reference_summary,
    snapshot_files,
    usage_frame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usage_analytics import Store, Summary, Usage, UsageByGroup

START = 1_610_000_000
END = START + 200


def _summary(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return frame.astype(SUMMARY_DTYPES)


def _groups(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(GROUP_COLUMNS))
    return frame.astype(GROUP_DTYPES)


def _source_usages() -> list[Usage]:
    """The seven rows of the source system's AggregatedUsage and GetUsagesByGroups tests."""
    spec = [
        # tenant, method, status, offset, latency, user, key, model, prompt, completion
        ("t0", "GetFoo", 200, 0, 100, "u0", "api_key0", "model0", 100, 100),
        ("t0", "GetFoo", 200, 50, 150, "u0", "api_key0", "model1", 100, 100),
        ("t0", "GetFoo", 404, 100, 200, "u1", "api_key0", "model0", 100, 100),
        ("t0", "UpdateFoo", 200, 150, 300, "u1", "api_key1", "model0", 100, 100),
        ("t0", "UpdateFoo", 200, 190, 100, "u1", "api_key1", "model0", 100, 100),
        ("t0", "UpdateFoo", 200, 200, 100, "u0", "api_key0", "model0", 1000, 1000),
        ("t1", "GetFoo", 404, 130, 200, "u10", "api_key10", "model0", 100, 100),
    ]
    return [
        Usage(
            tenant=tenant,
            api_method=method,
            status_code=status,
            timestamp=START + offset,
            latency_ms=latency,
            user_id=user,
            api_key_id=key,
            model_id=model,
            time_to_first_token_ms=10,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
        for tenant, method, status, offset, latency, user, key, model, prompt, completion in spec
    ]


@pytest.fixture
def source_store(tmp_path: Path) -> Store:
    store = new_store(tmp_path / "usage")
    assert store.create_usage(*_source_usages()) == 7
    return store


def test_aggregated_usage_source_case(source_store: Store) -> None:
    got = source_store.aggregated_usage("t0", START, END)
    expected = _summary([("GetFoo", 3, 2, 1, 150.0), ("UpdateFoo", 2, 2, 0, 200.0)])
    pd.testing.assert_frame_equal(got, expected)


def test_get_usages_by_groups_source_case(source_store: Store) -> None:
    got = source_store.get_usages_by_groups("t0", START, END)
    expected = _groups(
        [
            ("api_key0", "u0", "model0", 1, 100, 100, 100.0, 10.0),
            ("api_key0", "u0", "model1", 1, 100, 100, 150.0, 10.0),
            ("api_key0", "u1", "model0", 1, 100, 100, 200.0, 10.0),
            ("api_key1", "u1", "model0", 2, 200, 200, 200.0, 10.0),
        ]
    )
    pd.testing.assert_frame_equal(got, expected)


def test_source_case_other_tenant(source_store: Store) -> None:
    pd.testing.assert_frame_equal(
        source_store.aggregated_usage("t1", START, END), _summary([("GetFoo", 1, 0, 1, 200.0)])
    )
    pd.testing.assert_frame_equal(
        source_store.get_usages_by_groups("t1", START, END),
        _groups([("api_key10", "u10", "model0", 1, 100, 100, 200.0, 10.0)]),
    )


def test_source_case_window_widened_takes_the_out_of_range_row(source_store: Store) -> None:
    got = source_store.aggregated_usage("t0", START, END + 1)
    pd.testing.assert_frame_equal(
        got, _summary([("GetFoo", 3, 2, 1, 150.0), ("UpdateFoo", 3, 3, 0, 500 / 3)])
    )
    groups = source_store.get_usages_by_groups("t0", START, END + 1)
    first = groups.iloc[0]
    assert (first["api_key_id"], first["user_id"], first["model_id"]) == (
        "api_key0",
        "u0",
        "model0",
    )
    assert first["total_requests"] == 2
    assert first["total_prompt_tokens"] == 1100
    assert first["total_completion_tokens"] == 1100
    assert first["average_latency"] == 100.0


# -- windows over several partitions ---------------------------------------------------------


@pytest.fixture
def three_day_store(tmp_path: Path) -> Store:
    """Rows at known times over three UTC days, tenant t0 plus one row of t1."""
    store = new_store(tmp_path / "usage")
    rows = [
        dict(
            user_id="a",
            tenant="t0",
            api_method="M1",
            status_code=200,
            latency_ms=10,
            timestamp=DAY0,
        ),
        dict(
            user_id="a",
            tenant="t0",
            api_method="M1",
            status_code=500,
            latency_ms=20,
            timestamp=DAY0 + NS_PER_DAY // 2,
        ),
        dict(
            user_id="b",
            tenant="t0",
            api_method="M2",
            status_code=200,
            latency_ms=30,
            timestamp=DAY0 + NS_PER_DAY - 1,
        ),
        dict(
            user_id="b",
            tenant="t0",
            api_method="M1",
            status_code=200,
            latency_ms=40,
            timestamp=DAY0 + NS_PER_DAY,
        ),
        dict(
            user_id="c",
            tenant="t0",
            api_method="M2",
            status_code=201,
            latency_ms=50,
            timestamp=DAY0 + 2 * NS_PER_DAY + 5,
        ),
        dict(
            user_id="c",
            tenant="t1",
            api_method="M1",
            status_code=200,
            latency_ms=60,
            timestamp=DAY0 + NS_PER_DAY + 7,
        ),
    ]
    assert store.create_usage(rows) == 6
    assert partition_dirs(store.root) == [
        "date=2026-11-01",
        "date=2026-11-02",
        "date=2026-11-03",
    ]
    return store


def test_window_spanning_several_partitions(three_day_store: Store) -> None:
    got = three_day_store.aggregated_usage("t0", DAY0 + 1, DAY0 + 2 * NS_PER_DAY + 6)
    expected = _summary([("M1", 2, 1, 1, 30.0), ("M2", 2, 1, 1, 40.0)])
    pd.testing.assert_frame_equal(got, expected)
    everything = three_day_store.aggregated_usage("t0", DAY0, DAY0 + 3 * NS_PER_DAY)
    expected_all = _summary([("M1", 3, 2, 1, 70 / 3), ("M2", 2, 1, 1, 40.0)])
    pd.testing.assert_frame_equal(everything, expected_all)
    groups = three_day_store.get_usages_by_groups("t0", DAY0, DAY0 + 3 * NS_PER_DAY)
    expected_groups = _groups(
        [
            ("", "a", "", 2, 0, 0, 15.0, 0.0),
            ("", "b", "", 2, 0, 0, 35.0, 0.0),
            ("", "c", "", 1, 0, 0, 50.0, 0.0),
        ]
    )
    pd.testing.assert_frame_equal(groups, expected_groups)


def test_end_is_exclusive(three_day_store: Store) -> None:
    got = three_day_store.aggregated_usage("t0", DAY0, DAY0 + NS_PER_DAY)
    pd.testing.assert_frame_equal(got, _summary([("M1", 2, 1, 1, 15.0), ("M2", 1, 1, 0, 30.0)]))
    just_before = three_day_store.aggregated_usage("t0", DAY0, DAY0 + NS_PER_DAY - 1)
    pd.testing.assert_frame_equal(just_before, _summary([("M1", 2, 1, 1, 15.0)]))
    groups = three_day_store.get_usages_by_groups("t0", DAY0, DAY0 + NS_PER_DAY - 1)
    pd.testing.assert_frame_equal(groups, _groups([("", "a", "", 2, 0, 0, 15.0, 0.0)]))


def test_start_is_inclusive(three_day_store: Store) -> None:
    got = three_day_store.aggregated_usage("t0", DAY0 + NS_PER_DAY, DAY0 + NS_PER_DAY + 1)
    pd.testing.assert_frame_equal(got, _summary([("M1", 1, 1, 0, 40.0)]))
    after = three_day_store.aggregated_usage("t0", DAY0 + NS_PER_DAY + 1, DAY0 + 2 * NS_PER_DAY)
    pd.testing.assert_frame_equal(after, empty_summary())
    groups = three_day_store.get_usages_by_groups(
        "t0", DAY0 + NS_PER_DAY - 1, DAY0 + NS_PER_DAY + 1
    )
    pd.testing.assert_frame_equal(groups, _groups([("", "b", "", 2, 0, 0, 35.0, 0.0)]))


def test_empty_window_when_start_equals_end(three_day_store: Store) -> None:
    pd.testing.assert_frame_equal(
        three_day_store.aggregated_usage("t0", DAY0, DAY0), empty_summary()
    )
    pd.testing.assert_frame_equal(
        three_day_store.get_usages_by_groups("t0", DAY0, DAY0), empty_groups()
    )


def test_unknown_tenant_gives_empty_frames(three_day_store: Store) -> None:
    lo, hi = DAY0 - NS_PER_DAY, DAY0 + 10 * NS_PER_DAY
    summary = three_day_store.aggregated_usage("nobody", lo, hi)
    groups = three_day_store.get_usages_by_groups("nobody", lo, hi)
    pd.testing.assert_frame_equal(summary, empty_summary())
    pd.testing.assert_frame_equal(groups, empty_groups())
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert list(groups.columns) == list(GROUP_COLUMNS)
    assert three_day_store.aggregated_usage("T0", lo, hi).empty
    assert three_day_store.aggregated_usage("", lo, hi).empty


def test_window_outside_the_data_gives_empty_frames(three_day_store: Store) -> None:
    lo = DAY0 + 10 * NS_PER_DAY
    pd.testing.assert_frame_equal(
        three_day_store.aggregated_usage("t0", lo, lo + NS_PER_DAY), empty_summary()
    )
    pd.testing.assert_frame_equal(
        three_day_store.get_usages_by_groups("t0", 0, DAY0), empty_groups()
    )


def test_empty_store_gives_empty_frames(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    pd.testing.assert_frame_equal(store.aggregated_usage("t0", 0, 2**62), empty_summary())
    pd.testing.assert_frame_equal(store.get_usages_by_groups("t0", 0, 2**62), empty_groups())


def test_reports_do_not_change_files(three_day_store: Store) -> None:
    before = snapshot_files(three_day_store.root)
    three_day_store.aggregated_usage("t0", DAY0, DAY0 + 3 * NS_PER_DAY)
    three_day_store.get_usages_by_groups("t0", DAY0, DAY0 + 3 * NS_PER_DAY)
    assert snapshot_files(three_day_store.root) == before


# -- the accepted forms of a bound -----------------------------------------------------------

_LO = DAY0 + NS_PER_DAY // 4  # 2026-11-01 06:00 UTC
_HI = DAY0 + NS_PER_DAY  # 2026-11-02 00:00 UTC
_PLUS2 = dt.timezone(dt.timedelta(hours=2))

BOUND_FORMS: list[tuple[str, Any, Any]] = [
    ("int", _LO, _HI),
    ("numpy int", np.int64(_LO), np.int64(_HI)),
    ("naive datetime", dt.datetime(2026, 11, 1, 6), dt.datetime(2026, 11, 2)),
    (
        "utc datetime",
        dt.datetime(2026, 11, 1, 6, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
    ),
    (
        "offset datetime",
        dt.datetime(2026, 11, 1, 8, tzinfo=_PLUS2),
        dt.datetime(2026, 11, 2, 2, tzinfo=_PLUS2),
    ),
    ("naive Timestamp", pd.Timestamp("2026-11-01 06:00"), pd.Timestamp("2026-11-02")),
    (
        "aware Timestamp",
        pd.Timestamp("2026-11-01 15:00", tz="Asia/Tokyo"),
        pd.Timestamp("2026-11-02", tz="UTC"),
    ),
    ("ISO string", "2026-11-01T06:00:00", "2026-11-02"),
    ("ISO string with offset", "2026-11-01T08:00:00+02:00", "2026-11-02T00:00:00Z"),
    ("mixed", "2026-11-01 06:00", _HI),
]


@pytest.fixture
def bounds_store(tmp_path: Path) -> Store:
    store = new_store(tmp_path / "usage")
    rows = [
        dict(
            user_id="early",
            tenant="t0",
            api_method="A",
            status_code=200,
            latency_ms=1,
            timestamp=_LO - 1,
        ),
        dict(
            user_id="first",
            tenant="t0",
            api_method="A",
            status_code=200,
            latency_ms=2,
            timestamp=_LO,
        ),
        dict(
            user_id="mid",
            tenant="t0",
            api_method="B",
            status_code=503,
            latency_ms=4,
            timestamp=_LO + 3_600 * 10**9,
        ),
        dict(
            user_id="last",
            tenant="t0",
            api_method="A",
            status_code=200,
            latency_ms=6,
            timestamp=_HI - 1,
        ),
        dict(
            user_id="late",
            tenant="t0",
            api_method="B",
            status_code=200,
            latency_ms=8,
            timestamp=_HI,
        ),
    ]
    assert store.create_usage(rows) == 5
    return store


@pytest.mark.parametrize(("label", "start", "end"), BOUND_FORMS, ids=[f[0] for f in BOUND_FORMS])
def test_bound_forms_give_identical_results(
    bounds_store: Store, label: str, start: Any, end: Any
) -> None:
    expected_summary = _summary([("A", 2, 2, 0, 4.0), ("B", 1, 0, 1, 4.0)])
    expected_groups = _groups(
        [
            ("", "first", "", 1, 0, 0, 2.0, 0.0),
            ("", "last", "", 1, 0, 0, 6.0, 0.0),
            ("", "mid", "", 1, 0, 0, 4.0, 0.0),
        ]
    )
    pd.testing.assert_frame_equal(bounds_store.aggregated_usage("t0", start, end), expected_summary)
    pd.testing.assert_frame_equal(
        bounds_store.get_usages_by_groups("t0", start, end), expected_groups
    )


def test_aware_and_naive_bounds_differ_by_the_offset(bounds_store: Store) -> None:
    naive = bounds_store.aggregated_usage("t0", "2026-11-01T06:00:00", "2026-11-01T23:00:00")
    pd.testing.assert_frame_equal(naive, _summary([("A", 1, 1, 0, 2.0), ("B", 1, 0, 1, 4.0)]))
    # 06:00+05:00 is 01:00 UTC and 23:00+05:00 is 18:00 UTC: "early" is in, "mid" is in.
    aware = bounds_store.aggregated_usage(
        "t0", "2026-11-01T06:00:00+05:00", "2026-11-01T23:00:00+05:00"
    )
    pd.testing.assert_frame_equal(aware, _summary([("A", 2, 2, 0, 1.5), ("B", 1, 0, 1, 4.0)]))
    # Etc/GMT+5 is UTC-5: the window is [11:00, 24:00) UTC, so only "last" is in.
    west = bounds_store.get_usages_by_groups(
        "t0",
        pd.Timestamp("2026-11-01 06:00", tz="Etc/GMT+5"),
        pd.Timestamp("2026-11-01 19:00", tz="Etc/GMT+5"),
    )
    pd.testing.assert_frame_equal(west, _groups([("", "last", "", 1, 0, 0, 6.0, 0.0)]))


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (DAY0 + 1, DAY0),
        ("2026-11-02", "2026-11-01"),
        (dt.datetime(2026, 11, 1, 1), dt.datetime(2026, 11, 1)),
        # 00:30+01:00 is 23:30 UTC the day before: before the naive start.
        ("2026-11-01T00:00:00", "2026-11-01T00:30:00+01:00"),
    ],
)
@pytest.mark.parametrize("report", ["aggregated_usage", "get_usages_by_groups"])
def test_end_before_start_raises(bounds_store: Store, report: str, start: Any, end: Any) -> None:
    with pytest.raises(ValueError):
        getattr(bounds_store, report)("t0", start, end)


# -- randomized cross-checks against pandas and DuckDB ---------------------------------------

TENANTS = ("t0", "t1", "t2")


@pytest.fixture(scope="module")
def random_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, pd.DataFrame]:
    store = new_store(tmp_path_factory.mktemp("queries") / "usage")
    frame = random_usage_frame(900, seed=20261101, days=5, tenants=TENANTS)
    for part in np.array_split(np.arange(len(frame)), 3):
        assert store.create_usage(frame.iloc[part]) == len(part)
    assert len(partition_dirs(store.root)) == 5
    rows = store.find_usages()
    assert len(rows) == len(frame)
    return store, rows


def _duckdb_summary(root: Path, tenant: str, lo: int, hi: int) -> pd.DataFrame:
    sql = f"""
        select api_method,
               count(*)::bigint as total_requests,
               sum(case when status_code = 200 then 1 else 0 end)::bigint as success_requests,
               sum(case when status_code <> 200 then 1 else 0 end)::bigint as failure_requests,
               avg(latency_ms)::double as average_latency
        from read_parquet('{root}/*/*.parquet', hive_partitioning=true)
        where tenant = ? and timestamp >= ? and timestamp < ?
        group by api_method order by api_method
    """
    with duckdb.connect() as con:
        return con.execute(sql, [tenant, lo, hi]).df()


def _duckdb_groups(root: Path, tenant: str, lo: int, hi: int) -> pd.DataFrame:
    sql = f"""
        select api_key_id, user_id, model_id,
               count(*)::bigint as total_requests,
               sum(prompt_tokens)::bigint as total_prompt_tokens,
               sum(completion_tokens)::bigint as total_completion_tokens,
               avg(latency_ms)::double as average_latency,
               avg(time_to_first_token_ms)::double as average_time_to_first_token
        from read_parquet('{root}/*/*.parquet', hive_partitioning=true)
        where tenant = ? and timestamp >= ? and timestamp < ?
        group by api_key_id, user_id, model_id
        order by api_key_id, user_id, model_id
    """
    with duckdb.connect() as con:
        return con.execute(sql, [tenant, lo, hi]).df()


def _assert_matches_duckdb(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns) == list(expected.columns)
    assert len(actual) == len(expected)
    for name in expected.columns:
        want = expected[name].tolist()
        got = actual[name].tolist()
        if name.startswith("average"):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
        else:
            assert got == want, name


def _check_window(store: Store, rows: pd.DataFrame, tenant: str, lo: int, hi: int) -> None:
    summary = store.aggregated_usage(tenant, lo, hi)
    groups = store.get_usages_by_groups(tenant, lo, hi)
    assert_report_equal(summary, reference_summary(rows, tenant, lo, hi))
    assert_report_equal(groups, reference_groups(rows, tenant, lo, hi))
    _assert_matches_duckdb(summary, _duckdb_summary(store.root, tenant, lo, hi))
    _assert_matches_duckdb(groups, _duckdb_groups(store.root, tenant, lo, hi))
    selected = rows[
        (rows["tenant"] == tenant) & (rows["timestamp"] >= lo) & (rows["timestamp"] < hi)
    ]
    assert summary["total_requests"].sum() == len(selected)
    assert groups["total_requests"].sum() == len(selected)


def test_whole_range_matches_pandas_and_duckdb(
    random_store: tuple[Store, pd.DataFrame],
) -> None:
    store, rows = random_store
    for tenant in TENANTS:
        _check_window(store, rows, tenant, DAY0, DAY0 + 5 * NS_PER_DAY)
        summary = store.aggregated_usage(tenant, DAY0, DAY0 + 5 * NS_PER_DAY)
        assert len(summary) == 4
        assert summary["total_requests"].sum() == (rows["tenant"] == tenant).sum()


def test_seeded_random_windows_match_pandas_and_duckdb(
    random_store: tuple[Store, pd.DataFrame],
) -> None:
    store, rows = random_store
    rng = np.random.default_rng(7)
    stamps = rows["timestamp"].to_numpy()
    for _ in range(10):
        lo, hi = sorted(int(v) for v in rng.choice(stamps, size=2, replace=False))
        tenant = str(rng.choice(TENANTS))
        _check_window(store, rows, tenant, lo, hi)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    tenant=st.sampled_from([*TENANTS, "t9"]),
    lo=st.integers(DAY0 - NS_PER_DAY, DAY0 + 6 * NS_PER_DAY),
    width=st.one_of(
        st.integers(0, NS_PER_DAY // 10),
        st.integers(0, 3 * NS_PER_DAY),
        st.sampled_from([0, 1, NS_PER_DAY, 7 * NS_PER_DAY]),
    ),
    align=st.booleans(),
)
def test_hypothesis_windows_match_pandas_and_duckdb(
    random_store: tuple[Store, pd.DataFrame], tenant: str, lo: int, width: int, align: bool
) -> None:
    store, rows = random_store
    if align:
        lo = DAY0 + (lo - DAY0) // NS_PER_DAY * NS_PER_DAY
    _check_window(store, rows, tenant, lo, lo + width)


# -- from_frame round trips ------------------------------------------------------------------


def test_summary_from_frame_round_trip(source_store: Store) -> None:
    frame = source_store.aggregated_usage("t0", START, END)
    records = Summary.from_frame(frame)
    assert records == [
        Summary(
            api_method="GetFoo",
            total_requests=3,
            success_requests=2,
            failure_requests=1,
            average_latency=150.0,
        ),
        Summary(
            api_method="UpdateFoo",
            total_requests=2,
            success_requests=2,
            failure_requests=0,
            average_latency=200.0,
        ),
    ]
    rebuilt = pd.DataFrame([dataclasses.asdict(r) for r in records]).astype(SUMMARY_DTYPES)
    pd.testing.assert_frame_equal(rebuilt, frame)


def test_usage_by_group_from_frame_round_trip(source_store: Store) -> None:
    frame = source_store.get_usages_by_groups("t0", START, END)
    records = UsageByGroup.from_frame(frame)
    assert len(records) == 4
    assert records[3] == UsageByGroup(
        api_key_id="api_key1",
        user_id="u1",
        model_id="model0",
        total_requests=2,
        total_prompt_tokens=200,
        total_completion_tokens=200,
        average_latency=200.0,
        average_time_to_first_token=10.0,
    )
    rebuilt = pd.DataFrame([dataclasses.asdict(r) for r in records]).astype(GROUP_DTYPES)
    pd.testing.assert_frame_equal(rebuilt, frame)


def test_from_frame_of_empty_reports(source_store: Store) -> None:
    assert Summary.from_frame(source_store.aggregated_usage("nobody", START, END)) == []
    assert UsageByGroup.from_frame(source_store.get_usages_by_groups("nobody", START, END)) == []


def test_reports_accept_rows_built_as_a_frame(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    frame = usage_frame(
        [
            dict(
                user_id="x",
                tenant="t",
                api_method="Z",
                status_code=200,
                latency_ms=7,
                timestamp=DAY0,
            ),
            dict(
                user_id="x",
                tenant="t",
                api_method="Y",
                status_code=0,
                latency_ms=9,
                timestamp=DAY0 + 1,
            ),
        ]
    )
    assert store.create_usage(frame) == 2
    got = store.aggregated_usage("t", "2026-11-01", "2026-11-02")
    pd.testing.assert_frame_equal(got, _summary([("Y", 1, 0, 1, 9.0), ("Z", 1, 1, 0, 7.0)]))
