"""Worker functions for the multi-process tests, and a command-line entry point.

The functions are top-level so that ``multiprocessing`` with the "spawn" context can import them
in a child. Each reports back through a queue: ``("ok", ...)`` or ``("error", repr(exc))``.

Command line (run as ``python tests/_workers.py COMMAND ROOT [ARGS]``)::

    write ROOT K              create_usage(kill_batch(K)), prints "ok <rows>"
    delete ROOT CUTOFF [N]    delete_usage(CUTOFF, limit=N), prints "ok <rows>"
    compact ROOT              compact(), prints "ok <partitions>"

The fault point (``usage_analytics._storage.faults``) is armed by the caller through the
environment variable ``USAGE_ANALYTICS_KILL_AT``. A ROOT that is a URL (object storage) is
opened with the storage options in the environment variable :data:`STORAGE_ENV` (JSON).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier, Event
from typing import Any, Final

import pandas as pd

from usage_analytics import Store

#: The storage options (JSON) of the object store that ROOT URLs are on.
STORAGE_ENV: Final = "USAGE_ANALYTICS_TEST_STORAGE_OPTIONS"
SEC: Final = 1_000_000_000
HOUR: Final = 3_600 * SEC
DAY: Final = 24 * HOUR
#: Midnight UTC of 2026-11-01, in nanoseconds.
D0: Final = int(pd.Timestamp("2026-11-01", tz="UTC").value)
#: Width of the time slot of one batch in the slot design (four slots per day).
SLOT: Final = 6 * HOUR
#: Spacing of the rows inside a slot batch.
STEP: Final = SEC


def open_store(root: str, **kwargs: Any) -> Store:
    """``Store(root)``; a URL root gets the storage options of :data:`STORAGE_ENV`."""
    options = os.environ.get(STORAGE_ENV)
    if "://" in root and options:
        kwargs["storage_options"] = json.loads(options)
    return Store(root, **kwargs)


def _report_error(out: Queue[Any], tag: Any) -> None:
    out.put(("error", tag, traceback.format_exc()[-2000:]))


# ---------------------------------------------------------------------------------------------
# Batch builders (shared by the workers and the tests that check what they wrote).


def writer_batch(writer: int, batch: int, rows: int) -> list[dict[str, Any]]:
    """Rows of ``writer``'s ``batch``: keys unique across writers and batches, over two days."""
    out = []
    for i in range(rows):
        seq = batch * rows + i
        out.append(
            {
                "user_id": f"w{writer}",
                "tenant": f"tenant-{writer % 2}",
                "api_method": f"m{i % 3}",
                "status_code": 200 if i % 4 else 503,
                "timestamp": D0 + (i % 2) * DAY + writer * HOUR + seq * SEC,
                "latency_ms": writer * 1_000_000 + seq,
                "prompt_tokens": i,
            }
        )
    return out


def race_batch(who: int, round_: int) -> list[dict[str, Any]]:
    """Ten rows of user ``u<round_>`` straddling midnight; workers 0 and 1 share five keys."""
    base = D0 + round_ * DAY + DAY - 7 * SEC
    first = 5 * who
    return [
        {
            "user_id": f"u{round_}",
            "tenant": "race",
            "organization": f"w{who}",
            "timestamp": base + i * SEC,
            "latency_ms": who,
        }
        for i in range(first, first + 10)
    ]


def slot_batch(k: int, rows: int) -> list[dict[str, Any]]:
    """Batch ``k`` of the slot design: api_method ``b-<k>``, ``rows`` rows in slot ``k``.

    Slots are six hours apart, so four batches share a day and every fourth batch straddles
    midnight (two partitions). Every row of batch ``k`` is older than every row of ``k + 1``.
    """
    return [
        {
            "user_id": f"u-{k}",
            "tenant": "t",
            "api_method": f"b-{k:05d}",
            "api_key_id": f"key-{k % 3}",
            "status_code": 200 if i % 2 else 500,
            "timestamp": slot_min(k, rows) + i * STEP,
            "latency_ms": k,
            "prompt_tokens": i,
        }
        for i in range(rows)
    ]


def slot_min(k: int, rows: int) -> int:
    """The smallest timestamp of slot batch ``k``."""
    return D0 + DAY + k * SLOT - (rows // 2) * STEP


def kill_batch(k: int) -> list[dict[str, Any]]:
    """Twelve rows of user ``k-<k>`` over three days (three partitions)."""
    return [
        {
            "user_id": f"k-{k}",
            "tenant": "kill",
            "api_method": f"m{i % 2}",
            "timestamp": D0 + (i % 3) * DAY + k * HOUR + i * SEC,
            "latency_ms": 10 * k + i,
        }
        for i in range(12)
    ]


def parse_slot_method(name: str) -> int:
    """The batch number of an ``api_method`` of the slot design."""
    return int(name.split("-", 1)[1])


# ---------------------------------------------------------------------------------------------
# Workers.


def append_batches(
    root: str, writer: int, batches: int, rows: int, go: Event, out: Queue[Any]
) -> None:
    """Once ``go`` is set, create the store if needed and append ``batches`` batches."""
    try:
        store = open_store(root, lock_timeout=120.0)
        if not go.wait(60):
            raise TimeoutError("never released")
        store.auto_migrate()
        written = 0
        for b in range(batches):
            written += store.create_usage(writer_batch(writer, b, rows))
        out.put(("ok", writer, written))
    except BaseException:
        _report_error(out, writer)


def racing_writer(root: str, who: int, rounds: int, barrier: Barrier, out: Queue[Any]) -> None:
    """For each round, meet the other racer at ``barrier`` and write ``race_batch``."""
    try:
        store = open_store(root, lock_timeout=60.0)
        for r in range(rounds):
            batch = race_batch(who, r)
            barrier.wait(60)
            try:
                n = store.create_usage(batch)
            except Exception as exc:
                out.put(("raised", who, r, type(exc).__name__))
            else:
                out.put(("ok", who, r, n))
    except BaseException:
        _report_error(out, who)


def slot_mutator(root: str, steps: int, rows: int, done: Event, out: Queue[Any]) -> None:
    """Append slot batches, compact now and then, and delete the two oldest batches at a time.

    Deletes cut at batch boundaries, alternately with a plain cutoff and with a cutoff one batch
    further and ``limit`` of two batches. Reports ``("ok", (lo, hi), rewrites, deletes)``: the
    batches left, how many deletes rewrote a file and how many deletes ran.
    """
    try:
        store = open_store(root, lock_timeout=60.0)
        lo = hi = 0
        rewrites = deletes = 0
        for step in range(steps):
            store.create_usage(slot_batch(hi, rows))
            hi += 1
            if step % 4 == 3:
                store.compact()
            if step % 3 == 2 and hi - lo > 3:
                target = lo + 2
                before = set(store.files())
                if deletes % 2:
                    n = store.delete_usage(slot_min(target, rows))
                else:
                    n = store.delete_usage(slot_min(target + 1, rows), limit=2 * rows)
                if n != 2 * rows:
                    raise AssertionError(f"step {step}: deleted {n} rows, not {2 * rows}")
                deletes += 1
                if set(store.files()) - before:
                    rewrites += 1
                lo = target
        out.put(("ok", (lo, hi), rewrites, deletes))
    except BaseException:
        _report_error(out, "mutator")
    finally:
        done.set()


def _check_slots(
    counts: dict[str, int], rows: int, where: str
) -> tuple[list[str], tuple[int, ...]]:
    problems = []
    present = sorted(parse_slot_method(name) for name in counts)
    for name, n in counts.items():
        if n != rows:
            problems.append(f"{where}: batch {name} has {n} rows, not {rows}")
    if present and present != list(range(present[0], present[-1] + 1)):
        problems.append(f"{where}: batches not contiguous: {present}")
    return problems, tuple(present)


def slot_reader(
    root: str, rows: int, done: Event, started: Event, deadline_s: float, out: Queue[Any]
) -> None:
    """Read the store until ``done`` is set (plus one last read); check the slot invariants.

    Reports ``("ok", observations, distinct_states, violations)``.
    """
    try:
        store = open_store(root)
        violations: list[str] = []
        states: set[tuple[int, ...]] = set()
        observations = 0
        stop = time.monotonic() + deadline_s
        last = False
        started.set()
        while time.monotonic() < stop:
            last = done.is_set()
            try:
                df = store.find_usages()
                counts = df.groupby("api_method").size().to_dict()
                found, state = _check_slots(counts, rows, "find_usages")
                violations.extend(found)
                if not df["id"].is_unique or not df["id"].is_monotonic_increasing:
                    violations.append("find_usages: ids not unique and sorted")
                for name, group in df.groupby("api_method"):
                    k = parse_slot_method(str(name))
                    expected = [slot_min(k, rows) + i * STEP for i in range(rows)]
                    if sorted(group["timestamp"].tolist()) != expected:
                        violations.append(f"find_usages: batch {k} has wrong timestamps")
                states.add(state)
                agg = store.aggregated_usage("t", 0, D0 + 1_000 * DAY)
                agg_counts = dict(zip(agg["api_method"], agg["total_requests"], strict=True))
                found, _ = _check_slots(agg_counts, rows, "aggregated_usage")
                violations.extend(found)
                for name, success in zip(agg["api_method"], agg["success_requests"], strict=True):
                    if success != rows // 2:
                        violations.append(f"aggregated_usage: {name} has {success} successes")
                groups = store.get_usages_by_groups("t", 0, D0 + 1_000 * DAY)
                group_counts = {
                    f"b-{int(user.split('-')[1]):05d}": int(n)
                    for user, n in zip(groups["user_id"], groups["total_requests"], strict=True)
                }
                found, _ = _check_slots(group_counts, rows, "get_usages_by_groups")
                violations.extend(found)
            except Exception as exc:
                violations.append(f"read raised {type(exc).__name__}: {exc}")
            observations += 1
            if last:
                break
        out.put(("ok", observations, len(states), violations[:50]))
    except BaseException:
        _report_error(out, "reader")


def hold_lock(root: str, ready: Event, release: Event, limit_s: float) -> None:
    """Take the writers' lock, set ``ready``, and hold it until ``release`` (or ``limit_s``)."""
    store = open_store(root, lock_timeout=30.0)
    with store._ds._locked():
        ready.set()
        release.wait(limit_s)


def churn_batch(k: int) -> list[dict[str, Any]]:
    """Eight rows of user ``c-<k>`` within two hours; batch ``k`` starts ``2 * k`` hours in."""
    return [
        {
            "user_id": f"c-{k}",
            "tenant": "churn",
            "timestamp": churn_min(k) + i * 15 * 60 * SEC,
            "latency_ms": i,
        }
        for i in range(8)
    ]


def churn_min(k: int) -> int:
    """The smallest timestamp of ``churn_batch(k)``."""
    return D0 + 2 * k * HOUR


def churn(
    root: str,
    first: int,
    phases: int,
    min_ops: int,
    min_reads: int,
    phase_id: Synchronized[int],
    reads: Synchronized[int],
    done: Event,
    out: Queue[Any],
) -> None:
    """Alternate append-only phases (even ``p``) with delete/compact/append phases (odd ``p``).

    Appends ``churn_batch(first)``, ``churn_batch(first + 1)`` and so on. ``phase_id`` is
    ``p + 1`` during phase ``p`` and -1 once the worker is done, so a read that starts and ends
    with the same odd ``phase_id`` (or 0: not started) overlapped appends only.
    A phase ends once it ran ``min_ops`` operations and the reader counted ``min_reads`` reads
    during it (or after 20 s).
    """
    try:
        store = open_store(root, lock_timeout=60.0)
        k = first
        ops = 0
        for phase in range(phases):
            phase_id.value = phase + 1
            start_reads = reads.value
            stop = time.monotonic() + 20.0
            done_ops = 0
            while done_ops < min_ops or (
                reads.value - start_reads < min_reads and time.monotonic() < stop
            ):
                if phase % 2 == 0 or done_ops % 3 == 0:
                    store.create_usage(churn_batch(k))
                    k += 1
                elif done_ops % 3 == 1:
                    store.delete_usage(churn_min(max(k - 6, 0)), limit=12)
                else:
                    store.compact()
                done_ops += 1
                ops += 1
        phase_id.value = -1
        out.put(("ok", ops))
    except BaseException:
        _report_error(out, "churn")
    finally:
        done.set()


# ---------------------------------------------------------------------------------------------
# Command line.


def _main(argv: list[str]) -> int:
    command, root, *rest = argv
    store = open_store(root, lock_timeout=30.0)
    actions: dict[str, Callable[[], int]] = {
        "write": lambda: store.create_usage(kill_batch(int(rest[0]))),
        "delete": lambda: store.delete_usage(
            int(rest[0]), limit=int(rest[1]) if len(rest) > 1 else None
        ),
        "compact": store.compact,
    }
    print(f"ok {actions[command]()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
