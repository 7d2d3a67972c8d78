"""usage_analytics.dask on a LocalCluster with worker processes: reports equal the store's
exactly, scans give the store's rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import usage_analytics.dask as ua_dask
from usage_analytics import InvalidArgumentError, Not, Prices, Store, UsageAnalyticsError, synthetic

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Six days in several loads (files with summaries, spans, and small files scanned)."""
    store = Store(tmp_path_factory.mktemp("dask") / "usage")
    store.auto_migrate()
    frame = synthetic.generate(40_000, start="2026-11-01", days=6, seed=21)
    store.create_usage(frame.iloc[:30_000])
    store.compact()
    store.create_usage(frame.iloc[30_000:39_000])
    for i in range(39_000, 39_040, 10):
        store.create_usage(frame.iloc[i : i + 10])
    return store


def prices(store: Store) -> Prices:
    models = sorted(set(store.find_usages()["model_id"]))
    return Prices.from_dict({m: (0.5 * (i + 1), 1.5 * (i + 1)) for i, m in enumerate(models)})


def cases(store: Store) -> list[tuple[Any, ...]]:
    tenant = store.find_usages()["tenant"].mode()[0]
    return [
        (
            None,
            "2026-11-01",
            "2026-11-07",
            {"by": "status_class", "every": "1d", "tz": "America/New_York"},
        ),
        (
            tenant,
            "2026-11-01T05:30:00Z",
            "2026-11-05T17:10:00Z",
            {
                "by": "model_id",
                "metrics": ["requests", "latency_ms_p50", "latency_ms_p99", "users", "cost"],
                "prices": prices(store),
            },
        ),
        (
            tenant,
            "2026-11-02",
            "2026-11-04T12:00:00Z",
            {"by": ["project", "api_method"], "every": "1h", "where": {"model_id": Not("")}},
        ),
        (
            tenant,
            "2026-11-01",
            "2026-11-07",
            {"by": "api_key_id", "top": 3, "order_by": "requests"},
        ),
    ]


@pytest.mark.parametrize("use_summaries", [True, False])
def test_reports_equal_the_stores_exactly(
    client: Any, store: Store, monkeypatch: pytest.MonkeyPatch, use_summaries: bool
) -> None:
    monkeypatch.setattr(ua_dask, "TASK_ROWS", 5_000)  # several scan tasks per report
    monkeypatch.setattr(store, "_use_rollups", use_summaries)
    for tenant, start, end, kwargs in cases(store):
        expected = store.report(tenant, start, end, **kwargs)
        got = ua_dask.report(store, tenant, start, end, client=client, **kwargs)
        assert len(expected), kwargs
        pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_the_plan_is_the_stores(client: Any, store: Store) -> None:
    args = ("2026-11-01", "2026-11-07")
    plan = ua_dask.report(store, None, *args, by="model_id", explain=True)
    pd.testing.assert_frame_equal(plan, store.report(None, *args, by="model_id", explain=True))


def test_scan_gives_the_rows_of_the_store(client: Any, store: Store) -> None:
    tenant = store.find_usages()["tenant"].mode()[0]
    args = (tenant, "2026-11-02T03:00:00Z", "2026-11-05")
    columns = ["timestamp", "id", "model_id", "prompt_tokens", "runtime_latency_ms"]
    frame = ua_dask.scan(store, *args, columns=columns, where={"status_code": [200, 500]})
    assert frame.npartitions > 1
    got = frame.compute().sort_values(["timestamp", "id"]).reset_index(drop=True)
    expected = store.scan(*args, columns=columns, where={"status_code": [200, 500]})
    # Strings come in Dask's string dtype; the other columns in the store's.
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True), check_dtype=False)
    numbers = [c for c in columns if c != "model_id"]
    assert (got[numbers].dtypes == expected[numbers].dtypes).all()
    empty = ua_dask.scan(store, tenant, "2020-01-01", "2020-01-02").compute()
    assert empty.empty and list(empty.columns) == list(
        store.scan(tenant, "2020-01-01", "2020-01-02").columns
    )


def test_without_a_client_the_error_says_how_to_start_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.auto_migrate()
    with pytest.raises(InvalidArgumentError, match=r"distributed\.Client"):
        ua_dask.report(store, None, 0, 1, client=5)
    try:
        distributed.get_client()
    except ValueError:
        with pytest.raises(UsageAnalyticsError, match="no Dask client"):
            ua_dask.report(store, None, 0, 1)


def test_a_compaction_under_the_workers_starts_the_report_again(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "s")
    store.auto_migrate()
    frame = synthetic.generate(600, start="2026-11-01", days=1, seed=4)
    for i in range(0, 600, 100):  # small files, which compaction merges (and removes)
        store.create_usage(frame.iloc[i : i + 100])
    plans: list[int] = []
    plan_tasks = ua_dask._reads.plan_tasks

    def compacting(*args: Any, **kwargs: Any) -> Any:
        out = plan_tasks(*args, **kwargs)
        plans.append(len(out[1]))
        if len(plans) == 1:
            assert store.compact() == 1  # the files the tasks name are gone
        return out

    monkeypatch.setattr(ua_dask._reads, "plan_tasks", compacting)
    got = ua_dask.report(store, None, "2026-11-01", "2026-11-02", by="model_id", client=client)
    assert len(plans) == 2
    monkeypatch.setattr(ua_dask._reads, "plan_tasks", plan_tasks)
    expected = store.report(None, "2026-11-01", "2026-11-02", by="model_id")
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_reports_and_scans_on_s3(client: Any, s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers open the dataset on S3 themselves, with the store's storage options."""
    monkeypatch.setattr(ua_dask, "TASK_ROWS", 2_000)
    remote = s3.store()
    remote.auto_migrate()
    frame = synthetic.generate(8_000, start="2026-11-01", days=3, seed=5)
    remote.create_usage(frame.iloc[:6_000])
    remote.create_usage(frame.iloc[6_000:])
    tenant = frame["tenant"].mode()[0]
    for kwargs in (
        {"by": "model_id", "every": "1d", "metrics": ["requests", "latency_ms_p95", "users"]},
        {"by": "api_method", "every": "1h", "tz": "America/New_York"},
    ):
        args = (tenant, "2026-11-01T06:00:00Z", "2026-11-03T20:00:00Z")
        expected = remote.report(*args, **kwargs)
        assert len(expected)
        got = ua_dask.report(remote, *args, client=client, **kwargs)
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
    columns = ["timestamp", "id", "prompt_tokens"]
    scanned = ua_dask.scan(remote, tenant, columns=columns).compute()
    expected = remote.scan(tenant, columns=columns)
    assert sorted(scanned["id"]) == sorted(expected["id"])
    assert scanned["prompt_tokens"].sum() == expected["prompt_tokens"].sum()
