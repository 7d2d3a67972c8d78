"""The notebooks: they run from any folder, top to bottom and cell by cell, show the library's own
numbers, and are committed executed (outputs saved, nothing of this machine in them)."""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from nbformat import NotebookNode

from usage_analytics import Not, Store

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SAMPLE = REPO / "data" / "sample"
NAMES = ["quickstart", "monthly_report"]
MIN_IMAGES = {"quickstart": 5, "monthly_report": 5}
# Absolute paths of a machine, as they would show in a saved output.
MACHINE_PATHS = re.compile(r"(/work/|/tmp/|/var/folders/|/home/|/root/|/Users/|[A-Za-z]:\\)")


@dataclass
class Run:
    """One notebook executed from a scratch folder, then every cell again (each twice)."""

    name: str
    first: NotebookNode  # after the top-to-bottom run
    again: NotebookNode  # after every cell ran twice more, in the same kernel
    cwd: Path
    sample_before: list[tuple[str, int, int]]
    sample_after: list[tuple[str, int, int]]


def _listing(root: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    )


def _read(name: str) -> NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _code_cells(nb: NotebookNode) -> list[NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _cell(nb: NotebookNode, cell_id: str) -> NotebookNode:
    (cell,) = [cell for cell in nb.cells if cell.get("id") == cell_id]
    return cell


def _errors(nb: NotebookNode) -> list[str]:
    return [
        f"cell {cell.id}: {out.ename}: {out.evalue}"
        for cell in _code_cells(nb)
        for out in cell.outputs
        if out.output_type == "error"
    ]


def _stderr(nb: NotebookNode) -> list[str]:
    return [
        f"cell {cell.id}: {out.text}"
        for cell in _code_cells(nb)
        for out in cell.outputs
        if out.output_type == "stream" and out.name == "stderr"
    ]


def _texts(cell: NotebookNode) -> list[str]:
    """Every text an output of the cell shows (not the images)."""
    texts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            texts.append(out.text)
        elif out.output_type == "error":
            texts.extend([out.evalue, *out.traceback])
        else:
            texts.extend(
                value if isinstance(value, str) else "".join(value)
                for kind, value in out.get("data", {}).items()
                if kind.startswith("text/")
            )
    return texts


def _html(cell: NotebookNode) -> str:
    (html,) = [out.data["text/html"] for out in cell.outputs if "text/html" in out.get("data", {})]
    return str(html)


def _images(nb: NotebookNode) -> list[str]:
    return [
        cell.id
        for cell in _code_cells(nb)
        for out in cell.outputs
        if "image/png" in out.get("data", {})
    ]


def _table(cell: NotebookNode) -> pd.DataFrame:
    """The frame a cell displays, read back from its HTML: every value as the text shown, the
    index in the column named ""."""
    head, body = _html(cell).split("<tbody>")
    columns = re.findall(r"<th>(.*?)</th>", head.split("</tr>")[0])
    rows = [
        re.findall(r"<t[hd]>(.*?)</t[hd]>", row)
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]
    return pd.DataFrame(rows, columns=columns)


def _shown(frame: pd.DataFrame) -> list[list[str]]:
    """What a frame's values look like in a displayed table."""
    return frame.astype(str).to_numpy().tolist()


@pytest.fixture(scope="module", params=NAMES)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    # The kernel starts in a scratch folder: neither notebooks/ nor the repository root.
    cwd = tmp_path_factory.mktemp(f"cwd-{request.param}")
    nb = _read(request.param)
    sample_before = _listing(SAMPLE)
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        allow_errors=True,
        record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    with client.setup_kernel():
        count = 0
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                count += 1
            client.execute_cell(cell, index, execution_count=count)
        first = copy.deepcopy(nb)
        for index, cell in enumerate(nb.cells):
            for _ in range(2):
                if cell.cell_type == "code":
                    count += 1
                client.execute_cell(cell, index, execution_count=count)
    yield Run(request.param, first, nb, cwd, sample_before, _listing(SAMPLE))


@pytest.fixture(params=NAMES)
def committed(request: pytest.FixtureRequest) -> tuple[str, NotebookNode]:
    return request.param, _read(request.param)


@pytest.fixture(scope="module")
def sample() -> Store:
    return Store(SAMPLE)


# -- running -------------------------------------------------------------------------------------


def test_runs_top_to_bottom_from_another_folder(run: Run) -> None:
    assert _errors(run.first) == []
    assert _stderr(run.first) == []
    assert all(cell.outputs for cell in _code_cells(run.first))


def test_every_cell_runs_again(run: Run) -> None:
    """Re-running any cell, right after itself or after the cells below it, does not fail."""
    assert _errors(run.again) == []
    assert _stderr(run.again) == []
    assert len(_images(run.again)) == len(_images(run.first))


def test_writes_nothing_into_the_working_folder_or_the_sample(run: Run) -> None:
    assert list(run.cwd.iterdir()) == []
    assert run.sample_after == run.sample_before


def test_outputs_name_no_path_of_the_machine(run: Run) -> None:
    for cell in _code_cells(run.first) + _code_cells(run.again):
        for text in _texts(cell):
            assert str(REPO) not in text, cell.id
            assert str(run.cwd) not in text, cell.id
            assert tempfile.gettempdir() + "/" not in text, cell.id
            assert not MACHINE_PATHS.search(text), (cell.id, text)


# -- content -------------------------------------------------------------------------------------


def _check_quickstart(nb: NotebookNode, store: Store) -> None:
    assert len(_images(nb)) >= MIN_IMAGES["quickstart"]
    info = _table(_cell(nb, "info")).set_index("")["data/sample"]
    assert info["rows"] == str(store.info().rows)
    # The seed's per-method report, every row as the library gives it.
    summary = store.aggregated_usage("tenant-005", "2026-11-01", "2026-11-15")
    shown = _table(_cell(nb, "aggregated"))
    assert len(summary) >= 10
    columns = ["api_method", "total_requests", "success_requests", "failure_requests"]
    assert _shown(shown[columns]) == _shown(summary[columns])
    # Rows without a model: counted where the plot leaves them out, named in the latency table.
    no_model = store.report(
        "tenant-005", "2026-11-01", "2026-11-15", where={"model_id": ""}, metrics=["requests"]
    )["requests"].iloc[0]
    assert no_model > 0
    printed = "".join(_texts(_cell(nb, "groups-plot")))
    assert f"left out: {no_model:,} requests without a model, with 0 tokens" in printed
    latency = _table(_cell(nb, "latency")).set_index("")
    assert latency.loc["(no model)", "requests"] == str(no_model)
    expected = store.report(
        "tenant-005", "2026-11-01", "2026-11-15", by="model_id", metrics=["latency_ms_p95"]
    )
    assert len(latency) == len(expected)
    # Tokens per model per day from the engine (its first rows are shown).
    daily = store.report(
        "tenant-005",
        "2026-11-01",
        "2026-11-15",
        by="model_id",
        every="1d",
        where={"model_id": Not("")},
        metrics=["requests", "total_tokens"],
    )
    shown = _table(_cell(nb, "daily"))
    assert _shown(shown[["model_id", "requests", "total_tokens"]]) == _shown(
        daily[["model_id", "requests", "total_tokens"]].head(len(shown))
    )
    assert "".join(_texts(_cell(nb, "write"))).strip() == "10000"


def _parameters(nb: NotebookNode) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(_cell(nb, "parameters").source, namespace)
    return namespace


def _check_monthly_report(nb: NotebookNode, store: Store) -> None:
    assert len(_images(nb)) >= MIN_IMAGES["monthly_report"]
    assert "EXAMPLE PRICES" in _cell(nb, "parameters").source
    p = _parameters(nb)
    tenant, start, end, tz, prices = p["TENANT"], p["START"], p["END"], p["TZ"], p["PRICES"]
    assert (tenant, tz) == ("tenant-005", "America/New_York")
    # The headline: the engine's totals for the same arguments.
    counts = ["requests", "users", "api_keys", "prompt_tokens", "completion_tokens"]
    totals = store.report(tenant, start, end, metrics=counts)
    assert totals["requests"].iloc[0] > 10_000
    assert _shown(_table(_cell(nb, "headline"))[counts]) == _shown(totals)
    # Per model over the period: the days of the daily report add up to the engine's totals.
    per_model = store.report(
        tenant,
        start,
        end,
        by="model_id",
        where={"model_id": Not("")},
        metrics=["requests", "total_tokens"],
    ).set_index("model_id")
    shown = _table(_cell(nb, "models")).set_index("")
    assert sorted(shown.index) == sorted(per_model.index)
    assert _shown(shown.loc[per_model.index, ["requests", "total_tokens"]]) == _shown(per_model)
    # Hours of New York's wall clock: the hour repeated when clocks go back is two buckets.
    hourly = store.report(tenant, start, end, every="1h", tz=tz, metrics=["requests"])
    assert _shown(_table(_cell(nb, "errors"))[["bucket", "requests"]]) == _shown(hourly.head(4))
    assert _table(_cell(nb, "errors"))["bucket"].tolist()[1:3] == [
        "2026-11-01 01:00:00-04:00",
        "2026-11-01 01:00:00-05:00",
    ]
    # Active users per day.
    active = store.report(tenant, start, end, every="1d", tz=tz, metrics=["users", "api_keys"])
    assert len(active) == 14
    shown = _table(_cell(nb, "users"))
    assert _shown(shown[["bucket", "users", "api_keys"]]) == _shown(active)
    # The ten costliest keys, in order of cost: the engine's top 10, and pandas' over every key.
    top = store.report(
        tenant,
        start,
        end,
        by="api_key_id",
        metrics=["cost"],
        prices=prices,
        top=10,
        order_by="cost",
    )
    costs = store.report(
        tenant, start, end, by="api_key_id", metrics=["cost"], prices=prices
    ).nlargest(10, "cost")
    shown = _table(_cell(nb, "keys"))
    assert sorted(shown["api_key_id"]) == sorted(top["api_key_id"])
    assert shown["cost"].tolist() == [f"{cost:.2f}" for cost in costs["cost"]]
    assert shown["api_key_id"].tolist() == costs["api_key_id"].tolist()


CHECKS = {"quickstart": _check_quickstart, "monthly_report": _check_monthly_report}


def test_executed_notebook_shows_the_librarys_numbers(run: Run, sample: Store) -> None:
    CHECKS[run.name](run.first, sample)
    CHECKS[run.name](run.again, sample)


def test_committed_notebook_shows_the_librarys_numbers(
    committed: tuple[str, NotebookNode], sample: Store
) -> None:
    name, nb = committed
    CHECKS[name](nb, sample)


# -- the committed files -------------------------------------------------------------------------


def test_committed_with_outputs_of_one_clean_run(committed: tuple[str, NotebookNode]) -> None:
    name, nb = committed
    nbformat.validate(nb)
    cells = _code_cells(nb)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), name
    assert [cell.id for cell in cells if not cell.outputs] == []
    assert _errors(nb) == []
    assert _stderr(nb) == []
    assert nb.metadata.kernelspec.name == "python3"


def test_committed_without_volatile_metadata(committed: tuple[str, NotebookNode]) -> None:
    name, nb = committed
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, name
    for cell in nb.cells:
        assert "execution" not in cell.metadata, cell.id
        assert not set(cell.metadata) - {"tags"}, cell.id


def test_committed_outputs_name_no_path_of_the_machine(committed: tuple[str, NotebookNode]) -> None:
    _, nb = committed
    for cell in _code_cells(nb):
        for text in _texts(cell):
            assert str(REPO) not in text, cell.id
            assert not MACHINE_PATHS.search(text), (cell.id, text)


def test_plots_have_titles_and_axis_labels(committed: tuple[str, NotebookNode]) -> None:
    _, nb = committed
    for cell_id in set(_images(nb)):
        source = _cell(nb, cell_id).source
        assert "title" in source, cell_id
        assert "xlabel" in source, cell_id
        assert "ylabel" in source, cell_id
        assert "legend" in source, cell_id


def test_reports_come_from_the_engine_not_from_every_row(
    committed: tuple[str, NotebookNode],
) -> None:
    _, nb = committed
    sources = "\n".join(cell.source for cell in _code_cells(nb))
    assert "find_usages(" not in sources
    assert "store.report(" in sources


def test_sample_window_is_the_notebooks_window(sample: Store) -> None:
    """The notebooks' sentences about the sample (two weeks of November 2026, UTC days)."""
    info = sample.info()
    first = pd.Timestamp(info.first_timestamp, unit="ns", tz="UTC")
    last = pd.Timestamp(info.last_timestamp, unit="ns", tz="UTC")
    assert (first.floor("D"), last.ceil("D")) == (
        pd.Timestamp("2026-11-01", tz="UTC"),
        pd.Timestamp("2026-11-15", tz="UTC"),
    )
    assert info.rows == 40_000
