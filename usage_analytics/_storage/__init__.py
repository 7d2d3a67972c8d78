"""The storage layer: partition paths, the manifest, atomic commits, the writer lock, recovery,
and the file formats.

Nothing else in the package touches the disk or the object store. This package knows files,
dates and row statistics; it knows nothing of tenants, methods or what a usage row means:
summary files are opaque tables it stores beside the data files they cover.

- ``manifest``: the committed state (``Snapshot``) and its entries, checked when read;
- ``log``, ``delta``: the commit log (a Delta Lake log) and the actions it is made of;
- ``dataset``: ``Dataset``, a local folder: the lock, snapshots, reads and recovery;
- ``objects``: ``ObjectDataset``, the same on object storage, committed without lock or rename;
- ``reading``: reads of data and summary files, on either;
- ``transaction``: ``Transaction``, a write committed at once, and rebased on a newer state;
- ``history``: older versions (``as_of``), the list of commits, and vacuum;
- ``files``: Parquet data files, Arrow IPC summary files, durable writes;
- ``faults``: the named steps where tests interrupt a write.
"""

from __future__ import annotations

from .dataset import Dataset
from .manifest import FileEntry, Snapshot, SpanEntry, day_date, day_number
from .transaction import SpanTable, TableOrFuture, Transaction

__all__ = [
    "Dataset",
    "FileEntry",
    "Snapshot",
    "SpanEntry",
    "SpanTable",
    "TableOrFuture",
    "Transaction",
    "day_date",
    "day_number",
]
