"""Loading a CSV export: ``load_files`` against DuckDB's ``COPY ... TO parquet``, each in a
fresh process, with the peak resident memory of the store's load.

The parent calls :func:`measure`; each timed run is a child::

    python -m benchmarks._load --engine store --csv FILE --out DIR

which prints one JSON line: seconds, rows and the child's peak memory (``VmHWM``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._rss import REPO_ROOT, _peak_mib

__all__ = ["main", "make_csv", "measure"]


def make_csv(path: Path, rows: int, days: int, start: str, seed: int) -> int:
    """Write ``rows`` synthetic rows in time order as one CSV file; returns its bytes."""
    from usage_analytics import synthetic

    first = True
    for batch in synthetic.iter_batches(
        rows, start=start, days=days, seed=seed, batch_size=250_000
    ):
        batch.to_csv(path, mode="w" if first else "a", header=first, index=False)
        first = False
    return path.stat().st_size


def _child(argv: Sequence[str]) -> dict[str, Any]:
    """Run in the child: one timed load, as JSON."""
    sys.path.insert(0, str(REPO_ROOT))
    if argv[0] == "store":
        from usage_analytics import Store, load_files

        store = Store(argv[2])
        store.auto_migrate()
        start = time.perf_counter()
        result = load_files(store, [argv[1]])
        seconds = time.perf_counter() - start
        rows = result.rows_written
    else:
        import duckdb

        con = duckdb.connect()
        start = time.perf_counter()
        con.execute(f"COPY (SELECT * FROM read_csv('{argv[1]}')) TO '{argv[2]}' (FORMAT parquet)")
        seconds = time.perf_counter() - start
        rows = int(con.execute(f"SELECT count(*) FROM '{argv[2]}'").fetchone()[0])  # type: ignore[index]
    return {"seconds": seconds, "rows": rows, "peak_mib": _peak_mib()}


def _run_child(engine: str, csv: Path, out: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks._load", engine, str(csv), str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {engine} load failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def measure(
    workdir: Path, rows: int, days: int, start: str, seed: int, repeats: int
) -> dict[str, Any]:
    """Time ``repeats`` loads of one CSV by the store and by DuckDB, alternating."""
    workdir.mkdir(parents=True, exist_ok=True)
    csv = workdir / "export.csv"
    size = make_csv(csv, rows, days, start, seed)
    runs: dict[str, list[dict[str, Any]]] = {"store": [], "duckdb": []}
    for _ in range(repeats):
        for engine in runs:
            out = workdir / ("loaded" if engine == "store" else "duckdb.parquet")
            runs[engine].append(_run_child(engine, csv, out))
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink(missing_ok=True)
    csv.unlink()
    result: dict[str, Any] = {"rows": rows, "csv_bytes": size, "repeats": repeats}
    for engine, cells in runs.items():
        seconds = statistics.median(c["seconds"] for c in cells)
        result[engine] = {
            "seconds": seconds,
            "rows_per_s": rows / seconds,
            "peak_mib": max(c["peak_mib"] for c in cells),
            "rows_loaded": [c["rows"] for c in cells],
        }
    result["store_over_duckdb"] = result["store"]["rows_per_s"] / result["duckdb"]["rows_per_s"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._load")
    parser.add_argument("engine", choices=("store", "duckdb"))
    parser.add_argument("csv")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    print(json.dumps(_child([args.engine, args.csv, args.out])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
