"""usage_analytics: keep and analyse API and LLM usage records with pandas.

Rows live in a date-partitioned Parquet dataset (``date=YYYY-MM-DD/`` folders) that pyarrow,
DuckDB, Polars, Spark and Dask read as it is; the schema is enforced with Pandera, and reports are
pandas group-bys.

Example:
    >>> from usage_analytics import Store
    >>> store = Store("data/sample")
    >>> store.aggregated_usage("tenant-000", "2026-11-01", "2026-11-15").shape[1]
    5
"""

from __future__ import annotations

import pyarrow as _pa

_MIN_PYARROW = (14, 0, 1)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts)


if _version_tuple(_pa.__version__) < _MIN_PYARROW:  # pragma: no cover - install-time guard
    raise ImportError(
        f"usage_analytics needs pyarrow >= 14.0.1 (older versions can run code from crafted "
        f"Parquet files, CVE-2023-47248); found pyarrow {_pa.__version__}. "
        "Run: pip install -U 'pyarrow>=14.0.1'"
    )

from .errors import (  # noqa: E402
    ConcurrentWriteError,
    CorruptDatasetError,
    DatasetChangedError,
    DatasetNotInitializedError,
    DuplicateUsageError,
    IncompatibleDatasetError,
    InvalidArgumentError,
    LockTimeoutError,
    MissingPriceError,
    StorageError,
    UsageAnalyticsError,
    ValidationError,
)
from .ingest import LoadResult, load_files, read_usage_file  # noqa: E402
from .records import Summary, Usage, UsageByGroup  # noqa: E402
from .reports import DIMENSIONS, Not, Prices  # noqa: E402
from .schema import COLUMNS, SCHEMA_VERSION, UsageSchema  # noqa: E402
from .store import DatasetInfo, Store  # noqa: E402

__version__ = "0.6.0"

__all__ = [
    "COLUMNS",
    "DIMENSIONS",
    "SCHEMA_VERSION",
    "ConcurrentWriteError",
    "CorruptDatasetError",
    "DatasetChangedError",
    "DatasetInfo",
    "DatasetNotInitializedError",
    "DuplicateUsageError",
    "IncompatibleDatasetError",
    "InvalidArgumentError",
    "LoadResult",
    "LockTimeoutError",
    "MissingPriceError",
    "Not",
    "Prices",
    "StorageError",
    "Store",
    "Summary",
    "Usage",
    "UsageAnalyticsError",
    "UsageByGroup",
    "UsageSchema",
    "ValidationError",
    "__version__",
    "load_files",
    "read_usage_file",
]
