"""SQLite as the source system ran it: one ``usages`` table, its two indexes and its SQL.

The table holds the fifteen columns of the source system (schema version 1 of the store); the
two ``runtime_*`` columns added later by the store play no part in either report.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import pandas as pd

from usage_analytics.schema import columns_for_version

from ._engines import SPECS

__all__ = ["SQLITE_SQL", "SQLiteEngine", "load"]

#: The source system's columns (schema version 1 of the store) less those it sets itself.
_INSERTED: Final = columns_for_version(1)[2:]

CREATE_TABLE: Final = """
    CREATE TABLE usages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        organization TEXT NOT NULL,
        project TEXT NOT NULL,
        api_key_id TEXT NOT NULL,
        api_method TEXT NOT NULL,
        status_code INTEGER NOT NULL,
        "timestamp" INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        model_id TEXT NOT NULL,
        time_to_first_token_ms INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL
    )
"""
CREATE_INDEXES: Final = (
    'CREATE UNIQUE INDEX idx_user_ts ON usages(user_id, "timestamp")',
    'CREATE INDEX idx_tenant_ts ON usages(tenant, "timestamp")',
)

SQLITE_SQL: Final[dict[str, str]] = {
    "aggregated_usage": """
        SELECT api_method,
               COUNT(*) AS total_requests,
               SUM(CASE WHEN status_code = 200 THEN 1 ELSE 0 END) AS success_requests,
               SUM(CASE WHEN status_code = 200 THEN 0 ELSE 1 END) AS failure_requests,
               AVG(latency_ms) AS average_latency
        FROM usages
        WHERE tenant = ? AND "timestamp" >= ? AND "timestamp" < ?
        GROUP BY api_method
        ORDER BY api_method
    """,
    "get_usages_by_groups": """
        SELECT api_key_id, user_id, model_id,
               COUNT(*) AS total_requests,
               SUM(prompt_tokens) AS total_prompt_tokens,
               SUM(completion_tokens) AS total_completion_tokens,
               AVG(latency_ms) AS average_latency,
               AVG(time_to_first_token_ms) AS average_time_to_first_token
        FROM usages
        WHERE tenant = ? AND "timestamp" >= ? AND "timestamp" < ?
        GROUP BY api_key_id, user_id, model_id
        ORDER BY api_key_id, user_id, model_id
    """,
}


def load(path: Path, batches: Iterable[pd.DataFrame]) -> dict[str, float | int]:
    """Create the database at ``path`` with every row of ``batches``, then its indexes.

    Returns the row count and the seconds spent inserting and indexing (not benchmarked).
    """
    if path.exists():
        path.unlink()
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        con.execute(CREATE_TABLE)
        placeholders = ", ".join("?" for _ in range(len(_INSERTED) + 1))
        insert = f"INSERT INTO usages (created_at, {', '.join(_INSERTED)}) VALUES ({placeholders})"
        created_at = time.time_ns()
        rows = 0
        started = time.perf_counter()
        for batch in batches:
            frame = batch[list(_INSERTED)]
            con.executemany(
                insert,
                ((created_at, *row) for row in frame.itertuples(index=False, name=None)),
            )
            rows += len(frame)
        con.commit()
        inserted = time.perf_counter()
        for statement in CREATE_INDEXES:
            con.execute(statement)
        con.commit()
        indexed = time.perf_counter()
    finally:
        con.close()
    return {
        "rows": rows,
        "insert_s": inserted - started,
        "index_s": indexed - inserted,
        "bytes": path.stat().st_size,
    }


class SQLiteEngine:
    """The source system's SQL on the loaded file database, one connection reused."""

    def __init__(self, path: Path) -> None:
        self.con = sqlite3.connect(path)

    def run(self, query: str, tenant: str, start_ns: int, end_ns: int) -> pd.DataFrame:
        """Run ``query`` and fetch it as a DataFrame."""
        rows = self.con.execute(SQLITE_SQL[query], (tenant, int(start_ns), int(end_ns))).fetchall()
        return pd.DataFrame.from_records(rows, columns=list(SPECS[query].columns))

    def plan(self, query: str) -> list[str]:
        """SQLite's query plan of ``query`` (to show which index it uses)."""
        rows = self.con.execute("EXPLAIN QUERY PLAN " + SQLITE_SQL[query], ("", 0, 0)).fetchall()
        return [str(row[-1]) for row in rows]

    def close(self) -> None:
        """Close the connection."""
        self.con.close()
