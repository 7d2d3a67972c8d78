"""The HTML report of one tenant's usage: one self-contained file that opens offline.

Every number comes from :meth:`Store.report`; the charts are inline SVG drawn by matplotlib
(``pip install 'usage_analytics[plot]'``), so the file fetches nothing: no scripts, fonts or
images from anywhere.
"""

from __future__ import annotations

import html
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from ._validation import to_window
from .errors import UsageAnalyticsError

if TYPE_CHECKING:
    from .reports.prices import Prices
    from .store import Store

__all__ = ["render_report", "write_report"]

_TOP: Final = 10
_NO_MODEL: Final = "(no model)"
_STYLE: Final = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #1f2328; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de;
     padding-bottom: .3rem; }
.window { color: #57606a; margin-top: 0; }
.totals { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; }
.totals div { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px;
              padding: .5rem .9rem; }
.totals b { display: block; font-size: 1.15rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; }
th { background: #f6f8fa; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: .5rem 0; }
figure svg { max-width: 100%; height: auto; }
p.note { color: #57606a; font-size: .85rem; }
"""


# -- formatting -------------------------------------------------------------------------------


def _count(v: Any) -> str:
    return f"{int(v):,}"


def _number(v: Any) -> str:
    return "-" if pd.isna(v) else f"{float(v):,.2f}"


def _percent(v: Any) -> str:
    return "-" if pd.isna(v) else f"{100 * float(v):.1f}%"


def _money(v: Any) -> str:
    return "-" if pd.isna(v) else f"{float(v):,.4f}"


def _text(v: Any) -> str:
    return html.escape(str(v)) if str(v) else "<i>(none)</i>"


def _time(ns: int, tz: str) -> str:
    moment = pd.Timestamp(ns, unit="ns", tz="UTC").tz_convert(tz)
    return str(moment.strftime("%Y-%m-%d %H:%M:%S"))


def _table(frame: pd.DataFrame, formats: dict[str, Callable[[Any], str]]) -> str:
    """An HTML table of ``frame``; columns in ``formats`` are numbers, the others text."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record, strict=True):
            if column in formats:
                cells.append(f'<td class="n">{formats[column](value)}</td>')
            else:
                cells.append(f"<td>{_text(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# -- charts -----------------------------------------------------------------------------------


def _figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageAnalyticsError(
            "the HTML report draws its charts with matplotlib, which is not installed: "
            "pip install 'usage_analytics[plot]'"
        ) from None
    return Figure(figsize=(10, 3.6), layout="constrained")


def _svg(fig: Any) -> str:
    """The figure as inline SVG, text kept as text, with no date or external reference."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "usage-analytics"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    if "<metadata>" in svg:  # an RDF block of namespaces: nothing a reader needs
        svg = svg[: svg.index("<metadata>")] + svg[svg.index("</metadata>") + 11 :]
    return f"<figure>{svg}</figure>"


def _thousands(ax: Any, decimals: int = 0) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.{decimals}f}"))


def _lines(
    frame: pd.DataFrame, column: str, series: str, title: str, ylabel: str, xlabel: str
) -> str:
    """One line per value of ``series`` over the buckets."""
    fig = _figure()
    ax = fig.subplots()
    wide = frame.pivot_table(index="bucket", columns=series, values=column, aggfunc="sum")
    x = wide.index.tz_localize(None) if hasattr(wide.index, "tz") else wide.index
    for name in wide.columns:
        ax.plot(x, wide[name].to_numpy(), marker=".", label=str(name) or _NO_MODEL)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _thousands(ax, 1 if ylabel.startswith("%") else 0)
    if len(wide.columns) > 1:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.autofmt_xdate()
    return _svg(fig)


def _bars(labels: Sequence[str], groups: dict[str, np.ndarray], title: str, ylabel: str) -> str:
    """Grouped bars: one group per label, one bar per entry of ``groups``."""
    fig = _figure()
    ax = fig.subplots()
    x = np.arange(len(labels))
    width = 0.8 / max(len(groups), 1)
    for i, (name, values) in enumerate(groups.items()):
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, [label or _NO_MODEL for label in labels], rotation=20, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    _thousands(ax)
    if len(groups) > 1:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _svg(fig)


# -- the sections -----------------------------------------------------------------------------


class _Page:
    def __init__(
        self, store: Store, tenant: str, start: int, end: int, tz: str, prices: Prices | None
    ) -> None:
        self.store, self.tenant, self.start, self.end = store, tenant, start, end
        self.tz, self.prices = tz, prices
        self.every = "1d" if end - start > 2 * 86_400 * 10**9 else "1h"
        self.axis = f"{'day' if self.every == '1d' else 'hour'} ({tz})"

    def report(self, **kwargs: Any) -> pd.DataFrame:
        return self.store.report(self.tenant, self.start, self.end, tz=self.tz, **kwargs)

    def totals(self) -> tuple[str, int]:
        metrics = ["requests", "error_rate", "prompt_tokens", "completion_tokens", "users"]
        if self.prices is not None:
            metrics.append("cost")
        frame = self.report(metrics=metrics, prices=self.prices)
        if frame.empty:  # no row in the window: nothing to add up
            frame = pd.DataFrame({m: [0 if m != "error_rate" else np.nan] for m in metrics})
        row = frame.iloc[0]
        boxes = [
            ("requests", _count(row["requests"])),
            ("error rate", _percent(row["error_rate"])),
            ("prompt tokens", _count(row["prompt_tokens"])),
            ("completion tokens", _count(row["completion_tokens"])),
            ("distinct users", _count(row["users"])),
        ]
        if self.prices is not None:
            boxes.append(("cost", _money(row["cost"])))
        cells = "".join(f"<div>{name}<b>{value}</b></div>" for name, value in boxes)
        return f'<div class="totals">{cells}</div>', int(row["requests"])

    def models_over_time(self) -> str:
        frame = self.report(by="model_id", every=self.every, metrics=["requests", "total_tokens"])
        unit = "day" if self.every == "1d" else "hour"
        return (
            "<h2>Requests and tokens per model</h2>"
            + _lines(frame, "requests", "model_id", f"Requests per model per {unit}",
                     "requests", self.axis)
            + _lines(frame, "total_tokens", "model_id",
                     f"Tokens (prompt + completion) per model per {unit}", "tokens", self.axis)
        )  # fmt: skip

    def latency(self) -> str:
        metrics = [
            "requests",
            "latency_ms_p50",
            "latency_ms_p95",
            "latency_ms_p99",
            "time_to_first_token_ms_p50",
            "time_to_first_token_ms_p95",
        ]
        frame = self.report(by="model_id", metrics=metrics)
        labels = frame["model_id"].tolist()
        chart = _bars(
            labels,
            {q: frame[f"latency_ms_{q}"].to_numpy(dtype=float) for q in ("p50", "p95", "p99")},
            "Latency percentiles per model",
            "latency (ms)",
        )
        shown = frame.assign(model_id=[m or _NO_MODEL for m in labels]).rename(
            columns={m: f"{m} (ms)" for m in metrics[1:]}
        )
        formats: dict[str, Callable[[Any], str]] = {
            str(c): _number for c in shown.columns if str(c).endswith("(ms)")
        }
        formats["requests"] = _count
        return (
            "<h2>Latency and time to first token per model</h2>"
            '<p class="note">Exact percentiles (linear interpolation between closest ranks) '
            "of each model's requests in the window.</p>" + chart + _table(shown, formats)
        )

    def errors(self) -> str:
        frame = self.report(by="status_class", every=self.every, metrics=["requests"])
        totals = frame.groupby("bucket")["requests"].transform("sum")
        share = frame.assign(requests=np.where(totals > 0, frame["requests"] / totals * 100, 0.0))
        share = share[share["status_class"] != "2xx"]
        unit = "day" if self.every == "1d" else "hour"
        rate = self.report(every=self.every, metrics=["requests", "error_rate"])
        chart = (
            _lines(share, "requests", "status_class",
                   f"Requests per status class other than 2xx, per {unit}",
                   "% of requests", self.axis)
            if not share.empty
            else ""
        )  # fmt: skip
        rate_chart = _lines(
            rate.assign(error_rate=rate["error_rate"].fillna(0) * 100, series="error rate"),
            "error_rate",
            "series",
            f"Error rate (status other than 200) per {unit}",
            "% of requests",
            self.axis,
        )
        return "<h2>Errors</h2>" + rate_chart + chart

    def top(self, by: str, what: str, order_by: str) -> str:
        metrics = ["requests", "prompt_tokens", "completion_tokens", "total_tokens"]
        if self.prices is not None:
            metrics.append("cost")
        frame = self.report(by=by, metrics=metrics, prices=self.prices, top=_TOP, order_by=order_by)
        frame = frame.sort_values([order_by, by], ascending=[False, True], kind="stable")
        formats: dict[str, Callable[[Any], str]] = dict.fromkeys(metrics[:4], _count)
        if self.prices is not None:
            formats["cost"] = _money
        title = f"Top {_TOP} {what} by {'cost' if order_by == 'cost' else 'tokens'}"
        return f"<h2>{title}</h2>" + _table(frame, formats)


def render_report(
    store: Store,
    tenant_id: str,
    start: Any,
    end: Any,
    *,
    tz: str = "UTC",
    prices: Prices | None = None,
) -> str:
    """The HTML report of ``tenant_id``'s usage in ``[start, end)``, as text.

    It shows the window's totals, requests and tokens per model over time (per day for windows
    longer than two days, else per hour, in ``tz``), latency and time-to-first-token
    percentiles per model, the error rate and the status classes over time, and the top API
    keys and users by tokens, and by cost when ``prices`` is given.

    Raises:
        InvalidArgumentError: a bad window, zone or price table (as ``Store.report``).
        UsageAnalyticsError: matplotlib is not installed.

    Example:
        >>> from usage_analytics import Store
        >>> page = render_report(Store("data/sample"), "tenant-005", "2026-11-01", "2026-11-08")
        >>> page.startswith("<!DOCTYPE html>"), "Latency percentiles per model" in page
        (True, True)
    """
    _figure()  # the error about matplotlib, before any work
    lo, hi = to_window(start, end)
    page = _Page(store, tenant_id, lo, hi, tz, prices)
    window = f"{_time(lo, tz)} to {_time(hi, tz)} ({html.escape(tz)})"
    title = f"Usage of tenant {html.escape(str(tenant_id))}"
    totals, requests = page.totals()
    if requests == 0:
        body = f"{totals}<p>No rows for this tenant in the window.</p>"
    else:
        body = (
            totals
            + page.models_over_time()
            + page.latency()
            + page.errors()
            + page.top("api_key_id", "API keys", "total_tokens")
            + page.top("user_id", "users", "total_tokens")
        )
        if prices is not None:
            body += page.top("api_key_id", "API keys", "cost")
            body += page.top("user_id", "users", "cost")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}, {window}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{title}</h1><p class="window">{window}; times in {html.escape(tz)}, '
        f"from the start (inclusive) to the end (exclusive)</p>{body}</body></html>\n"
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
    """Write :func:`render_report` to ``path`` atomically (a temporary file in the same
    folder, then a rename); returns the path.

    Example:
        >>> from usage_analytics import Store
        >>> out = write_report(Store("data/sample"), tmp / "r.html", "tenant-005",
        ...                    "2026-11-01", "2026-11-03", tz="Europe/Paris")
        >>> out.read_text().count("<svg") >= 4
        True
    """
    target = Path(path)
    text = render_report(store, tenant_id, start, end, tz=tz, prices=prices)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # as open() would make it, not mkstemp's 0600
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise UsageAnalyticsError(
            f"cannot write the HTML report to {target} ({exc.strerror or exc}); give a "
            "writable path"
        ) from exc
    return target
