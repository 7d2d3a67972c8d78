"""Declared summary grains: which exact partial sums are kept beside the rows, at which grain.

A *grain* is data, not code (as Druid's rollup specs and Cube's pre-aggregations are): a name
(the kind of its summary files), a time resolution (each hour, or the whole file or span), the
dimensions it keeps a row for (tenant first: files are cut into batches by tenant), and the
measures it stores, under which column names. Each data file gets a summary of every grain when
the summary is much smaller than the file's rows (``max_ratio``), and aligned blocks of whole
days (*spans*) get one of each grain whose rows shrink over days, combined from their parts.

What a grain can give a report:

- a base measure it stores, or derives: ``success_requests`` from the requests of a grain that
  keeps ``status_code``, the sums over rows with a model from one that keeps ``model_id``;
- the exact distribution of a column it keeps as a dimension (``latency_ms`` in ``latency``):
  the requests of each of its values;
- the distinct values of a column it keeps as a dimension (``user_id`` in ``users``);
- costs, when it keeps ``model_id`` and the token sums;
- buckets: an hourly grain's rows fall into a report's buckets whenever the buckets start on
  whole hours (every zone but those with half- or quarter-hour offsets); a grain of whole files
  or spans only when the file or span lies inside one bucket.

The grains ``summary`` and ``groups`` answer the source system's two reports; they keep their
file names and column names from earlier versions, so that datasets written then are read as
they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .kernels import KEY_TYPE, as_table, distribution, ints, key_codes, with_key_type
from .metrics import MEASURES, holds, measure_array

__all__ = [
    "GRAINS",
    "HOUR_NS",
    "INPUT_COLUMNS",
    "Grain",
    "combine",
    "compute_parts",
    "encode_keys",
    "grain",
    "iter_rollups",
    "rollup",
    "rollups",
]

#: Hours are the time resolution of hourly grains: their ``hour`` column is ts // HOUR_NS.
HOUR_NS: Final = 3600 * 10**9


@dataclass(frozen=True, eq=False)  # declared once each: compared and hashed by identity
class Grain:
    """A declared summary: one row per distinct ``dims`` tuple (and hour, when ``hourly``) of
    the rows it summarizes, with the sums of ``stored`` (measure -> column name in its files).

    A summary is written only when it has at most ``max_ratio`` rows per row it summarizes;
    ``spans`` says whether blocks of days get one (hourly rows do not shrink over days),
    ``files`` whether single data files do, and ``max_span_days`` bounds the days of a span.
    A grain whose last dimension is ``value_column`` is a distribution: it keeps the requests
    of each value (an exact value-to-count histogram), its tables are sorted by every key
    (runs of rising values compress to a few bytes a row), and reports take it to merge
    distributions, not to sum.
    """

    name: str
    dims: tuple[str, ...]
    stored: Mapping[str, str]
    hourly: bool = False
    max_ratio: float = 0.25
    spans: bool = True
    files: bool = True
    max_span_days: int | None = None
    #: A span is written when it has at most this share of the rows a report reads in its
    #: place (None: the layout's ``SPAN_SHRINK``, ``DAY_SPAN_SHRINK`` for a day).
    span_shrink: float | None = None
    #: The ``span_shrink`` of its spans of two days (None: as for its other spans).
    pair_shrink: float | None = None
    #: A finer grain this one is computed from (its summary, instead of the rows: cheaper).
    derive_from: str | None = None
    #: The dimension a distribution grain counts the values of (None: not a distribution).
    value_column: str | None = None
    #: The ``max_ratio`` of its summaries of single data files (None: ``max_ratio``).
    file_max_ratio: float | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        """The key columns of its tables: tenant, then the hour, then the other dimensions."""
        if not self.hourly:
            return self.dims
        return (self.dims[0], "hour", *self.dims[1:])

    @property
    def columns(self) -> tuple[str, ...]:
        """The row columns its summaries are computed from."""
        out = dict.fromkeys(self.dims)
        if self.hourly:
            out["timestamp"] = None
        for name in self.stored:
            m = MEASURES[name]
            out.update(dict.fromkeys(c for c in (m.column, m.subtract) if c))
            if m.when:
                out[m.when[0]] = None
        return tuple(out)

    # -- what it can give --------------------------------------------------------------------

    def _source(self, name: str) -> tuple[str, str | None] | None:
        """The stored columns a measure is derived from (its own, or its sum minus another)."""
        if name in self.stored:
            return self.stored[name], None
        m = MEASURES[name]
        total = "requests" if m.column is None else f"sum_{m.column}"
        if total not in self.stored or (m.when is not None and m.when[0] not in self.dims):
            return None
        if m.subtract is None:
            return self.stored[total], None
        other = f"sum_{m.subtract}"
        return (self.stored[total], self.stored[other]) if other in self.stored else None

    def shrink_of(self, days: int) -> float | None:
        """The ``span_shrink`` of its spans of ``days`` days (None: the layout's)."""
        if days == 2 and self.pair_shrink is not None:
            return self.pair_shrink
        return self.span_shrink

    def provides(self, measures: Iterable[str]) -> bool:
        """Whether every one of ``measures`` is stored or derivable."""
        return all(self._source(name) is not None for name in measures)

    def gives(self, component: str) -> bool:
        """Whether it can give a partial component: ``hist:<column>`` or ``distinct:<column>``
        (the column is one of its dimensions) or ``cost``."""
        kind, _, column = component.partition(":")
        if kind == "hist":
            return column in self.dims and "requests" in self.stored
        if kind == "distinct":
            return column in self.dims
        if kind == "cost":
            return "model_id" in self.dims and self.provides(
                ("sum_prompt_tokens", "sum_completion_tokens")
            )
        raise ValueError(f"not a component: {component!r}")

    def measure(self, table: pa.Table, name: str) -> np.ndarray:
        """The values of measure ``name`` in a summary table of this grain, per row."""
        source = self._source(name)
        if source is None:
            raise KeyError(f"grain {self.name!r} cannot give {name!r}")
        column, minus = source
        values = ints(table.column(column))
        if minus is not None:
            values = values - ints(table.column(minus))
        m = MEASURES[name]
        if name not in self.stored and m.when is not None:
            values = np.where(holds(table, m.when), values, 0)
        return values

    # -- computing ---------------------------------------------------------------------------

    def compute(self, rows: pa.Table) -> pa.Table:
        """This grain's summary of ``rows`` (the columns of :attr:`columns`), sorted by its
        keys.

        One hash aggregation of pyarrow's (Acero): in C++, so it runs beside the thread that
        writes the rows, and about twice as fast as the group sums of ``kernels``.
        """
        if self.value_column is not None:
            return self._distribution(rows.select(list(self.dims)), None)
        columns: dict[str, pa.Array | pa.ChunkedArray] = {k: rows.column(k) for k in self.dims}
        if self.hourly:
            hour = pc.divide(rows.column("timestamp"), HOUR_NS)  # truncates: never negative
            columns["hour"] = hour.cast(pa.int32())
        aggregations: list[tuple[str, str]] = []
        names: dict[str, str] = {}
        for name, column in self.stored.items():
            m = MEASURES[name]
            if m.column is None and m.when is None:
                aggregations.append((self.dims[0], "count"))
                names[f"{self.dims[0]}_count"] = column
                continue
            columns[column] = measure_array(rows, name)
            aggregations.append((column, "sum"))
            names[f"{column}_sum"] = column
        return _aggregate(pa.table(columns), self.keys, aggregations, names, self.stored.values())

    def _distribution(self, rows: pa.Table, counts: np.ndarray | None) -> pa.Table:
        """A distribution grain's summary of ``rows`` (of summaries of it, with their
        ``counts``), sorted by every key: a sort of integers, several times faster than a hash
        aggregation over the value."""
        assert self.value_column is not None
        (requests,) = self.stored.values()
        table, totals = distribution(rows, self.keys[:-1], self.value_column, counts)
        return table.append_column(requests, pa.array(totals))

    def compute_from(self, finer: Grain, table: pa.Table) -> pa.Table:
        """This grain's summary of the rows a summary ``table`` of grain ``finer`` summarizes
        (``finer`` keeps every dimension of this one, and gives its measures)."""
        columns: dict[str, pa.Array | pa.ChunkedArray] = {k: table.column(k) for k in self.keys}
        for name, column in self.stored.items():
            columns[column] = pa.array(finer.measure(table, name))
        aggregations = [(column, "sum") for column in self.stored.values()]
        names = {f"{column}_sum": column for column in self.stored.values()}
        return _aggregate(pa.table(columns), self.keys, aggregations, names, self.stored.values())

    def combine(self, parts: Iterable[pa.Table]) -> pa.Table:
        """Summaries of disjoint sets of rows combined into one, sorted by the keys (a hash
        aggregation of pyarrow's, as :meth:`compute`)."""
        sums = list(self.stored.values())
        tables = []
        for part in parts:
            if part.num_rows:
                columns = [
                    part.column(k) if k in self.keys else part.column(k).cast(pa.int64())
                    for k in (*self.keys, *sums)
                ]
                tables.append(
                    with_key_type(pa.table(columns, names=[*self.keys, *sums]), self.keys)
                )
        if not tables:
            empty = {
                k: pa.array([], KEY_TYPE if k in _TEXT_DIMS else pa.int32()) for k in self.keys
            }
            return pa.table({**empty, **{s: pa.array([], pa.int64()) for s in sums}})
        both = pa.concat_tables(tables, promote_options="permissive").unify_dictionaries()
        if self.value_column is not None:
            return self._distribution(both, ints(both.column(sums[0])))
        names = {f"{s}_sum": s for s in sums}
        return _aggregate(both, self.keys, [(s, "sum") for s in sums], names, sums)


_REQUESTS: Final = {"requests": "total_requests"}
_SUMS: Final = {
    "sum_prompt_tokens": "prompt_tokens",
    "sum_completion_tokens": "completion_tokens",
    "sum_latency_ms": "latency_ms",
    "sum_time_to_first_token_ms": "time_to_first_token_ms",
}
_RUNTIME: Final = {
    "sum_runtime_latency_ms": "runtime_latency_ms",
    "sum_runtime_time_to_first_token_ms": "runtime_time_to_first_token_ms",
}

#: The grains, smallest first within what they cover (the planner takes the first that fits).
#: Chosen from measurements on the benchmark's data (README, "How summaries are chosen").
GRAINS: Final = (
    Grain(
        "statuses",
        ("tenant", "status_code"),
        {"requests": "total_requests", **_SUMS},
        derive_from="daily",
    ),
    Grain(
        "summary",
        ("tenant", "api_method"),
        {
            "requests": "total_requests",
            "success_requests": "success_requests",
            "sum_latency_ms": "latency_sum",
        },
        derive_from="daily",
    ),
    Grain("users", ("tenant", "api_key_id", "user_id"), dict(_REQUESTS), derive_from="groups"),
    Grain(
        "daily",
        ("tenant", "api_method", "model_id", "status_code"),
        {"requests": "total_requests", **_SUMS},
        derive_from="hourly",
    ),
    Grain(
        "projects",
        ("tenant", "organization", "project", "model_id"),
        {"requests": "total_requests", "success_requests": "success_requests", **_SUMS},
    ),
    # Per hour and method: hourly buckets of methods and status codes, in any zone with
    # whole-hour offsets. Its day spans have the rows of the day's files (hours do not repeat
    # across files), and save a report a read per file of the day but one.
    Grain(
        "methodhours",
        ("tenant", "api_method", "status_code"),
        dict(_REQUESTS),
        hourly=True,
        derive_from="hourly",
        max_span_days=1,
        span_shrink=1.0,
    ),
    Grain(
        "hourly",
        ("tenant", "api_method", "model_id", "status_code"),
        {"requests": "total_requests", **_SUMS},
        hourly=True,
        spans=False,
    ),
    # Per (key, user, model): a file of the benchmark data has 0.22-0.26 of them per row (its
    # day spans 0.10-0.17), and they are wide rows (two keys of many values): files get one
    # only at a fifth of a row per row. A file's summary serves only windows cut inside its
    # day (its day's spans serve the others); at 0.25, compacted files got theirs, and took
    # the summaries of the compacted benchmark data to 0.55x the data's bytes.
    # A span of two days of it has about 0.6 of the bytes of its two day spans: pairs get
    # spans at three quarters (a week's report without day buckets, cost per key, reads five
    # summaries, not seven), and spans of 4 days, measured against the pairs, mostly none.
    # On the high-cardinality variant no pair shrinks that much.
    Grain(
        "groups",
        ("tenant", "api_key_id", "user_id", "model_id"),
        {
            "requests": "total_requests",
            "sum_prompt_tokens": "total_prompt_tokens",
            "sum_completion_tokens": "total_completion_tokens",
            "sum_latency_ms": "latency_sum",
            "sum_time_to_first_token_ms": "ttft_sum",
        },
        file_max_ratio=0.2,
        pair_shrink=0.75,
    ),
    # The exact distributions of latency and time to first token per model, for percentiles.
    # Latency takes many distinct values (0.70 histogram rows per row of a 100,000-row file,
    # 0.56-0.64 per row of a day, 0.30 over 16 days, on the benchmark data): a histogram row
    # is about 2.5 bytes on disk against 22 for a data row, and merging it is cheaper than
    # scanning, so days get one where it has at most two thirds of a row per row (every day of
    # the benchmark data; on its high-cardinality variant, 0.68-0.75, days get none, which
    # keeps its summaries under half the data's bytes). Single files get none
    # (a day's span replaces them, and a file's would be nearly as many rows); spans of more
    # than a day shrink too little for the work of building them at every load.
    *(
        Grain(
            name,
            ("tenant", "model_id", column),
            dict(_REQUESTS),
            max_ratio=2 / 3,
            files=False,
            max_span_days=1,
            value_column=column,
        )
        for name, column in (("latency", "latency_ms"), ("ttft", "time_to_first_token_ms"))
    ),
)
_BY_NAME: Final = {g.name: g for g in GRAINS}


def _compute_order() -> tuple[str, ...]:
    order: list[str] = []

    def add(name: str) -> None:  # a grain, then those derived from it, depth first
        order.append(name)
        for d in GRAINS:
            if d.derive_from == name:
                add(d.name)

    for g in GRAINS:
        if g.derive_from is None:
            add(g.name)
    if len(order) != len(GRAINS):
        raise RuntimeError(f"grains derived from no declared grain: {set(_BY_NAME) - set(order)}")
    return tuple(order)


#: The order grains are computed in: each grain computed from the rows, then those derived
#: from it (a writer can write each as soon as it is there).
COMPUTE_ORDER: Final = _compute_order()


def compute_parts(n: int) -> tuple[tuple[str, ...], ...]:
    """``COMPUTE_ORDER`` cut into at most ``n`` parts of whole trees (a grain computed from the
    rows with those derived from it), dealt in turn, for threads that compute one each."""
    trees: list[list[str]] = []
    for name in COMPUTE_ORDER:
        if _BY_NAME[name].derive_from is None:
            trees.append([])
        trees[-1].append(name)
    parts: list[list[str]] = [[] for _ in range(min(max(1, n), len(trees)))]
    for i, tree in enumerate(trees):
        parts[i % len(parts)] += tree
    return tuple(tuple(k for k in COMPUTE_ORDER if k in part) for part in parts)


def input_columns(kinds: Iterable[str] | None = None) -> tuple[str, ...]:
    """The row columns the summaries of the grains ``kinds`` (None: every grain) are computed
    from."""
    found = GRAINS if kinds is None else [grain(k) for k in kinds]
    return tuple(dict.fromkeys(c for g in found for c in g.columns))


#: The row columns every grain's summaries are computed from.
INPUT_COLUMNS: Final = input_columns()


def _aggregate(
    table: pa.Table,
    keys: Sequence[str],
    aggregations: list[tuple[str, str]],
    names: Mapping[str, str],
    sums: Iterable[str],
) -> pa.Table:
    """``table`` grouped by ``keys`` with the ``aggregations`` (named as ``names`` says),
    sorted by the first key (files are cut by it) and otherwise in the order groups first
    appear (time order, for rows that come in it)."""
    # Dictionary keys are grouped by their indices (one dictionary per column): hashing
    # integers takes half the time of hashing dictionary arrays.
    dictionaries: dict[str, pa.Array] = {}
    if any(pa.types.is_dictionary(table.schema.field(k).type) for k in keys):
        table = table.unify_dictionaries()
        for k in keys:
            column = table.column(k)
            if pa.types.is_dictionary(column.type) and column.num_chunks:
                dictionaries[k] = column.chunk(0).dictionary
                indices = pa.chunked_array(
                    [c.indices for c in column.chunks], column.type.index_type
                )
                table = table.set_column(table.column_names.index(k), k, indices)
    out = table.group_by(list(keys), use_threads=False).aggregate(aggregations)
    out = out.rename_columns([names.get(c, c) for c in out.column_names])
    out = out.select([*keys, *sums]).combine_chunks()
    for k, dictionary in dictionaries.items():
        codes = out.column(k).combine_chunks()
        i = out.column_names.index(k)
        out = out.set_column(i, k, pa.DictionaryArray.from_arrays(codes, dictionary))
    return _by_tenant(out)


def _by_tenant(table: pa.Table) -> pa.Table:
    """``table`` sorted by its ``tenant`` column (stable), as it is when it already is."""
    codes, found = key_codes(table.column("tenant"))
    if not len(codes) or (codes[1:] >= codes[:-1]).all():
        return table
    if len(found) < 1 << 15:  # numpy sorts 16-bit integers by radix: linear in the rows
        codes = codes.astype(np.int16)
    return table.take(pa.array(np.argsort(codes, kind="stable")))


def grain(name: str) -> Grain:
    """The grain of summary files of kind ``name``."""
    return _BY_NAME[name]


def encode_keys(rows: pa.Table | pd.DataFrame, kinds: Iterable[str] | None = None) -> pa.Table:
    """The input columns of every grain (or of the grains ``kinds``), their string dimensions
    dictionary-encoded once for every grain."""
    found = GRAINS if kinds is None else [grain(k) for k in kinds]
    keys = [k for k in dict.fromkeys(k for g in found for k in g.dims) if k in _TEXT_DIMS]
    return with_key_type(as_table(rows, input_columns(kinds)), keys)


_TEXT_DIMS: Final = frozenset(
    ("tenant", "organization", "project", "user_id", "api_key_id", "api_method", "model_id")
)


def rollup(kind: str, rows: pa.Table | pd.DataFrame) -> pa.Table:
    """The summary of grain ``kind`` of ``rows``.

    Example:
        >>> df = pd.DataFrame({"tenant": ["t1", "t0"], "api_method": ["a", "a"],
        ...     "status_code": [200, 404], "latency_ms": [10, 20]})
        >>> rollup("summary", df).to_pandas()
          tenant api_method  total_requests  success_requests  latency_sum
        0     t0          a               1                 0           20
        1     t1          a               1                 1           10
    """
    found = _BY_NAME.get(kind)
    if found is None:
        raise ValueError(f"not a grain: {kind!r}")
    table = rows if isinstance(rows, pa.Table) else as_table(rows, list(rows.columns))
    return found.compute(table)


def iter_rollups(
    rows: pa.Table | pd.DataFrame, kinds: Iterable[str] | None = None
) -> Iterator[tuple[str, pa.Table]]:
    """The summaries of every grain (or of the grains ``kinds``) of ``rows`` as they are
    computed, in ``COMPUTE_ORDER`` (a grain derived from a finer one right after it, from its
    summary; from the rows when that one is not among ``kinds``)."""
    wanted = COMPUTE_ORDER if kinds is None else tuple(k for k in COMPUTE_ORDER if k in kinds)
    encoded = encode_keys(rows, wanted)
    done: dict[str, pa.Table] = {}
    for name in wanted:
        g = _BY_NAME[name]
        if g.derive_from is None or g.derive_from not in done:
            done[name] = g.compute(encoded)
        else:
            done[name] = g.compute_from(_BY_NAME[g.derive_from], done[g.derive_from])
        yield name, done[name]


def rollups(rows: pa.Table | pd.DataFrame) -> dict[str, pa.Table]:
    """The summaries of every grain of ``rows``, by grain name (see :func:`iter_rollups`)."""
    found = dict(iter_rollups(rows))
    return {g.name: found[g.name] for g in GRAINS}


def combine(kind: str, parts: Iterable[pa.Table]) -> pa.Table:
    """Summaries of grain ``kind`` of disjoint sets of rows combined into one.

    Example:
        >>> part = rollup("summary", pd.DataFrame({"tenant": ["t"], "api_method": ["a"],
        ...     "status_code": [200], "latency_ms": [10]}))
        >>> combine("summary", [part, part]).to_pandas()
          tenant api_method  total_requests  success_requests  latency_sum
        0      t          a               2                 2           20
    """
    return _BY_NAME[kind].combine(parts)
