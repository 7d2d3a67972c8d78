"""Hostile input: invalid batches, odd strings, stray entries, links and edited manifests."""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    INT32_COLUMNS,
    STRING_COLUMNS,
    dataset_state,
    edit_latest_commit,
    is_bookkeeping,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usage_analytics import (
    CorruptDatasetError,
    DuplicateUsageError,
    Store,
    Usage,
    UsageAnalyticsError,
    ValidationError,
)

INT32_MAX: Final = 2**31 - 1
SEC: Final = 10**9
DAY: Final = 86_400 * SEC
D0: Final = int(pd.Timestamp("2026-11-01", tz="UTC").value)
MB: Final = 1 << 20
BASE: Final = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (links not followed) with its bytes, by relative path."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            out[rel] = (
                b"->" + os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
            )
    return out


def _row(i: int, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "user_id": f"user-{i % 3}",
        "tenant": "acme",
        "api_method": f"m{i % 2}",
        "api_key_id": "k",
        "model_id": "gpt",
        "status_code": 200 if i % 3 else 500,
        "timestamp": D0 + (i % 3) * DAY + i * SEC,
        "latency_ms": 10 * i,
        "prompt_tokens": i,
    }
    row.update(overrides)
    return row


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    try:
        return pd.DataFrame(rows)
    except (UnicodeEncodeError, TypeError, ValueError):
        return pd.DataFrame(rows, dtype=object)


def _as_input(rows: list[dict[str, Any]], form: str) -> Any:
    if form == "frame":
        return _frame(rows)
    if form == "usages":
        return [Usage(**row) for row in rows]
    return rows


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A store holding ``_row(0..8)``; the tests that use it must leave it unchanged."""
    store = Store(tmp_path_factory.mktemp("hostile") / "ds")
    store.auto_migrate()
    store.create_usage([_row(i) for i in range(9)])
    store.create_usage([_row(i) for i in range(9, 12)])
    return store


@pytest.fixture
def unchanged(populated: Store) -> Iterator[Store]:
    """``populated``, with a check that every file under its root is byte-identical after."""
    before = _tree(populated.root)
    yield populated
    assert _tree(populated.root) == before


# ---------------------------------------------------------------------------------------------
# Invalid batches.

BAD_INTS: Final[list[Any]] = [
    None,
    math.nan,
    np.nan,
    pd.NA,
    pd.NaT,
    math.inf,
    -math.inf,
    -1,
    -(2**63),
    2**31,
    2**63,
    2**64,
    True,
    False,
    np.bool_(True),
    "5",
    "",
    1.5,
    b"1",
    [1],
    {},
    decimal.Decimal(1),
    1 + 0j,
    np.int64(-5),
    np.uint64(2**63),
    dt.datetime(2026, 1, 1),
    object(),
]
BAD_TIMESTAMPS: Final[list[Any]] = [
    None,
    math.nan,
    pd.NA,
    pd.NaT,
    -1,
    -(2**63),
    2**63,
    2**64,
    True,
    "abc",
    b"1",
    1.5,
    math.inf,
    dt.datetime(1969, 12, 31, 23, 59),
    [D0],
]
BAD_STRINGS: Final[list[Any]] = [
    None,
    math.nan,
    pd.NA,
    5,
    0,
    1.5,
    True,
    b"x",
    "\ud800",
    "a\udfffb",
    "x" * MB + "\ud83d",
    ["x"],
    ("x",),
    object(),
    dt.datetime(2026, 1, 1),
]
UNKNOWN_COLUMNS: Final = ["bogus", "Tenant", "user id", "", "timestamp_ns", "😀"]


def _explicit_cases() -> list[Any]:
    cases = []
    for value in BAD_INTS:
        cases.append(pytest.param("latency_ms", value, id=f"latency_ms={value!r:.20}"))
    for value in [1000, 1_000_000, INT32_MAX]:
        cases.append(pytest.param("status_code", value, id=f"status_code={value}"))
    for value in BAD_TIMESTAMPS:
        cases.append(pytest.param("timestamp", value, id=f"timestamp={value!r:.20}"))
    for value in BAD_STRINGS:
        cases.append(pytest.param("user_id", value, id=f"user_id={value!r:.20}"))
    return cases


@pytest.mark.parametrize("form", ["dicts", "frame"])
@pytest.mark.parametrize(("column", "value"), _explicit_cases())
def test_invalid_value_is_rejected(unchanged: Store, column: str, value: Any, form: str) -> None:
    rows = [_row(20), _row(21, **{column: value}), _row(22)]
    with pytest.raises(ValidationError) as excinfo:
        unchanged.create_usage(_as_input(rows, form))
    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, UsageAnalyticsError)
    assert column in str(excinfo.value)


@pytest.mark.parametrize("form", ["dicts", "frame"])
@pytest.mark.parametrize("name", UNKNOWN_COLUMNS)
def test_unknown_column_is_rejected(unchanged: Store, name: str, form: str) -> None:
    rows = [_row(20), _row(21, **{name: 1})]
    with pytest.raises(ValidationError, match="unknown column"):
        unchanged.create_usage(_as_input(rows, form))


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"user_id": ["a", "b"], "timestamp": [D0, D0], "latency_ms": [1.0, np.nan]}),
        pd.DataFrame({"user_id": ["a", "b"], "timestamp": [D0, D0], "latency_ms": [1.0, 2.5]}),
        pd.DataFrame({"user_id": ["a", "b"], "timestamp": [D0, D0], "latency_ms": [True, False]}),
        pd.DataFrame({"user_id": ["a", "b"], "timestamp": [1.0, 2.5]}),
        pd.DataFrame({"user_id": pd.array(["a", pd.NA], dtype="string"), "timestamp": [D0, D0]}),
        pd.DataFrame(
            {"user_id": ["a", "b"], "timestamp": [D0, D0], "latency_ms": pd.array([1, None])}
        ),
        pd.DataFrame(
            {
                "user_id": ["a", "b"],
                "timestamp": [D0, D0 + 1],
                "latency_ms": np.array([1, 2**32], dtype=np.uint64),
            }
        ),
        pd.DataFrame(
            {"user_id": ["a", "b"], "timestamp": pd.to_datetime(["1960-01-01", "2026-11-01"])}
        ),
        pd.DataFrame({"user_id": ["a", "b"], "timestamp": pd.to_datetime([None, "2026-11-01"])}),
        pd.DataFrame(
            {"user_id": pd.Categorical(["a", None]), "timestamp": [D0, D0 + 1]},
        ),
        pd.DataFrame({"user_id": ["a", "b"]}),
    ],
    ids=[
        "float-nan",
        "float-fraction",
        "bool-column",
        "fractional-timestamp",
        "string-NA",
        "Int64-NA",
        "uint64-over-int32",
        "datetime-before-epoch",
        "datetime-NaT",
        "categorical-None",
        "missing-timestamp",
    ],
)
def test_invalid_frame_is_rejected(unchanged: Store, frame: pd.DataFrame) -> None:
    with pytest.raises(ValidationError):
        unchanged.create_usage(frame)


@pytest.mark.parametrize("on_conflict", ["error", "ignore"])
def test_duplicate_keys_are_rejected_or_skipped(unchanged: Store, on_conflict: str) -> None:
    stored = _row(4, latency_ms=999_999)
    repeated = [_row(30), _row(30, latency_ms=5)]
    if on_conflict == "error":
        for batch in ([stored], [_row(31), stored], repeated):
            with pytest.raises(DuplicateUsageError) as excinfo:
                unchanged.create_usage(batch)
            assert isinstance(excinfo.value, ValueError)
    else:
        assert unchanged.create_usage([stored], on_conflict="ignore") == 0
        with pytest.raises(DuplicateUsageError):
            unchanged.create_usage([*repeated, _row(4)])


def _surrogate_text() -> st.SearchStrategy[str]:
    lone = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
    return st.tuples(st.text(max_size=5), lone, st.text(max_size=5)).map("".join)


bad_int_value = st.one_of(
    st.sampled_from(BAD_INTS),
    st.integers(max_value=-1),
    st.integers(min_value=INT32_MAX + 1),
    st.floats().filter(lambda f: not (math.isfinite(f) and f == int(f))),
    st.booleans(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.integers(0, 9), max_size=2),
)
bad_timestamp_value = st.one_of(
    st.sampled_from(BAD_TIMESTAMPS),
    st.integers(max_value=-1),
    st.integers(min_value=2**63),
    st.floats().filter(lambda f: not (math.isfinite(f) and f == int(f))),
    st.booleans(),
    st.text(max_size=3),
)
bad_string_value = st.one_of(
    st.sampled_from(BAD_STRINGS),
    _surrogate_text(),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.binary(max_size=3),
    st.none(),
)


@st.composite
def invalid_batches(draw: st.DrawFn) -> tuple[list[dict[str, Any]], str]:
    n = draw(st.integers(1, 4))
    rows = [_row(40 + i, tenant=draw(st.text(max_size=4))) for i in range(n)]
    kind = draw(st.sampled_from(["int", "status", "timestamp", "string", "unknown"]))
    target = draw(st.integers(0, n - 1))
    if kind == "int":
        column, value = draw(st.sampled_from(INT32_COLUMNS)), draw(bad_int_value)
    elif kind == "status":
        column, value = "status_code", draw(st.integers(min_value=1000))
    elif kind == "timestamp":
        column, value = "timestamp", draw(bad_timestamp_value)
    elif kind == "string":
        column, value = draw(st.sampled_from(STRING_COLUMNS)), draw(bad_string_value)
    else:
        column, value = draw(st.sampled_from(UNKNOWN_COLUMNS)), draw(st.integers(0, 9))
    rows[target] = {**rows[target], column: value}
    return rows, column


def _check_invalid(store: Store, batch: tuple[list[dict[str, Any]], str], form: str) -> None:
    rows, column = batch
    if column in UNKNOWN_COLUMNS and form == "usages":
        form = "dicts"  # Usage objects cannot carry an unknown field
    before = _tree(store.root)
    with pytest.raises(ValidationError) as excinfo:
        store.create_usage(_as_input(rows, form))
    assert repr(column) in str(excinfo.value)
    assert _tree(store.root) == before


@settings(BASE, max_examples=60)
@given(batch=invalid_batches(), form=st.sampled_from(["dicts", "frame", "usages"]))
def test_random_invalid_batches_change_nothing(
    populated: Store, batch: tuple[list[dict[str, Any]], str], form: str
) -> None:
    _check_invalid(populated, batch, form)


@pytest.mark.slow
@settings(BASE, max_examples=1000)
@given(batch=invalid_batches(), form=st.sampled_from(["dicts", "frame", "usages"]))
def test_random_invalid_batches_change_nothing_many(
    populated: Store, batch: tuple[list[dict[str, Any]], str], form: str
) -> None:
    _check_invalid(populated, batch, form)


def test_populated_store_kept_its_rows(populated: Store) -> None:
    df = populated.find_usages()
    assert len(df) == 12
    assert df["latency_ms"].tolist() == [10 * i for i in range(12)]


# ---------------------------------------------------------------------------------------------
# Odd but valid strings.

ODD_VALID: Final = [
    "\x00",
    "a\x00b\x00",
    "😀",
    "👩\u200d👩\u200d👧",
    "\u202eevil\u202c",
    "مرحبا",
    "e\u0301",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "\t\r\n",
    " ",
    "",
    "x" * MB,
    "😀" * (MB // 4),
]


@pytest.mark.parametrize("form", ["dicts", "frame"])
def test_odd_valid_strings_round_trip(tmp_path: Path, form: str) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    rows = []
    for i, text in enumerate(ODD_VALID):
        overrides: dict[str, Any] = dict.fromkeys(STRING_COLUMNS, text)
        rows.append(_row(i, **overrides, timestamp=D0 + i))
    assert store.create_usage(_as_input(rows, form)) == len(rows)
    df = store.find_usages()
    for column in STRING_COLUMNS:
        assert df[column].tolist() == ODD_VALID, column
    if form == "frame":
        return
    for i, text in enumerate(ODD_VALID):
        summary = store.aggregated_usage(text, D0, D0 + DAY)
        assert summary["api_method"].tolist() == [text]
        assert summary["total_requests"].tolist() == [1]
        assert summary["average_latency"].tolist() == [10.0 * i]
        groups = store.get_usages_by_groups(text, D0, D0 + DAY)
        assert groups[["api_key_id", "user_id", "model_id"]].values.tolist() == [[text] * 3]


# ---------------------------------------------------------------------------------------------
# Stray entries, links and edited manifests.


def _copy_of_live_file(store: Store) -> bytes:
    data: bytes = store.files()[0].read_bytes()
    return data


def _hex() -> str:
    return uuid.uuid4().hex


def _stray_setup(tmp_path: Path) -> tuple[Store, Path]:
    """A store with rows on 11-01 and 11-03, and every kind of stray entry around it."""
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage([_row(i, timestamp=D0 + i * SEC) for i in range(5)])
    store.create_usage([_row(i, timestamp=D0 + 2 * DAY + i * SEC) for i in range(5, 9)])
    root = store.root
    live = _copy_of_live_file(store)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / f"{_hex()}.parquet").write_bytes(live)
    (outside / "keep.txt").write_text("outside the root")
    (root / "date=2026-11-02").symlink_to(outside, target_is_directory=True)
    dotdot = root / "date=.." / "x"
    dotdot.mkdir(parents=True)
    (dotdot / f"{_hex()}.parquet").write_bytes(live)
    bad_date = root / "date=2026-13-45"
    bad_date.mkdir()
    (bad_date / f"{_hex()}.parquet").write_bytes(live)
    (root / "date=2026-11-01" / "notes.txt").write_text("not parquet")
    pq.write_table(pa.table({"a": [1, 2, 3]}), root / "date=2026-11-01" / f"{_hex()}.parquet")
    (root / "date=2026-11-03" / f".{_hex()}.parquet.tmp").write_bytes(live[:100])
    (root / "foo.parquet").write_bytes(live)
    return store, outside


def _strays(root: Path, live: set[str]) -> dict[str, bytes]:
    return {k: v for k, v in _tree(root).items() if k not in live and not is_bookkeeping(k)}


def _live(store: Store) -> set[str]:
    """The data files of the latest commit and their rollups."""
    return set(store._ds.live_paths())


def _reports(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        store.aggregated_usage("acme", 0, D0 + 10 * DAY),
        store.get_usages_by_groups("acme", 0, D0 + 10 * DAY),
    )


def test_stray_entries_are_skipped_and_left_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "plain")
    store.auto_migrate()
    store.create_usage([_row(i, timestamp=D0 + i * SEC) for i in range(5)])
    store.create_usage([_row(i, timestamp=D0 + 2 * DAY + i * SEC) for i in range(5, 9)])
    clean_rows = store.find_usages().drop(columns="created_at")
    clean_reports = _reports(store)

    store, outside = _stray_setup(tmp_path)
    outside_before = _tree(outside)
    strays_before = _strays(store.root, _live(store))
    assert len(strays_before) == 7
    pd.testing.assert_frame_equal(store.find_usages().drop(columns="created_at"), clean_rows)
    for got, want in zip(_reports(store), clean_reports, strict=True):
        pd.testing.assert_frame_equal(got, want)
    assert all(p.resolve().is_relative_to(store.root.resolve()) for p in store.files())
    assert len(store.files()) == 2

    assert store.create_usage(_row(20, timestamp=D0 + 100 * SEC)) == 1
    assert store.create_usage(_row(21, timestamp=D0 + 3 * DAY)) == 1
    assert store.compact() == 1
    assert store.delete_usage(D0 + 2 * SEC) == 2
    df = store.find_usages()
    assert sorted(df["timestamp"].tolist()) == sorted(
        [D0 + i * SEC for i in range(2, 5)]
        + [D0 + 2 * DAY + i * SEC for i in range(5, 9)]
        + [D0 + 100 * SEC, D0 + 3 * DAY]
    )
    assert store.delete_usage(D0 + 10 * DAY) == 9
    assert len(store.find_usages()) == 0
    assert store.files() == []
    assert _strays(store.root, set()) == strays_before
    assert _tree(outside) == outside_before


def test_write_into_a_linked_partition_is_refused(tmp_path: Path) -> None:
    store, outside = _stray_setup(tmp_path)
    outside_before = _tree(outside)
    root_before = _tree(store.root)
    rows = [_row(30, timestamp=D0 + 50 * SEC), _row(31, timestamp=D0 + DAY + 50 * SEC)]
    with pytest.raises(CorruptDatasetError) as excinfo:
        store.create_usage(rows)
    assert isinstance(excinfo.value, UsageAnalyticsError)
    assert _tree(store.root) == root_before
    assert _tree(outside) == outside_before
    assert len(store.find_usages()) == 9
    assert store.create_usage(rows[0]) == 1


def _partition_is_a_file(tmp_path: Path) -> Store:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage(_row(1))
    (store.root / "date=2026-11-05").write_text("a file, not a folder")
    return store


REFUSED_ROWS: Final = [_row(2, timestamp=D0 + 1), _row(3, timestamp=D0 + 4 * DAY)]


def test_write_into_a_partition_that_is_a_file_is_refused(tmp_path: Path) -> None:
    store = _partition_is_a_file(tmp_path)
    rows = store.find_usages()
    with pytest.raises(CorruptDatasetError, match="not a folder"):
        store.create_usage(REFUSED_ROWS)
    pd.testing.assert_frame_equal(store.find_usages(), rows)
    assert (store.root / "date=2026-11-05").read_text() == "a file, not a folder"
    assert [p.name for p in store.root.glob("date=*/*")] == [store.files()[0].name]


def test_refused_write_into_a_file_partition_leaves_no_journal(tmp_path: Path) -> None:
    store = _partition_is_a_file(tmp_path)
    before = _tree(store.root)
    with pytest.raises(CorruptDatasetError):
        store.create_usage(REFUSED_ROWS)
    assert _tree(store.root) == before
    assert store.create_usage(_row(4, timestamp=D0 + 5)) == 1


def _link_partition_outside(tmp_path: Path) -> tuple[Store, Path]:
    """A store whose 11-02 partition folder was moved out of the root and linked back."""
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage(
        [
            _row(1, timestamp=D0 + SEC),
            _row(2, timestamp=D0 + DAY + SEC),
            _row(3, timestamp=D0 + DAY + 5 * SEC),
        ]
    )
    outside = tmp_path / "outside"
    shutil.move(store.root / "date=2026-11-02", outside)
    (store.root / "date=2026-11-02").symlink_to(outside, target_is_directory=True)
    return store, outside


def test_reading_a_linked_partition_is_refused(tmp_path: Path) -> None:
    store, outside = _link_partition_outside(tmp_path)
    before = _tree(outside)
    with pytest.raises(CorruptDatasetError, match="symbolic link"):
        store.find_usages()
    with pytest.raises(CorruptDatasetError):
        store.aggregated_usage("acme", 0, D0 + 10 * DAY)
    with pytest.raises(CorruptDatasetError):
        store.delete_usage(D0 + DAY + 2 * SEC)
    assert _tree(outside) == before


def test_delete_never_unlinks_through_a_linked_partition(tmp_path: Path) -> None:
    store, outside = _link_partition_outside(tmp_path)
    before = _tree(outside)
    with contextlib.suppress(CorruptDatasetError):
        store.delete_usage(D0 + 5 * DAY)
    assert _tree(outside) == before


def test_linked_data_file_is_not_read(tmp_path: Path) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage(_row(1))
    (path,) = store.files()
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(CorruptDatasetError, match="symbolic link"):
        store.find_usages()
    assert outside.exists()


def test_linked_lock_file_is_not_followed(tmp_path: Path) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage(_row(1))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = store.root / "_usage_analytics.lock"
    lock.unlink()
    lock.symlink_to(victim)
    with pytest.raises(CorruptDatasetError, match="lock file"):
        store.create_usage(_row(2))
    assert victim.read_text() == "precious"
    assert len(store.find_usages()) == 1


HOSTILE_PATHS: Final = [
    "../../etc/passwd",
    "/etc/passwd",
    "date=2026-11-01/../../x.parquet",
    "date=2026-11-01/../../outside/{hex}.parquet",
    "date=2026-11-01/../date=2026-11-01/{hex}.parquet",
    "date=2026-11-01/./{hex}.parquet",
    "date=2026-11-01//{hex}.parquet",
    "date=2026-13-45/{hex}.parquet",
    "date=..%2F/{hex}.parquet",
    "date=2026-11-01/notes.txt",
    "date=2026-11-01/{HEX}.parquet",
    "date=2026-11-01\\..\\..\\{hex}.parquet",
    "",
]


def _edit_manifest(store: Store, path: str) -> None:
    """Name ``path`` as the first file of the latest commit."""

    def edit(actions: list[dict[str, Any]]) -> None:
        add = next(a["add"] for a in actions if "add" in a)
        add["path"] = add["tags"]["usage_analytics"]["path"] = path

    edit_latest_commit(store.root, edit)


@pytest.mark.parametrize("template", HOSTILE_PATHS)
def test_edited_manifest_with_a_foreign_path_is_refused(tmp_path: Path, template: str) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage([_row(1, timestamp=D0 + SEC), _row(2, timestamp=D0 + 2 * SEC)])
    outside = tmp_path / "outside"
    outside.mkdir()
    name = _hex()
    (outside / f"{name}.parquet").write_bytes(_copy_of_live_file(store))
    _edit_manifest(store, template.format(hex=name, HEX=name.upper()))
    root_before, outside_before = _tree(store.root), _tree(outside)
    reopened = Store(store.root)
    with pytest.raises(CorruptDatasetError):
        reopened.files()
    with pytest.raises(CorruptDatasetError):
        reopened.find_usages()
    with pytest.raises(CorruptDatasetError):
        reopened.aggregated_usage("acme", 0, D0 + DAY)
    with pytest.raises(CorruptDatasetError):
        reopened.auto_migrate()
    with pytest.raises(CorruptDatasetError):
        reopened.create_usage(_row(5, timestamp=D0 + 3 * DAY))
    with pytest.raises(CorruptDatasetError):
        reopened.delete_usage(D0 + 10 * DAY)
    with pytest.raises(CorruptDatasetError):
        reopened.compact()
    assert _tree(store.root) == root_before
    assert _tree(outside) == outside_before


def test_manifest_path_with_trailing_newline_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage(_row(1))
    (path,) = store.files()
    _edit_manifest(store, path.relative_to(store.root).as_posix() + "\n")
    with pytest.raises(CorruptDatasetError):
        Store(store.root).files()


@pytest.mark.parametrize("committed", [True, False])
def test_journal_with_a_foreign_path_is_refused(tmp_path: Path, committed: bool) -> None:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    store.create_usage(_row(1))
    victim = tmp_path / "victim.parquet"
    victim.write_bytes(b"precious")
    txid = dataset_state(store.root)["txid"] if committed else _hex()
    journal = {"txid": txid, "adds": ["../victim.parquet"], "removes": ["../victim.parquet"]}
    (store.root / "_usage_analytics.journal").write_text(json.dumps(journal))
    with pytest.raises(CorruptDatasetError):
        store.create_usage(_row(2))
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("name", ["a b", "ü😀", "x#y", "p%20q", "q?r", "[ab]", "*", "file:x"])
def test_odd_root_names_work(tmp_path: Path, name: str) -> None:
    store = Store(tmp_path / name / "ds")
    store.auto_migrate()
    assert store.create_usage([_row(i) for i in range(4)]) == 4
    assert store.create_usage([_row(i) for i in range(4, 6)]) == 2
    assert store.find_usages()["latency_ms"].tolist() == [10 * i for i in range(6)]
    assert store.aggregated_usage("acme", 0, D0 + 10 * DAY)["total_requests"].sum() == 6
    assert store.delete_usage(D0 + DAY) == 2
    assert store.compact() == 2
    assert len(store.find_usages()) == 4
    assert all(p.is_relative_to(store.root) for p in store.files())
