"""Fault points: named steps of a write and of recovery, where tests interrupt the store.

Tests arm them to prove that an interruption at any step is recovered: the environment variable
kills the process (SIGKILL) at the named point, and ``FAULT_HOOK`` lets an in-process test raise
an I/O error there.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["FAULT_ENV", "FAULT_POINTS", "fault"]

FAULT_ENV: Final = "USAGE_ANALYTICS_KILL_AT"
FAULT_HOOK: Callable[[str], None] | None = None
_fault_counts: dict[str, int] = {}
_fault_lock = threading.Lock()  # commits reach fault points from two threads


def fault(point: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if spec:
        name, _, nth = spec.partition(":")
        if name == point:
            with _fault_lock:
                _fault_counts[point] = _fault_counts.get(point, 0) + 1
                reached = _fault_counts[point] >= int(nth or 1)
            if reached:
                os.kill(os.getpid(), signal.SIGKILL)
    if FAULT_HOOK is not None:
        FAULT_HOOK(point)


#: Every fault point, in the order a write or a recovery reaches them.
FAULT_POINTS: Final = (
    "journal_tmp_written",
    "journal_written",
    "data_tmp_written",
    "data_renamed",
    "commit_tmp_written",
    "marker_tmp_written",
    "committed",
    "file_removed",
    "cleanup_done",
    "recovery_file_removed",
    "recovery_done",
)
