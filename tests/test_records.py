"""The record types: Usage, Summary and UsageByGroup, and their from_frame constructors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import (
    DAY0,
    EXPECTED_COLUMNS,
    GROUP_COLUMNS,
    INPUT_COLUMNS,
    INT32_COLUMNS,
    STRING_COLUMNS,
    SUMMARY_COLUMNS,
    new_store,
    random_usage_frame,
    stored_input_columns,
)

from usage_analytics import Summary, Usage, UsageByGroup


def test_usage_defaults() -> None:
    usage = Usage(timestamp=123)
    assert usage.timestamp == 123
    assert usage.id is None
    assert usage.created_at is None
    for name in STRING_COLUMNS:
        assert getattr(usage, name) == "", name
    for name in INT32_COLUMNS:
        assert getattr(usage, name) == 0, name


def test_usage_has_every_stored_field() -> None:
    names = {f.name for f in dataclasses.fields(Usage)}
    assert names == set(EXPECTED_COLUMNS)


def test_usage_timestamp_is_required() -> None:
    with pytest.raises(TypeError):
        Usage()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Usage(user_id="u", latency_ms=3)  # type: ignore[call-arg]


def test_usage_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        Usage(None, None, "u", timestamp=1)  # type: ignore[misc]


def test_usage_equality_and_replace() -> None:
    a = Usage(user_id="u", timestamp=5, latency_ms=7)
    assert a == Usage(user_id="u", timestamp=5, latency_ms=7)
    assert a != Usage(user_id="u", timestamp=6, latency_ms=7)
    b = dataclasses.replace(a, model_id="m")
    assert (b.model_id, b.latency_ms, a.model_id) == ("m", 7, "")


def test_summary_and_usage_by_group_fields() -> None:
    assert tuple(f.name for f in dataclasses.fields(Summary)) == SUMMARY_COLUMNS
    assert tuple(f.name for f in dataclasses.fields(UsageByGroup)) == GROUP_COLUMNS


def test_summary_from_frame() -> None:
    frame = pd.DataFrame(
        {
            "api_method": pd.Series(["GetFoo", "UpdateFoo"], dtype="str"),
            "total_requests": np.array([3, 2], dtype=np.int64),
            "success_requests": np.array([2, 2], dtype=np.int64),
            "failure_requests": np.array([1, 0], dtype=np.int64),
            "average_latency": np.array([150.0, 200.0]),
        }
    )
    assert Summary.from_frame(frame) == [
        Summary(
            api_method="GetFoo",
            total_requests=3,
            success_requests=2,
            failure_requests=1,
            average_latency=150.0,
        ),
        Summary(
            api_method="UpdateFoo",
            total_requests=2,
            success_requests=2,
            failure_requests=0,
            average_latency=200.0,
        ),
    ]


def test_usage_by_group_from_frame() -> None:
    frame = pd.DataFrame(
        {
            "api_key_id": ["k1", "k2"],
            "user_id": ["u1", "u1"],
            "model_id": ["m", ""],
            "total_requests": np.array([4, 1], dtype=np.int64),
            "total_prompt_tokens": np.array([40, 0], dtype=np.int64),
            "total_completion_tokens": np.array([8, 2], dtype=np.int64),
            "average_latency": [12.5, 3.0],
            "average_time_to_first_token": [1.25, 0.0],
        }
    )
    records = UsageByGroup.from_frame(frame)
    assert records == [
        UsageByGroup(
            api_key_id="k1",
            user_id="u1",
            model_id="m",
            total_requests=4,
            total_prompt_tokens=40,
            total_completion_tokens=8,
            average_latency=12.5,
            average_time_to_first_token=1.25,
        ),
        UsageByGroup(
            api_key_id="k2",
            user_id="u1",
            model_id="",
            total_requests=1,
            total_prompt_tokens=0,
            total_completion_tokens=2,
            average_latency=3.0,
            average_time_to_first_token=0.0,
        ),
    ]


def test_from_frame_of_an_empty_frame() -> None:
    assert Summary.from_frame(pd.DataFrame({c: [] for c in SUMMARY_COLUMNS})) == []
    assert UsageByGroup.from_frame(pd.DataFrame({c: [] for c in GROUP_COLUMNS})) == []
    assert Usage.from_frame(pd.DataFrame({c: [] for c in EXPECTED_COLUMNS})) == []


def test_usage_from_frame_of_stored_rows(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage")
    store.create_usage(
        Usage(
            user_id="a",
            tenant="t",
            api_method="M",
            status_code=404,
            timestamp=DAY0,
            latency_ms=12,
            prompt_tokens=3,
            runtime_latency_ms=9,
        ),
        Usage(user_id="b", timestamp=DAY0 + 1),
    )
    found = store.find_usages()
    records = Usage.from_frame(found)
    assert len(records) == 2
    first = records[0]
    assert first.id == found.loc[0, "id"]
    assert first.created_at == found.loc[0, "created_at"]
    assert isinstance(first.created_at, pd.Timestamp)
    assert first.user_id == "a"
    assert first.status_code == 404
    assert first.timestamp == DAY0
    assert first.latency_ms == 12
    assert first.prompt_tokens == 3
    assert first.runtime_latency_ms == 9
    assert records[1] == Usage(
        id=int(found.loc[1, "id"]),
        created_at=found.loc[1, "created_at"],
        user_id="b",
        timestamp=DAY0 + 1,
    )


def test_usages_round_trip_into_another_store(tmp_path: Path) -> None:
    source = new_store(tmp_path / "source")
    frame = random_usage_frame(60, seed=8, days=3)
    assert source.create_usage(frame) == len(frame)
    rows = source.find_usages()
    records = Usage.from_frame(rows)
    assert len(records) == len(frame)

    target = new_store(tmp_path / "target")
    assert target.create_usage(records) == len(records)
    copied = target.find_usages()
    pd.testing.assert_frame_equal(stored_input_columns(copied), stored_input_columns(rows))
    assert copied["id"].is_unique
    assert copied["created_at"].min() >= rows["created_at"].max()
    assert tuple(copied.columns) == EXPECTED_COLUMNS
    assert Usage.from_frame(copied)[5].timestamp == records[5].timestamp
    assert [r.user_id for r in Usage.from_frame(copied)] == [r.user_id for r in records]
    assert target.create_usage(records, on_conflict="ignore") == 0


def test_usage_from_frame_of_a_built_frame() -> None:
    frame = random_usage_frame(5, seed=4)
    frame.insert(0, "created_at", pd.Timestamp("2026-11-01", tz="UTC"))
    frame.insert(0, "id", np.arange(10, 15, dtype=np.int64))
    records = Usage.from_frame(frame)
    assert [r.id for r in records] == [10, 11, 12, 13, 14]
    assert {r.created_at for r in records} == {pd.Timestamp("2026-11-01", tz="UTC")}
    assert [r.user_id for r in records] == frame["user_id"].tolist()
    assert [r.timestamp for r in records] == frame["timestamp"].tolist()
    for record, row in zip(records, frame[list(INPUT_COLUMNS)].to_dict("records"), strict=True):
        assert {k: getattr(record, k) for k in INPUT_COLUMNS} == row
