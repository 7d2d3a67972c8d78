"""The two reports as pandas group-bys, split into exact partial aggregates and their combination.

A *partial* holds, per group, integer counts and sums of the rows it has seen. Partials of disjoint
sets of rows combine exactly by adding them up, so a report over many partitions is computed one
partition at a time and the averages are derived once, at the end, from the summed totals (never
averaged again). Nothing here knows about files.

Partials are pyarrow Tables: key columns dictionary-encoded (``KEY_TYPE``), sums as int64. The
sums are taken by one pandas group-by on an integer key built from the keys' dictionary codes,
so combining partials costs a sort of each distinct key value, not a hash of every row's strings.
Reports take rows as DataFrames or Tables and return DataFrames.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "GROUP_COLUMNS",
    "GROUP_INPUT_COLUMNS",
    "GROUP_KEYS",
    "KEY_TYPE",
    "ROLLUP_INPUT_COLUMNS",
    "ROLLUP_KEYS",
    "SUMMARY_COLUMNS",
    "SUMMARY_INPUT_COLUMNS",
    "SUMMARY_KEYS",
    "combine_rollups",
    "encode_keys",
    "finish_groups",
    "finish_summary",
    "groups_partial",
    "rollup",
    "rollups",
    "summary_partial",
]

SUCCESS_STATUS: Final = 200
_MAX_RADIX: Final = 1 << 62

SUMMARY_KEYS: Final = ("api_method",)
SUMMARY_INPUT_COLUMNS: Final = ("api_method", "status_code", "latency_ms")
SUMMARY_SUMS: Final = ("total_requests", "success_requests", "latency_sum")
SUMMARY_COLUMNS: Final = (
    "api_method",
    "total_requests",
    "success_requests",
    "failure_requests",
    "average_latency",
)

GROUP_KEYS: Final = ("api_key_id", "user_id", "model_id")
GROUP_INPUT_COLUMNS: Final = (
    *GROUP_KEYS,
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "time_to_first_token_ms",
)
GROUP_SUMS: Final = (
    "total_requests",
    "total_prompt_tokens",
    "total_completion_tokens",
    "latency_sum",
    "ttft_sum",
)
GROUP_COLUMNS: Final = (
    *GROUP_KEYS,
    "total_requests",
    "total_prompt_tokens",
    "total_completion_tokens",
    "average_latency",
    "average_time_to_first_token",
)


#: Key columns of partials and rollups: strings, dictionary-encoded with 32-bit indices.
KEY_TYPE: Final = pa.dictionary(pa.int32(), pa.string())

#: What a partial is computed from: a DataFrame, or a pyarrow Table (as files are read).
Rows: TypeAlias = "pd.DataFrame | pa.Table"


def _as_table(rows: Rows, columns: Sequence[str]) -> pa.Table:
    """The ``columns`` of ``rows`` as a pyarrow Table (no copy for pyarrow-backed columns)."""
    if isinstance(rows, pa.Table):
        return rows.select(list(columns))
    return pa.Table.from_pandas(rows[list(columns)], preserve_index=False)


def _with_key_type(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """``table`` with its ``keys`` columns cast to ``KEY_TYPE`` (strings are encoded)."""
    for name in keys:
        i = table.schema.get_field_index(name)
        column = table.column(i)
        if column.type == KEY_TYPE:
            continue
        if not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(column)
        table = table.set_column(i, name, column.cast(KEY_TYPE))
    return table


def _key_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Integer codes of a ``KEY_TYPE`` column whose chunks share one dictionary, and the
    distinct values they index, in ascending order (missing values get -1). Keys are strings:
    other types are compared as their text.

    Only the dictionary is sorted, not the rows: this is what makes combining partials cheap.
    """
    chunks = column.chunks
    dictionary = chunks[0].dictionary if chunks else pa.array([], pa.string())
    if dictionary.null_count or pc.count_distinct(dictionary).as_py() != len(dictionary):
        # A dictionary that holds a null or repeats a value (the store writes none such, but
        # callers may pass one): encode the values afresh, so that equal keys get one code.
        fresh = pc.dictionary_encode(column.cast(pa.string()).combine_chunks())
        return _key_codes(pa.chunked_array([fresh.cast(KEY_TYPE)]))
    order = pc.array_sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    parts = [
        (c.indices if not c.null_count else pc.fill_null(c.indices, -1)).to_numpy() for c in chunks
    ]
    indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    codes = rank[indices] if len(rank) else np.zeros(len(indices), dtype=np.int64)
    if column.null_count:
        codes = np.where(indices >= 0, codes, -1)
    return codes, dictionary.take(pa.array(order))


def _group_sums(rows: Rows, keys: Sequence[str], sums: Mapping[str, np.ndarray]) -> pa.Table:
    """Per distinct combination of ``keys``, sorted by them, the sum of each of ``sums``.

    One pandas group-by on a single integer key: each key column is dictionary-encoded, its
    dictionary sorted, and the codes are combined in mixed radix, so the combined key sorts as
    the tuples of keys do. This is several times faster than grouping by the string columns
    themselves. Rows with a missing key are left out, as ``groupby`` does by default. The
    result has ``KEY_TYPE`` keys and int64 sums.

    Example:
        >>> t = pa.table({"a": ["y", "x", "y"], "b": ["p", "q", "p"]})
        >>> _group_sums(t, ["a", "b"], {"n": np.array([1, 2, 3])}).to_pandas()
           a  b  n
        0  x  q  2
        1  y  p  4
    """
    table = _with_key_type(_as_table(rows, keys), keys).unify_dictionaries()
    n = table.num_rows
    combined = np.zeros(n, dtype=np.int64)
    missing = np.zeros(n, dtype=bool)
    has_missing = False
    radix = 1
    renumbered = False
    all_codes: list[np.ndarray] = []
    uniques: list[pa.Array] = []
    for name in keys:
        codes, found = _key_codes(table.column(name))
        all_codes.append(codes)
        uniques.append(found)
        width = max(len(found), 1)
        if radix * width >= _MAX_RADIX:
            # Renumber the groups so far, in order, to keep the combined key in range.
            combined, seen = pd.factorize(combined, sort=True)
            radix, renumbered = max(len(seen), 1), True
        if len(codes) and codes.min() < 0:
            has_missing = True
            missing |= codes < 0
            codes = np.maximum(codes, 0)
        combined *= width
        combined += codes
        radix *= width
    names = list(sums)
    values = pd.DataFrame(
        {k: np.asarray(sums[k], dtype=np.int64) for k in names}, index=None, copy=False
    )
    rows = None
    if has_missing and missing.any():
        rows = np.flatnonzero(~missing)
        values, combined = values.iloc[rows], combined[rows]
    # An Index as the key: pandas then skips looking the array up as a column label.
    out = values.groupby(pd.Index(combined, copy=False), sort=True).sum()
    group_codes: dict[str, np.ndarray] = {}
    if renumbered:  # the key no longer splits by radix: take each group's first row's codes
        first = np.unique(combined, return_index=True)[1]
        if rows is not None:
            first = rows[first]
        for name, codes in zip(keys, all_codes, strict=True):
            group_codes[name] = codes[first]
    else:
        group = out.index.to_numpy(dtype=np.int64)
        for name, found in zip(reversed(keys), reversed(uniques), strict=True):
            group, group_codes[name] = np.divmod(group, max(len(found), 1))
    columns: dict[str, pa.Array] = {
        name: pa.DictionaryArray.from_arrays(
            pa.array(group_codes[name].astype(np.int32), pa.int32()), found.cast(pa.string())
        )
        for name, found in zip(keys, uniques, strict=True)
    }
    totals = out.to_numpy(dtype=np.int64)
    columns.update((name, pa.array(totals[:, i], pa.int64())) for i, name in enumerate(names))
    return pa.table(columns)


def summary_partial(rows: Rows, keys: Sequence[str] = SUMMARY_KEYS) -> pa.Table:
    """Per ``keys``: requests, successes (``status_code == 200``) and the latency sum.

    Example:
        >>> df = pd.DataFrame({"api_method": ["a", "a", "b"], "status_code": [200, 500, 200],
        ...                    "latency_ms": [10, 20, 30]})
        >>> finish_summary([summary_partial(df.iloc[:2]), summary_partial(df.iloc[2:])])
          api_method  total_requests  success_requests  failure_requests  average_latency
        0          a               2                 1                 1             15.0
        1          b               1                 1                 0             30.0
    """
    table = _as_table(rows, (*keys, "status_code", "latency_ms"))
    return _group_sums(
        table,
        keys,
        {
            "total_requests": np.ones(table.num_rows, dtype=np.int64),
            "success_requests": (table.column("status_code").to_numpy() == SUCCESS_STATUS),
            "latency_sum": table.column("latency_ms").to_numpy(),
        },
    )


def groups_partial(rows: Rows, keys: Sequence[str] = GROUP_KEYS) -> pa.Table:
    """Per ``keys``: requests and the sums of tokens, latency and time to first token."""
    table = _as_table(rows, (*keys, *GROUP_INPUT_COLUMNS[len(GROUP_KEYS) :]))
    return _group_sums(
        table,
        keys,
        {
            "total_requests": np.ones(table.num_rows, dtype=np.int64),
            "total_prompt_tokens": table.column("prompt_tokens").to_numpy(),
            "total_completion_tokens": table.column("completion_tokens").to_numpy(),
            "latency_sum": table.column("latency_ms").to_numpy(),
            "ttft_sum": table.column("time_to_first_token_ms").to_numpy(),
        },
    )


def _combine(partials: Iterable[pa.Table], keys: Sequence[str], sums: Sequence[str]) -> pa.Table:
    """The partials' exact combination, sorted by ``keys``. Their sums may be integers of any
    width (summary files store them narrowed); they are added up as int64."""
    parts = [p for p in partials if p.num_rows]
    if not parts:
        empty = {k: pa.array([], KEY_TYPE) for k in keys}
        return pa.table({**empty, **{s: pa.array([], pa.int64()) for s in sums}})
    key_parts = [_with_key_type(p.select(list(keys)), keys) for p in parts]
    both = key_parts[0] if len(key_parts) == 1 else pa.concat_tables(key_parts)
    values = {s: np.concatenate([_ints(p.column(s)) for p in parts]) for s in sums}
    return _group_sums(both, keys, values)


def _mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    out: np.ndarray = total.astype(np.float64) / count.astype(np.float64)
    return out


def _strings(column: pa.ChunkedArray) -> pd.Series:
    """A ``KEY_TYPE`` column as a pandas str Series."""
    return pd.Series(column.cast(pa.string()).to_pandas(), dtype="str")


def _ints(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.to_numpy(), dtype=np.int64)


def finish_summary(partials: Iterable[pa.Table]) -> pd.DataFrame:
    """Combine summary partials into the ``aggregated_usage`` frame, sorted by ``api_method``."""
    t = _combine(partials, SUMMARY_KEYS, SUMMARY_SUMS)
    total, success = _ints(t["total_requests"]), _ints(t["success_requests"])
    return pd.DataFrame(
        {
            "api_method": _strings(t["api_method"]),
            "total_requests": total,
            "success_requests": success,
            "failure_requests": total - success,
            "average_latency": _mean(_ints(t["latency_sum"]), total),
        },
        copy=False,
    )


def finish_groups(partials: Iterable[pa.Table]) -> pd.DataFrame:
    """Combine group partials into the ``get_usages_by_groups`` frame, sorted by the keys."""
    t = _combine(partials, GROUP_KEYS, GROUP_SUMS)
    total = _ints(t["total_requests"])
    return pd.DataFrame(
        {
            "api_key_id": _strings(t["api_key_id"]),
            "user_id": _strings(t["user_id"]),
            "model_id": _strings(t["model_id"]),
            "total_requests": total,
            "total_prompt_tokens": _ints(t["total_prompt_tokens"]),
            "total_completion_tokens": _ints(t["total_completion_tokens"]),
            "average_latency": _mean(_ints(t["latency_sum"]), total),
            "average_time_to_first_token": _mean(_ints(t["ttft_sum"]), total),
        },
        copy=False,
    )


#: Rollups: the partials of each report per tenant, kept beside each data file so that a
#: window covering the whole file reads them instead of its rows.
ROLLUP_KEYS: Final = {"summary": ("tenant", *SUMMARY_KEYS), "groups": ("tenant", *GROUP_KEYS)}
ROLLUP_INPUT_COLUMNS: Final = tuple(
    dict.fromkeys(("tenant", *SUMMARY_INPUT_COLUMNS, *GROUP_INPUT_COLUMNS))
)


def rollup(kind: str, rows: Rows) -> pa.Table:
    """One report's partial per tenant (``kind`` is "summary" or "groups"), sorted by its keys,
    tenant first.

    Example:
        >>> df = pd.DataFrame({"tenant": ["t1", "t0"], "api_method": ["a", "a"],
        ...     "status_code": [200, 404], "latency_ms": [10, 20]})
        >>> rollup("summary", df).to_pandas()
          tenant api_method  total_requests  success_requests  latency_sum
        0     t0          a               1                 0           20
        1     t1          a               1                 1           10
    """
    if kind == "summary":
        return summary_partial(rows, ROLLUP_KEYS["summary"])
    if kind == "groups":
        return groups_partial(rows, ROLLUP_KEYS["groups"])
    raise ValueError(f"not a rollup kind: {kind!r}")


def encode_keys(rows: Rows) -> pa.Table:
    """The columns rollups read, with the keys of both already dictionary-encoded (done once
    instead of once per rollup)."""
    keys = list(dict.fromkeys(k for kind_keys in ROLLUP_KEYS.values() for k in kind_keys))
    return _with_key_type(_as_table(rows, ROLLUP_INPUT_COLUMNS), keys)


def rollups(rows: Rows) -> dict[str, pa.Table]:
    """Both reports' partials per tenant (see :func:`rollup`)."""
    encoded = encode_keys(rows)
    return {kind: rollup(kind, encoded) for kind in ROLLUP_KEYS}


def combine_rollups(kind: str, parts: Iterable[pa.Table]) -> pa.Table:
    """Rollups of disjoint sets of rows combined into one, sorted by its keys.

    Example:
        >>> part = rollups(pd.DataFrame({"tenant": ["t"], "api_method": ["a"],
        ...     "status_code": [200], "latency_ms": [10], "api_key_id": ["k"], "user_id": ["u"],
        ...     "model_id": ["m"], "prompt_tokens": [1], "completion_tokens": [3],
        ...     "time_to_first_token_ms": [5]}))["summary"]
        >>> combine_rollups("summary", [part, part]).to_pandas()
          tenant api_method  total_requests  success_requests  latency_sum
        0      t          a               2                 2           20
    """
    sums = SUMMARY_SUMS if kind == "summary" else GROUP_SUMS
    return _combine(parts, ROLLUP_KEYS[kind], sums)
