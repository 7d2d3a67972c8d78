"""Record types: one usage row, and the two kinds of report rows.

Each has ``from_frame`` to turn a frame returned by :class:`~usage_analytics.Store` into a list of
records, for code that prefers objects to frames.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any, Self

import pandas as pd

from .errors import InvalidArgumentError

__all__ = ["Summary", "Usage", "UsageByGroup"]


def _py(value: Any) -> Any:
    """Plain Python scalars for numpy/pandas ones (Timestamps stay Timestamps)."""
    if isinstance(value, pd.Timestamp):
        return value
    return value.item() if hasattr(value, "item") else value


class _FromFrame:
    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> list[Self]:
        """One record per row of ``df``; the frame must have a column for every field.

        Example:
            >>> Summary.from_frame(pd.DataFrame({"api_method": ["GetFoo"],
            ...     "total_requests": [3], "success_requests": [2], "failure_requests": [1],
            ...     "average_latency": [150.0]}))
            [Summary(api_method='GetFoo', total_requests=3, success_requests=2, failure_requests=1, average_latency=150.0)]
        """  # noqa: E501
        if not isinstance(df, pd.DataFrame):
            raise InvalidArgumentError(
                f"{cls.__name__}.from_frame takes a DataFrame, not {type(df).__name__}"
            )
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        missing = [n for n in names if n not in df.columns]
        if missing:
            raise InvalidArgumentError(
                f"{cls.__name__}.from_frame: the frame lacks columns {missing}"
            )
        columns = [df[n].tolist() for n in names]
        rows = zip(*columns, strict=True)
        return [cls(**{n: _py(v) for n, v in zip(names, row, strict=True)}) for row in rows]


@dataclass(kw_only=True)
class Usage(_FromFrame):
    """One API call. ``timestamp`` is required: int nanoseconds since the Unix epoch (UTC),
    a datetime or ``pd.Timestamp`` (naive ones are UTC), or an ISO 8601 text such as
    ``"2026-11-02T10:00:00Z"`` or ``"2026-11-02T11:00:00+01:00"``; the store keeps int
    nanoseconds. ``id`` and ``created_at`` are set by the store and ignored on input.

    Example:
        >>> Usage(user_id="u0", tenant="t0", api_method="GetFoo", status_code=200,
        ...       timestamp="2026-11-02T10:00:00Z", latency_ms=100).model_id
        ''
    """

    id: int | None = None
    created_at: pd.Timestamp | None = None
    user_id: str = ""
    tenant: str = ""
    organization: str = ""
    project: str = ""
    api_key_id: str = ""
    api_method: str = ""
    status_code: int = 0
    timestamp: int | str | dt.datetime | pd.Timestamp
    latency_ms: int = 0
    model_id: str = ""
    time_to_first_token_ms: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    runtime_latency_ms: int = 0
    runtime_time_to_first_token_ms: int = 0


@dataclass(kw_only=True)
class Summary(_FromFrame):
    """Requests of one API method in a tenant's time window (:meth:`Store.aggregated_usage`)."""

    api_method: str
    total_requests: int
    success_requests: int
    failure_requests: int
    average_latency: float


@dataclass(kw_only=True)
class UsageByGroup(_FromFrame):
    """Usage of one (API key, user, model) group (:meth:`Store.get_usages_by_groups`)."""

    api_key_id: str
    user_id: str
    model_id: str
    total_requests: int
    total_prompt_tokens: int
    total_completion_tokens: int
    average_latency: float
    average_time_to_first_token: float
