"""The side-by-side benchmark of ``usage_analytics``.

Steps, on synthetic data from :mod:`usage_analytics.synthetic`:

1. ingest every batch through ``Store.create_usage`` and, for the floor, through plain
   ``pyarrow.parquet.write_table`` (one file per batch), both from the same pandas frames;
2. the two reports for the busiest tenant over three windows (the whole range, the last days,
   and an unaligned window), for the store, DuckDB over the same files and (``--sqlite``) SQLite
   with the source system's indexes and SQL, each result checked against the store's first;
   then the report shapes of ``_shapes`` over those windows and one inside a day, against
   DuckDB SQL that gives the same frames, with the peak memory of each in a fresh process;
3. the peak RSS of store queries, each in a fresh process;
4. ``delete_usage`` of the oldest third of the days, on a copy (and on a half-size dataset);
5. single-row ``create_usage`` calls into the full dataset;
6. many single-row appends into a copy, the reports again, ``compact()``, the reports and the
   report shapes again;
7. the bytes of the summaries against the data's, on the dataset and on a high-cardinality
   variant of it (many users with a few keys each);
8. the many-files case of ``_many_files``: opening a dataset of 100,000 data files and
   answering its first report, and single-row appends into it, beside a dataset of 1,000.

Example:
    python -m benchmarks.run --rows 1000000 --days 30 --sqlite --out results.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gc
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import usage_analytics
from usage_analytics import Store
from usage_analytics.schema import NS_PER_DAY
from usage_analytics.synthetic import Profile, generate, iter_batches

from . import _load, _many_files, _rss, _shapes, _sqlite
from ._engines import QUERIES, DuckDBEngine, Engine, ResultMismatchError, StoreEngine, check_same
from ._report import evaluate_targets, render

__all__ = ["main"]

NS_PER_SECOND: Final = 1_000_000_000
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
WORKDIR_MARKER: Final = ".usage_analytics_benchmark"
REFERENCE_DAYS: Final = 30


@dataclass(frozen=True)
class Window:
    """A query window ``[start_ns, end_ns)``."""

    name: str
    label: str
    start_ns: int
    end_ns: int

    def to_json(self) -> dict[str, Any]:
        """The window with readable bounds."""
        return {
            "label": self.label,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "start": _iso(self.start_ns),
            "end": _iso(self.end_ns),
        }


def _iso(ns: int) -> str:
    return str(pd.Timestamp(ns, unit="ns", tz="UTC").strftime("%Y-%m-%d %H:%M:%S"))


class _Clock:
    """Progress lines on stderr, stamped with the seconds since the start."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def log(self, message: str) -> None:
        print(f"[{self.elapsed:8.1f} s] {message}", file=sys.stderr, flush=True)


def shape_windows(start_ns: int, days: int, tz: str) -> dict[str, Window]:
    """The windows of the report shapes: ``a`` and ``c`` as for the two reports, ``b`` the
    last 7/30 whole days in the shape's zone, ``d`` inside one day (in UTC and in the zone):
    09:00:00 to 17:30:00 UTC of day 13 (of 30)."""
    out = make_windows(start_ns, days)
    end_ns = start_ns + days * NS_PER_DAY
    last = max(1, round(days * 7 / REFERENCE_DAYS))
    if tz != "UTC":
        local_end = pd.Timestamp(end_ns, unit="ns", tz="UTC").tz_convert(tz)
        midnight = local_end.normalize()  # the last local midnight at or before the end
        b_end = int(midnight.value)
        b_start = int((midnight - pd.Timedelta(days=last)).tz_localize(None).tz_localize(tz).value)
        out["b"] = Window("b", f"last {last} whole days in {tz}", b_start, b_end)
    day = days * 12 // REFERENCE_DAYS
    d_start = start_ns + day * NS_PER_DAY + 9 * 3600 * NS_PER_SECOND
    d_end = start_ns + day * NS_PER_DAY + (17 * 3600 + 30 * 60) * NS_PER_SECOND
    out["d"] = Window("d", f"day {day + 1} 09:00:00 - 17:30:00", d_start, d_end)
    return out


def make_windows(start_ns: int, days: int) -> dict[str, Window]:
    """The three query windows, scaled from a 30-day range to ``days``.

    ``a`` is the whole range, ``b`` its last 7/30 (7 whole days of 30), ``c`` runs from
    13:17:05 on day 3 to 09:43:11 on day 20 (of 30).
    """
    end_ns = start_ns + days * NS_PER_DAY
    last = max(1, round(days * 7 / REFERENCE_DAYS))
    first_day = days * 2 // REFERENCE_DAYS
    last_day = max(first_day + 1, days * 19 // REFERENCE_DAYS)
    c_start = start_ns + first_day * NS_PER_DAY + (13 * 3600 + 17 * 60 + 5) * NS_PER_SECOND
    c_end = start_ns + last_day * NS_PER_DAY + (9 * 3600 + 43 * 60 + 11) * NS_PER_SECOND
    return {
        "a": Window("a", f"{days} whole day{'s' if days > 1 else ''}", start_ns, end_ns),
        "b": Window(
            "b",
            f"last {last} whole day{'s' if last > 1 else ''}",
            end_ns - last * NS_PER_DAY,
            end_ns,
        ),
        "c": Window(
            "c", f"day {first_day + 1} 13:17:05 - day {last_day + 1} 09:43:11", c_start, c_end
        ),
    }


def machine_info() -> dict[str, Any]:
    """Where and with what the benchmark ran."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 0
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "usage_analytics": usage_analytics.__version__,
        "pandas": pd.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "duckdb": duckdb.__version__,
        "sqlite": sqlite3.sqlite_version,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _dir_stats(root: Path, pattern: str) -> tuple[int, int]:
    """(number of files matching ``pattern`` under ``root``, their total bytes)."""
    files = [p for p in root.glob(pattern) if not p.name.startswith(".")]
    return len(files), sum(p.stat().st_size for p in files)


def summary_sizes(root: Path) -> dict[str, Any]:
    """Bytes of a dataset's data files and of its summary files (per file and span), by kind."""
    data = sum(p.stat().st_size for p in root.glob("date=*/*.parquet"))
    kinds: Counter[str] = Counter()
    for path in (root / "_rollups").rglob("*.rollup"):
        kinds[path.name.split(".")[-2]] += path.stat().st_size
    total = sum(kinds.values())
    return {
        "data_bytes": data,
        "summary_bytes": total,
        "by_kind": dict(sorted(kinds.items())),
        "summary_over_data": total / data if data else 0.0,
    }


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _in_turn(
    runners: Mapping[str, Callable[[], object]], repeats: int, cell: int
) -> dict[str, list[float]]:
    """Seconds of ``repeats`` runs of each runner after a warm-up run, the runners taking turns
    (who goes first rotates with the ``cell`` number), back to back, garbage collected before
    each run."""
    names = list(runners)
    shift = cell % len(names)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for name in names[shift:] + names[:shift]:
        runners[name]()  # warm-up
        for _ in range(repeats):
            gc.collect()
            started = time.perf_counter()
            runners[name]()
            runs[name].append(time.perf_counter() - started)
    return runs


# ---------------------------------------------------------------------------------------------
# 1. Ingest


def ingest(
    args: argparse.Namespace, store_root: Path, plain_root: Path, clock: _Clock
) -> tuple[dict[str, Any], Counter[str]]:
    """Write every batch through the store and through plain pyarrow, alternating who goes
    first; returns the timings and the rows per tenant."""
    store = Store(store_root)
    store.auto_migrate()
    plain_root.mkdir(parents=True)
    tenants: Counter[str] = Counter()
    store_s = plain_s = 0.0
    written = 0
    batches = _batches(args, args.rows)
    n_batches = -(-args.rows // args.batch_size)
    for i, batch in enumerate(batches):
        tenants.update(batch["tenant"].value_counts().to_dict())

        steps = ("store", "plain") if i % 2 == 0 else ("plain", "store")
        for step in steps:
            gc.collect()
            started = time.perf_counter()
            if step == "store":
                written += store.create_usage(batch)
                store_s += time.perf_counter() - started
            else:
                table = pa.Table.from_pandas(batch, preserve_index=False)
                pq.write_table(table, plain_root / f"part-{i:05d}.parquet")
                plain_s += time.perf_counter() - started
        if (i + 1) % max(1, n_batches // 10) == 0 or i + 1 == n_batches:
            clock.log(f"ingest: {i + 1}/{n_batches} batches")
    if written != args.rows:
        raise RuntimeError(f"create_usage wrote {written} rows, expected {args.rows}")
    store_files, store_bytes = _dir_stats(store_root, "date=*/*.parquet")
    plain_files, plain_bytes = _dir_stats(plain_root, "*.parquet")
    return (
        {
            "rows": args.rows,
            "batches": n_batches,
            "store": {
                "seconds": store_s,
                "rows_per_s": args.rows / store_s,
                "files": store_files,
                "bytes": store_bytes,
            },
            "pyarrow": {
                "seconds": plain_s,
                "rows_per_s": args.rows / plain_s,
                "files": plain_files,
                "bytes": plain_bytes,
                "settings": "pa.Table.from_pandas + pq.write_table defaults, no fsync",
            },
            "store_over_pyarrow": (args.rows / store_s) / (args.rows / plain_s),
        },
        tenants,
    )


def _batches(args: argparse.Namespace, rows: int) -> Iterator[pd.DataFrame]:
    return iter_batches(
        rows,
        batch_size=args.batch_size,
        start=args.start,
        days=args.days,
        seed=args.seed,
        profile=Profile(),
    )


#: The high-cardinality variant: 2,000 users holding 1-3 keys each (4,000 keys), 21 models, so
#: that nearly every (key, user, model) of a day file is its own group.
HIGH_CARDINALITY: Final = Profile(n_tenants=50, n_users=2000, n_api_keys=4000, n_models=21)


def measure_high_cardinality(
    args: argparse.Namespace, workdir: Path, clock: _Clock
) -> dict[str, Any]:
    """Summary bytes over data bytes on a variant of the data with many small groups (3 rows
    in 10 of the main dataset's), loaded in the same batches, then removed."""
    rows = max(1, args.rows * 3 // 10)
    root = workdir / "high-cardinality"
    store = Store(root)
    store.auto_migrate()
    started = time.perf_counter()
    for batch in iter_batches(
        rows,
        batch_size=args.batch_size,
        start=args.start,
        days=args.days,
        seed=args.seed + 3,
        profile=HIGH_CARDINALITY,
    ):
        store.create_usage(batch)
    seconds = time.perf_counter() - started
    out = {"rows": rows, "profile": vars(HIGH_CARDINALITY), "ingest_s": seconds}
    out.update(summary_sizes(root))
    shutil.rmtree(root)
    clock.log(
        f"high-cardinality variant: {rows:,} rows, summaries {out['summary_over_data']:.3f}x "
        "the data bytes"
    )
    return out


# ---------------------------------------------------------------------------------------------
# 2. Queries


def measure_queries(
    timed: Mapping[str, Engine],
    tenant: str,
    windows: Mapping[str, Window],
    repeats: int,
    clock: _Clock,
    *,
    untimed: Mapping[str, Engine] | None = None,
    expected: Mapping[tuple[str, str], pd.DataFrame] | None = None,
    what: str = "",
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[tuple[str, str], pd.DataFrame]]:
    """Time each query and window on the ``timed`` engines (the first is the store).

    A first run of every engine is checked against the store's first result, as are the
    ``untimed`` engines' results and ``expected`` ones; any difference raises
    :class:`ResultMismatchError` before a time is taken. Then each timed engine in turn runs
    once more (its warm-up) and ``repeats`` times back to back; the median is kept. The order
    of the engines rotates from cell to cell. Back-to-back runs measure each engine warm: when
    the engines alternate run by run, a query of a few milliseconds that follows seconds of
    SQLite measures a cold CPU (about 2.5x slower on this machine, for DuckDB too).
    """
    names = list(timed)
    reference = names[0]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    results: dict[tuple[str, str], pd.DataFrame] = {}
    cell = 0
    for query in QUERIES:
        out[query] = {}
        for window in windows.values():
            lo, hi = window.start_ns, window.end_ns
            label = f"{what}{query} {window.name}"
            ref = timed[reference].run(query, tenant, lo, hi)
            results[(query, window.name)] = ref
            cells: dict[str, Any] = {reference: {"checked": True, "checked_against": []}}
            for name, engine in {**{n: timed[n] for n in names[1:]}, **(untimed or {})}.items():
                check_same(query, ref, engine.run(query, tenant, lo, hi), f"{label}: {name}")
                cells[reference]["checked_against"].append(name)
                if name in timed:
                    cells[name] = {"checked": True}
            if expected is not None:
                check_same(query, ref, expected[(query, window.name)], f"{label}: expected")
                cells[reference]["checked_against"].append("expected")
            cells[reference]["result_rows"] = len(ref)
            runs = _in_turn(
                {name: functools.partial(timed[name].run, query, tenant, lo, hi) for name in names},
                repeats,
                cell,
            )
            cell += 1
            for name in names:
                cells[name]["runs_s"] = runs[name]
                cells[name]["median_s"] = _median(runs[name])
            for name in names[1:]:
                cells[f"{name}_over_store"] = cells[name]["median_s"] / cells[reference]["median_s"]
            out[query][window.name] = cells
            clock.log(
                f"{label}: " + ", ".join(f"{n} {cells[n]['median_s'] * 1000:.1f} ms" for n in names)
            )
    return out, results


# ---------------------------------------------------------------------------------------------
# 2b. Report shapes


def measure_shapes(
    store_root: Path, tenant: str, start_ns: int, days: int, repeats: int, clock: _Clock
) -> dict[str, Any]:
    """Each report shape over windows a-d: the store and DuckDB, results checked equal first,
    then each timed warm, back to back, the median kept (as :func:`measure_queries` does)."""
    context = _shapes.context_for(store_root, tenant)
    engines = {
        "store": _shapes.StoreShapes(store_root, context),
        "duckdb": _shapes.DuckDBShapes(store_root, context),
    }
    out: dict[str, Any] = {
        "organization": context.organization,
        "prices": context.prices,
        "windows": {},
        "shapes": {},
    }
    cell_number = 0
    try:
        for name, shape in _shapes.SHAPES.items():
            windows = shape_windows(start_ns, days, shape.tz)
            out["windows"][name] = {w: window.to_json() for w, window in windows.items()}
            out["shapes"][name] = {"title": shape.title, "windows": {}}
            for window in windows.values():
                lo, hi = window.start_ns, window.end_ns
                label = f"shape {name} {window.name}"
                ref = engines["store"].run(shape, tenant, lo, hi)
                _shapes.check_same_frame(ref, engines["duckdb"].run(shape, tenant, lo, hi), label)
                runs = _in_turn(
                    {e: functools.partial(engines[e].run, shape, tenant, lo, hi) for e in engines},
                    repeats,
                    cell_number,
                )
                cell_number += 1
                cell = {e: {"runs_s": runs[e], "median_s": _median(runs[e])} for e in engines}
                cell["result_rows"] = len(ref)
                cell["duckdb_over_store"] = cell["duckdb"]["median_s"] / cell["store"]["median_s"]
                out["shapes"][name]["windows"][window.name] = cell
                clock.log(
                    f"{label}: store {cell['store']['median_s'] * 1000:.1f} ms, duckdb "
                    f"{cell['duckdb']['median_s'] * 1000:.1f} ms ({len(ref):,} rows)"
                )
    finally:
        for engine in engines.values():
            engine.close()
    out["rss"] = {}
    for name in _shapes.SHAPES:
        out["rss"][name] = {}
        for window_name in ("a", "b", "d"):
            window = out["windows"][name][window_name]
            cell = _rss.measure_shape(
                store_root, name, tenant, window["start_ns"], window["end_ns"], context
            )
            out["rss"][name][window_name] = cell
            clock.log(f"rss shape {name} {window_name}: peak {cell['peak_mib']:.0f} MiB")
    return out


def time_store_shapes(
    roots: Mapping[str, Path], tenant: str, start_ns: int, days: int, repeats: int
) -> dict[str, dict[str, dict[str, float]]]:
    """The store's median time of each report shape over windows a-d on each dataset of
    ``roots`` (no DuckDB), side by side: each cell on every dataset in turn (who goes first
    alternating), the same queries (those of the first dataset's context) on all."""
    context = _shapes.context_for(next(iter(roots.values())), tenant)
    engines = {name: _shapes.StoreShapes(root, context) for name, root in roots.items()}
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in roots}
    cell_number = 0
    try:
        for shape_name, shape in _shapes.SHAPES.items():
            for name in roots:
                out[name][shape_name] = {}
            for window in shape_windows(start_ns, days, shape.tz).values():
                lo, hi = window.start_ns, window.end_ns
                runs = _in_turn(
                    {n: functools.partial(engines[n].run, shape, tenant, lo, hi) for n in roots},
                    repeats,
                    cell_number,
                )
                cell_number += 1
                for name, seconds in runs.items():
                    out[name][shape_name][window.name] = _median(seconds)
    finally:
        for engine in engines.values():
            engine.close()
    return out


# ---------------------------------------------------------------------------------------------
# 3. Peak RSS


def measure_rss(
    root: Path, tenant: str, windows: Mapping[str, Window], clock: _Clock
) -> dict[str, Any]:
    """Peak RSS of each store query over windows ``a`` and ``b``, each in a fresh process."""
    out: dict[str, dict[str, Any]] = {}
    for query in QUERIES:
        out[query] = {}
        for name in ("a", "b"):
            window = windows[name]
            cell = _rss.measure(root, query, tenant, window.start_ns, window.end_ns)
            out[query][name] = cell
            clock.log(
                f"rss {query} {name}: {cell['after_imports_mib']:.0f} MiB after imports, "
                f"peak {cell['peak_mib']:.0f} MiB"
            )
    return {"unit": "MiB (ru_maxrss of a child started from a small launcher)", "queries": out}


# ---------------------------------------------------------------------------------------------
# 4. Delete


def _timed_delete(source: Path, scratch: Path, cutoff_ns: int) -> tuple[float, dict[str, Any]]:
    """``delete_usage(cutoff_ns)`` on a fresh copy of ``source`` (copied untimed)."""
    shutil.copytree(source, scratch)
    try:
        store = Store(scratch)
        info = store.info()
        gc.collect()
        started = time.perf_counter()
        deleted = store.delete_usage(cutoff_ns)
        seconds = time.perf_counter() - started
        after = store.info()
    finally:
        shutil.rmtree(scratch)
    if after.rows != info.rows - deleted:
        raise RuntimeError(
            f"delete_usage reported {deleted} rows, but {info.rows - after.rows} went"
        )
    return seconds, {
        "rows_before": info.rows,
        "rows_deleted": deleted,
        "files_before": info.files,
        "files_after": after.files,
        "partitions_before": info.partitions,
        "partitions_after": after.partitions,
    }


def measure_delete(
    args: argparse.Namespace, store_root: Path, workdir: Path, start_ns: int, clock: _Clock
) -> dict[str, Any]:
    """``delete_usage`` of the oldest ``days // 3`` days, each run on a fresh copy.

    With ``--delete-half`` a dataset of half the rows (same days) is built untimed and the runs
    alternate between the two sizes, so that both see the same disk conditions. It is loaded in
    batches of half the size, so that its days hold as many files as the full dataset's, with
    half the rows each: the comparison is of rows, not of files (a delete unlinks each file).
    """
    days = max(1, args.days // 3)
    cutoff = start_ns + days * NS_PER_DAY
    sources = {"full": store_root}
    out: dict[str, Any] = {"days": days, "cutoff": _iso(cutoff), "half": None}
    if args.delete_half:
        half_root = workdir / "delete-half"
        started = time.perf_counter()
        store = Store(half_root)
        store.auto_migrate()
        half = argparse.Namespace(**{**vars(args), "batch_size": max(1, args.batch_size // 2)})
        for batch in _batches(half, args.rows // 2):
            store.create_usage(batch)
        out["half_setup_s"] = time.perf_counter() - started
        sources["half"] = half_root
    runs: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(args.delete_repeats):
        for name, source in sources.items():
            seconds, cell = _timed_delete(source, workdir / "delete-copy", cutoff)
            runs[name].append(seconds)
            out[name] = {**cell, "seconds": _median(runs[name]), "runs_s": runs[name]}
    for name in sources:
        clock.log(
            f"delete {days} days ({name}): {out[name]['rows_deleted']:,} rows, median "
            f"{out[name]['seconds'] * 1000:.1f} ms"
        )
    out["full_over_half"] = out["full"]["seconds"] / out["half"]["seconds"] if out["half"] else None
    if args.delete_half:
        shutil.rmtree(workdir / "delete-half")
    return out


# ---------------------------------------------------------------------------------------------
# 5-6. Appends


def _append_rows(n: int, day_ns: int, seed: int) -> pd.DataFrame:
    """``n`` fresh rows inside the day starting at ``day_ns`` (a seed the bulk load did not
    use, so their keys are new)."""
    day = pd.Timestamp(day_ns, unit="ns", tz="UTC").tz_localize(None)
    return generate(n, start=day, days=1, seed=seed, profile=Profile())


def _single_appends(store: Store, rows: pd.DataFrame) -> list[float]:
    """Seconds of ``create_usage`` of each row on its own, in order."""
    times: list[float] = []
    for i in range(len(rows)):
        row = rows.iloc[i : i + 1]
        started = time.perf_counter()
        store.create_usage(row)
        times.append(time.perf_counter() - started)
    return times


def measure_single_appends(
    args: argparse.Namespace, store_root: Path, workdir: Path, last_day_ns: int, clock: _Clock
) -> dict[str, Any]:
    """Single-row ``create_usage`` calls into a copy of the full dataset (so that the steps
    after this one compare with the dataset as it was bulk-loaded)."""
    rows = _append_rows(args.single_appends, last_day_ns, args.seed + 1)
    copy = workdir / "single-appends"
    shutil.copytree(store_root, copy)
    try:
        times_ms = [t * 1000 for t in _single_appends(Store(copy), rows)]
    finally:
        shutil.rmtree(copy)
    clock.log(f"single appends: median {_median(times_ms):.1f} ms")
    return {
        "n": len(times_ms),
        "median_ms": _median(times_ms),
        "p90_ms": _percentile(times_ms, 90),
        "min_ms": min(times_ms),
        "max_ms": max(times_ms),
        "mean_ms": statistics.fmean(times_ms),
        "runs_ms": times_ms,
    }


def measure_small_appends(
    args: argparse.Namespace,
    store_root: Path,
    workdir: Path,
    tenant: str,
    windows: Mapping[str, Window],
    bulk: Mapping[str, Mapping[str, Mapping[str, Any]]],
    last_day_ns: int,
    clock: _Clock,
    shapes: bool = False,
    start_ns: int = 0,
) -> dict[str, Any]:
    """Many single-row appends into a copy, the reports, ``compact()``, the reports again (and,
    with ``shapes``, the report shapes, beside the same on the bulk-loaded dataset)."""
    copy = workdir / "small-appends"
    shutil.copytree(store_root, copy)
    store = Store(copy)
    files_before = store.info().files
    rows = _append_rows(args.small_appends, last_day_ns, args.seed + 2)
    times: list[float] = []
    chunk = max(1, len(rows) // 10)
    for offset in range(0, len(rows), chunk):
        times += _single_appends(store, rows.iloc[offset : offset + chunk])
        clock.log(
            f"small appends: {len(times):,}/{len(rows):,}, last median "
            f"{_median(times[-chunk:]) * 1000:.1f} ms"
        )
    files_after_appends = store.info().files
    window_n = max(1, len(times) // 10)

    duck = DuckDBEngine(copy)
    try:
        appended, results = measure_queries(
            {"store": StoreEngine(copy)},
            tenant,
            windows,
            args.repeats,
            clock,
            untimed={"duckdb": duck},
            what="after appends: ",
        )
    finally:
        duck.close()
    gc.collect()
    started = time.perf_counter()
    compacted_partitions = Store(copy).compact()
    compact_s = time.perf_counter() - started
    clock.log(f"compact: {compacted_partitions} partitions in {compact_s:.2f} s")
    files_after_compact = Store(copy).info().files
    compacted, _ = measure_queries(
        {"store": StoreEngine(copy)},
        tenant,
        windows,
        args.repeats,
        clock,
        expected=results,
        what="after compact: ",
    )
    by_shape: dict[str, dict[str, Any]] = {}
    if shapes:
        # The bulk-loaded dataset is timed again here, beside the compacted one: times taken
        # an hour apart on a shared machine differ by more than what is measured.
        both = time_store_shapes(
            {"bulk": store_root, "compacted": copy}, tenant, start_ns, args.days, args.repeats
        )
        for name, by_window in both["compacted"].items():
            by_shape[name] = {}
            for window, seconds in by_window.items():
                bulk_s = both["bulk"][name][window]
                by_shape[name][window] = {
                    "bulk_s": bulk_s,
                    "after_compact_s": seconds,
                    "after_compact_over_bulk": seconds / bulk_s,
                }
            clock.log(
                f"after compact: shape {name}: "
                + ", ".join(
                    f"{w} {c['after_compact_over_bulk']:.2f}x" for w, c in by_shape[name].items()
                )
            )
    shutil.rmtree(copy)

    queries: dict[str, dict[str, Any]] = {}
    for query, by_window in appended.items():
        queries[query] = {}
        for window, cell in by_window.items():
            bulk_s = bulk[query][window]["store"]["median_s"]
            after = cell["store"]
            done = compacted[query][window]["store"]
            queries[query][window] = {
                "bulk_s": bulk_s,
                "after_appends": after,
                "after_compact": done,
                "after_appends_over_bulk": after["median_s"] / bulk_s,
                "after_compact_over_bulk": done["median_s"] / bulk_s,
            }
    return {
        "n": len(times),
        "total_s": sum(times),
        "median_ms": _median(times) * 1000,
        "p90_ms": _percentile(times, 90) * 1000,
        "max_ms": max(times) * 1000,
        "window_n": window_n,
        "first_median_ms": _median(times[:window_n]) * 1000,
        "last_median_ms": _median(times[-window_n:]) * 1000,
        "files_before": files_before,
        "files_after_appends": files_after_appends,
        "compact_s": compact_s,
        "partitions_compacted": compacted_partitions,
        "files_after_compact": files_after_compact,
        "queries": queries,
        "shapes": by_shape,
    }


# ---------------------------------------------------------------------------------------------
# The whole run


def run_benchmark(args: argparse.Namespace, workdir: Path, clock: _Clock) -> dict[str, Any]:
    """Every step; returns the JSON-ready result."""
    start_ns = int(pd.Timestamp(args.start, tz="UTC").normalize().value)
    windows = make_windows(start_ns, args.days)
    last_day_ns = start_ns + (args.days - 1) * NS_PER_DAY
    store_root = workdir / "store"
    result: dict[str, Any] = {
        "machine": machine_info(),
        "parameters": {
            "rows": args.rows,
            "days": args.days,
            "start": args.start,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "seed": args.seed,
            "sqlite": args.sqlite,
            "shapes": args.shapes,
            "single_appends": args.single_appends,
            "small_appends": args.small_appends,
            "delete_half": args.delete_half,
            "delete_repeats": args.delete_repeats,
            "many_files": args.many_files,
            "profile": vars(Profile()),
        },
        "windows": {name: w.to_json() for name, w in windows.items()},
    }

    clock.log(f"ingest of {args.rows:,} rows in batches of {args.batch_size:,}")
    result["ingest"], tenants = ingest(args, store_root, workdir / "plain", clock)
    shutil.rmtree(workdir / "plain")
    tenant, tenant_rows = min(tenants.items(), key=lambda kv: (-kv[1], kv[0]))
    info = Store(store_root).info()
    result["dataset"] = {
        "rows": info.rows,
        "files": info.files,
        "partitions": info.partitions,
        "bytes": result["ingest"]["store"]["bytes"],
        "tenants": len(tenants),
        "busiest_tenant": tenant,
        "busiest_tenant_rows": tenant_rows,
        "summaries": summary_sizes(store_root),
    }
    result["high_cardinality"] = measure_high_cardinality(args, workdir, clock)

    timed: dict[str, Engine] = {
        "store": StoreEngine(store_root),
        "duckdb": DuckDBEngine(store_root),
    }
    if args.sqlite:
        db = workdir / "usages.sqlite"
        clock.log("loading SQLite (not timed)")
        result["sqlite_load"] = _sqlite.load(db, _batches(args, args.rows))
        sqlite_engine = _sqlite.SQLiteEngine(db)
        result["sqlite_load"]["plans"] = {q: sqlite_engine.plan(q) for q in QUERIES}
        timed["sqlite"] = sqlite_engine
        clock.log(f"SQLite loaded: {result['sqlite_load']}")
    try:
        result["queries"], _ = measure_queries(timed, tenant, windows, args.repeats, clock)
    finally:
        for engine in timed.values():
            engine.close()
    if args.sqlite:
        (workdir / "usages.sqlite").unlink()
    if args.shapes:
        result["shapes"] = measure_shapes(
            store_root, tenant, start_ns, args.days, args.repeats, clock
        )

    clock.log(f"load of a {args.load_rows:,}-row CSV, against DuckDB's COPY")
    result["load"] = _load.measure(
        workdir / "load", args.load_rows, args.days, args.start, args.seed, args.load_repeats
    )
    clock.log(f"load: {result['load']['store_over_duckdb']:.2f}x DuckDB's rows/s")
    result["rss"] = measure_rss(store_root, tenant, windows, clock)
    result["delete"] = measure_delete(args, store_root, workdir, start_ns, clock)
    result["single_append"] = measure_single_appends(args, store_root, workdir, last_day_ns, clock)
    result["small_appends"] = measure_small_appends(
        args,
        store_root,
        workdir,
        tenant,
        windows,
        result["queries"],
        last_day_ns,
        clock,
        shapes=bool(result.get("shapes")),
        start_ns=start_ns,
    )
    if args.many_files:
        result["many_files"] = _many_files.measure(
            workdir,
            args.many_files,
            max(1, min(1_000, args.many_files // 10)),
            args.single_appends,
            args.repeats,
            clock.log,
        )
    result["targets"] = evaluate_targets(result)
    result["elapsed_s"] = clock.elapsed
    result["machine"]["load_average_at_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    return result


def _clear_workdir(path: Path) -> None:
    """Remove everything in a benchmark workdir but its marker."""
    for entry in path.iterdir():
        if entry.name == WORKDIR_MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _prepare_workdir(given: Path | None) -> tuple[Path, bool]:
    """The folder to work in and whether it is a temporary one of ours."""
    if given is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="work-", dir=RESULTS_DIR))
        (path / WORKDIR_MARKER).touch()
        return path, True
    if given.exists():
        entries = [p.name for p in given.iterdir()]
        if entries and WORKDIR_MARKER not in entries:
            raise SystemExit(
                f"--workdir {given} is not empty and not a benchmark workdir; give an empty or "
                "new folder"
            )
        _clear_workdir(given)
    given.mkdir(parents=True, exist_ok=True)
    (given / WORKDIR_MARKER).touch()
    return given, False


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark usage_analytics against plain pyarrow, DuckDB and SQLite.",
    )
    parser.add_argument("--rows", type=_positive, default=10_000_000, help="rows to ingest")
    parser.add_argument("--days", type=_positive, default=30, help="days the rows span")
    parser.add_argument("--start", default="2026-11-01", help="first day (UTC)")
    parser.add_argument("--batch-size", type=_positive, default=100_000, help="rows per batch")
    parser.add_argument("--repeats", type=_positive, default=5, help="timed runs per query")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument(
        "--sqlite",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also load and query SQLite (slow to load)",
    )
    parser.add_argument(
        "--shapes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the report shapes against DuckDB (step 2b)",
    )
    parser.add_argument(
        "--single-appends", type=_positive, default=50, help="single-row appends timed (step 5)"
    )
    parser.add_argument(
        "--small-appends",
        type=_positive,
        default=10_000,
        help="single-row appends before compaction (step 6)",
    )
    parser.add_argument(
        "--load-rows", type=_positive, default=2_000_000, help="rows of the CSV loaded (step 4b)"
    )
    parser.add_argument(
        "--load-repeats", type=_positive, default=3, help="timed loads per loader (median)"
    )
    parser.add_argument(
        "--delete-half",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the delete on a dataset of half the rows (builds one, not timed)",
    )
    parser.add_argument(
        "--delete-repeats",
        type=_positive,
        default=5,
        help="deletes timed per dataset size, each on a fresh copy (median reported)",
    )
    parser.add_argument(
        "--many-files",
        type=int,
        default=100_000,
        help="data files of the many-files case (step 7; 0 skips it)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR / "latest.json", help="JSON result file"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for the datasets (default: a temporary folder under benchmarks/results/)",
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the datasets after the run"
    )
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="only print the tables of a saved result",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or render a saved result); 0 on success, 2 on a result mismatch."""
    args = parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        print(render(saved, markdown=args.markdown), end="")
        return 0
    clock = _Clock()
    workdir, temporary = _prepare_workdir(args.workdir)
    clock.log(f"workdir {workdir}")
    try:
        result = run_benchmark(args, workdir, clock)
    except ResultMismatchError as exc:
        print(f"RESULT MISMATCH, no timing reported: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep_workdir:
            if temporary:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                _clear_workdir(workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result), end="")
    if args.markdown:
        print()
        print(render(result, markdown=True), end="")
    clock.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
