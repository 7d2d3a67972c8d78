"""The source system's reports as presets of the engine: which report each one is, and how its
columns are named.

- ``aggregated_usage``: per API method, requests, successes, failures and the mean latency;
- ``get_usages_by_groups``: per (API key, user, model), requests, token sums and mean latency
  and time to first token (later versions leave out rows without a model);
- ``model_usage_summaries``: per bucket and model, requests and token sums, every model seen in
  the window in every bucket (``ListModelUsageSummaries``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["GROUPS", "MODELS", "SUMMARY", "Preset"]


@dataclass(frozen=True)
class Preset:
    """A report of the engine with the column names of the source system."""

    by: tuple[str, ...]
    metrics: tuple[str, ...]
    names: Mapping[str, str]  # engine column -> preset column

    def report_args(self, **more: Any) -> dict[str, Any]:
        """The keywords of :meth:`Store.report` for this preset (and ``more``)."""
        return {"by": self.by, "metrics": self.metrics, **more}


SUMMARY: Final = Preset(
    ("api_method",),
    ("requests", "success_requests", "failure_requests", "latency_ms_mean"),
    {"requests": "total_requests", "latency_ms_mean": "average_latency"},
)
GROUPS: Final = Preset(
    ("api_key_id", "user_id", "model_id"),
    (
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms_mean",
        "time_to_first_token_ms_mean",
    ),
    {
        "requests": "total_requests",
        "prompt_tokens": "total_prompt_tokens",
        "completion_tokens": "total_completion_tokens",
        "latency_ms_mean": "average_latency",
        "time_to_first_token_ms_mean": "average_time_to_first_token",
    },
)
MODELS: Final = Preset(
    ("model_id",),
    ("requests", "prompt_tokens", "completion_tokens"),
    {
        "requests": "total_requests",
        "prompt_tokens": "total_prompt_tokens",
        "completion_tokens": "total_completion_tokens",
    },
)
