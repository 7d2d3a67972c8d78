"""The docs stay true: README examples run, every CLI command has help and is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from usage_analytics import Store
from usage_analytics.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_readme_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.search(r"```python\n(.*?)```", README, re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    store = Store(tmp_path / "data" / "usage")
    assert store.info().rows == 10_001
    summary = store.aggregated_usage("tenant-000", "2026-11-01", "2026-11-08")
    assert summary["total_requests"].sum() > 0


def test_every_command_has_help_and_is_in_the_readme() -> None:
    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = sub.choices  # type: ignore[attr-defined]
    assert set(commands) >= {"report", "load", "delete", "info", "compact", "init", "sample"}
    for name, command in commands.items():
        assert command.description, name
        if name not in ("init", "sample"):
            assert f"usage-analytics {name}" in README, name


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
