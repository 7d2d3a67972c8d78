"""The HTML report: its numbers are the engine's, it fetches nothing, and a browser shows it."""

from __future__ import annotations

import os
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import new_store

from usage_analytics import Prices, Store, synthetic
from usage_analytics.errors import InvalidArgumentError, StorageError, UsageAnalyticsError
from usage_analytics.html import render_report, write_report

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
TENANT = "acme"
# Four days from midnight in New York: daily buckets, and the change back to standard time.
START, END = "2026-11-01T00:00-04:00", "2026-11-05T00:00-05:00"
NY = "America/New_York"
HOSTILE = "<script>alert(1)</script>"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Six thousand rows of one tenant over five UTC days, of 21 models (one of them empty)."""
    frame = synthetic.generate(6000, start="2026-11-01", days=5, seed=3)
    return frame.assign(tenant=TENANT)


@pytest.fixture(scope="module")
def store(rows: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = new_store(tmp_path_factory.mktemp("html") / "usage")
    store.create_usage(rows)
    return store


@pytest.fixture(scope="module")
def prices(rows: pd.DataFrame) -> Prices:
    models = sorted(set(rows["model_id"]) - {""})
    return Prices.from_dict({m: (0.1 * (i + 1), 0.3 * (i + 1)) for i, m in enumerate(models)})


@pytest.fixture(scope="module")
def page(store: Store, prices: Prices) -> str:
    return render_report(store, TENANT, START, END, tz=NY, prices=prices)


class Page(HTMLParser):
    """What a test looks at: the tables under each heading, the texts of the charts, every
    attribute that can name a place to fetch, the tags, the visible text."""

    URL_ATTRIBUTES = frozenset(
        {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster", "data"}
    )

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.urls: list[str] = []
        self.styles: list[str] = []
        self.tags: set[str] = set()
        self.svg_texts: list[str] = []
        self.texts: dict[str, list[str]] = {"title": [], "h1": [], "p": [], "h2": []}
        self.visible: list[str] = []
        self._open: list[str] = []
        self._heading = ""
        self._cell: list[str] | None = None
        self._table: list[list[str]] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self._open.append(tag)
        for name, value in attrs:
            if name in self.URL_ATTRIBUTES:
                self.urls.append(value or "")
            if name == "style":
                self.styles.append(value or "")
        if tag == "table":
            self._table = []
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table" and self._table is not None:
            self.tables[self._heading] = self._table
            self._table = None
        if tag in self._open:
            while self._open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        where = self._open[-1] if self._open else ""
        if where == "style":
            self.styles.append(data)
            return
        self.visible.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if "svg" in self._open and where == "text":
            self.svg_texts.append(data)
        if where in self.texts:
            self.texts[where].append(data)
        if where == "h2":
            self._heading = data.strip()

    def table(self, heading: str) -> tuple[list[str], list[list[str]]]:
        """The header and the rows of the table under ``heading``."""
        found = self.tables[heading]
        return found[0], found[1:]

    def column(self, heading: str, name: str) -> list[str]:
        header, body = self.table(heading)
        return [row[header.index(name)] for row in body]


def test_the_tables_are_the_engines(store: Store, prices: Prices, page: str) -> None:
    shown = Page(page)
    metrics = ["requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost"]
    percentiles = [
        "latency_ms_p50",
        "latency_ms_p95",
        "latency_ms_p99",
        "time_to_first_token_ms_p50",
        "time_to_first_token_ms_p95",
    ]
    expected = store.report(
        TENANT, START, END, by="model_id", metrics=metrics + percentiles, prices=prices
    )
    assert len(expected) == 21 and "" in set(expected["model_id"])
    models = [m or "(no model)" for m in expected["model_id"]]
    tokens = "Requests and tokens per model"
    assert shown.column(tokens, "model") == models
    assert shown.column(tokens, "requests") == [f"{v:,}" for v in expected["requests"]]
    assert shown.column(tokens, "total tokens") == [f"{v:,}" for v in expected["total_tokens"]]
    assert shown.column(tokens, "cost") == [f"{v:,.4f}" for v in expected["cost"]]
    latency = "Latency and time to first token per model"
    assert shown.column(latency, "model") == models
    for name, header in zip(
        percentiles,
        [
            "latency p50 (ms)",
            "latency p95 (ms)",
            "latency p99 (ms)",
            "first token p50 (ms)",
            "first token p95 (ms)",
        ],
        strict=True,
    ):
        assert shown.column(latency, header) == [f"{v:,.2f}" for v in expected[name]], name
    # a value with a fraction and thousands, as the engine gives it
    assert any("," in v and not v.endswith(".00") for v in shown.column(latency, header))


def test_the_top_keys_and_users_are_the_engines(store: Store, prices: Prices, page: str) -> None:
    shown = Page(page)
    metrics = ["requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost"]
    for by, what in (("api_key_id", "API keys"), ("user_id", "users")):
        for order_by in ("total_tokens", "cost"):
            expected = store.report(
                TENANT,
                START,
                END,
                by=by,
                metrics=metrics,
                prices=prices,
                top=10,
                order_by=order_by,
            ).sort_values([order_by, by], ascending=[False, True])
            heading = f"Top 10 {what} by {order_by.replace('_', ' ')}"
            key = "API key" if by == "api_key_id" else "user"
            assert shown.column(heading, key) == expected[by].tolist()
            assert shown.column(heading, "total tokens") == [
                f"{v:,}" for v in expected["total_tokens"]
            ]
            assert shown.column(heading, "requests") == [f"{v:,}" for v in expected["requests"]]
            assert shown.column(heading, "cost") == [f"{v:,.4f}" for v in expected["cost"]]
            assert len(expected) == 10


def test_the_totals_and_status_classes_are_the_engines(
    store: Store, prices: Prices, page: str
) -> None:
    totals = store.report(
        TENANT,
        START,
        END,
        metrics=["requests", "error_rate", "prompt_tokens", "completion_tokens", "users", "cost"],
        prices=prices,
    ).to_dict("records")[0]
    for label, value in (
        ("requests", f"{totals['requests']:,}"),
        ("error rate", f"{100 * totals['error_rate']:.1f}%"),
        ("prompt tokens", f"{totals['prompt_tokens']:,}"),
        ("completion tokens", f"{totals['completion_tokens']:,}"),
        ("distinct users", f"{totals['users']:,}"),
        ("cost", f"{totals['cost']:,.4f}"),
    ):
        assert f"<div>{label}<b>{value}</b></div>" in page
    classes = store.report(TENANT, START, END, by="status_class", metrics=["requests"])
    shown = Page(page)
    heading = "Errors per status class"
    assert shown.column(heading, "status class") == ["2xx", "4xx", "5xx"]
    assert shown.column(heading, "requests") == [f"{v:,}" for v in classes["requests"]]
    share = classes["requests"] / totals["requests"]
    assert shown.column(heading, "% of requests") == [f"{100 * v:.1f}%" for v in share]


def test_the_window_is_shown_to_the_second_in_the_zone(store: Store, page: str) -> None:
    shown = Page(page)
    window = "2026-11-01 00:00:00 to 2026-11-05 00:00:00 America/New_York"
    assert "".join(shown.texts["title"]) == f"Usage of tenant {TENANT}, {window}"
    assert "".join(shown.texts["h1"]) == f"Usage of tenant {TENANT}"
    assert any(p.startswith(window) for p in shown.texts["p"])
    # naive bounds are UTC: midnight UTC is 20:00 the evening before in New York (EDT), and
    # 19:00 after the change to EST
    text = render_report(store, TENANT, "2026-11-01", "2026-11-05", tz=NY)
    assert "2026-10-31 20:00:00 to 2026-11-04 19:00:00 America/New_York" in text
    text = render_report(store, TENANT, "2026-11-01", "2026-11-05")
    assert "2026-11-01 00:00:00 to 2026-11-05 00:00:00 UTC" in text
    ns = int(pd.Timestamp("2026-11-02T03:04:05.999", tz="UTC").value)
    text = render_report(store, TENANT, ns, ns + 3_600 * 10**9, tz="Asia/Kolkata")
    assert "2026-11-02 08:34:05 to 2026-11-02 09:34:05 Asia/Kolkata" in text


def test_charts_are_labelled_with_units_and_the_zone(store: Store, page: str) -> None:
    texts = Page(page).svg_texts
    assert texts.count("day (America/New_York)") == 3  # requests, tokens, errors over time
    for label in (
        "Requests per model per day",
        "Tokens (prompt + completion) per model per day",
        "Latency and time to first token per model",
        "Share of requests per status class other than 2xx, per day",
        "requests",
        "tokens",
        "% of requests",
        "time to first token (ms)",
        "error rate (status other than 200)",
        "4xx",
        "5xx",
        "p99",
    ):
        assert label in texts, label
    assert "latency (ms, log scale)" in texts or "latency (ms)" in texts
    assert any(t.endswith("%") for t in texts)  # the percent axis
    # 21 models: the 9 with the most requests have a line each, the others one together
    assert texts.count("12 other models") == 2
    assert texts.count("(no model)") == 3  # its lines and its bars
    # two days or less: hours; the day clocks went back has 25 hours
    two_days = render_report(store, TENANT, "2026-11-02T00:00-05:00", "2026-11-04T00:00-05:00")
    assert Page(two_days).svg_texts.count("hour (UTC)") == 3
    assert "Requests per model per hour" in Page(two_days).svg_texts
    longer = render_report(store, TENANT, START, "2026-11-03T00:00-05:00", tz=NY)
    assert Page(longer).svg_texts.count("day (America/New_York)") == 3


def test_it_fetches_nothing(page: str) -> None:
    shown = Page(page)
    assert shown.urls and all(url.startswith("#") for url in shown.urls)  # SVG's own ids
    assert not any(re.search(r"url\(\s*['\"]?(?!#)", style) for style in shown.styles)
    assert {"script", "link", "img", "iframe", "object", "embed"}.isdisjoint(shown.tags)
    assert "svg" in shown.tags and "style" in shown.tags
    for marker in ("http:", "https:", "//", "@import", "@font-face"):
        assert marker not in page.replace("<!DOCTYPE html>", ""), marker


def test_user_data_is_text_never_markup(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    rows = synthetic.generate(3000, start="2026-11-01", days=1, seed=2)
    rows["tenant"] = HOSTILE
    rows["model_id"] = np.array([HOSTILE, "$x$", "_m"])[np.arange(len(rows)) % 3]
    rows["api_key_id"] = '"><img src=x onerror=alert(1)>'
    store.create_usage(rows)
    text = render_report(store, HOSTILE, "2026-11-01", "2026-11-02")
    shown = Page(text)
    assert {"script", "img"}.isdisjoint(shown.tags)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "".join(shown.texts["h1"]) == f"Usage of tenant {HOSTILE}"
    assert shown.column("Top 10 API keys by total tokens", "API key") == [
        '"><img src=x onerror=alert(1)>'
    ]
    assert sorted(shown.column("Requests and tokens per model", "model")) == sorted(
        [HOSTILE, "$x$", "_m"]
    )
    # in the charts too: as text, a dollar is not mathtext, an underscore label is in legends
    for model in (HOSTILE, "$x$", "_m"):
        assert model in shown.svg_texts, model


def test_costs_only_with_prices(store: Store, page: str) -> None:
    assert "Top 10 API keys by cost" in Page(page).tables
    text = render_report(store, TENANT, START, END, tz=NY)
    shown = Page(text)
    assert not any("cost" in t.lower() for t in shown.visible)
    assert set(shown.tables) == {
        "Requests and tokens per model",
        "Latency and time to first token per model",
        "Errors per status class",
        "Top 10 API keys by total tokens",
        "Top 10 users by total tokens",
    }
    header, _ = shown.table("Top 10 users by total tokens")
    assert header == ["user", "requests", "prompt tokens", "completion tokens", "total tokens"]


@pytest.mark.parametrize(
    ("tenant", "start", "end"),
    [(TENANT, "2030-01-01", "2030-01-02"), ("nobody", START, END), (TENANT, START, START)],
)
def test_a_window_without_rows_says_so(store: Store, tenant: str, start: str, end: str) -> None:
    text = render_report(store, tenant, start, end, tz=NY)
    shown = Page(text)
    assert f"No rows for tenant {tenant} in the window." in text
    assert "<svg" not in text and not shown.tables
    assert "<div>requests<b>0</b></div>" in text
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")


def test_write_report_is_atomic_and_writes_what_render_gives(store: Store, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    out = write_report(store, target, TENANT, START, "2026-11-02T00:00-05:00", tz="Europe/Paris")
    assert out == target and isinstance(out, Path)
    written = target.read_text(encoding="utf-8")
    assert written == render_report(
        store, TENANT, START, "2026-11-02T00:00-05:00", tz="Europe/Paris"
    )
    assert written.count("<svg") == 4
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes a file
    # as a str path, in a folder of its own
    assert write_report(store, str(tmp_path / "r2.html"), TENANT, START, END) == Path(
        tmp_path / "r2.html"
    )


def test_write_report_leaves_the_old_file_when_it_fails(store: Store, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(InvalidArgumentError, match="not an IANA time zone"):
        write_report(store, target, TENANT, START, END, tz="Mars/Olympus")
    with pytest.raises(StorageError, match=r"cannot write the HTML report to .*missing"):
        write_report(store, tmp_path / "missing" / "report.html", TENANT, START, START)
    target.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        if not os.access(tmp_path, os.W_OK):  # not as root, who may write anyway
            with pytest.raises(StorageError, match="cannot write the HTML report"):
                write_report(store, target, TENANT, START, START)
    finally:
        tmp_path.chmod(0o755)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_rendering_twice_gives_the_same_text(store: Store, prices: Prices, page: str) -> None:
    assert render_report(store, TENANT, START, END, tz=NY, prices=prices) == page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert ids and len(ids) == len(set(ids))  # the charts' ids are unique on the page


def test_bad_arguments_are_the_engines_errors(store: Store) -> None:
    with pytest.raises(InvalidArgumentError, match="tz 'Mars/Olympus' is not an IANA"):
        render_report(store, TENANT, START, END, tz="Mars/Olympus")
    with pytest.raises(InvalidArgumentError, match="before start"):
        render_report(store, TENANT, END, START)
    with pytest.raises(InvalidArgumentError, match="start"):
        render_report(store, TENANT, "yesterday-ish", END)
    with pytest.raises(InvalidArgumentError, match="tenant_id must be a str"):
        render_report(store, None, START, END)  # type: ignore[arg-type]


def test_without_matplotlib_it_says_what_to_install(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageAnalyticsError, match=r"pip install 'usage_analytics\[plot\]'"):
        render_report(store, TENANT, START, END)


def test_the_callers_matplotlib_is_left_alone(store: Store) -> None:
    import matplotlib

    backend, rc = matplotlib.get_backend(), dict(matplotlib.rcParams)
    pyplot = sys.modules.get("matplotlib.pyplot")
    figures = pyplot.get_fignums() if pyplot is not None else []
    with matplotlib.rc_context({"lines.linewidth": 7.0, "font.size": 30.0}):
        styled = render_report(store, TENANT, START, END)
        assert matplotlib.rcParams["lines.linewidth"] == 7.0
    assert styled == render_report(store, TENANT, START, END)  # its own style, always
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == rc
    if pyplot is not None:
        assert pyplot.get_fignums() == figures


def test_the_sample_dataset() -> None:
    # read-only: the window of the README's demo
    sample, week = Store(SAMPLE), ("tenant-005", "2026-11-08", "2026-11-15")
    models = sample.report(*week, by="model_id", metrics=["requests"])["model_id"]
    sample_prices = Prices.from_dict({m: (1.0, 2.0) for m in models if m})
    shown = Page(render_report(sample, *week, prices=sample_prices))
    assert "".join(shown.texts["title"]).endswith("2026-11-08 00:00:00 to 2026-11-15 00:00:00 UTC")
    assert shown.column("Requests and tokens per model", "model")[0] == "(no model)"
    expected = sample.report(
        *week, by="user_id", metrics=["cost"], prices=sample_prices, top=10, order_by="cost"
    ).sort_values(["cost", "user_id"], ascending=[False, True])
    assert shown.column("Top 10 users by cost", "user") == expected["user_id"].tolist()
    assert shown.column("Top 10 users by cost", "cost") == [f"{v:,.4f}" for v in expected["cost"]]


def test_chromium_shows_it_without_errors_or_requests(page: str, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(
            "Debian's chromium is not installed: apt-get install chromium (make test installs it)"
        )
    from matplotlib import image
    from playwright.sync_api import sync_playwright

    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    url = path.as_uri()
    errors: list[str] = []
    requests: list[str] = []
    shot = tmp_path / "shot.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("request", lambda r: requests.append(r.url))
            tab.goto(url)
            sizes = tab.eval_on_selector_all(
                "svg",
                "els => els.map(e => [e.getBoundingClientRect().width, "
                "e.getBoundingClientRect().height])",
            )
            widths = tab.eval_on_selector_all(
                "table", "els => els.map(e => e.getBoundingClientRect().width)"
            )
            tab.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert requests == [url]
    assert len(sizes) == 4 and all(w > 600 and h > 200 for w, h in sizes), sizes
    assert len(widths) == 7 and all(w > 200 for w in widths), widths
    pixels = image.imread(shot)[..., :3]
    assert pixels.shape[0] > 2500  # the whole page: charts and tables
    not_white = (pixels < 0.95).any(axis=-1).mean()
    rgb = (pixels * 255).round().astype(np.int32)
    colours = len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]))

    assert not_white > 0.05 and colours > 200, (not_white, colours)
