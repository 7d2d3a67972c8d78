"""The command line, run in-process: exact exit codes and output."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from _crash_worker import DAY, T0, batch

from usage_analytics import Store
from usage_analytics.cli import format_frame, main


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    store.create_usage(batch(1))
    return store.root


def test_report_json_matches_the_library(root: Path) -> None:
    code, out = run(
        ["report", str(root), "--tenant", "t0", "--report", "summary", "--format", "json"]
    )
    assert code == 0
    expected = Store(root).aggregated_usage("t0", T0, T0 + 3 * DAY)
    got = pd.DataFrame(json.loads(out))
    assert got["api_method"].tolist() == expected["api_method"].tolist()
    assert got["total_requests"].tolist() == expected["total_requests"].tolist()
    assert got["average_latency"].tolist() == pytest.approx(expected["average_latency"].tolist())


def test_report_csv_of_groups_with_window(root: Path) -> None:
    code, out = run(
        [
            "report", str(root), "--tenant", "t1", "--report", "groups", "--format", "csv",
            "--start", str(T0 + DAY), "--end", "2025-11-10",
        ]
    )  # fmt: skip
    assert code == 0
    expected = Store(root).get_usages_by_groups("t1", T0 + DAY, "2025-11-10")
    got = pd.read_csv(io.StringIO(out), keep_default_na=False, dtype={"user_id": str})
    assert got["total_requests"].sum() == expected["total_requests"].sum() > 0
    assert list(got.columns) == list(expected.columns)


def test_report_table_and_markdown_have_titles(root: Path) -> None:
    code, out = run(["report", str(root), "--tenant", "t0", "--top", "1"])
    assert code == 0
    assert "Requests per API method for tenant 't0'" in out
    assert "the 1 busiest of" in out
    code, out = run(["report", str(root), "--tenant", "t0", "--format", "markdown"])
    assert code == 0
    assert "## Requests per API method" in out
    assert "| api_method | total_requests |" in out


def test_report_of_unknown_tenant_is_empty_not_an_error(root: Path) -> None:
    code, out = run(["report", str(root), "--tenant", "nobody", "--report", "summary"])
    assert code == 0
    assert "(no rows)" in out


def test_errors_exit_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["info", str(tmp_path / "missing")])
    assert code == 1
    assert out == ""
    assert "auto_migrate()" in capsys.readouterr().err


def test_bad_arguments_exit_2(root: Path) -> None:
    with pytest.raises(SystemExit) as info:
        run(["report", str(root)])  # --tenant is required
    assert info.value.code == 2


def test_load_delete_compact_info_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "usage"
    assert run(["init", str(root)]) == (0, f"dataset ready at {root}\n")
    csv = tmp_path / "in.csv"
    batch(3).to_csv(csv, index=False)
    assert run(["load", str(root), str(csv)]) == (0, "30 rows written\n")
    assert run(["load", str(root), str(csv), "--on-conflict", "ignore"]) == (0, "0 rows written\n")
    code, _ = run(["load", str(root), str(csv)])
    assert code == 1  # duplicates
    assert run(["delete", str(root), "--before", str(T0 + DAY), "--limit", "4"]) == (
        0,
        "4 rows deleted\n",
    )
    assert run(["compact", str(root)]) == (0, "0 partitions compacted\n")
    code, out = run(["info", str(root), "--format", "json"])
    assert code == 0
    info = json.loads(out)
    assert info["rows"] == 26 and info["partitions"] == 3 and info["schema_version"] == 2


def test_sample_builds_a_dataset(tmp_path: Path) -> None:
    root = tmp_path / "sample"
    code, out = run(["sample", str(root), "--rows", "500", "--days", "2", "--batch-size", "200"])
    assert (code, out) == (0, f"500 rows written to {root}\n")
    info = Store(root).info()
    assert info.rows == 500 and info.partitions == 2 and info.files == 2


def test_format_frame_markdown_escapes_pipes() -> None:
    text = format_frame(pd.DataFrame({"a": ["x|y"]}), "markdown")
    assert text.splitlines()[2] == "| x\\|y |"
    with pytest.raises(ValueError, match="unknown format"):
        format_frame(pd.DataFrame(), "xml")
