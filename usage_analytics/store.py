"""``Store``: the usage store on a date-partitioned Parquet dataset.

The store validates arguments, asks storage (``_storage``) for a snapshot or a transaction, and
asks the report engine (``reports``) for reports. It never touches the disk itself: the write
paths are in ``_writes``, summary maintenance in ``_summaries``, reads in ``_reads``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from . import _reads, _versions, interop
from ._summaries import Summaries
from ._validation import prepare_batch, scan_args, to_bound
from ._verify import verify as verify_dataset
from ._writes import Writer, duplicate_error, repeated_keys
from .errors import InvalidArgumentError
from .reports import presets
from .reports.engine import Report
from .reports.prices import Prices
from .reports.spec import Not, parse_spec
from .schema import arrow_schema

__all__ = ["DatasetInfo", "Store"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds (:meth:`Store.info`)."""

    root: Path | str
    schema_version: int
    rows: int
    files: int
    partitions: int
    first_timestamp: int | None
    last_timestamp: int | None


class Store:
    """API and LLM usage records in a date-partitioned Parquet dataset.

    Args:
        root: the dataset's folder, or a URL on object storage (``s3://bucket/prefix``,
            ``gs://...``, ``memory://...``: any fsspec filesystem); ``auto_migrate()``
            creates it.
        lock_timeout: seconds a write waits for another writer before raising
            :class:`~usage_analytics.LockTimeoutError` (``math.inf``: as long as it takes).
        as_of: read the dataset as it was at one commit, for reproducible reports: a version
            (an int, see :meth:`history`) or a time (the latest commit at or before it).
            Such a store only reads; see :meth:`set_history_retention`.
        storage_options: for a URL root, the options of its fsspec filesystem, as they are
            (for s3fs: ``{"key": ..., "secret": ..., "endpoint_url": ...}``). On object
            storage writes need no lock: see RELIABILITY.md.

    Example:
        >>> from usage_analytics import Usage
        >>> store = Store(tmp / "usage")
        >>> store.auto_migrate()
        >>> store.create_usage(Usage(user_id="u0", tenant="t0", api_method="GetFoo",
        ...                          status_code=200, timestamp=1_610_000_000, latency_ms=100))
        1
        >>> store.aggregated_usage("t0", 0, 2_000_000_000)
          api_method  total_requests  success_requests  failure_requests  average_latency
        0     GetFoo               1                 1                 0            100.0
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        lock_timeout: float = 60.0,
        as_of: Any = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self._ds = _versions.open_dataset(root, lock_timeout, as_of, storage_options)
        self._root: Path | str = getattr(self._ds, "url", self._ds.root)
        # Reports read summaries wherever they cover a part of the window; switched off only
        # by tests that compare them with plain row scans.
        self._use_rollups = True
        self._summaries = Summaries(self._ds)
        self._writer = Writer(self._ds, self._summaries)

    @property
    def root(self) -> Path | str:
        """The dataset root: a path, or the URL of a root on object storage."""
        return self._root

    def __repr__(self) -> str:
        return f"Store({str(self._root)!r})"

    # -- set-up ------------------------------------------------------------------------------

    def auto_migrate(self) -> None:
        """Create the dataset, or check (and upgrade) the one at ``root``. Idempotent.

        An older schema version is upgraded in place, in one commit: its data files are
        rewritten with zeros in the columns added since (as the store read them).

        Raises:
            IncompatibleDatasetError: the dataset was written by a newer usage_analytics.

        Example:
            >>> Store(tmp / "fresh").auto_migrate()
        """
        self._writer.upgrade()

    def info(self) -> DatasetInfo:
        """Rows, files, partitions and the time span of the dataset, from its manifest alone.

        Example:
            >>> Store("data/sample").info().partitions
            14
        """
        snap = self._ds.snapshot()
        return DatasetInfo(
            root=self._root,
            schema_version=snap.schema_version,
            rows=snap.rows,
            files=len(snap.files),
            partitions=len(snap.dates()),
            first_timestamp=min((f.min("timestamp") for f in snap.files), default=None),
            last_timestamp=max((f.max("timestamp") for f in snap.files), default=None),
        )

    def files(self) -> list[Path] | list[str]:
        """The data files of the latest committed state, for reading with another engine.

        Reading exactly these files (rather than globbing the folder) never sees a write in
        progress. A later delete or compaction may remove some of them.

        Example:
            >>> import duckdb
            >>> files = [str(p) for p in Store("data/sample").files()]
            >>> duckdb.sql(f"select count(*) from read_parquet({files})").fetchall()[0][0]
            40000
        """
        if isinstance(self._root, str):  # object storage: URLs
            return [self._ds.location(f) for f in self._ds.snapshot().files]
        return [self._ds.path_of(f) for f in self._ds.snapshot().files]

    def to_duckdb(self, connection: Any = None) -> Any:
        """The latest commit as a DuckDB relation (on ``connection``, else DuckDB's default
        one), in the current schema: see :mod:`usage_analytics.interop`."""
        return interop.to_duckdb(self, connection)

    def to_polars(self) -> Any:
        """The latest commit as a Polars LazyFrame, in the current schema (see above)."""
        return interop.to_polars(self)

    # -- writing -----------------------------------------------------------------------------

    def create_usage(self, *usages: Any, on_conflict: Literal["error", "ignore"] = "error") -> int:
        """Validate and append usage rows, all or nothing.

        Args:
            *usages: ``Usage`` objects, mappings with the same keys, a list of either, or one
                DataFrame. Missing optional columns get their zero values; ``timestamp`` may be
                int nanoseconds, datetime64 values or datetime objects (naive ones are UTC).
                ``id`` and ``created_at`` are set by the store.
            on_conflict: ``"error"`` raises when a ``(user_id, timestamp)`` key repeats, inside
                the batch or against stored rows; ``"ignore"`` skips such rows (the first of
                in-batch repeats is kept), which makes re-running a load idempotent.

        Each day of the batch becomes one data file: its rows in the order they came when
        the batch is in time order (the fastest way in), else sorted by tenant and time. When
        a day would then hold 32 small files of one size class, they are merged into one in
        the same commit, so that appending row by row does not leave a file per row. The
        same commit adds the span summaries of the days before the batch's first day, which
        a load running forward in time has finished.

        Returns:
            The number of rows written.

        Raises:
            ValidationError: the batch breaks the schema (every problem is listed).
            DuplicateUsageError: a key repeats and ``on_conflict="error"``.

        Example:
            >>> store = Store(tmp / "append"); store.auto_migrate()
            >>> row = {"user_id": "u1", "timestamp": pd.Timestamp("2026-11-01 12:00")}
            >>> store.create_usage(row)
            1
            >>> store.create_usage(row, on_conflict="ignore")
            0
        """
        if not isinstance(on_conflict, str) or on_conflict not in ("error", "ignore"):
            raise InvalidArgumentError(
                f"on_conflict must be 'error' or 'ignore', not {on_conflict!r}"
            )
        batch = prepare_batch(usages)
        repeated = repeated_keys(batch)
        if repeated.any():
            if on_conflict == "error":
                raise duplicate_error(batch.loc[repeated], "inside the batch")
            batch = batch.loc[~repeated]
        return self._writer.append(batch, on_conflict)

    def create_usage_batches(
        self, batches: Iterable[Any], *, on_conflict: Literal["error", "ignore"] = "error"
    ) -> int:
        """Validate and append many batches in one commit, all or nothing, holding one batch
        in memory at a time: for loads larger than memory.

        Args:
            batches: an iterable (a generator, say) of what :meth:`create_usage` takes as one
                argument: a DataFrame, a list of ``Usage`` objects or mappings.
            on_conflict: as for :meth:`create_usage`; keys are unique across all batches.

        Each batch is validated and its files written before the next is taken, but none of
        its rows is visible until the last batch is written and the commit makes them all
        live at once. An error in any batch (or an exception raised by the iterable itself)
        leaves the dataset as it was.

        Returns:
            The number of rows written.

        Example:
            >>> store = Store(tmp / "batches"); store.auto_migrate()
            >>> def batches():
            ...     for day in ("2026-11-01", "2026-11-02"):
            ...         yield [{"user_id": "u1", "timestamp": pd.Timestamp(day)}]
            >>> store.create_usage_batches(batches())
            2
        """
        if not isinstance(on_conflict, str) or on_conflict not in ("error", "ignore"):
            raise InvalidArgumentError(
                f"on_conflict must be 'error' or 'ignore', not {on_conflict!r}"
            )
        if isinstance(batches, pd.DataFrame | str | bytes) or not isinstance(batches, Iterable):
            raise InvalidArgumentError(
                "create_usage_batches takes an iterable of batches (DataFrames or lists of "
                f"rows), not {type(batches).__name__}; for one batch, call create_usage"
            )

        def validated() -> Iterator[pd.DataFrame]:
            for item in batches:
                batch = prepare_batch((item,))
                repeated = repeated_keys(batch)
                if repeated.any():
                    if on_conflict == "error":
                        raise duplicate_error(batch.loc[repeated], "inside a batch")
                    batch = batch.loc[~repeated]
                yield batch

        return self._writer.append_batches(validated(), on_conflict)

    def delete_usage(self, timestamp: Any, limit: int | None = None) -> int:
        """Delete rows with ``timestamp`` before the cutoff, oldest first; all or nothing.

        Partitions whose rows all go are removed whole without being read; a partition that
        keeps some rows is rewritten without the deleted ones.

        Args:
            timestamp: the cutoff (exclusive): int ns, datetime, pd.Timestamp or ISO string.
            limit: delete at most this many rows (``None``: no limit).

        Returns:
            The number of rows deleted.

        Example:
            >>> store = Store(tmp / "retention"); store.auto_migrate()
            >>> store.create_usage([{"user_id": "u", "timestamp": t} for t in (1, 2, 3)])
            3
            >>> store.delete_usage(3, limit=1), store.delete_usage(3)
            (1, 1)
        """
        cutoff = to_bound(timestamp, "timestamp")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int | np.integer):
                raise InvalidArgumentError(f"limit must be an int or None, not {limit!r}")
            if limit < 0:
                raise InvalidArgumentError(f"limit must be >= 0, not {limit}")
        return self._writer.delete(cutoff, None if limit is None else int(limit))

    def compact(self, *, progress: bool = False) -> int:
        """Merge the files of each partition that holds several, some of them small, into
        files of at most 131,072 rows; returns how many partitions were rewritten. Each
        partition is committed on its own, all or nothing, and keeps every row exactly.

        The rows are cut into files by time, each row group a range of time sorted by tenant
        and time inside, so that a report whose window starts or ends inside the day reads the
        summaries of the files within the window and scans only the file it cuts (and of it
        only the row groups it cuts), as after a bulk load.
        Partitions whose files all hold at least half that many rows are left as they are.
        Files given no summary of a kind (written by an older version) get one where it is
        worth it, and missing spans are built. ``progress=True`` shows a progress bar of the
        partitions on stderr when compaction takes longer than a second.

        Example:
            >>> store = Store(tmp / "small"); store.auto_migrate()
            >>> for t in (1, 2, 3): _ = store.create_usage({"user_id": "u", "timestamp": t})
            >>> store.compact(), len(store.files())
            (1, 1)
        """
        if not isinstance(progress, bool):
            raise InvalidArgumentError(f"progress must be True or False, not {progress!r}")
        return self._writer.compact(progress)

    def history(self) -> pd.DataFrame:
        """The commits the log keeps, one row each: ``version``, ``time`` (UTC) and
        ``operation``. A version can be read with ``Store(root, as_of=version)`` while the
        files it lists are kept: those of the versions of the history retention always (see
        :meth:`set_history_retention`); of older ones until a :meth:`vacuum` removes them
        (reading such a version then says so), as in a Delta table's history.

        Operations: ``CREATE TABLE``, ``WRITE`` (an append), ``DELETE``, ``OPTIMIZE``
        (:meth:`compact`, one commit per partition), ``UPGRADE`` (files rewritten in a newer
        schema), ``SUMMARIZE`` (summaries added, rows unchanged), ``SET TBLPROPERTIES``
        (the history retention) and ``RESERVE IDS`` (an append's row ids, on object storage)."""
        return _versions.history_frame(self._ds)

    def set_history_retention(self, duration: Any) -> None:
        """Keep the files a commit removes for ``duration`` (a timedelta, seconds, or an age
        such as ``"30d"``), so that versions that recent stay readable (``as_of``, and Delta
        readers' time travel) until :meth:`vacuum`; 0, the default, removes them at once.
        Kept files sit in the partition folders: read the folder through the log then."""
        _versions.set_retention(self._ds, _versions.to_seconds(duration, "duration"))

    def vacuum(self, *, retention: Any = None, dry_run: bool = False) -> list[Path] | list[str]:
        """Remove the files that no version of the history retention (or ``retention``)
        lists; returns them (only lists them with ``dry_run``). ``retention=0`` removes every
        file the latest version does not list, as a deletion that must not linger needs. On
        object storage (URLs returned) files no commit lists are removed only once they are a
        day old: a younger one may belong to a write still running elsewhere."""
        return _versions.vacuum(self._ds, retention, dry_run)

    def verify(self) -> pd.DataFrame:
        """Check the dataset: read every data file back against the manifest, and recompute
        every summary (of files and of spans) from the rows it summarizes, as SQLite's
        ``PRAGMA integrity_check`` does for a database.

        Returns:
            One row per problem found, columns ``piece`` (a file or span), ``kind`` (``data``
            or a summary kind) and ``problem``; no rows when everything agrees. ``compact()``
            rewrites what it can; a damaged data file needs a backup.

        Example:
            >>> Store("data/sample").verify().empty
            True
        """
        return self._ds.read(lambda snap: verify_dataset(self._ds, snap))

    # -- reading rows ------------------------------------------------------------------------

    def find_usages(self) -> pd.DataFrame:
        """Every stored row, columns as in :class:`UsageSchema`, sorted by ``id``.

        For the rows of a window, or some columns only, :meth:`scan` reads less.

        Example:
            >>> Store("data/sample").find_usages().columns[:4].tolist()
            ['id', 'created_at', 'user_id', 'tenant']
        """

        def read(snap: Any) -> pd.DataFrame:
            tables = [_reads.read_rows(self._ds, e) for e in snap.files]
            if not tables:
                return _reads.to_frame(arrow_schema().empty_table())
            return _reads.to_frame(pa.concat_tables(tables).sort_by("id"))

        return self._ds.read(read).reset_index(drop=True)

    def scan(
        self,
        tenant_id: str | None = None,
        start: Any = None,
        end: Any = None,
        *,
        columns: Sequence[str] | None = None,
        where: Any = None,
    ) -> pd.DataFrame:
        """The rows of a window, from one consistent snapshot, sorted by time (then ``id``).

        Reads only the requested columns, and only the files and row groups that the window
        and the filters can touch.

        Args:
            tenant_id: one tenant, or None for every tenant.
            start, end: the window, ``start <= timestamp < end`` (None: unbounded).
            columns: the columns to return (default: all, as in :class:`UsageSchema`).
            where: ``{dimension: value, [values] or Not(values)}`` as in :meth:`report`.

        Example:
            >>> rows = Store("data/sample").scan("tenant-000", "2026-11-02", "2026-11-03",
            ...                                  columns=["timestamp", "model_id"])
            >>> rows.shape, rows["timestamp"].is_monotonic_increasing
            ((691, 2), True)
        """
        tenant, lo, hi, names, filters = scan_args(tenant_id, start, end, columns, where)
        return _reads.scan_frame(self._ds, tenant, lo, hi, names, filters)

    def scan_batches(
        self,
        tenant_id: str | None = None,
        start: Any = None,
        end: Any = None,
        *,
        columns: Sequence[str] | None = None,
        where: Any = None,
    ) -> Iterator[pa.RecordBatch]:
        """The rows of :meth:`scan` as pyarrow RecordBatches of at most 65,536 rows, file by
        file in time order, in bounded memory: for windows larger than memory.

        The snapshot is taken when iteration starts. A later delete or compaction that
        removes a file the iteration has not reached raises ``DatasetChangedError``.

        Example:
            >>> batches = Store("data/sample").scan_batches(columns=["tenant"])
            >>> sum(b.num_rows for b in batches)
            40000
        """
        tenant, lo, hi, names, filters = scan_args(tenant_id, start, end, columns, where)
        return _reads.scan_batches(self._ds, tenant, lo, hi, names, filters)

    # -- reports -----------------------------------------------------------------------------

    def report(
        self,
        tenant_id: str | None,
        start: Any,
        end: Any,
        *,
        by: str | Sequence[str] = (),
        every: str | None = None,
        tz: str = "UTC",
        where: Any = None,
        metrics: Sequence[str] | None = None,
        prices: Prices | None = None,
        top: int | None = None,
        order_by: str | None = None,
        explain: bool = False,
    ) -> pd.DataFrame:
        """Any report over the usage of a window: grouped, bucketed, filtered, exact.

        Args:
            tenant_id: one tenant, or None for every tenant.
            start, end: the window, ``start <= timestamp < end``: int ns since the epoch,
                datetime, pd.Timestamp or ISO string (naive values are UTC).
            by: a dimension or a sequence of them: ``tenant``, ``organization``, ``project``,
                ``user_id``, ``api_key_id``, ``api_method``, ``model_id``, ``status_code``,
                ``status_class`` (``"1xx"`` ... ``"5xx"``, ``"other"``).
            every: bucket width, ``"1min"``, ``"5min"``, ``"15min"``, ``"1h"``, ``"1d"``,
                ``"1w"`` or ``"1mo"``; None: the whole window.
            tz: the IANA zone whose wall clock the buckets follow.
            where: ``{dimension: value or list of values}``, ANDed; ``Not(values)`` negates
                one (``{"model_id": Not("")}``: rows with a model).
            metrics: metric names (None: requests, success_requests, failure_requests,
                prompt_tokens, completion_tokens, latency_ms_mean). Counts: ``requests``,
                ``success_requests`` (status 200), ``failure_requests``, ``error_rate``;
                sums: ``prompt_tokens``, ``completion_tokens``, ``total_tokens``; ``<col>_mean``
                and exact percentiles ``<col>_p<q>`` (e.g. ``latency_ms_p95``) of
                ``latency_ms``, ``time_to_first_token_ms``, ``runtime_latency_ms``,
                ``runtime_time_to_first_token_ms``; distinct ``users``, ``api_keys``;
                ``completion_tokens_per_s``; with ``prices``, ``prompt_cost``,
                ``completion_cost``, ``cost``.
            prices: a :class:`Prices` table, for the cost metrics.
            top, order_by: keep the ``top`` groups with the largest window total of the
                metric ``order_by`` (ties broken by the dimension values).
            explain: return the plan instead: each file or span the report would read, whether
                from a summary or as rows, and the rows it holds.

        Returns:
            ``bucket`` (with ``every``: the tz-aware start of each bucket), the ``by``
            dimensions, then the metrics, sorted by bucket and dimensions. Counts and sums are
            int64, the rest float64 (NaN where a mean or percentile has no rows). With
            ``every`` the result is dense: every bucket the window touches, for every group
            with rows in the window, zero-filled.

        Raises:
            InvalidArgumentError: an argument is not one the report takes.
            MissingPriceError: a cost metric met tokens of a model the prices lack.

        Example:
            >>> store = Store("data/sample")
            >>> store.report("tenant-000", "2026-11-02T00:00-05:00", "2026-11-04T00:00-05:00",
            ...              by="model_id", every="1d", tz="America/New_York",
            ...              metrics=["requests", "latency_ms_p95"]).head(3)
                                 bucket     model_id  requests  latency_ms_p95
            0 2026-11-02 00:00:00-05:00                     44           78.70
            1 2026-11-02 00:00:00-05:00       gpt-4o       102         7073.75
            2 2026-11-02 00:00:00-05:00  gpt-4o-mini       284         5938.50
        """
        if not isinstance(explain, bool):
            raise InvalidArgumentError(f"explain must be True or False, not {explain!r}")
        spec = parse_spec(
            tenant_id,
            start,
            end,
            by=by,
            every=every,
            tz=tz,
            where=where,
            metrics=metrics,
            prices=prices,
            top=top,
            order_by=order_by,
        )
        return _reads.run_report(
            self._ds, Report.of(spec), use_summaries=self._use_rollups, explain=explain
        )

    def _preset(
        self, preset: presets.Preset, tenant_id: object, start: Any, end: Any, **args: Any
    ) -> pd.DataFrame:
        """A preset report, its columns named as the preset names them."""
        if not isinstance(tenant_id, str):
            raise InvalidArgumentError(f"tenant_id must be a str, not {tenant_id!r}")
        spec = parse_spec(tenant_id, start, end, **preset.report_args(**args))
        report = Report.of(spec, preset.names)
        return _reads.run_report(self._ds, report, use_summaries=self._use_rollups)

    def aggregated_usage(self, tenant_id: str, start: Any, end: Any) -> pd.DataFrame:
        """Requests per API method for ``tenant_id`` with ``start <= timestamp < end``.

        Returns:
            Columns ``api_method, total_requests, success_requests, failure_requests,
            average_latency`` (success: ``status_code == 200``), sorted by ``api_method``.

        Example:
            >>> Store("data/sample").aggregated_usage("tenant-000", "2026-11-01",
            ...                                       "2026-11-02").columns.tolist()[:2]
            ['api_method', 'total_requests']
        """
        return self._preset(presets.SUMMARY, tenant_id, start, end)

    def get_usages_by_groups(
        self, tenant_id: str, start: Any, end: Any, *, exclude_empty_model: bool = False
    ) -> pd.DataFrame:
        """Usage per (API key, user, model) for ``tenant_id`` with ``start <= timestamp < end``.

        Args:
            exclude_empty_model: leave out rows with an empty ``model_id``, as later versions
                of the source system do.

        Returns:
            Columns ``api_key_id, user_id, model_id, total_requests, total_prompt_tokens,
            total_completion_tokens, average_latency, average_time_to_first_token``, sorted by
            the three keys.

        Example:
            >>> Store("data/sample").get_usages_by_groups("tenant-000", "2026-11-01",
            ...                                           "2026-11-02").columns.tolist()[:3]
            ['api_key_id', 'user_id', 'model_id']
        """
        if not isinstance(exclude_empty_model, bool):
            raise InvalidArgumentError(
                f"exclude_empty_model must be True or False, not {exclude_empty_model!r}"
            )
        where = {"model_id": Not("")} if exclude_empty_model else None
        return self._preset(presets.GROUPS, tenant_id, start, end, where=where)

    def model_usage_summaries(
        self,
        tenant_id: str,
        start: Any,
        end: Any,
        *,
        every: str = "1h",
        status_code: int | Sequence[int] | None = None,
        tz: str = "UTC",
    ) -> pd.DataFrame:
        """Requests and tokens per model per bucket (the source system's
        ``ListModelUsageSummaries``).

        Rows with an empty model are left out; every model seen in the window appears in
        every bucket, zero-filled; counts are summed over all users of a model.

        Args:
            every: the bucket width (see :meth:`report`).
            status_code: only rows with this status code (or one of these).
            tz: the zone whose wall clock the buckets follow.

        Returns:
            Columns ``bucket, model_id, total_requests, total_prompt_tokens,
            total_completion_tokens``.

        Example:
            >>> Store("data/sample").model_usage_summaries(
            ...     "tenant-000", "2026-11-01", "2026-11-03", every="1d").shape
            (12, 5)
        """
        where: dict[str, Any] = {"model_id": Not("")}
        if status_code is not None:
            where["status_code"] = status_code
        return self._preset(presets.MODELS, tenant_id, start, end, every=every, tz=tz, where=where)
