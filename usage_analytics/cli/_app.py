"""The ``usage-analytics`` group, its command class and how library errors become exit codes.

- exit 0: the command did what it was asked;
- exit 1: the library refused or failed (a :class:`~usage_analytics.UsageAnalyticsError`): one
  line ``usage-analytics: error: ...`` on stderr, and nothing written to ``--output``;
- exit 2: bad arguments (click's usage errors, and report requests the engine's validator
  refuses before anything is read).
"""

from __future__ import annotations

import shlex
from typing import IO, Any

import click

from ..errors import DatasetNotInitializedError, UsageAnalyticsError

__all__ = ["PROG", "Command", "LibraryError", "cli", "one_line"]

PROG = "usage-analytics"


def one_line(text: str) -> str:
    """``text`` on one line: its non-blank lines joined with ``"; "``."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines) or "an error without a message"


class LibraryError(click.ClickException):
    """A failure of the library (or of writing the output): exit code 1, one line on stderr."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"{PROG}: error: {self.message}", err=True)


class Command(click.Command):
    """A command whose library errors exit with code 1 and a one-line message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DatasetNotInitializedError as exc:
            root = ctx.params.get("root")
            if root is None:
                raise LibraryError(str(exc)) from exc
            raise LibraryError(
                f"no usage dataset at {root}: run '{PROG} init {shlex.quote(str(root))}' to "
                "create it"
            ) from exc
        except UsageAnalyticsError as exc:
            raise LibraryError(str(exc)) from exc


class Group(click.Group):
    """The group of commands; each is a :class:`Command`."""

    command_class = Command


@click.group(
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(
    package_name="usage_analytics", prog_name=PROG, message="%(prog)s %(version)s"
)
def cli() -> None:
    """Keep and analyse API and LLM usage records in a date-partitioned Parquet dataset.

    Every command takes the dataset folder ROOT first, then keyword options. Exit codes: 0 on
    success, 1 when the library refuses or fails (one line on stderr), 2 on bad arguments.
    """
