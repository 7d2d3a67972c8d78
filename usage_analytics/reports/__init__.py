"""The report engine: any report over usage rows, exact, from summaries where they cover it.

- ``spec``: a validated report request (dimensions, filters, buckets, metrics, top groups);
- ``metrics``: the registry: each metric's partial pieces, exact combination and finish;
- ``buckets``: calendar buckets in a time zone;
- ``grains``: the declared summary grains kept beside the rows;
- ``planner``: which parts of a window are read from summaries and which as rows;
- ``kernels``: group sums, partials of rows and distributions (pandas and pyarrow);
- ``combined``: the exact combination of partials into a report's groups;
- ``engine``: a spec bound to its buckets: partials of rows and summaries, the finished frame;
- ``presets``: the source system's reports as engine reports;
- ``prices``: the price table of the cost metrics.

Nothing here reads or writes a file: the store runs the plans on a snapshot.
"""

from __future__ import annotations

from .prices import Prices
from .spec import DIMENSIONS, Not

__all__ = ["DIMENSIONS", "Not", "Prices"]
