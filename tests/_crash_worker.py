"""Write operations run in a child process that the crash tests kill at chosen moments.

Usage: python tests/_crash_worker.py ROOT OP [N]   (ROOT may be a URL: see ``_workers``)

The fault point comes from the environment (USAGE_ANALYTICS_KILL_AT=point[:nth]); the child
SIGKILLs itself when it reaches it. ``loop`` runs N deterministic operations and logs each one
that returned, so a test that kills it at a random moment knows which states are possible.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from _workers import open_store

from usage_analytics import Store, _layout
from usage_analytics.schema import arrow_schema, columns_for_version

#: The merge fan-out the worker runs with, when set (see ``_layout.MERGE_FANOUT``).
FANOUT_ENV = "USAGE_ANALYTICS_TEST_MERGE_FANOUT"
DAY = 86_400 * 1_000_000_000
T0 = 20_400 * DAY  # 2025-11-08, midnight UTC


def batch(seed: int, days: tuple[int, ...] = (0, 1, 2), rows_per_day: int = 10) -> pd.DataFrame:
    """A deterministic batch with distinct keys (the seed picks the minute inside each day)."""
    rng = np.random.default_rng(seed)
    frames = []
    for day in days:
        ts = T0 + day * DAY + seed * 60_000_000_000 + np.arange(rows_per_day) * 1_000_000
        frames.append(
            pd.DataFrame(
                {
                    "user_id": [f"u{seed}-{i}" for i in range(rows_per_day)],
                    "tenant": rng.choice(["t0", "t1"], rows_per_day),
                    "api_method": rng.choice(["GetFoo", "UpdateFoo"], rows_per_day),
                    "status_code": rng.choice([200, 200, 404], rows_per_day).astype(np.int32),
                    "timestamp": ts.astype(np.int64),
                    "latency_ms": rng.integers(1, 500, rows_per_day).astype(np.int32),
                    "model_id": rng.choice(["m0", "m1"], rows_per_day),
                    "prompt_tokens": rng.integers(0, 100, rows_per_day).astype(np.int32),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def single_row(i: int, day: int = 4) -> dict[str, object]:
    """One row on ``day``; 32 of them on one day make the store merge their files."""
    return {"user_id": f"s{i}", "tenant": f"t{i % 2}", "timestamp": T0 + day * DAY + i}


def make_v1(root: Path) -> None:
    """A schema-version-1 dataset written with plain pyarrow and JSON, as version 1 wrote it."""
    root.mkdir()
    files = []
    frame = batch(3)
    frame["id"] = range(1, len(frame) + 1)
    frame["created_at"] = pd.Timestamp("2025-11-01", tz="UTC").as_unit("us")
    for c in columns_for_version(1):
        if c not in frame:
            frame[c] = "" if arrow_schema().field(c).type == pa.string() else 0
    for day, part in frame.groupby(frame["timestamp"] // DAY):
        date = str(pd.Timestamp(int(day) * DAY, unit="ns").date())
        rel = f"date={date}/{len(files):032x}.parquet"
        (root / rel).parent.mkdir()
        table = pa.Table.from_pandas(
            part[list(columns_for_version(1))], schema=arrow_schema(1), preserve_index=False
        )
        pq.write_table(table, root / rel)
        files.append(
            {
                "path": rel,
                "rows": len(part),
                "schema_version": 1,
                "stats": {
                    "timestamp": [int(part.timestamp.min()), int(part.timestamp.max())],
                    "id": [int(part.id.min()), int(part.id.max())],
                },
            }
        )
    manifest = {
        "format": "usage_analytics",
        "format_version": 1,
        "schema_version": 1,
        "version": 1,
        "txid": "0" * 32,
        "next_id": len(frame) + 1,
        "files": files,
    }
    (root / "_usage_analytics.json").write_text(json.dumps(manifest))


def run(store: Store, op: str) -> None:
    """One write operation against a dataset made by the tests' ``base`` fixture."""
    if op == "append":
        store.create_usage(batch(7, days=(1, 2, 3)))
    elif op == "append_merge":  # the 32nd single-row file of day 4: merges all of them
        store.create_usage(single_row(31))
    elif op == "delete":
        # Drops day 0 and rewrites the day-1 file of the first batch (half its rows go).
        store.delete_usage(T0 + DAY + 60_000_000_000 + 5_000_000)
    elif op == "delete_limit":
        store.delete_usage(T0 + 3 * DAY, limit=25)  # day 0 whole, the oldest 5 rows of day 1
    elif op == "compact":
        store.compact()
    elif op in ("upgrade", "migrate"):
        store.auto_migrate()
    elif op == "read":
        store.find_usages()
    else:
        raise SystemExit(f"unknown op {op!r}")


def loop_op(store: Store, i: int) -> None:
    """The i-th operation of the ``loop`` workload: mostly appends, some deletes and compactions."""
    if i % 5 == 3:
        store.delete_usage(T0 + (i // 5) * DAY + DAY // 3)
    elif i % 7 == 6:
        store.compact()
    else:
        store.create_usage(batch(100 + i, days=(i // 5, i // 5 + 1), rows_per_day=5))


def main() -> None:
    # Small batches get rollups and spans here, so that kills also land inside their writes.
    _layout.ROLLUP_MIN_ROWS = 1
    _layout.SUMMARY_MAX_RATIO = math.inf
    fanout = os.environ.get(FANOUT_ENV)
    if fanout:  # fewer small files make a merge (the object-storage matrix: fewer objects)
        _layout.MERGE_FANOUT, _layout.MERGE_BELOW_ROWS = int(fanout), int(fanout) ** 2
    root, op = sys.argv[1], sys.argv[2]
    store = open_store(root)
    if op == "loop":
        log = Path(root).parent / "done.log"
        for i in range(int(sys.argv[3])):
            loop_op(store, i)
            with open(log, "a") as fh:
                fh.write(f"{i}\n")
        return
    run(store, op)


if __name__ == "__main__":
    main()
