"""Hostile calls: every public method and CLI command with arguments and datasets built to break
them. Nothing but a ``UsageAnalyticsError`` may come out of the library (the CLI: a one-line
message and exit code 1, or 2 for bad arguments), and no call may hang.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _crash_worker import DAY, T0, batch
from click.testing import CliRunner
from helpers import edit_latest_commit, latest_commit, snapshot_files, to_manifest_format

from usage_analytics import (
    CorruptDatasetError,
    InvalidArgumentError,
    Not,
    Prices,
    Store,
    Summary,
    Usage,
    UsageAnalyticsError,
    UsageByGroup,
    _layout,
    synthetic,
)
from usage_analytics._storage import files as summary_files
from usage_analytics.cli import cli

#: A call that takes longer than this is taken to hang (the calls here take milliseconds).
HANG_SECONDS: Final = 20
TOP: Final = 2**63 - 1  # the largest timestamp a row can have


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(what: str) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"{what} was still running after {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(what: str, call: Callable[[], Any]) -> Any:
    """Run ``call``: its result, or the UsageAnalyticsError it raised; anything else fails."""
    with no_hang(what):
        try:
            return call()
        except UsageAnalyticsError as exc:
            assert str(exc).strip(), f"{what}: an error without a message"
            return exc
        except Exception as exc:
            pytest.fail(f"{what} raised {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------
# Datasets.


@pytest.fixture
def with_spans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Three days of rows, with file rollups and span rollups, plus a row at the last
    timestamp int64 can hold."""
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    store = Store(tmp_path / "spans")
    store.auto_migrate()
    store.create_usage(batch(1))
    store.create_usage(batch(2))
    store.compact()
    store.create_usage(
        {"user_id": "edge", "tenant": "t0", "api_method": "GetFoo", "timestamp": TOP}
    )
    assert store._ds.snapshot().spans, "the fixture should have span rollups"
    return store


def _expected(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both reports over every row, computed with pandas from ``find_usages()``."""
    rows = store.find_usages()
    t0 = rows[rows.tenant == "t0"]
    summary = t0.groupby("api_method").size()
    t1 = rows[rows.tenant == "t1"]
    groups = t1.groupby(["api_key_id", "user_id", "model_id"]).size()
    return summary, groups


BOUNDS: Final = [
    (-(2**80), 2**62),
    (0, 2**80),
    (0, 2**63),
    (-1, 2**64),
    (np.int64(0), np.uint64(2**63)),
    (-(2**100), 2**100),
    (0, np.uint64(2**64 - 1)),
]


@pytest.mark.parametrize("use_rollups", [True, False], ids=["rollups", "scans"])
@pytest.mark.parametrize(("start", "end"), BOUNDS)
def test_bounds_outside_int64_are_clamped(
    with_spans: Store, start: Any, end: Any, use_rollups: bool
) -> None:
    with_spans._use_rollups = use_rollups
    summary, groups = _expected(with_spans)
    with no_hang(f"reports over [{start}, {end})"):
        got_summary = with_spans.aggregated_usage("t0", start, end)
        got_groups = with_spans.get_usages_by_groups("t1", start, end)
    if int(end) > TOP:  # the row at 2**63 - 1 is inside
        assert got_summary.set_index("api_method")["total_requests"].to_dict() == summary.to_dict()
        assert (
            got_groups.set_index(["api_key_id", "user_id", "model_id"])["total_requests"].to_dict()
            == groups.to_dict()
        )
    else:
        assert got_summary["total_requests"].sum() == summary.sum() - 1


def test_end_at_2_63_includes_the_last_possible_row(with_spans: Store) -> None:
    with no_hang("reports and deletes at the last timestamps"):
        got = with_spans.aggregated_usage("t0", TOP, 2**63)
        assert got["total_requests"].tolist() == [1]
        assert with_spans.aggregated_usage("t0", TOP, TOP).empty
        assert with_spans.aggregated_usage("t0", 2**63, 2**80).empty
        rows = len(with_spans.find_usages())
        assert with_spans.delete_usage(TOP) == rows - 1
        assert with_spans.delete_usage(2**80) == 1


def test_cli_prints_bounds_beyond_timestamps(with_spans: Store) -> None:
    args = ["report", str(with_spans.root), "--tenant", "t0", "--end", str(2**64)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr
    assert str(2**64) in result.stdout.splitlines()[0]  # the window's end, beyond any time
    result = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert json.loads(result.stdout)["end"] == 2**64


# ---------------------------------------------------------------------------------------------
# Damaged manifests and journals, links, lock timeouts.


@pytest.fixture
def plain(tmp_path: Path) -> Store:
    store = Store(tmp_path / "plain")
    store.auto_migrate()
    store.create_usage(batch(1))
    return store


def _edit(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _set(raw: dict[str, Any], **values: Any) -> dict[str, Any]:
    raw.update(values)
    return raw


def _first_file(raw: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    change(raw["files"][0])
    return raw


MANIFEST_DAMAGE: Final[dict[str, Callable[[Any], Any]]] = {
    "a list": lambda raw: [raw],
    "no files": lambda raw: {k: v for k, v in raw.items() if k != "files"},
    "files not a list": lambda raw: _set(raw, files={"a": 1}),
    "no txid": lambda raw: {k: v for k, v in raw.items() if k != "txid"},
    "version as text": lambda raw: _set(raw, version="3"),
    "next_id null": lambda raw: _set(raw, next_id=None),
    "entry not an object": lambda raw: _set(raw, files=[5]),
    "entry without stats": lambda raw: _first_file(raw, lambda f: f.pop("stats")),
    "stats without timestamp": lambda raw: _first_file(raw, lambda f: f["stats"].pop("timestamp")),
    "stats reversed": lambda raw: _first_file(
        raw, lambda f: f["stats"].update(timestamp=f["stats"]["timestamp"][::-1])
    ),
    "stats of text": lambda raw: _first_file(raw, lambda f: f["stats"].update(id=["1", "2"])),
    "schema version 7": lambda raw: _first_file(raw, lambda f: f.update(schema_version=7)),
    "rows as text": lambda raw: _first_file(raw, lambda f: f.update(rows="10")),
    "negative rows": lambda raw: _first_file(raw, lambda f: f.update(rows=-1)),
    "odd sidecars": lambda raw: _first_file(raw, lambda f: f.update(sidecars="summary")),
    "span not an object": lambda raw: _set(raw, spans=["x"]),
    "span with text days": lambda raw: _set(
        raw, spans=[{"name": "0" * 32, "first_day": "1", "last_day": 2, "kinds": []}]
    ),
}


@pytest.fixture
def legacy(plain: Store) -> Store:
    """``plain`` in the older layout: a manifest that lists the live files, no log."""
    to_manifest_format(plain.root)
    return plain


@pytest.mark.parametrize("damage", list(MANIFEST_DAMAGE))
def test_a_damaged_manifest_is_a_corrupt_dataset_error(legacy: Store, damage: str) -> None:
    plain = legacy
    manifest = plain.root / "_usage_analytics.json"
    _edit(manifest, MANIFEST_DAMAGE[damage])
    reopened = Store(plain.root)
    for name, call in _every_call(reopened).items():
        exc = outcome(name, call)
        assert isinstance(exc, CorruptDatasetError), (name, exc)
        assert str(manifest) in str(exc), (name, str(exc))


def _action(kind: str, change: Callable[[dict[str, Any]], Any]) -> Callable[[list[Any]], None]:
    """A change of the first action of ``kind`` in a commit (the usage_analytics domain's
    configuration and the add's entry tag given decoded)."""

    def edit(actions: list[Any]) -> None:
        change(next(a[kind] for a in actions if kind in a))

    return edit


def _state(change: Callable[[dict[str, Any]], Any]) -> Callable[[list[Any]], None]:
    """A change of the commit's usage_analytics state (not of a span's domain)."""

    def edit(actions: list[Any]) -> None:
        domains = (a["domainMetadata"] for a in actions if "domainMetadata" in a)
        change(next(d for d in domains if d["domain"] == "usage_analytics")["configuration"])

    return edit


def _entry(change: Callable[[dict[str, Any]], Any]) -> Callable[[list[Any]], None]:
    return _action("add", lambda a: change(a["tags"]["usage_analytics"]))


def _other_name(path: str) -> str:
    """``path`` with its file name changed (its last hex digit, so it stays a valid name)."""
    last = path[-len("0.parquet")]
    return path[: -len("0.parquet")] + ("1" if last == "0" else "0") + ".parquet"


def _drop(kind: str) -> Callable[[list[Any]], None]:
    def edit(actions: list[Any]) -> None:
        actions[:] = [a for a in actions if kind not in a]

    return edit


def _span_domain(name: str, entry: Any) -> dict[str, Any]:
    """A span's domain action (its configuration given decoded, as edit_latest_commit wants)."""
    return {"domainMetadata": {"domain": f"usage_analytics.span.{name}", "configuration": entry}}


COMMIT_DAMAGE: Final[dict[str, Callable[[list[Any]], None]]] = {
    "an action of two keys": lambda actions: actions.append({"add": {}, "remove": {}}),
    "an action not an object": lambda actions: actions.append([1]),
    "no state": _drop("domainMetadata"),
    "no txid": _state(lambda c: c.pop("txid")),
    "next_id null": _state(lambda c: c.update(next_id=None)),
    "span not an object": lambda actions: actions.append(_span_domain("0" * 32, ["x"])),
    "span with text days": lambda actions: actions.append(
        _span_domain("0" * 32, {"name": "0" * 32, "first_day": "1", "last_day": 2, "kinds": []})
    ),
    "span under another name": lambda actions: actions.append(
        _span_domain("1" * 32, {"name": "0" * 32, "first_day": 1, "last_day": 2, "kinds": []})
    ),
    "drop of a span not live": lambda actions: actions.append(
        {"domainMetadata": {"domain": "usage_analytics.span." + "0" * 32, "removed": True}}
    ),
    "add without its tag": _action("add", lambda a: a.update(tags={})),
    "add of another path": _action("add", lambda a: a.update(path=_other_name(a["path"]))),
    "add with a negative size": _action("add", lambda a: a.update(size=-1)),
    "entry not an object": _entry(lambda e: e.clear() or e.update(x=1)),
    "entry without stats": _entry(lambda e: e.pop("stats")),
    "stats without timestamp": _entry(lambda e: e["stats"].pop("timestamp")),
    "stats reversed": _entry(lambda e: e["stats"].update(timestamp=e["stats"]["timestamp"][::-1])),
    "schema version 7": _entry(lambda e: e.update(schema_version=7)),
    "rows as text": _entry(lambda e: e.update(rows="10")),
    "odd sidecars": _entry(lambda e: e.update(sidecars="summary")),
    "remove of a file not live": lambda actions: actions.append(
        {"remove": {"path": "date=2026-11-01/" + "0" * 32 + ".parquet"}}
    ),
}


@pytest.mark.parametrize("damage", list(COMMIT_DAMAGE))
def test_a_damaged_commit_is_a_corrupt_dataset_error(plain: Store, damage: str) -> None:
    commit = latest_commit(plain.root)
    edit_latest_commit(plain.root, COMMIT_DAMAGE[damage])
    reopened = Store(plain.root)
    for name, call in _every_call(reopened).items():
        exc = outcome(name, call)
        assert isinstance(exc, CorruptDatasetError), (name, exc)
        assert str(commit) in str(exc), (name, str(exc))


@pytest.mark.parametrize("damage", ["not JSON", "cut short", "binary"])
def test_a_commit_that_is_not_json_is_a_corrupt_dataset_error(plain: Store, damage: str) -> None:
    commit = latest_commit(plain.root)
    data = commit.read_bytes()
    commit.write_bytes(
        {"not JSON": b"{nope\n", "cut short": data[: len(data) // 2], "binary": b"\xff\xfe"}[damage]
    )
    for name, call in _every_call(Store(plain.root)).items():
        exc = outcome(name, call)
        assert isinstance(exc, CorruptDatasetError), (name, exc)
        assert str(commit) in str(exc), (name, str(exc))


def test_a_missing_log_is_a_corrupt_dataset_error(plain: Store) -> None:
    shutil.rmtree(plain.root / "_delta_log")
    for name, call in _every_call(Store(plain.root)).items():
        exc = outcome(name, call)
        assert isinstance(exc, CorruptDatasetError), (name, exc)
        assert "commit log" in str(exc) and "missing" in str(exc), (name, str(exc))


JOURNAL_DAMAGE: Final[dict[str, str]] = {
    "without its keys": "{}",
    "a list": "[]",
    "adds not a list": '{"txid": "%s", "adds": "x", "removes": []}',
    "paths not text": '{"txid": "%s", "adds": [1], "removes": []}',
    "txid not text": '{"txid": 5, "adds": [], "removes": []}',
    "not JSON": "{nope",
    "binary": "\udcff\udcfe",
}


@pytest.mark.parametrize("damage", list(JOURNAL_DAMAGE))
def test_a_damaged_journal_blocks_writes_with_a_message_and_never_reads(
    plain: Store, damage: str
) -> None:
    expected = plain.find_usages()
    journal = plain.root / "_usage_analytics.journal"
    text = JOURNAL_DAMAGE[damage]
    journal.write_bytes(
        (text % ("0" * 32) if "%s" in text else text).encode("utf-8", "surrogateescape")
    )
    reopened = Store(plain.root, lock_timeout=0)
    pd.testing.assert_frame_equal(reopened.find_usages(), expected)
    assert reopened.aggregated_usage("t0", T0, T0 + 3 * DAY)["total_requests"].sum() > 0
    assert reopened.info().rows == len(expected)
    for name, write in {
        "create_usage": lambda: reopened.create_usage(batch(9)),
        "delete_usage": lambda: reopened.delete_usage(T0 + DAY),
        "compact": reopened.compact,
    }.items():
        with pytest.raises(CorruptDatasetError, match="journal") as info:
            write()
        assert str(journal) in str(info.value), name
    pd.testing.assert_frame_equal(reopened.find_usages(), expected)


def test_a_log_linked_to_another_dataset_is_refused(tmp_path: Path, plain: Store) -> None:
    other = Store(tmp_path / "other")
    other.auto_migrate()
    other.create_usage(batch(5))
    before = snapshot_files(other.root)
    log = plain.root / "_delta_log"
    shutil.rmtree(log)
    log.symlink_to(other.root / "_delta_log")
    for name, call in _every_call(Store(plain.root)).items():
        exc = outcome(name, call)
        assert isinstance(exc, CorruptDatasetError), (name, exc)
        assert "symbolic link" in str(exc), (name, exc)
    assert snapshot_files(other.root) == before


def test_a_linked_commit_is_refused(tmp_path: Path, plain: Store) -> None:
    commit = latest_commit(plain.root)
    elsewhere = tmp_path / "commit.json"
    elsewhere.write_bytes(commit.read_bytes())
    commit.unlink()
    commit.symlink_to(elsewhere)
    for name, call in _every_call(Store(plain.root)).items():
        exc = outcome(name, call)
        assert isinstance(exc, CorruptDatasetError), (name, exc)
        assert "symbolic link" in str(exc), (name, exc)


def test_a_manifest_linked_to_another_dataset_is_refused(tmp_path: Path, legacy: Store) -> None:
    plain = legacy
    other = Store(tmp_path / "other")
    other.auto_migrate()
    other.create_usage(batch(5))
    other.create_usage(batch(6))
    to_manifest_format(other.root)
    other_manifest = (other.root / "_usage_analytics.json").read_bytes()
    manifest = plain.root / "_usage_analytics.json"
    manifest.unlink()
    manifest.symlink_to(other.root / "_usage_analytics.json")
    for name, call in _every_call(Store(plain.root)).items():
        exc = outcome(name, call)
        assert isinstance(exc, CorruptDatasetError), (name, exc)
        assert "symbolic link" in str(exc), (name, exc)
    assert manifest.is_symlink()
    assert (other.root / "_usage_analytics.json").read_bytes() == other_manifest


def test_a_linked_journal_is_refused_by_writes(tmp_path: Path, plain: Store) -> None:
    elsewhere = tmp_path / "journal.json"
    elsewhere.write_text('{"txid": "%s", "adds": [], "removes": []}' % ("0" * 32))
    (plain.root / "_usage_analytics.journal").symlink_to(elsewhere)
    with pytest.raises(CorruptDatasetError, match="symbolic link"):
        plain.create_usage(batch(9))
    assert elsewhere.exists()
    assert len(plain.find_usages()) == len(batch(1))


@pytest.mark.parametrize("timeout", [math.nan, -math.inf, -1, "5", None, True, np.nan])
def test_bad_lock_timeouts_are_refused(tmp_path: Path, timeout: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="lock_timeout"):
        Store(tmp_path, lock_timeout=timeout)


def test_an_infinite_lock_timeout_waits_as_long_as_it_takes(plain: Store) -> None:
    store = Store(plain.root, lock_timeout=math.inf)
    assert store.create_usage(batch(4)) == len(batch(4))
    assert store.delete_usage(T0 + DAY) > 0


# ---------------------------------------------------------------------------------------------
# The command line.


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the command in-process: its exit code, stdout and stderr; an exception that is not
    an exit fails the test."""
    with no_hang(" ".join(argv)):
        result = CliRunner().invoke(cli, argv)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = result.exception
        pytest.fail(f"usage-analytics {' '.join(argv)} raised {type(exc).__name__}: {exc}")
    captured = capsys.readouterr()
    return result.exit_code, result.stdout + captured.out, result.stderr + captured.err


def assert_clean_failure(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, _, err = run_cli(argv, capsys)
    assert "Traceback" not in err, (argv, err)
    assert code == 1, (argv, code, err)
    assert len(err.strip().splitlines()) == 1, (argv, err)
    return err


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    files = {
        "missing": tmp_path / "missing.csv",
        "folder": tmp_path / "folder.csv",
        "malformed": tmp_path / "malformed.csv",
        "binary": tmp_path / "binary.csv",
        "empty": tmp_path / "empty.csv",
        "corrupt parquet": tmp_path / "corrupt.parquet",
        "truncated parquet": tmp_path / "truncated.parquet",
        "gzip garbage": tmp_path / "garbage.gz",
    }
    files["folder"].mkdir()
    files["malformed"].write_text('user_id,timestamp\n"u1,5\nu2,6,7,8\n')
    files["binary"].write_bytes(bytes(range(256)) * 8)
    files["empty"].write_bytes(b"")
    files["corrupt parquet"].write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pandas(batch(1)), good)
    files["truncated parquet"].write_bytes(good.read_bytes()[:-40])
    files["gzip garbage"].write_bytes(b"\x1f\x8b" + b"junk" * 10)
    return files


@pytest.mark.parametrize(
    "name",
    [
        "missing",
        "folder",
        "malformed",
        "binary",
        "empty",
        "corrupt parquet",
        "truncated parquet",
        "gzip garbage",
    ],
)
def test_cli_load_of_a_bad_file_is_one_line(
    plain: Store, inputs: dict[str, Path], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = plain.find_usages()
    err = assert_clean_failure(["load", str(plain.root), str(inputs[name])], capsys)
    assert str(inputs[name]) in err
    pd.testing.assert_frame_equal(plain.find_usages(), before)


def test_cli_info_on_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    err = assert_clean_failure(["info", str(path)], capsys)
    assert "not a folder" in err
    err = assert_clean_failure(["init", str(path)], capsys)
    assert "not a folder" in err


# ---------------------------------------------------------------------------------------------
# The corpus: every public method and command, hostile arguments, hostile roots.

HOSTILE_TIMES: Final[list[Any]] = [
    -(2**80),
    2**80,
    2**64,
    -1,
    np.uint64(2**64 - 1),
    np.int64(-(2**63)),
    math.nan,
    math.inf,
    -math.inf,
    1.5,
    "nan",
    "inf",
    "garbage",
    "",
    "2026-13-45",
    "9999-12-31",
    None,
    [],
    {},
    b"2026-11-01",
    True,
    pd.NaT,
    np.datetime64("NaT"),
    dt.datetime.max,
    dt.date.min,
    pd.Timestamp.max,
    complex(1, 1),
]
GOOD_START, GOOD_END = T0, T0 + 3 * DAY
HOSTILE_TENANTS: Final[list[Any]] = [None, 5, b"t0", ["t0"], math.nan, "", "t0\x00", "ü" * 1000]
HOSTILE_BATCHES: Final[list[Any]] = [
    None,
    5,
    "text",
    [5],
    [None],
    {"timestamp": math.nan},
    {"timestamp": 2**80},
    {"timestamp": -1},
    {"timestamp": "2026-11-01", "user_id": 5},
    np.arange(3),
    pd.DataFrame({"timestamp": [math.inf]}),
    pd.DataFrame({"nope": [1]}),
    pd.Series([1, 2]),
]
HOSTILE_LIMITS: Final[list[Any]] = [math.nan, -1, "5", True, 1.5, math.inf, [1]]
HOSTILE_REPORTS: Final[list[dict[str, Any]]] = [
    {"by": None},
    {"by": [None]},
    {"by": {"model_id": 1}},
    {"by": "model_id", "every": 60},
    {"every": "1h", "tz": None},
    {"every": "1h", "tz": ""},
    {"every": "1h", "tz": "../../etc/passwd"},
    {"every": "1h", "tz": "UTC\x00"},
    {"metrics": "latency_ms_p1e3"},
    {"metrics": ["latency_ms_pnan"]},
    {"metrics": ["latency_ms_p-5"]},
    {"metrics": [["requests"]]},
    {"metrics": 5},
    {"where": {"status_code": math.nan}},
    {"where": {"status_code": 2**70}},
    {"where": {"status_code": [200, None]}},
    {"where": {"model_id": Not(None)}},
    {"where": {"model_id": {"nested": 1}}},
    {"where": {None: "x"}},
    {"top": math.inf, "order_by": "requests"},
    {"top": 2**70, "order_by": "requests"},
    {"top": -1, "order_by": "requests"},
    {"top": 1, "order_by": ["requests"]},
    {"prices": "prices.csv", "metrics": ["cost"]},
    {"explain": 1},
]
HOSTILE_SCANS: Final[list[dict[str, Any]]] = [
    {"columns": []},
    {"columns": [None]},
    {"columns": ["timestamp", "timestamp"]},
    {"columns": {"timestamp": 1}},
    {"columns": 5},
    {"where": {"timestamp": 5}},
    {"where": 5},
    {"tenant_id": 5},
    {"tenant_id": ["t0"]},
]


def _every_call(store: Store) -> dict[str, Callable[[], Any]]:
    """One call of each public method of ``store`` with valid arguments."""
    return {
        "auto_migrate": store.auto_migrate,
        "info": store.info,
        "files": store.files,
        "to_duckdb": store.to_duckdb,
        "to_polars": store.to_polars,
        "find_usages": store.find_usages,
        "aggregated_usage": lambda: store.aggregated_usage("t0", GOOD_START, GOOD_END),
        "get_usages_by_groups": lambda: store.get_usages_by_groups("t0", GOOD_START, GOOD_END),
        "model_usage_summaries": lambda: store.model_usage_summaries(
            "t0", GOOD_START, GOOD_END, every="1d"
        ),
        "report": lambda: store.report(
            None, GOOD_START, GOOD_END, by="model_id", every="1d", metrics=["latency_ms_p95"]
        ),
        "scan": lambda: store.scan("t0", GOOD_START, GOOD_END, columns=["timestamp"]),
        "scan_batches": lambda: list(store.scan_batches(columns=["user_id"])),
        "create_usage": lambda: store.create_usage(batch(8)),
        "delete_usage": lambda: store.delete_usage(T0 + DAY),
        "compact": store.compact,
        "history": store.history,
        "set_history_retention": lambda: store.set_history_retention("1d"),
        "vacuum": lambda: store.vacuum(dry_run=True),
    }


HOSTILE_DURATIONS: Final = (
    -1,
    1.5,
    "7 days",
    "-3d",
    "",
    None,
    True,
    math.nan,
    dt.timedelta(seconds=-1),
    dt.timedelta(microseconds=1),
    object(),
)


def _hostile_calls(store: Store) -> dict[str, Callable[[], Any]]:
    calls: dict[str, Callable[[], Any]] = {}
    reports = {
        "aggregated_usage": store.aggregated_usage,
        "get_usages_by_groups": store.get_usages_by_groups,
    }
    for name, report in reports.items():
        for value in HOSTILE_TIMES:
            calls[f"{name}(start={value!r})"] = lambda r=report, v=value: r("t0", v, GOOD_END)
            calls[f"{name}(end={value!r})"] = lambda r=report, v=value: r("t0", GOOD_START, v)
            calls[f"{name}({value!r}, {value!r})"] = lambda r=report, v=value: r("t0", v, v)
        for tenant in HOSTILE_TENANTS:
            calls[f"{name}(tenant={tenant!r})"] = lambda r=report, t=tenant: r(
                t, GOOD_START, GOOD_END
            )
    for value in HOSTILE_TIMES:
        calls[f"report(start={value!r}, every)"] = lambda v=value: store.report(
            None, v, GOOD_END, every="1h", by="status_class"
        )
        calls[f"report(end={value!r}, every)"] = lambda v=value: store.report(
            "t0", GOOD_START, v, every="1d", tz="Asia/Kolkata"
        )
        calls[f"scan(start={value!r})"] = lambda v=value: store.scan(start=v)
        calls[f"scan_batches(end={value!r})"] = lambda v=value: list(store.scan_batches(end=v))
        calls[f"model_usage_summaries(end={value!r})"] = lambda v=value: (
            store.model_usage_summaries("t0", GOOD_START, v)
        )
    for i, kwargs in enumerate(HOSTILE_REPORTS):
        calls[f"report(#{i} {kwargs})"] = lambda k=kwargs: store.report(
            "t0", GOOD_START, GOOD_END, **k
        )
    for i, kwargs in enumerate(HOSTILE_SCANS):
        calls[f"scan(#{i} {kwargs})"] = lambda k=kwargs: store.scan(**k)
        calls[f"scan_batches(#{i} {kwargs})"] = lambda k=kwargs: list(store.scan_batches(**k))
    for value in (None, 5, "1d", {"a": 1}, {"a": (1, 2, 3)}, {"a": ("x", 1)}, {"a": (-1, 1)}):
        calls[f"Prices.from_dict({value!r})"] = lambda v=value: Prices.from_dict(v)
    for value in (None, pd.DataFrame(), pd.DataFrame({"model_id": [1]}), [1, 2]):
        calls[f"Prices.from_frame({value!r})"] = lambda v=value: Prices.from_frame(v)
    for value in (5, "memory", object(), store):
        calls[f"to_duckdb({value!r})"] = lambda v=value: store.to_duckdb(v)
    for value in HOSTILE_DURATIONS:
        calls[f"set_history_retention({value!r})"] = lambda v=value: store.set_history_retention(v)
        calls[f"vacuum(retention={value!r}, dry_run)"] = lambda v=value: store.vacuum(
            retention=v, dry_run=True
        )
    for value in ("yes", 1, None):
        calls[f"vacuum(dry_run={value!r})"] = lambda v=value: store.vacuum(dry_run=v)
    for value in (*HOSTILE_TIMES, -1, 10**6, 3.5, True, object(), [1]):
        calls[f"Store(as_of={value!r}).find_usages"] = lambda v=value: Store(
            store.root, as_of=v
        ).find_usages()
    for value in HOSTILE_TIMES:
        calls[f"delete_usage({value!r})"] = lambda v=value: store.delete_usage(v)
    for limit in HOSTILE_LIMITS:
        calls[f"delete_usage(limit={limit!r})"] = lambda v=limit: store.delete_usage(T0, limit=v)
    for i, value in enumerate(HOSTILE_BATCHES):
        calls[f"create_usage(#{i} {type(value).__name__})"] = lambda v=value: store.create_usage(v)
    calls["create_usage(on_conflict=5)"] = lambda: store.create_usage(batch(8), on_conflict=5)  # type: ignore[arg-type]
    calls["create_usage(on_conflict=[])"] = lambda: store.create_usage(batch(8), on_conflict=[])  # type: ignore[arg-type]
    for record in (Usage, Summary, UsageByGroup):
        for value in (None, 5, pd.DataFrame({"x": [1]}), pd.DataFrame()):
            calls[f"{record.__name__}.from_frame({value!r})"] = lambda c=record, v=value: (
                c.from_frame(v)
            )
    for kwargs in (
        {"n_rows": -5},
        {"n_rows": 1.5},
        {"n_rows": 10, "start": "garbage"},
        {"n_rows": 10, "days": 0},
        {"n_rows": 10, "days": 1.5},
        {"n_rows": 10, "seed": None},
    ):
        calls[f"synthetic.generate({kwargs})"] = lambda k=kwargs: synthetic.generate(**k)
    return calls


def test_hostile_arguments_raise_only_typed_errors(with_spans: Store, tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    shutil.copytree(with_spans.root, pristine, symlinks=True)
    for name, call in _hostile_calls(with_spans).items():
        outcome(name, call)
        if name.startswith(("create_usage", "delete_usage")):  # start each write afresh
            shutil.rmtree(with_spans.root)
            shutil.copytree(pristine, with_spans.root, symlinks=True)


def _hostile_roots(tmp_path: Path, good: Store) -> dict[str, Path]:
    roots = tmp_path / "roots"
    roots.mkdir()
    file_root = roots / "a-file"
    file_root.write_text("not a dataset")
    link_to_file = roots / "link-to-file"
    link_to_file.symlink_to(file_root)
    dangling = roots / "dangling"
    dangling.symlink_to(roots / "nowhere")
    empty = roots / "empty"
    empty.mkdir()
    under_file = file_root / "below"
    not_json = roots / "not-json"
    shutil.copytree(good.root, not_json)
    (not_json / "_usage_analytics.json").write_text("{nope")
    folder_manifest = roots / "folder-manifest"
    folder_manifest.mkdir()
    (folder_manifest / "_usage_analytics.json").mkdir()
    lock_folder = roots / "lock-folder"
    shutil.copytree(good.root, lock_folder)
    lock = lock_folder / "_usage_analytics.lock"
    if lock.exists():
        lock.unlink()
    lock.mkdir()
    missing_file = roots / "missing-file"
    shutil.copytree(good.root, missing_file)
    next((missing_file).glob("date=*/*.parquet")).unlink()
    garbage_file = roots / "garbage-file"
    shutil.copytree(good.root, garbage_file)
    for path in garbage_file.glob("date=*/*.parquet"):
        path.write_bytes(b"PAR1" + b"\x00" * 100 + b"PAR1")
    garbage_rollup = roots / "garbage-rollup"
    shutil.copytree(good.root, garbage_rollup)
    for path in garbage_rollup.glob("_rollups/**/*.rollup"):
        path.write_bytes(b"ARROW1\x00\x00" + b"\xff" * 100)
    garbage_footer = roots / "garbage-footer"
    shutil.copytree(good.root, garbage_footer)
    magic = summary_files.SUMMARY_MAGIC
    for path in garbage_footer.glob("_rollups/**/*.rollup"):
        path.write_bytes(magic + b"\xff" * 100 + (40).to_bytes(8, "little") + magic)
    cut_summary = roots / "cut-summary"
    shutil.copytree(good.root, cut_summary)
    for path in cut_summary.glob("_rollups/**/*.rollup"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return {
        "missing": roots / "missing",
        "a file": file_root,
        "a link to a file": link_to_file,
        "a dangling link": dangling,
        "an empty folder": empty,
        "below a file": under_file,
        "manifest not JSON": not_json,
        "manifest a folder": folder_manifest,
        "lock file a folder": lock_folder,
        "a data file missing": missing_file,
        "garbage data files": garbage_file,
        "garbage summary files": garbage_rollup,
        "summary files with a garbage footer": garbage_footer,
        "summary files cut in half": cut_summary,
    }


@pytest.mark.filterwarnings("ignore:the rows were written:RuntimeWarning")
def test_hostile_roots_raise_only_typed_errors(with_spans: Store, tmp_path: Path) -> None:
    for label, root in _hostile_roots(tmp_path, with_spans).items():
        for name, call in _every_call(Store(root, lock_timeout=0)).items():
            outcome(f"{name} on {label}", call)
    for root in (None, 5, 1.5, b"bytes", ["x"]):
        outcome(f"Store({root!r})", lambda r=root: Store(r))  # type: ignore[arg-type]


def test_hostile_command_lines_exit_cleanly(
    with_spans: Store, tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    roots = _hostile_roots(tmp_path, with_spans)
    times = [str(2**64), str(-(2**70)), "nan", "inf", "garbage", "", "2026-13-45", "1e30"]
    argvs: list[list[str]] = []
    for root in [*roots.values(), with_spans.root]:
        r = str(root)
        argvs += [
            ["info", r],
            ["info", r, "--format", "json"],
            ["init", r],
            ["compact", r],
            ["report", r, "--tenant", "t0"],
            ["report", r, "--all-tenants", "--by", "model_id", "--every", "1d", "--format", "csv"],
            ["summary", r, "--tenant", "t0"],
            ["groups", r, "--tenant", "t1", "--top", "1", "--format", "json"],
            ["models", r, "--tenant", "t0", "--every", "1d"],
            ["tenants", r],
            ["verify", r],
            ["retention", r, "--dry-run"],
            ["delete", r, "--before", str(T0)],
        ]
    r = str(with_spans.root)
    for t in times:
        argvs += [
            ["report", r, "--tenant", "t0", "--start", t],
            ["report", r, "--tenant", "t0", "--end", t],
            ["report", r, "--all-tenants", "--every", "1h", "--start", t],
            ["summary", r, "--tenant", "t0", "--last", "7d", "--end", t],
            ["models", r, "--tenant", "t0", "--end", t],
            ["delete", r, "--before", t],
        ]
    argvs += [
        ["delete", r, "--before", str(T0), "--limit", "-5"],
        ["delete", r, "--before", str(T0), "--limit", "nan"],
        ["report", r, "--tenant", "t0", "--top", "x"],
        ["report", r, "--tenant", "t0", "--top", "-1"],
        ["report", r, "--tenant", "t0", "--where", "status_code=1e3"],
        ["report", r, "--tenant", "t0", "--where", "=x"],
        ["report", r, "--tenant", "t0", "--metrics", ","],
        ["report", r, "--tenant", "t0", "--prices", str(inputs["binary"])],
        ["report", r, "--tenant", "t0", "--prices", str(inputs["folder"])],
        ["report", r, "--tenant", "t0", "--last", "99999999999999999999w"],
        ["report", r, "--tenant", "t0", "--tz", ""],
        ["report", r, "--tenant", "nobody"],
        ["report", r, "--tenant", "t0", "--output", str(tmp_path / "no" / "x.json")],
        ["report", r, "--tenant", "t0", "--output", str(inputs["folder"])],
        ["retention", r, "--older-than", "99999999999999999999w", "--dry-run"],
        ["html", r, "--tenant", "t0", "-o", str(tmp_path / "r.html")],
        ["report", r],
        ["load", r],
        ["nonsense", r],
        [],
        ["sample", str(tmp_path / "s"), "--rows", "-5"],
        ["sample", str(tmp_path / "s2"), "--days", "0"],
        ["sample", str(tmp_path / "s3"), "--start", "garbage"],
        ["sample", str(roots["a file"])],
        *[["load", r, str(path)] for path in inputs.values()],
        ["load", str(roots["missing"]), str(inputs["malformed"])],
    ]
    for argv in argvs:
        code, _, err = run_cli(argv, capsys)
        assert "Traceback" not in err, (argv, err)
        assert code in (0, 1, 2), (argv, code)
        if code == 1:
            assert len(err.strip().splitlines()) == 1, (argv, err)
