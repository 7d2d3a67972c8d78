"""The benchmark runs end to end at a tiny size and records every section (no timing asserts)."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest

from benchmarks import run
from benchmarks._engines import ResultMismatchError, check_same
from benchmarks._report import render
from benchmarks._shapes import SHAPES, check_same_frame
from usage_analytics._storage import dataset
from usage_analytics._summaries import KINDS

ENGINES = ("store", "duckdb", "sqlite")
WINDOWS = ("a", "b", "c")
QUERIES = ("aggregated_usage", "get_usages_by_groups")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("bench")
    out = base / "result.json"
    with pytest.MonkeyPatch.context() as mp:
        # Checkpoints in the log, as a 10M-row run has: other engines glob data files only.
        mp.setattr(dataset, "CHECKPOINT_EVERY", 3)
        code = run.main(
            [
                "--rows",
                "20000",
                "--days",
                "3",
                "--batch-size",
                "5000",
                "--repeats",
                "1",
                "--single-appends",
                "5",
                "--small-appends",
                "50",
                "--load-rows",
                "3000",
                "--load-repeats",
                "1",
                "--sqlite",
                "--many-files",
                "60",
                "--workdir",
                str(base / "work"),
                "--out",
                str(out),
            ]
        )
    assert code == 0
    data: dict[str, Any] = json.loads(out.read_text())
    data["_out"] = str(out)
    return data


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_every_section_is_present(result: dict[str, Any]) -> None:
    for section in (
        "machine",
        "parameters",
        "windows",
        "dataset",
        "ingest",
        "sqlite_load",
        "queries",
        "shapes",
        "rss",
        "delete",
        "single_append",
        "small_appends",
        "high_cardinality",
        "load",
        "targets",
    ):
        assert section in result, section
    for key in ("platform", "cpu_count", "python", "pandas", "pyarrow", "duckdb", "date"):
        assert result["machine"][key], key


def test_load_of_a_csv_against_duckdb(result: dict[str, Any]) -> None:
    load = result["load"]
    assert load["rows"] == 3000 and load["csv_bytes"] > 0
    for loader in ("store", "duckdb"):
        assert load[loader]["rows_loaded"] == [3000], loader
        assert _positive(load[loader]["rows_per_s"]) and _positive(load[loader]["peak_mib"])
    names = [t["target"] for t in result["targets"]]
    assert "load of a 3,000-row CSV >= 0.5x DuckDB's COPY to Parquet" in names
    assert "load of a 3,000-row CSV: peak RSS < 512 MiB" in names
    assert "Loading one CSV export" in render(result)


def test_ingest_and_dataset(result: dict[str, Any]) -> None:
    ingest = result["ingest"]
    assert ingest["rows"] == 20_000
    for writer in ("store", "pyarrow"):
        for key in ("seconds", "rows_per_s", "files", "bytes"):
            assert _positive(ingest[writer][key]), (writer, key)
    assert _positive(ingest["store_over_pyarrow"])
    assert result["dataset"]["rows"] == 20_000
    assert ingest["store"]["files"] == result["dataset"]["files"]  # data files, not the log's
    assert 0 < result["dataset"]["busiest_tenant_rows"] <= 20_000


def test_summary_sizes(result: dict[str, Any]) -> None:
    sizes = result["dataset"]["summaries"]
    assert sizes["data_bytes"] == result["ingest"]["store"]["bytes"]
    assert sizes["summary_bytes"] == sum(sizes["by_kind"].values()) > 0
    assert set(sizes["by_kind"]) <= set(KINDS)
    assert sizes["summary_over_data"] == sizes["summary_bytes"] / sizes["data_bytes"]
    variant = result["high_cardinality"]
    assert variant["rows"] == 6_000
    assert variant["profile"]["n_api_keys"] == 4000
    assert _positive(variant["data_bytes"]) and variant["summary_bytes"] >= 0
    titles = {t["target"]: t for t in result["targets"]}
    for label in ("benchmark data", "high-cardinality variant"):
        assert titles[f"summaries <= 0.5x data bytes, {label}"]["status"] in {"MET", "NOT MET"}


def test_queries_checked_for_every_engine(result: dict[str, Any]) -> None:
    for query in QUERIES:
        for window in WINDOWS:
            cells = result["queries"][query][window]
            for engine in ENGINES:
                assert cells[engine]["checked"] is True, (query, window, engine)
                assert _positive(cells[engine]["median_s"]), (query, window, engine)
            assert set(cells["store"]["checked_against"]) == {"duckdb", "sqlite"}
            assert _positive(cells["store"]["result_rows"])
            assert _positive(cells["duckdb_over_store"])
            assert _positive(cells["sqlite_over_store"])


def test_report_shapes_checked_and_timed(result: dict[str, Any]) -> None:
    shapes = result["shapes"]
    assert set(shapes["shapes"]) == set(SHAPES)
    for name, shape in shapes["shapes"].items():
        assert set(shape["windows"]) == {"a", "b", "c", "d"}, name
        for window, cell in shape["windows"].items():
            assert _positive(cell["store"]["median_s"]), (name, window)
            assert _positive(cell["duckdb_over_store"]), (name, window)
            assert cell["result_rows"] > 0, (name, window)
        for window in ("a", "b", "d"):
            rss = shapes["rss"][name][window]
            assert rss["peak_mib"] >= rss["after_imports_mib"] > 0, (name, window)
    titles = [t["target"] for t in result["targets"]]
    assert sum("inside one day" in t for t in titles) == len(SHAPES)
    assert sum("(unaligned): store <= 1x" in t for t in titles) == len(SHAPES)
    for number in range(1, len(SHAPES) + 1):
        wanted = "3" if number in (3, 4) else "10"
        for window in ("a", "b"):
            assert f"shape {number} {window}: store >= {wanted}x faster than DuckDB" in titles
        assert f"shape {number}: peak RSS of a <= 1.25x that of b" in titles


def test_shape_results_must_match_duckdb() -> None:
    frame = pd.DataFrame(
        {
            "bucket": pd.DatetimeIndex(["2026-11-01"], tz="UTC"),
            "model_id": pd.Series(["m"], dtype="str"),
            "requests": [3],
            "error_rate": [float("nan")],
        }
    )
    other = frame.assign(bucket=[1_793_491_200_000_000_000])
    check_same_frame(frame, other, "same")
    for column, value in (("requests", [4]), ("error_rate", [0.5]), ("bucket", [0])):
        with pytest.raises(ResultMismatchError):
            check_same_frame(frame, other.assign(**{column: value}), column)


def test_rss(result: dict[str, Any]) -> None:
    for query in QUERIES:
        for window in ("a", "b"):
            cell = result["rss"]["queries"][query][window]
            assert _positive(cell["after_imports_mib"])
            assert cell["peak_mib"] >= cell["after_imports_mib"]


def test_delete_and_appends(result: dict[str, Any]) -> None:
    delete = result["delete"]
    assert delete["days"] == 1
    for size in ("full", "half"):
        assert _positive(delete[size]["seconds"])
        assert _positive(delete[size]["rows_deleted"])
    assert _positive(delete["full_over_half"])
    single = result["single_append"]
    assert single["n"] == 5
    assert _positive(single["median_ms"])
    small = result["small_appends"]
    assert small["n"] == 50
    assert small["files_after_appends"] > small["files_before"]
    assert small["files_after_compact"] < small["files_after_appends"]
    assert _positive(small["compact_s"])
    for query in QUERIES:
        for window in WINDOWS:
            cell = small["queries"][query][window]
            assert cell["after_appends"]["checked_against"] == ["duckdb"]
            assert cell["after_compact"]["checked_against"] == ["expected"]
            assert _positive(cell["after_appends_over_bulk"])
            assert _positive(cell["after_compact_over_bulk"])
    assert set(small["shapes"]) == set(SHAPES)
    for name, by_window in small["shapes"].items():
        assert set(by_window) == {"a", "b", "c", "d"}, name
        for cell in by_window.values():
            assert cell["after_compact_over_bulk"] == cell["after_compact_s"] / cell["bulk_s"]


def test_targets_and_tables(result: dict[str, Any]) -> None:
    statuses = {t["status"] for t in result["targets"]}
    assert statuses <= {"MET", "NOT MET", "n/a"}
    assert len(result["targets"]) >= 8
    text = render(result)
    assert "Targets" in text
    assert "| query | window |" in render(result, markdown=True)


def test_render_saved_result(result: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--render", result["_out"], "--markdown"]) == 0
    assert "**Targets**" in capsys.readouterr().out


def test_windows_scale_to_thirty_days() -> None:
    start = 1_793_491_200_000_000_000  # 2026-11-01
    windows = {k: w.to_json() for k, w in run.make_windows(start, 30).items()}
    assert windows["a"]["end"] == "2026-12-01 00:00:00"
    assert windows["b"]["start"] == "2026-11-24 00:00:00"
    assert windows["c"]["start"] == "2026-11-03 13:17:05"
    assert windows["c"]["end"] == "2026-11-20 09:43:11"


def test_mismatch_is_loud() -> None:
    good = pd.DataFrame(
        {
            "api_method": ["a", "b"],
            "total_requests": [2, 1],
            "success_requests": [1, 1],
            "failure_requests": [1, 0],
            "average_latency": [15.0, 30.0],
        }
    )
    check_same("aggregated_usage", good, good.copy(), "same")
    close = good.copy()
    close["average_latency"] = [15.0 * (1 + 1e-12), 30.0]
    check_same("aggregated_usage", good, close, "within tolerance")
    for column, values in (
        ("total_requests", [2, 2]),
        ("average_latency", [15.0, 30.001]),
        ("api_method", ["b", "a"]),
    ):
        bad = good.copy()
        bad[column] = values
        with pytest.raises(ResultMismatchError):
            check_same("aggregated_usage", good, bad, column)
    with pytest.raises(ResultMismatchError):
        check_same("aggregated_usage", good, good.iloc[:1], "fewer rows")


def test_the_many_files_case_is_measured_and_judged(result: dict[str, Any]) -> None:
    many = result["many_files"]
    assert many["many"]["files"] == 60 and many["small"]["files"] == 6
    for case in (many["small"], many["many"]):
        assert len(case["appends_ms"]) == 5 and all(_positive(t) for t in case["appends_ms"])
        assert len(case["opens"]) == 1  # --repeats
        assert all(run["requests"] > 0 for run in case["opens"])  # the report found rows
    names = [t["target"] for t in result["targets"]]
    assert "60 files: single-row append median < 25 ms" in names
    assert "Many files" in render(result)
