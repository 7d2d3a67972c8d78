"""Shared helpers of the test suite: file snapshots, usage frame builders and reference reports."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from usage_analytics import COLUMNS, Store
from usage_analytics.cli import cli

NS_PER_DAY: Final = 86_400 * 1_000_000_000
#: Midnight UTC of 2026-11-01, in nanoseconds since the epoch.
DAY0: Final = int(pd.Timestamp("2026-11-01", tz="UTC").value)

EXPECTED_COLUMNS: Final = (
    "id",
    "created_at",
    "user_id",
    "tenant",
    "organization",
    "project",
    "api_key_id",
    "api_method",
    "status_code",
    "timestamp",
    "latency_ms",
    "model_id",
    "time_to_first_token_ms",
    "prompt_tokens",
    "completion_tokens",
    "runtime_latency_ms",
    "runtime_time_to_first_token_ms",
)
INPUT_COLUMNS: Final = EXPECTED_COLUMNS[2:]
STRING_COLUMNS: Final = (
    "user_id",
    "tenant",
    "organization",
    "project",
    "api_key_id",
    "api_method",
    "model_id",
)
INT32_COLUMNS: Final = (
    "status_code",
    "latency_ms",
    "time_to_first_token_ms",
    "prompt_tokens",
    "completion_tokens",
    "runtime_latency_ms",
    "runtime_time_to_first_token_ms",
)
STORED_DTYPES: Final[dict[str, str]] = {
    "id": "int64",
    "created_at": "datetime64[us, UTC]",
    **dict.fromkeys(STRING_COLUMNS, "str"),
    **dict.fromkeys(INT32_COLUMNS, "int32"),
    "timestamp": "int64",
}

SUMMARY_COLUMNS: Final = (
    "api_method",
    "total_requests",
    "success_requests",
    "failure_requests",
    "average_latency",
)
SUMMARY_DTYPES: Final[dict[str, str]] = {
    "api_method": "str",
    "total_requests": "int64",
    "success_requests": "int64",
    "failure_requests": "int64",
    "average_latency": "float64",
}
GROUP_KEYS: Final = ("api_key_id", "user_id", "model_id")
GROUP_COLUMNS: Final = (
    *GROUP_KEYS,
    "total_requests",
    "total_prompt_tokens",
    "total_completion_tokens",
    "average_latency",
    "average_time_to_first_token",
)
GROUP_DTYPES: Final[dict[str, str]] = {
    "api_key_id": "str",
    "user_id": "str",
    "model_id": "str",
    "total_requests": "int64",
    "total_prompt_tokens": "int64",
    "total_completion_tokens": "int64",
    "average_latency": "float64",
    "average_time_to_first_token": "float64",
}

PARTITION_RE: Final = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
METADATA_FILE: Final = "_usage_analytics.json"


def latest_commit(root: Path) -> Path:
    """The newest commit file of a dataset's log."""
    return max((root / "_delta_log").glob("*.json"))


def edit_latest_commit(root: Path, change: Callable[[list[dict[str, Any]]], None]) -> None:
    """Rewrite the newest commit of a dataset's log after ``change`` edited its actions (a
    list of ``{kind: body}``; the usage_analytics domain's configuration and each add's
    entry tag are given decoded, and encoded again)."""
    path = latest_commit(root)
    actions = [json.loads(line) for line in path.read_text().splitlines()]
    for action in actions:
        _code(action, json.loads)
    change(actions)
    for action in actions:
        _code(action, json.dumps)
    path.write_text("".join(json.dumps(a) + "\n" for a in actions))


def _code(action: Any, how: Callable[[Any], Any]) -> None:
    """Decode (or encode) the JSON text an action of a commit holds."""
    if not isinstance(action, dict):
        return
    domain, add = action.get("domainMetadata"), action.get("add")
    if isinstance(domain, dict) and "configuration" in domain and domain.get("removed") is not True:
        domain["configuration"] = how(domain["configuration"])
    if isinstance(add, dict) and "usage_analytics" in add.get("tags", {}):
        add["tags"]["usage_analytics"] = how(add["tags"]["usage_analytics"])


def dataset_state(root: Path) -> dict[str, Any]:
    """The usage_analytics state the newest commit records (txid, schema version, next id)."""
    for line in latest_commit(root).read_text().splitlines():
        action = json.loads(line)
        if action.get("domainMetadata", {}).get("domain") == "usage_analytics":
            return json.loads(action["domainMetadata"]["configuration"])  # type: ignore[no-any-return]
    raise AssertionError("the newest commit has no usage_analytics state")


def to_manifest_format(root: Path) -> None:
    """Turn a dataset into the older layout, whose manifest lists the live files (no log)."""
    snap = Store(root)._ds.snapshot()
    (root / METADATA_FILE).write_bytes(snap.to_bytes())
    shutil.rmtree(root / "_delta_log")


def small_files_get_summaries() -> Iterator[None]:
    """While it runs, small batches get summaries and spans, as large ones do (use it as an
    autouse fixture)."""
    from usage_analytics import _layout

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
        mp.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
        yield


def is_bookkeeping(rel: str) -> bool:
    """Whether a path under a dataset root is the dataset's own (marker, lock, commit log)."""
    return rel in {METADATA_FILE, "_usage_analytics.lock"} or rel.startswith("_delta_log/")


# -- files on disk ----------------------------------------------------------------------------


def snapshot_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` as ``{relative posix path: bytes}`` (empty when root is absent)."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def list_entries(root: Path) -> list[str]:
    """Every file and folder under ``root`` as sorted relative posix paths."""
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def partition_dirs(root: Path) -> list[str]:
    """The names of the partition folders directly under ``root``, sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and PARTITION_RE.match(p.name))


def data_files(root: Path) -> dict[str, list[str]]:
    """``{partition folder: sorted data file names}`` of the visible ``.parquet`` files."""
    out: dict[str, list[str]] = {}
    for part in partition_dirs(root):
        names = sorted(
            p.name
            for p in (root / part).iterdir()
            if p.is_file() and not p.name.startswith((".", "_"))
        )
        out[part] = names
    return out


def day_of(timestamp: int) -> str:
    """The UTC day of a nanosecond timestamp as ``YYYY-MM-DD``."""
    return pd.Timestamp(int(timestamp), unit="ns", tz="UTC").strftime("%Y-%m-%d")


# -- stores and frames -----------------------------------------------------------------------


def new_store(root: Path) -> Store:
    """A migrated store at ``root``."""
    store = Store(root)
    store.auto_migrate()
    return store


def usage_row(**values: Any) -> dict[str, Any]:
    """A complete input row: zero values for every column, overridden by ``values``."""
    row: dict[str, Any] = dict.fromkeys(STRING_COLUMNS, "") | dict.fromkeys(INT32_COLUMNS, 0)
    row["timestamp"] = 0
    row.update(values)
    return {name: row[name] for name in INPUT_COLUMNS} | {
        k: v for k, v in values.items() if k not in INPUT_COLUMNS
    }


def usage_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """A frame of complete input rows with the stored dtypes (missing values are zeros)."""
    full = [usage_row(**row) for row in rows]
    data: dict[str, Any] = {}
    for name in INPUT_COLUMNS:
        values = [row[name] for row in full]
        if name in STRING_COLUMNS:
            data[name] = pd.Series(values, dtype="str")
        elif name == "timestamp":
            data[name] = pd.Series(values, dtype=np.int64)
        else:
            data[name] = pd.Series(values, dtype=np.int32)
    return pd.DataFrame(data, index=pd.RangeIndex(len(full)))


def random_usage_frame(
    n: int,
    seed: int,
    *,
    start: int = DAY0,
    days: int = 5,
    tenants: Sequence[str] = ("t0", "t1", "t2"),
    methods: Sequence[str] = ("GetFoo", "ListBar", "UpdateFoo", "Ping"),
    users: int = 8,
    keys: int = 3,
    models: int = 3,
) -> pd.DataFrame:
    """``n`` random rows with unique ``(user_id, timestamp)`` keys spread over ``days`` days.

    Some timestamps fall exactly on midnight UTC so that day boundaries are exercised.
    """
    rng = np.random.default_rng(seed)
    span = days * NS_PER_DAY
    timestamps = rng.choice(span, size=n, replace=False).astype(np.int64) + start
    midnights = start + NS_PER_DAY * rng.integers(0, days, size=max(1, n // 20))
    timestamps[: len(midnights)] = midnights
    user_ids = np.array([f"u{i}" for i in rng.integers(0, users, size=n)], dtype=object)
    frame = pd.DataFrame(
        {
            "user_id": user_ids,
            "tenant": rng.choice(np.array(tenants, dtype=object), size=n),
            "organization": rng.choice(np.array(["org-a", "org-b", ""], dtype=object), size=n),
            "project": rng.choice(np.array(["p1", "p2"], dtype=object), size=n),
            "api_key_id": [f"key{i}" for i in rng.integers(0, keys, size=n)],
            "api_method": rng.choice(np.array(methods, dtype=object), size=n),
            "status_code": rng.choice(np.array([200, 200, 200, 201, 404, 500, 0]), size=n),
            "timestamp": timestamps,
            "latency_ms": rng.integers(0, 5_000, size=n),
            "model_id": [f"model{i}" for i in rng.integers(0, models, size=n)],
            "time_to_first_token_ms": rng.integers(0, 800, size=n),
            "prompt_tokens": rng.integers(0, 4_000, size=n),
            "completion_tokens": rng.integers(0, 2_000, size=n),
            "runtime_latency_ms": rng.integers(0, 5_000, size=n),
            "runtime_time_to_first_token_ms": rng.integers(0, 800, size=n),
        }
    )
    frame = frame.drop_duplicates(["user_id", "timestamp"]).reset_index(drop=True)
    return usage_frame(frame.to_dict("records"))


# -- reference reports -----------------------------------------------------------------------


def empty_summary() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=SUMMARY_DTYPES[c]) for c in SUMMARY_COLUMNS})


def empty_groups() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=GROUP_DTYPES[c]) for c in GROUP_COLUMNS})


def _window(rows: pd.DataFrame, tenant: str, start: int, end: int) -> pd.DataFrame:
    keep = (rows["tenant"] == tenant) & (rows["timestamp"] >= start) & (rows["timestamp"] < end)
    return rows.loc[keep]


def reference_summary(rows: pd.DataFrame, tenant: str, start: int, end: int) -> pd.DataFrame:
    """``aggregated_usage`` computed with plain pandas over stored rows."""
    sel = _window(rows, tenant, start, end)
    if sel.empty:
        return empty_summary()
    work = pd.DataFrame(
        {
            "api_method": sel["api_method"].astype(object),
            "ok": (sel["status_code"] == 200).astype(np.int64),
            "latency": sel["latency_ms"].astype(np.float64),
        }
    )
    grouped = work.groupby("api_method", sort=True)
    total = grouped.size()
    ok = grouped["ok"].sum()
    out = pd.DataFrame(
        {
            "api_method": pd.Series(list(total.index), dtype="str"),
            "total_requests": total.to_numpy(dtype=np.int64),
            "success_requests": ok.to_numpy(dtype=np.int64),
            "failure_requests": (total - ok).to_numpy(dtype=np.int64),
            "average_latency": grouped["latency"].mean().to_numpy(dtype=np.float64),
        }
    )
    return out.sort_values("api_method", kind="stable").reset_index(drop=True)


def reference_groups(rows: pd.DataFrame, tenant: str, start: int, end: int) -> pd.DataFrame:
    """``get_usages_by_groups`` computed with plain pandas over stored rows."""
    sel = _window(rows, tenant, start, end)
    if sel.empty:
        return empty_groups()
    work = sel[list(GROUP_KEYS)].astype(object)
    work = work.assign(
        prompt=sel["prompt_tokens"].astype(np.int64),
        completion=sel["completion_tokens"].astype(np.int64),
        latency=sel["latency_ms"].astype(np.float64),
        ttft=sel["time_to_first_token_ms"].astype(np.float64),
    )
    agg = (
        work.groupby(list(GROUP_KEYS), sort=True)
        .agg(
            total_requests=("prompt", "size"),
            total_prompt_tokens=("prompt", "sum"),
            total_completion_tokens=("completion", "sum"),
            average_latency=("latency", "mean"),
            average_time_to_first_token=("ttft", "mean"),
        )
        .reset_index()
    )
    out = pd.DataFrame({c: agg[c] for c in GROUP_COLUMNS}).astype(GROUP_DTYPES)
    return out.sort_values(list(GROUP_KEYS), kind="stable").reset_index(drop=True)


def assert_report_equal(actual: pd.DataFrame, expected: pd.DataFrame, rtol: float = 1e-12) -> None:
    """Same columns, dtypes and index; non-float columns exactly equal, floats within ``rtol``."""
    assert list(actual.columns) == list(expected.columns)
    assert actual.dtypes.to_dict() == expected.dtypes.to_dict()
    pd.testing.assert_index_equal(actual.index, pd.RangeIndex(len(expected)))
    for name in expected.columns:
        if expected[name].dtype == np.float64:
            np.testing.assert_allclose(
                actual[name].to_numpy(), expected[name].to_numpy(), rtol=rtol, atol=0
            )
        else:
            assert actual[name].tolist() == expected[name].tolist(), name


def assert_stored_dtypes(frame: pd.DataFrame) -> None:
    """``frame`` has exactly the stored columns, in order, with the stored dtypes."""
    assert tuple(frame.columns) == EXPECTED_COLUMNS
    for name in EXPECTED_COLUMNS:
        assert frame[name].dtype == STORED_DTYPES[name], (name, frame[name].dtype)


def stored_input_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The caller-provided columns of stored rows, with a fresh index."""
    return frame[list(INPUT_COLUMNS)].reset_index(drop=True)


__all__ = [
    "COLUMNS",
    "DAY0",
    "EXPECTED_COLUMNS",
    "GROUP_COLUMNS",
    "GROUP_DTYPES",
    "GROUP_KEYS",
    "INPUT_COLUMNS",
    "INT32_COLUMNS",
    "METADATA_FILE",
    "NS_PER_DAY",
    "PARTITION_RE",
    "STORED_DTYPES",
    "STRING_COLUMNS",
    "SUMMARY_COLUMNS",
    "SUMMARY_DTYPES",
    "assert_report_equal",
    "assert_stored_dtypes",
    "data_files",
    "dataset_state",
    "day_of",
    "edit_latest_commit",
    "empty_groups",
    "empty_summary",
    "is_bookkeeping",
    "latest_commit",
    "list_entries",
    "new_store",
    "partition_dirs",
    "random_usage_frame",
    "reference_groups",
    "reference_summary",
    "small_files_get_summaries",
    "snapshot_files",
    "stored_input_columns",
    "to_manifest_format",
    "usage_frame",
    "usage_row",
]


# -- the command line -------------------------------------------------------------------------


def cli_invoke(*args: object) -> Result:
    """Run the command line in-process (click's CliRunner), arguments as text."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def cli_ok(*args: object) -> str:
    """stdout of a command that must succeed and print nothing on stderr."""
    result = cli_invoke(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.stderr == ""
    return result.stdout


def cli_fails(code: int, *args: object) -> str:
    """stderr of a command that must fail with ``code`` and print nothing on stdout."""
    result = cli_invoke(*args)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    if code == 1:
        assert result.stderr.startswith("usage-analytics: error: ")
        assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr
