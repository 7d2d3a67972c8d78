"""The live files of a state, per partition date, each date's entries made when first used.

A state of 100,000 files is mostly dates no read and no commit touches: a report of a day
needs that day's entries, and an append changes one date. :class:`FileSet` keeps the entries
per date and takes the dates it has not made yet from a :class:`Source` (a checkpoint, read a
part at a time), so that opening a state, reading a window of it and committing to it cost
the dates they use. States made from one another share the dates neither changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .manifest import FileEntry

__all__ = ["DayPaths", "FileSet", "Source", "date_of"]

_PREFIX = "date="  # manifest.PARTITION_PREFIX (which imports this module)
_DATE = slice(len(_PREFIX), len(_PREFIX) + 10)
_NONE: Mapping[str, FileEntry] = {}


class Source(Protocol):
    """Where the entries of the dates a file set has not made come from."""

    def dates(self) -> Sequence[str]:
        """Every date it holds files of, ascending."""

    def group(self, date: str) -> Mapping[str, FileEntry]:
        """The entries of ``date`` by path (empty when it has none)."""

    def dates_between(self, first: str, last: str) -> Sequence[str]:
        """The dates of ``first..last`` it holds files of, ascending (so that their groups
        are then cheap)."""


def date_of(path: str) -> str:
    """The partition date a data file path names ("" for a path of no partition)."""
    return path[_DATE] if path.startswith(_PREFIX) else ""


class FileSet(Mapping[str, "FileEntry"]):
    """The live files of a state by path, grouped by partition date.

    ``groups`` holds the dates made so far (an empty group: no file on that date any more);
    every other date comes from ``source``. Groups are never changed once made: :meth:`evolve`
    copies the ones it changes. Iterating over the set (or asking its length) makes every
    date; looking up a path, :meth:`on` and :meth:`between` make only the dates they name.
    Files are in date order, and in the order they were added within a date.
    """

    __slots__ = ("_all", "_dates", "_groups", "_lists", "_source")

    def __init__(
        self,
        groups: dict[str, Mapping[str, FileEntry]] | None = None,
        source: Source | None = None,
    ) -> None:
        self._groups: dict[str, Mapping[str, FileEntry]] = groups or {}
        self._source = source
        self._dates: list[str] | None = None
        self._lists: dict[str, list[FileEntry]] = {}
        self._all: tuple[FileEntry, ...] | None = None

    @classmethod
    def of(cls, entries: Iterable[FileEntry]) -> FileSet:
        groups: dict[str, dict[str, FileEntry]] = {}
        for entry in entries:
            groups.setdefault(entry.date, {})[entry.path] = entry
        return cls(dict(groups))

    def __reduce__(self) -> tuple[Any, ...]:  # a source is not sent along: every date is
        return (FileSet.of, (self.all(),))

    @property
    def source(self) -> Source | None:
        """Where the dates this set has not made come from."""
        return self._source

    def changed(self) -> list[str]:
        """The dates whose files this set holds itself rather than its source's (every date
        a change touched), ascending."""
        return sorted(self._groups)

    # -- by date -----------------------------------------------------------------------------

    def group(self, date: str) -> Mapping[str, FileEntry]:
        """The entries of ``date`` by path (do not modify it)."""
        group = self._groups.get(date)
        if group is None:
            group = _NONE if self._source is None else self._source.group(date)
        return group

    def on(self, date: str) -> list[FileEntry]:
        """The files of ``date`` (do not modify the list)."""
        out = self._lists.get(date)
        if out is None:
            out = self._lists[date] = list(self.group(date).values())
        return out

    def dates(self) -> list[str]:
        """The dates with files, ascending (do not modify the list)."""
        if self._dates is None:
            dates = set() if self._source is None else set(self._source.dates())
            for date, group in self._groups.items():
                if group:
                    dates.add(date)
                else:
                    dates.discard(date)
            self._dates = sorted(dates)
        return self._dates

    def between(self, first: str, last: str) -> list[FileEntry]:
        """The files of the dates ``first..last``, in date order."""
        dates = set() if self._source is None else set(self._source.dates_between(first, last))
        dates.update(d for d in self._groups if first <= d <= last)
        return [e for date in sorted(dates) for e in self.on(date)]

    def by_date(self) -> Mapping[str, list[FileEntry]]:
        """The files per date, dates ascending; a date's entries are made when it is used."""
        return _ByDate(self)

    def all(self) -> tuple[FileEntry, ...]:
        """Every file, in date order."""
        if self._all is None:
            self._all = tuple(e for date in self.dates() for e in self.on(date))
        return self._all

    # -- by path -----------------------------------------------------------------------------

    def __getitem__(self, path: str) -> FileEntry:
        return self.group(date_of(path))[path]

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and path in self.group(date_of(path))

    def __iter__(self) -> Iterator[str]:
        return (e.path for e in self.all())

    def __len__(self) -> int:
        return len(self.all())

    # -- changes -----------------------------------------------------------------------------

    def evolve(self, removed: Iterable[str], added: Iterable[FileEntry]) -> FileSet:
        """The set without the files ``removed`` (paths, all live) and with ``added`` (an
        entry of a live path replaces it, in its place): costs the dates it changes."""
        groups = dict(self._groups)
        copied: dict[str, dict[str, FileEntry]] = {}

        def own(date: str) -> dict[str, FileEntry]:
            group = copied.get(date)
            if group is None:
                group = copied[date] = dict(self.group(date))
                groups[date] = group
            return group

        for path in removed:
            del own(date_of(path))[path]
        for entry in added:
            own(entry.date)[entry.path] = entry
        new = FileSet(groups, self._source)
        if self._dates is not None and all(
            bool(group) == bool(self.group(date)) for date, group in copied.items()
        ):
            new._dates = self._dates  # no date appeared or went
        new._lists = {d: v for d, v in self._lists.items() if d not in copied}
        return new


class _ByDate(Mapping[str, "list[FileEntry]"]):
    """The dates of a file set and their files, each made when looked up."""

    __slots__ = ("_files",)

    def __init__(self, files: FileSet) -> None:
        self._files = files

    def __getitem__(self, date: str) -> list[FileEntry]:
        out = self._files.on(date)
        if not out:
            raise KeyError(date)
        return out

    def __contains__(self, date: object) -> bool:
        return isinstance(date, str) and bool(self._files.group(date))

    def __iter__(self) -> Iterator[str]:
        return iter(self._files.dates())

    def __len__(self) -> int:
        return len(self._files.dates())


class DayPaths(Mapping[int, "list[str]"]):
    """The paths of a file set's files per day (numbered from the Unix epoch), days
    ascending; a day's files are read when it is looked up."""

    __slots__ = ("_days", "_files")

    def __init__(self, files: FileSet) -> None:
        from .manifest import day_number  # (manifest imports this module)

        self._files = files
        self._days = {day_number(d): d for d in files.dates()}

    def __getitem__(self, day: int) -> list[str]:
        return [e.path for e in self._files.on(self._days[day])]

    def __contains__(self, day: object) -> bool:
        return day in self._days

    def __iter__(self) -> Iterator[int]:
        return iter(self._days)

    def __len__(self) -> int:
        return len(self._days)
