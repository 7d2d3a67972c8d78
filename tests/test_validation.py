"""Every schema rule is enforced on the batch as a whole, and a rejected batch writes nothing."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import (
    DAY0,
    INT32_COLUMNS,
    NS_PER_DAY,
    STRING_COLUMNS,
    assert_stored_dtypes,
    list_entries,
    new_store,
    snapshot_files,
    stored_input_columns,
    usage_frame,
    usage_row,
)

from usage_analytics import Store, Usage, UsageAnalyticsError, ValidationError

INT32_MAX = 2**31 - 1
FAILURE_COLUMNS = {"column", "check", "failure_case", "index"}


def _rows(n: int = 3) -> list[dict[str, Any]]:
    return [
        usage_row(
            user_id=f"user{i}",
            tenant="t0",
            api_method="GetFoo",
            status_code=200,
            timestamp=DAY0 + 1_000 * i,
            latency_ms=10 + i,
            prompt_tokens=5,
        )
        for i in range(n)
    ]


def _with(column: str, value: Any, row: int = 1) -> list[dict[str, Any]]:
    rows = _rows()
    rows[row][column] = value
    return rows


def _frame_with(column: str, values: Any) -> pd.DataFrame:
    frame = usage_frame(_rows())
    frame[column] = values
    return frame


def _seeded_store(root: Path) -> Store:
    """A store that already holds rows on two days, so that rejected writes have files to harm."""
    store = new_store(root)
    rows = [
        usage_row(user_id="old", tenant="t0", timestamp=DAY0 - NS_PER_DAY),
        usage_row(user_id="old", tenant="t0", timestamp=DAY0 + 5),
    ]
    assert store.create_usage(rows) == 2
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Shared by the tests of rejected batches, each of which checks that no file changed."""
    return _seeded_store(tmp_path_factory.mktemp("validation") / "usage")


@pytest.fixture
def fresh(tmp_path: Path) -> Store:
    """A store of its own, for tests whose batches are accepted."""
    return _seeded_store(tmp_path / "usage")


def _reject(store: Store, batch: Any) -> ValidationError:
    """Creating ``batch`` raises ValidationError and leaves every file as it was."""
    before = snapshot_files(store.root)
    entries = list_entries(store.root)
    with pytest.raises(ValidationError) as info:
        store.create_usage(batch)
    assert snapshot_files(store.root) == before
    assert list_entries(store.root) == entries
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, UsageAnalyticsError)
    cases = err.failure_cases
    assert isinstance(cases, pd.DataFrame)
    assert set(cases.columns) >= FAILURE_COLUMNS
    assert len(cases) >= 1
    return err


def _assert_reported(err: ValidationError, column: str, check: str) -> None:
    """``column`` failed a check starting with ``check``; the message names the column and
    every check that column failed."""
    cases = err.failure_cases
    mine = cases[cases["column"] == column]
    checks = [str(c) for c in mine["check"]]
    assert any(c.startswith(check) for c in checks), (column, checks)
    message = str(err)
    assert column in message
    for name in set(checks):
        assert name in message, (name, message)


# -- nulls -----------------------------------------------------------------------------------

NULL_CASES: list[tuple[str, Callable[[], Any], str]] = [
    ("None in a string column", lambda: _with("user_id", None), "user_id"),
    ("None in another string column", lambda: _with("api_method", None), "api_method"),
    ("NaN in a string column", lambda: _with("model_id", float("nan")), "model_id"),
    ("pd.NA in a string column", lambda: _with("tenant", pd.NA), "tenant"),
    (
        "NaN in a str frame column",
        lambda: _frame_with("organization", pd.Series(["a", np.nan, "c"], dtype="str")),
        "organization",
    ),
    (
        "None in an object frame column",
        lambda: _frame_with("project", pd.Series(["a", "b", None], dtype=object)),
        "project",
    ),
    ("None in an int column", lambda: _with("latency_ms", None), "latency_ms"),
    ("NaN in an int column", lambda: _with("status_code", float("nan")), "status_code"),
    (
        "NaN in a float frame column",
        lambda: _frame_with("prompt_tokens", [1.0, np.nan, 3.0]),
        "prompt_tokens",
    ),
    (
        "pd.NA in a nullable Int32 frame column",
        lambda: _frame_with("completion_tokens", pd.array([1, pd.NA, 3], dtype="Int32")),
        "completion_tokens",
    ),
    ("None in a runtime column", lambda: _with("runtime_latency_ms", None), "runtime_latency_ms"),
    ("None timestamp", lambda: _with("timestamp", None), "timestamp"),
    ("NaN timestamp", lambda: _with("timestamp", float("nan")), "timestamp"),
    (
        "NaT in a datetime64 frame column",
        lambda: _frame_with(
            "timestamp", pd.to_datetime(["2026-11-01", None, "2026-11-02"]).as_unit("ns")
        ),
        "timestamp",
    ),
    (
        "NaN in a float timestamp frame column",
        lambda: _frame_with("timestamp", [1.0, np.nan, 3.0]),
        "timestamp",
    ),
]


@pytest.mark.parametrize(("label", "make", "column"), NULL_CASES, ids=[c[0] for c in NULL_CASES])
def test_nulls_are_rejected(store: Store, label: str, make: Callable[[], Any], column: str) -> None:
    err = _reject(store, make())
    cases = err.failure_cases
    mine = cases[cases["column"] == column]
    assert len(mine) >= 1
    assert set(cases["column"].dropna()) == {column}
    checks = [str(c) for c in mine["check"]]
    assert "not_nullable" in checks or any(c.startswith("dtype") for c in checks)
    _assert_reported(err, column, checks[0])


@pytest.mark.parametrize("column", [*STRING_COLUMNS, *INT32_COLUMNS, "timestamp"])
def test_none_is_rejected_in_every_column(store: Store, column: str) -> None:
    err = _reject(store, _with(column, None, row=2))
    _assert_reported(err, column, "not_nullable")
    cases = err.failure_cases
    nulls = cases[(cases["column"] == column) & (cases["check"] == "not_nullable")]
    assert nulls["index"].tolist() == [2]


# -- ranges ----------------------------------------------------------------------------------

RANGE_CASES: list[tuple[str, Any, str]] = [
    ("timestamp", -1, "greater_than_or_equal_to(0)"),
    ("timestamp", -(2**62), "greater_than_or_equal_to(0)"),
    ("status_code", 1000, "less_than_or_equal_to(999)"),
    ("status_code", -1, "greater_than_or_equal_to(0)"),
    ("status_code", INT32_MAX + 1, "less_than_or_equal_to(999)"),
    *[(name, -1, "greater_than_or_equal_to(0)") for name in INT32_COLUMNS[1:]],
    *[(name, INT32_MAX + 1, f"less_than_or_equal_to({INT32_MAX})") for name in INT32_COLUMNS[1:]],
    ("prompt_tokens", 2**40, f"less_than_or_equal_to({INT32_MAX})"),
    ("latency_ms", -(2**40), "greater_than_or_equal_to(0)"),
]


@pytest.mark.parametrize(
    ("column", "value", "check"),
    RANGE_CASES,
    ids=[f"{c}={v}" for c, v, _ in RANGE_CASES],
)
def test_out_of_range_values_are_rejected(
    store: Store, column: str, value: Any, check: str
) -> None:
    err = _reject(store, _with(column, value))
    _assert_reported(err, column, check)
    cases = err.failure_cases
    failing = cases[(cases["column"] == column) & (cases["check"] == check)]
    assert failing["index"].tolist() == [1]
    assert set(cases["column"].dropna()) == {column}


@pytest.mark.parametrize("column", INT32_COLUMNS[1:])
def test_int32_bounds_are_accepted(fresh: Store, column: str) -> None:
    rows = _with(column, INT32_MAX)
    rows[2][column] = 0
    assert fresh.create_usage(rows) == 3
    assert fresh.find_usages()[column].tolist()[-3:] == [rows[0][column], INT32_MAX, 0]


def test_status_code_bounds_are_accepted(fresh: Store) -> None:
    rows = _with("status_code", 999)
    rows[0]["status_code"] = 0
    assert fresh.create_usage(rows) == 3
    assert fresh.find_usages()["status_code"].tolist()[-3:] == [0, 999, 200]


def test_empty_strings_and_zero_timestamp_are_accepted(fresh: Store) -> None:
    rows = [usage_row(timestamp=0), usage_row(user_id="", tenant="", timestamp=1)]
    assert fresh.create_usage(rows) == 2
    assert fresh.find_usages()["timestamp"].tolist()[-2:] == [0, 1]


@pytest.mark.parametrize(
    "value",
    [pd.Timestamp("1969-12-31 23:59:59"), dt.datetime(1960, 1, 1, tzinfo=dt.UTC)],
    ids=["Timestamp", "aware datetime"],
)
def test_times_before_the_epoch_are_rejected(store: Store, value: Any) -> None:
    rows = [dict(row, timestamp=pd.Timestamp(row["timestamp"], unit="ns")) for row in _rows()]
    rows[1]["timestamp"] = value
    err = _reject(store, rows)
    _assert_reported(err, "timestamp", "greater_than_or_equal_to(0)")
    cases = err.failure_cases
    assert cases.loc[cases["column"] == "timestamp", "index"].tolist() == [1]


# -- wrong types -----------------------------------------------------------------------------

TYPE_CASES: list[tuple[str, Callable[[], Any], str]] = [
    ("non-integral float in a mapping", lambda: _with("latency_ms", 1.5), "latency_ms"),
    (
        "non-integral float frame column",
        lambda: _frame_with("prompt_tokens", [1.0, 2.5, 3.0]),
        "prompt_tokens",
    ),
    ("non-integral float timestamp", lambda: _with("timestamp", DAY0 + 0.5), "timestamp"),
    ("inf in a mapping", lambda: _with("completion_tokens", float("inf")), "completion_tokens"),
    (
        "inf in a float frame column",
        lambda: _frame_with("latency_ms", [1.0, np.inf, 3.0]),
        "latency_ms",
    ),
    (
        "-inf in a float frame column",
        lambda: _frame_with("time_to_first_token_ms", [1.0, -np.inf, 3.0]),
        "time_to_first_token_ms",
    ),
    (
        "inf timestamp",
        lambda: _frame_with("timestamp", [1.0, np.inf, 3.0]),
        "timestamp",
    ),
    ("int given for a string column", lambda: _with("user_id", 5), "user_id"),
    ("int frame column for a string column", lambda: _frame_with("tenant", [1, 2, 3]), "tenant"),
    ("float given for a string column", lambda: _with("model_id", 1.0), "model_id"),
    ("string given for an int column", lambda: _with("latency_ms", "100"), "latency_ms"),
    (
        "string frame column for an int column",
        lambda: _frame_with("status_code", pd.Series(["200", "200", "404"], dtype="str")),
        "status_code",
    ),
    ("string timestamp as digits", lambda: _with("timestamp", str(DAY0)), "timestamp"),
    ("bool in an int column", lambda: _with("status_code", True), "status_code"),
    ("False in an int column", lambda: _with("prompt_tokens", False), "prompt_tokens"),
    (
        "bool frame column for an int column",
        lambda: _frame_with("latency_ms", np.array([True, False, True])),
        "latency_ms",
    ),
    ("bool timestamp", lambda: _with("timestamp", True), "timestamp"),
    ("bool in a string column", lambda: _with("api_key_id", True), "api_key_id"),
    ("bytes in a string column", lambda: _with("api_method", b"GetFoo"), "api_method"),
    ("int beyond int64 timestamp", lambda: _with("timestamp", 2**64), "timestamp"),
    ("int beyond int64 latency", lambda: _with("latency_ms", 2**70), "latency_ms"),
    ("list in an int column", lambda: _with("latency_ms", [1]), "latency_ms"),
]


@pytest.mark.parametrize(("label", "make", "column"), TYPE_CASES, ids=[c[0] for c in TYPE_CASES])
def test_wrong_types_are_rejected(
    store: Store, label: str, make: Callable[[], Any], column: str
) -> None:
    err = _reject(store, make())
    cases = err.failure_cases
    assert set(cases["column"].dropna()) == {column}
    checks = [str(c) for c in cases.loc[cases["column"] == column, "check"]]
    assert checks
    _assert_reported(err, column, checks[0])


def test_bool_values_are_rejected_in_every_int_column(store: Store) -> None:
    rows = _rows()
    for name in INT32_COLUMNS:
        rows[0][name] = True
    err = _reject(store, rows)
    for name in INT32_COLUMNS:
        _assert_reported(err, name, "dtype")


# -- columns ---------------------------------------------------------------------------------


def test_an_unknown_column_is_rejected_and_named(store: Store) -> None:
    err = _reject(store, _with("colour", "red"))
    cases = err.failure_cases
    assert "colour" in cases["failure_case"].astype(str).tolist()
    assert "column_in_schema" in cases["check"].tolist()
    assert "colour" in str(err)


def test_an_unknown_frame_column_is_rejected_and_named(store: Store) -> None:
    err = _reject(store, _frame_with("latency", [1, 2, 3]))
    assert "latency" in err.failure_cases["failure_case"].astype(str).tolist()
    assert "'latency'" in str(err)


def test_several_unknown_columns_are_all_named(store: Store) -> None:
    rows = _rows()
    rows[0]["colour"] = "red"
    rows[1]["size"] = 3
    rows[2]["weight"] = 1.5
    err = _reject(store, rows)
    named = set(err.failure_cases["failure_case"].astype(str))
    assert {"colour", "size", "weight"} <= named
    message = str(err)
    for name in ("colour", "size", "weight"):
        assert name in message, message


def test_several_unknown_columns_are_all_in_failure_cases(store: Store) -> None:
    rows = _rows()
    rows[0]["colour"] = "red"
    rows[1]["size"] = 3
    err = _reject(store, rows)
    cases = err.failure_cases
    unknown = cases[cases["check"] == "column_in_schema"]
    assert set(unknown["failure_case"].astype(str)) == {"colour", "size"}


def test_id_and_created_at_are_ignored_not_errors(fresh: Store) -> None:
    rows = _rows()
    rows[0]["id"] = "not an id"
    rows[1]["created_at"] = -3
    rows[2]["id"] = None
    assert fresh.create_usage(rows) == 3
    found = fresh.find_usages()
    assert_stored_dtypes(found)
    assert found["id"].is_unique


def test_missing_timestamp_column_is_rejected(store: Store) -> None:
    rows = [{k: v for k, v in row.items() if k != "timestamp"} for row in _rows()]
    err = _reject(store, rows)
    assert "timestamp" in str(err)
    cases = err.failure_cases
    assert "timestamp" in set(cases["column"].astype(str)) | set(cases["failure_case"].astype(str))


def test_missing_timestamp_frame_column_is_rejected(store: Store) -> None:
    frame = usage_frame(_rows()).drop(columns=["timestamp"])
    err = _reject(store, frame)
    assert "timestamp" in str(err)


def test_timestamp_missing_from_one_mapping_is_rejected(store: Store) -> None:
    rows = _rows()
    del rows[2]["timestamp"]
    err = _reject(store, rows)
    _assert_reported(err, "timestamp", "not_nullable")
    cases = err.failure_cases
    assert cases.loc[cases["check"] == "not_nullable", "index"].tolist() == [2]


def test_usage_without_timestamp_cannot_be_built() -> None:
    with pytest.raises(TypeError):
        Usage(user_id="x")  # type: ignore[call-arg]


# -- all at once -----------------------------------------------------------------------------


def test_every_problem_is_reported_at_once(store: Store) -> None:
    rows = _rows(4)
    rows[0]["status_code"] = 1000
    rows[1]["latency_ms"] = -1
    rows[1]["prompt_tokens"] = INT32_MAX + 1
    rows[2]["user_id"] = None
    rows[3]["timestamp"] = -5
    rows[3]["surprise"] = 1
    err = _reject(store, rows)
    cases = err.failure_cases
    expected = {
        ("status_code", "less_than_or_equal_to(999)", 0),
        ("latency_ms", "greater_than_or_equal_to(0)", 1),
        ("prompt_tokens", f"less_than_or_equal_to({INT32_MAX})", 1),
        ("user_id", "not_nullable", 2),
        ("timestamp", "greater_than_or_equal_to(0)", 3),
    }
    found = {
        (str(c), str(k), int(i))
        for c, k, i in cases[["column", "check", "index"]].itertuples(index=False)
        if pd.notna(i)
    }
    assert expected <= found
    for column, check, _ in expected:
        _assert_reported(err, column, check)
    assert "surprise" in str(err)
    assert "surprise" in cases["failure_case"].astype(str).tolist()


def test_every_failing_row_is_reported(store: Store) -> None:
    frame = usage_frame(_rows(6))
    frame["latency_ms"] = pd.Series([1, -1, 2, -2, 3, -3], dtype=np.int64)
    err = _reject(store, frame)
    cases = err.failure_cases
    failing = cases[cases["column"] == "latency_ms"]
    assert sorted(failing["index"].tolist()) == [1, 3, 5]
    assert sorted(failing["failure_case"].tolist()) == [-3, -2, -1]


def test_a_single_bad_row_rejects_the_whole_batch(store: Store) -> None:
    rows = [usage_row(user_id=f"ok{i}", timestamp=DAY0 + i * NS_PER_DAY) for i in range(5)]
    rows[4]["status_code"] = 1234
    _reject(store, rows)
    assert not (store.root / "date=2026-11-03").exists()


def test_validation_error_on_an_empty_store_writes_nothing(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    _reject(store, _with("status_code", -1))
    assert store.find_usages().empty
    assert [name for name in list_entries(store.root) if name.startswith("date=")] == []


# -- values that are valid ---------------------------------------------------------------------


def test_integral_float_columns_from_csv_are_accepted(fresh: Store) -> None:
    text = (
        "user_id,tenant,status_code,timestamp,latency_ms,prompt_tokens,completion_tokens\n"
        "c1,t0,200.0,1024,100.0,7.0,0\n"
        "c2,t0,404.0,2048,2147483647.0,0.0,1.0\n"
    )
    frame = pd.read_csv(io.StringIO(text))
    assert frame["latency_ms"].dtype == np.float64
    assert frame["status_code"].dtype == np.float64
    assert fresh.create_usage(frame) == 2
    found = fresh.find_usages()
    assert_stored_dtypes(found)
    new = stored_input_columns(found).iloc[-2:]
    assert new["status_code"].tolist() == [200, 404]
    assert new["latency_ms"].tolist() == [100, INT32_MAX]
    assert new["prompt_tokens"].tolist() == [7, 0]
    assert new["completion_tokens"].tolist() == [0, 1]
    assert new["timestamp"].tolist() == [1024, 2048]


def test_integral_float_timestamp_column_is_accepted(fresh: Store) -> None:
    frame = usage_frame(_rows())
    stamps = [2**40, 2**40 + 1000, 2**53]
    frame["timestamp"] = np.array(stamps, dtype=np.float64)
    assert fresh.create_usage(frame) == 3
    assert fresh.find_usages()["timestamp"].tolist()[-3:] == stamps


def test_other_integer_and_string_dtypes_are_accepted(fresh: Store) -> None:
    frame = usage_frame(_rows())
    frame["latency_ms"] = frame["latency_ms"].astype(np.int16)
    frame["status_code"] = frame["status_code"].astype(np.uint16)
    frame["prompt_tokens"] = frame["prompt_tokens"].astype("Int64")
    frame["tenant"] = frame["tenant"].astype("category")
    frame["user_id"] = frame["user_id"].astype(object)
    assert fresh.create_usage(frame) == 3
    found = fresh.find_usages()
    assert_stored_dtypes(found)
    new = stored_input_columns(found).iloc[-3:].reset_index(drop=True)
    pd.testing.assert_frame_equal(new, usage_frame(_rows()))


def test_int32_columns_are_taken_as_they_are_and_still_checked(store: Store, fresh: Store) -> None:
    frame = usage_frame(_rows()).astype({c: np.int32 for c in INT32_COLUMNS})
    assert fresh.create_usage(frame) == 3
    stored = fresh.find_usages()
    assert stored["latency_ms"].tolist()[-3:] == [10, 11, 12]
    assert_stored_dtypes(stored)
    bad = frame.copy()
    bad.loc[1, "latency_ms"] = -1  # a bound the int32 dtype does not enforce
    bad.loc[2, "status_code"] = 1000
    err = _reject(store, bad)
    _assert_reported(err, "latency_ms", "greater_than_or_equal_to(0)")
    _assert_reported(err, "status_code", "less_than_or_equal_to(999)")
