"""Peak resident memory of one store query, measured in a fresh process.

The parent calls :func:`measure`, which runs this module as a child::

    python -m benchmarks._rss --root DIR --tenant T --start NS --end NS --query aggregated_usage

The child imports the package, records ``ru_maxrss`` (its RSS just after the imports), runs the
query once, records ``ru_maxrss`` again (the peak) and prints both as one JSON line.

The child is started through a small intermediate Python process rather than by the benchmark
itself: on Linux, ``ru_maxrss`` survives ``fork`` and ``exec``, so a child forked straight from a
parent holding a few hundred MiB would report the parent's peak, not its own. Forked from the
intermediate (about 10 MiB), it starts from that instead. Where ``/proc`` exists the child also
reports ``VmHWM`` (the high-water mark of its own address space) as a cross-check.
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


def measure(root: Path, query: str, tenant: str, start_ns: int, end_ns: int) -> dict[str, Any]:
    """Run one query in a fresh interpreter; return its RSS after imports and its peak."""
    command = [
        sys.executable,
        "-c",
        _LAUNCHER,
        sys.executable,
        "-m",
        "benchmarks._rss",
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
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=3600
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
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--end", type=int, required=True)
    args = parser.parse_args(argv)

    from usage_analytics import Store

    store = Store(args.root)
    after_imports = max_rss_mib()
    started = time.perf_counter()
    if args.query == "aggregated_usage":
        result = store.aggregated_usage(args.tenant, args.start, args.end)
    else:
        result = store.get_usages_by_groups(args.tenant, args.start, args.end)
    seconds = time.perf_counter() - started
    peak = max_rss_mib()
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
