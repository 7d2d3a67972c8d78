"""The rollup fast path gives exactly the results of a plain row scan.

Each data file carries per-tenant partial aggregates of both reports (``_rollups/``); a window
that covers a whole file reads those instead of its rows. These tests compare the two paths,
bit for bit, on random data, after deletes, compaction and a schema upgrade, and check that the
rollups stay invisible to engines that read the folder.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from _crash_worker import T0, make_v1
from helpers import (
    DAY0,
    NS_PER_DAY,
    is_bookkeeping,
    random_usage_frame,
    reference_groups,
    reference_summary,
    snapshot_files,
)

from usage_analytics import StorageError, Store, _layout, _reads, _summaries, _writes
from usage_analytics._storage import Dataset, FileEntry, SpanTable, day_date, day_number, faults
from usage_analytics._storage import files as summary_files
from usage_analytics._storage.manifest import SPAN_DIR
from usage_analytics._summaries import FILE_KINDS, KINDS, Compressed, summaries_of
from usage_analytics.reports import grains

TENANTS = ("t0", "t1", "t2")


@pytest.fixture(autouse=True)
def rollups_for_small_files(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """These tests use small files; give them rollups as large files get them."""
    if "default" not in request.node.name:
        monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
        monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)


def both_ways(store: Store, tenant: str, start: int, end: int) -> tuple[pd.DataFrame, ...]:
    """Both reports with rollups and with plain scans."""
    out = []
    for use in (True, False):
        store._use_rollups = use
        out.append(store.aggregated_usage(tenant, start, end))
        out.append(store.get_usages_by_groups(tenant, start, end))
    store._use_rollups = True
    return tuple(out)


def assert_paths_agree(
    store: Store, rng: np.random.Generator, windows: int = 5, day0: int = DAY0
) -> None:
    rows = store.find_usages()
    cases = [(day0, day0 + 6 * NS_PER_DAY), (day0 + NS_PER_DAY, day0 + 3 * NS_PER_DAY)]
    for _ in range(windows):
        a, b = sorted(int(x) for x in rng.integers(day0 - NS_PER_DAY, day0 + 7 * NS_PER_DAY, 2))
        cases.append((a, b))
    for start, end in cases:
        for tenant in TENANTS:
            fast_summary, fast_groups, slow_summary, slow_groups = both_ways(
                store, tenant, start, end
            )
            pd.testing.assert_frame_equal(fast_summary, slow_summary, check_exact=True)
            pd.testing.assert_frame_equal(fast_groups, slow_groups, check_exact=True)
            expected = reference_summary(rows, tenant, start, end)
            assert fast_summary["total_requests"].tolist() == expected["total_requests"].tolist()
            expected_groups = reference_groups(rows, tenant, start, end)
            assert fast_groups["total_prompt_tokens"].tolist() == (
                expected_groups["total_prompt_tokens"].tolist()
            )


def load(root: Path, seed: int, batches: int = 4) -> Store:
    store = Store(root)
    store.auto_migrate()
    for i in range(batches):
        frame = random_usage_frame(300, seed * 10 + i, days=5, tenants=TENANTS)
        store.create_usage(frame, on_conflict="ignore")
    return store


@pytest.mark.parametrize("seed", [1, 2])
def test_rollups_match_scans_on_random_data(tmp_path: Path, seed: int) -> None:
    store = load(tmp_path / "usage", seed)
    assert_paths_agree(store, np.random.default_rng(seed))


def test_rollups_match_scans_after_deletes_and_compaction(tmp_path: Path) -> None:
    store = load(tmp_path / "usage", 7)
    rng = np.random.default_rng(7)
    store.delete_usage(DAY0 + NS_PER_DAY + NS_PER_DAY // 3)  # a whole day and part of the next
    assert_paths_agree(store, rng)
    store.delete_usage(DAY0 + 3 * NS_PER_DAY, limit=50)
    assert_paths_agree(store, rng)
    assert store.compact() > 0
    assert_paths_agree(store, rng)


def test_upgraded_files_without_rollups_are_scanned(tmp_path: Path) -> None:
    root = tmp_path / "v1"
    make_v1(root)
    store = Store(root)
    store._ds.create()  # the schema upgrade alone: the files stay as an older version left them
    old = store.info()
    added = store.create_usage(random_usage_frame(200, 5, start=T0, days=5, tenants=("t0", "t1")))
    entries = store._ds.snapshot().files
    assert {tuple(sorted(e.sidecars)) for e in entries} == {(), tuple(sorted(FILE_KINDS))}
    assert len(store.find_usages()) == old.rows + added
    assert_paths_agree(store, np.random.default_rng(5), day0=T0)


def test_whole_file_windows_read_no_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = load(tmp_path / "usage", 4)
    expected = both_ways(store, "t1", DAY0 - NS_PER_DAY, DAY0 + 10 * NS_PER_DAY)
    scanned: list[str] = []
    real = Dataset.scan

    def counting(self: Dataset, entries, *a, **k):  # type: ignore[no-untyped-def]
        scanned.extend(e.path for e in entries)
        return real(self, entries, *a, **k)

    monkeypatch.setattr(Dataset, "scan", counting)
    summary = store.aggregated_usage("t1", DAY0 - NS_PER_DAY, DAY0 + 10 * NS_PER_DAY)
    groups = store.get_usages_by_groups("t1", DAY0 - NS_PER_DAY, DAY0 + 10 * NS_PER_DAY)
    assert scanned == []
    pd.testing.assert_frame_equal(summary, expected[0], check_exact=True)
    pd.testing.assert_frame_equal(groups, expected[1], check_exact=True)
    # A window ending inside an hour of day 2 scans only files of that day (the rest of the
    # day comes from hourly summaries).
    store.aggregated_usage("t1", DAY0, DAY0 + 2 * NS_PER_DAY + NS_PER_DAY // 2 + 7)
    assert scanned and {p.split("/")[0] for p in scanned} == {"date=2026-11-03"}


def test_small_files_get_no_rollups_by_default(tmp_path: Path) -> None:
    assert _layout.ROLLUP_MIN_ROWS == 1024
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    store.create_usage(random_usage_frame(50, 3, days=1))
    big = random_usage_frame(3000, 4, start=DAY0 + 2 * NS_PER_DAY, days=1, users=400)
    store.create_usage(big)
    files = sorted(store._ds.snapshot().files, key=lambda e: e.rows)
    assert files[0].rows == 50 and not files[0].sidecars
    # The big file has exactly the summaries small enough to be worth writing.
    expected = summaries_of(grains.encode_keys(pq.read_table(store.root / files[1].path)))
    assert expected is not None
    assert set(files[1].sidecars) == {k for k, t in expected.items() if t is not None}
    assert set(files[1].skipped) == {k for k, t in expected.items() if t is None}
    assert_paths_agree(store, np.random.default_rng(3))


def test_rollups_are_invisible_to_other_engines(tmp_path: Path) -> None:
    store = load(tmp_path / "usage", 9)
    n = len(store.find_usages())
    rollups = list((store.root / "_rollups").rglob("*"))
    assert any(p.is_file() for p in rollups)
    assert not [p for p in rollups if p.name.endswith(".parquet")]
    assert ds.dataset(store.root, format="parquet", partitioning="hive").count_rows() == n
    pattern = f"{store.root}/**/*.parquet"
    count = duckdb.sql(f"select count(*) from read_parquet('{pattern}', hive_partitioning=true)")
    assert count.fetchall()[0][0] == n


def test_spans_cover_whole_days_and_match_scans(tmp_path: Path) -> None:
    store = load(tmp_path / "usage", 11)
    assert store.compact() > 0  # compaction also builds the spans
    spans = store._ds.snapshot().spans
    assert spans
    for span in spans:
        size = span.last_day - span.first_day + 1
        assert size & (size - 1) == 0 and span.first_day % size == 0
    assert_paths_agree(store, np.random.default_rng(11))


def test_a_write_into_a_spanned_day_makes_its_day_span_partial_and_drops_the_others_over_it(
    tmp_path: Path,
) -> None:
    store = load(tmp_path / "usage", 12)
    store.compact()
    store.create_usage({"user_id": "more", "tenant": "t1", "timestamp": DAY0 + NS_PER_DAY + 7})
    store._summaries.build_spans()  # the day has two files: it gets a span of its own
    before = store._ds.snapshot()
    day = day_number("2026-11-02")
    over = {sp.name for sp in before.spans if sp.first_day <= day <= sp.last_day}
    assert any(sp.first_day == sp.last_day == day for sp in before.spans)
    assert len(over) > 1 and not any(sp.partial for sp in before.spans)
    store.create_usage({"user_id": "late", "tenant": "t1", "timestamp": DAY0 + NS_PER_DAY + 5})
    after = store._ds.snapshot()
    kept = {sp.name for sp in before.spans if sp.name not in over or sp.first_day == sp.last_day}
    assert {sp.name for sp in after.spans} == kept
    for span in after.spans:
        if span.name not in over:
            assert not span.partial
            continue
        # It lists the files of its day before the write: the new one is not among them.
        had = sorted(e.path for e in before.files if e.day == day)
        assert span.files == tuple(had)
        assert len([e for e in after.files if e.day == day]) == len(had) + 1
    on_disk = {p.name.split(".")[0] for p in (store.root / "_rollups" / "spans").iterdir()}
    # (a span every kind of which was not worth writing has no file)
    assert on_disk == {sp.name for sp in after.spans if sp.kinds}
    assert_paths_agree(store, np.random.default_rng(12))
    # A delete that rewrites the files of the first two days drops the spans over them, the
    # partial ones with the rest; the spans of later days stay as they were.
    assert store.delete_usage(DAY0 + NS_PER_DAY + NS_PER_DAY // 3) > 0
    left = {sp.name: sp for sp in store._ds.snapshot().spans}
    assert {sp.name for sp in after.spans if sp.first_day > day} == set(left)
    assert all(left[sp.name] == sp for sp in after.spans if sp.name in left)
    assert_paths_agree(store, np.random.default_rng(13))


def test_whole_window_reads_spans_not_file_rollups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = load(tmp_path / "usage", 13)
    store.compact()
    expected = both_ways(store, "t0", DAY0, DAY0 + 4 * NS_PER_DAY)
    read: list[str] = []
    real = Dataset.read_summaries

    def counting(self: Dataset, paths, *a, **k):  # type: ignore[no-untyped-def]
        read.extend(paths)
        return real(self, paths, *a, **k)

    monkeypatch.setattr(Dataset, "read_summaries", counting)
    summary = store.aggregated_usage("t0", DAY0, DAY0 + 4 * NS_PER_DAY)
    assert len(read) == 2  # days 0-3 are two aligned 2-day spans, and nothing else
    assert all(p.startswith(SPAN_DIR + "/") for p in read)
    pd.testing.assert_frame_equal(summary, expected[0], check_exact=True)


HOURLY = {"by": "api_method", "every": "1h", "metrics": ["requests", "error_rate"]}


def _hourly_report(store: Store, start: int, end: int, *, summaries: bool) -> pd.DataFrame:
    store._use_rollups = summaries
    try:
        return store.report("t0", start, end, **HOURLY)  # type: ignore[arg-type]
    finally:
        store._use_rollups = True


def test_hourly_buckets_of_whole_days_read_one_summary_a_day(tmp_path: Path) -> None:
    # Three loads a day: each day's span of per-method hours replaces its three files.
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    third = NS_PER_DAY // 3
    for i in range(9):
        frame = random_usage_frame(300, 50 + i, start=DAY0 + i * third, days=1, tenants=TENANTS)
        store.create_usage(frame[frame["timestamp"] < DAY0 + (i + 1) * third], on_conflict="ignore")
    store.create_usage(random_usage_frame(5, 60, start=DAY0 + 3 * NS_PER_DAY, days=1))
    start, end = DAY0, DAY0 + 3 * NS_PER_DAY
    plan = store.report("t0", start, end, **HOURLY, explain=True)  # type: ignore[arg-type]
    assert plan[["read", "grain"]].values.tolist() == [["summary", "methodhours"]] * 3
    assert plan["piece"].str.startswith("span ").all()
    got = _hourly_report(store, start, end, summaries=True)
    pd.testing.assert_frame_equal(got, _hourly_report(store, start, end, summaries=False))
    rows = store.find_usages()
    rows = rows[(rows["tenant"] == "t0") & (rows["timestamp"] < end)]
    hour = (rows["timestamp"] // 3_600_000_000_000).rename("hour")
    expected = rows.groupby([hour, rows["api_method"]]).size()
    found = got[got["requests"] > 0]
    hours = found["bucket"].astype("int64") // 3_600_000_000_000
    keys = zip(hours, found["api_method"], strict=True)
    assert dict(zip(keys, found["requests"], strict=True)) == expected.to_dict()


@pytest.mark.parametrize("minutes", [0, 17])
def test_the_first_and_last_day_of_a_window_are_read_from_their_spans_by_hours(
    tmp_path: Path, minutes: int
) -> None:
    # Three loads a day, each of a third of it. A window from 05:00 (or 05:17) of day 0 to
    # 10:30 of day 2: day 1 is its span; days 0 and 2 are their spans' hours (6 or 5 to 23,
    # 0 to 9), and the unaligned edges are scanned from the files that hold them. A window
    # that ends at 07:00 of day 2 holds hours of one file of that day: that file is read.
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    hour, third = 3_600_000_000_000, NS_PER_DAY // 3
    for i in range(9):
        frame = random_usage_frame(300, 80 + i, start=DAY0 + i * third, days=1, tenants=TENANTS)
        store.create_usage(frame[frame["timestamp"] < DAY0 + (i + 1) * third], on_conflict="ignore")
    store.create_usage(random_usage_frame(5, 60, start=DAY0 + 3 * NS_PER_DAY, days=1))  # day 2 ends
    start = DAY0 + 5 * hour + minutes * 60 * 10**9 + 5 * 10**9 * (minutes > 0)
    day2 = DAY0 + 2 * NS_PER_DAY
    for end, last_day in ((day2 + 10 * hour + 30 * 60 * 10**9, "span"), (day2 + 7 * hour, "file")):
        plan = store.report("t0", start, end, **HOURLY, explain=True)  # type: ignore[arg-type]
        reads = plan[plan["read"] != "scan"]
        spans = reads["piece"].str.startswith("span ")
        assert reads[spans]["read"].tolist() == ["summary", "summary (hours)"] + [
            "summary (hours)"
        ] * (last_day == "span")
        assert reads[~spans]["read"].tolist() == ["summary (hours)"] * (last_day == "file")
        scanned = plan[plan["read"] == "scan"]["piece"].tolist()
        edges = int(minutes > 0) + int(last_day == "span")  # the first file of day 0, the 2nd of 2
        assert len(scanned) == edges
        got = _hourly_report(store, start, end, summaries=True)
        pd.testing.assert_frame_equal(got, _hourly_report(store, start, end, summaries=False))
        rows = store.find_usages()
        inside = rows[(rows["tenant"] == "t0") & rows["timestamp"].between(start, end - 1)]
        assert int(got["requests"].sum()) == len(inside) > 0
        errors = inside["status_code"] != 200  # error_rate counts every other status
        assert int((got["error_rate"] * got["requests"]).round().sum()) == int(errors.sum())


def test_random_windows_over_days_of_many_loads_equal_a_scan(tmp_path: Path) -> None:
    # Four loads a day over four days: random windows, zones and buckets; every plan (some of
    # them reading edge days by hours) adds up exactly what a plain scan does.
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    quarter = NS_PER_DAY // 4
    for i in range(16):
        frame = random_usage_frame(160, 90 + i, start=DAY0 + i * quarter, days=1, tenants=TENANTS)
        store.create_usage(
            frame[frame["timestamp"] < DAY0 + (i + 1) * quarter], on_conflict="ignore"
        )
    store.create_usage(random_usage_frame(5, 61, start=DAY0 + 4 * NS_PER_DAY, days=1))
    rng = np.random.default_rng(7)
    by_hours = 0
    for _ in range(40):
        start = DAY0 + int(rng.integers(0, 3 * NS_PER_DAY))
        if rng.random() < 0.5:
            start -= start % 3_600_000_000_000
        end = start + int(rng.integers(NS_PER_DAY // 2, 3 * NS_PER_DAY))
        kwargs: dict[str, Any] = {
            "by": str(rng.choice(["api_method", "status_code"])),
            "every": str(rng.choice(["1h", "1d", "15min"])),
            "tz": str(rng.choice(["UTC", "America/New_York", "Asia/Kolkata"])),
            "metrics": ["requests", "error_rate"],
        }
        plan = store.report("t0", start, end, explain=True, **kwargs)
        by_hours += int((plan["piece"].str.startswith("span ") & (plan["read"] != "summary")).sum())
        got = store.report("t0", start, end, **kwargs)
        store._use_rollups = False
        try:
            expected = store.report("t0", start, end, **kwargs)
        finally:
            store._use_rollups = True
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert by_hours >= 10


def test_an_hour_a_file_holds_part_of_is_read_from_its_summary(tmp_path: Path) -> None:
    # One file of rows from 00:10 to 05:20; a window from 01:00 to the day's end holds its
    # hours 1 to 5 whole (the file has no rows in the rest of hour 5): no row is scanned.
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    hour = 3_600_000_000_000
    frame = random_usage_frame(400, 70, start=DAY0, days=1, tenants=("t0",))
    frame["timestamp"] = DAY0 + 10 * 60 * 10**9 + frame["timestamp"] % (5 * hour + 10 * 60 * 10**9)
    frame = frame.drop_duplicates(["user_id", "timestamp"])
    store.create_usage(frame)
    start, end = DAY0 + hour, DAY0 + NS_PER_DAY
    plan = store.report("t0", start, end, **HOURLY, explain=True)  # type: ignore[arg-type]
    assert plan["read"].tolist() == ["summary (hours)"]
    got = _hourly_report(store, start, end, summaries=True)
    pd.testing.assert_frame_equal(got, _hourly_report(store, start, end, summaries=False))
    inside = frame[(frame["timestamp"] >= start) & (frame["timestamp"] < end)]
    assert int(got["requests"].sum()) == len(inside) > 0


def test_a_day_of_small_files_gets_a_span_from_their_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files too small for rollups of their own are summarized from their rows into spans."""
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1024)  # these files get no rollups
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    for i in range(3):
        store.create_usage(random_usage_frame(40, 30 + i, days=2, tenants=TENANTS))
    assert all(not e.sidecars for e in store._ds.snapshot().files)
    store.compact()  # one file per day, still without rollups
    store.create_usage(random_usage_frame(60, 40, start=DAY0 + 2 * NS_PER_DAY, days=1))
    store._summaries.build_spans()
    assert all(not e.sidecars for e in store._ds.snapshot().files)
    day0 = DAY0 // NS_PER_DAY
    spans = store._ds.snapshot().spans
    assert any(sp.first_day <= day0 + 1 <= sp.last_day < day0 + 3 for sp in spans)
    assert_paths_agree(store, np.random.default_rng(40))


def test_no_span_repeats_its_only_half_with_data(tmp_path: Path) -> None:
    store = load(tmp_path / "usage", 14)
    store.compact()
    by_day = {day_number(e.date) for e in store._ds.snapshot().files}
    for span in store._ds.snapshot().spans:
        if span.first_day == span.last_day:
            continue
        half = (span.last_day - span.first_day + 1) // 2
        left = range(span.first_day, span.first_day + half)
        right = range(span.first_day + half, span.last_day + 1)
        assert by_day & set(left) and by_day & set(right), span


def _as_written_by_0_1(table: pa.Table, path: Path) -> None:
    """Parquet, strings plain."""
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    assert path.read_bytes()[:4] == b"PAR1"


def _write_ipc_file(table: pa.Table, path: Path, compression: str) -> None:
    """An Arrow IPC file as 0.2 and 0.3 wrote summaries: batches by tenant, their first and
    last tenants in the schema metadata, buffers compressed with ``compression``."""
    batches, index = summary_files.summary_batches(table)
    schema = table.schema.with_metadata(
        {summary_files.SUMMARY_INDEX_KEY: json.dumps(index).encode()}
    )
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_file(path, schema, options=options) as w:
        for batch in batches:
            w.write_batch(batch)
    assert path.read_bytes()[:6] == b"ARROW1"


def _as_written_by_0_2(table: pa.Table, path: Path) -> None:
    """lz4-compressed buffers, strings plain, integers int64."""
    _write_ipc_file(table, path, "lz4")


def _as_written_by_0_3(table: pa.Table, path: Path) -> None:
    """zstd-compressed buffers, strings dictionary-encoded (one dictionary per file)."""
    stored = pa.table(
        {
            name: pc.dictionary_encode(column).cast(summary_files.SUMMARY_TEXT)
            if pa.types.is_large_string(column.type)
            else column
            for name, column in zip(table.column_names, table.columns, strict=True)
        }
    ).unify_dictionaries()
    _write_ipc_file(stored, path, "zstd")


@pytest.mark.parametrize("write_old", [_as_written_by_0_1, _as_written_by_0_2, _as_written_by_0_3])
def test_summaries_written_by_older_versions_are_still_read(
    tmp_path: Path, write_old: Callable[[pa.Table, Path], None]
) -> None:
    store = load(tmp_path / "usage", 15)
    store.compact()
    expected = both_ways(store, "t2", DAY0 - NS_PER_DAY, DAY0 + 4 * NS_PER_DAY + 7)
    rollups = sorted(p for p in (store.root / "_rollups").rglob("*.rollup"))
    assert len(rollups) > 2
    for path in rollups[::2]:  # half of them, so that reports read both formats at once
        table = summary_files.read_summary(path, None)
        plain = pa.table(
            {
                # as from pandas 3 str columns
                name: column.cast(pa.large_string())
                if pa.types.is_dictionary(column.type)
                else column
                for name, column in zip(table.column_names, table.columns, strict=True)
            }
        )
        path.unlink()
        write_old(plain, path)
        again = summary_files.read_summary(path, None)
        assert [t for t in again.schema.types if pa.types.is_dictionary(t)] == [
            t for t in table.schema.types if pa.types.is_dictionary(t)
        ]
        assert again.to_pylist() == table.to_pylist()
    got = both_ways(store, "t2", DAY0 - NS_PER_DAY, DAY0 + 4 * NS_PER_DAY + 7)
    for mine, theirs in zip(got, expected, strict=True):
        pd.testing.assert_frame_equal(mine, theirs, check_exact=True)


def test_an_import_of_several_days_summarizes_the_days_before_its_last(tmp_path: Path) -> None:
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    store.create_usage(random_usage_frame(400, 16, days=5, tenants=TENANTS))
    day0 = DAY0 // NS_PER_DAY
    covered = {d for sp in store._ds.snapshot().spans for d in range(sp.first_day, sp.last_day + 1)}
    assert covered and max(covered) < day0 + 4  # the last day may still be loading
    assert_paths_agree(store, np.random.default_rng(16))


def test_a_forward_load_summarizes_each_day_once_the_next_one_starts(tmp_path: Path) -> None:
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    for day in range(4):
        for part in range(2):  # two files a day, so that single days get spans too
            frame = random_usage_frame(
                100, 20 + 2 * day + part, start=DAY0 + day * NS_PER_DAY, days=1
            )
            frame["timestamp"] += part  # keeps the keys of the two parts apart
            store.create_usage(frame, on_conflict="ignore")
    day0 = DAY0 // NS_PER_DAY
    spans = {(sp.first_day, sp.last_day) for sp in store._ds.snapshot().spans}
    assert {(d, d) for d in range(day0, day0 + 3)} <= spans  # not the last day: still open
    assert all(last < day0 + 3 for _, last in spans)
    assert_paths_agree(store, np.random.default_rng(20))


def test_rollups_match_scans_after_appends_merge_small_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_layout, "MERGE_FANOUT", 4)
    store = load(tmp_path / "usage", 17, batches=1)
    rows = random_usage_frame(40, 170, days=5, tenants=TENANTS)
    for i in range(len(rows)):
        store.create_usage(rows.iloc[i : i + 1], on_conflict="ignore")
    assert len(store._ds.snapshot().files) < 5 + 40  # merged on the way
    assert_paths_agree(store, np.random.default_rng(17))


def test_compact_cuts_large_partitions_by_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compaction writes files of at most COMPACT_FILE_ROWS rows, each a range of time sorted
    by (tenant, timestamp) inside, keeps every row, and a window cutting a day scans only the
    file it cuts."""
    monkeypatch.setattr(_layout, "COMPACT_FILE_ROWS", 128)
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    store = load(tmp_path / "usage", 23, batches=6)
    before = store.find_usages()
    assert store.compact() > 0
    after = store.find_usages()
    pd.testing.assert_frame_equal(after, before)
    by_date: dict[str, list[FileEntry]] = {}
    for entry in store._ds.snapshot().files:
        by_date.setdefault(entry.date, []).append(entry)
    assert any(len(entries) > 1 for entries in by_date.values())
    for entries in by_date.values():
        assert all(e.rows <= 128 for e in entries)
        spans = sorted((e.min("timestamp"), e.max("timestamp")) for e in entries)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start  # time ranges do not overlap (they may touch)
        for entry in entries:
            rows = _reads.read_rows(store._ds, entry).to_pandas()
            order = rows.sort_values(["tenant", "timestamp"], kind="stable")
            assert rows["id"].tolist() == order["id"].tolist()
    # Partitions whose files are all large enough are left alone.
    assert store.compact() == 0
    assert_paths_agree(store, np.random.default_rng(23))
    # A window from the middle of a day reads one file of that day's rows, not all of them.
    day = sorted(by_date)[1]
    entries = sorted(by_date[day], key=lambda e: e.min("timestamp"))
    middle = entries[len(entries) // 2]
    start = (middle.min("timestamp") + middle.max("timestamp")) // 2
    scanned: list[list[str]] = []
    real_scan = Dataset.scan

    def counting(self: Dataset, entries_: Any, *args: Any, **kwargs: Any) -> Any:
        scanned.append([e.path for e in entries_])
        return real_scan(self, entries_, *args, **kwargs)

    monkeypatch.setattr(Dataset, "scan", counting)
    store.get_usages_by_groups(TENANTS[0], start, entries[-1].max("timestamp") + 1)
    assert scanned == [[middle.path]]


def test_a_compacted_files_row_groups_are_ranges_of_time_that_a_window_prunes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a compacted file each row group is a range of time, sorted by (tenant,
    timestamp), the ranges in time order (so that a time filter prunes them through their
    statistics, as in a loaded file); reports still equal a scan."""
    monkeypatch.setattr(_layout, "COMPACT_FILE_ROWS", 128)
    monkeypatch.setattr(summary_files, "DATA_ROW_GROUP", 32)
    monkeypatch.setattr(_writes, "DATA_ROW_GROUP", 32)
    store = load(tmp_path / "usage", 29, batches=6)
    before = store.find_usages()
    assert store.compact() > 0
    pd.testing.assert_frame_equal(store.find_usages(), before)
    cut = 0
    for entry in store._ds.snapshot().files:
        meta = pq.ParquetFile(store.root / entry.path).metadata
        assert meta.num_row_groups == -(-entry.rows // 32)
        table = pq.read_table(store.root / entry.path)
        spans = []
        for at in range(0, entry.rows, 32):
            group = table.slice(at, 32).to_pandas()
            order = group.sort_values(["tenant", "timestamp"], kind="stable")
            assert group["id"].tolist() == order["id"].tolist()
            spans.append((group["timestamp"].min(), group["timestamp"].max()))
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start
        cut += meta.num_row_groups > 1
    assert cut > 0  # files of several row groups were written
    assert_paths_agree(store, np.random.default_rng(29))


def test_a_batch_whose_days_are_too_small_for_rollups_still_summarizes_earlier_days(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch is large enough for the second thread, but none of its days is: the days
    before its last still get spans (from their rows)."""
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 64)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    store.create_usage(random_usage_frame(200, 41, days=5, tenants=TENANTS))
    assert all(not e.sidecars for e in store._ds.snapshot().files)
    day0 = DAY0 // NS_PER_DAY
    covered = {d for sp in store._ds.snapshot().spans for d in range(sp.first_day, sp.last_day + 1)}
    assert covered and max(covered) < day0 + 4
    assert_paths_agree(store, np.random.default_rng(41))


def test_a_day_still_loading_gets_a_span_at_4_and_8_files(tmp_path: Path) -> None:
    """The last day of a load gets a span of its own once it holds OPEN_DAY_FILES files with
    rollups, and again once OPEN_DAY_FILES more came; a write into it in between makes the span
    partial (listing the files it summarizes), and a report reads the newer files besides it."""
    assert _layout.OPEN_DAY_FILES == 4
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    day = DAY0 // NS_PER_DAY
    spans_of_day: list[int | None] = []  # how many files the day's span summarizes
    for part in range(9):
        frame = random_usage_frame(60, 50 + part, start=DAY0, days=1, tenants=TENANTS)
        frame["timestamp"] = DAY0 + part * 3_600 * 10**9 + np.arange(len(frame))
        store.create_usage(frame)
        snap = store._ds.snapshot()
        found = [sp for sp in snap.spans if (sp.first_day, sp.last_day) == (day, day)]
        if not found:
            spans_of_day.append(None)
            continue
        spans_of_day.append(sum(found[0].covers(e) for e in snap.files))
        assert found[0].partial == (spans_of_day[-1] != len(snap.files))
        assert_paths_agree(store, np.random.default_rng(part), windows=2)
        plan = store.report("t0", DAY0, DAY0 + NS_PER_DAY, explain=True)
        # The span, and each file it does not summarize, by its own summaries.
        assert plan["read"].tolist() == ["summary"] * (1 + len(snap.files) - spans_of_day[-1])
    assert spans_of_day == [None, None, None, 4, 4, 4, 4, 8, 8]


def test_a_day_of_many_files_gets_its_span_again_once_an_eighth_more_came(tmp_path: Path) -> None:
    """Past 32 files, a day still loading gets its span again once the files added since are
    OPEN_DAY_FILES and an eighth of those it summarizes: at 36, then 41 (36 / 8 = 4.5)."""
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    day = DAY0 // NS_PER_DAY
    covered: list[int | None] = []
    for part in range(42):
        # (files of MERGE_BELOW_ROWS rows or more: smaller ones are merged as they come)
        rows = 2 * _layout.MERGE_BELOW_ROWS  # (a few repeated keys are dropped)
        frame = random_usage_frame(rows, 500 + part, start=DAY0, days=1, tenants=TENANTS)
        frame["timestamp"] = DAY0 + part * 60 * 10**9 + np.arange(len(frame)) * 1000
        store.create_usage(frame)
        snap = store._ds.snapshot()
        found = [sp for sp in snap.spans if (sp.first_day, sp.last_day) == (day, day)]
        covered.append(sum(found[0].covers(e) for e in snap.files) if found else None)
    expected = [None] * 3 + [n for n in range(4, 36, 4) for _ in range(4)] + [36] * 5 + [41] * 2
    assert covered == expected
    assert_paths_agree(store, np.random.default_rng(42), windows=2)


def _day_span_inputs(store: Store) -> tuple[int, list[str], dict[str, pa.Table]]:
    """The first day of ``store``, its data files, and both rollups of its rows."""
    files = store._ds.snapshot().by_date()
    date, entries = next(iter(files.items()))
    day = day_number(date)
    rows = store.find_usages()
    rows = rows[rows["timestamp"] // NS_PER_DAY == day]
    tables = grains.rollups(pa.Table.from_pandas(rows, preserve_index=False))
    return day, [e.path for e in entries], tables


def test_a_span_whose_computation_fails_is_left_out_of_its_commit(tmp_path: Path) -> None:
    """A span staged as futures is committed only if every one of its tables is computed;
    otherwise the commit goes on without it and leaves none of its files behind."""
    from concurrent.futures import Future

    store = Store(tmp_path / "usage")
    store.auto_migrate()
    store.create_usage(random_usage_frame(100, 3, days=2, tenants=TENANTS))
    day, paths, tables = _day_span_inputs(store)
    good: Future[pa.Table] = Future()
    good.set_result(tables["summary"])
    bad: Future[pa.Table] = Future()
    bad.set_exception(RuntimeError("injected"))
    version = store._ds.snapshot().version
    with store._ds.transaction() as tx:
        kept = tx.add_span(day, day, dict(tables), paths)
        left_out = tx.add_span(day, day, {"summary": good, "groups": bad}, paths)
        tx.commit()
    assert tx.failed_spans == [left_out]
    snap = store._ds.snapshot()
    assert snap.version == version + 1
    assert [sp.name for sp in snap.spans] == [kept.name]
    on_disk = sorted(p.name for p in (store.root / "_rollups" / "spans").iterdir())
    assert on_disk == sorted(f"{kept.name}.{k}.rollup" for k in tables)
    assert_paths_agree(store, np.random.default_rng(3), windows=2)


def test_a_span_must_cover_the_files_its_commit_leaves(tmp_path: Path) -> None:
    """A span given the files it covers is checked against the state its commit makes: in a
    commit that removes one of a day's two files, a span of both is refused and nothing
    changes, while a span of the file that stays is taken."""
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    for seed in (4, 5):  # two files on each day
        store.create_usage(
            random_usage_frame(100, seed, days=2, tenants=TENANTS), on_conflict="ignore"
        )
    day, paths, tables = _day_span_inputs(store)
    assert len(paths) == 2
    before = snapshot_files(store.root)
    gone, kept = store._ds.snapshot().by_date()[str(np.datetime64(day, "D"))]
    with store._ds.transaction() as tx:
        tx.remove(gone)
        tx.add_span(day, day, tables, paths)
        with pytest.raises(ValueError, match="must cover the files"):
            tx.commit()
    assert snapshot_files(store.root) == before
    left = pa.Table.from_pandas(
        _reads.read_rows(store._ds, kept).to_pandas()[list(grains.INPUT_COLUMNS)],
        preserve_index=False,
    )
    with store._ds.transaction() as tx:
        tx.remove(gone)
        tx.add_span(day, day, grains.rollups(left), [kept.path])
        tx.commit()
    assert [(sp.first_day, sp.last_day) for sp in store._ds.snapshot().spans] == [(day, day)]
    assert_paths_agree(store, np.random.default_rng(4), windows=2)


def test_a_load_commits_the_spans_of_the_days_before_it_with_its_rows(tmp_path: Path) -> None:
    """A load running forward in time: each append is one commit, and the first append of a
    day carries the spans of the days before it."""
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    day0 = DAY0 // NS_PER_DAY
    for day in range(4):
        for part in range(2):
            frame = random_usage_frame(
                50, 10 * day + part, start=DAY0 + day * NS_PER_DAY, days=1, tenants=TENANTS
            )
            frame["timestamp"] = (
                DAY0 + day * NS_PER_DAY + part * NS_PER_DAY // 2 + np.arange(len(frame))
            )
            version = store._ds.snapshot().version
            store.create_usage(frame)
            snap = store._ds.snapshot()
            assert snap.version == version + 1
            spans = {(sp.first_day - day0, sp.last_day - day0) for sp in snap.spans}
            assert {(d, d) for d in range(day)} <= spans, (day, part)
            assert all(last < day for _, last in spans), (day, part)
    assert_paths_agree(store, np.random.default_rng(9))


def _random_operations(root: Path, seed: int, steps: int) -> None:
    """Random appends (in time order, shuffled, partly out of order, of one or several days,
    forward or into earlier days, with repeated keys ignored), deletes and compactions, some
    with an append's span computation failing or a disk error at one of the files a write
    writes. After each: no journal, the files on disk are the files the manifest lists, and
    every span equals the rollups of the rows of its days; at the end, the reports agree with
    plain scans."""
    rng = np.random.default_rng(seed)
    store = Store(root)
    store.auto_migrate()
    combine = grains.combine
    failing = {"spans": False, "seed": 0}
    calls: dict[str, int] = {}

    def sometimes_failing(kind: str, parts: Any) -> pa.Table:
        # Only spans an append computes on its other threads: compact() raises the error.
        # Whether a call fails depends on the step, the kind and the kind's calls so far
        # (each kind is combined on one thread), not on how the threads interleave.
        on_worker = threading.current_thread().name.startswith("usage-analytics-rollups")
        if failing["spans"] and on_worker:
            calls[kind] = calls.get(kind, 0) + 1
            draw = np.random.default_rng([failing["seed"], KINDS.index(kind), calls[kind]])
            if draw.random() < 0.4:
                raise RuntimeError("injected span failure")
        return combine(kind, parts)

    frontier = DAY0
    for step in range(steps):
        failing["spans"] = rng.random() < 0.15
        failing["seed"] = int(rng.integers(0, 2**32))
        calls.clear()
        fail_at = int(rng.integers(1, 7)) if rng.random() < 0.1 else None
        op = rng.random()
        faults.FAULT_HOOK = _disk_error_at_file(fail_at)
        try:
            with warnings.catch_warnings(), pytest.MonkeyPatch.context() as patch:
                warnings.simplefilter("ignore", RuntimeWarning)
                patch.setattr(grains, "combine", sometimes_failing)
                if op < 0.8:
                    days = int(rng.choice([1, 1, 1, 2, 3]))
                    forward = rng.random() < 0.9
                    start = frontier if forward else DAY0 + int(rng.integers(0, 5)) * NS_PER_DAY
                    frame = random_usage_frame(
                        int(rng.choice([1, 5, 20, 40, 100, 300])),
                        int(rng.integers(0, 10**6)),
                        start=start,
                        days=days,
                        tenants=TENANTS,
                    )
                    if rng.random() < 0.6:
                        frame = frame.sort_values("timestamp", kind="stable")
                        if rng.random() < 0.3 and len(frame) > 4:  # one pair out of order
                            i = int(rng.integers(0, len(frame) - 1))
                            order = list(range(len(frame)))
                            order[i], order[i + 1] = order[i + 1], order[i]
                            frame = frame.iloc[order]
                    store.create_usage(frame.reset_index(drop=True), on_conflict="ignore")
                    frontier += NS_PER_DAY * int(rng.random() < 0.3)
                elif op < 0.9:
                    when = DAY0 + int(rng.integers(0, 4 * NS_PER_DAY))
                    store.delete_usage(when, limit=[None, 10][int(rng.integers(0, 2))])
                else:
                    store.compact()
        except StorageError:
            pass  # an injected disk error: nothing was changed
        finally:
            faults.FAULT_HOOK = None
        ds = store._ds
        assert not ds.journal_path.exists(), step
        on_disk = {
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and not is_bookkeeping(p.relative_to(root).as_posix())
        }
        assert on_disk == set(ds.live_paths()), step
        rows = store.find_usages()
        day = rows["timestamp"] // NS_PER_DAY
        snap = ds.snapshot()
        for span in snap.spans:
            inside = rows[(day >= span.first_day) & (day <= span.last_day)]
            if span.partial:  # the rows of the files it lists
                assert span.files is not None
                ids = pa.concat_arrays(
                    [
                        pq.read_table(root / p, columns=["id"])["id"].combine_chunks()
                        for p in span.files
                    ]
                )
                inside = inside[inside["id"].isin(ids.to_numpy())]
                newer = [e for e in snap.files if span.first_day <= e.day <= span.last_day]
                assert len(newer) > len(span.files), step  # (else it would not be partial)
            expected = grains.rollups(pa.Table.from_pandas(inside))
            for kind in span.kinds:
                got = ds.read_summaries([span.path(kind)])[0]
                pd.testing.assert_frame_equal(
                    _plain(got), _plain(expected[kind]), obj=f"step {step} span {span} {kind}"
                )
    assert_paths_agree(store, rng)


def _disk_error_at_file(nth: int | None) -> Callable[[str], None]:
    """A fault hook that fails the ``nth`` file a write writes (none when ``nth`` is None)."""
    written: list[str] = []

    def hook(name: str) -> None:
        if nth is not None and name == "data_tmp_written":
            written.append(name)
            if len(written) == nth:
                raise OSError(errno.EIO, "injected EIO")

    return hook


def _plain(table: pa.Table) -> pd.DataFrame:
    """A rollup as a frame of strings and int64 sums, whatever its encoding and row order
    (summaries are sorted by tenant; the order of their other rows is not fixed)."""
    frame = table.to_pandas()
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = frame[name].astype(str)
        elif frame[name].dtype.kind in "iu":
            frame[name] = frame[name].astype(np.int64)
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations_with_failures_keep_spans_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 16)  # small files get none
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    _random_operations(tmp_path / "usage", seed, steps=40)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 7))
def test_random_operations_with_failures_keep_spans_exact_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 16)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    _random_operations(tmp_path / "usage", seed, steps=150)


def test_compressed_summaries_read_back_exactly_with_their_types() -> None:
    rows = random_usage_frame(5_000, 3)
    tables = {k: grains.rollup(k, grains.encode_keys(rows)) for k in ("groups", "latency")}
    kept = Compressed(tables, min_rows=100)
    small = Compressed(tables, min_rows=10**9)  # every table kept as it is
    for found in (kept, small):
        assert list(found) == ["groups", "latency"] and len(found) == 2
        assert "groups" in found and "daily" not in found
        for kind, table in tables.items():
            back = found[kind]
            assert back.schema == table.schema and back.equals(table)
    assert small["groups"] is tables["groups"]
    with pytest.raises(KeyError):
        kept["daily"]


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_the_grains_are_dealt_to_threads_in_whole_trees_and_give_the_same_summaries(
    threads: int,
) -> None:
    """Each thread of a write computes a part of the grains: every grain in exactly one part,
    with the grain it is derived from, and a part's summaries equal those of every grain."""
    parts = grains.compute_parts(threads)
    assert 1 <= len(parts) <= threads
    dealt = [kind for part in parts for kind in part]
    assert sorted(dealt) == sorted(grains.COMPUTE_ORDER)
    for part in parts:
        for kind in part:
            finer = grains.grain(kind).derive_from
            assert finer is None or finer in part
    rows = pa.Table.from_pandas(
        random_usage_frame(400, 7, days=2, tenants=TENANTS), preserve_index=False
    )
    every = grains.rollups(rows)
    for part in parts:
        found = dict(grains.iter_rollups(rows, part))
        assert list(found) == list(part)
        for kind, table in found.items():
            assert table.equals(every[kind]), kind


def test_a_write_whose_summaries_fail_in_one_thread_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grains of a write are computed on two threads; a failure on one fails the write,
    whose files all stay as they were."""
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    store.create_usage(random_usage_frame(200, 1, days=2, tenants=TENANTS))
    before = snapshot_files(tmp_path / "usage")
    compute = grains.Grain.compute

    def failing(self: grains.Grain, rows: pa.Table) -> pa.Table:
        if self.name == "groups":
            raise RuntimeError("summary failed")
        return compute(self, rows)

    monkeypatch.setattr(grains.Grain, "compute", failing)
    later = random_usage_frame(200, 2, start=DAY0 + 3 * NS_PER_DAY, days=2, tenants=TENANTS)
    with pytest.raises(RuntimeError, match="summary failed"):
        store.create_usage(later)
    assert snapshot_files(tmp_path / "usage") == before
    monkeypatch.setattr(grains.Grain, "compute", compute)
    assert store.create_usage(later) == len(later)
    assert_paths_agree(store, np.random.default_rng(3), windows=3)


def test_a_day_span_adds_only_the_files_its_last_span_did_not_combine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day still loading gets a span at 4 and 8 files, and one when the next day starts:
    each combines the tables of the day's span before it with the files added since (not
    every file of the day again), and equals the summaries of the day's rows."""
    from usage_analytics._summaries import Summaries

    added: list[str] = []
    add_file = Summaries._add_file

    def counting(self: Summaries, entry: FileEntry, *args: Any) -> None:
        added.append(entry.path)
        add_file(self, entry, *args)

    monkeypatch.setattr(Summaries, "_add_file", counting)
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    day = DAY0 // NS_PER_DAY
    combined: list[int] = []
    for part in range(10):
        start = DAY0 + (NS_PER_DAY if part == 9 else part * 3_600 * 10**9)
        frame = random_usage_frame(60, 70 + part, start=DAY0, days=1, tenants=TENANTS)
        frame["timestamp"] = start + np.arange(len(frame)) * 10**6
        added.clear()
        store.create_usage(frame)
        combined.append(len(set(added)))  # a file is added once per part of the kinds
    # Spans at 4 files (all 4), at 8 (the 4 since), and when the next day starts (the 9th).
    assert combined == [0, 0, 0, 4, 0, 0, 0, 4, 0, 1]
    (span,) = [sp for sp in store._ds.snapshot().spans if (sp.first_day, sp.last_day) == (day, day)]
    rows = store.find_usages()
    rows = rows[rows["timestamp"] // NS_PER_DAY == day]
    expected = grains.rollups(pa.Table.from_pandas(rows, preserve_index=False))
    for kind in span.kinds:
        (got,) = store._ds.read_summaries([span.path(kind)])
        keys = list(grains.grain(kind).keys)
        want = expected[kind].to_pandas().sort_values(keys, ignore_index=True)
        have = got.to_pandas().sort_values(keys, ignore_index=True)
        for column in keys:
            want[column], have[column] = want[column].astype(str), have[column].astype(str)
        pd.testing.assert_frame_equal(have, want, check_dtype=False)
    assert_paths_agree(store, np.random.default_rng(9), windows=3)


def test_a_span_lacking_a_kind_is_built_again_with_the_kinds_it_had(tmp_path: Path) -> None:
    """A span written without some kind (by a version before that grain was declared) is built
    again by build_spans(): the new span has the kind, and keeps every kind the old one had
    (they are what reports read for those days)."""
    store = load(tmp_path / "usage", 31)  # four files a day
    snap = store._ds.snapshot()
    old = next(sp for sp in snap.spans if sp.first_day == sp.last_day and len(sp.kinds) >= 3)
    gone = old.kinds[-1]
    tables = {k: store._ds.read_summaries([old.path(k)])[0] for k in old.kinds}
    kept = {k: t for k, t in tables.items() if k != gone}
    days = range(old.first_day, old.last_day + 1)
    files = [e.path for e in snap.files if day_number(e.date) in days]
    with store._ds.transaction() as tx:
        tx.drop_span(old)
        lacking = tx.add_span(old.first_day, old.last_day, kept, files)
        tx.commit()
    assert gone not in lacking.kinds and gone not in lacking.skipped
    assert store._summaries.build_spans() >= 1
    (rebuilt,) = [
        sp
        for sp in store._ds.snapshot().spans
        if (sp.first_day, sp.last_day) == (old.first_day, old.last_day)
    ]
    assert rebuilt.name != lacking.name
    assert set(old.kinds) <= set(rebuilt.kinds)

    def rows_of(table: pa.Table) -> list[tuple[Any, ...]]:  # in any order, at any width
        return sorted(zip(*(c.to_pylist() for c in table.columns), strict=True))

    for kind in old.kinds:
        assert rows_of(store._ds.read_summaries([rebuilt.path(kind)])[0]) == rows_of(tables[kind])
    assert_paths_agree(store, np.random.default_rng(31))


def test_a_span_table_is_let_go_once_written_unless_kept() -> None:
    """The commit drops a span's table after writing it (a load of many days would hold every
    span's otherwise), except for the spans the store remembers; errors are raised to every
    reader."""
    table = pa.table({"tenant": ["t0"], "total_requests": [1]})
    kept, dropped, failed = SpanTable(), SpanTable(), SpanTable()
    dropped.keep = False
    assert not kept.done()
    for future in (kept, dropped):
        future.set_result(table)
        assert future.done() and future.result() is table and future.exception() is None
        future.written()
    assert kept.result() is table
    assert dropped.result() is None
    failed.set_exception(OSError(errno.EIO, "disk"))
    assert isinstance(failed.exception(), OSError)
    with pytest.raises(OSError, match="disk"):
        failed.result()


def test_a_load_of_many_days_in_one_commit_writes_every_span_whole(tmp_path: Path) -> None:
    """A load of more days' spans than the store remembers lets each go once written: every
    span is on disk whole (verify() recomputes them), and reports equal scans."""
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    frames = [
        random_usage_frame(120, 500 + d, start=DAY0 + d * NS_PER_DAY, days=1, tenants=TENANTS)
        for d in range(24)
    ]
    store.create_usage_batches(frames, on_conflict="ignore")
    spans = store._ds.snapshot().spans
    assert len(spans) > _layout.RECENT_SPANS
    assert len(store._summaries._recent_spans) <= _layout.RECENT_SPANS
    assert store.verify().empty
    assert_paths_agree(store, np.random.default_rng(24))


def test_two_days_of_groups_get_a_span_at_three_quarters_of_their_day_spans(
    tmp_path: Path,
) -> None:
    """A span of two days is written for ``groups`` when it has at most three quarters of the
    rows of the two days' spans (other grains: half): here each day has 10 groups, 6 of them
    on both days, so the pair has 14 of 20."""

    def day(d: int, groups: list[tuple[str, str]], seed: int) -> pd.DataFrame:
        frame = random_usage_frame(40, seed, start=DAY0 + d * NS_PER_DAY, days=1, tenants=("t0",))
        pick = [groups[i % len(groups)] for i in range(len(frame))]
        frame["api_key_id"] = [k for k, _ in pick]
        frame["user_id"] = [u for _, u in pick]
        frame["model_id"] = "m"
        return frame.drop_duplicates(["user_id", "timestamp"])

    shared = [(f"k{i}", f"u{i}") for i in range(6)]
    first = shared + [(f"k{i}", f"a{i}") for i in range(6, 10)]
    second = shared + [(f"k{i}", f"b{i}") for i in range(10, 14)]
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    for half in range(2):  # two files a day, so that each day gets a span of its own
        rows = pd.concat([day(0, first, 60 + half), day(1, second, 70 + half)])
        store.create_usage(rows, on_conflict="ignore")
    store.create_usage(day(2, first, 80), on_conflict="ignore")  # the two days are complete
    store.compact()
    day0 = DAY0 // NS_PER_DAY
    (pair,) = [
        sp for sp in store._ds.snapshot().spans if (sp.first_day, sp.last_day) == (day0, day0 + 1)
    ]
    assert "groups" in pair.kinds
    assert "users" in pair.skipped  # (key, user): the same 14 of 20, over half
    assert grains.grain("groups").shrink_of(2) == 0.75
    assert grains.grain("groups").shrink_of(4) is None
    # The pair serves what only groups gives; a report that a smaller grain covers reads
    # the days with that one, not the pair's groups.
    lo, hi = DAY0, DAY0 + 2 * NS_PER_DAY
    by_key = store.report("t0", lo, hi, by="api_key_id", metrics=["prompt_tokens"], explain=True)
    assert by_key["piece"].tolist() == [f"span {day_date(day0)}..{day_date(day0 + 1)}"]
    by_model = store.report("t0", lo, hi, by="model_id", metrics=["requests"], explain=True)
    assert set(by_model["grain"]) == {"daily"} and len(by_model) == 2
    assert_paths_agree(store, np.random.default_rng(60))


def _spans_and_tables(store: Store) -> tuple[dict[Any, Any], dict[Any, pd.DataFrame]]:
    """Each span's kinds, skipped kinds and files, and each span table, as plain values."""
    snap = store._ds.snapshot()
    spans = {
        (sp.first_day, sp.last_day): (sorted(sp.kinds), sorted(sp.skipped), sp.files)
        for sp in snap.spans
    }
    tables = {}
    for sp in snap.spans:
        for kind in sp.kinds:
            frame = store._ds.read_summaries([sp.path(kind)])[0].to_pandas()
            frame = frame.astype({c: str for c in frame.columns if frame[c].dtype == "category"})
            tables[(sp.first_day, kind)] = frame.sort_values(list(frame.columns), ignore_index=True)
    return spans, tables


def test_spans_too_large_before_combining_are_not_combined_and_nothing_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Days of different rows: spans of two days mostly do not shrink to half their days' rows,
    # and the largest day already says so. Loads a day at a time, then one of eight days.
    def loaded(root: Path, check: bool) -> tuple[Store, int]:
        combined = 0
        real = grains.combine

        def counted(kind: str, parts: Any) -> pa.Table:
            nonlocal combined
            combined += 1
            return real(kind, parts)

        with monkeypatch.context() as patch:
            patch.setattr(grains, "combine", counted)
            if not check:
                patch.setattr(_summaries, "_too_large", lambda *args: False)
            store = Store(root)
            store.auto_migrate()
            for day in range(8):
                frame = random_usage_frame(
                    200 + 40 * day, day, start=DAY0 + day * NS_PER_DAY, days=1, tenants=TENANTS
                )
                store.create_usage(frame)
            store.create_usage(
                random_usage_frame(2_000, 99, start=DAY0 + 8 * NS_PER_DAY, days=8, tenants=TENANTS)
            )
        return store, combined

    fast, fast_combines = loaded(tmp_path / "checked", check=True)
    slow, slow_combines = loaded(tmp_path / "combined", check=False)
    assert fast_combines < slow_combines
    fast_spans, fast_tables = _spans_and_tables(fast)
    slow_spans, slow_tables = _spans_and_tables(slow)
    assert len(fast_spans) > 8
    assert fast_spans == slow_spans
    assert fast_tables.keys() == slow_tables.keys()
    for key, table in fast_tables.items():
        pd.testing.assert_frame_equal(table, slow_tables[key], check_exact=True)
    rows = fast.find_usages()
    for tenant in TENANTS:
        start, end = DAY0, DAY0 + 16 * NS_PER_DAY
        got = fast.report(tenant, start, end, by="model_id", metrics=["requests", "users"])
        want = slow.report(tenant, start, end, by="model_id", metrics=["requests", "users"])
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        assert got["requests"].sum() == (rows["tenant"] == tenant).sum()
