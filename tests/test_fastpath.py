"""Every fast path gives exactly what the plain way gives.

- Validation: clean batches skip Pandera's per-column overhead when plain vector checks, read
  off the same schema, show they pass; anything else goes to Pandera, which reports every
  problem. The fast path never accepts what the Pandera schema would reject.
- Group sums: one group-by on a combined integer key equals a group-by on the key columns.
- Repeated keys in a batch: hashing only rows with tied timestamps equals ``duplicated``.
- Summary files: reading one first-column value equals reading all and filtering.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pandera.errors
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from helpers import random_usage_frame
from hypothesis import given, settings

from usage_analytics import synthetic
from usage_analytics._storage import files as summary_files
from usage_analytics._validation import normalize_batch, passes_fast_checks, widened_for_checks
from usage_analytics._writes import repeated_keys as _repeated_keys
from usage_analytics.reports import kernels
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
        INPUT_SCHEMA.validate(widened_for_checks(frame), lazy=True)
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


KEY_TEXT = st.sampled_from(["", "a", "b", "ab", "B", "é", "z" * 3, "\u4e2d"])


@st.composite
def keyed_frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(0, 40))
    keys = {k: draw(st.lists(KEY_TEXT, min_size=n, max_size=n)) for k in ("k1", "k2", "k3")}
    frame = pd.DataFrame({k: pd.Series(v, dtype="str") for k, v in keys.items()})
    frame["v"] = np.asarray(draw(st.lists(st.integers(-(10**12), 10**12), min_size=n, max_size=n)))
    return frame.astype({"v": np.int64})


@settings(max_examples=150, deadline=None, derandomize=True)
@given(keyed_frames(), st.booleans())
def test_group_sums_equal_a_plain_groupby(frame: pd.DataFrame, tiny_radix: bool) -> None:
    keys = ["k1", "k2", "k3"]
    old = kernels._MAX_RADIX
    kernels._MAX_RADIX = 4 if tiny_radix else old  # forces the renumbering of partial keys
    try:
        got = kernels.group_sums(frame, keys, {"v": frame["v"].to_numpy()}).to_pandas()
    finally:
        kernels._MAX_RADIX = old
    want = frame.groupby(keys, sort=True, as_index=False)["v"].sum()
    assert got[keys].astype(str).values.tolist() == want[keys].astype(str).values.tolist()
    assert got["v"].tolist() == want["v"].tolist()


def test_group_sums_leave_out_missing_keys_as_groupby_does() -> None:
    frame = pd.DataFrame({"k": pd.Series(["a", None, "a", "b"], dtype="str"), "v": [1, 2, 3, 4]})
    got = kernels.group_sums(frame, ["k"], {"v": frame["v"].to_numpy(dtype=np.int64)})
    got = got.to_pandas()
    assert got["k"].tolist() == ["a", "b"] and got["v"].tolist() == [4, 4]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.integers(0, 6)), min_size=0, max_size=30
    )
)
def test_repeated_keys_equal_duplicated(rows: list[tuple[str, int]]) -> None:
    batch = pd.DataFrame(rows, columns=["user_id", "timestamp"]).astype({"timestamp": np.int64})
    batch["other"] = np.arange(len(batch))
    want = batch.duplicated(["user_id", "timestamp"], keep="first").to_numpy()
    assert _repeated_keys(batch).tolist() == want.tolist()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(["t0", "t1", "t2", "t3", "zz", ""]), max_size=6000))
def test_summary_files_read_one_value_as_a_filter_would(
    tmp_path_factory: Any, values: list[str]
) -> None:
    path = Path(tmp_path_factory.mktemp("summary")) / "x.rollup"
    firsts = sorted(values)
    n = np.arange(len(firsts), dtype=np.int64)
    table = pa.table(
        {"tenant": pa.array(firsts, pa.string()), "n": n, "big": n * 3_000_000_000 - 7}
    )
    summary_files.write_summary(table, path)
    whole = summary_files.read_summary(path, None)
    # Strings come back dictionary-encoded; integers in the narrowest type that holds them.
    small = pa.int8() if len(firsts) <= 128 else pa.int16()
    big = pa.int8() if len(firsts) <= 1 else pa.int64()  # -7, then 3e9 - 7 and more
    assert whole.schema.types == [summary_files.SUMMARY_TEXT, small, big]
    assert whole.to_pylist() == table.to_pylist()
    for value in ["t0", "t1", "t2", "t3", "zz", "", "t", "zzz"]:
        got = summary_files.read_summary(path, value)
        want = table.filter(pa.compute.equal(table.column("tenant"), value))
        assert got.to_pylist() == want.to_pylist(), value


def test_summary_files_larger_than_their_tail_read_each_value(tmp_path: Path) -> None:
    """Frames before the bytes read at first are read where they are; each value's rows
    come from its own frame, or its slice of a shared one, with strings as dictionaries of
    that frame's values only."""
    rng = np.random.default_rng(5)
    counts = {"big": 40_000, "mid": 3_000, "s1": 7, "s2": 300, "s3": 1}
    firsts = [k for k, n in sorted(counts.items()) for _ in range(n)]
    users = pa.array([f"user-{i}" for i in rng.integers(0, 20_000, len(firsts))])
    table = pa.table({"tenant": firsts, "user": users, "n": rng.integers(0, 1 << 40, len(firsts))})
    path = tmp_path / "x.rollup"
    summary_files.write_summary(table, path)
    data = path.read_bytes()
    assert len(data) > summary_files._TAIL_BYTES
    assert data.startswith(summary_files.SUMMARY_MAGIC)
    assert data.endswith(summary_files.SUMMARY_MAGIC)
    for value, n in counts.items():
        got = summary_files.read_summary(path, value)
        want = table.filter(pa.compute.equal(table.column("tenant"), value))
        assert got.num_rows == n and got.to_pylist() == want.to_pylist(), value
        assert len(got.column("user").chunk(0).dictionary) <= max(n, 1024)
    assert summary_files.read_summary(path, None).to_pylist() == table.to_pylist()
    empty = summary_files.read_summary(path, "none")
    assert empty.num_rows == 0 and empty.schema.names == ["tenant", "user", "n"]


def test_summary_frames_keep_only_the_keys_their_rows_use(tmp_path: Path) -> None:
    """Users belong to one tenant, in a dictionary in no useful order (as rollups make it):
    a tenant with a frame of its own stores exactly its users, and tenants sharing a frame
    store at most the users of that frame's rows."""
    rng = np.random.default_rng(8)
    sizes = {f"t{i:02}": int(n) for i, n in enumerate(rng.choice([3, 40, 900, 2500], 30))}
    tenants, users = [], []
    for tenant, n in sizes.items():
        tenants += [tenant] * n
        users += [f"{tenant}-u{j}" for j in rng.integers(0, max(2, n // 3), n)]
    values = np.array(sorted(set(users)))
    shuffled = values[rng.permutation(len(values))]
    codes = pd.Index(shuffled).get_indexer(users)
    table = pa.table(
        {
            "tenant": tenants,
            "user": pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(shuffled)),
            "n": rng.integers(0, 1 << 40, len(tenants)),
        }
    )
    path = tmp_path / "x.rollup"
    summary_files.write_summary(table, path)
    small = sum(n for n in sizes.values() if n < summary_files.SUMMARY_FRAME_ROWS)
    for tenant, n in sizes.items():
        got = summary_files.read_summary(path, tenant)
        want = table.filter(pa.compute.equal(table.column("tenant"), tenant))
        assert got.to_pylist() == want.to_pylist(), tenant
        dictionary = got.column("user").chunk(0).dictionary.to_pylist()
        if n >= summary_files.SUMMARY_FRAME_ROWS:
            assert sorted(dictionary) == sorted(set(want.column("user").to_pylist()))
        else:
            assert len(dictionary) <= min(small, summary_files.SUMMARY_FRAME_ROWS * 2)
            assert all(
                sizes[u.split("-")[0]] < summary_files.SUMMARY_FRAME_ROWS for u in dictionary
            )
    assert summary_files.read_summary(path, None).to_pylist() == table.to_pylist()


def test_a_value_with_many_rows_has_batches_of_its_own() -> None:
    rows = summary_files.SUMMARY_BATCH_ROWS
    firsts = ["a"] * 3 + ["b"] * (rows + 5) + ["c"] * 2 + ["d"] * (rows - 1) + ["e"]
    table = pa.table({"tenant": firsts, "n": np.arange(len(firsts))})
    batches, index = summary_files.summary_batches(table)
    assert index == [["a", "a"], ["b", "b"], ["c", "d"], ["e", "e"]]
    assert [b.num_rows for b in batches] == [3, rows + 5, rows + 1, 1]


@settings(max_examples=80, deadline=None, derandomize=True)
@given(keyed_frames())
def test_group_sums_of_categorical_keys_sort_as_strings(frame: pd.DataFrame) -> None:
    """Raw scans read keys as categoricals, whose categories come in first-seen order."""
    keys = ["k1", "k2", "k3"]
    as_categories = frame.copy()
    for k in keys:
        values = frame[k].tolist()
        categories = list(dict.fromkeys(reversed(values)))  # deliberately not sorted
        as_categories[k] = pd.Categorical(values, categories=categories)
    got = kernels.group_sums(as_categories, keys, {"v": frame["v"].to_numpy()})
    want = kernels.group_sums(frame, keys, {"v": frame["v"].to_numpy()})
    assert got.to_pylist() == want.to_pylist()


def test_group_sums_of_dictionaries_that_repeat_a_value_or_hold_a_null() -> None:
    """Callers may pass such dictionaries; equal keys still make one group, nulls none."""
    keys = pa.DictionaryArray.from_arrays(
        pa.array([0, 1, 2, 3, 1], pa.int32()), pa.array(["b", "a", None, "a"])
    )
    got = kernels.group_sums(pa.table({"k": keys}), ["k"], {"v": np.array([1, 2, 4, 8, 16])})
    assert got.to_pylist() == [{"k": "a", "v": 26}, {"k": "b", "v": 1}]


@pytest.mark.parametrize("runs", [1, 3, 40, 5_000])
def test_sorted_pairs_sorts_runs_and_shuffled_input_alike(runs: int) -> None:
    # Parts each sorted, one after the other (merged), or as many runs as a shuffle has.
    rng = np.random.default_rng(runs)
    parts = [np.sort(rng.integers(0, 1 << 30, 20_000 // runs + 1)) for _ in range(runs)]
    composite = np.concatenate(parts).astype(np.int64)
    counts = rng.integers(1, 1_000, len(composite)).astype(np.int64)
    order = np.lexsort((counts, composite))
    for c, n in ((composite, counts), (composite[::-1].copy(), counts[::-1].copy())):
        got, got_counts = kernels.sorted_pairs(c, n)
        np.testing.assert_array_equal(got, composite[order])
        np.testing.assert_array_equal(got_counts, counts[order])
    wide = composite << 33  # too wide to pack with the counts: the argsort path
    got, got_counts = kernels.sorted_pairs(wide, counts)
    np.testing.assert_array_equal(got, wide[np.argsort(wide, kind="stable")])
    assert (np.diff(got) >= 0).all() and got_counts.sum() == counts.sum()


def test_key_runs_cut_where_the_keys_change_and_nothing_else() -> None:
    _key_runs = kernels.key_runs
    a = pa.array(["x", "x", "y", "y", "y"]).dictionary_encode()
    b = pa.array(["y", "y", "x"]).dictionary_encode()  # a chunk of its own dictionary
    table = pa.table(
        {"k": pa.chunked_array([a, b]), "n": pa.chunked_array([[1, 1, 1, 2, 2], [2, 2, 2]])}
    )
    starts, lengths = _key_runs(table)
    # A chunk starts a run (its dictionary is another), as does any change of any key.
    assert starts.to_pydict() == {"k": ["x", "y", "y", "y", "x"], "n": [1, 1, 2, 2, 2]}
    assert lengths.tolist() == [2, 1, 2, 2, 1]
    with_null = pa.table({"k": pa.array(["x", None, None, "x"])})
    assert _key_runs(with_null)[1].tolist() == [1, 1, 1, 1]
    no_keys = pa.table({"n": [1, 2, 3]}).select([])
    assert _key_runs(no_keys)[1].tolist() == [3]
    assert _key_runs(pa.table({"k": pa.array([], pa.string())}))[1].tolist() == []


@pytest.mark.parametrize("order", ["sorted parts", "shuffled", "with missing keys"])
def test_groups_coded_by_runs_equal_groups_coded_by_row(order: str) -> None:
    # Four parts, each sorted by its keys (as summaries are), with dictionaries of their own.
    rng = np.random.default_rng(len(order))
    tenants = np.array([f"t{i}" for i in range(7)], dtype=object)
    models = np.array(["", "gpt-x", "m-1", "m-2", "zz"], dtype=object)
    parts = []
    for _ in range(4):
        n = int(rng.integers(1, 3_000))
        frame = pd.DataFrame(
            {"tenant": rng.choice(tenants, n), "model_id": rng.choice(models, n)}
        ).sort_values(["tenant", "model_id"])
        if order == "shuffled":
            frame = frame.sample(frac=1, random_state=1)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if order == "with missing keys":
            mask = pa.array(rng.random(n) < 0.1)
            table = table.set_column(1, "model_id", pc.if_else(mask, None, table.column(1)))
        parts.append(table)
    rows = pa.concat_tables(parts)
    keys = ["tenant", "model_id"]
    gid, groups = kernels.encode_runs(rows, keys)
    want_gid, want_groups = kernels.encode_groups(rows, keys)
    np.testing.assert_array_equal(gid, want_gid)
    assert groups.to_pydict() == want_groups.to_pydict()
    if order == "with missing keys":
        assert (gid == -1).any()


@pytest.mark.parametrize("unpriced", [False, True])
def test_priced_token_sums_by_price_row_equal_those_by_model_and_price(unpriced: bool) -> None:
    """A cost component's sums per (group, price row), each with its price row's model, are
    the sums per (group, model, price row) of a plain group-by; with rows of no price (-1),
    those keep their models."""
    from usage_analytics.reports.combined import _priced_sums

    rng = np.random.default_rng(11)
    n, groups = 5_000, 40
    models = np.array([f"m{i}" for i in range(6)])
    # Each model has two price rows (a price change): rows 2m and 2m + 1.
    model = rng.integers(0, len(models), n)
    price = 2 * model + rng.integers(0, 2, n)
    if unpriced:
        price[rng.random(n) < 0.1] = -1
    gid = rng.integers(0, groups, n)
    prompt, completion = rng.integers(0, 2**40, n), rng.integers(0, 1000, n)
    table = pa.table(
        {
            "model_id": pa.array(models[model]).dictionary_encode(),
            "price": pa.array(price, pa.int32()),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
        }
    )
    group, model_of, prices, prompt_sums, completion_sums = _priced_sums(table, gid, groups)
    got = pd.DataFrame(
        {
            "g": group,
            "model": model_of.cast(pa.string()).to_pylist(),
            "price": prices,
            "prompt": prompt_sums,
            "completion": completion_sums,
        }
    )
    frame = pd.DataFrame(
        {
            "g": gid,
            "model": models[model],
            "price": price,
            "prompt": prompt,
            "completion": completion,
        }
    )
    want = frame.groupby(["g", "model", "price"], as_index=False).sum()
    key = ["g", "price", "model"]
    got = got.sort_values(key, ignore_index=True)
    want = want.sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
