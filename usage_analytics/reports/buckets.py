"""Calendar buckets in a time zone: where each bucket of a report window starts.

Buckets follow the wall clock of the zone. A day runs from local midnight to the next (23 or 25
hours on the days clocks change), a week from Monday 00:00, a month from the 1st. A bucket of
minutes or hours is a slice of the local wall clock; where the clock changes inside one, it is
cut at the change, so the hour repeated when clocks go back gives two buckets, told apart by
their UTC offset, and zones with half- and quarter-hour offsets (Asia/Kolkata, Asia/Kathmandu,
Australia/Lord_Howe) slice their own wall clock.

Bucket starts are computed once per report, for the whole window, as int64 nanoseconds: a row's
bucket is then one binary search, and an empty bucket is one that no row falls in.

Example:
    >>> start, end = pd.Timestamp("2025-11-02 04:00Z"), pd.Timestamp("2025-11-04 05:00Z")
    >>> b = Buckets.of("1d", "America/New_York", start.value, end.value)
    >>> [str(t) for t in b.labels()]  # clocks went back on 2025-11-02: a 25-hour day
    ['2025-11-02 00:00:00-04:00', '2025-11-03 00:00:00-05:00']
"""

from __future__ import annotations

import difflib
import functools
import zoneinfo
from dataclasses import dataclass
from typing import Final, NoReturn

import numpy as np
import pandas as pd

from ..errors import InvalidArgumentError

__all__ = ["EVERY", "MAX_BUCKETS", "Buckets", "check_end", "check_zone"]

_S: Final = 10**9
_MINUTE: Final = 60 * _S
_HOUR: Final = 3600 * _S
_DAY: Final = 24 * _HOUR
#: Bucket widths: a fixed slice of the wall clock (ns), or a calendar unit.
EVERY: Final[dict[str, int | str]] = {
    "1min": 60 * _S,
    "5min": 300 * _S,
    "15min": 900 * _S,
    "1h": _HOUR,
    "1d": "D",
    "1w": "W",
    "1mo": "M",
}
_NOMINAL: Final = {"D": _DAY, "W": 7 * _DAY, "M": 28 * _DAY}
#: A report over more buckets than this is refused (a dense result holds every bucket).
MAX_BUCKETS: Final = 1_000_000
#: Labels are pandas Timestamps, which end in April 2262: buckets must start before this.
LAST_START: Final = int(pd.Timestamp("2262-04-09", tz="UTC").value)


@functools.cache
def check_zone(tz: object) -> str:
    """``tz`` if it names an IANA time zone.

    Raises:
        InvalidArgumentError: it does not.
    """
    if not isinstance(tz, str):
        raise InvalidArgumentError(
            f"tz must be an IANA zone name such as 'Europe/Berlin', not {type(tz).__name__} "
            f"({tz!r})"
        )
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        zones = sorted(zoneinfo.available_timezones())
        close = difflib.get_close_matches(tz, zones, n=3) or difflib.get_close_matches(
            tz.replace(" ", "_").title(), zones, n=3
        )
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise InvalidArgumentError(
            f"tz {tz!r} is not an IANA time zone{hint} (zoneinfo.available_timezones() lists "
            "them; 'UTC' for UTC)"
        ) from None
    return tz


def _offsets(tz: str, instants: np.ndarray) -> np.ndarray:
    """The UTC offset of ``tz`` at each instant (int64 ns), in ns."""
    index = pd.DatetimeIndex(instants.astype("M8[ns]")).tz_localize("UTC").tz_convert(tz)
    wall = index.tz_localize(None).asi8
    return np.asarray(wall - instants, dtype=np.int64)


def _transitions(tz: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """The instants in (lo, hi) where the offset of ``tz`` changes, and the offset from each.

    Offsets are sampled every hour, then every minute of each hour that holds a change, then
    every second of the minute (zones change at whole seconds, never twice within an hour):
    three lookups of the zone's offsets in all.
    """
    start = lo - lo % _HOUR
    samples = np.arange(start, hi + _HOUR, _HOUR, dtype=np.int64)
    offsets = _offsets(tz, samples)
    changed = np.flatnonzero(offsets[1:] != offsets[:-1])
    if not len(changed):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    last_old = samples[changed]  # the last instant seen with the old offset
    old = offsets[changed]
    for step in (_MINUTE, _S):
        grid = last_old[:, None] + step * np.arange(1, 61, dtype=np.int64)[None, :]
        same = _offsets(tz, grid.ravel()).reshape(grid.shape) == old[:, None]
        last_old = last_old + step * same.sum(axis=1)  # the old offset holds up to the change
    after = last_old + _S
    inside = (after > lo) & (after < hi)
    return after[inside], _offsets(tz, after[inside])


@dataclass(frozen=True)
class Buckets:
    """The buckets of ``every`` in ``tz`` that the window ``[lo, hi)`` touches."""

    every: str
    tz: str
    starts: np.ndarray  # int64 ns, ascending; starts[0] <= lo

    @classmethod
    def of(cls, every: str, tz: str, lo: int, hi: int) -> Buckets:
        """The buckets of a window (``lo < hi``).

        Raises:
            InvalidArgumentError: the window holds more than ``MAX_BUCKETS`` buckets, or ends
                past the last bucket start pandas can label.
        """
        check_end(hi)
        width = EVERY[every]
        nominal = width if isinstance(width, int) else _NOMINAL[width]
        at_least = -(-(hi - lo) // nominal)  # no fewer buckets than this touch the window
        if at_least > MAX_BUCKETS:
            _too_many(at_least, every)
        if isinstance(width, int):
            starts = _wall_slices(tz, width, lo, hi)
        else:
            starts = _calendar(tz, width, lo, hi)
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        starts = starts[max(first, 0) :]
        if len(starts) > MAX_BUCKETS:
            _too_many(len(starts), every)
        return cls(every, tz, starts)

    def __len__(self) -> int:
        return len(self.starts)

    def index(self, timestamps: np.ndarray) -> np.ndarray:
        """The bucket of each timestamp (all inside the window), as int32."""
        at = np.searchsorted(self.starts, timestamps, side="right") - 1
        return np.asarray(at, dtype=np.int32)

    def same_bucket(self, first: int, last: int) -> bool:
        """Whether the instants ``first`` and ``last`` fall into one bucket."""
        a, b = np.searchsorted(self.starts, [first, last], side="right")
        return bool(a == b)

    def labels(self) -> pd.DatetimeIndex:
        """The start of each bucket, tz-aware in ``tz``."""
        return pd.DatetimeIndex(self.starts.astype("M8[ns]")).tz_localize("UTC").tz_convert(self.tz)


def check_end(hi: int) -> None:
    """Refuse a window with buckets that would end past the last label pandas can show.

    Raises:
        InvalidArgumentError: ``hi`` is past 2262-04-09.
    """
    if hi > LAST_START:
        raise InvalidArgumentError(
            "a report with every= must end by 2262-04-09 (bucket labels are pandas "
            f"Timestamps), not at {hi} ns: give an earlier end"
        )


def _too_many(n: int, every: str) -> NoReturn:
    raise InvalidArgumentError(
        f"the window holds {n:,} buckets of every={every!r}; at most {MAX_BUCKETS:,}: give a "
        "shorter window or a wider every"
    )


def _wall_slices(tz: str, width: int, lo: int, hi: int) -> np.ndarray:
    """Starts of the slices of ``width`` ns of the wall clock, cut at offset changes, from the
    slice that holds ``lo`` to the last one that starts before ``hi``."""
    begin = lo - width  # the slice holding lo starts at or after this
    changes, after = _transitions(tz, begin, hi)
    starts_of_segments = np.concatenate(([begin], changes))
    ends = np.concatenate((changes, [hi]))
    offsets = np.concatenate((_offsets(tz, np.array([begin], dtype=np.int64)), after))
    parts = []
    for k, (a, b, off) in enumerate(zip(starts_of_segments, ends, offsets, strict=True)):
        first = a + (-(a + off)) % width  # the first instant >= a whose wall clock is aligned
        aligned = np.arange(first, b, width, dtype=np.int64)
        parts.append(np.concatenate(([a], aligned)) if k else aligned)
    return np.unique(np.concatenate(parts))


def _calendar(tz: str, unit: str, lo: int, hi: int) -> np.ndarray:
    """First instants of the local days, Mondays or months from the one holding ``lo`` to the
    last one starting before ``hi``."""
    ends = np.array([lo, hi - 1], dtype=np.int64)
    walls = ends + _offsets(tz, ends)
    first_day, last_day = (walls // _DAY).astype("M8[D]")
    if unit == "W":
        weekday = (first_day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
        first_day = first_day - np.timedelta64(int(weekday), "D")
        days = np.arange(first_day, last_day + np.timedelta64(1, "D"), np.timedelta64(7, "D"))
    elif unit == "M":
        months = np.arange(first_day.astype("M8[M]"), last_day.astype("M8[M]") + 1)
        days = months.astype("M8[D]")
    else:
        days = np.arange(first_day, last_day + np.timedelta64(1, "D"))
    midnights = pd.DatetimeIndex(days.astype("M8[ns]")).tz_localize(
        tz,
        ambiguous=np.ones(len(days), dtype=bool),  # a repeated midnight: its first instant
        nonexistent="shift_forward",  # a skipped midnight: the day's first instant
    )
    return np.asarray(midnights.asi8, dtype=np.int64)
