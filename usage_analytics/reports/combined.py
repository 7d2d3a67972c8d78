"""The exact combination of partials (of disjoint sets of rows) into the groups of a report.

Sums and counts add up (one group-by over every partial's rows), distributions keep every
(value, count) pair, sorted (a value counted by several partials ranks the same), value sets
unite, and priced token sums are summed per model and price row for pricing. Every component is
coded with one set of group ids, so that the groups of a report's measures agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .kernels import (
    VALUE_BITS,
    Partial,
    encode_groups,
    group_sums,
    ints,
    key_codes,
    key_runs,
    sorted_pairs,
    sum_by_group,
    sums_by_key,
    with_key_type,
)

__all__ = ["Combined", "combine"]


@dataclass
class Combined:
    """Partials combined into groups: ``groups`` holds the key tuples, sorted; every other
    field is indexed by group (0 .. len(groups) - 1)."""

    groups: pa.Table
    base: dict[str, np.ndarray]
    #: Per histogram column: (group, value, running count) rows, sorted by group, then value
    #: (a value may repeat: counts of it from several parts); the running count adds up the
    #: counts of the rows up to each, over every group.
    hists: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    distinct: dict[str, np.ndarray] = field(default_factory=dict)
    #: (group, model id, price row, prompt tokens, completion tokens) per priced piece.
    cost: tuple[np.ndarray, pa.Array, np.ndarray, np.ndarray, np.ndarray] | None = None
    #: Costs per group by kind ("prompt_cost", "completion_cost", "cost"), set by pricing.
    costs: dict[str, np.ndarray] = field(default_factory=dict)
    #: Per histogram column: each group's count, and the count of the groups before each.
    _ranks: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return int(self.groups.num_rows)

    def count_distinct(self, column: str) -> np.ndarray:
        """Each group's number of distinct values of ``column``."""
        return self.distinct.get(column, np.zeros(self.size, dtype=np.int64))

    def quantile(self, column: str, q: float) -> np.ndarray:
        """Each group's ``q`` quantile (0 < q <= 1) of ``column``, by linear interpolation
        between the closest ranks (pandas' default, DuckDB's ``quantile_cont``); NaN for a
        group without values."""
        out = np.full(self.size, np.nan)
        if column not in self.hists:  # no rows
            return out
        gid, value, cum = self.hists[column]
        if not len(gid):
            return out
        if column not in self._ranks:  # the same for every quantile of the column
            # The count of groups 0..g is the running count at the last row of a group <= g.
            past = np.searchsorted(gid, np.arange(self.size, dtype=gid.dtype), side="right")
            totals = np.diff(np.where(past > 0, cum[past - 1], 0), prepend=0)
            self._ranks[column] = (totals, np.cumsum(totals) - totals)
        totals, before = self._ranks[column]
        has = np.flatnonzero(totals)
        position = (totals[has] - 1) * q  # 0-based rank within the group
        low = np.floor(position)
        high = np.ceil(position)
        start = before[has]
        at_low = value[np.searchsorted(cum, start + low.astype(np.int64), side="right")]
        at_high = value[np.searchsorted(cum, start + high.astype(np.int64), side="right")]
        low_f, high_f = at_low.astype(np.float64), at_high.astype(np.float64)
        out[has] = low_f + (position - low) * (high_f - low_f)
        return out


def _concat(tables: list[pa.Table], columns: Sequence[str]) -> pa.Table:
    parts = [with_key_type(t.select(list(columns)), columns) for t in tables]
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables(parts, promote_options="permissive")


def combine(
    partials: Iterable[Partial],
    keys: Sequence[str],
    measures: Sequence[str],
    empty_keys: Mapping[str, pa.DataType],
) -> Combined:
    """The exact combination of ``partials`` (of disjoint sets of rows), grouped by ``keys``
    (a subset of the partials' keys: the others are summed over).

    Args:
        measures: the base measures to sum (the partials' integers may be of any width).
        empty_keys: the type of each key, for the groups table of an empty result.
    """
    by_component: dict[str, list[pa.Table]] = {}
    for partial in partials:
        for name, table in partial.items():
            if table.num_rows:
                by_component.setdefault(name, []).append(table)
    bases = by_component.pop("base", [])
    if not bases:
        groups = pa.table({k: pa.array([], empty_keys[k]) for k in keys})
        return Combined(groups, {m: np.zeros(0, dtype=np.int64) for m in measures})
    # A component whose tables are its partials' base tables (costs of summaries: the same
    # rows) takes the base's group ids: its keys are not coded twice.
    shared = [
        name
        for name, parts in by_component.items()
        if len(parts) == len(bases) and all(p is b for p, b in zip(parts, bases, strict=True))
    ]
    if not by_component:  # sums only: one group-by over every partial
        values = {m: np.concatenate([ints(t.column(m)) for t in bases]) for m in measures}
        summed = group_sums(_concat(bases, keys), keys, values)
        return Combined(summed.select(list(keys)), {m: ints(summed.column(m)) for m in measures})
    # One coding of the keys of every component, so that group ids agree between them.
    names = ["base", *(n for n in by_component if n not in shared)]
    key_tables = []
    runs: dict[str, np.ndarray] = {}
    for name in names:
        parts = bases if name == "base" else by_component[name]
        table = _concat(parts, keys)
        if name.startswith("hist:"):  # a row per value: long runs of one key tuple
            table, runs[name] = key_runs(table)
        key_tables.append(table)
    gid, groups = encode_groups(pa.concat_tables(key_tables), keys)
    size = groups.num_rows
    offsets = np.cumsum([0, *(t.num_rows for t in key_tables)])
    gids = {name: gid[offsets[i] : offsets[i + 1]] for i, name in enumerate(names)}
    for name, lengths in runs.items():
        gids[name] = np.repeat(gids[name], lengths)
    gids.update(dict.fromkeys(shared, gids["base"]))
    base_gid = gids["base"]
    values = {m: np.concatenate([ints(t.column(m)) for t in bases]) for m in measures}
    if len(base_gid) and base_gid.min() < 0:  # rows with a missing key are in no group
        kept = base_gid >= 0
        base_gid, values = base_gid[kept], {m: v[kept] for m, v in values.items()}
    combined = Combined(groups, {m: sum_by_group(base_gid, v, size) for m, v in values.items()})
    for name, parts in by_component.items():
        component_gid = gids[name]
        kind, _, column = name.partition(":")
        if kind == "hist":
            # (In place where it can be: these are the largest arrays of a report of
            # percentiles.)
            composite = component_gid << VALUE_BITS
            del component_gid, gids[name]
            at = 0
            for chunk in (c for t in parts for c in t.column("value").chunks):
                composite[at : at + len(chunk)] |= chunk.to_numpy(zero_copy_only=False)
                at += len(chunk)
            count = np.concatenate([ints(c) for t in parts for c in t.column("count").chunks])
            # Sorted, not added up: a value may repeat (each part's count of it), which
            # ranks the same.
            found, totals = sorted_pairs(composite, count, consume=True)
            del composite, count
            group = (found >> VALUE_BITS).astype(np.int32)
            found &= (1 << VALUE_BITS) - 1
            combined.hists[column] = (group, found, np.cumsum(totals, out=totals))
        elif kind == "distinct":
            values = _concat(parts, ["value"]).unify_dictionaries().column("value")
            codes, found_values = key_codes(values)
            width = max(len(found_values), 1)
            pairs = np.unique(component_gid * width + codes)
            combined.distinct[column] = np.bincount(pairs // width, minlength=size).astype(np.int64)
        elif kind == "cost":
            table = _concat(parts, ["model_id", "price", "prompt_tokens", "completion_tokens"])
            combined.cost = _priced_sums(table, component_gid, size)
    return combined


def _priced_sums(
    table: pa.Table, gid: np.ndarray, groups: int
) -> tuple[np.ndarray, pa.Array, np.ndarray, np.ndarray, np.ndarray]:
    """The token sums of a cost component's rows per (group, model, price row), sorted by
    them: (group, model, price, prompt tokens, completion tokens).

    A price row is of one model: when every row has one, the sums are taken per (group, price)
    on one integer key (a tenth of the time of grouping by the model too), and each takes its
    model from a row of its price. Rows without a price (-1) are grouped by model as well,
    for the error that names them.
    """
    tokens = {
        "prompt_tokens": ints(table.column("prompt_tokens")),
        "completion_tokens": ints(table.column("completion_tokens")),
    }
    price = ints(table.column("price"))
    if len(price) and price.min() >= 0:
        width = int(price.max()) + 1
        found, sums = sums_by_key(gid.astype(np.int64) * width + price, groups * width, tokens)
        group, prices = np.divmod(found, width)
        row_of_price = np.zeros(width, dtype=np.int64)
        row_of_price[price] = np.arange(len(price))
        model = table.column("model_id").take(pa.array(row_of_price[prices])).combine_chunks()
        return group, model, prices, sums["prompt_tokens"], sums["completion_tokens"]
    summed = group_sums(
        table.append_column("_gid", pa.array(gid)), ["_gid", "model_id", "price"], tokens
    )
    return (
        ints(summed.column("_gid")),
        summed.column("model_id").combine_chunks(),
        ints(summed.column("price")),
        ints(summed.column("prompt_tokens")),
        ints(summed.column("completion_tokens")),
    )
