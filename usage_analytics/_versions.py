"""Opening a dataset (checking ``Store``'s arguments) and its history: the commits kept, the
version a ``Store(root, as_of=...)`` reads, the retention of removed files, and vacuum."""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ._storage import Dataset, history
from ._storage.objects import ObjectDataset, is_url, open_filesystem
from ._validation import age_ns, to_ns
from .errors import InvalidArgumentError
from .schema import ADDED_IN_V2, SCHEMA_VERSION, arrow_schema, columns_for_version

__all__ = ["history_frame", "open_dataset", "to_seconds"]


def open_dataset(root: Any, lock_timeout: Any, as_of: Any, storage_options: Any) -> Dataset:
    """The dataset of ``Store(root, lock_timeout=..., as_of=..., storage_options=...)``, its
    arguments checked."""
    if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, int | float):
        raise InvalidArgumentError(f"lock_timeout must be seconds, not {lock_timeout!r}")
    if math.isnan(lock_timeout) or lock_timeout < 0:
        raise InvalidArgumentError(
            f"lock_timeout must be seconds >= 0 (math.inf: wait as long as it takes), not "
            f"{lock_timeout!r}"
        )
    if not isinstance(root, str | os.PathLike):
        raise InvalidArgumentError(
            f"root must be a path (str or os.PathLike), not {type(root).__name__} ({root!r})"
        )
    if storage_options is not None and not isinstance(storage_options, dict):
        raise InvalidArgumentError(
            f"storage_options must be a dict of the filesystem's options, not {storage_options!r}"
        )
    settings: dict[str, Any] = dict(
        schema_version=SCHEMA_VERSION,
        columns_for_version=columns_for_version,
        schema_for_version=arrow_schema,
        fill_values={name: pa.scalar(0, pa.int32()) for name in ADDED_IN_V2},
        stats_columns=("timestamp", "id"),
        pruned_by=("tenant", "timestamp"),
        lock_timeout=float(lock_timeout),
    )
    if isinstance(root, str) and root.startswith(("file://", "local://")):
        root = root.partition("://")[2]  # a local folder: file:///data/usage is /data/usage
    if isinstance(root, str) and is_url(root):
        fs, path = open_filesystem(root, storage_options)
        url = root.rstrip("/")
        if url.endswith(":"):  # the top of the filesystem, as memory:// is
            url += "//"
        ds: Dataset = ObjectDataset(fs, path, url, storage_options, **settings)
    elif storage_options:
        raise InvalidArgumentError(
            f"storage_options are for a root on object storage (a URL such as s3://bucket/x), "
            f"not for the local folder {root!r}"
        )
    else:
        ds = Dataset(Path(os.fspath(root)), **settings)
    if as_of is not None:
        ds.as_of = _as_of(as_of)
    return ds


def _as_of(value: Any) -> tuple[int | None, int | None]:
    """A commit version (an int, also numpy's, as ``history()`` gives them), or a time (ISO
    8601 text, datetime, pd.Timestamp) in ms."""
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, int | pd.Timestamp | dt.datetime | str) and not isinstance(value, bool):
        if isinstance(value, int):
            if value < 0:
                raise InvalidArgumentError(f"as_of must be a version >= 0, not {value}")
            return value, None
        return None, to_ns(value, "as_of") // 1_000_000
    raise InvalidArgumentError(
        f"as_of must be a commit version (int) or a time (ISO 8601 text, datetime, Timestamp), "
        f"not {type(value).__name__} ({value!r})"
    )


def to_seconds(value: Any, what: str) -> int:
    """A duration: a ``timedelta``, whole seconds, or an age such as ``"7d"`` or ``"12h"``."""
    seconds: float | None = None
    if isinstance(value, dt.timedelta | pd.Timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (ns := age_ns(value)) is not None:
        seconds = ns // 10**9
    if seconds is None or seconds < 0 or seconds != int(seconds):
        raise InvalidArgumentError(
            f"{what} must be a duration >= 0 in whole seconds: a timedelta, an int of seconds, "
            f"or an age such as '7d' or '12h' (units s, min or m, h, d, w), not {value!r}"
        )
    return int(seconds)


def history_frame(ds: Dataset) -> pd.DataFrame:
    """One row per commit the log keeps: version, time (UTC) and operation."""
    ds.snapshot()  # a damaged or missing log is an error here as in every read
    rows = history.commits(ds._log) if ds._log.exists() else []
    return pd.DataFrame(
        {
            "version": pd.Series([r["version"] for r in rows], dtype="int64"),
            "time": pd.to_datetime([r["timestamp"] for r in rows], unit="ms", utc=True),
            "operation": pd.Series([r["operation"] for r in rows], dtype=object),
        }
    )


def set_retention(ds: Dataset, seconds: int) -> None:
    with ds.transaction() as tx:
        tx.retention = seconds
        tx.operation = "SET TBLPROPERTIES"
        tx.commit()


def vacuum(ds: Dataset, retention: Any, dry_run: Any) -> list[Path] | list[str]:
    if not isinstance(dry_run, bool):
        raise InvalidArgumentError(f"dry_run must be True or False, not {dry_run!r}")
    seconds = None if retention is None else to_seconds(retention, "retention")
    removed = history.vacuum(ds, seconds, dry_run=dry_run)
    if ds.filesystem is not None:  # object storage: URLs
        return [f"{ds.where}/{rel}" for rel in removed]
    return [ds.root / rel for rel in removed]
