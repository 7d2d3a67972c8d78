"""One committed state of a store as another engine's lazy table: a DuckDB relation or a
Polars LazyFrame.

Either reads exactly the data files of the snapshot committed when it is made (never a write
in progress, and never a file a rewrite replaced: globbing the folder can see both), with the
columns, order and types of :meth:`Store.find_usages`:

- columns a file predates (the ``runtime_*`` columns of files written before an upgrade) read
  as their zero values, as the store reads them;
- the ``date=`` folder is not a column (``timestamp`` holds the time).

Both are lazy: the files are read when the result is evaluated. A delete or compaction
committed in between removes the files it replaced, and the engine then says a file is
missing; evaluate (or materialize) the result before running those.

Example:
    >>> import usage_analytics as ua
    >>> store = ua.Store("data/sample")
    >>> store.to_duckdb().aggregate("count(*)").fetchall()
    [(40000,)]
    >>> store.to_polars().select("tenant").unique().collect().height
    6
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

from .errors import CorruptDatasetError, InvalidArgumentError, UsageAnalyticsError
from .schema import COLUMNS, ZERO_VALUES, arrow_schema

if TYPE_CHECKING:
    import duckdb
    import polars as pl

    from ._storage import Snapshot
    from .store import Store

__all__ = ["to_duckdb", "to_polars"]

_DUCKDB_TYPES: Final = {
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.string(): "VARCHAR",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
}


def _by_version(store: Store, snap: Snapshot) -> list[tuple[list[str], tuple[str, ...]]]:
    """The files of the committed snapshot ``snap``, grouped by the columns they hold."""
    ds = store._ds
    groups: dict[int, list[str]] = {}
    for entry in snap.files:
        groups.setdefault(entry.schema_version, []).append(ds._checked_path(entry))
    return [
        (paths, tuple(ds._columns_for_version(version)))
        for version, paths in sorted(groups.items())
    ]


def _arrow_dataset(store: Store, paths: list[str]) -> Any:
    import pyarrow.dataset as pads

    return pads.dataset(paths, format="parquet", filesystem=store._ds.filesystem)


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise UsageAnalyticsError(
            f"{module} is not installed: pip install {module} (or 'usage_analytics[{module}]')"
        ) from None


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_zero(column: str) -> str:
    zero = ZERO_VALUES[column]
    return "''" if isinstance(zero, str) else str(int(zero))


def to_duckdb(store: Store, connection: duckdb.DuckDBPyConnection | None = None) -> Any:
    """A DuckDB relation of every row of ``store``'s latest committed state (see the module
    docstring), on ``connection`` (default: DuckDB's default connection)."""
    duckdb = _require("duckdb")
    if connection is not None and not isinstance(connection, duckdb.DuckDBPyConnection):
        raise InvalidArgumentError(
            f"connection must be a DuckDB connection (duckdb.connect()) or None, not "
            f"{type(connection).__name__}"
        )
    con = connection if connection is not None else duckdb.default_connection()
    schema = arrow_schema()
    types = {f.name: _DUCKDB_TYPES[f.type] for f in schema}

    def relation(snap: Snapshot) -> Any:
        relations = []
        for paths, present in _by_version(store, snap):
            columns = [
                f"CAST({_quoted(c) if c in present else _sql_zero(c)} AS {types[c]}) "
                f"AS {_quoted(c)}"
                for c in COLUMNS
            ]
            try:  # reads the files' footers
                if store._ds.filesystem is not None:  # object storage, through pyarrow
                    rel = con.from_arrow(_arrow_dataset(store, paths))
                else:
                    rel = con.read_parquet(paths, hive_partitioning=False)
            except duckdb.Error as exc:
                _raise_missing(store, paths)
                raise CorruptDatasetError(
                    f"a data file of {store.root} cannot be read ({str(exc).splitlines()[0]}); "
                    "Store.verify() lists what is damaged"
                ) from None
            relations.append(rel.project(", ".join(columns)))
        if not relations:
            nothing = ", ".join(f"CAST(NULL AS {types[c]}) AS {_quoted(c)}" for c in COLUMNS)
            return con.sql(f"SELECT {nothing} LIMIT 0")
        out = relations[0]
        for rel in relations[1:]:
            out = out.union(rel)  # UNION ALL: rows of different files are different rows
        return out

    # A file gone (a version past its history retention, a commit in between) is said so.
    return store._ds.read(relation)


def _raise_missing(store: Store, paths: Sequence[str]) -> None:
    """Raise FileNotFoundError for the first of ``paths`` that is gone, if one is (the
    store's reads then say why: see ``Dataset.read``)."""
    fs = store._ds.filesystem
    for path in paths:
        if not (os.path.exists(path) if fs is None else fs.exists(path)):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def _polars_schema(pl: Any) -> dict[str, Any]:
    types = {
        pa.int64(): pl.Int64,
        pa.int32(): pl.Int32,
        pa.string(): pl.String,
        pa.timestamp("us", tz="UTC"): pl.Datetime("us", "UTC"),
    }
    return {f.name: types[f.type] for f in arrow_schema()}


def to_polars(store: Store) -> pl.LazyFrame:
    """A Polars LazyFrame of every row of ``store``'s latest committed state (see the module
    docstring)."""
    pl = _require("polars")
    schema = _polars_schema(pl)

    def lazy(snap: Snapshot) -> Any:
        frames = []
        for paths, present in _by_version(store, snap):
            if store._ds.filesystem is not None:  # object storage, through pyarrow's reader
                frame = pl.scan_pyarrow_dataset(_arrow_dataset(store, paths))
            else:
                frame = pl.scan_parquet(paths, hive_partitioning=False)
            frames.append(frame.select(_polars_columns(pl, schema, present)))
        if not frames:
            return pl.LazyFrame(schema=schema)
        return pl.concat(frames, how="vertical")

    return store._ds.read(lazy)  # type: ignore[no-any-return]


def _polars_columns(pl: Any, schema: dict[str, Any], present: Sequence[str]) -> list[Any]:
    return [
        pl.col(c).cast(kind) if c in present else pl.lit(ZERO_VALUES[c], dtype=kind).alias(c)
        for c, kind in schema.items()
    ]
