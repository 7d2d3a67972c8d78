"""The ``usage-analytics`` command line (click): each command parses its arguments, calls the
library once and prints one document.

- ``_app``: the group, and how errors become exit codes (0 ok, 1 library error with one line on
  stderr, 2 bad arguments);
- ``options``: option types (times, ages, windows, ``--where``, zones, price files);
- ``output``: the shared output options (``--format``, ``--output``) and the formats;
- ``report_commands``: ``report``, ``summary``, ``groups``, ``models``, ``tenants``, ``html``;
- ``dataset_commands``: ``init``, ``info``, ``load``, ``retention``, ``delete``, ``compact``,
  ``verify``, ``sample``.

Example:
    >>> import json
    >>> from click.testing import CliRunner
    >>> result = CliRunner().invoke(cli, ["info", "data/sample", "--format", "json"])
    >>> result.exit_code, json.loads(result.stdout)["rows"]
    (0, 40000)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from . import dataset_commands, report_commands  # noqa: F401  (they add their commands)
from ._app import PROG, cli

__all__ = ["cli", "main", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Example:
        >>> main(["info", "data/sample", "--format", "csv", "--output", str(tmp / "i.csv")])
        0
    """
    try:
        cli.main(args=None if argv is None else list(argv), prog_name=PROG)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0  # pragma: no cover - click's standalone mode always exits


def run() -> None:
    """The ``usage-analytics`` program: :func:`main` on the process's arguments, then the
    process ends with its exit code at once, its output flushed. Every command has committed
    or failed by then; skipping the interpreter's teardown spares the native threads of
    pyarrow's readers and pools their end, which after a failed load aborted the process
    now and then (exit 134 instead of 1)."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe (| head) or stream is let be, as the interpreter's own teardown does.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
