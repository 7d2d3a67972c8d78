"""Every ``usage-analytics ...`` example of README's "Command line" section runs, in order, in a
folder holding a copy of data/sample (and the export and price files the examples name)."""

from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from usage_analytics import Store, synthetic
from usage_analytics.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section() -> str:
    start = README.index("## Command line\n")
    return README[start : README.index("\n## ", start + 1)]


def examples() -> list[str]:
    """The command lines of the section's ``sh`` blocks, without comments."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", section(), re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                assert line.startswith("usage-analytics "), line
                lines.append(line)
    return lines


def prepare(folder: Path) -> None:
    """data/sample, the exports the load examples read, and the price table shown."""
    shutil.copytree(ROOT / "data" / "sample", folder / "data" / "sample")
    exports = folder / "exports"
    exports.mkdir()
    for day in ("2026-11-15", "2026-11-16"):
        rows = synthetic.generate(200, start=day, days=1, seed=3)
        rows.to_csv(exports / f"usage-{day}.csv", index=False)
    start = int(pd.Timestamp("2026-11-17", tz="UTC").value) // 10**6
    (exports / "gateway.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "ts": start + i * 1000,
                    "user_id": f"u{i % 7}",
                    "status_code": 200,
                    "api_method": "/v1/chat/completions",
                    "latency_ms": 100 + i,
                }
            )
            + "\n"
            for i in range(50)
        )
    )
    [prices] = re.findall(r"```csv\n(.*?)```", section(), re.S)
    (folder / "prices.csv").write_text(prices)


def run(line: str) -> None:
    argv = []
    for word in shlex.split(line)[1:]:
        argv += sorted(glob.glob(word)) if "*" in word else [word]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, (line, result.stdout, result.stderr, result.exception)
    assert result.stderr == "", (line, result.stderr)


def _is_html(line: str) -> bool:
    return line.startswith("usage-analytics html ")


def test_the_section_documents_init_first() -> None:
    lines = examples()
    assert lines[0].startswith("usage-analytics init ")
    assert len(lines) >= 20


def test_every_command_line_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepare(tmp_path)
    monkeypatch.chdir(tmp_path)
    for line in examples():
        if not _is_html(line):  # test_the_html_example_runs
            run(line)
    loaded = Store(tmp_path / "data" / "usage").info()
    assert loaded.rows == 450  # two CSV exports of 200 rows and 50 JSON lines
    assert len(pd.read_csv(tmp_path / "failures.csv")) == 5
    assert Store(tmp_path / "data" / "demo").info().rows == 10_000


def test_the_html_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("usage_analytics.html")
    prepare(tmp_path)
    monkeypatch.chdir(tmp_path)
    lines = [line for line in examples() if _is_html(line)]
    assert lines
    for line in lines:
        run(line)
    assert (tmp_path / "report.html").stat().st_size > 0
