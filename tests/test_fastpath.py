"""The validation fast path never accepts what the Pandera schema would reject.

Clean batches skip Pandera's per-column overhead when plain vector checks, read off the same
schema, show they pass; anything else goes to Pandera, which reports every problem.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pandera.errors
from helpers import random_usage_frame
from hypothesis import given, settings

from usage_analytics import synthetic
from usage_analytics._validation import normalize_batch, passes_fast_checks
from usage_analytics.schema import INPUT_SCHEMA, INT32_COLUMNS, STRING_COLUMNS

INT_VALUES = st.one_of(
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, 999, 1000, -1, 2**31 - 1, 2**31]),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=3),
)
STR_VALUES = st.one_of(st.text(max_size=5), st.none(), st.integers(), st.just("\ud800"))


@st.composite
def batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 4))
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"user_id": f"u{i}", "timestamp": i}
        for name in draw(st.sets(st.sampled_from([*STRING_COLUMNS, *INT32_COLUMNS]), max_size=4)):
            row[name] = draw(STR_VALUES if name in STRING_COLUMNS else INT_VALUES)
        if draw(st.booleans()):
            row["timestamp"] = draw(INT_VALUES)
        if draw(st.integers(0, 9)) == 0:
            row["unknown"] = 1
        rows.append(row)
    return rows


def pandera_accepts(frame: pd.DataFrame) -> bool:
    try:
        INPUT_SCHEMA.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors:
        return False
    return True


@settings(max_examples=300, deadline=None, derandomize=True)
@given(batches())
def test_fast_path_accepts_only_what_pandera_accepts(rows: list[dict[str, Any]]) -> None:
    frame = normalize_batch((rows,))
    if passes_fast_checks(frame):
        assert pandera_accepts(frame)


def test_clean_batches_take_the_fast_path() -> None:
    for frame in (synthetic.generate(2_000, days=2, seed=3), random_usage_frame(200, 1)):
        normalized = normalize_batch((frame,))
        assert passes_fast_checks(normalized)
        assert pandera_accepts(normalized)
    assert passes_fast_checks(normalize_batch(({"user_id": "u", "timestamp": 5},)))


def test_each_rule_sends_the_batch_to_pandera() -> None:
    base = {"user_id": "u", "timestamp": 5}
    for bad in (
        {"status_code": 1000},
        {"latency_ms": -1},
        {"prompt_tokens": 2**31},
        {"timestamp": -1},
        {"tenant": None},
        {"model_id": 3},
        {"extra": "x"},
    ):
        frame = normalize_batch(({**base, **bad},))
        assert not passes_fast_checks(frame), bad
        assert not pandera_accepts(frame), bad
    floats = normalize_batch((pd.DataFrame({"timestamp": [1.5], "user_id": ["u"]}),))
    assert floats["timestamp"].dtype == np.float64
    assert not passes_fast_checks(floats)
