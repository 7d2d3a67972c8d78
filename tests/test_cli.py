"""The command line, run in-process with click's CliRunner: exact exit codes and output, one
parseable document per invocation, values equal to the library's on the same store."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import cli_fails as fails
from helpers import cli_invoke as invoke
from helpers import cli_ok as ok
from helpers import snapshot_files

from usage_analytics import Not, Prices, Store
from usage_analytics.cli import cli, main
from usage_analytics.cli import options as cli_options
from usage_analytics.cli import output as cli_output

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
S = 10**9


def ns(text: str) -> int:
    return int(pd.Timestamp(text, tz="UTC").value)


#: A small dataset whose reports can be checked by hand.
ROWS: list[dict[str, Any]] = [
    {"user_id": "u1", "tenant": "acme", "api_method": "/v1/chat/completions", "status_code": 200,
     "timestamp": ns("2026-11-01 09:30:15.123456789"), "latency_ms": 1200, "model_id": "gpt-4o",
     "prompt_tokens": 1000, "completion_tokens": 250, "time_to_first_token_ms": 300},
    {"user_id": "u1", "tenant": "acme", "api_method": "/v1/chat/completions", "status_code": 500,
     "timestamp": ns("2026-11-01 10:00:00"), "latency_ms": 800, "model_id": "gpt-4o"},
    {"user_id": "u2", "tenant": "acme", "api_method": "/v1/embeddings", "status_code": 200,
     "timestamp": ns("2026-11-01 23:59:59.5"), "latency_ms": 40,
     "model_id": "text-embedding-3-small", "prompt_tokens": 2000},
    {"user_id": "u2", "tenant": "acme", "api_method": "/v1/chat/completions", "status_code": 200,
     "timestamp": ns("2026-11-02 08:00:00"), "latency_ms": 2000, "model_id": "gpt-4o-mini",
     "prompt_tokens": 1_500_000, "completion_tokens": 500_000, "time_to_first_token_ms": 100},
    {"user_id": "u3", "tenant": "acme", "api_method": "/v1/models", "status_code": 200,
     "timestamp": ns("2026-11-02 12:00:00"), "latency_ms": 30},
    {"user_id": "u1", "tenant": "globex", "api_method": "/v1/chat/completions",
     "status_code": 429, "timestamp": ns("2026-11-02 13:00:00"), "latency_ms": 5,
     "model_id": "gpt-4o"},
]  # fmt: skip
PRICES_CSV = (
    "model_id,prompt_per_1m,completion_per_1m\n"
    "gpt-4o,2.50,10.00\n"
    "gpt-4o-mini,0.15,0.60\n"
    "text-embedding-3-small,0.02,0\n"
)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    store = Store(tmp_path / "tiny")
    store.auto_migrate()
    store.create_usage(ROWS)
    return store.root


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text(PRICES_CSV)
    return path


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of data/sample for the tests that only read."""
    root = tmp_path_factory.mktemp("sample") / "sample"
    shutil.copytree(SAMPLE, root)
    return root


@pytest.fixture
def sample_copy(tmp_path: Path) -> Path:
    """A copy of data/sample for a test that writes."""
    root = tmp_path / "sample"
    shutil.copytree(SAMPLE, root)
    return root


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> int:
    """The CLI's clock, fixed at 2026-12-08 00:00:00 UTC."""
    at = ns("2026-12-08")
    monkeypatch.setattr(cli_options, "now_ns", lambda: at)
    return at


def plain(value: Any) -> Any:
    """A library value as the machine formats give it."""
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, float) and value != value:
        return None
    return value.item() if hasattr(value, "item") else value


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


# -- exact human output -------------------------------------------------------------------------


def test_summary_table_is_exact(tiny: Path) -> None:
    assert ok("summary", tiny, "--tenant", "acme") == (
        "Requests per API method for tenant 'acme', 2026-11-01 09:30:15 to 2026-11-02 "
        "13:00:01 UTC: 3 rows\n"
        "\n"
        "api_method            total_requests  success_requests  failure_requests  "
        "average_latency\n"
        "/v1/chat/completions               3                 2                 1         "
        "1,333.33\n"
        "/v1/embeddings                     1                 1                 0            "
        "40.00\n"
        "/v1/models                         1                 1                 0            "
        "30.00\n"
    )


def test_report_markdown_formats_each_kind_of_number_one_way(tiny: Path, prices: Path) -> None:
    out = ok(
        "report", tiny, "--tenant", "acme", "--by", "model_id", "--prices", prices,
        "--metrics", "requests,error_rate,total_tokens", "--metrics", "latency_ms_mean,cost",
        "--format", "markdown",
    )  # fmt: skip
    assert out == (
        "Report for tenant 'acme', 2026-11-01 09:30:15 to 2026-11-02 13:00:01 UTC, by "
        "model_id: 4 rows\n"
        "\n"
        "| model_id | requests | error_rate | total_tokens | latency_ms_mean | cost |\n"
        "|:---|---:|---:|---:|---:|---:|\n"
        "| (none) | 1 | 0.00% | 0 | 30.00 | 0.0000 |\n"
        "| gpt-4o | 2 | 50.00% | 1,250 | 1,000.00 | 0.0050 |\n"
        "| gpt-4o-mini | 1 | 0.00% | 2,000,000 | 2,000.00 | 0.5250 |\n"
        "| text-embedding-3-small | 1 | 0.00% | 2,000 | 40.00 | 0.0000 |\n"
    )


def test_buckets_and_window_are_printed_to_the_second_in_the_zone(tiny: Path) -> None:
    out = ok(
        "report", tiny, "--tenant", "acme", "--every", "1d", "--tz", "America/New_York",
        "--metrics", "requests,time_to_first_token_ms_mean",
    )  # fmt: skip
    # 2026-11-01 is the day New York's clocks go back: it starts at -04:00, the window at -05:00.
    assert out == (
        "Report for tenant 'acme', 2026-11-01 04:30:15-05:00 to 2026-11-02 08:00:01-05:00 "
        "America/New_York, every 1d: 2 rows\n"
        "\n"
        "bucket                     requests  time_to_first_token_ms_mean\n"
        "2026-11-01 00:00:00-04:00         3                       100.00\n"
        "2026-11-02 00:00:00-05:00         2                        50.00\n"
    )


def test_naive_times_are_read_in_the_zone(tiny: Path) -> None:
    doc = json.loads(
        ok(
            "report",
            tiny,
            "--tenant",
            "acme",
            "--tz",
            "America/New_York",
            "--format",
            "json",
            "--start",
            "2026-11-01",
            "--end",
            "2026-11-02T05:00",
        )
    )
    assert (doc["start"], doc["end"]) == ("2026-11-01T00:00:00-04:00", "2026-11-02T05:00:00-05:00")
    # The row at 08:00 UTC on 2026-11-02 is at 03:00 in New York: inside (in UTC it is not).
    assert doc["rows"][0]["requests"] == 4


def test_tenants_info_and_empty_strings(tiny: Path) -> None:
    assert ok("tenants", tiny) == (
        f"Tenants of {tiny}: 2 tenants\n"
        "\n"
        "tenant  rows  first                last\n"
        "acme       5  2026-11-01 09:30:15  2026-11-02 12:00:00\n"
        "globex     1  2026-11-02 13:00:00  2026-11-02 13:00:00\n"
    )
    size = sum(p.stat().st_size for p in Store(tiny).files())
    assert ok("info", tiny) == (
        f"Dataset {tiny}\n"
        "\n"
        "field           value\n"
        f"root            {tiny}\n"
        "schema_version  2\n"
        "rows            6\n"
        "files           2\n"
        "partitions      2\n"
        f"bytes           {size:,}\n"
        "first           2026-11-01 09:30:15\n"
        "last            2026-11-02 13:00:00\n"
    )


# -- one document per invocation ----------------------------------------------------------------

NY_WEEK = ("--start", "2026-11-02T00:00-05:00", "--end", "2026-11-09T00:00-05:00")
SHAPE = ("--by", "model_id", "--every", "1d", "--tz", "America/New_York",
         "--metrics", "requests,prompt_tokens,latency_ms_p95")  # fmt: skip


def _expected(root: Path) -> pd.DataFrame:
    return Store(root).report(
        "tenant-005", NY_WEEK[1], NY_WEEK[3], by="model_id", every="1d",
        tz="America/New_York", metrics=["requests", "prompt_tokens", "latency_ms_p95"],
    )  # fmt: skip


def test_json_is_one_object_with_the_window_and_the_library_values(sample: Path) -> None:
    out = ok("report", sample, "--tenant", "tenant-005", *NY_WEEK, *SHAPE, "--format", "json")
    doc = json.loads(out)
    expected = _expected(sample)
    assert doc == {
        "report": "report",
        "root": str(sample),
        "tenant": "tenant-005",
        "start": "2026-11-02T00:00:00-05:00",
        "end": "2026-11-09T00:00:00-05:00",
        "tz": "America/New_York",
        "by": ["model_id"],
        "every": "1d",
        "columns": ["bucket", "model_id", "requests", "prompt_tokens", "latency_ms_p95"],
        "rows": records(expected),
    }
    assert len(doc["rows"]) == len(expected) > 0


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_and_tsv_are_one_table(sample: Path, fmt: str) -> None:
    out = ok("report", sample, "--tenant", "tenant-005", *NY_WEEK, *SHAPE, "--format", fmt)
    lines = list(csv.reader(io.StringIO(out), delimiter="," if fmt == "csv" else "\t"))
    expected = _expected(sample)
    assert lines[0] == list(expected.columns)
    assert len(lines) == len(expected) + 1  # one header, then the rows
    got = [[plain(v) for v in row] for row in expected.itertuples(index=False)]
    assert lines[1:] == [["" if v is None else str(v) for v in row] for row in got]


def test_jsonl_is_one_record_per_line(sample: Path) -> None:
    out = ok("report", sample, "--tenant", "tenant-005", *NY_WEEK, *SHAPE, "--format", "jsonl")
    assert [json.loads(line) for line in out.splitlines()] == records(_expected(sample))


def test_parquet_to_output_reads_back_as_the_library_frame(sample: Path, tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    assert ok("report", sample, "--tenant", "tenant-005", *NY_WEEK, *SHAPE, "-o", path) == ""
    got = pd.read_parquet(path)
    pd.testing.assert_frame_equal(got, _expected(sample))
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(path).metadata[b"usage_analytics"])
    assert meta["tenant"] == "tenant-005" and meta["start"] == "2026-11-02T00:00:00-05:00"


def test_parquet_goes_to_a_pipe_but_not_to_a_terminal(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = CliRunner().invoke(cli, ["summary", str(sample), "--tenant", "t", "--format",
                                      "parquet", "--allow-empty"])  # fmt: skip
    assert result.exit_code == 0 and result.stdout_bytes.startswith(b"PAR1")
    monkeypatch.setattr(cli_output, "stdout_is_terminal", lambda: True)
    err = fails(2, "summary", sample, "--tenant", "tenant-005", "--format", "parquet")
    assert "parquet is binary: give --output FILE" in err


def test_output_extension_picks_the_format(sample: Path, tmp_path: Path) -> None:
    for name, parse in [
        ("s.json", lambda t: json.loads(t)["rows"]),
        ("s.csv", lambda t: pd.read_csv(io.StringIO(t)).to_dict("records")),
        ("s.md", lambda t: t.splitlines()[4:]),
    ]:
        path = tmp_path / name
        assert ok("summary", sample, "--tenant", "tenant-005", "--output", path) == ""
        assert len(parse(path.read_text())) == 12


# -- values equal the library's -----------------------------------------------------------------


def test_where_top_and_prices_reach_the_engine(sample: Path, tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(
        "model_id,prompt_per_1m,completion_per_1m,effective_from\n"
        "gpt-4o,2.50,10.00,\ngpt-4o,2.00,8.00,2026-11-08\ngpt-4o-mini,0.15,0.60,\n"
        "llama-3.1-8b-instruct,0.05,0.08,\ntext-embedding-3-small,0.02,0,\n"
        "omni-moderation-latest,0,0,\nwhisper-1,0,0,\n"
    )
    out = ok(
        "report", sample, "--tenant", "tenant-005", "--by", "api_key_id",
        "--where", "model_id!=", "--where", "status_code=200,404",
        "--metrics", "requests,total_tokens,cost", "--prices", path,
        "--top", 10, "--order-by", "cost", "--format", "json",
    )  # fmt: skip
    info = Store(sample).info()
    assert info.first_timestamp is not None and info.last_timestamp is not None
    expected = Store(sample).report(
        "tenant-005", info.first_timestamp // S * S, -(-(info.last_timestamp + 1) // S) * S,
        by="api_key_id", where={"model_id": Not(""), "status_code": [200, 404]},
        metrics=["requests", "total_tokens", "cost"], prices=Prices.read_csv(path),
        top=10, order_by="cost",
    )  # fmt: skip
    assert json.loads(out)["rows"] == records(expected)
    assert len(expected) == 10


def test_top_orders_by_the_first_metric_by_default(sample: Path) -> None:
    doc = json.loads(
        ok("report", sample, "--all-tenants", "--by", "tenant", "--top", 2, "--format", "json")
    )
    assert [r["tenant"] for r in doc["rows"]] == ["tenant-000", "tenant-005"]
    assert doc["tenant"] is None


def test_presets_equal_the_library(sample: Path) -> None:
    store = Store(sample)
    window = ("--start", "2026-11-03", "--end", "2026-11-10")
    got = json.loads(ok("summary", sample, "--tenant", "tenant-001", *window, "--format", "json"))
    assert got["rows"] == records(store.aggregated_usage("tenant-001", "2026-11-03", "2026-11-10"))
    got = json.loads(
        ok(
            "groups",
            sample,
            "--tenant",
            "tenant-001",
            *window,
            "--exclude-empty-model",
            "--top",
            5,
            "--format",
            "json",
        )
    )
    groups = store.get_usages_by_groups(
        "tenant-001", "2026-11-03", "2026-11-10", exclude_empty_model=True
    )
    assert got["groups"] == len(groups) > 5
    assert got["rows"] == records(groups.nlargest(5, "total_requests", keep="first"))
    got = json.loads(
        ok(
            "models",
            sample,
            "--tenant",
            "tenant-001",
            *window,
            "--every",
            "1d",
            "--tz",
            "Asia/Kolkata",
            "--status-code",
            200,
            "--status-code",
            404,
            "--format",
            "json",
        )
    )
    models = store.model_usage_summaries(
        "tenant-001", pd.Timestamp("2026-11-03", tz="Asia/Kolkata"),
        pd.Timestamp("2026-11-10", tz="Asia/Kolkata"), every="1d", status_code=[200, 404],
        tz="Asia/Kolkata",
    )  # fmt: skip
    assert got["rows"] == records(models) and len(models) == 7 * 6


def test_groups_table_says_how_many_groups_it_shows(sample: Path) -> None:
    first = ok("groups", sample, "--tenant", "tenant-005", "--top", 3).splitlines()[0]
    assert first.endswith(": the 3 busiest of 415 groups")


def test_last_7d_ends_at_end_or_now(sample: Path, now: int) -> None:
    doc = json.loads(
        ok(
            "summary",
            sample,
            "--tenant",
            "tenant-005",
            "--last",
            "7d",
            "--end",
            "2026-11-15",
            "--format",
            "json",
        )
    )
    assert (doc["start"], doc["end"]) == ("2026-11-08T00:00:00+00:00", "2026-11-15T00:00:00+00:00")
    expected = Store(sample).aggregated_usage("tenant-005", "2026-11-08", "2026-11-15")
    assert doc["rows"] == records(expected)
    doc = json.loads(
        ok("summary", sample, "--tenant", "tenant-005", "--last", "4w", "--format", "json")
    )
    assert (doc["start"], doc["end"]) == ("2026-11-10T00:00:00+00:00", "2026-12-08T00:00:00+00:00")
    for unit, seconds in [("90s", 90), ("5min", 300), ("5m", 300), ("2h", 7200)]:
        doc = json.loads(
            ok(
                "summary",
                sample,
                "--tenant",
                "tenant-005",
                "--last",
                unit,
                "--end",
                "2026-11-10",
                "--format",
                "json",
            )
        )
        assert ns(doc["end"]) - ns(doc["start"]) == seconds * S


def test_the_default_window_is_the_whole_dataset_in_whole_seconds(tiny: Path) -> None:
    doc = json.loads(ok("report", tiny, "--all-tenants", "--format", "json"))
    assert (doc["start"], doc["end"]) == ("2026-11-01T09:30:15+00:00", "2026-11-02T13:00:01+00:00")
    assert doc["rows"][0]["requests"] == len(ROWS)
    doc = json.loads(ok("report", tiny, "--all-tenants", "--start", "2026-11-02", "--format",
                        "json"))  # fmt: skip
    assert doc["end"] == "2026-11-02T13:00:01+00:00" and doc["rows"][0]["requests"] == 3


def test_nanosecond_bounds_keep_their_precision_in_json(tiny: Path) -> None:
    first = ROWS[0]["timestamp"]
    doc = json.loads(ok("report", tiny, "--all-tenants", "--start", first + 1, "--format", "json"))
    assert doc["start"] == "2026-11-01T09:30:15.123456790+00:00"
    assert doc["rows"][0]["requests"] == len(ROWS) - 1
    title = ok("report", tiny, "--all-tenants", "--start", first + 1).splitlines()[0]
    assert "2026-11-01 09:30:15 to 2026-11-02 13:00:01 UTC" in title


# -- unknown tenants ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["report", "summary", "groups", "models"])
def test_an_unknown_tenant_fails_naming_the_closest(sample: Path, command: str) -> None:
    err = fails(1, command, sample, "--tenant", "tenant-05")
    assert err == (
        f"usage-analytics: error: no rows for tenant 'tenant-05' in {sample}; closest known "
        "tenants: tenant-005, tenant-004, tenant-003 (--allow-empty prints an empty table "
        "instead)\n"
    )


def test_an_unknown_tenant_far_from_any_lists_some(tiny: Path) -> None:
    err = fails(1, "summary", tiny, "--tenant", "zzz")
    assert err == (
        f"usage-analytics: error: no rows for tenant 'zzz' in {tiny}; known tenants: acme, "
        "globex (--allow-empty prints an empty table instead)\n"
    )


def test_allow_empty_prints_the_columns(tiny: Path) -> None:
    out = ok("summary", tiny, "--tenant", "zzz", "--allow-empty", "--format", "csv")
    assert out == "api_method,total_requests,success_requests,failure_requests,average_latency\n"
    doc = json.loads(ok("groups", tiny, "--tenant", "zzz", "--allow-empty", "--format", "json"))
    assert doc["rows"] == [] and doc["columns"][:3] == ["api_key_id", "user_id", "model_id"]
    assert ok("summary", tiny, "--tenant", "zzz", "--allow-empty").endswith(
        "average_latency\n(no rows)\n"
    )


def test_a_known_tenant_without_rows_in_the_window_is_an_empty_table(tiny: Path) -> None:
    out = ok("summary", tiny, "--tenant", "globex", "--end", "2026-11-02", "--format", "jsonl")
    assert out == ""


# -- exit codes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("top", ["-1", "0", "x"])
@pytest.mark.parametrize("command", ["report", "groups"])
def test_top_must_be_at_least_1(tiny: Path, command: str, top: str) -> None:
    assert "Invalid value for '--top'" in fails(2, command, tiny, "--tenant", "acme", "--top", top)


BAD_ARGUMENTS: list[tuple[list[str], str]] = [
    (["--last", "7x"], "Invalid value for '--last': '7x' is not an age"),
    (["--last", "0d"], "is not an age"),
    (["--start", "2026-11-02", "--last", "1d"], "give --start or --last, not both"),
    (["--start", "garbage"], "Invalid value for '--start': cannot read 'garbage' as a time"),
    (["--end", "2026-13-45"], "Invalid value for '--end'"),
    (["--start", "nan"], "'nan' is not a time"),
    (["--start", "2026-11-03", "--end", "2026-11-02"], "--end (2026-11-02) is before --start"),
    (["--where", "modelid=gpt-4o"], "unknown dimension 'modelid' (did you mean model_id?)"),
    (["--where", "gpt-4o"], "is not DIM=VALUE[,VALUE...]"),
    (["--where", "status_code=ok"], "status_code takes int codes"),
    (["--where", "model_id=a", "--where", "model_id!=b"], "model_id is filtered twice"),
    (["--where", "status_class=6xx"], "where status_class takes"),
    (["--by", "model"], "unknown dimension 'model' (did you mean model_id?)"),
    (["--by", "model_id,model_id"], "a dimension is given twice"),
    (["--metrics", "latency_p95"], "unknown metric 'latency_p95'"),
    (["--metrics", ","], "give at least one metric name"),
    (["--metrics", "cost"], "cost need a price table: give --prices FILE"),
    (["--every", "2d"], "Invalid value for '--every'"),
    (["--tz", "Mars/Olympus"], "Invalid value for '--tz'"),
    (["--order-by", "requests"], "--order-by ranks the groups for --top: give --top N"),
    (["--top", "2", "--order-by", "cost"], "order_by 'cost' is not among the metrics"),
    (["--prices", "missing.csv"], "Invalid value for '--prices'"),
    (["--format", "xml"], "Invalid value for '--format'"),
    (["--all-tenants"], "give --tenant T or --all-tenants (one of them)"),
    (["--every", "1min", "--start", "2000-01-01"], "buckets"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGUMENTS)
def test_bad_report_arguments_exit_2(tiny: Path, args: list[str], message: str) -> None:
    err = fails(2, "report", tiny, "--tenant", "acme", *args)
    assert message in err, err


def test_neither_tenant_nor_all_tenants_exits_2(tiny: Path) -> None:
    assert "give --tenant T or --all-tenants" in fails(2, "report", tiny)
    assert "Missing option '--tenant'" in fails(2, "summary", tiny)


def test_a_bad_price_table_exits_2_naming_the_file(tiny: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("model_id,prompt_per_1m,completion_per_1m\ngpt-4o,-1,2\n")
    err = fails(2, "report", tiny, "--tenant", "acme", "--metrics", "cost", "--prices", path)
    assert f"Invalid value for '--prices': {path}: 1 problem(s) in the price table" in err


def test_a_model_without_a_price_is_a_library_error(tiny: Path, tmp_path: Path) -> None:
    path = tmp_path / "few.csv"
    path.write_text("model_id,prompt_per_1m,completion_per_1m\ngpt-4o,2.5,10\n")
    err = fails(1, "report", tiny, "--tenant", "acme", "--metrics", "cost", "--prices", path)
    assert "2 model(s) have tokens in the window and no price in force" in err


def test_library_errors_exit_1_on_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for command in (["info"], ["tenants"], ["summary", "--tenant", "t"], ["compact"]):
        err = fails(1, command[0], missing, *command[1:])
        assert err == (
            f"usage-analytics: error: no usage dataset at {missing}: run 'usage-analytics "
            f"init {missing}' to create it\n"
        )
    assert not missing.exists()


def test_main_returns_the_exit_code(tiny: Path, tmp_path: Path, capsys: Any) -> None:
    assert main(["info", str(tiny), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == len(ROWS)
    assert main(["info", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith("usage-analytics: error: no usage dataset")
    assert main(["report", str(tiny), "--top", "-1"]) == 2
    assert main(["--help"]) == 0


def test_version(tiny: Path) -> None:
    assert ok("--version").startswith("usage-analytics ")


# -- --output is atomic -------------------------------------------------------------------------


def test_output_is_written_whole_or_not_at_all(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.json"
    out.parent.mkdir()
    fails(1, "summary", tiny, "--tenant", "zzz", "--output", out)
    fails(2, "summary", tiny, "--tenant", "acme", "--top", "1", "--output", out)
    assert list(out.parent.iterdir()) == []
    assert ok("summary", tiny, "--tenant", "acme", "-o", out) == ""
    before = out.read_bytes()
    assert json.loads(before)["rows"][0]["api_method"] == "/v1/chat/completions"
    fails(1, "summary", tiny, "--tenant", "zzz", "--output", out)
    assert out.read_bytes() == before  # the old file is kept whole
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]  # no temporary file left


def test_output_into_a_missing_folder_is_one_line(tiny: Path, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "x.csv"
    err = fails(1, "summary", tiny, "--tenant", "acme", "-o", target)
    assert err.startswith(f"usage-analytics: error: cannot write {target}: ")


# -- tenants and info ---------------------------------------------------------------------------


def test_tenants_equal_pandas_over_every_row(sample: Path) -> None:
    doc = json.loads(ok("tenants", sample, "--format", "json"))
    rows = Store(sample).find_usages()
    spans = rows.groupby("tenant")["timestamp"].agg(["size", "min", "max"])
    assert doc["rows"] == [
        {
            "tenant": tenant,
            "rows": int(size),
            "first": pd.Timestamp(int(lo), tz="UTC").isoformat(),
            "last": pd.Timestamp(int(hi), tz="UTC").isoformat(),
        }
        for tenant, (size, lo, hi) in spans.iterrows()
    ]
    assert doc["columns"] == ["tenant", "rows", "first", "last"]


def test_tenants_reads_only_the_first_and_last_days(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    windows: list[tuple[Any, Any]] = []
    scan = Store.scan

    def spy(self: Store, tenant: Any = None, start: Any = None, end: Any = None,
            **kw: Any) -> pd.DataFrame:  # fmt: skip
        windows.append((start, end))
        assert kw == {"columns": ["timestamp"]}
        return scan(self, tenant, start, end, **kw)

    monkeypatch.setattr(Store, "scan", spy)
    ok("tenants", sample)
    assert len(windows) == 12  # two days per tenant
    assert all(end - start == 86_400 * S for start, end in windows)


def test_info_of_an_empty_dataset(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    assert ok("init", root) == f"dataset ready at {root}\n"
    doc = json.loads(ok("info", root, "--format", "json"))
    assert doc == {
        "root": str(root), "schema_version": 2, "rows": 0, "files": 0, "partitions": 0,
        "bytes": 0, "first": None, "last": None,
    }  # fmt: skip
    assert ok("tenants", root, "--format", "csv") == "tenant,rows,first,last\n"
    assert ok("info", root, "--format", "csv").splitlines()[1] == f"{root},2,0,0,0,0,,"


def test_init_is_idempotent_and_refuses_a_file(tmp_path: Path) -> None:
    root = tmp_path / "usage"
    assert ok("init", root) == f"dataset ready at {root}\n"
    assert ok("init", root) == f"dataset ready at {root}\n"
    (tmp_path / "file").write_text("x")
    assert "not a folder" in fails(1, "init", tmp_path / "file")


# -- retention, delete, compact, verify ---------------------------------------------------------


def test_retention_dry_run_counts_and_writes_nothing(sample_copy: Path, now: int) -> None:
    before = snapshot_files(sample_copy)
    cutoff = now - 30 * 86_400 * S  # 2026-11-08
    n = int((Store(sample_copy).find_usages()["timestamp"] < cutoff).sum())
    assert 0 < n < 40_000
    for age in (["--older-than", "30d"], []):  # the default, 720h, is 30 days
        out = ok("retention", sample_copy, *age, "--dry-run")
        what = "30d" if age else "720h"
        assert out == (
            f"dry run: {n:,} rows older than {what} (before 2026-11-08 00:00:00 UTC) would be "
            f"deleted from {sample_copy}\n"
        )
    assert snapshot_files(sample_copy) == before


def test_retention_deletes_exactly_the_rows_before_the_cutoff(sample_copy: Path, now: int) -> None:
    store = Store(sample_copy)
    rows = store.find_usages()
    cutoff = now - 720 * 3600 * S
    keep = rows[rows["timestamp"] >= cutoff].reset_index(drop=True)
    out = ok("retention", sample_copy)
    assert out == (
        f"{len(rows) - len(keep):,} rows older than 720h (before 2026-11-08 00:00:00 UTC) "
        f"deleted from {sample_copy}\n"
    )
    pd.testing.assert_frame_equal(store.find_usages(), keep)
    assert ok("retention", sample_copy, "--older-than", "30d", "--dry-run").startswith(
        "dry run: 0 rows older than 30d"
    )


def test_delete_takes_a_time_or_an_age(tiny: Path, now: int) -> None:
    store = Store(tiny)
    assert ok("delete", tiny, "--before", "2026-11-01T12:00", "--limit", 1) == (
        f"1 row deleted from {tiny} (before 2026-11-01 12:00:00 UTC, at most 1)\n"
    )
    assert store.info().rows == len(ROWS) - 1
    # 2026-12-08 minus 36 days is 2026-11-02 00:00 UTC.
    assert ok("delete", tiny, "--before", "36d") == (
        f"2 rows deleted from {tiny} (before 2026-11-02 00:00:00 UTC)\n"
    )
    assert store.info().rows == len(ROWS) - 3
    assert ok("delete", tiny, "--before", ns("2026-11-02 12:00:00")) == (
        f"1 row deleted from {tiny} (before 2026-11-02 12:00:00 UTC)\n"
    )
    assert "Invalid value for '--limit'" in fails(2, "delete", tiny, "--before", 0, "--limit", -5)
    assert "Invalid value for '--before'" in fails(2, "delete", tiny, "--before", "soon")
    assert "Missing option '--before'" in fails(2, "delete", tiny)


def test_compact_merges_small_files(tiny: Path) -> None:
    store = Store(tiny)
    for i in range(3):
        store.create_usage(
            {"user_id": f"x{i}", "tenant": "acme", "timestamp": ns("2026-11-01") + i}
        )
    assert ok("compact", tiny) == f"1 partition compacted in {tiny}\n"
    assert ok("compact", tiny) == f"0 partitions compacted in {tiny}\n"
    assert store.info().rows == len(ROWS) + 3


def test_verify_exits_0_when_sound_and_1_with_the_problems(sample_copy: Path) -> None:
    out = ok("verify", sample_copy, "--format", "json")
    assert json.loads(out) == {
        "report": "verify", "root": str(sample_copy), "columns": ["piece", "kind", "problem"],
        "rows": [],
    }  # fmt: skip
    assert ok("verify", sample_copy).startswith(f"No problem found in {sample_copy}: every")
    entry = Store(sample_copy)._ds.snapshot().files[0]
    kind = sorted(entry.sidecars)[0]
    (sample_copy / entry.sidecar_path(kind)).write_bytes(b"not a summary")
    result = invoke("verify", sample_copy, "--format", "json")
    assert result.exit_code == 1
    rows = json.loads(result.stdout)["rows"]
    assert [(r["piece"], r["kind"]) for r in rows] == [(entry.path, kind)]
    assert rows[0]["problem"].startswith("cannot be read")
    assert result.stderr == (
        f"usage-analytics: error: 1 problem found in {sample_copy}: 'usage-analytics compact "
        f"{sample_copy}' rewrites summaries; a damaged data file needs a backup\n"
    )


# -- sample and html ----------------------------------------------------------------------------


def test_sample_builds_a_dataset(tmp_path: Path) -> None:
    root = tmp_path / "sample"
    out = ok("sample", root, "--rows", 500, "--days", 2, "--batch-size", 200, "--quiet")
    assert out == f"500 rows written to {root}\n"
    info = Store(root).info()
    assert info.rows == 500 and info.partitions == 2 and info.files == 2
    assert "Invalid value for '--rows'" in fails(2, "sample", tmp_path / "s", "--rows", -5)
    assert "n_users must be >= n_tenants" in fails(2, "sample", tmp_path / "s", "--users", 2)
    assert "start must be an ISO date" in fails(2, "sample", tmp_path / "s", "--start", "soon")
    assert not (tmp_path / "s").exists()


def test_html_calls_write_report_and_says_where(
    tiny: Path, prices: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []

    def write_report(store: Store, path: Any, tenant: str, start: int, end: int, *,
                     tz: str = "UTC", prices: Prices | None = None) -> Path:  # fmt: skip
        calls.append((store.root, path, tenant, start, end, tz, prices))
        Path(path).write_text("<html></html>")
        return Path(path)

    fake = types.ModuleType("usage_analytics.html")
    fake.write_report = write_report  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "usage_analytics.html", fake)
    target = tmp_path / "report.html"
    out = ok("html", tiny, "--tenant", "acme", "--last", "1d", "--end", "2026-11-02",
             "--tz", "Europe/Paris", "--prices", prices, "-o", target)  # fmt: skip
    assert out == (
        f"HTML report of tenant 'acme', 2026-11-01 00:00:00+01:00 to 2026-11-02 "
        f"00:00:00+01:00 Europe/Paris, written to {target}\n"
    )
    [(root, path, tenant, start, end, tz, got)] = calls
    assert (root, path, tenant, tz) == (tiny, str(target), "acme", "Europe/Paris")
    assert (start, end) == (ns("2026-10-31 23:00"), ns("2026-11-01 23:00"))
    assert isinstance(got, Prices) and len(got.frame()) == 3
    assert "closest known tenants: acme" in fails(1, "html", tiny, "--tenant", "acm", "-o", target)
    assert "Missing option '-o' / '--output'" in fails(2, "html", tiny, "--tenant", "acme")


def test_html_writes_a_real_report(sample: Path, tmp_path: Path) -> None:
    pytest.importorskip("usage_analytics.html")
    target = tmp_path / "report.html"
    out = ok("html", sample, "--tenant", "tenant-005", "-o", target)
    assert out.endswith(f"written to {target}\n")
    assert "<html" in target.read_text().lower()


def test_a_tenant_in_another_case_is_named_as_the_closest(sample: Path) -> None:
    err = fails(1, "summary", sample, "--tenant", "TENANT-005", "--last", "30d")
    assert "closest known tenants: tenant-005 " in err


def test_output_dash_is_stdout(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = ok("info", sample, "-o", "-", "--format", "csv")
    assert out.startswith("root,schema_version,rows")
    assert not (tmp_path / "-").exists()


def test_python_dash_m_runs_the_command_line(sample: Path) -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "usage_analytics.cli", "info", str(sample), "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 40000
    failed = subprocess.run(
        [sys.executable, "-m", "usage_analytics.cli", "info", str(sample / "nothing")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr.startswith("usage-analytics: error: no usage dataset at")
