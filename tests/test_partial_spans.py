"""Partial spans: a span of one day that a write adds files to stays, listing the files it
summarizes, and reports read the day's newer files besides it (see ``SpanEntry``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import DAY0, NS_PER_DAY, random_usage_frame
from test_verify import _bump_first_count

from usage_analytics import Store, _layout
from usage_analytics._storage import dataset, delta, manifest
from usage_analytics._storage.delta import PARTIAL_SPAN_DOMAIN, SPAN_DOMAIN
from usage_analytics._storage.manifest import FileEntry, SpanEntry
from usage_analytics._storage.transaction import Transaction
from usage_analytics._summaries import Summaries

TENANTS = ("t0", "t1")
DAY = DAY0 // NS_PER_DAY
REPORTS = (
    {"by": "model_id", "every": "1d"},
    {"by": "api_method", "every": "1h", "metrics": ["requests", "error_rate"]},
    {"by": "model_id", "metrics": ["latency_ms_p50", "latency_ms_p99", "users"]},
)


@pytest.fixture(autouse=True)
def summaries_for_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)


def _hours_of_one_day(store: Store, files: int, first: int = 0) -> None:
    """Append ``files`` loads of the day DAY0, an hour each."""
    for part in range(first, first + files):
        frame = random_usage_frame(50, 300 + part, start=DAY0, days=1, tenants=TENANTS)
        frame["timestamp"] = DAY0 + part * 3_600 * 10**9 + np.arange(len(frame)) * 10**6
        store.create_usage(frame)


def _day_span(store: Store) -> SpanEntry:
    (span,) = [sp for sp in store._ds.snapshot().spans if sp.first_day == sp.last_day == DAY]
    return span


def _assert_reports_equal_scans(store: Store) -> None:
    windows = [
        (DAY0, DAY0 + NS_PER_DAY),
        (DAY0 + 90 * 60 * 10**9, DAY0 + 5 * 3_600 * 10**9 + 17),  # inside the day
        (DAY0 - NS_PER_DAY, DAY0 + 2 * NS_PER_DAY),
    ]
    for start, end in windows:
        for tenant in TENANTS:
            for keywords in REPORTS:
                fast = store.report(tenant, start, end, **keywords)  # type: ignore[arg-type]
                store._use_rollups = False
                try:
                    slow = store.report(tenant, start, end, **keywords)  # type: ignore[arg-type]
                finally:
                    store._use_rollups = True
                pd.testing.assert_frame_equal(fast, slow, check_exact=True)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A day of 6 loads: its span (built at 4 files) lists 4, and the day has 2 more."""
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    _hours_of_one_day(store, 6)
    span = _day_span(store)
    assert span.partial and span.files is not None and len(span.files) == 4
    return store


def test_reports_read_a_partial_span_with_the_files_it_does_not_list(store: Store) -> None:
    span = _day_span(store)
    snap = store._ds.snapshot()
    newer = sorted(e.path for e in snap.files if not span.covers(e))
    assert len(newer) == 2 and not set(newer) & set(span.files or ())
    plan = store.report("t0", DAY0, DAY0 + NS_PER_DAY, explain=True)
    assert plan["piece"].iloc[0] == "span 2026-11-01..2026-11-01"
    assert sorted(plan["piece"].iloc[1:]) == newer
    assert plan["read"].tolist() == ["summary"] * 3
    assert plan["rows"].iloc[0] == sum(snap.by_path[p].rows for p in span.files or ())
    _assert_reports_equal_scans(store)


def test_the_commit_that_makes_a_span_partial_moves_it_to_the_partial_domain(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    _hours_of_one_day(store, 4)
    name = _day_span(store).name
    assert not _day_span(store).partial
    _hours_of_one_day(store, 1, first=4)
    last = max((store.root / "_delta_log").glob("*.json"))
    actions = [json.loads(line) for line in last.read_text().splitlines()]
    domains = {
        a["domainMetadata"]["domain"]: a["domainMetadata"] for a in actions if "domainMetadata" in a
    }
    # A version that knows no partial spans sees the span removed, and reads the day's files.
    assert domains[SPAN_DOMAIN + name]["removed"] is True
    partial = domains[PARTIAL_SPAN_DOMAIN + name]
    assert partial["removed"] is False
    assert len(json.loads(partial["configuration"])["files"]) == 4
    # The same span, under the same name: its summary files are not written again.
    assert _day_span(store).name == name


def test_a_reader_that_ignores_partial_spans_gets_the_same_reports(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = [store.report("t0", DAY0, DAY0 + NS_PER_DAY, **k) for k in REPORTS]  # type: ignore[arg-type]
    # As a version before partial spans reads the log: their domain is not a span's.
    monkeypatch.setattr(delta, "PARTIAL_SPAN_DOMAIN", "no such domain.")
    old = Store(store.root)
    assert not [sp for sp in old._ds.snapshot().spans if sp.first_day == DAY]
    got = [old.report("t0", DAY0, DAY0 + NS_PER_DAY, **k) for k in REPORTS]  # type: ignore[arg-type]
    for a, b in zip(got, expected, strict=True):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_a_partial_span_survives_a_checkpoint_and_old_versions_read_the_span_they_had(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    span = _day_span(store)
    versions = store.history()["version"].tolist()
    monkeypatch.setattr(dataset, "CHECKPOINT_EVERY", 1)
    _hours_of_one_day(store, 1, first=6)
    assert list((store.root / "_delta_log").glob("*.checkpoint.parquet"))
    again = Store(store.root)
    assert _day_span(again) == span  # from the checkpoint: the same entry, files and all
    _assert_reports_equal_scans(again)
    # The version at 4 files has the span whole; at 5, partial.
    at_four, at_five = (Store(store.root, as_of=v) for v in versions[4:6])
    assert not _day_span(at_four).partial and len(at_four.files()) == 4
    assert _day_span(at_five).files == span.files and len(at_five.files()) == 5
    for old in (at_four, at_five):
        _assert_reports_equal_scans(old)


def test_a_removal_of_a_file_a_partial_span_lists_drops_it(store: Store) -> None:
    span = _day_span(store)
    listed = [store._ds.snapshot().by_path[p] for p in span.files or ()]
    first = min(listed, key=lambda e: e.min("timestamp"))  # the first load's file
    assert store.delete_usage(first.min("timestamp") + 1) == 1
    assert not [sp for sp in store._ds.snapshot().spans if sp.first_day == DAY]
    assert not (store.root / span.path(span.kinds[0])).exists()
    _assert_reports_equal_scans(store)


def test_a_partial_span_listing_a_file_removed_by_an_older_version_is_left_out(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version that knows no partial spans leaves them in the log as they are when it
    removes a file: a reader then leaves out a partial span that lists a file no longer
    live (else it would count the removed rows)."""
    span = _day_span(store)
    real = Transaction._span_after

    def older(self: Transaction, entry: SpanEntry, added_days: set[int]) -> SpanEntry | None:
        return entry if entry.partial else real(self, entry, added_days)

    monkeypatch.setattr(Transaction, "_span_after", older)
    listed = [store._ds.snapshot().by_path[p] for p in span.files or ()]
    first = min(listed, key=lambda e: e.min("timestamp"))  # the first load's file
    assert store.delete_usage(first.min("timestamp") + 1) == 1
    monkeypatch.undo()
    again = Store(store.root)
    assert not [sp for sp in again._ds.snapshot().spans if sp.first_day == DAY]
    _assert_reports_equal_scans(again)


def test_a_closed_day_gets_a_whole_span_again_from_its_partial_span(store: Store) -> None:
    """When a load moves on to the next day, the day's partial span is built again, whole."""
    old = _day_span(store)
    frame = random_usage_frame(50, 999, start=DAY0 + NS_PER_DAY, days=1, tenants=TENANTS)
    store.create_usage(frame)
    span = _day_span(store)
    assert not span.partial and span.name != old.name
    assert not (store.root / old.path(old.kinds[0])).exists()
    _assert_reports_equal_scans(store)
    assert store.verify().empty


def test_verify_checks_a_partial_span_against_the_files_it_lists(store: Store) -> None:
    assert store.verify().empty
    span = _day_span(store)
    kind = span.kinds[0]
    _bump_first_count(store.root / span.path(kind))
    problems = store.verify()
    assert problems[["piece", "kind"]].values.tolist() == [["span 2026-11-01..2026-11-01", kind]]


def test_vacuum_keeps_the_files_of_a_partial_span(store: Store) -> None:
    span = _day_span(store)
    store.vacuum(retention=0)
    assert all((store.root / p).exists() for p in span.all_paths)
    _assert_reports_equal_scans(Store(store.root))


def test_delta_readers_read_a_log_with_partial_spans(store: Store) -> None:
    pytest.importorskip("deltalake", reason="this test needs the deltalake package")
    from test_delta import assert_every_engine_reads

    assert_every_engine_reads(store)


def test_a_new_store_builds_a_day_span_from_its_partial_span_and_the_newer_files(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load in a new process (no span in memory) reads the day's partial span and adds only
    the files it does not list (for the kinds the span has); so does its next span of the day,
    from the one it built."""
    added: list[tuple[str, str]] = []
    add_file = Summaries._add_file

    def counting(self: Summaries, entry: FileEntry, wanted: Any, *args: Any) -> None:
        added.extend((entry.path, k) for k in wanted)
        add_file(self, entry, wanted, *args)

    monkeypatch.setattr(Summaries, "_add_file", counting)
    again = Store(store.root)
    built = 0
    for part in range(6, 12):
        before = {e.path for e in again._ds.snapshot().files}
        last = _day_span(again)
        added.clear()
        _hours_of_one_day(again, 1, first=part)
        span = _day_span(again)
        if span.partial:
            continue
        # Built at this file: of the kinds its last span had, only the files it did not list.
        built += 1
        new = {e.path for e in again._ds.snapshot().files} - before
        newer = (before - set(last.files or ())) | new
        assert {p for p, k in added if k in last.kinds} == newer
        assert len(newer) == 4
    assert built == 2  # at 8 files and at 12
    _assert_reports_equal_scans(again)


def test_a_day_of_more_files_than_a_span_lists_gets_spans_at_doubling_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A span of more than MAX_SPAN_FILES files is dropped by the day's next file, not made
    partial; its day then gets a span at doubling counts (not at every file)."""
    monkeypatch.setattr(manifest, "MAX_SPAN_FILES", 9)
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    covered: list[int | None] = []
    for part in range(18):
        _hours_of_one_day(store, 1, first=part)
        snap = store._ds.snapshot()
        found = [sp for sp in snap.spans if sp.first_day == sp.last_day == DAY]
        covered.append(sum(found[0].covers(e) for e in snap.files) if found else None)
        assert not found or len(found[0].files or ()) <= 9
    # At 4 and 8 (partial up to 9 listed), whole at 12 (one more drops it), then at 16.
    expected = [None] * 3 + [4] * 4 + [8] * 4 + [12, None, None, None, 16, None, None]
    assert covered == expected
    _assert_reports_equal_scans(store)


def _span_tables(store: Store) -> dict[tuple[int, int, bool], dict[str, pd.DataFrame]]:
    """Every span's tables, by (first day, last day, partial) and kind, rows in key order."""
    out = {}
    for span in store._ds.snapshot().spans:
        tables = {}
        for kind in span.kinds:
            (table,) = store._ds.read_summaries([span.path(kind)])
            frame = table.to_pandas()
            frame = frame.astype({c: str for c in frame.columns if frame[c].dtype == "category"})
            tables[kind] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
        out[(span.first_day, span.last_day, span.partial)] = tables
    return out


def test_spans_computed_a_part_of_the_kinds_per_thread_equal_those_computed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write computes its spans on two threads, each a part of the kinds (``SPAN_PARTS``),
    each keeping its kinds of the day for the day's next span: the spans are those of one
    thread computing every kind, for the spans of a day still loading, of finished days and of
    blocks of days."""
    from usage_analytics import _summaries, _writes

    assert len(_summaries.SPAN_PARTS) == 2
    assert sorted(k for part in _summaries.SPAN_PARTS for k in part) == sorted(
        _summaries.SPAN_KINDS
    )

    def load(root: Path) -> Store:
        store = Store(root)
        store.auto_migrate()
        for day in range(4):
            for hour in range(0, 24, 4):  # six loads a day: the day's span at 4, then 6 files
                frame = random_usage_frame(40, 1000 + 10 * day + hour, days=1, tenants=TENANTS)
                start = DAY0 + day * NS_PER_DAY + hour * 3_600 * 10**9
                frame["timestamp"] = start + np.arange(len(frame)) * 10**6
                store.create_usage(frame)
        return store

    in_parts = _span_tables(load(tmp_path / "parts"))
    monkeypatch.setattr(_writes, "SPAN_PARTS", (_summaries.SPAN_KINDS,))
    at_once = _span_tables(load(tmp_path / "once"))
    assert in_parts.keys() == at_once.keys()
    assert (DAY, DAY + 1, False) in in_parts and (DAY + 3, DAY + 3, True) in in_parts
    for key, tables in at_once.items():
        assert in_parts[key].keys() == tables.keys(), key
        for kind, table in tables.items():
            pd.testing.assert_frame_equal(in_parts[key][kind], table, check_exact=True)
    kinds = {k for tables in in_parts.values() for k in tables}
    assert all(kinds & set(part) for part in _summaries.SPAN_PARTS)


def test_a_days_next_span_adds_only_the_newer_files_to_each_parts_kinds(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store keeps each part's kinds of the day's last span as computed (see
    ``SPAN_PARTS``): the day's next spans (at 8 files, at 12) add the summaries of the 4 files
    since to them, and read no span from disk, even once the store no longer holds the span's
    tables."""
    from usage_analytics._summaries import SPAN_KINDS

    added: list[tuple[str, str]] = []
    spans_read: list[str] = []
    add_file = Summaries._add_file
    read_summaries = store._ds.read_summaries

    def counting(self: Summaries, entry: FileEntry, wanted: Any, *args: Any) -> None:
        added.extend((entry.path, k) for k in wanted)
        add_file(self, entry, wanted, *args)

    def reading(paths: Any, *args: Any) -> Any:
        spans_read.extend(paths)
        return read_summaries(paths, *args)

    monkeypatch.setattr(Summaries, "_add_file", counting)
    monkeypatch.setattr(store._ds, "read_summaries", reading)
    for built_at in (8, 12):
        loaded = len(store._ds.snapshot().files)
        _hours_of_one_day(store, built_at - 1 - loaded, first=loaded)
        last = _day_span(store)
        assert last.partial and last.files is not None and len(last.files) == built_at - 4
        added.clear()
        spans_read.clear()
        store._summaries._recent_spans.clear()  # the day's last span is not at hand either
        _hours_of_one_day(store, 1, first=built_at - 1)
        span = _day_span(store)
        assert not span.partial  # built by this write, of all 8 (12) files
        last_four = {e.path for e in store._ds.snapshot().files} - set(last.files)
        assert len(last_four) == 4
        assert {p for p, _ in added} == last_four
        assert {k for _, k in added} == set(SPAN_KINDS)
        assert spans_read == []
    _assert_reports_equal_scans(store)
