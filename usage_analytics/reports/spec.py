"""A report request, validated: which rows (tenant, window, filters), grouped how (dimensions,
time buckets in a zone), which metrics, and which groups to keep.

Every argument is checked here, before anything is read, and a bad one raises
:class:`~usage_analytics.InvalidArgumentError` naming the argument, the value and the choices.

Example:
    >>> spec = parse_spec("t0", "2026-11-01", "2026-11-08", by="model_id", every="1d")
    >>> spec.by, spec.every, [m.name for m in spec.metrics][:2]
    (('model_id',), '1d', ['requests', 'success_requests'])
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .._validation import to_window
from ..errors import InvalidArgumentError
from .buckets import EVERY, check_zone
from .metrics import DEFAULT_METRICS, Metric, Needs, parse_metrics
from .prices import Prices

__all__ = [
    "DIMENSIONS",
    "STATUS_CLASSES",
    "Filter",
    "Not",
    "ReportSpec",
    "parse_spec",
    "parse_where",
    "status_classes",
]

#: What a report can group by and filter on. ``status_class`` is derived from ``status_code``.
DIMENSIONS: Final = (
    "tenant",
    "organization",
    "project",
    "user_id",
    "api_key_id",
    "api_method",
    "model_id",
    "status_code",
    "status_class",
)
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
_STRING_DIMENSIONS: Final = DIMENSIONS[:7]
#: The dictionary of the derived ``status_class`` column: codes 100..599 by hundreds, then
#: everything else.
_STATUS_CLASS_TYPE: Final = pa.dictionary(pa.int32(), pa.string())


class Not:
    """Negates a ``where`` filter: the rows whose value is none of ``values``.

    Example:
        >>> Not("")  # where={"model_id": Not("")}: rows with a model
        Not('')
        >>> Not(["404", "500"]).values
        ('404', '500')
    """

    __slots__ = ("values",)

    def __init__(self, values: Any) -> None:
        self.values: tuple[Any, ...] = _as_values(values)

    def __repr__(self) -> str:
        inner = repr(self.values[0]) if len(self.values) == 1 else repr(list(self.values))
        return f"Not({inner})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Not) and other.values == self.values

    def __hash__(self) -> int:
        return hash(("Not", self.values))


def _as_values(value: Any) -> tuple[Any, ...]:
    if isinstance(value, list | tuple | set | frozenset):
        if isinstance(value, set | frozenset):
            return tuple(sorted(value, key=repr))
        return tuple(value)
    return (value,)


@dataclass(frozen=True)
class Filter:
    """``dim`` is one of ``values`` (or, with ``negate``, none of them)."""

    dim: str
    values: tuple[Any, ...]
    negate: bool = False

    @property
    def column(self) -> str:
        """The stored column the filter reads."""
        return "status_code" if self.dim == "status_class" else self.dim

    def expression(self) -> pc.Expression:
        """The filter as a pyarrow expression over stored columns."""
        field = pc.field(self.column)
        if self.dim == "status_class":
            parts = [_class_expression(field, name) for name in self.values]
            expr = parts[0] if parts else pc.scalar(False)
            for part in parts[1:]:
                expr = expr | part
        elif self.values:
            expr = field.isin(list(self.values))
        else:
            expr = pc.scalar(False)
        return ~expr if self.negate else expr

    def mask(self, table: pa.Table) -> np.ndarray | None:
        """The rows of ``table`` (of stored columns) the filter keeps, as :meth:`expression`
        keeps them, for a dictionary column of strings without missing values: looked up once
        per dictionary value, not per row (a fifth of the time of the expression's filter on
        a summary). None for any other column."""
        column = table.column(self.column)
        if (
            self.dim == "status_class"
            or not pa.types.is_dictionary(column.type)
            or column.null_count
            or not all(isinstance(v, str) for v in self.values)
        ):
            return None
        wanted = pa.array(self.values, pa.string())
        parts = []
        for chunk in column.chunks:
            found = pc.is_in(chunk.dictionary.cast(pa.string()), value_set=wanted)
            inside = np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)
            parts.append(inside[chunk.indices.to_numpy()])
        keep = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
        return ~keep if self.negate else keep


def _class_expression(field: pc.Expression, name: str) -> pc.Expression:
    if name == "other":
        return (field < 100) | (field > 599)
    low = int(name[0]) * 100
    return (field >= low) & (field <= low + 99)


def status_classes(codes: np.ndarray) -> pa.DictionaryArray:
    """The status class of each status code ("1xx" ... "5xx", "other")."""
    index = codes // 100 - 1
    index = np.where((codes >= 100) & (codes <= 599), index, len(STATUS_CLASSES) - 1)
    return pa.DictionaryArray.from_arrays(
        pa.array(index.astype(np.int32)), pa.array(STATUS_CLASSES, pa.string())
    )


def parse_where(where: object) -> tuple[Filter, ...]:
    """``where`` ({dimension: value, list of values, or Not(...)}) as filters.

    Raises:
        InvalidArgumentError: an unknown dimension, or a value of the wrong type.
    """
    if where is None:
        return ()
    if not isinstance(where, Mapping):
        raise InvalidArgumentError(
            "where must be a mapping {dimension: value, [values] or Not(values)}, not "
            f"{type(where).__name__} ({where!r})"
        )
    out = []
    for dim, raw in where.items():
        dim = _dimension(dim, "where")
        negate = isinstance(raw, Not)
        values = raw.values if isinstance(raw, Not) else _as_values(raw)
        for value in values:
            _check_value(dim, value)
        out.append(Filter(dim, tuple(dict.fromkeys(values)), negate))
    return tuple(out)


def _check_value(dim: str, value: object) -> None:
    if dim == "status_code":
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise InvalidArgumentError(
                f"where status_code takes int codes, not {type(value).__name__} ({value!r})"
            )
        if not 0 <= int(value) <= 999:
            raise InvalidArgumentError(f"where status_code: {value} is not a code (0..999)")
    elif dim == "status_class":
        if value not in STATUS_CLASSES:
            raise InvalidArgumentError(
                f"where status_class takes {', '.join(map(repr, STATUS_CLASSES))}, not {value!r}"
            )
    elif not isinstance(value, str):
        raise InvalidArgumentError(
            f"where {dim} takes str values, not {type(value).__name__} ({value!r})"
        )


def _dimension(name: object, what: str) -> str:
    if isinstance(name, str) and name in DIMENSIONS:
        return name
    close = difflib.get_close_matches(str(name), DIMENSIONS, n=2)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise InvalidArgumentError(
        f"{what}: unknown dimension {name!r}{hint} Dimensions: {', '.join(DIMENSIONS)}"
    )


@dataclass(frozen=True)
class ReportSpec:
    """A validated report request (see :meth:`Store.report`)."""

    tenant: str | None
    lo: int  # the window, clamped: lo <= timestamp < hi
    hi: int
    by: tuple[str, ...]
    every: str | None
    tz: str
    where: tuple[Filter, ...]
    metrics: tuple[Metric, ...]
    prices: Prices | None = None
    top: int | None = None
    order_by: str | None = None

    @property
    def empty(self) -> bool:
        """Whether the window holds no instant."""
        return self.lo >= self.hi

    @functools.cached_property
    def needs(self) -> Needs:
        needs = Needs()
        for metric in self.metrics:
            needs = needs | metric.needs
        return needs

    @functools.cached_property
    def dims(self) -> frozenset[str]:
        """The dimensions a summary must keep to answer the report: the tenant, those grouped
        by and filtered on, and the model for costs (a grain that derives a measure conditioned
        on a dimension keeps that one too: see ``Grain.provides``)."""
        out = {"tenant", *self.by, *(f.dim for f in self.where)}
        if self.needs.cost:
            out.add("model_id")
        return frozenset("status_code" if d == "status_class" else d for d in out)


def parse_spec(
    tenant_id: object,
    start: object,
    end: object,
    *,
    by: object = (),
    every: object = None,
    tz: object = "UTC",
    where: object = None,
    metrics: object = None,
    prices: object = None,
    top: object = None,
    order_by: object = None,
) -> ReportSpec:
    """Validate the arguments of :meth:`Store.report`.

    Raises:
        InvalidArgumentError: any argument is not what the report takes.
    """
    if tenant_id is not None and not isinstance(tenant_id, str):
        raise InvalidArgumentError(
            f"tenant_id must be a str, or None for every tenant, not {tenant_id!r}"
        )
    lo, hi = to_window(start, end)
    by_names: Iterable[object] = (by,) if isinstance(by, str) else by  # type: ignore[assignment]
    if not isinstance(by_names, Iterable):
        raise InvalidArgumentError(f"by must be a dimension or a list of them, not {by!r}")
    dims = tuple(_dimension(d, "by") for d in by_names)
    if len(set(dims)) != len(dims):
        raise InvalidArgumentError(f"by repeats a dimension: {list(dims)}")
    if every is not None and (not isinstance(every, str) or every not in EVERY):
        raise InvalidArgumentError(
            f"every must be one of {', '.join(map(repr, EVERY))} or None, not {every!r}"
        )
    zone = check_zone(tz)
    names: Iterable[object]
    if metrics is None:
        names = DEFAULT_METRICS
    elif isinstance(metrics, str):
        names = (metrics,)
    elif isinstance(metrics, Iterable):
        names = metrics
    else:
        raise InvalidArgumentError(f"metrics must be a list of metric names, not {metrics!r}")
    parsed = parse_metrics(names)
    if prices is not None and not isinstance(prices, Prices):
        raise InvalidArgumentError(
            f"prices must be a Prices table (Prices.from_dict, from_frame or read_csv), not "
            f"{type(prices).__name__}"
        )
    costs = [m.name for m in parsed if m.is_cost]
    if costs and prices is None:
        raise InvalidArgumentError(
            f"metric(s) {', '.join(costs)} need prices=: give a Prices table, e.g. "
            "Prices.from_dict({'gpt-4o': (2.5, 10.0)})"
        )
    if top is not None and (isinstance(top, bool) or not isinstance(top, int | np.integer)):
        raise InvalidArgumentError(f"top must be an int >= 1 or None, not {top!r}")
    if top is not None and top < 1:
        raise InvalidArgumentError(f"top must be >= 1, not {top}")
    if order_by is not None and top is None:
        raise InvalidArgumentError("order_by is given without top: give top=N as well")
    if top is not None:
        if order_by is None:
            raise InvalidArgumentError(
                f"top={top} needs order_by=: the metric whose window total ranks the groups"
            )
        if order_by not in [m.name for m in parsed]:
            raise InvalidArgumentError(
                f"order_by {order_by!r} is not among the metrics {[m.name for m in parsed]}"
            )
    return ReportSpec(
        tenant=tenant_id,
        lo=lo,
        hi=hi,
        by=dims,
        every=every,
        tz=zone,
        where=parse_where(where),
        metrics=parsed,
        prices=prices,
        top=None if top is None else int(top),
        order_by=order_by if isinstance(order_by, str) else None,
    )
