"""The HTML report: its numbers are the engine's, it fetches nothing, and a browser shows it."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from helpers import new_store

from usage_analytics import Prices, Store, synthetic
from usage_analytics.html import render_report, write_report

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
TENANT = "tenant-005"
START, END = "2026-11-01", "2026-11-15"
PRICES = Prices.from_dict(
    {
        "gpt-4o": (2.50, 10.00),
        "gpt-4o-mini": (0.15, 0.60),
        "llama-3.1-8b-instruct": (0.05, 0.08),
        "text-embedding-3-small": (0.02, 0.00),
        "omni-moderation-latest": (0.00, 0.00),
        "whisper-1": (0.00, 0.00),
    }
)
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
def store() -> Store:
    return Store(SAMPLE)


@pytest.fixture(scope="module")
def page(store: Store) -> str:
    return render_report(store, TENANT, START, END, tz="America/New_York", prices=PRICES)


class _Tables(HTMLParser):
    """The cell texts of every table, and every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.urls: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "srcset")]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parsed(text: str) -> _Tables:
    parser = _Tables()
    parser.feed(text)
    return parser


def test_title_has_the_window_to_the_second_in_the_zone(page: str) -> None:
    # naive bounds are UTC: midnight UTC is 20:00 the evening before in New York (EDT)
    window = "2026-10-31 20:00:00 to 2026-11-14 19:00:00 (America/New_York)"
    assert f"<title>Usage of tenant {TENANT}, {window}</title>" in page
    assert f"<h1>Usage of tenant {TENANT}</h1>" in page
    assert "day (America/New_York)" in page  # the time axes name the zone


def test_latency_table_is_the_engines(store: Store, page: str) -> None:
    expected = store.report(
        TENANT,
        START,
        END,
        by="model_id",
        metrics=["requests", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99"],
    )
    table = next(t for t in parsed(page).tables if "latency_ms_p95 (ms)" in t[0])
    header, rows = table[0], table[1:]
    got = {r[header.index("model_id")]: r for r in rows}
    assert len(got) == len(expected) == 7
    for record in expected.itertuples(index=False):
        row = got[record.model_id or "(no model)"]
        assert row[header.index("requests")] == f"{record.requests:,}"
        assert row[header.index("latency_ms_p95 (ms)")] == f"{record.latency_ms_p95:,.2f}"
        assert row[header.index("latency_ms_p99 (ms)")] == f"{record.latency_ms_p99:,.2f}"


def test_top_keys_by_tokens_and_by_cost_are_the_engines(store: Store, page: str) -> None:
    tables = parsed(page).tables
    for order_by, index in (("total_tokens", 0), ("cost", 1)):
        expected = store.report(
            TENANT,
            START,
            END,
            by="api_key_id",
            metrics=["total_tokens", "cost"],
            prices=PRICES,
            top=10,
            order_by=order_by,
        ).sort_values([order_by, "api_key_id"], ascending=[False, True])
        keyed = [t for t in tables if t[0][0] == "api_key_id"]
        table = keyed[index]
        header = table[0]
        assert [r[0] for r in table[1:]] == expected["api_key_id"].tolist()
        assert [r[header.index("total_tokens")] for r in table[1:]] == [
            f"{v:,}" for v in expected["total_tokens"]
        ]
        assert [r[header.index("cost")] for r in table[1:]] == [
            f"{v:,.4f}" for v in expected["cost"]
        ]
    totals = store.report(TENANT, START, END, metrics=["requests", "cost"], prices=PRICES)
    assert f"requests<b>{totals['requests'].iloc[0]:,}</b>" in page
    assert f"cost<b>{totals['cost'].iloc[0]:,.4f}</b>" in page


def test_without_prices_there_is_no_cost(store: Store) -> None:
    text = render_report(store, TENANT, START, "2026-11-02")
    assert "cost" not in text.lower().replace("cost)", "")
    assert "Top 10 API keys by tokens" in text


def test_it_fetches_nothing(page: str) -> None:
    found = parsed(page)
    assert found.urls and all(url.startswith("#") for url in found.urls)  # SVG's own ids only
    # SVG namespace declarations are names, not fetches; nothing else may name a place
    lowered = re.sub(r'xmlns(:\w+)?="[^"]*"', "", page.lower())
    lowered = lowered.replace("url(#", "")  # SVG clip paths of the page itself
    for marker in ("http://", "https://", "url(", "<script", "@import", "<link", "<img"):
        assert marker not in lowered, marker


def test_user_data_is_escaped(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s")
    rows = synthetic.generate(2000, start="2026-11-01", days=1, seed=2)
    rows["tenant"] = "<b>t</b>"
    rows["model_id"] = "<script>alert(1)</script>"
    store.create_usage(rows)
    text = render_report(store, "<b>t</b>", "2026-11-01", "2026-11-02")
    assert "<script>" not in text and "<b>t</b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Usage of tenant &lt;b&gt;t&lt;/b&gt;" in text


def test_an_empty_window_says_so(store: Store) -> None:
    text = render_report(store, TENANT, "2030-01-01", "2030-01-02")
    assert "No rows for this tenant in the window." in text
    assert "<svg" not in text


def test_write_report_is_atomic_and_equals_render(store: Store, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    out = write_report(store, target, TENANT, START, "2026-11-03", tz="Europe/Paris")
    assert out == target
    assert target.read_text() == render_report(
        store, TENANT, START, "2026-11-03", tz="Europe/Paris"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed: apt-get install chromium (make test installs it)",
)
def test_chromium_shows_it_without_errors_or_requests(page: str, tmp_path: Path) -> None:
    import numpy as np
    from matplotlib import image
    from playwright.sync_api import sync_playwright

    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    url = path.as_uri()
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
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
            shot = tmp_path / "shot.png"
            tab.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert requests == [url]
    assert len(sizes) >= 5 and all(w > 300 and h > 100 for w, h in sizes), sizes
    pixels = image.imread(shot)[..., :3]
    assert pixels.shape[0] > 2000  # the whole page, charts and tables
    not_white = (pixels < 0.95).any(axis=-1).mean()
    colours = len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert not_white > 0.05 and colours > 50, (not_white, colours)


def test_a_window_given_with_an_offset_is_shown_in_the_zone() -> None:
    # the page shows a window given as ISO with an offset in the report's zone
    text = render_report(
        Store(SAMPLE), TENANT, "2026-11-02T00:00-05:00", "2026-11-03T00:00-05:00",
        tz="America/New_York",
    )  # fmt: skip
    assert "2026-11-02 00:00:00 to 2026-11-03 00:00:00 (America/New_York)" in text
    assert "hour (America/New_York)" in text  # a one-day window is shown per hour
    assert pd.Timestamp("2026-11-02T00:00-05:00").tz_convert("UTC").hour == 5
