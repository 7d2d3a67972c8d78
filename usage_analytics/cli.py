"""The ``usage-analytics`` command: argument parsing and output formatting over :class:`Store`.

Each command calls the library once and prints the result; errors of the library become a message
on stderr and exit code 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import pyarrow as pa

from .errors import InvalidArgumentError, UsageAnalyticsError
from .schema import STRING_COLUMNS
from .store import Store

__all__ = ["format_frame", "main"]

FORMATS = ("table", "csv", "json", "markdown")


def format_frame(df: pd.DataFrame, fmt: str) -> str:
    """Render ``df`` as ``table`` (aligned text), ``csv``, ``json`` (records) or ``markdown``.

    Example:
        >>> print(format_frame(pd.DataFrame({"a": ["x"], "b": [1.5]}), "markdown"))
        | a | b |
        |---|---|
        | x | 1.5 |
    """
    if fmt == "csv":
        return str(df.to_csv(index=False)).rstrip("\n")
    if fmt == "json":
        return str(df.to_json(orient="records", indent=2))
    if fmt == "markdown":
        header = "| " + " | ".join(map(str, df.columns)) + " |"
        rule = "|" + "|".join("---" for _ in df.columns) + "|"
        body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(False)]
        return "\n".join([header, rule, *body])
    if fmt == "table":
        if df.empty:
            return "(no rows)\n" + "  ".join(map(str, df.columns))
        return str(df.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def _window(store: Store, start: str | None, end: str | None) -> tuple[Any, Any]:
    if start is not None and end is not None:
        return start, end
    info = store.info()
    first = info.first_timestamp if info.first_timestamp is not None else 0
    last = info.last_timestamp + 1 if info.last_timestamp is not None else first
    return (start if start is not None else first), (end if end is not None else last)


def _cmd_report(args: argparse.Namespace, out: TextIO) -> None:
    store = Store(args.root)
    start, end = _window(store, args.start, args.end)
    tenant = args.tenant
    sections: list[tuple[str, pd.DataFrame]] = []
    if args.report in ("summary", "both"):
        sections.append(("Requests per API method", store.aggregated_usage(tenant, start, end)))
    if args.report in ("groups", "both"):
        groups = store.get_usages_by_groups(tenant, start, end)
        title = "Usage per API key, user and model"
        if args.top is not None and args.top < len(groups):
            title += f", the {args.top} busiest of {len(groups)} groups"
            groups = groups.nlargest(args.top, "total_requests", keep="first")
        sections.append((title, groups.reset_index(drop=True)))
    window = f"{_show_time(start)} to {_show_time(end)}"
    for i, (title, frame) in enumerate(sections):
        if args.format in ("table", "markdown"):
            if i:
                out.write("\n")
            heading = f"{title} for tenant {tenant!r}, {window} ({len(frame)} rows)"
            out.write(("## " if args.format == "markdown" else "") + heading + "\n\n")
        out.write(format_frame(frame, args.format) + "\n")


def _show_time(value: Any) -> str:
    if isinstance(value, int):
        if not -(2**63) < value < 2**63:
            return str(value)  # beyond what a timestamp can show
        return str(pd.Timestamp(value, tz="UTC").isoformat())
    return str(value)


def _cmd_init(args: argparse.Namespace, out: TextIO) -> None:
    Store(args.root).auto_migrate()
    out.write(f"dataset ready at {args.root}\n")


def _cmd_info(args: argparse.Namespace, out: TextIO) -> None:
    info = Store(args.root).info()
    rows = {
        "root": str(info.root),
        "schema_version": info.schema_version,
        "rows": info.rows,
        "files": info.files,
        "partitions": info.partitions,
        "first": None if info.first_timestamp is None else _show_time(info.first_timestamp),
        "last": None if info.last_timestamp is None else _show_time(info.last_timestamp),
    }
    if args.format == "json":
        out.write(json.dumps(rows, indent=2) + "\n")
    else:
        frame = pd.DataFrame({"field": list(rows), "value": [str(v) for v in rows.values()]})
        out.write(format_frame(frame, args.format) + "\n")


def _read_input(path: Path) -> pd.DataFrame:
    if path.suffix not in (".parquet", ".csv", ".gz"):
        raise InvalidArgumentError(f"{path}: give a .csv or .parquet file")
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InvalidArgumentError(f"cannot load {path}: it {what}; give a .csv or .parquet file")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(
            path,
            dtype={c: str for c in STRING_COLUMNS},
            keep_default_na=False,
            na_values={c: [""] for c in ("timestamp",)},
        )
    except (OSError, ValueError, pa.ArrowException) as exc:
        # A malformed or binary CSV, a damaged Parquet file, an unreadable file.
        kind = "Parquet" if path.suffix == ".parquet" else "CSV"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgumentError(
            f"cannot read {path} as {kind} ({detail}); nothing was written from it"
        ) from exc


def _cmd_load(args: argparse.Namespace, out: TextIO) -> None:
    store = Store(args.root)
    total = 0
    for name in args.files:
        frame = _read_input(Path(name))
        total += store.create_usage(frame, on_conflict=args.on_conflict)
    out.write(f"{total} rows written\n")


def _cmd_delete(args: argparse.Namespace, out: TextIO) -> None:
    n = Store(args.root).delete_usage(args.before, limit=args.limit)
    out.write(f"{n} rows deleted\n")


def _cmd_verify(args: argparse.Namespace, out: TextIO) -> None:
    problems = Store(args.root).verify()
    if problems.empty:
        out.write(f"{args.root}: every file and summary checked, no problem found\n")
        return
    out.write(format_frame(problems, args.format) + "\n")
    raise UsageAnalyticsError(
        f"{len(problems)} problem(s) found in {args.root}: compact() rewrites summaries; a "
        "damaged data file needs a backup"
    )


def _cmd_compact(args: argparse.Namespace, out: TextIO) -> None:
    n = Store(args.root).compact()
    out.write(f"{n} partitions compacted\n")


def _cmd_sample(args: argparse.Namespace, out: TextIO) -> None:
    from . import synthetic

    store = Store(args.root)
    store.auto_migrate()
    total = 0
    profile = synthetic.Profile(
        n_tenants=args.tenants,
        n_users=args.users,
        n_api_keys=args.keys,
        n_methods=args.methods,
        n_models=args.models,
    )
    for batch in synthetic.iter_batches(
        args.rows,
        start=args.start,
        days=args.days,
        seed=args.seed,
        batch_size=args.batch_size,
        profile=profile,
    ):
        total += store.create_usage(batch)
    if args.compact:
        store.compact()
    out.write(f"{total} rows written to {args.root}\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usage-analytics",
        description="Keep and analyse API and LLM usage records in date-partitioned Parquet.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, run: Callable[[argparse.Namespace, TextIO], None]) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("root", help="the dataset folder")
        p.set_defaults(run=run)
        return p

    p = command("report", "Print the per-method summary and the per-group usage.", _cmd_report)
    p.add_argument("--tenant", required=True, help="the tenant id")
    p.add_argument("--start", help="inclusive start (ISO time or int ns; default: first row)")
    p.add_argument("--end", help="exclusive end (ISO time or int ns; default: after last row)")
    p.add_argument("--report", choices=("summary", "groups", "both"), default="both")
    p.add_argument(
        "--top", type=int, help="show only the N groups with the most requests (default: all)"
    )
    p.add_argument("--format", choices=FORMATS, default="table")

    command("init", "Create the dataset (or check and upgrade it).", _cmd_init)

    p = command("info", "Show rows, files, partitions and time span.", _cmd_info)
    p.add_argument("--format", choices=FORMATS, default="table")

    p = command(
        "load", "Append rows from CSV or Parquet files, all or nothing per file.", _cmd_load
    )
    p.add_argument("files", nargs="+", help=".csv or .parquet files with the usage columns")
    p.add_argument("--on-conflict", choices=("error", "ignore"), default="error")

    p = command("delete", "Delete rows older than a cutoff, oldest first.", _cmd_delete)
    p.add_argument("--before", required=True, help="exclusive cutoff (ISO time or int ns)")
    p.add_argument("--limit", type=int, help="delete at most this many rows")

    command("compact", "Merge the small files of each partition.", _cmd_compact)

    p = command(
        "verify",
        "Check every data file and recompute every summary from its rows (exit 1 on a problem).",
        _cmd_verify,
    )
    p.add_argument("--format", choices=FORMATS, default="table")

    p = command("sample", "Generate synthetic usage into a dataset.", _cmd_sample)
    p.add_argument("--rows", type=int, default=40_000)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--start", default="2026-11-01")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=100_000)
    p.add_argument("--tenants", type=int, default=6)
    p.add_argument("--users", type=int, default=120)
    p.add_argument("--keys", type=int, default=200)
    p.add_argument("--methods", type=int, default=12)
    p.add_argument("--models", type=int, default=6)
    p.add_argument("--no-compact", dest="compact", action="store_false")
    return parser


def _int_or_text(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit code.

    Example:
        >>> import io
        >>> main(["info", "data/sample", "--format", "csv"], out=io.StringIO())
        0
    """
    out = out if out is not None else sys.stdout
    args = _parser().parse_args(argv)
    for name in ("start", "end", "before"):
        if hasattr(args, name):
            setattr(args, name, _int_or_text(getattr(args, name)))
    try:
        args.run(args, out)
    except UsageAnalyticsError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        print(f"usage-analytics: error: {'; '.join(lines)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
