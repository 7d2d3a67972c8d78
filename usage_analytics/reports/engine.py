"""The engine: a validated report over partials of rows and of summaries, finished as a frame.

``Report`` binds a spec to its time buckets. It tells a reader which columns and filter a row
scan needs, turns each scanned chunk and each summary table into a partial, and finishes the
exact combination of all partials into the result frame: a ``bucket`` column when the report
has buckets (dense: every bucket of the window for every group with rows in it), then the
dimensions, then the metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .buckets import Buckets, check_end
from .combined import Combined, combine
from .grains import HOUR_NS, Grain
from .kernels import KEY_TYPE, Partial, encode_groups, group_sums, ints, partial_of_rows
from .metrics import measure_values
from .planner import Piece
from .spec import ReportSpec, status_classes

__all__ = ["Report"]

#: The key of a report without dimensions or buckets: one group of every row.
_ALL: Final = "_all"


@dataclass(frozen=True)
class Report:
    """A report spec with its buckets (None without ``every``)."""

    spec: ReportSpec
    buckets: Buckets | None
    #: Result column names for metrics, where they differ from the metric's (presets).
    names: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: ReportSpec, names: Mapping[str, str] | None = None) -> Report:
        buckets = None
        if spec.every is not None:
            check_end(spec.hi)  # also for an empty window past the end of labels
            if not spec.empty:
                buckets = Buckets.of(spec.every, spec.tz, spec.lo, spec.hi)
        return cls(spec, buckets, dict(names or {}))

    # -- what a scan reads -------------------------------------------------------------------

    @cached_property
    def keys(self) -> tuple[str, ...]:
        """The group keys of the report's partials."""
        keys = (("bucket",) if self.buckets is not None else ()) + self.spec.by
        return keys or (_ALL,)

    @cached_property
    def scan_columns(self) -> tuple[str, ...]:
        """The stored columns a row scan reads."""
        columns: dict[str, None] = {}
        for key in self.spec.by:
            columns["status_code" if key == "status_class" else key] = None
        if self.buckets is not None:
            columns["timestamp"] = None
        columns.update(dict.fromkeys(sorted(self.spec.needs.columns)))
        return tuple(columns)

    def scan_filter(self, ranges: Sequence[tuple[int, int]] | None = None) -> pc.Expression:
        """The rows of the report: its tenant, window (or the time ranges ``[start, end)``
        given, inside it) and ``where`` filters."""
        spec = self.spec
        ts = pc.field("timestamp")
        expr: pc.Expression | None = None
        for start, end in ranges or ((spec.lo, spec.hi),):
            part = (ts >= start) & (ts <= end - 1)
            expr = part if expr is None else expr | part
        assert expr is not None
        if spec.tenant is not None:
            expr = (pc.field("tenant") == spec.tenant) & expr
        for condition in spec.where:
            expr = expr & condition.expression()
        return expr

    # -- partials ----------------------------------------------------------------------------

    def _key_table(self, table: pa.Table, bucket: np.ndarray | None) -> pa.Table:
        columns: dict[str, pa.Array | pa.ChunkedArray] = {}
        for key in self.keys:
            if key == "bucket":
                assert bucket is not None
                columns[key] = pa.array(bucket)
            elif key == _ALL:
                columns[key] = pa.array(np.zeros(table.num_rows, dtype=np.int32))
            elif key == "status_class":
                columns[key] = status_classes(ints(table.column("status_code")))
            else:
                columns[key] = table.column(key)
        return pa.table(columns)

    def from_rows(self, rows: pa.Table) -> Partial:
        """The partial of scanned rows (the :attr:`scan_columns` of rows the filter kept)."""
        needs = self.spec.needs
        bucket = None
        if self.buckets is not None:
            bucket = self.buckets.index(ints(rows.column("timestamp")))
        cost = None
        if needs.cost:
            assert self.spec.prices is not None
            model = rows.column("model_id")
            price = self.spec.prices.lookup(model, ints(rows.column("timestamp")))
            cost = (
                model,
                price,
                ints(rows.column("prompt_tokens")),
                ints(rows.column("completion_tokens")),
            )
        return partial_of_rows(
            self._key_table(rows, bucket),
            self.keys,
            {m: measure_values(rows, m) for m in sorted(needs.measures)},
            hists={c: ints(rows.column(c)) for c in sorted(needs.hists)},
            distinct={c: rows.column(c) for c in sorted(needs.distinct)},
            cost=cost,
        )

    def from_summaries(
        self,
        grain: Grain,
        parts: Sequence[tuple[pa.Table, Piece, tuple[int, int] | None]],
        components: Sequence[str],
    ) -> Partial:
        """The ``components`` of the partial of summary tables of ``grain``, each covering its
        piece (whose tenant rows a reader already picked when the report has a tenant), or only
        the hours given (hour numbers, inclusive) of an hourly grain.

        The tables are combined first, each with its piece's bucket and price time, so that a
        report over many pieces computes its partial once.
        """
        spec = self.spec
        bucketed = self.buckets is not None and not grain.hourly
        tables = []
        for table, piece, hours in parts:
            if hours is not None:
                table = _hour_range(table, *hours)
            if bucketed:
                assert self.buckets is not None
                at = self.buckets.index(np.array([piece.first]))[0]
                table = table.append_column("_bucket", pa.array(np.full(table.num_rows, at)))
            if spec.needs.cost:  # no price changes inside the piece (the planner checked)
                at = max(piece.first, spec.lo)
                table = table.append_column("_at", pa.array(np.full(table.num_rows, at)))
            tables.append(table)
        table = (
            tables[0]
            if len(tables) == 1
            else pa.concat_tables(tables, promote_options="permissive")
        )
        condition, keep = None, None
        for where in spec.where:
            mask = where.mask(table)
            if mask is not None:
                keep = mask if keep is None else keep & mask
            else:
                condition = (
                    where.expression() if condition is None else condition & where.expression()
                )
        if keep is not None:
            table = table.filter(pa.array(keep))
        if condition is not None:
            table = table.filter(condition)
        bucket = None
        if self.buckets is not None:
            if grain.hourly:
                bucket = self.buckets.index(ints(table.column("hour")) * HOUR_NS)
            else:
                bucket = ints(table.column("_bucket"))
        keys = dict(zip(self.keys, self._key_table(table, bucket).columns, strict=True))
        out: Partial = {}
        for component in components:
            kind, _, column = component.partition(":")
            columns: dict[str, pa.Array | pa.ChunkedArray] = dict(keys)
            if kind == "base" and grain.value_column is not None:
                # A distribution has a row per value: its sums per key tuple are far fewer.
                sums = {name: grain.measure(table, name) for name in sorted(spec.needs.measures)}
                out[component] = group_sums(pa.table(keys), self.keys, sums)
                continue
            if kind == "base":
                for name in sorted(spec.needs.measures):
                    columns[name] = pa.array(grain.measure(table, name))
                if "cost" in components:  # the same rows: one table, coded once (see combine)
                    columns.update(self._priced(grain, table))
                    out["cost"] = out[component] = pa.table(columns)
                    continue
            elif kind == "cost":
                if "cost" not in out:
                    columns.update(self._priced(grain, table))
                    out[component] = pa.table(columns)
                continue
            elif kind == "hist":
                columns["value"] = table.column(column)
                columns["count"] = pa.array(grain.measure(table, "requests"))
            else:  # distinct
                columns["value"] = table.column(column)
            out[component] = pa.table(columns)
        return out

    def _priced(self, grain: Grain, table: pa.Table) -> dict[str, pa.Array | pa.ChunkedArray]:
        """The columns of a cost component of a summary table."""
        assert self.spec.prices is not None
        model = table.column("model_id")
        return {
            "model_id": model,
            "price": pa.array(self.spec.prices.lookup(model, ints(table.column("_at")))),
            "prompt_tokens": pa.array(grain.measure(table, "sum_prompt_tokens")),
            "completion_tokens": pa.array(grain.measure(table, "sum_completion_tokens")),
        }

    # -- finishing ---------------------------------------------------------------------------

    def _key_types(self) -> dict[str, pa.DataType]:
        types: dict[str, pa.DataType] = {k: KEY_TYPE for k in self.keys}
        types.update({k: pa.int32() for k in ("bucket", _ALL, "status_code") if k in types})
        return types

    def _combine(self, partials: Sequence[Partial], keys: Sequence[str]) -> Combined:
        measures = sorted(self.spec.needs.measures)
        combined = combine(partials, keys, measures, self._key_types())
        if self.spec.needs.cost:
            assert self.spec.prices is not None
            if combined.cost is None:
                combined.costs = {
                    k: np.zeros(combined.size) for k in ("prompt_cost", "completion_cost", "cost")
                }
            else:
                combined.costs = self.spec.prices.costs(*combined.cost, groups=combined.size)
        return combined

    def finish(self, partials: Iterable[Partial]) -> pd.DataFrame:
        """The report's frame from the partials of all the rows it covers."""
        partials = list(partials)
        spec = self.spec
        combined = self._combine(partials, self.keys)
        values = {m.name: m.finish(combined) for m in spec.metrics}
        groups = combined.groups
        if self.buckets is None or not groups.num_rows:
            keep = None
            if spec.top is not None and groups.num_rows:
                keep = _top(values[spec.order_by or ""], spec.top)
            return self._frame(groups, values, keep)
        # Dense: every bucket of the window, for every series (tuple of dimension values) with
        # rows in it.
        if spec.by:
            sid, series = encode_groups(groups, spec.by)
        else:
            sid, series = np.zeros(groups.num_rows, dtype=np.int64), pa.table({})
        n_series = series.num_rows if spec.by else 1
        if spec.top is not None and n_series > spec.top:
            window = self._combine(partials, spec.by)  # one group per series, sorted alike
            metric = next(m for m in spec.metrics if m.name == spec.order_by)
            keep_series = np.zeros(n_series, dtype=bool)
            keep_series[_top(metric.finish(window), spec.top)] = True
            rows = keep_series[sid]
            sid = (np.cumsum(keep_series) - 1)[sid[rows]]
            groups = groups.filter(pa.array(rows))
            values = {k: v[rows] for k, v in values.items()}
            series = series.filter(pa.array(keep_series))
            n_series = series.num_rows
        n_buckets = len(self.buckets)
        at = ints(groups.column("bucket")) * n_series + sid
        dense: dict[str, np.ndarray] = {}
        for metric in spec.metrics:
            column = np.full(n_buckets * n_series, metric.fill, dtype=metric.dtype)
            column[at] = values[metric.name]
            dense[metric.name] = column
        grid: dict[str, pa.Array] = {
            "bucket": pa.array(np.repeat(np.arange(n_buckets, dtype=np.int32), n_series))
        }
        tiled = pa.array(np.tile(np.arange(n_series), n_buckets))
        for key in spec.by:
            grid[key] = series.column(key).take(tiled)
        return self._frame(pa.table(grid), dense, None)

    def _frame(
        self, groups: pa.Table, values: dict[str, np.ndarray], keep: np.ndarray | None
    ) -> pd.DataFrame:
        """The result frame: bucket labels, dimensions as str (status_code as int32), then the
        metrics in their dtypes; ``keep`` selects rows."""
        if keep is not None:
            groups = groups.take(pa.array(keep))
            values = {k: v[keep] for k, v in values.items()}
        columns: dict[str, object] = {}
        if self.spec.every is not None:
            if self.buckets is None or not groups.num_rows:
                columns["bucket"] = _empty_labels(self.spec.tz)
            else:
                columns["bucket"] = self.buckets.labels()[ints(groups.column("bucket"))]
        for key in self.spec.by:
            columns[key] = _as_series(key, groups.column(key))
        for metric in self.spec.metrics:
            name = self.names.get(metric.name, metric.name)
            columns[name] = np.asarray(values[metric.name], dtype=metric.dtype)
        return pd.DataFrame(columns, copy=False)


def _empty_labels(tz: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex([], dtype=pd.DatetimeTZDtype(unit="ns", tz=tz))


def _as_series(key: str, column: pa.ChunkedArray | pa.Array) -> pd.Series:
    if key == "status_code":
        return pd.Series(np.asarray(column.to_numpy(), dtype=np.int32))
    strings = column.cast(pa.string())
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    return pd.Series(pd.array(strings, dtype="str"), copy=False)


def _top(order: np.ndarray, n: int) -> np.ndarray:
    """The positions of the ``n`` largest ``order`` values (NaN counts as the smallest), ties
    broken by position (the groups are sorted by their dimension values), in position order."""
    if np.issubdtype(order.dtype, np.integer):
        key = -order.astype(np.int64)  # exact: counts and sums are never negative
    else:
        value = order.astype(np.float64)
        key = np.where(np.isnan(value), np.inf, -value)
    best = np.lexsort((np.arange(len(key)), key))[:n]
    return np.sort(best)


def _hour_range(table: pa.Table, first: int, last: int) -> pa.Table:
    """The rows of an hourly summary ``table`` whose hour is in ``first..last``: a slice where
    the hours ascend (the rows of one tenant of a file, summarized from rows in time order),
    else a filter by a mask (a third of the time of an expression's for a few thousand rows)."""
    hour = ints(table.column("hour"))
    if len(hour) < 2 or bool((hour[1:] >= hour[:-1]).all()):
        lo, hi = np.searchsorted(hour, [first, last + 1])
        return table.slice(int(lo), int(hi - lo))
    return table.filter(pa.array((hour >= first) & (hour <= last)))
