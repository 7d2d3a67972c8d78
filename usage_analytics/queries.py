"""The two reports as pandas group-bys, split into exact partial aggregates and their combination.

A *partial* holds, per group, integer counts and sums of the rows it has seen. Partials of disjoint
sets of rows combine exactly by adding them up, so a report over many partitions is computed one
partition at a time and the averages are derived once, at the end, from the summed totals (never
averaged again). Nothing here knows about files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    "rollups",
    "summary_partial",
]

SUCCESS_STATUS: Final = 200

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


def _partial(
    keys: Sequence[str], key_frame: pd.DataFrame, sums: dict[str, np.ndarray]
) -> pd.DataFrame:
    work = pd.DataFrame({k: key_frame[k] for k in keys})
    for name, values in sums.items():
        work[name] = values
    out = work.groupby(list(keys), observed=True, sort=False, as_index=False).sum()
    for k in keys:
        out[k] = out[k].astype("str")
    return out


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
    return _partial(
        keys,
        df,
        {
            "total_requests": np.ones(n, dtype=np.int64),
            "success_requests": (df["status_code"].to_numpy() == SUCCESS_STATUS).astype(np.int64),
            "latency_sum": df["latency_ms"].to_numpy(dtype=np.int64),
        },
    )


def groups_partial(df: pd.DataFrame, keys: Sequence[str] = GROUP_KEYS) -> pd.DataFrame:
    """Per ``keys``: requests and the sums of tokens, latency and time to first token."""
    return _partial(
        keys,
        df,
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
) -> pd.DataFrame:
    parts = [p for p in partials if len(p)]
    if not parts:
        return pd.DataFrame(
            {k: pd.Series([], dtype="str") for k in keys}
            | {s: pd.Series([], dtype=np.int64) for s in sums}
        )
    both = pd.concat([p[[*keys, *sums]] for p in parts], ignore_index=True)
    out = both.groupby(list(keys), sort=True, as_index=False).sum()
    for k in keys:
        out[k] = out[k].astype("str")
    for s in sums:
        out[s] = out[s].astype(np.int64)
    return out


def _mean(total: pd.Series, count: pd.Series) -> np.ndarray:
    out: np.ndarray = total.to_numpy(dtype=np.float64) / count.to_numpy(dtype=np.float64)
    return out


def finish_summary(partials: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Combine summary partials into the ``aggregated_usage`` frame, sorted by ``api_method``."""
    t = _combine(partials, SUMMARY_KEYS, SUMMARY_SUMS)
    return pd.DataFrame(
        {
            "api_method": t["api_method"],
            "total_requests": t["total_requests"],
            "success_requests": t["success_requests"],
            "failure_requests": t["total_requests"] - t["success_requests"],
            "average_latency": _mean(t["latency_sum"], t["total_requests"]),
        }
    ).reset_index(drop=True)


def finish_groups(partials: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Combine group partials into the ``get_usages_by_groups`` frame, sorted by the keys."""
    t = _combine(partials, GROUP_KEYS, GROUP_SUMS)
    return pd.DataFrame(
        {
            "api_key_id": t["api_key_id"],
            "user_id": t["user_id"],
            "model_id": t["model_id"],
            "total_requests": t["total_requests"],
            "total_prompt_tokens": t["total_prompt_tokens"],
            "total_completion_tokens": t["total_completion_tokens"],
            "average_latency": _mean(t["latency_sum"], t["total_requests"]),
            "average_time_to_first_token": _mean(t["ttft_sum"], t["total_requests"]),
        }
    ).reset_index(drop=True)


#: Rollups: the partials of each report per tenant, kept beside each data file so that a
#: window covering the whole file reads them instead of its rows.
ROLLUP_KEYS: Final = {"summary": ("tenant", *SUMMARY_KEYS), "groups": ("tenant", *GROUP_KEYS)}
ROLLUP_INPUT_COLUMNS: Final = tuple(
    dict.fromkeys(("tenant", *SUMMARY_INPUT_COLUMNS, *GROUP_INPUT_COLUMNS))
)


def rollups(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Both reports' partials per tenant, sorted by tenant.

    Example:
        >>> df = pd.DataFrame({"tenant": ["t1", "t0"], "api_method": ["a", "a"],
        ...     "status_code": [200, 404], "latency_ms": [10, 20], "api_key_id": ["k", "k"],
        ...     "user_id": ["u", "u"], "model_id": ["m", "m"], "prompt_tokens": [1, 2],
        ...     "completion_tokens": [3, 4], "time_to_first_token_ms": [5, 6]})
        >>> rollups(df)["summary"]
          tenant api_method  total_requests  success_requests  latency_sum
        0     t0          a               1                 0           20
        1     t1          a               1                 1           10
    """
    out = {
        "summary": summary_partial(df, ROLLUP_KEYS["summary"]),
        "groups": groups_partial(df, ROLLUP_KEYS["groups"]),
    }
    return {
        kind: frame.sort_values(list(ROLLUP_KEYS[kind]), kind="stable").reset_index(drop=True)
        for kind, frame in out.items()
    }


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
    return _combine(parts, ROLLUP_KEYS[kind], sums)
