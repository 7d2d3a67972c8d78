"""The docs stay true: README examples run, every CLI command has help and is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from usage_analytics import Store
from usage_analytics.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_readme_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.search(r"```python\n(.*?)```", README, re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # as notebook users do: running it again must not fail
        namespace: dict[str, object] = {}
        exec(compile(code.group(1), "README.md", "exec"), namespace)
    store = Store(tmp_path / "data" / "usage")
    assert store.info().rows == 10_001
    summary = store.aggregated_usage("tenant-000", "2026-11-01", "2026-11-08")
    assert summary["total_requests"].sum() > 0


def test_every_command_has_help_and_is_in_the_readme() -> None:
    """Walks the click group: every command and option has help text and appears in README's
    "Command line" section, which documents init first."""
    import click

    section = _section("Command line")
    commands = cli.commands
    assert set(commands) >= {
        "init", "load", "report", "summary", "groups", "models", "tenants", "info",
        "retention", "delete", "compact", "verify", "html", "sample",
    }  # fmt: skip
    first = {name: section.index(f"usage-analytics {name} ") for name in commands}
    assert min(first, key=first.__getitem__) == "init"
    for param in cli.params:
        assert isinstance(param, click.Option) and param.help, param.name
        assert max(param.opts, key=len) in section, param.name
    for name, command in commands.items():
        assert command.help and command.help.strip(), name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help and param.help.strip(), (name, param.name)
                long = max(param.opts, key=len)
                assert long.startswith("--") and long in section, (name, long)


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.index("\n## ", start + 1)
    return README[start:end]


def test_asking_other_questions_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each example of the section runs on the bundled sample data and answers with rows."""
    import ast

    import pandas as pd

    monkeypatch.chdir(ROOT)
    blocks = re.findall(r"```python\n(.*?)```", _section("Asking other questions"), re.S)
    assert len(blocks) == 5
    namespace: dict[str, object] = {}
    for block in blocks:
        tree = ast.parse(block)
        last = tree.body.pop()
        assert isinstance(last, ast.Expr), "each example ends with the report it shows"
        exec(compile(tree, "README.md", "exec"), namespace)
        result = eval(compile(ast.Expression(last.value), "README.md", "eval"), namespace)
        assert isinstance(result, pd.DataFrame) and len(result) > 0, block
        assert not result.isna().all().any(), block


def test_loading_exports_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The section's example loads the files it names (made here as other systems would
    export them: foreign column names, times in ms, one bad line) and prints what it did."""
    import gzip

    from usage_analytics import synthetic

    rows = synthetic.generate(4000, start="2026-11-01", days=2, seed=3)
    rows = rows.sort_values("timestamp").reset_index(drop=True)
    foreign = rows.drop(columns=["organization"]).rename(
        columns={"timestamp": "ts", "tenant": "customer"}
    )
    foreign["ts"] = foreign["ts"] // 10**6
    first, second = foreign.iloc[:2000], foreign.iloc[2000:]
    (tmp_path / "export-2026-11-01.csv.gz").write_bytes(
        gzip.compress(first.to_csv(index=False).encode())
    )
    lines = second.to_json(orient="records", lines=True).splitlines()
    lines[10] = '{"ts": "yesterday"}'
    (tmp_path / "export-2026-11-02.jsonl").write_text("\n".join(lines) + "\n")
    rows.to_parquet(tmp_path / "export.parquet")
    Store(tmp_path / "data" / "usage").auto_migrate()
    monkeypatch.chdir(tmp_path)
    code = re.findall(r"```python\n(.*?)```", _section("Loading exports"), re.S)
    assert len(code) == 1
    namespace: dict[str, object] = {}
    exec(compile(code[0], "README.md", "exec"), namespace)
    result = namespace["result"]
    assert (result.rows_written, result.rows_rejected) == (3999, 1)  # type: ignore[attr-defined]
    assert (tmp_path / "rejects.csv").read_text().count("\n") == 2
    assert len(namespace["frame"]) == 4000  # type: ignore[arg-type]
    stored = Store(tmp_path / "data" / "usage").find_usages()
    assert set(stored["organization"]) == {"acme"}
