"""The HTML report of one tenant's usage: one self-contained file that opens offline.

Every number on the page comes from :meth:`Store.report <usage_analytics.Store.report>`, printed
as the engine gives it. The charts are inline SVG drawn by matplotlib (``pip install
'usage_analytics[plot]'``) with their text kept as text, so the file fetches nothing: no scripts,
fonts, style sheets or images from anywhere. matplotlib is imported when a page is drawn, not
when this module is, and only through :class:`matplotlib.figure.Figure` under its default style:
pyplot's figures, the backend and the style of a notebook are left alone.
"""

from __future__ import annotations

import errno
import html
import io
import os
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from ._validation import to_window
from .errors import InvalidArgumentError, StorageError, UsageAnalyticsError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .reports.prices import Prices
    from .store import Store

__all__ = ["render_report", "write_report"]

_TOP: Final = 10
_MAX_SERIES: Final = 10  # lines in a chart; past it the smallest series are added up into one
_MAX_BARS: Final = 25  # models in the percentile chart; the table lists them all

_NO_MODEL: Final = "(no model)"
_NONE: Final = "(none)"
_DAY: Final = 86_400 * 10**9
_LATENCY: Final = ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99")
_TTFT: Final = ("time_to_first_token_ms_p50", "time_to_first_token_ms_p95")
_TOKENS: Final = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
_STYLE: Final = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       margin: 2rem auto; max-width: 1100px; padding: 0 1rem; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; margin-top: 2.4rem; border-bottom: 1px solid #d0d7de;
     padding-bottom: .3rem; }
.window { color: #57606a; margin-top: 0; }
.totals { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; }
.totals div { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px;
              padding: .5rem .9rem; }
.totals b { display: block; font-size: 1.15rem; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; }
th { background: #f6f8fa; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: .8rem 0; }
figure svg { max-width: 100%; height: auto; }
p.note { color: #57606a; font-size: .85rem; }
"""

# -- formatting -------------------------------------------------------------------------------


def _count(value: Any) -> str:
    return f"{int(value):,}"


def _ms(value: Any) -> str:
    return "-" if pd.isna(value) else f"{float(value):,.2f}"


def _percent(value: Any) -> str:
    return "-" if pd.isna(value) else f"{100 * float(value):.1f}%"


def _money(value: Any) -> str:
    return "-" if pd.isna(value) else f"{float(value):,.4f}"


def _moment(ns: int, tz: str) -> str:
    """An instant to the second on the wall clock of ``tz``."""
    return str(pd.Timestamp(ns, unit="ns", tz="UTC").tz_convert(tz).strftime("%Y-%m-%d %H:%M:%S"))


def _label(value: object, empty: str = _NO_MODEL) -> str:
    """A string of the data as matplotlib text: shortened, and never read as mathtext."""
    text = str(value) or empty
    if len(text) > 40:
        text = text[:39] + "\u2026"
    return text.replace("$", r"\$")


# A column of a table: (frame column, header, formatter of a number; None: text of the data).
_Column = tuple[str, str, Callable[[Any], str] | None]


def _table(frame: pd.DataFrame, columns: Sequence[_Column], *, empty: str = _NONE) -> str:
    """An HTML table of ``frame``; text cells are escaped, an empty one shows ``empty``."""
    head = "".join(
        ("<th>" if fmt is None else '<th class="n">') + f"{html.escape(title)}</th>"
        for _, title, fmt in columns
    )
    rows = []
    for record in frame[[name for name, _, _ in columns]].itertuples(index=False):
        cells = []
        for value, (_, _, fmt) in zip(record, columns, strict=True):
            if fmt is not None:
                cells.append(f'<td class="n">{fmt(value)}</td>')
            else:
                cells.append(f"<td>{html.escape(str(value)) or f'<i>{empty}</i>'}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# -- charts -----------------------------------------------------------------------------------


def _require_matplotlib() -> None:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise UsageAnalyticsError(
            "the HTML report draws its charts with matplotlib, which is not installed: "
            "pip install 'usage_analytics[plot]'"
        ) from None


_XMLNS: Final = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')


def _inline(svg: str, alt: str) -> str:
    """matplotlib's SVG document as an element of the page: no XML prologue, doctype or
    metadata, no namespace declarations (an HTML parser knows them), and a text alternative."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r'<g id="[^"]*"', "<g", svg)  # "figure_1", "axes_1": in every figure, unused
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, count=1, flags=re.DOTALL)
    end = svg.index(">")
    tag = _XMLNS.sub("", svg[:end]) + f' role="img" aria-label="{html.escape(alt)}"'
    return f"<figure>{tag}{svg[end:]}</figure>"


def _thousands(value: float, _: object) -> str:
    return f"{value:,.0f}"


def _legend(ax: Axes, handles: Sequence[Any], labels: Sequence[str]) -> None:
    # Handles and labels given explicitly: a label that starts with "_" is shown too.
    ax.legend(handles, labels, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


class _Charts:
    """Draws the page's figures, each as inline SVG whose ids no other figure uses."""

    def __init__(self, tz: str, unit: str) -> None:
        self.tz, self.unit, self.drawn = tz, unit, 0

    def draw(self, paint: Callable[[Figure], None], *, height: float, alt: str) -> str:
        import matplotlib
        import matplotlib.style
        from matplotlib.figure import Figure

        self.drawn += 1
        buffer = io.StringIO()
        with (
            matplotlib.style.context("default"),
            matplotlib.rc_context(
                {"svg.fonttype": "none", "svg.hashsalt": f"usage-analytics-{self.drawn}"}
            ),
        ):
            fig = Figure(figsize=(10, height), layout="constrained")
            try:
                paint(fig)
                fig.savefig(buffer, format="svg", metadata={"Date": None})
            finally:
                fig.clear()
        return _inline(buffer.getvalue(), alt)

    def lines(
        self,
        x: pd.DatetimeIndex,
        series: Sequence[tuple[str, np.ndarray]],
        *,
        title: str,
        ylabel: str,
        percent: bool = False,
        dashed: Sequence[tuple[str, np.ndarray]] = (),
    ) -> str:
        """One line per series over the buckets ``x``, time labelled on the zone's clock."""

        def paint(fig: Figure) -> None:
            from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, DayLocator
            from matplotlib.ticker import FuncFormatter, PercentFormatter

            ax = fig.subplots()
            instants = x.to_pydatetime()  # tz-aware: placed at their instant, even around DST
            marker = "." if len(x) <= 120 else None
            handles = [ax.plot(instants, v, marker=marker)[0] for _, v in series]
            handles += [ax.plot(instants, v, "k--", marker=marker)[0] for _, v in dashed]
            zone = ZoneInfo(self.tz)
            if self.unit == "day":  # ticks on the days' buckets, never between them
                step = max(1, -(-len(x) // 12))
                locator: Any = DayLocator(  # type: ignore[no-untyped-call]
                    interval=step, tz=zone
                )
            else:
                locator = AutoDateLocator(  # type: ignore[no-untyped-call]
                    tz=zone, minticks=4, maxticks=12
                )
            ax.xaxis.set_major_locator(locator)
            labels = ConciseDateFormatter(locator, tz=zone)  # type: ignore[no-untyped-call]
            ax.xaxis.set_major_formatter(labels)
            ax.yaxis.set_major_formatter(
                PercentFormatter(100, decimals=1) if percent else FuncFormatter(_thousands)
            )
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.set_title(title)
            ax.set_xlabel(f"{self.unit} ({self.tz})")
            ax.set_ylabel(ylabel)
            _legend(ax, handles, [name for name, _ in (*series, *dashed)])

        return self.draw(paint, height=3.6, alt=title)

    def percentiles(self, models: pd.DataFrame) -> str:
        """Latency and time-to-first-token percentiles per model, as horizontal bars (of the
        ``_MAX_BARS`` models with the most requests when there are more)."""
        title = "Latency and time to first token per model"
        if len(models) > _MAX_BARS:
            busiest = models.sort_values(["requests", "model_id"], ascending=[False, True])
            models = busiest.head(_MAX_BARS).sort_values("model_id")
            title += f" (the {_MAX_BARS} models with the most requests)"

        def paint(fig: Figure) -> None:
            from matplotlib.ticker import FuncFormatter, NullFormatter

            left, right = fig.subplots(1, 2, sharey=True)
            y = np.arange(len(models))
            for ax, columns, what in (
                (left, _LATENCY, "latency"),
                (right, _TTFT, "time to first token"),
            ):
                values = models[list(columns)].to_numpy(dtype=float)
                width = 0.8 / len(columns)
                handles = [
                    ax.barh(y + (i - (len(columns) - 1) / 2) * width, values[:, i], width)
                    for i in range(len(columns))
                ]
                positive = values[values > 0]
                log = positive.size > 0 and positive.max() > 100 * positive.min()
                if log:  # milliseconds to minutes side by side: each bar readable
                    ax.set_xscale("log")
                    ax.xaxis.set_minor_formatter(NullFormatter())
                ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
                ax.set_xlabel(f"{what} (ms{', log scale' if log else ''})")
                ax.set_title(f"{what} percentiles")
                ax.grid(alpha=0.3, axis="x")
                if ax is left:  # p50, p95, p99: the same colours in both
                    fig.legend(
                        handles,
                        [c.rsplit("_", 1)[1] for c in columns],
                        loc="outside right upper",
                        fontsize="small",
                    )
            left.set_yticks(y, [_label(m) for m in models["model_id"]])
            left.invert_yaxis()
            fig.suptitle(title)

        return self.draw(paint, height=1.4 + 0.45 * len(models), alt=title)


def _series(
    frame: pd.DataFrame, by: str, value: str, *, rank: str, empty: str, what: str
) -> tuple[pd.DatetimeIndex, list[tuple[str, np.ndarray]]]:
    """One series of ``value`` per value of ``by`` over the buckets, the largest total of
    ``rank`` first (so charts ranked alike colour a model alike); past ``_MAX_SERIES`` the
    smallest are added up into one, so that no row is left out."""
    wide = frame.pivot(index="bucket", columns=by, values=value)
    totals = frame.groupby(by)[rank].sum()
    order = sorted(wide.columns, key=lambda c: (-totals[c], str(c)))
    series = [(_label(c, empty), wide[c].to_numpy(dtype=float)) for c in order]
    if len(series) > _MAX_SERIES:
        rest = series[_MAX_SERIES - 1 :]
        summed = np.sum([v for _, v in rest], axis=0)
        series = [*series[: _MAX_SERIES - 1], (f"{len(rest)} other {what}", summed)]
    return pd.DatetimeIndex(wide.index), series


# -- the sections -----------------------------------------------------------------------------


def _every(lo: int, hi: int) -> tuple[str, str]:
    """The charts' bucket width and its name: hours for a window of two days or less, else days
    (weeks past a year and months past five, to keep a chart's points few)."""
    span = hi - lo
    if span <= 2 * _DAY:
        return "1h", "hour"
    if span <= 366 * _DAY:
        return "1d", "day"
    return ("1w", "week") if span <= 5 * 366 * _DAY else ("1mo", "month")


class _Page:
    """The report's sections, each one HTML fragment from a few reports of the engine."""

    def __init__(
        self, store: Store, tenant: str, window: tuple[int, int], tz: str, prices: Prices | None
    ) -> None:
        self.store, self.tenant, self.window = store, tenant, window
        self.tz, self.prices = tz, prices
        self.every, self.unit = _every(*window)
        self.charts = _Charts(tz, self.unit)
        self.money: list[_Column] = [] if prices is None else [("cost", "cost", _money)]

    def report(self, **args: Any) -> pd.DataFrame:
        lo, hi = self.window
        return self.store.report(self.tenant, lo, hi, tz=self.tz, **args)

    def totals(self) -> tuple[str, int]:
        """The boxes of the window's totals, and its requests."""
        metrics = ["requests", "error_rate", "prompt_tokens", "completion_tokens", "users"]
        metrics += ["api_keys"] + [name for name, _, _ in self.money]
        frame = self.report(metrics=metrics, prices=self.prices)
        if frame.empty:  # no row in the window
            frame = pd.DataFrame(
                {m: [np.nan if m in ("error_rate", "cost") else 0] for m in metrics}
            )
        row = frame.to_dict("records")[0]  # each value of its column's dtype

        boxes = [
            ("requests", _count(row["requests"])),
            ("error rate", _percent(row["error_rate"])),
            ("prompt tokens", _count(row["prompt_tokens"])),
            ("completion tokens", _count(row["completion_tokens"])),
            ("distinct users", _count(row["users"])),
            ("API keys", _count(row["api_keys"])),
        ]
        if self.prices is not None:
            boxes.append(("cost", _money(row["cost"])))
        cells = "".join(f"<div>{name}<b>{value}</b></div>" for name, value in boxes)
        return f'<div class="totals">{cells}</div>', int(row["requests"])

    def models(self) -> str:
        """Requests and tokens per model over time; the models' totals and percentiles."""
        over_time = self.report(
            by="model_id", every=self.every, metrics=["requests", "total_tokens"]
        )
        per = f"per model per {self.unit}"
        charts = []
        for value, title, ylabel in (
            ("requests", f"Requests {per}", "requests"),
            ("total_tokens", f"Tokens (prompt + completion) {per}", "tokens"),
        ):
            x, series = _series(
                over_time, "model_id", value, rank="requests", empty=_NO_MODEL, what="models"
            )
            charts.append(self.charts.lines(x, series, title=title, ylabel=ylabel))
        metrics = [*_TOKENS, *_LATENCY, *_TTFT] + [name for name, _, _ in self.money]
        models = self.report(by="model_id", metrics=metrics, prices=self.prices)
        model: _Column = ("model_id", "model", None)
        counts: list[_Column] = [(m, m.replace("_", " "), _count) for m in _TOKENS]
        latency: list[_Column] = [(m, f"latency {m[-3:]} (ms)", _ms) for m in _LATENCY]
        ttft: list[_Column] = [(m, f"first token {m[-3:]} (ms)", _ms) for m in _TTFT]
        return (
            "<h2>Requests and tokens per model</h2>"
            + "".join(charts)
            + _table(models, [model, *counts, *self.money], empty=_NO_MODEL)
            + "<h2>Latency and time to first token per model</h2>"
            + '<p class="note">Exact percentiles (linear interpolation between the closest '
            "ranks) of each model's requests in the window; first token: the time to the first "
            "token.</p>"
            + self.charts.percentiles(models)
            + _table(models, [model, counts[0], *latency, *ttft], empty=_NO_MODEL)
        )

    def errors(self) -> str:
        """The share of requests per status class over time, beside the error rate."""
        classes = self.report(by="status_class", every=self.every, metrics=["requests"])
        overall = self.report(every=self.every, metrics=["requests", "error_rate"])
        share = classes.merge(overall[["bucket", "requests"]], on="bucket", suffixes=("", "_all"))
        all_requests = share["requests_all"].where(share["requests_all"] > 0)
        share["share"] = 100 * share["requests"] / all_requests
        others = share[share["status_class"] != "2xx"]
        x = pd.DatetimeIndex(overall["bucket"])
        series = _series(
            others, "status_class", "share", rank="requests", empty=_NONE, what="classes"
        )[1]
        rate = [("error rate (status other than 200)", overall["error_rate"].to_numpy() * 100)]
        title = f"Share of requests per status class other than 2xx, per {self.unit}"
        chart = self.charts.lines(
            x, series, title=title, ylabel="% of requests", percent=True, dashed=rate
        )
        window = self.report(by="status_class", metrics=["requests"])
        window["share"] = window["requests"] / window["requests"].sum()
        table = _table(
            window,
            [
                ("status_class", "status class", None),
                ("requests", "requests", _count),
                ("share", "% of requests", _percent),
            ],
        )
        return "<h2>Errors per status class</h2>" + chart + table

    def top(self, by: str, what: str, order_by: str) -> str:
        """The ``_TOP`` API keys or users with the most ``order_by``, the most first."""
        metrics = [*_TOKENS] + [name for name, _, _ in self.money]
        frame = self.report(by=by, metrics=metrics, prices=self.prices, top=_TOP, order_by=order_by)
        frame = frame.sort_values([order_by, by], ascending=[False, True], kind="stable")
        key: _Column = (by, "API key" if by == "api_key_id" else "user", None)
        counts: list[_Column] = [(m, m.replace("_", " "), _count) for m in _TOKENS]
        title = f"Top {_TOP} {what} by {order_by.replace('_', ' ')}"
        return f"<h2>{title}</h2>" + _table(frame, [key, *counts, *self.money])


# -- the page ---------------------------------------------------------------------------------


def render_report(
    store: Store,
    tenant_id: str,
    start: Any,
    end: Any,
    *,
    tz: str = "UTC",
    prices: Prices | None = None,
) -> str:
    """The HTML report of ``tenant_id``'s usage in ``start <= timestamp < end``, as text.

    The page shows the window's totals; requests and tokens per model over time (per hour for
    a window of two days or less, else per day, on the wall clock of ``tz``); latency and
    time-to-first-token percentiles per model; the share of requests per status class and the
    error rate over time; the top 10 API keys and users by total tokens, and by cost when
    ``prices`` is given. It is one file that fetches nothing.

    Args:
        store: the dataset.
        tenant_id: the tenant.
        start, end: the window, as :meth:`Store.report` takes it (int ns since the epoch,
            datetime, pd.Timestamp or ISO string; naive values are UTC).
        tz: the IANA zone of the times shown and of the buckets.
        prices: a price table, for the cost figures.

    Raises:
        InvalidArgumentError: a bad tenant, window or zone (as ``Store.report`` says).
        MissingPriceError: tokens of a model the prices lack.
        UsageAnalyticsError: matplotlib is not installed.

    Example:
        >>> from usage_analytics import Store
        >>> page = render_report(Store("data/sample"), "tenant-005", "2026-11-02T00:00-05:00",
        ...                      "2026-11-09T00:00-05:00", tz="America/New_York")
        >>> "2026-11-02 00:00:00 to 2026-11-09 00:00:00 America/New_York" in page
        True
        >>> page.count("<svg")
        4
    """
    if not isinstance(tenant_id, str):
        raise InvalidArgumentError(f"tenant_id must be a str, not {tenant_id!r}")
    _require_matplotlib()  # before any work
    window = to_window(start, end)
    page = _Page(store, tenant_id, window, tz, prices)
    totals, requests = page.totals()  # the engine checks the zone and the prices first
    tenant = html.escape(tenant_id)
    when = f"{_moment(window[0], tz)} to {_moment(window[1], tz)} {html.escape(tz)}"
    if requests == 0:
        body = f"{totals}<p><b>No rows for tenant {tenant} in the window.</b></p>"
    else:
        sections = [
            totals,
            page.models(),
            page.errors(),
            page.top("api_key_id", "API keys", "total_tokens"),
            page.top("user_id", "users", "total_tokens"),
        ]
        if prices is not None:
            sections += [
                page.top("api_key_id", "API keys", "cost"),
                page.top("user_id", "users", "cost"),
            ]
        body = "".join(sections)
    note = "start included, end excluded"
    if prices is not None:
        note += "; costs in the currency of the price table"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Usage of tenant {tenant}, {when}</title><style>{_STYLE}</style></head>\n"
        f'<body><h1>Usage of tenant {tenant}</h1><p class="window">{when} ({note})</p>\n'
        f"{body}\n</body></html>\n"
    )


def write_report(
    store: Store,
    path: str | os.PathLike[str],
    tenant_id: str,
    start: Any,
    end: Any,
    *,
    tz: str = "UTC",
    prices: Prices | None = None,
) -> Path:
    """Write :func:`render_report` to ``path`` atomically: into a temporary file in the same
    folder, then renamed over ``path`` (a reader sees the old file or the new one, never part).

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        StorageError: the file cannot be written (nothing is left behind).
        and what :func:`render_report` raises.

    Example:
        >>> from usage_analytics import Store
        >>> out = write_report(Store("data/sample"), tmp / "report.html", "tenant-005",
        ...                    "2026-11-01", "2026-11-03", tz="Europe/Paris")
        >>> out.name, out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
        ('report.html', True)
    """
    target = Path(path)
    text = render_report(store, tenant_id, start, end, tz=tz, prices=prices)
    # A name of our own, created exclusively: the file gets the mode open() gives (the umask's).
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    try:
        try:
            with open(temporary, "x", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(
            exc.errno or errno.EIO,
            f"cannot write the HTML report to {target} ({exc.strerror or exc}); give a path in "
            "a folder that exists and is writable",
        ) from exc
    return target
