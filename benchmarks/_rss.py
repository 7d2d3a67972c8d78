"""Peak resident memory of one store query, measured in a fresh process.

The parent calls :func:`measure`, which runs this module as a child::

    python -m benchmarks._rss --root DIR --tenant T --start NS --end NS --query aggregated_usage

The child imports the package, records its peak RSS so far (``VmHWM`` from ``/proc/self/status``,
or ``ru_maxrss`` without ``/proc``), runs the query once, records the peak again and prints both
as one JSON line (``--shape`` runs a report shape of ``_shapes`` instead of a report).

``VmHWM`` is the high-water mark of the child's own address space. ``ru_maxrss`` survives
``fork`` and ``exec`` on Linux, so a child forked straight from a parent holding a few hundred
MiB would report the parent's peak there: where ``ru_maxrss`` is the measure, the child is
started through a small intermediate Python process (about 10 MiB) rather than by the benchmark
itself.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

__all__ = ["main", "measure"]

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
_MIB: Final = 1024 * 1024
_LAUNCHER: Final = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def max_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return peak * unit / _MIB


def vm_hwm_mib() -> float | None:
    """This process's ``VmHWM`` from ``/proc/self/status`` in MiB, or None without ``/proc``."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / _MIB
    except OSError:
        return None
    return None


def _peak_mib() -> float:
    """This process's own peak resident memory: ``VmHWM`` where ``/proc`` has it (it counts
    this address space only), else ``ru_maxrss``."""
    hwm = vm_hwm_mib()
    return max_rss_mib() if hwm is None else hwm


def measure(root: Path, query: str, tenant: str, start_ns: int, end_ns: int) -> dict[str, Any]:
    """Run one query in a fresh interpreter; return its RSS after imports and its peak."""
    return _run_child(
        [
            "--root",
            str(root),
            "--query",
            query,
            "--tenant",
            tenant,
            "--start",
            str(start_ns),
            "--end",
            str(end_ns),
        ]
    )


def measure_shape(
    root: Path, shape: str, tenant: str, start_ns: int, end_ns: int, context: Any
) -> dict[str, Any]:
    """Run one report shape in a fresh interpreter; its peak memory as :func:`measure`."""
    return _run_child(
        [
            "--root",
            str(root),
            "--shape",
            shape,
            "--tenant",
            tenant,
            "--start",
            str(start_ns),
            "--end",
            str(end_ns),
            "--context",
            json.dumps({"prices": context.prices, "organization": context.organization}),
        ]
    )


def _run_child(arguments: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-c", _LAUNCHER, sys.executable, "-m", "benchmarks._rss"]
    done = subprocess.run(
        [*command, *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"the RSS child failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The child: import, measure, query, measure, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--query", choices=("aggregated_usage", "get_usages_by_groups"))
    parser.add_argument("--shape", help="a report shape of benchmarks._shapes instead")
    parser.add_argument("--context", help="the shape's prices and organization, as JSON")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--end", type=int, required=True)
    args = parser.parse_args(argv)

    from usage_analytics import Store

    store = Store(args.root)
    run: Any
    if args.shape is not None:
        from . import _shapes

        raw = json.loads(args.context)
        context = _shapes.Context(
            {k: tuple(v) for k, v in raw["prices"].items()}, raw["organization"]
        )
        shapes = _shapes.StoreShapes(args.root, context)
        shape = _shapes.SHAPES[args.shape]

        def run() -> Any:
            return shapes.run(shape, args.tenant, args.start, args.end)

    elif args.query == "aggregated_usage":

        def run() -> Any:
            return store.aggregated_usage(args.tenant, args.start, args.end)

    else:

        def run() -> Any:
            return store.get_usages_by_groups(args.tenant, args.start, args.end)

    after_imports = _peak_mib()
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    peak = _peak_mib()
    print(
        json.dumps(
            {
                "after_imports_mib": after_imports,
                "peak_mib": peak,
                "vm_hwm_mib": vm_hwm_mib(),
                "query_s": seconds,
                "result_rows": len(result),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
