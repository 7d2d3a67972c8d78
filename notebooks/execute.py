"""Run the notebooks top to bottom from the repository root and save them with their outputs.

``make notebooks`` runs this after a change to the library or the sample data, so that the
saved outputs (which the test suite checks against the library) stay true.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("quickstart.ipynb", "monthly_report.ipynb")


def execute(path: Path) -> None:
    """Execute ``path`` in place, keeping only stable metadata (no timings, no versions)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(REPO)}},
    )
    client.execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    language = {k: v for k, v in nb.metadata.get("language_info", {}).items() if k != "version"}
    nb.metadata = {"kernelspec": nb.metadata["kernelspec"], "language_info": language}
    nbformat.validate(nb)
    nbformat.write(nb, path)


def main(names: list[str]) -> int:
    for name in names or NOTEBOOKS:
        execute(REPO / "notebooks" / name)
        print(f"executed and saved notebooks/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
