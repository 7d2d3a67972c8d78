"""The commands that keep a dataset: ``init``, ``info``, ``load``, ``retention``, ``delete``,
``compact``, ``verify``, ``history``, ``vacuum`` and ``sample``."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import click
import pandas as pd

from ..errors import DuplicateUsageError, InvalidArgumentError
from ..store import Store
from . import options
from ._app import LibraryError, cli
from .options import AGE, CUTOFF, Age, TimeValue, parse_time
from .output import Document, output_options, show_time

__all__ = [
    "compact",
    "delete",
    "history",
    "info",
    "init",
    "load",
    "retention",
    "sample",
    "vacuum",
    "verify",
]


def _root(command: F) -> F:
    return click.argument("root", metavar="ROOT")(command)


F = TypeVar("F", bound=Callable[..., Any])

#: The source system's cleaner keeps 720 hours of usage.
DEFAULT_RETENTION: Final = "720h"


def plural(n: int, word: str) -> str:
    """``n`` (with thousands separators) and ``word``, in the plural unless ``n == 1``."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _progress_wanted(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@cli.command()
@_root
def init(root: str) -> None:
    """Create the dataset at ROOT, or check (and upgrade) the one there. Idempotent."""
    Store(root).auto_migrate()
    click.echo(f"dataset ready at {root}")


@cli.command()
@_root
@output_options
def info(root: str) -> Document:
    """Rows, files, partitions, schema version, data bytes and the first and last row times
    (UTC), from the dataset's manifest."""
    store = Store(root)
    facts = store.info()
    try:
        size: int | None = sum(
            f.size or store._ds.path_of(f).stat().st_size for f in store._ds.snapshot().files
        )
    except OSError:  # a file removed by a concurrent compaction: the size is not known
        size = None

    def when(ns: int | None) -> pd.Timestamp:
        return pd.NaT if ns is None else pd.Timestamp(ns, tz="UTC")

    frame = pd.DataFrame(
        {
            "root": pd.Series([str(facts.root)], dtype="str"),
            "schema_version": [facts.schema_version],
            "rows": [facts.rows],
            "files": [facts.files],
            "partitions": [facts.partitions],
            "bytes": pd.Series([size], dtype="Int64"),
            "first": pd.Series([when(facts.first_timestamp)], dtype="datetime64[ns, UTC]"),
            "last": pd.Series([when(facts.last_timestamp)], dtype="datetime64[ns, UTC]"),
        }
    )
    return Document("info", f"Dataset {facts.root}", frame, record=True)


def _pairs(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{text!r} is not NAME=VALUE", ctx, param)
        if key.strip() in out:
            raise click.BadParameter(f"{key.strip()} is given twice", ctx, param)
        out[key.strip()] = value.strip() if param.name == "rename" else value
    return out or None


@cli.command()
@_root
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option(
    "--format",
    "input_format",
    type=click.Choice(["csv", "tsv", "jsonl", "parquet"]),
    help="The files' format (default: from each file's content and extension).",
)
@click.option(
    "--timestamp-unit",
    type=click.Choice(["s", "ms", "us", "ns"]),
    help="The unit of integer timestamps in the files (default: ns).",
)
@click.option(
    "--rename",
    multiple=True,
    metavar="OLD=NEW",
    callback=_pairs,
    help="Read the files' column OLD as NEW (repeatable).",
)
@click.option(
    "--default",
    "defaults",
    multiple=True,
    metavar="COL=VALUE",
    callback=_pairs,
    help="Fill a column the files lack with VALUE (repeatable).",
)
@click.option("--fill-nulls", is_flag=True, help="Fill empty values with the column's zero value.")
@click.option(
    "--on-conflict",
    type=click.Choice(["error", "ignore"]),
    default="error",
    show_default=True,
    help="A (user_id, timestamp) already stored or repeated: fail, or skip the row.",
)
@click.option(
    "--rejects",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Write rows that break the schema to FILE and load the others (default: a bad "
    "row fails the load).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def load(
    root: str,
    files: tuple[str, ...],
    input_format: str | None,
    timestamp_unit: str | None,
    rename: dict[str, str] | None,
    defaults: dict[str, str] | None,
    fill_nulls: bool,
    on_conflict: str,
    rejects: str | None,
    quiet: bool,
) -> None:
    """Append the rows of CSV, TSV, JSONL or Parquet files, all or nothing: on any error
    nothing is written. ROOT must exist (usage-analytics init ROOT)."""
    try:
        from ..ingest import load_files
        from ..ingest._convert import parse_options
    except ImportError as exc:  # pragma: no cover - the ingest module ships with the package
        raise LibraryError(f"the load command cannot run: {exc}") from exc
    try:  # bad options are bad arguments (exit 2), told before a file is read
        parse_options(input_format, timestamp_unit, rename, defaults, fill_nulls)
    except InvalidArgumentError as exc:
        message = str(exc).replace("rename ", "--rename ", 1).replace("default for", "--default")
        raise click.UsageError(message) from exc
    try:
        result = load_files(
            Store(root),
            list(files),
            format=input_format,  # type: ignore[arg-type]  # checked by click.Choice
            timestamp_unit=timestamp_unit,  # type: ignore[arg-type]
            rename=rename,
            defaults=defaults,
            fill_nulls=fill_nulls,
            on_conflict=on_conflict,  # type: ignore[arg-type]
            rejects=rejects,
            progress=_progress_wanted(quiet),
        )
    except DuplicateUsageError as exc:  # name the option, not the keyword argument
        raise LibraryError(
            str(exc).replace("on_conflict='ignore'", "--on-conflict ignore")
        ) from exc
    line = (
        f"{plural(result.rows_read, 'row')} read from {plural(result.files, 'file')}: "
        f"{result.rows_written:,} written, {result.duplicates_skipped:,} skipped as "
        f"duplicates, {result.rows_rejected:,} rejected"
    )
    if rejects is not None and result.rows_rejected:
        line += f" (written to {rejects})"
    click.echo(line)


def _cutoff_text(ns: int) -> str:
    return f"{show_time(ns, 'UTC')} UTC"


@cli.command()
@_root
@click.option(
    "--older-than",
    type=AGE,
    default=DEFAULT_RETENTION,
    show_default=True,
    metavar="AGE",
    help="Delete the rows older than this age (s, min or m, h, d, w; e.g. 30d). The default, "
    "720h (30 days), is the source system's retention.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Count the rows that would be deleted, and the cutoff; change nothing.",
)
def retention(root: str, older_than: Age, dry_run: bool) -> None:
    """Delete the rows older than --older-than (the source system's cleaner), oldest first,
    all or nothing."""
    store = Store(root)
    cutoff = options.now_ns() - older_than.ns
    what = f"older than {older_than.text} (before {_cutoff_text(cutoff)})"
    if dry_run:
        facts = store.info()
        n = 0
        if facts.first_timestamp is not None and facts.first_timestamp < cutoff:
            counted = store.report(None, facts.first_timestamp, cutoff, metrics=["requests"])
            n = int(counted["requests"].sum())
        click.echo(f"dry run: {plural(n, 'row')} {what} would be deleted from {root}")
        return
    n = store.delete_usage(cutoff)
    click.echo(f"{plural(n, 'row')} {what} deleted from {root}")


@cli.command()
@_root
@click.option(
    "--before",
    type=CUTOFF,
    required=True,
    metavar="TIME|AGE",
    help="Exclusive cutoff: an ISO time or date (naive: UTC), int ns since the epoch, or an "
    "age before now such as 30d.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    metavar="N",
    help="Delete at most N rows, the oldest (default: every row before the cutoff).",
)
def delete(root: str, before: TimeValue, limit: int | None) -> None:
    """Delete the rows before a cutoff, oldest first, all or nothing."""
    cutoff = parse_time(before, "UTC", "--before")
    n = Store(root).delete_usage(cutoff, limit=limit)
    most = "" if limit is None else f", at most {limit:,}"
    click.echo(f"{plural(n, 'row')} deleted from {root} (before {_cutoff_text(cutoff)}{most})")


@cli.command()
@_root
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def compact(root: str, quiet: bool) -> None:
    """Merge the small files of each partition into files of up to 131,072 rows, and write
    the summaries files lack."""
    n = Store(root).compact(progress=_progress_wanted(quiet))
    click.echo(f"{plural(n, 'partition')} compacted in {root}")


@cli.command()
@_root
@output_options
def verify(root: str) -> Document:
    """Read every data file back and recompute every summary from its rows; the problems
    found as a table, and exit 1 when there is one."""
    problems = Store(root).verify()
    if problems.empty:
        title = f"No problem found in {root}: every data file and summary checked"
        failure = None
    else:
        title = f"{plural(len(problems), 'problem')} found in {root}"
        failure = (
            f"{title}: 'usage-analytics compact {shlex.quote(root)}' rewrites summaries; a "
            "damaged data file needs a backup"
        )
    return Document("verify", title, problems, {"root": root}, failure=failure)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> Age | None:
    """An age such as 30d, or 0."""
    if value is None or value.strip() == "0":
        return None if value is None else Age("0", 0)
    return AGE.convert(value, param, ctx)


@cli.command()
@_root
@click.option(
    "--keep",
    metavar="AGE",
    callback=_duration,
    help="First set the history retention: keep the files a commit removes for this age "
    "(e.g. 30d; 0 removes them at once, the default), so that versions that recent stay "
    "readable with --as-of.",
)
@output_options
def history(root: str, keep: Age | None) -> Document:
    """The commits the dataset keeps, one per line: version, time and operation."""
    store = Store(root)
    if keep is not None:
        store.set_history_retention(keep.ns // 10**9)
    frame = store.history()
    retention = store._ds.snapshot().retention
    title = f"{plural(len(frame), 'commit')} kept in {root} (history retention {retention:,} s)"
    return Document("history", title, frame, {"root": root, "retention_s": retention})


@cli.command()
@_root
@click.option(
    "--retention",
    metavar="AGE",
    callback=_duration,
    help="Keep the versions of this age, e.g. 7d (default: the dataset's history retention; "
    "0: only the latest version).",
)
@click.option("--dry-run", is_flag=True, help="List the files that would go; change nothing.")
def vacuum(root: str, retention: Age | None, dry_run: bool) -> None:
    """Remove the files that no retained version lists (those a delete or compaction replaced),
    and list them."""
    seconds = None if retention is None else retention.ns // 10**9
    removed = Store(root).vacuum(retention=seconds, dry_run=dry_run)
    for path in removed:
        click.echo(path)
    what = "would be removed" if dry_run else "removed"
    click.echo(f"{plural(len(removed), 'file')} {what} from {root}")


@cli.command()
@_root
@click.option(
    "--rows",
    type=click.IntRange(min=0),
    default=40_000,
    show_default=True,
    help="Rows to generate.",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=14,
    show_default=True,
    help="Whole UTC days the rows cover.",
)
@click.option("--start", default="2026-11-01", show_default=True, help="The first day (ISO date).")
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=7,
    show_default=True,
    help="The seed: equal arguments give equal rows.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Rows per write.",
)
@click.option(
    "--tenants",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Tenants (traffic is Zipf-distributed across them).",
)
@click.option(
    "--users",
    type=click.IntRange(min=1),
    default=120,
    show_default=True,
    help="Users (each in one tenant; at least --tenants).",
)
@click.option(
    "--keys",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="API keys (at least --users).",
)
@click.option(
    "--methods", type=click.IntRange(min=1), default=12, show_default=True, help="API methods."
)
@click.option(
    "--models", type=click.IntRange(min=1), default=6, show_default=True, help="Model ids."
)
@click.option(
    "--no-compact",
    "no_compact",
    is_flag=True,
    help="Leave the files as written (default: compact at the end).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")  # fmt: skip
def sample(
    root: str,
    rows: int,
    days: int,
    start: str,
    seed: int,
    batch_size: int,
    tenants: int,
    users: int,
    keys: int,
    methods: int,
    models: int,
    no_compact: bool,
    quiet: bool,
) -> None:
    """Generate synthetic usage (deterministic from --seed) into the dataset at ROOT,
    creating it if needed."""
    from .. import synthetic

    try:  # the generator checks its arguments before anything is written
        profile = synthetic.Profile(
            n_tenants=tenants,
            n_users=users,
            n_api_keys=keys,
            n_methods=methods,
            n_models=models,
        )
        batches = synthetic.iter_batches(
            rows, start=start, days=days, seed=seed, batch_size=batch_size, profile=profile
        )
    except InvalidArgumentError as exc:
        raise click.UsageError(str(exc)) from exc
    store = Store(root)
    store.auto_migrate()
    total = 0
    bar: Any = None
    if _progress_wanted(quiet):
        from tqdm import tqdm

        bar = tqdm(total=rows, unit="rows", unit_scale=True, file=sys.stderr, leave=False)
    try:
        for batch in batches:
            total += store.create_usage(batch)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    if not no_compact:
        store.compact()
    click.echo(f"{plural(total, 'row')} written to {root}")
