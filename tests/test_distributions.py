"""The distribution grains (``latency``, ``ttft``): exact value-to-count histograms of latency and
time to first token per model, kept for days (not single files), so that percentiles over
whole days read summaries, and give exactly the percentiles of the rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from helpers import DAY0, NS_PER_DAY, new_store, random_usage_frame

from usage_analytics import Store, _layout
from usage_analytics._storage import files as summary_files
from usage_analytics._summaries import span_kinds
from usage_analytics.reports import grains

PERCENTILES = ["latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "time_to_first_token_ms_p95"]
DISTRIBUTIONS = ("latency", "ttft")


def _frame(n: int, seed: int, start: int, days: int) -> pd.DataFrame:
    frame = random_usage_frame(n, seed, start=start, days=days, tenants=("t0", "t1"))
    rng = np.random.default_rng(seed)
    n = len(frame)
    # Latencies of a wide range, most of them among a few hundred values (so that a day's
    # distribution is much smaller than its rows), with ties and zeros.
    common = rng.integers(0, 300, n) * 7
    rare = rng.lognormal(8, 1.5, n).astype(np.int64) % 300_000
    frame["latency_ms"] = np.where(rng.random(n) < 0.05, rare, common).astype(np.int32)
    frame["time_to_first_token_ms"] = (frame["latency_ms"] // 3).astype(np.int32)
    return frame


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Five days, of three files each (a load a third of a day at a time), and a sixth day of
    a single file."""
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", float("inf"))  # at this size, too
    store = new_store(tmp_path / "usage")
    third = NS_PER_DAY // 3
    for part in range(12):
        store.create_usage(_frame(1_200, part, DAY0 + part * third, 1), on_conflict="ignore")
    store.create_usage(_frame(1_500, 99, DAY0 + 4 * NS_PER_DAY, 1), on_conflict="ignore")
    store.create_usage(_frame(10, 100, DAY0 + 5 * NS_PER_DAY, 1), on_conflict="ignore")
    return store


def _expected(rows: pd.DataFrame, tenant: str, start: int, end: int) -> pd.DataFrame:
    """The percentiles per model of the rows, by pandas (linear interpolation)."""
    rows = rows[
        (rows["tenant"] == tenant) & (rows["timestamp"] >= start) & (rows["timestamp"] < end)
    ]
    by = rows.groupby("model_id")
    out = pd.DataFrame(
        {
            "latency_ms_p50": by["latency_ms"].quantile(0.5),
            "latency_ms_p95": by["latency_ms"].quantile(0.95),
            "latency_ms_p99": by["latency_ms"].quantile(0.99),
            "time_to_first_token_ms_p95": by["time_to_first_token_ms"].quantile(0.95),
        }
    )
    return out.reset_index().astype({"model_id": "str"})


def test_a_distribution_summary_is_the_exact_value_count_sorted_by_its_keys() -> None:
    rows = _frame(5_000, 1, DAY0, 1)
    for name, column in (("latency", "latency_ms"), ("ttft", "time_to_first_token_ms")):
        table = grains.rollup(name, rows).to_pandas()
        keys = ["tenant", "model_id", column]
        expected = rows.groupby(keys).size().rename("total_requests").reset_index()
        got = table.astype({"tenant": str, "model_id": str}).astype({column: np.int64})
        expected = expected.astype({column: np.int64})
        assert got[keys].equals(got[keys].sort_values(keys, ignore_index=True))
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
        # Halves combine into the summary of the whole, values that both hold added up.
        halves = [grains.rollup(name, rows.iloc[:2_000]), grains.rollup(name, rows.iloc[2_000:])]
        combined = grains.combine(name, halves).to_pandas()
        pd.testing.assert_frame_equal(
            combined.astype({"tenant": str, "model_id": str}).astype({column: np.int64}),
            expected,
            check_dtype=False,
        )


def test_distributions_are_kept_for_days_not_files(store: Store) -> None:
    snap = store._ds.snapshot()
    for entry in snap.files:
        assert not set(DISTRIBUTIONS) & set(entry.sidecars)
    days = {(sp.first_day, sp.last_day): sp for sp in snap.spans}
    first = snap.files[0].day
    for day in range(first, first + 5):  # the single-file day too
        assert set(DISTRIBUTIONS) <= set(days[(day, day)].kinds), day
    for span in snap.spans:
        if span.last_day > span.first_day:
            assert not set(DISTRIBUTIONS) & set(span.kinds)
    assert set(DISTRIBUTIONS) <= set(span_kinds(1))
    assert not set(DISTRIBUTIONS) & set(span_kinds(2))
    assert store.verify().empty


@pytest.mark.parametrize(
    ("first", "last", "cut"), [(0, 5, 0), (1, 3, 0), (0, 4, NS_PER_DAY // 7), (2, 2, 3_600)]
)
def test_percentiles_read_day_distributions_and_equal_the_rows(
    store: Store, first: int, last: int, cut: int
) -> None:
    start, end = DAY0 + first * NS_PER_DAY + cut, DAY0 + (last + 1) * NS_PER_DAY - cut
    rows = store.find_usages()
    for tenant in ("t0", "t1"):
        plan = store.report(tenant, start, end, by="model_id", metrics=PERCENTILES, explain=True)
        reads = plan[plan["read"] == "summary"]
        assert reads["grain"].str.contains("latency").all()
        assert reads["grain"].str.contains("ttft").all()
        whole_days = last - first + 1 - (2 if cut else 0)
        assert len(reads) >= min(whole_days, 5 - first), plan
        got = store.report(tenant, start, end, by="model_id", metrics=PERCENTILES)
        store._use_rollups = False
        try:
            scanned = store.report(tenant, start, end, by="model_id", metrics=PERCENTILES)
        finally:
            store._use_rollups = True
        pd.testing.assert_frame_equal(got, scanned)
        pd.testing.assert_frame_equal(got, _expected(rows, tenant, start, end), check_dtype=False)


def test_a_damaged_distribution_is_reported_by_verify(store: Store) -> None:
    span = next(sp for sp in store._ds.snapshot().spans if "latency" in sp.kinds)
    path = store.root / span.path("latency")
    table = summary_files.read_summary(path, None)
    counts = np.asarray(table.column("total_requests").to_numpy(), dtype=np.int64).copy()
    counts[-1] += 1
    index = table.column_names.index("total_requests")
    summary_files.write_summary(table.set_column(index, "total_requests", pa.array(counts)), path)
    problems = store.verify()
    assert problems[["kind", "problem"]].values.tolist() == [
        ["latency", "differs from the summary of its rows"]
    ]
    assert problems["piece"].iloc[0].startswith("span ")


def test_summary_files_stay_small_beside_the_rows(tmp_path: Path) -> None:
    # With the default size rules: a histogram row takes a few bytes, a data row about twenty.
    store = new_store(tmp_path / "usage")
    for part in range(6):
        frame = _frame(20_000, part, DAY0 + part * (NS_PER_DAY // 3), 1)
        store.create_usage(frame, on_conflict="ignore")
    snap = store._ds.snapshot()
    data = sum((store.root / e.path).stat().st_size for e in snap.files)
    spans = [sp for sp in snap.spans if "latency" in sp.kinds]
    assert spans  # the days' distributions are kept at this size
    kept = sum((store.root / sp.path(k)).stat().st_size for sp in spans for k in DISTRIBUTIONS)
    assert kept < 0.25 * data
    got = store.report("t0", DAY0, DAY0 + 2 * NS_PER_DAY, by="model_id", metrics=PERCENTILES)
    expected = _expected(store.find_usages(), "t0", DAY0, DAY0 + 2 * NS_PER_DAY)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_a_load_of_many_days_gives_each_day_its_distributions_in_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One commit of a batch (one file) per day: the days before the last batch's get their
    # spans in the commit, from the summaries the load computed (kept compressed meanwhile),
    # with the distributions, though no file has one of its own.
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", float("inf"))
    store = new_store(tmp_path / "usage")
    frames = [_frame(1_500, 200 + day, DAY0 + day * NS_PER_DAY, 1) for day in range(4)]
    assert store.create_usage_batches(iter(frames)) == sum(len(f) for f in frames)
    snap = store._ds.snapshot()
    assert len(snap.files) == 4 and len(store.history()) == 2  # the migration and the load
    days = {(sp.first_day, sp.last_day): sp for sp in snap.spans}
    first = min(e.day for e in snap.files)
    for day in range(first, first + 3):
        assert set(DISTRIBUTIONS) <= set(days[(day, day)].kinds), day
    assert store.verify().empty
    start, end = DAY0, DAY0 + 3 * NS_PER_DAY
    plan = store.report("t0", start, end, by="model_id", metrics=PERCENTILES, explain=True)
    assert (plan["read"] == "summary").all(), plan
    got = store.report("t0", start, end, by="model_id", metrics=PERCENTILES)
    expected = _expected(store.find_usages(), "t0", start, end)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
