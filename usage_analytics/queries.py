"""The two reports as pandas group-bys, split into exact partial aggregates and their combination.

A *partial* holds, per group, integer counts and sums of the rows it has seen. Partials of disjoint
sets of rows combine exactly by adding them up, so a report over many partitions is computed one
partition at a time and the averages are derived once, at the end, from the summed totals (never
averaged again). Nothing here knows about files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import numpy as np
import pandas as pd

__all__ = [
    "GROUP_COLUMNS",
    "GROUP_INPUT_COLUMNS",
    "GROUP_KEYS",
    "ROLLUP_INPUT_COLUMNS",
    "ROLLUP_KEYS",
    "SUMMARY_COLUMNS",
    "SUMMARY_INPUT_COLUMNS",
    "SUMMARY_KEYS",
    "combine_rollups",
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


def _group_sums(
    key_frame: pd.DataFrame, keys: Sequence[str], sums: Mapping[str, np.ndarray]
) -> pd.DataFrame:
    """Per distinct combination of ``keys``, sorted by them, the sum of each of ``sums``.

    One pandas group-by on a single integer key: each key column is factorized in sorted
    order and the codes are combined in mixed radix, so the combined key sorts as the tuples
    of keys do. This is several times faster than grouping by the string columns themselves.
    Rows with a missing key are left out, as ``groupby`` does by default.

    Example:
        >>> df = pd.DataFrame({"a": ["y", "x", "y"], "b": ["p", "q", "p"]})
        >>> _group_sums(df, ["a", "b"], {"n": np.array([1, 2, 3])})
           a  b  n
        0  x  q  2
        1  y  p  4
    """
    return pd.DataFrame(_grouped_columns(key_frame, keys, sums), copy=False)


def _factorize_sorted(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Integer codes of ``values`` and their distinct values as strings, in ascending order
    (missing values get -1).

    Categorical columns (dictionary-encoded keys read from rollups) are factorized by their
    codes, which is much cheaper than hashing strings, and their few distinct values are
    sorted afterwards.
    """
    if not isinstance(values.dtype, pd.CategoricalDtype):
        codes, found = pd.factorize(values, sort=True)
        return codes, pd.Index(found, dtype="str")
    codes, found = pd.factorize(values, sort=False)
    names = pd.Index(np.asarray(found, dtype=object), dtype="str")
    order = np.argsort(names.to_numpy(dtype=object), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return np.where(codes >= 0, rank[np.maximum(codes, 0)], -1), names[order]


def _grouped_columns(
    key_frame: pd.DataFrame, keys: Sequence[str], sums: Mapping[str, np.ndarray]
) -> dict[str, pd.Index | np.ndarray]:
    """The columns of :func:`_group_sums`: keys as str Index objects, sums as int64 arrays."""
    n = len(key_frame)
    combined = np.zeros(n, dtype=np.int64)
    missing = np.zeros(n, dtype=bool)
    radix = 1
    renumbered = False
    all_codes: list[np.ndarray] = []
    uniques: list[pd.Index] = []
    for name in keys:
        codes, found = _factorize_sorted(key_frame[name])
        all_codes.append(codes)
        uniques.append(found)
        width = max(len(found), 1)
        if radix * width >= _MAX_RADIX:
            # Renumber the groups so far, in order, to keep the combined key in range.
            combined, seen = pd.factorize(combined, sort=True)
            radix, renumbered = max(len(seen), 1), True
        missing |= codes < 0
        combined = combined * width + np.maximum(codes, 0)
        radix *= width
    names = list(sums)
    values = pd.DataFrame(
        np.column_stack([sums[k] for k in names]) if n else np.zeros((0, len(names)), np.int64),
        columns=names,
        copy=False,
    )
    rows = None
    if missing.any():
        rows = np.flatnonzero(~missing)
        values, combined = values.iloc[rows], combined[rows]
    # An Index as the key: pandas then skips looking the array up as a column label.
    out = values.groupby(pd.Index(combined, copy=False), sort=True).sum()
    columns: dict[str, pd.Index | np.ndarray] = {}
    if renumbered:  # the key no longer splits by radix: take each group's first row's codes
        first = np.unique(combined, return_index=True)[1]
        if rows is not None:
            first = rows[first]
        for name, codes, found in zip(keys, all_codes, uniques, strict=True):
            columns[name] = found.take(codes[first])
    else:
        group = out.index.to_numpy(dtype=np.int64)
        for name, found in zip(reversed(keys), reversed(uniques), strict=True):
            group, codes = np.divmod(group, max(len(found), 1))
            columns[name] = found.take(codes)
    columns = {k: columns[k] for k in keys}
    totals = out.to_numpy(dtype=np.int64)
    columns.update((name, totals[:, i]) for i, name in enumerate(names))
    return columns


def summary_partial(df: pd.DataFrame, keys: Sequence[str] = SUMMARY_KEYS) -> pd.DataFrame:
    """Per ``keys``: requests, successes (``status_code == 200``) and the latency sum.

    Example:
        >>> df = pd.DataFrame({"api_method": ["a", "a", "b"], "status_code": [200, 500, 200],
        ...                    "latency_ms": [10, 20, 30]})
        >>> finish_summary([summary_partial(df.iloc[:2]), summary_partial(df.iloc[2:])])
          api_method  total_requests  success_requests  failure_requests  average_latency
        0          a               2                 1                 1             15.0
        1          b               1                 1                 0             30.0
    """
    n = len(df)
    return _group_sums(
        df,
        keys,
        {
            "total_requests": np.ones(n, dtype=np.int64),
            "success_requests": (df["status_code"].to_numpy() == SUCCESS_STATUS).astype(np.int64),
            "latency_sum": df["latency_ms"].to_numpy(dtype=np.int64),
        },
    )


def groups_partial(df: pd.DataFrame, keys: Sequence[str] = GROUP_KEYS) -> pd.DataFrame:
    """Per ``keys``: requests and the sums of tokens, latency and time to first token."""
    return _group_sums(
        df,
        keys,
        {
            "total_requests": np.ones(len(df), dtype=np.int64),
            "total_prompt_tokens": df["prompt_tokens"].to_numpy(dtype=np.int64),
            "total_completion_tokens": df["completion_tokens"].to_numpy(dtype=np.int64),
            "latency_sum": df["latency_ms"].to_numpy(dtype=np.int64),
            "ttft_sum": df["time_to_first_token_ms"].to_numpy(dtype=np.int64),
        },
    )


def _combine(
    partials: Iterable[pd.DataFrame], keys: Sequence[str], sums: Sequence[str]
) -> dict[str, pd.Index | np.ndarray]:
    """The columns of the partials' exact combination, sorted by ``keys``."""
    parts = [p for p in partials if len(p)]
    if not parts:
        empty = pd.DataFrame({k: pd.Series([], dtype="str") for k in keys})
        return _grouped_columns(empty, keys, {s: np.zeros(0, dtype=np.int64) for s in sums})
    both = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    return _grouped_columns(both, keys, {s: both[s].to_numpy(dtype=np.int64) for s in sums})


def _mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    out: np.ndarray = total.astype(np.float64) / count.astype(np.float64)
    return out


def finish_summary(partials: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Combine summary partials into the ``aggregated_usage`` frame, sorted by ``api_method``."""
    t = _combine(partials, SUMMARY_KEYS, SUMMARY_SUMS)
    total, success = np.asarray(t["total_requests"]), np.asarray(t["success_requests"])
    return pd.DataFrame(
        {
            "api_method": pd.Series(t["api_method"], dtype="str"),
            "total_requests": total,
            "success_requests": success,
            "failure_requests": total - success,
            "average_latency": _mean(np.asarray(t["latency_sum"]), total),
        },
        copy=False,
    )


def finish_groups(partials: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Combine group partials into the ``get_usages_by_groups`` frame, sorted by the keys."""
    t = _combine(partials, GROUP_KEYS, GROUP_SUMS)
    total = np.asarray(t["total_requests"])
    return pd.DataFrame(
        {
            "api_key_id": pd.Series(t["api_key_id"], dtype="str"),
            "user_id": pd.Series(t["user_id"], dtype="str"),
            "model_id": pd.Series(t["model_id"], dtype="str"),
            "total_requests": total,
            "total_prompt_tokens": np.asarray(t["total_prompt_tokens"]),
            "total_completion_tokens": np.asarray(t["total_completion_tokens"]),
            "average_latency": _mean(np.asarray(t["latency_sum"]), total),
            "average_time_to_first_token": _mean(np.asarray(t["ttft_sum"]), total),
        },
        copy=False,
    )


#: Rollups: the partials of each report per tenant, kept beside each data file so that a
#: window covering the whole file reads them instead of its rows.
ROLLUP_KEYS: Final = {"summary": ("tenant", *SUMMARY_KEYS), "groups": ("tenant", *GROUP_KEYS)}
ROLLUP_INPUT_COLUMNS: Final = tuple(
    dict.fromkeys(("tenant", *SUMMARY_INPUT_COLUMNS, *GROUP_INPUT_COLUMNS))
)


def rollup(kind: str, df: pd.DataFrame) -> pd.DataFrame:
    """One report's partial per tenant (``kind`` is "summary" or "groups"), sorted by its keys,
    tenant first.

    Example:
        >>> df = pd.DataFrame({"tenant": ["t1", "t0"], "api_method": ["a", "a"],
        ...     "status_code": [200, 404], "latency_ms": [10, 20]})
        >>> rollup("summary", df)
          tenant api_method  total_requests  success_requests  latency_sum
        0     t0          a               1                 0           20
        1     t1          a               1                 1           10
    """
    if kind == "summary":
        return summary_partial(df, ROLLUP_KEYS["summary"])
    if kind == "groups":
        return groups_partial(df, ROLLUP_KEYS["groups"])
    raise ValueError(f"not a rollup kind: {kind!r}")


def rollups(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Both reports' partials per tenant (see :func:`rollup`)."""
    return {kind: rollup(kind, df) for kind in ROLLUP_KEYS}


def combine_rollups(kind: str, parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Rollups of disjoint sets of rows combined into one, sorted by its keys.

    Example:
        >>> part = rollups(pd.DataFrame({"tenant": ["t"], "api_method": ["a"],
        ...     "status_code": [200], "latency_ms": [10], "api_key_id": ["k"], "user_id": ["u"],
        ...     "model_id": ["m"], "prompt_tokens": [1], "completion_tokens": [3],
        ...     "time_to_first_token_ms": [5]}))["summary"]
        >>> combine_rollups("summary", [part, part])
          tenant api_method  total_requests  success_requests  latency_sum
        0      t          a               2                 2           20
    """
    sums = SUMMARY_SUMS if kind == "summary" else GROUP_SUMS
    return pd.DataFrame(_combine(parts, ROLLUP_KEYS[kind], sums), copy=False)
