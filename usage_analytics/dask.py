"""Reports and scans with Dask (``pip install 'usage_analytics[dask]'``), over the same dataset.

:func:`report` runs :meth:`Store.report` on a Dask cluster: the client plans the report on one
committed snapshot as the store does, workers compute the exact partials of its parts (row
scans of data files, reads of the summaries that cover the rest), and the client combines them
with the same code as the store. The result equals ``store.report(...)`` exactly.

:func:`scan` gives the rows of a window of one snapshot as a ``dask.dataframe.DataFrame``, one
partition per data file.

Workers open the dataset by its root, so every worker must see it at the same path: a local
folder for a :class:`distributed.LocalCluster`, shared storage (NFS) for a cluster of
machines, or object storage, which every machine reaches by the same URL (the store's
``storage_options`` travel with each task)::

    from distributed import Client
    client = Client("tcp://scheduler:8786")    # or Client(): a LocalCluster on this machine
    store = usage_analytics.Store("s3://bucket/usage", storage_options={"profile": "etl"})
    usage_analytics.dask.report(store, None, "2026-11-01", "2026-12-01", by="model_id")

A delete or compaction committed while workers read removes files they may still need; the
report then starts again on the newer snapshot, as the store's own reads do.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Final

import pandas as pd

from . import _reads
from ._storage import Snapshot
from ._validation import scan_args
from .errors import InvalidArgumentError, UsageAnalyticsError
from .reports.engine import Report
from .reports.spec import parse_spec

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

    from .store import Store

__all__ = ["report", "scan"]

#: Rows of the data files one worker task scans, about.
TASK_ROWS: Final = 1 << 20


def _client(client: Client | None) -> Client:
    try:
        import distributed
    except ImportError:
        raise UsageAnalyticsError(
            "usage_analytics.dask needs dask and distributed: pip install 'usage_analytics[dask]'"
        ) from None
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise InvalidArgumentError(
                f"client must be a distributed.Client or None, not {type(client).__name__}"
            )
        return client
    try:
        return distributed.get_client()
    except ValueError:
        raise UsageAnalyticsError(
            "no Dask client is running: start one (distributed.Client() for a cluster on this "
            "machine, distributed.Client('tcp://scheduler:8786') for a cluster) or pass client="
        ) from None


#: The stores a worker opened, by root and storage options (a few: one per dataset).
_WORKER_STORES: dict[tuple[str, str], Store] = {}


def _worker_store(root: tuple[str, dict[str, Any] | None]) -> Store:
    from .store import Store

    path, options = root
    key = (path, repr(sorted((options or {}).items())))  # options are not hashable
    store = _WORKER_STORES.get(key)
    if store is None:
        if len(_WORKER_STORES) >= 8:
            _WORKER_STORES.clear()
        store = _WORKER_STORES[key] = Store(path, storage_options=options)
    return store


def _root(store: Store) -> tuple[str, dict[str, Any] | None]:
    """How a worker opens ``store``: its absolute path, or its URL and storage options."""
    if isinstance(store.root, str):
        return store.root, getattr(store._ds, "storage_options", None)
    return str(store.root.resolve()), None


def _run(root: tuple[str, dict[str, Any] | None], report: Report, task: _reads.Task) -> list[Any]:
    """On a worker: the partials of one task."""
    return _reads.run_task(_worker_store(root)._ds, report, task)


def _report_keywords() -> frozenset[str]:
    """The keywords of :meth:`Store.report`, which :func:`report` passes on."""
    from .store import Store

    parameters = inspect.signature(Store.report).parameters.items()
    return frozenset(n for n, p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def report(
    store: Store,
    tenant_id: str | None,
    start: Any,
    end: Any,
    *,
    client: Client | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """:meth:`Store.report` computed on a Dask cluster (``client``, else the current one),
    with the same arguments and the same result.

    Example:
        >>> import usage_analytics as ua, usage_analytics.dask
        >>> from distributed import Client, LocalCluster
        >>> store = ua.Store("data/sample")
        >>> args = ("tenant-000", "2026-11-02", "2026-11-04")
        >>> with LocalCluster(n_workers=2, processes=False) as cluster, Client(cluster):
        ...     frame = ua.dask.report(store, *args, by="model_id", metrics=["latency_ms_p95"])
        >>> frame.equals(store.report(*args, by="model_id", metrics=["latency_ms_p95"]))
        True
    """
    unknown = sorted(set(kwargs) - _report_keywords())
    if unknown:
        raise InvalidArgumentError(
            f"usage_analytics.dask.report() got unknown keyword(s) {unknown}; it takes those "
            f"of Store.report: {sorted(_report_keywords())}"
        )
    explain = kwargs.pop("explain", False)
    if explain is not False:  # a plan is made on the client anyway
        return store.report(tenant_id, start, end, explain=explain, **kwargs)
    spec = parse_spec(tenant_id, start, end, **kwargs)
    rep = Report.of(spec)
    dask_client = _client(client)
    root = _root(store)
    use_summaries = store._use_rollups

    def read(snap: Snapshot) -> pd.DataFrame:
        _, tasks = _reads.plan_tasks(rep, snap, use_summaries=use_summaries, task_rows=TASK_ROWS)
        scattered = dask_client.scatter(rep, broadcast=True)  # type: ignore[no-untyped-call]
        futures = [dask_client.submit(_run, root, scattered, task, pure=False) for task in tasks]
        done = dask_client.gather(futures)  # type: ignore[no-untyped-call]
        partials = [p for found in done for p in found]
        return rep.finish(partials)

    return store._ds.read(read)


def _partition(
    root: tuple[str, dict[str, Any] | None], entry: Any, args: tuple[Any, ...]
) -> pd.DataFrame:
    """On a worker: the rows of one data file inside the window, as :meth:`Store.scan` gives
    them."""
    tenant, lo, hi, columns, where = args
    ds = _worker_store(root)._ds
    wanted = _reads.scanned_columns(columns)
    table = ds.read_file(entry, wanted, _reads.row_filter(tenant, lo, hi, where))
    return _reads.sorted_frame([table], columns)


def scan(
    store: Store,
    tenant_id: str | None = None,
    start: Any = None,
    end: Any = None,
    *,
    columns: Any = None,
    where: Any = None,
) -> dd.DataFrame:
    """The rows of :meth:`Store.scan` (same arguments) as a Dask DataFrame of the latest
    committed snapshot: one partition per data file of the window, each sorted by time (the
    partitions are in the order of their files' first times, which may overlap). Strings come
    in Dask's string dtype (``dataframe.convert-string``), the other columns as the store's.

    Example:
        >>> import usage_analytics as ua, usage_analytics.dask
        >>> store = ua.Store("data/sample")
        >>> frame = ua.dask.scan(store, "tenant-000", columns=["model_id", "prompt_tokens"])
        >>> frame.npartitions, len(frame) == len(store.scan("tenant-000"))
        (14, True)
    """
    try:
        import dask.dataframe as dd
    except ImportError:
        raise UsageAnalyticsError(
            "usage_analytics.dask needs dask: pip install 'usage_analytics[dask]'"
        ) from None
    args = scan_args(tenant_id, start, end, columns, where)
    _, lo, hi, names, _ = args
    entries = _reads.window_files(store._ds.snapshot(), lo, hi)
    meta = _reads.sorted_frame([], names)
    if not entries:
        empty: dd.DataFrame = dd.from_pandas(meta, npartitions=1)  # type: ignore[no-untyped-call]
        return empty
    root = _root(store)
    frame: dd.DataFrame = dd.from_map(  # type: ignore[no-untyped-call]
        _partition, [root] * len(entries), entries, args=(args,), meta=meta, enforce_metadata=False
    )
    return frame
