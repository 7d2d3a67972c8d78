"""FileSet: the live files of a state per date, each date made when first used, and states
made from one another sharing the dates neither changed."""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence

import pytest

from usage_analytics._storage.fileset import DayPaths, FileSet
from usage_analytics._storage.manifest import FileEntry, Snapshot


def entry(date: str, n: int, rows: int = 1) -> FileEntry:
    return FileEntry(f"date={date}/{n:032x}.parquet", rows, 2, {"timestamp": (0, 1)})


class Counting:
    """A source of fixed groups that counts which dates were asked for."""

    def __init__(self, entries: Sequence[FileEntry]) -> None:
        self.groups: dict[str, dict[str, FileEntry]] = {}
        for e in entries:
            self.groups.setdefault(e.date, {})[e.path] = e
        self.asked: list[str] = []

    def dates(self) -> list[str]:
        return sorted(self.groups)

    def group(self, date: str) -> Mapping[str, FileEntry]:
        self.asked.append(date)
        return self.groups.get(date, {})

    def dates_between(self, first: str, last: str) -> list[str]:
        return [d for d in self.dates() if first <= d <= last]


ENTRIES = [entry("2026-11-02", 1), entry("2026-11-01", 2), entry("2026-11-02", 3)]


def test_files_are_in_date_order_and_in_their_order_within_a_date() -> None:
    files = FileSet.of(ENTRIES)
    assert [e.path for e in files.all()] == [ENTRIES[1].path, ENTRIES[0].path, ENTRIES[2].path]
    assert list(files) == [e.path for e in files.all()]
    assert files.dates() == ["2026-11-01", "2026-11-02"]
    assert files[ENTRIES[0].path] == ENTRIES[0]
    assert ENTRIES[2].path in files and "date=2026-11-03/x.parquet" not in files
    assert "not a path" not in files and 5 not in files
    assert files.get("date=2026-11-09/" + "0" * 32 + ".parquet") is None
    assert len(files) == 3


def test_evolve_replaces_in_place_adds_at_the_end_and_drops_empty_dates() -> None:
    files = FileSet.of(ENTRIES)
    changed = entry("2026-11-02", 1, rows=9)
    new = files.evolve([ENTRIES[1].path], [changed, entry("2026-11-02", 4)])
    assert [e.path for e in new.on("2026-11-02")] == [
        ENTRIES[0].path,
        ENTRIES[2].path,
        entry("2026-11-02", 4).path,
    ]
    assert new[ENTRIES[0].path].rows == 9
    assert new.dates() == ["2026-11-02"]  # the 1st lost its only file
    assert "2026-11-01" not in new.by_date()
    with pytest.raises(KeyError):
        new.by_date()["2026-11-01"]
    # The state it was made from is as it was.
    assert files[ENTRIES[0].path].rows == 1 and len(files) == 3
    assert files.dates() == ["2026-11-01", "2026-11-02"]
    with pytest.raises(KeyError):
        files.evolve(["date=2026-11-05/" + "0" * 32 + ".parquet"], [])


def test_dates_come_from_the_source_when_first_used_and_are_shared() -> None:
    source = Counting([*ENTRIES, entry("2026-11-20", 5)])
    files = FileSet(source=source)
    assert source.asked == []
    assert [e.path for e in files.between("2026-11-02", "2026-11-19")] == [
        ENTRIES[0].path,
        ENTRIES[2].path,
    ]
    assert source.asked == ["2026-11-02"]
    new = files.evolve([], [entry("2026-11-10", 6)])  # reads the date it adds to, alone
    assert source.asked == ["2026-11-02", "2026-11-10"]
    assert [e.date for e in new.between("2026-11-02", "2026-11-19")] == [
        "2026-11-02",
        "2026-11-02",
        "2026-11-10",
    ]
    assert new.dates() == ["2026-11-01", "2026-11-02", "2026-11-10", "2026-11-20"]
    assert files.dates() == ["2026-11-01", "2026-11-02", "2026-11-20"]
    assert len(new) == 5 and len(files) == 4


def test_a_file_set_pickles_as_its_files_and_days_read_as_used() -> None:
    files = FileSet(source=Counting(ENTRIES))
    again = pickle.loads(pickle.dumps(files))
    assert dict(again) == dict(files) and again.dates() == files.dates()
    source = Counting(ENTRIES)
    days = DayPaths(FileSet(source=source))
    first = min(days)
    assert sorted(days) == [first, first + 1] and first in days and first + 5 not in days
    assert source.asked == []
    assert days[first + 1] == [ENTRIES[0].path, ENTRIES[2].path]
    assert source.asked == ["2026-11-02"]


def test_snapshots_of_the_same_files_are_equal_however_made() -> None:
    lazy = Snapshot(1, "t", 2, 4, FileSet(source=Counting(ENTRIES)))
    made = Snapshot(1, "t", 2, 4, FileSet.of(ENTRIES))
    assert lazy == made
    assert lazy.rows == 3 and lazy.files == made.files
    assert lazy.evolve([ENTRIES[0].path], []) != made
