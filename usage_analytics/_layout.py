"""How the store lays out data files and summaries: the sizes its writes aim for.

Module attributes, read when they are used, so that tests can set smaller ones.
"""

from __future__ import annotations

from typing import Final

#: Data files of at least this many rows get summary files of every grain; smaller ones are
#: scanned (their summaries would be about as large as their rows), and merged later.
ROLLUP_MIN_ROWS = 1024
#: A summary is written only when it has at most its grain's ``max_ratio`` rows per row it
#: summarizes; set, this ratio replaces every grain's (tests of the fast paths on tiny data set
#: it to infinity, so that their summaries are written whatever their size).
SUMMARY_MAX_RATIO: float | None = None
#: A span of a kind is written only when it has at most this share of the rows of its parts
#: (the summaries a report would read in its place); otherwise its parent combines the parts.
SPAN_SHRINK = 0.5
#: A span of one day saves a report a read per file of the day besides the first: it is written
#: when it has at most this share of the rows of what it replaces (two time-cut files of a day
#: hold nearly the same keys, so their span is about 0.55 of them).
DAY_SPAN_SHRINK = 0.75
#: Spans cover aligned blocks of 1, 2, 4, ... days, up to 2**MAX_SPAN_LEVEL days.
MAX_SPAN_LEVEL = 10
#: Small files of a partition are merged on append once this many share a size class.
MERGE_FANOUT = 32
#: Files of this many rows or more are never merged on append (compact() rewrites them along
#: with the small files of their partition).
MERGE_BELOW_ROWS = MERGE_FANOUT * MERGE_FANOUT
#: compact() writes files of at most this many rows, each a range of time.
COMPACT_FILE_ROWS = 1 << 17
#: A day still being loaded gets a span once it holds this many files with summaries (and
#: again once this many, and an eighth of those it summarizes, were added since).
OPEN_DAY_FILES = 4
#: How many recently written spans and file summaries a store keeps in memory, to build the
#: next spans from them instead of reading them back.
RECENT_SPANS: Final = 16
RECENT_ROLLUPS: Final = 8
