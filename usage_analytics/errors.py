"""Errors raised by usage_analytics.

Every error derives from :class:`UsageAnalyticsError`, so a batch job can catch one class. Errors
about bad input also derive from :class:`ValueError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ConcurrentWriteError",
    "CorruptDatasetError",
    "DatasetChangedError",
    "DatasetNotInitializedError",
    "DuplicateUsageError",
    "IncompatibleDatasetError",
    "InvalidArgumentError",
    "LockTimeoutError",
    "MissingPriceError",
    "StorageError",
    "UsageAnalyticsError",
    "ValidationError",
]


class UsageAnalyticsError(Exception):
    """Base class of every error raised by usage_analytics."""


class InvalidArgumentError(UsageAnalyticsError, ValueError):
    """An argument has a wrong type or value (a bad time bound, a negative limit, ...)."""


class ValidationError(UsageAnalyticsError, ValueError):
    """A batch of usage rows broke the schema; nothing was written.

    Attributes:
        failure_cases: pandera's failure-case frame, one row per failing value or column
            (columns ``schema_context``, ``column``, ``check``, ``check_number``,
            ``failure_case``, ``index``).
    """

    def __init__(self, message: str, failure_cases: pd.DataFrame) -> None:
        super().__init__(message)
        self.failure_cases = failure_cases


class DuplicateUsageError(UsageAnalyticsError, ValueError):
    """A batch repeats a ``(user_id, timestamp)`` key; nothing was written.

    Attributes:
        keys: a frame with columns ``user_id`` and ``timestamp`` listing the repeated keys.
    """

    def __init__(self, message: str, keys: pd.DataFrame) -> None:
        super().__init__(message)
        self.keys = keys


class DatasetChangedError(UsageAnalyticsError):
    """A later write removed a file that a streaming read had not reached yet; start the read
    again (it then reads the newest state)."""


class DatasetNotInitializedError(UsageAnalyticsError):
    """The root holds no dataset yet: call ``Store.auto_migrate()`` first."""


class IncompatibleDatasetError(UsageAnalyticsError):
    """The dataset was written by a newer or unknown version of the format or schema."""


class CorruptDatasetError(UsageAnalyticsError):
    """A file the dataset relies on is missing, damaged, a symbolic link, or points outside
    the root; the message names the file and what is wrong with it."""


class ConcurrentWriteError(UsageAnalyticsError):
    """On object storage, another writer's commit conflicted with this write's (both
    removed the same files, or added rows with the same keys); nothing was written. Run the
    write again: it then starts from the newer state."""


class LockTimeoutError(UsageAnalyticsError, TimeoutError):
    """Another writer held the dataset's lock for longer than the timeout."""


class StorageError(UsageAnalyticsError, OSError):
    """The filesystem refused or failed an operation: no space or an I/O error during a write
    (the write was rolled back), a read-only filesystem, or missing permissions. ``errno``
    holds the operating system's error number."""


class MissingPriceError(UsageAnalyticsError, ValueError):
    """A cost report met tokens of models that the price table has no price in force for.

    Attributes:
        models: the model ids without a price, sorted.
    """

    def __init__(self, message: str, models: list[str]) -> None:
        super().__init__(message)
        self.models = models
