"""Other engines: Store.to_duckdb and Store.to_polars give exactly one committed state, in the
current schema, after an upgrade, a delete that rewrites a partition and compaction; and
pandas, pyarrow.dataset, DuckDB, Polars, Dask and Spark read the files of the snapshot (and,
where they can, its Delta log) row for row as the store does, and agree with its reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import deltalake
import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as pads
import pytest
from _crash_worker import DAY, T0, batch, make_v1

from usage_analytics import COLUMNS, Store, UsageAnalyticsError
from usage_analytics.schema import ADDED_IN_V2

STAGES = ("upgraded", "deleted", "compacted")


def at_stage(root: Path, stage: str, *, rewritten: bool = False) -> Store:
    """A version-1 dataset, upgraded as earlier versions did (the schema alone, its files left
    in version 1, as after an upgrade interrupted before it rewrote them), or with
    ``rewritten`` by ``auto_migrate()``, with new rows (and their runtime columns) added; then a
    delete that rewrites a partition; then compaction."""
    make_v1(root)
    store = Store(root)
    if rewritten:
        store.auto_migrate()
    else:
        store._ds.create()
    new = batch(9, days=(1, 2))
    new["runtime_latency_ms"] = 7
    new["runtime_time_to_first_token_ms"] = 3
    store.create_usage(new)
    if stage in ("deleted", "compacted"):
        assert store.delete_usage(T0 + DAY + 3 * 60_000_000_000 + 5_000_000) > 0
    if stage == "compacted":
        assert store.compact() >= 1
    return store


def by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("id").reset_index(drop=True)


def as_stored(frame: pd.DataFrame) -> pd.DataFrame:
    """Another engine's rows with the dtypes the store's frames have (strings as str)."""
    out = frame.copy()
    for name in out.columns:
        if out[name].dtype == object or pd.api.types.is_string_dtype(out[name]):
            out[name] = out[name].astype("str")
    out["created_at"] = out["created_at"].dt.tz_convert("UTC")
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_duckdb_and_polars_read_the_rows_the_store_reads(tmp_path: Path, stage: str) -> None:
    store = at_stage(tmp_path / "usage", stage)
    expected = by_id(store.find_usages())
    if stage != "compacted":  # old files are still there, without the runtime columns
        versions = {e.schema_version for e in store._ds.snapshot().files}
        assert versions == {1, 2}
    assert (expected.loc[expected["id"] <= 30, list(ADDED_IN_V2)] == 0).all().all()
    assert (expected.loc[expected["id"] > 30, "runtime_latency_ms"] == 7).all()
    from_duckdb = by_id(as_stored(store.to_duckdb().df()))
    from_polars = by_id(as_stored(store.to_polars().collect().to_pandas()))
    for got in (from_duckdb, from_polars):
        assert list(got.columns) == list(COLUMNS)
        pd.testing.assert_frame_equal(got, expected, check_dtype=True)


@pytest.mark.parametrize("stage", STAGES)
def test_a_report_over_the_relation_equals_the_stores(tmp_path: Path, stage: str) -> None:
    store = at_stage(tmp_path / "usage", stage)
    tenant = store.find_usages()["tenant"].mode()[0]
    report = store.report(
        tenant,
        0,
        2**63,
        by="model_id",
        metrics=["requests", "prompt_tokens", "runtime_latency_ms_mean"],
    )
    con = duckdb.connect()
    store.to_duckdb(con).create_view("usage")
    sql = con.sql(
        "SELECT model_id, count(*) AS requests, sum(prompt_tokens) AS prompt_tokens, "
        "avg(runtime_latency_ms) AS runtime_latency_ms_mean FROM usage WHERE tenant = $t "
        "GROUP BY model_id ORDER BY model_id",
        params={"t": tenant},
    ).df()
    got = report[["model_id", "requests", "prompt_tokens", "runtime_latency_ms_mean"]]
    got = got.sort_values("model_id").reset_index(drop=True)
    assert got["requests"].tolist() == sql["requests"].tolist()
    assert got["prompt_tokens"].tolist() == sql["prompt_tokens"].tolist()
    means = sql["runtime_latency_ms_mean"].tolist()
    assert got["runtime_latency_ms_mean"].tolist() == pytest.approx(means, rel=1e-12)
    assert any(means)  # rows of before the upgrade read zeros, later ones 7
    polars = (
        store.to_polars()
        .filter(pl.col("tenant") == tenant)
        .group_by("model_id")
        .agg(pl.col("prompt_tokens").sum())
        .sort("model_id")
        .collect()
    )
    assert polars["prompt_tokens"].to_list() == sql["prompt_tokens"].tolist()


def test_each_reads_the_snapshot_it_was_made_from(tmp_path: Path) -> None:
    store = at_stage(tmp_path / "usage", "upgraded")
    before = len(store.find_usages())
    rel, lazy = store.to_duckdb(duckdb.connect()), store.to_polars()
    store.create_usage(batch(11, days=(4,)))
    assert rel.aggregate("count(*)").fetchall() == [(before,)]
    assert lazy.select(pl.len()).collect().item() == before
    assert store.to_duckdb().aggregate("count(*)").fetchall() == [(before + 10,)]


def test_an_empty_store_gives_no_rows_with_every_column(tmp_path: Path) -> None:
    store = Store(tmp_path / "empty")
    store.auto_migrate()
    rel = store.to_duckdb()
    assert rel.columns == list(COLUMNS) and rel.aggregate("count(*)").fetchall() == [(0,)]
    lazy = store.to_polars().collect()
    assert lazy.columns == list(COLUMNS) and lazy.height == 0
    assert lazy.schema["status_code"] == pl.Int32
    assert rel.types[list(COLUMNS).index("status_code")] == "INTEGER"


@pytest.mark.parametrize("module", ["duckdb", "polars"])
def test_a_missing_engine_is_an_error_that_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    store = Store(tmp_path / "s")
    store.auto_migrate()
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(UsageAnalyticsError, match=f"pip install {module}"):
        store.to_duckdb() if module == "duckdb" else store.to_polars()


# ---------------------------------------------------------------------------------------------
# Every engine, after each stage of a dataset's life: row for row, and on a report.


#: Where ``make spark`` installs pyspark, outside the test environment (see _spark_worker).
PYSPARK_DIR = Path(
    os.environ.get(
        "USAGE_ANALYTICS_PYSPARK", Path(__file__).resolve().parent.parent / ".venv/pyspark"
    )
)


class Spark:
    """A local Spark session in a worker process (``tests/_spark_worker.py``)."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        env = dict(os.environ, PYTHONPATH=str(PYSPARK_DIR))
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_spark_worker.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._answer("ready")
        self._reads = 0

    def _answer(self, expected: str) -> None:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if line != expected:
            raise AssertionError(f"the Spark worker answered {line and json.loads(line)!s}")

    def read_parquet(self, files: list[str]) -> pd.DataFrame:
        """The rows of ``files``, as Spark's ``read.parquet(...).toPandas()`` gives them."""
        self._reads += 1
        out = self._workdir / f"spark-{self._reads}.parquet"
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"files": files, "out": str(out)}) + "\n")
        self._proc.stdin.flush()
        self._answer("ok")
        return pd.read_parquet(out)

    def stop(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spark]:
    """Spark (pyspark from ``make spark``, with the machine's Java), in a process of its own."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs Java 17 or newer: apt-get install openjdk-17-jre-headless")
    if not (PYSPARK_DIR / "pyspark").is_dir():
        pytest.skip(f"pyspark is not installed in {PYSPARK_DIR}: run make spark")
    session = Spark(tmp_path_factory.mktemp("spark"))
    yield session
    session.stop()


def normalized(frame: pd.DataFrame) -> pd.DataFrame:
    """An engine's rows in the store's columns, with plain values: ints, str and UTC times
    in microseconds, ordered by id."""
    out = pd.DataFrame({name: frame[name] for name in COLUMNS})
    for name in COLUMNS:
        if name == "created_at":
            out[name] = pd.to_datetime(out[name], utc=True).dt.as_unit("us").astype("int64")
        elif pd.api.types.is_integer_dtype(out[name]):
            out[name] = out[name].astype("int64")
        else:
            out[name] = out[name].astype("str")
    return out.sort_values("id").reset_index(drop=True)


def engine_rows(engine: str, store: Store, spark: Any) -> pd.DataFrame:
    files = [str(f) for f in store.files()]
    if engine == "pandas":
        return pd.read_parquet(files)
    if engine == "pyarrow.dataset":
        return pads.dataset(files, format="parquet").to_table().to_pandas()
    if engine == "duckdb":
        return duckdb.read_parquet(files).df()
    if engine == "duckdb over the delta log":
        return duckdb.from_arrow(deltalake.DeltaTable(str(store.root)).to_pyarrow_dataset()).df()
    if engine == "polars":
        return pl.scan_parquet(files).collect().to_pandas()
    if engine == "polars scan_delta":
        return pl.scan_delta(str(store.root)).collect().to_pandas()
    if engine == "dask":
        return dd.read_parquet(files).compute()
    assert engine == "spark"
    return spark.read_parquet(files)


ENGINES = [
    "pandas",
    "pyarrow.dataset",
    "duckdb",
    "duckdb over the delta log",
    "polars",
    "polars scan_delta",
    "dask",
    "spark",
]


@pytest.mark.filterwarnings("ignore:.*inplace")
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_reads_the_store_row_for_row_and_on_a_report(
    tmp_path: Path, request: pytest.FixtureRequest, engine: str, stage: str
) -> None:
    session = request.getfixturevalue("spark") if engine == "spark" else None
    store = at_stage(tmp_path / "usage", stage, rewritten=True)
    expected = normalized(store.find_usages())
    got = normalized(engine_rows(engine, store, session))
    pd.testing.assert_frame_equal(got, expected)
    assert (expected["runtime_latency_ms"] == 7).any()  # the runtime columns, read by all
    tenant = expected["tenant"].mode()[0]
    report = store.report(tenant, 0, 2**63, by="model_id", metrics=["requests", "prompt_tokens"])
    mine = got[got["tenant"] == tenant].groupby("model_id")["prompt_tokens"].agg(["size", "sum"])
    assert report["model_id"].tolist() == mine.index.tolist()
    assert report["requests"].tolist() == mine["size"].tolist()
    assert report["prompt_tokens"].tolist() == mine["sum"].tolist()
