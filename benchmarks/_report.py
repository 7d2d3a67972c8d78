"""The targets and the tables of a benchmark result, in plain text or Markdown.

Everything here works on the JSON-ready result dictionary that :mod:`benchmarks.run` writes, so
a saved result renders again with ``python -m benchmarks.run --render results.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from . import _many_files

__all__ = ["Table", "evaluate_targets", "render"]

MET: Final = "MET"
NOT_MET: Final = "NOT MET"
NOT_APPLICABLE: Final = "n/a"

WHOLE_DAY_SPEEDUP: Final = 5.0
UNALIGNED_SLOWDOWN: Final = 1.5
SQLITE_SPEEDUP: Final = 10.0
INGEST_RATIO: Final = 0.5
LOAD_RATIO: Final = 0.5
APPEND_MS: Final = 25.0
RSS_MIB: Final = 512.0
RSS_GROWTH: Final = 1.25
DELETE_GROWTH: Final = 1.5
COMPACTED_SLOWDOWN: Final = 1.2
INSIDE_DAY_SLOWDOWN: Final = 1.5
#: Report shapes over the whole range and the last days: at least this much faster than DuckDB
#: (by the shape's number); over an unaligned window, at least as fast.
SHAPE_SPEEDUP: Final = {"1": 10.0, "2": 10.0, "3": 3.0, "4": 3.0, "5": 10.0, "6": 10.0, "7": 10.0}
UNALIGNED_SHAPE_SLOWDOWN: Final = 1.0
#: Summary files: at most this share of the bytes of the data files.
SUMMARY_SHARE: Final = 0.5

SHORT_QUERY: Final = {"aggregated_usage": "aggregated", "get_usages_by_groups": "by_groups"}


@dataclass
class Table:
    """A titled table whose first ``left`` columns are left-aligned, the others right-aligned."""

    title: str
    headers: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    left: int = 1

    def plain(self) -> str:
        """The table as aligned plain text."""
        cells = [list(self.headers), *self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]

        def line(row: Sequence[str]) -> str:
            parts = [
                row[i].ljust(widths[i]) if i < self.left else row[i].rjust(widths[i])
                for i in range(len(row))
            ]
            return "  ".join(parts).rstrip()

        out = [self.title, "-" * len(self.title), line(self.headers)]
        out.append("  ".join("-" * w for w in widths))
        out.extend(line(row) for row in self.rows)
        out.extend(self.notes)
        return "\n".join(out)

    def markdown(self) -> str:
        """The table as GitHub Markdown."""
        out = [f"**{self.title}**", ""]
        out.append("| " + " | ".join(self.headers) + " |")
        marks = [":---" if i < self.left else "---:" for i in range(len(self.headers))]
        out.append("|" + "|".join(marks) + "|")
        out.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.notes:
            out.append("")
            out.extend(f"{note}  " for note in self.notes)
        return "\n".join(out)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000.0
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _mib(value: float) -> str:
    return f"{value:,.0f}"


def _mib1(value_bytes: float) -> str:
    return f"{value_bytes / 2**20:,.1f}"


def _int(value: int) -> str:
    return f"{value:,}"


def _window_label(result: dict[str, Any], name: str) -> str:
    return f"{name}: {result['windows'][name]['label']}"


def _status(ok: bool) -> str:
    return MET if ok else NOT_MET


def _speed(ratio: float) -> str:
    """An other-engine-over-store time ratio, in words."""
    if ratio >= 1.0:
        return f"store {ratio:.2f}x faster"
    return f"store {1.0 / ratio:.2f}x slower"


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, str]]:
    """Each target with its status (MET, NOT MET or n/a) and the measured figure."""
    targets: list[dict[str, str]] = []

    def add(name: str, status: str, measured: str) -> None:
        targets.append({"target": name, "status": status, "measured": measured})

    queries = result["queries"]
    windows = result["windows"]
    for window in ("a", "b"):
        for query, cells in queries.items():
            speedup = cells[window]["duckdb_over_store"]
            add(
                f"{SHORT_QUERY[query]} {window} ({windows[window]['label']}): store >= "
                f"{WHOLE_DAY_SPEEDUP:g}x faster than DuckDB",
                _status(speedup >= WHOLE_DAY_SPEEDUP),
                _speed(speedup),
            )
    for query, cells in queries.items():
        slowdown = 1.0 / cells["c"]["duckdb_over_store"]
        add(
            f"{SHORT_QUERY[query]} c (unaligned): store <= {UNALIGNED_SLOWDOWN:g}x DuckDB's time",
            _status(slowdown <= UNALIGNED_SLOWDOWN),
            f"{slowdown:.2f}x DuckDB's time ({_speed(1.0 / slowdown)})",
        )
    if result["parameters"]["sqlite"]:
        for query, cells in queries.items():
            for window in windows:
                speedup = cells[window]["sqlite_over_store"]
                add(
                    f"{SHORT_QUERY[query]} {window}: store >= {SQLITE_SPEEDUP:g}x faster than "
                    "SQLite",
                    _status(speedup >= SQLITE_SPEEDUP),
                    _speed(speedup),
                )
    else:
        add(f"store >= {SQLITE_SPEEDUP:g}x faster than SQLite", NOT_APPLICABLE, "run with --sqlite")

    shapes = result.get("shapes")
    if shapes:
        for shape in shapes["shapes"].values():
            number = shape["title"].split(":")[0]
            for window in ("a", "b"):
                speedup = shape["windows"][window]["duckdb_over_store"]
                wanted = SHAPE_SPEEDUP.get(number, 1.0)
                add(
                    f"shape {number} {window}: store >= {wanted:g}x faster than DuckDB",
                    _status(speedup >= wanted),
                    _speed(speedup),
                )
            slowdown = 1.0 / shape["windows"]["c"]["duckdb_over_store"]
            add(
                f"shape {number} c (unaligned): store <= {UNALIGNED_SHAPE_SLOWDOWN:g}x DuckDB's "
                "time",
                _status(slowdown <= UNALIGNED_SHAPE_SLOWDOWN),
                f"{slowdown:.2f}x DuckDB's time ({_speed(1.0 / slowdown)})",
            )
        for shape in shapes["shapes"].values():
            cell = shape["windows"]["d"]
            slowdown = 1.0 / cell["duckdb_over_store"]
            add(
                f"shape {shape['title'].split(':')[0]} d (inside one day): store <= "
                f"{INSIDE_DAY_SLOWDOWN:g}x DuckDB's time",
                _status(slowdown <= INSIDE_DAY_SLOWDOWN),
                f"{slowdown:.2f}x DuckDB's time ({_speed(1.0 / slowdown)})",
            )
        for name, by_window in shapes["rss"].items():
            title = shapes["shapes"][name]["title"].split(":")[0]
            worst = max(by_window, key=lambda w: by_window[w]["peak_mib"])
            peak = by_window[worst]["peak_mib"]
            add(
                f"shape {title}: peak RSS < {RSS_MIB:g} MiB (windows {', '.join(by_window)})",
                _status(peak < RSS_MIB),
                f"{peak:,.0f} MiB (window {worst})",
            )
            if "a" in by_window and "b" in by_window:
                growth = by_window["a"]["peak_mib"] / by_window["b"]["peak_mib"]
                add(
                    f"shape {title}: peak RSS of a <= {RSS_GROWTH:g}x that of b",
                    _status(growth <= RSS_GROWTH),
                    f"{growth:.2f}x ({by_window['a']['peak_mib']:,.0f} / "
                    f"{by_window['b']['peak_mib']:,.0f} MiB)",
                )
    else:
        add("report shapes inside one day", NOT_APPLICABLE, "run without --no-shapes")

    ratio = result["ingest"]["store_over_pyarrow"]
    add(
        f"ingest >= {INGEST_RATIO:g}x plain pyarrow write throughput",
        _status(ratio >= INGEST_RATIO),
        f"{ratio:.2f}x ({result['ingest']['store']['rows_per_s']:,.0f} rows/s)",
    )
    load = result.get("load")
    if load:
        ratio = load["store_over_duckdb"]
        add(
            f"load of a {load['rows']:,}-row CSV >= {LOAD_RATIO:g}x DuckDB's COPY to Parquet",
            _status(ratio >= LOAD_RATIO),
            f"{ratio:.2f}x ({load['store']['rows_per_s']:,.0f} against "
            f"{load['duckdb']['rows_per_s']:,.0f} rows/s)",
        )
        peak = load["store"]["peak_mib"]
        add(
            f"load of a {load['rows']:,}-row CSV: peak RSS < {RSS_MIB:g} MiB",
            _status(peak < RSS_MIB),
            f"{peak:,.0f} MiB",
        )
    median = result["single_append"]["median_ms"]
    add(
        f"single-row append median < {APPEND_MS:g} ms",
        _status(median < APPEND_MS),
        f"{median:.1f} ms",
    )
    for query, by_window in result["rss"]["queries"].items():
        peak = by_window["a"]["peak_mib"]
        add(
            f"{SHORT_QUERY[query]} a: peak RSS < {RSS_MIB:g} MiB",
            _status(peak < RSS_MIB),
            f"{peak:,.0f} MiB",
        )
        growth = peak / by_window["b"]["peak_mib"]
        add(
            f"{SHORT_QUERY[query]}: peak RSS of a <= {RSS_GROWTH:g}x that of b",
            _status(growth <= RSS_GROWTH),
            f"{growth:.2f}x ({peak:,.0f} / {by_window['b']['peak_mib']:,.0f} MiB)",
        )
    delete = result["delete"]
    full = delete["full"]
    measured = f"{full['seconds'] * 1000:.1f} ms for {full['rows_deleted']:,} rows"
    if delete.get("half"):
        half = delete["half"]
        growth = delete["full_over_half"]
        add(
            f"delete of whole days independent of row count (full <= {DELETE_GROWTH:g}x half)",
            _status(growth <= DELETE_GROWTH),
            f"{measured} in {full['files_before'] - full['files_after']} files; half size "
            f"{half['seconds'] * 1000:.1f} ms for {half['rows_deleted']:,} rows in "
            f"{half['files_before'] - half['files_after']} files ({growth:.2f}x)",
        )
    else:
        add("delete of whole days independent of row count", NOT_APPLICABLE, measured)
    for query, by_window in result["small_appends"]["queries"].items():
        for window, cell in by_window.items():
            ratio = cell["after_compact_over_bulk"]
            add(
                f"{SHORT_QUERY[query]} {window}: after small appends + compact <= "
                f"{COMPACTED_SLOWDOWN:g}x bulk-loaded",
                _status(ratio <= COMPACTED_SLOWDOWN),
                f"{ratio:.2f}x",
            )
    for shape, by_window in result["small_appends"].get("shapes", {}).items():
        title = shapes["shapes"][shape]["title"].split(":")[0] if shapes else shape
        worst = max(by_window, key=lambda w: by_window[w]["after_compact_over_bulk"])
        ratio = by_window[worst]["after_compact_over_bulk"]
        add(
            f"shape {title}: after small appends + compact <= {COMPACTED_SLOWDOWN:g}x "
            "bulk-loaded (every window)",
            _status(ratio <= COMPACTED_SLOWDOWN),
            f"{ratio:.2f}x (window {worst})",
        )
    variants = [("benchmark data", result["dataset"].get("summaries"))]
    variants.append(("high-cardinality variant", result.get("high_cardinality")))
    for label, sizes in variants:
        if not sizes:
            add(f"summaries <= {SUMMARY_SHARE:g}x data bytes, {label}", NOT_APPLICABLE, "")
            continue
        share = sizes["summary_over_data"]
        add(
            f"summaries <= {SUMMARY_SHARE:g}x data bytes, {label}",
            _status(share <= SUMMARY_SHARE),
            f"{share:.3f}x ({_mib1(sizes['summary_bytes'])} of {_mib1(sizes['data_bytes'])} MiB)",
        )
    if result.get("many_files"):
        for name, met, measured in _many_files.targets(result["many_files"]):
            add(name, _status(met), measured)
    return targets


def _summary_table(result: dict[str, Any]) -> Table | None:
    variants = [("benchmark data", result["dataset"].get("summaries"))]
    variants.append(("high-cardinality", result.get("high_cardinality")))
    found = [(label, sizes) for label, sizes in variants if sizes]
    if not found:
        return None
    kinds = sorted({k for _, sizes in found for k in sizes["by_kind"]})
    t = Table("Summary files on disk, MiB", ["dataset", "data", *kinds, "all", "x data"])
    for label, sizes in found:
        t.rows.append(
            [
                label,
                _mib1(sizes["data_bytes"]),
                *(_mib1(sizes["by_kind"].get(k, 0)) for k in kinds),
                _mib1(sizes["summary_bytes"]),
                f"{sizes['summary_over_data']:.3f}",
            ]
        )
    hc = result.get("high_cardinality")
    if hc:
        profile = hc["profile"]
        t.notes.append(
            f"high-cardinality: {hc['rows']:,} rows, {profile['n_users']:,} users holding "
            f"{profile['n_api_keys']:,} keys, {profile['n_models']} models"
        )
    t.notes.append("each kind: its summaries of data files and of spans of days together")
    return t


def _tables(result: dict[str, Any]) -> list[Table]:
    params = result["parameters"]
    dataset = result["dataset"]
    tables: list[Table] = []

    ingest = result["ingest"]
    t = Table("Ingest", ["writer", "rows", "files", "MiB of .parquet", "seconds", "rows/s"])
    for name, label in (("store", "Store.create_usage"), ("pyarrow", "pyarrow write_table")):
        cell = ingest[name]
        t.rows.append(
            [
                label,
                _int(ingest["rows"]),
                _int(cell["files"]),
                f"{cell['bytes'] / 2**20:,.1f}",
                f"{cell['seconds']:.2f}",
                f"{cell['rows_per_s']:,.0f}",
            ]
        )
    t.notes.append(
        f"store / pyarrow throughput: {_x(ingest['store_over_pyarrow'])} "
        f"({ingest['batches']} batches of {params['batch_size']:,} rows)"
    )
    t.notes.append(f"pyarrow: {ingest['pyarrow']['settings']}, one file per batch")
    tables.append(t)

    load = result.get("load")
    if load:
        t = Table(
            f"Loading one CSV export ({load['rows']:,} rows, {load['csv_bytes'] / 2**20:,.0f} MiB; "
            f"median of {load['repeats']}, each in a fresh process)",
            ["loader", "seconds", "rows/s", "peak MiB"],
        )
        for name, label in (("store", "load_files"), ("duckdb", "DuckDB COPY to Parquet")):
            cell = load[name]
            t.rows.append(
                [
                    label,
                    f"{cell['seconds']:.2f}",
                    f"{cell['rows_per_s']:,.0f}",
                    f"{cell['peak_mib']:,.0f}",
                ]
            )
        t.notes.append(f"store / DuckDB throughput: {_x(load['store_over_duckdb'])}")
        tables.append(t)

    engines = ["store", "duckdb"] + (["sqlite"] if params["sqlite"] else [])
    headers = ["query", "window", "rows out", *[f"{e} ms" for e in engines]]
    headers += [f"{e} / store" for e in engines[1:]]
    t = Table(
        f"Queries (tenant {dataset['busiest_tenant']}, {dataset['busiest_tenant_rows']:,} of "
        f"{dataset['rows']:,} rows; median of {params['repeats']})",
        headers,
        left=2,
    )
    for query, by_window in result["queries"].items():
        for window, cell in by_window.items():
            row = [SHORT_QUERY[query], _window_label(result, window)]
            row.append(_int(cell["store"]["result_rows"]))
            row += [_ms(cell[e]["median_s"]) for e in engines]
            row += [_x(cell[f"{e}_over_store"]) for e in engines[1:]]
            t.rows.append(row)
    for name, window in result["windows"].items():
        t.notes.append(f"{name}: [{window['start']}, {window['end']}) UTC")
    t.notes.append(
        "x / store: the engine's median time over the store's (above 1: the store is faster)"
    )
    tables.append(t)

    shapes = result.get("shapes")
    if shapes:
        t = Table(
            f"Report shapes (tenant {dataset['busiest_tenant']}; shape 6 every tenant; median "
            f"of {params['repeats']})",
            ["shape", "window", "rows out", "store ms", "duckdb ms", "duckdb / store"],
            left=2,
        )
        for name, shape in shapes["shapes"].items():
            for window, cell in shape["windows"].items():
                t.rows.append(
                    [
                        shape["title"],
                        f"{window}: {shapes['windows'][name][window]['label']}",
                        _int(cell["result_rows"]),
                        _ms(cell["store"]["median_s"]),
                        _ms(cell["duckdb"]["median_s"]),
                        _x(cell["duckdb_over_store"]),
                    ]
                )
        d = shapes["windows"]["tokens_by_model_day"]["d"]
        t.notes.append(f"d: [{d['start']}, {d['end']}) UTC; b of shape 2: in America/New_York")
        t.notes.append(
            f"shape 5 prices every model (example prices); shape 7 is organization "
            f"{shapes['organization']}"
        )
        tables.append(t)
        t = Table(
            "Peak RSS of one report shape in a fresh process",
            ["shape", "window", "after imports MiB", "peak MiB", "peak - imports MiB", "query s"],
            left=2,
        )
        for name, by_window in shapes["rss"].items():
            for window, cell in by_window.items():
                t.rows.append(
                    [
                        shapes["shapes"][name]["title"].split(":")[0],
                        f"{window}: {shapes['windows'][name][window]['label']}",
                        _mib(cell["after_imports_mib"]),
                        _mib(cell["peak_mib"]),
                        _mib(cell["peak_mib"] - cell["after_imports_mib"]),
                        f"{cell['query_s']:.2f}",
                    ]
                )
        tables.append(t)

    t = Table(
        "Peak RSS of one store query in a fresh process",
        ["query", "window", "after imports MiB", "peak MiB", "peak - imports MiB", "query s"],
        left=2,
    )
    for query, by_window in result["rss"]["queries"].items():
        for window, cell in by_window.items():
            t.rows.append(
                [
                    SHORT_QUERY[query],
                    _window_label(result, window),
                    _mib(cell["after_imports_mib"]),
                    _mib(cell["peak_mib"]),
                    _mib(cell["peak_mib"] - cell["after_imports_mib"]),
                    f"{cell['query_s']:.2f}",
                ]
            )
    tables.append(t)

    delete = result["delete"]
    t = Table(
        f"delete_usage of the oldest {delete['days']} days (on a copy; median of "
        f"{len(delete['full']['runs_s'])})",
        ["dataset", "rows before", "rows deleted", "files before", "files after", "ms"],
    )
    for name in ("full", "half"):
        cell = delete.get(name)
        if cell:
            t.rows.append(
                [
                    name,
                    _int(cell["rows_before"]),
                    _int(cell["rows_deleted"]),
                    _int(cell["files_before"]),
                    _int(cell["files_after"]),
                    f"{cell['seconds'] * 1000:.1f}",
                ]
            )
    tables.append(t)

    single = result["single_append"]
    t = Table(
        "Single-row create_usage into the full dataset",
        ["appends", "median ms", "p90 ms", "min ms", "max ms"],
    )
    t.rows.append(
        [
            _int(single["n"]),
            f"{single['median_ms']:.1f}",
            f"{single['p90_ms']:.1f}",
            f"{single['min_ms']:.1f}",
            f"{single['max_ms']:.1f}",
        ]
    )
    tables.append(t)

    small = result["small_appends"]
    t = Table(
        f"Store queries after {small['n']:,} single-row appends, then after compact()",
        ["query", "window", "bulk ms", "appended ms", "x bulk", "compacted ms", "x bulk"],
        left=2,
    )
    for query, by_window in small["queries"].items():
        for window, cell in by_window.items():
            t.rows.append(
                [
                    SHORT_QUERY[query],
                    _window_label(result, window),
                    _ms(cell["bulk_s"]),
                    _ms(cell["after_appends"]["median_s"]),
                    _x(cell["after_appends_over_bulk"]),
                    _ms(cell["after_compact"]["median_s"]),
                    _x(cell["after_compact_over_bulk"]),
                ]
            )
    t.notes.append(
        f"appends: {small['total_s']:.1f} s in all, median {small['median_ms']:.1f} ms "
        f"(first {small['window_n']:,}: {small['first_median_ms']:.1f} ms, last "
        f"{small['window_n']:,}: {small['last_median_ms']:.1f} ms); files "
        f"{small['files_before']:,} -> {small['files_after_appends']:,}"
    )
    t.notes.append(
        f"compact(): {small['compact_s']:.2f} s, {small['partitions_compacted']} partitions "
        f"rewritten; files -> {small['files_after_compact']:,}"
    )
    tables.append(t)

    if small.get("shapes") and shapes:
        t = Table(
            f"Report shapes after {small['n']:,} single-row appends and compact()",
            ["shape", "window", "bulk ms", "compacted ms", "x bulk"],
            left=2,
        )
        for name, by_window in small["shapes"].items():
            for window, cell in by_window.items():
                t.rows.append(
                    [
                        shapes["shapes"][name]["title"].split(":")[0],
                        window,
                        _ms(cell["bulk_s"]),
                        _ms(cell["after_compact_s"]),
                        _x(cell["after_compact_over_bulk"]),
                    ]
                )
        tables.append(t)

    sizes = _summary_table(result)
    if sizes is not None:
        tables.append(sizes)

    many = result.get("many_files")
    if many:
        t = Table(
            "Many files: open + first report (fresh processes) and single-row appends",
            ["dataset", "files", "open + report ms", "append median ms", "append p90 ms"],
            left=1,
        )
        for key in ("small", "many"):
            case = many[key]
            t.rows.append(
                [
                    key,
                    _int(case["files"]),
                    f"{case['open_report_ms']:.0f}",
                    f"{case['append_median_ms']:.1f}",
                    f"{case['append_p90_ms']:.1f}",
                ]
            )
        tables.append(t)

    t = Table("Targets", ["target", "status", "measured"], left=3)
    t.rows.extend([x["target"], x["status"], x["measured"]] for x in result["targets"])
    tables.append(t)
    return tables


def render(result: dict[str, Any], *, markdown: bool = False) -> str:
    """Every table of ``result``, in plain text or Markdown."""
    machine = result["machine"]
    params = result["parameters"]
    head = (
        f"usage_analytics benchmark: {params['rows']:,} rows over {params['days']} days from "
        f"{params['start']}, {machine['date']}; {machine['platform']}, {machine['cpu_count']} "
        f"CPUs, Python {machine['python']}, pandas {machine['pandas']}, pyarrow "
        f"{machine['pyarrow']}, DuckDB {machine['duckdb']}, SQLite {machine['sqlite']}"
    )
    tables = _tables(result)
    if markdown:
        return "\n\n".join([head, *(t.markdown() for t in tables)]) + "\n"
    return "\n\n".join([head, *(t.plain() for t in tables)]) + "\n"
