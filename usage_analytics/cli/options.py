"""Option types and the options several commands share: times, ages, windows, ``--where``,
lists of dimensions and metrics, zones and price files.

Values are checked here, so that a bad one exits with code 2 and names the option.
"""

from __future__ import annotations

import difflib
import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import click
import pandas as pd

from .._validation import age_ns, to_ns
from ..errors import InvalidArgumentError, UsageAnalyticsError
from ..reports.buckets import EVERY, check_zone
from ..reports.metrics import metric_names, parse_metrics
from ..reports.prices import Prices
from ..reports.spec import DIMENSIONS, Not
from ..store import Store

__all__ = [
    "AGE",
    "CUTOFF",
    "TIME",
    "ZONE",
    "Age",
    "Window",
    "age_ns",
    "by_option",
    "metrics_option",
    "now_ns",
    "parse_time",
    "prices_option",
    "resolve_window",
    "tenant_option",
    "where_option",
    "window_options",
]

if TYPE_CHECKING:
    _ParamType: TypeAlias = click.ParamType[Any, Any]
else:
    _ParamType = click.ParamType

_S: Final = 10**9
_INT: Final = re.compile(r"\s*[+-]?\d+\s*")


def now_ns() -> int:
    """The current time as int ns since the epoch, to the whole second (tests replace it)."""
    return time.time_ns() // _S * _S


@dataclass(frozen=True)
class Age:
    """An age as given (``text``) and in ns."""

    text: str
    ns: int


class AgeType(_ParamType):
    """A positive age: an integer and a unit (s, min or m, h, d, w), e.g. ``7d``."""

    name = "AGE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Age:
        if isinstance(value, Age):
            return value
        ns = age_ns(str(value))
        if ns is None or ns <= 0:
            self.fail(
                f"{value!r} is not an age: give a whole number > 0 and a unit, s, min (or m), "
                "h, d or w, e.g. 30d or 720h",
                param,
                ctx,
            )
        return Age(str(value).strip(), ns)


AGE: Final = AgeType()


@dataclass(frozen=True)
class TimeValue:
    """A time as given: int ns, or a Timestamp (naive ones are read in the command's zone)."""

    text: str
    value: int | pd.Timestamp


class TimeType(_ParamType):
    """A time: ISO 8601 time or date, or int ns since the epoch."""

    name = "TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> TimeValue:
        if isinstance(value, TimeValue):
            return value
        text = str(value)
        if _INT.fullmatch(text):
            return TimeValue(text, int(text))
        try:
            ts = pd.Timestamp(text.strip())
        except (ValueError, TypeError, OverflowError) as exc:
            self.fail(
                f"cannot read {text!r} as a time ({exc}); give an ISO time or date such as "
                "2026-11-01 or 2026-11-01T09:30:00+01:00, or int ns since the epoch",
                param,
                ctx,
            )
        if ts is pd.NaT:
            self.fail(f"{text!r} is not a time; give e.g. 2026-11-01", param, ctx)
        return TimeValue(text, ts)


TIME: Final = TimeType()


def parse_time(value: TimeValue, tz: str, option: str) -> int:
    """``value`` as int ns, a naive time read on the wall clock of ``tz``.

    Raises:
        click.BadParameter: the wall-clock time does not exist in ``tz`` or is ambiguous.
    """
    if isinstance(value.value, int):
        return value.value
    ts = value.value
    if ts.tzinfo is None:
        try:
            ts = ts.tz_localize(tz, ambiguous="raise", nonexistent="raise")
        except (ValueError, OverflowError) as exc:  # pytz/zoneinfo errors derive from these
            raise click.BadParameter(
                f"{value.text!r} is not one instant in {tz} ({exc}); give a UTC offset, e.g. "
                f"{value.text}+01:00",
                param_hint=option,
            ) from exc
    try:
        return to_ns(ts, option)
    except InvalidArgumentError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


class CutoffType(_ParamType):
    """A cutoff: a time (see :class:`TimeType`) or an age before now, e.g. ``30d``."""

    name = "TIME|AGE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> TimeValue:
        if isinstance(value, TimeValue):
            return value
        text = str(value)
        age = age_ns(text)
        if age is not None:
            return TimeValue(text, now_ns() - age)
        return TIME.convert(value, param, ctx)


CUTOFF: Final = CutoffType()


class ZoneType(_ParamType):
    """An IANA time zone."""

    name = "ZONE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return check_zone(str(value))
        except InvalidArgumentError as exc:
            self.fail(str(exc), param, ctx)


ZONE: Final = ZoneType()


def _split(values: Sequence[str]) -> list[str]:
    """Values of a repeatable option, each of which may be comma-separated."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _unknown_dimension(name: str) -> str:
    close = difflib.get_close_matches(name, DIMENSIONS, n=2)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"unknown dimension {name!r}{hint}; the dimensions are {', '.join(DIMENSIONS)}"


def _by(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> tuple[str, ...]:
    names = _split(values)
    for name in names:
        if name not in DIMENSIONS:
            raise click.BadParameter(_unknown_dimension(name), ctx, param)
    if len(set(names)) != len(names):
        raise click.BadParameter(f"a dimension is given twice: {', '.join(names)}", ctx, param)
    return tuple(names)


def by_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--by",
        multiple=True,
        metavar="DIM[,DIM...]",
        callback=_by,
        help="Group by these dimensions (repeatable or comma-separated): "
        + ", ".join(DIMENSIONS)
        + ".",
    )(command)


def _metrics(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> tuple[str, ...] | None:
    names = _split(values)
    if not names:
        if values:
            raise click.BadParameter("give at least one metric name", ctx, param)
        return None
    try:
        parse_metrics(names)
    except InvalidArgumentError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    return tuple(names)


def metrics_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--metrics",
        multiple=True,
        metavar="M[,M...]",
        callback=_metrics,
        help="The metrics, in order (repeatable or comma-separated; default: requests, "
        "success_requests, failure_requests, prompt_tokens, completion_tokens, "
        "latency_ms_mean). Metrics: " + ", ".join(metric_names()) + ".",
    )(command)


def _where(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, Any]:
    where: dict[str, Any] = {}
    for text in values:
        negate = "!=" in text
        dim, sep, raw = text.partition("!=" if negate else "=")
        dim = dim.strip()
        if not sep or not dim:
            raise click.BadParameter(
                f"{text!r} is not DIM=VALUE[,VALUE...] or DIM!=VALUE[,VALUE...], e.g. "
                "model_id=gpt-4o or model_id!=",
                ctx,
                param,
            )
        if dim not in DIMENSIONS:
            raise click.BadParameter(_unknown_dimension(dim), ctx, param)
        if dim in where:
            raise click.BadParameter(
                f"{dim} is filtered twice: give its values once, comma-separated", ctx, param
            )
        items: list[Any] = [v.strip() for v in raw.split(",")]
        if dim == "status_code":
            try:
                items = [int(v) for v in items]
            except ValueError:
                raise click.BadParameter(
                    f"status_code takes int codes, not {raw!r}", ctx, param
                ) from None
        where[dim] = Not(items) if negate else items
    return where


def where_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--where",
        multiple=True,
        metavar="DIM=V[,V...]",
        callback=_where,
        help="Only rows whose DIM is one of the values (repeatable, ANDed); DIM!=V[,V...] for "
        "none of them ('model_id!=': rows with a model).",
    )(command)


class PricesType(_ParamType):
    """A CSV price table: ``model_id, prompt_per_1m, completion_per_1m[, effective_from]``."""

    name = "FILE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Prices:
        if isinstance(value, Prices):
            return value
        try:
            return Prices.read_csv(str(value))
        except UsageAnalyticsError as exc:
            self.fail(f"{value}: " + "; ".join(str(exc).split("\n")), param, ctx)


def prices_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--prices",
        type=PricesType(),
        help="A CSV price table for the cost metrics: columns model_id, prompt_per_1m, "
        "completion_per_1m (per million tokens) and optionally effective_from (a time; empty: "
        "always).",
    )(command)


def tenant_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--tenant", required=True, help="The tenant id.")(command)


def as_of_value(text: str | None) -> int | str | None:
    """``--as-of``: a version when it is a whole number, else a time."""
    if text is None:
        return None
    return int(text) if text.strip().isdigit() else text


def every_option(default: str | None, help: str) -> Callable[[Callable[..., Any]], Any]:
    return click.option(
        "--every",
        type=click.Choice(list(EVERY)),
        default=default,
        show_default=default is not None,
        help=help,
    )


# -- windows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """``start <= timestamp < end`` in int ns, and the zone it is read and shown in."""

    start: int
    end: int
    tz: str


def window_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--start``, ``--end``, ``--last`` and ``--tz``, resolved into a ``window`` argument by
    :func:`resolve_window` (the command receives ``start``, ``end``, ``last`` and ``tz``)."""
    options = [
        click.option(
            "--start",
            type=TIME,
            help="Inclusive start: an ISO time or date (naive: in --tz), or int ns since the "
            "epoch (default: the first row's second).",
        ),
        click.option(
            "--end",
            type=TIME,
            help="Exclusive end, as --start (default: the second after the last row, or now "
            "with --last).",
        ),
        click.option(
            "--last",
            type=AGE,
            metavar="AGE",
            help="The window is this age up to --end (or now): e.g. 7d, 24h, 90min, 2w.",
        ),
        click.option(
            "--tz",
            type=ZONE,
            default="UTC",
            show_default=True,
            help="The IANA zone in which naive times are read, buckets follow the wall clock "
            "and times are printed.",
        ),
        click.option(
            "--as-of",
            metavar="VERSION|TIME",
            help="Report on the dataset as it was at one commit: a version (see 'history') or "
            "an ISO time (naive: UTC), the latest commit at or before it.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def resolve_window(
    store: Store, start: TimeValue | None, end: TimeValue | None, last: Age | None, tz: str
) -> Window:
    """The window of ``--start``, ``--end`` and ``--last``; by default the whole dataset, from
    the second of its first row to the second after its last.

    Raises:
        click.UsageError: ``--last`` with ``--start``, or an end before the start.
    """
    if last is not None and start is not None:
        raise click.UsageError("give --start or --last, not both")
    hi = None if end is None else parse_time(end, tz, "--end")
    lo = None if start is None else parse_time(start, tz, "--start")
    if last is not None:
        hi = now_ns() if hi is None else hi
        lo = hi - last.ns
    if lo is None or hi is None:
        info = store.info()
        if info.first_timestamp is None or info.last_timestamp is None:
            first = last_end = now_ns()
        else:
            first = info.first_timestamp // _S * _S
            last_end = -(-(info.last_timestamp + 1) // _S) * _S
        if lo is None:
            lo = first if hi is None else min(first, hi)
        if hi is None:
            hi = max(last_end, lo)
    if hi < lo:
        raise click.UsageError(f"--end ({end.text if end else hi}) is before --start")
    return Window(lo, hi, tz)


def with_window(command: Callable[..., Any]) -> Callable[..., Any]:
    """Resolve the options of :func:`window_options` (given apart, to place them in the help)
    and ROOT: the command gets ``store`` and ``window``."""

    @functools.wraps(command)
    def run(
        root: str,
        *args: Any,
        start: TimeValue | None,
        end: TimeValue | None,
        last: Age | None,
        tz: str,
        as_of: str | None,
        **kwargs: Any,
    ) -> Any:
        store = Store(root, as_of=as_of_value(as_of))
        window = resolve_window(store, start, end, last, tz)
        return command(store, *args, window=window, **kwargs)

    return run
