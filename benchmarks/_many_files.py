"""The many-files case: a dataset of as many data files as a year of hourly loads from ten
pipelines makes (100,000 by default), and what a commit and an open cost there.

The files are made cheaply: one transaction stages every file (a few rows of one pipeline's
hour each) and commits them at once, with fsync turned off while it writes them (the files are
a fixture, not a measured write). Then, each against the same dataset:

- opening a store and answering its first report (``aggregated_usage`` of the last day), in
  fresh processes: the median wall time from before ``Store(root)`` to the report, and the
  process's peak RSS (VmHWM);
- single-row ``create_usage`` calls into the day after the year, in one process: the median;
- the same two on a dataset of ``--small`` files, side by side, for the ratio.

Usage: python -m benchmarks._many_files [--files N] [--small N] [--appends N] [--opens N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa

from usage_analytics import Store
from usage_analytics.schema import arrow_schema
from usage_analytics.synthetic import Profile, generate

__all__ = ["build", "measure", "targets"]

PIPELINES = 10
ROWS_PER_FILE = 4
HOUR_NS = 3_600 * 1_000_000_000
DAY_NS = 24 * HOUR_NS
#: The targets of the case: single-row append median and open + first report, in ms.
APPEND_TARGET_MS = 25.0
OPEN_TARGET_MS = 200.0


def build(root: Path, files: int, start_ns: int, seed: int = 0) -> dict[str, Any]:
    """A dataset at ``root`` of ``files`` data files: file ``k`` holds the rows of pipeline
    ``k % 10`` in hour ``k // 10`` from ``start_ns``. Returns what was made and how long it
    took (not a measured write: fsync is off)."""
    started = time.perf_counter()
    store = Store(root)
    store.auto_migrate()
    n = files * ROWS_PER_FILE
    frame = generate(n, start="2026-01-01", days=1, seed=seed, profile=Profile())
    k = np.arange(n) // ROWS_PER_FILE
    frame["timestamp"] = (
        start_ns
        + (k // PIPELINES) * HOUR_NS
        + (k % PIPELINES) * 60_000_000_000
        + (np.arange(n) % ROWS_PER_FILE) * 1_000_000_000
    ).astype(np.int64)
    frame["user_id"] = [f"pipeline-{p}" for p in (k % PIPELINES)]
    frame.insert(0, "created_at", pd.Timestamp.now(tz="UTC").as_unit("us"))
    frame.insert(0, "id", np.arange(1, n + 1, dtype=np.int64))
    table = pa.Table.from_pandas(frame, schema=arrow_schema(), preserve_index=False)
    dates = pd.to_datetime(frame["timestamp"].to_numpy()[::ROWS_PER_FILE], unit="ns")
    names = dates.strftime("%Y-%m-%d")
    with (
        mock.patch.object(os, "fsync", lambda fd: None),
        mock.patch.object(os, "fdatasync", lambda fd: None),
        store._ds.transaction() as tx,
    ):
        tx.reserve_ids(n)
        for i in range(files):
            tx.add(names[i], table.slice(i * ROWS_PER_FILE, ROWS_PER_FILE))
        tx.commit()
    # As the commits of a real year would have left: a checkpoint of the whole state.
    ds = Store(root)._ds
    ds._log.checkpoint(ds.snapshot())
    info = Store(root).info()
    return {
        "files": info.files,
        "rows": info.rows,
        "partitions": info.partitions,
        "tenant": str(frame["tenant"].iloc[-1]),
        "build_s": time.perf_counter() - started,
    }


def _open_child(root: str, tenant: str, start_ns: int, end_ns: int) -> dict[str, Any]:
    """In a fresh process: open the store and answer the first report."""
    started = time.perf_counter()
    store = Store(root)
    opened = time.perf_counter()
    report = store.aggregated_usage(tenant, start_ns, end_ns)
    done = time.perf_counter()
    hwm = None
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return {
        "open_ms": (opened - started) * 1000,
        "report_ms": (done - opened) * 1000,
        "total_ms": (done - started) * 1000,
        "requests": int(report["total_requests"].sum()),
        "vm_hwm_mib": hwm,
    }


def _opens(root: Path, tenant: str, start_ns: int, end_ns: int, n: int) -> list[dict[str, Any]]:
    code = (
        "import json, sys; from benchmarks._many_files import _open_child; "
        "print(json.dumps(_open_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), "
        "int(sys.argv[4]))))"
    )
    out = []
    for _ in range(n):
        proc = subprocess.run(
            [sys.executable, "-c", code, str(root), tenant, str(start_ns), str(end_ns)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def _appends(root: Path, after_ns: int, n: int) -> list[float]:
    rows = generate(n, start="2026-01-01", days=1, seed=99, profile=Profile())
    rows["timestamp"] = (after_ns + np.arange(n) * 1_000_000_000).astype(np.int64)
    store = Store(root)
    times = []
    for i in range(n):
        started = time.perf_counter()
        store.create_usage(rows.iloc[i : i + 1])
        times.append((time.perf_counter() - started) * 1000)
    return times


def _case(root: Path, files: int, start_ns: int, appends: int, opens: int) -> dict[str, Any]:
    made = build(root, files, start_ns)
    hours = -(-files // PIPELINES)
    last_day = start_ns + ((hours - 1) // 24) * DAY_NS
    tenant = made["tenant"]
    runs = _opens(root, tenant, last_day, last_day + DAY_NS, opens)
    times = _appends(root, last_day + DAY_NS, appends)
    return {
        **made,
        "open_report_ms": statistics.median(r["total_ms"] for r in runs),
        "open_ms": statistics.median(r["open_ms"] for r in runs),
        "report_ms": statistics.median(r["report_ms"] for r in runs),
        "open_vm_hwm_mib": max(r["vm_hwm_mib"] or 0 for r in runs),
        "opens": runs,
        "append_median_ms": statistics.median(times),
        "append_p90_ms": float(np.percentile(times, 90)),
        "append_max_ms": max(times),
        "appends_ms": times,
    }


def measure(
    workdir: Path, files: int, small: int, appends: int, opens: int, log: Any = print
) -> dict[str, Any]:
    """Both cases side by side (the small one first); returns the JSON-ready result."""
    start_ns = int(pd.Timestamp("2025-01-01", tz="UTC").value)
    out: dict[str, Any] = {}
    for name, n in (("small", small), ("many", files)):
        root = workdir / f"files-{n}"
        log(f"many files: building {n:,} files")
        out[name] = _case(root, n, start_ns, appends, opens)
        log(
            f"many files: {n:,} files: open + first report {out[name]['open_report_ms']:.0f} "
            f"ms, single-row append median {out[name]['append_median_ms']:.1f} ms "
            f"(built in {out[name]['build_s']:.0f} s)"
        )
        shutil.rmtree(root)
    out["append_ratio"] = out["many"]["append_median_ms"] / out["small"]["append_median_ms"]
    out["open_ratio"] = out["many"]["open_report_ms"] / out["small"]["open_report_ms"]
    return out


def targets(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The case's targets: (name, met, measured)."""
    many = result["many"]
    return [
        (
            f"{many['files']:,} files: single-row append median < {APPEND_TARGET_MS:.0f} ms",
            many["append_median_ms"] < APPEND_TARGET_MS,
            f"{many['append_median_ms']:.1f} ms ({result['append_ratio']:.2f}x the "
            f"{result['small']['files']:,}-file dataset's)",
        ),
        (
            f"{many['files']:,} files: open + first report < {OPEN_TARGET_MS:.0f} ms",
            many["open_report_ms"] < OPEN_TARGET_MS,
            f"{many['open_report_ms']:.0f} ms (open {many['open_ms']:.0f} ms, report "
            f"{many['report_ms']:.0f} ms; {result['open_ratio']:.2f}x the small dataset's)",
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._many_files")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--appends", type=int, default=50)
    parser.add_argument("--opens", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="many-files-") as tmp:
        result = measure(Path(tmp), args.files, args.small, args.appends, args.opens)
    for name, met, measured in targets(result):
        print(f"{'met' if met else 'NOT met':8} {name}: {measured}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
