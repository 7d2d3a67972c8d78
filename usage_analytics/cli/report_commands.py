"""The reading commands: ``report`` (the engine), the presets ``summary``, ``groups`` and
``models``, ``tenants`` and ``html``. Each parses its options, asks the store once for the
answer, and returns the document to print."""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable
from typing import Any, Final, TypeVar

import click
import pandas as pd

from .._validation import TIME_END
from ..errors import InvalidArgumentError
from ..reports.engine import Report
from ..reports.prices import Prices
from ..reports.spec import parse_spec
from ..store import Store
from ._app import LibraryError, cli
from .options import (
    Window,
    by_option,
    every_option,
    metrics_option,
    prices_option,
    tenant_option,
    where_option,
    window_options,
    with_window,
)
from .output import Document, json_time, output_options, show_time

__all__ = ["groups", "html", "models", "report", "summary", "tenants"]

_DAY: Final = 86_400 * 10**9
F = TypeVar("F", bound=Callable[..., Any])


def _root(command: F) -> F:
    return click.argument("root", metavar="ROOT")(command)


def _allow_empty(command: F) -> F:
    return click.option(
        "--allow-empty",
        is_flag=True,
        help="Print an empty table when the tenant has no rows at all, instead of failing.",
    )(command)


def _window_text(window: Window) -> str:
    return f"{show_time(window.start, window.tz)} to {show_time(window.end, window.tz)} {window.tz}"


def _who(tenant: str | None) -> str:
    return "every tenant" if tenant is None else f"tenant {tenant!r}"


def _rows(n: int, what: str = "row") -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _context(store: Store, tenant: str | None, window: Window, **more: Any) -> dict[str, Any]:
    return {
        "root": str(store.root),
        "tenant": tenant,
        "start": json_time(window.start, window.tz),
        "end": json_time(window.end, window.tz),
        "tz": window.tz,
        **more,
    }


def known_tenants(store: Store) -> list[str]:
    """Every tenant with rows, from the engine (summaries where they cover the data)."""
    frame = store.report(None, 0, TIME_END, by="tenant", metrics=["requests"])
    return [str(t) for t in frame["tenant"].tolist()]


def check_tenant(store: Store, tenant: str, frame: pd.DataFrame, allow_empty: bool) -> None:
    """Fail when ``frame`` is empty because ``tenant`` has no rows at all (a typo, most
    likely), naming the closest known tenants; unless ``allow_empty``.

    Raises:
        LibraryError: the tenant has no rows in the dataset.
    """
    if allow_empty or not frame.empty:
        return
    known = known_tenants(store)
    if tenant in known:
        return
    where = f"no rows for tenant {tenant!r} in {store.root}"
    if not known:
        raise LibraryError(f"{where}; the dataset holds no rows")
    same_case = [t for t in known if t.casefold() == tenant.casefold()]  # tenants are exact
    by_case = {t.casefold(): t for t in known}
    close = same_case or [
        by_case[c]
        for c in difflib.get_close_matches(tenant.casefold(), list(by_case), n=3, cutoff=0.5)
    ]
    if close:
        names = f"closest known tenants: {', '.join(close)}"
    else:
        listing = f"usage-analytics tenants {shlex.quote(str(store.root))}"
        more = f" ({len(known)} in all: see '{listing}')" if len(known) > 5 else ""
        names = f"known tenants: {', '.join(known[:5])}{more}"
    raise LibraryError(f"{where}; {names} (--allow-empty prints an empty table instead)")


# -- report -----------------------------------------------------------------------------------


@cli.command()
@_root
@click.option("--tenant", help="The tenant id (or --all-tenants).")
@click.option("--all-tenants", is_flag=True, help="Report over every tenant.")
@window_options
@by_option
@every_option(None, "Bucket width: one row per bucket of the wall clock of --tz (default: the "
              "whole window).")  # fmt: skip
@where_option
@metrics_option
@prices_option
@click.option(
    "--top",
    type=click.IntRange(min=1),
    metavar="N",
    help="Keep the N groups with the largest window total of --order-by (all their buckets).",
)
@click.option(
    "--order-by",
    metavar="METRIC",
    help="The metric that ranks the groups for --top (default: the first metric).",
)
@_allow_empty
@output_options
@with_window
def report(
    store: Store,
    *,
    window: Window,
    tenant: str | None,
    all_tenants: bool,
    by: tuple[str, ...],
    every: str | None,
    where: dict[str, Any],
    metrics: tuple[str, ...] | None,
    prices: Prices | None,
    top: int | None,
    order_by: str | None,
    allow_empty: bool,
) -> Document:
    """Any report of the engine: group --by dimensions, bucket --every, filter --where, pick
    --metrics, keep the --top N groups.

    The window is --start to --end, or the --last AGE (default: the whole dataset). For
    example: usage-analytics report data/sample --tenant tenant-005 --by model_id --every 1d.
    """
    if all_tenants == (tenant is not None):
        raise click.UsageError("give --tenant T or --all-tenants (one of them)")
    if order_by is not None and top is None:
        raise click.UsageError("--order-by ranks the groups for --top: give --top N as well")
    costs = [m for m in metrics or () if m.endswith("cost")]
    if costs and prices is None:
        raise click.UsageError(f"{', '.join(costs)} need a price table: give --prices FILE")
    if top is not None and order_by is None:
        order_by = metrics[0] if metrics else "requests"
    args: dict[str, Any] = {
        "by": by,
        "every": every,
        "tz": window.tz,
        "where": where or None,
        "metrics": None if metrics is None else list(metrics),
        "prices": prices,
        "top": top,
        "order_by": order_by,
    }
    try:  # the engine's own check of the request, before anything is read
        Report.of(parse_spec(tenant, window.start, window.end, **args))
    except InvalidArgumentError as exc:
        raise click.UsageError(str(exc)) from exc
    frame = store.report(tenant, window.start, window.end, **args)
    if tenant is not None:
        check_tenant(store, tenant, frame, allow_empty)
    shape = "".join(
        [
            f", by {', '.join(by)}" if by else "",
            f", every {every}" if every else "",
            f", the top {top} by {order_by}" if top is not None else "",
        ]
    )
    return Document(
        "report",
        f"Report for {_who(tenant)}, {_window_text(window)}{shape}: {_rows(len(frame))}",
        frame,
        _context(store, tenant, window, by=list(by), every=every),
        tz=window.tz,
    )


# -- the presets ------------------------------------------------------------------------------


@cli.command()
@_root
@tenant_option
@window_options
@_allow_empty
@output_options
@with_window
def summary(store: Store, *, window: Window, tenant: str, allow_empty: bool) -> Document:
    """Requests per API method: totals, successes (status 200), failures and the mean
    latency (the source system's aggregated usage)."""
    frame = store.aggregated_usage(tenant, window.start, window.end)
    check_tenant(store, tenant, frame, allow_empty)
    return Document(
        "summary",
        f"Requests per API method for {_who(tenant)}, {_window_text(window)}: {_rows(len(frame))}",
        frame,
        _context(store, tenant, window),
        tz=window.tz,
    )


@cli.command()
@_root
@tenant_option
@window_options
@click.option(
    "--top",
    type=click.IntRange(min=1),
    metavar="N",
    help="Only the N groups with the most requests, busiest first (default: every group, "
    "sorted by key, user and model).",
)
@click.option(
    "--exclude-empty-model",
    is_flag=True,
    help="Leave out rows without a model, as later versions of the source system do.",
)
@_allow_empty
@output_options
@with_window
def groups(
    store: Store,
    *,
    window: Window,
    tenant: str,
    top: int | None,
    exclude_empty_model: bool,
    allow_empty: bool,
) -> Document:
    """Usage per API key, user and model: requests, prompt and completion tokens, mean
    latency and time to first token (the source system's usage by groups)."""
    frame = store.get_usages_by_groups(
        tenant, window.start, window.end, exclude_empty_model=exclude_empty_model
    )
    check_tenant(store, tenant, frame, allow_empty)
    count = len(frame)
    shown = _rows(count, "group")
    if top is not None:
        frame = frame.nlargest(top, "total_requests", keep="first").reset_index(drop=True)
        if top < count:
            shown = f"the {top:,} busiest of {shown}"
    return Document(
        "groups",
        f"Usage per API key, user and model for {_who(tenant)}, {_window_text(window)}: {shown}",
        frame,
        _context(store, tenant, window, groups=count, top=top),
        tz=window.tz,
    )


@cli.command()
@_root
@tenant_option
@window_options
@every_option("1h", "Bucket width, on the wall clock of --tz.")
@click.option(
    "--status-code",
    type=click.IntRange(0, 999),
    multiple=True,
    help="Only rows with this status code (repeatable: any of them).",
)
@_allow_empty
@output_options
@with_window
def models(
    store: Store,
    *,
    window: Window,
    tenant: str,
    every: str,
    status_code: tuple[int, ...],
    allow_empty: bool,
) -> Document:
    """Requests and tokens per model per bucket, every model in every bucket (the source
    system's model usage summaries; rows without a model are left out)."""
    codes = list(status_code) or None
    frame = store.model_usage_summaries(
        tenant, window.start, window.end, every=every, status_code=codes, tz=window.tz
    )
    check_tenant(store, tenant, frame, allow_empty)
    return Document(
        "models",
        f"Requests and tokens per model every {every} for {_who(tenant)}, "
        f"{_window_text(window)}: {_rows(len(frame))}",
        frame,
        _context(store, tenant, window, every=every, status_code=codes),
        tz=window.tz,
    )


# -- tenants ----------------------------------------------------------------------------------


def _tenant_spans(store: Store) -> pd.DataFrame:
    """Each tenant's rows and exact first and last row times: a daily report of the whole
    dataset finds each tenant's rows and first and last day, and only those days' timestamps
    are read."""
    columns = {"tenant": [], "rows": [], "first": [], "last": []}  # type: dict[str, list[Any]]
    info = store.info()
    if info.first_timestamp is not None and info.last_timestamp is not None:
        daily = store.report(
            None,
            info.first_timestamp,
            info.last_timestamp + 1,
            by="tenant",
            every="1d",
            metrics=["requests"],
        )
        daily = daily[daily["requests"] > 0]
        for tenant, days in daily.groupby("tenant", sort=True):
            first_day = int(days["bucket"].min().value)
            last_day = int(days["bucket"].max().value)
            head = store.scan(str(tenant), first_day, first_day + _DAY, columns=["timestamp"])
            tail = store.scan(str(tenant), last_day, last_day + _DAY, columns=["timestamp"])
            columns["tenant"].append(str(tenant))
            columns["rows"].append(int(days["requests"].sum()))
            columns["first"].append(int(head["timestamp"].min()))
            columns["last"].append(int(tail["timestamp"].max()))
    return pd.DataFrame(
        {
            "tenant": pd.Series(columns["tenant"], dtype="str"),
            "rows": pd.Series(columns["rows"], dtype="int64"),
            "first": pd.to_datetime(pd.Series(columns["first"], dtype="int64"), utc=True),
            "last": pd.to_datetime(pd.Series(columns["last"], dtype="int64"), utc=True),
        }
    )


@cli.command()
@_root
@output_options
def tenants(root: str) -> Document:
    """Each tenant: its rows and the times of its first and last row (UTC)."""
    store = Store(root)
    frame = _tenant_spans(store)
    return Document(
        "tenants",
        f"Tenants of {store.root}: {_rows(len(frame), 'tenant')}",
        frame,
        {"root": str(store.root)},
    )


# -- html -------------------------------------------------------------------------------------


@cli.command()
@_root
@tenant_option
@window_options
@prices_option
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    required=True,
    type=click.Path(dir_okay=False),
    help="The HTML file to write.",
)
@_allow_empty
@with_window
def html(
    store: Store,
    *,
    window: Window,
    tenant: str,
    prices: Prices | None,
    output: str,
    allow_empty: bool,
) -> None:
    """Write the HTML usage report of a tenant (charts and tables) to --output."""
    try:
        from ..html import write_report
    except ImportError as exc:
        raise LibraryError(
            f"the html command cannot run: {exc}; install usage_analytics[plot]"
        ) from exc
    if not allow_empty:
        check_tenant(store, tenant, pd.DataFrame(), allow_empty)
    path = write_report(
        store, output, tenant, window.start, window.end, tz=window.tz, prices=prices
    )
    click.echo(f"HTML report of {_who(tenant)}, {_window_text(window)}, written to {path}")
