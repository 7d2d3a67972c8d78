"""The manifest: the committed state of a dataset, its file entries, and the checks of the paths
it names. Reading one checks every field, so damage is named when it is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import json
import re
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeGuard

from ..errors import CorruptDatasetError, IncompatibleDatasetError
from .fileset import FileSet

__all__ = ["FileEntry", "Snapshot", "SpanEntry", "day_date", "day_number"]

FORMAT_NAME: Final = "usage_analytics"
FORMAT_VERSION: Final = 1
MANIFEST_NAME: Final = "_usage_analytics.json"
LOCK_NAME: Final = "_usage_analytics.lock"
JOURNAL_NAME: Final = "_usage_analytics.journal"
PARTITION_PREFIX: Final = "date="

_PARTITION_RE: Final = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
_DATA_FILE_RE: Final = re.compile(r"[0-9a-f]{32}\.parquet")
_SIDECAR_FILE_RE: Final = re.compile(r"[0-9a-f]{32}\.[a-z]+\.rollup")
SIDECAR_KIND_RE: Final = re.compile(r"[a-z]+")
#: Summary files kept beside the data files; hidden from engines that read the folder (the
#: underscore makes hive-partitioned readers skip it, and nothing in it ends in .parquet).
SIDECAR_DIR: Final = "_rollups"
SPAN_DIR: Final = "_rollups/spans"
_SPAN_FILE_RE: Final = re.compile(r"[0-9a-f]{32}\.[a-z]+\.rollup")
_READ_ATTEMPTS: Final = 20
#: The last day an int64 nanosecond timestamp reaches (2262-04-11).
MAX_DAY: Final = (2**63 - 1) // (86_400 * 10**9)
#: A span that would list more files than this when made partial is dropped instead (its
#: entry is written into the commit that makes it partial, and into every checkpoint).
MAX_SPAN_FILES: Final = 256


def json_bytes(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass(frozen=True)
class FileEntry:
    """One live data file: where it is and what its rows span."""

    path: str  # relative to the root: "date=YYYY-MM-DD/<hex>.parquet"
    rows: int
    schema_version: int
    stats: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    sidecars: tuple[str, ...] = ()  # kinds of summary file written with it
    skipped: tuple[str, ...] = ()  # kinds computed for it and found not worth writing
    #: Bytes of the data file (0: not known yet, before it is written or in an older manifest).
    size: int = field(default=0, compare=False)

    @property
    def date(self) -> str:
        return self.path[len(PARTITION_PREFIX) : len(PARTITION_PREFIX) + 10]

    @functools.cached_property
    def day(self) -> int:
        """The partition's day, numbered from the Unix epoch."""
        return day_number(self.date)

    @functools.cached_property
    def kinds(self) -> frozenset[str]:
        """The kinds of summary file written with it."""
        return frozenset(self.sidecars)

    def sidecar_path(self, kind: str) -> str:
        """Where the ``kind`` summary of this file lives, relative to the root."""
        part, name = self.path.split("/")
        return f"{SIDECAR_DIR}/{part}/{name[: -len('.parquet')]}.{kind}.rollup"

    @property
    def all_paths(self) -> list[str]:
        """The data file and its summary files."""
        return [self.path, *(self.sidecar_path(k) for k in self.sidecars)]

    def min(self, column: str) -> int:
        return self.stats[column][0]

    def max(self, column: str) -> int:
        return self.stats[column][1]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "rows": self.rows,
            "schema_version": self.schema_version,
            "stats": {k: list(v) for k, v in self.stats.items()},
        }
        if self.sidecars:
            out["sidecars"] = list(self.sidecars)
        if self.skipped:
            out["skipped"] = list(self.skipped)
        return out

    @functools.cached_property
    def json_bytes(self) -> bytes:
        """The entry as it appears in the manifest (kept: a manifest is mostly old entries)."""
        return json_bytes(self.to_json())

    @classmethod
    def from_json(
        cls, raw: Any, *, max_schema_version: int, stats_columns: Sequence[str] = ()
    ) -> FileEntry:
        """An entry of the manifest, checked field by field (``CorruptDatasetError`` names the
        first field that is missing or wrong)."""
        if not isinstance(raw, dict):
            raise Damaged(f"a file entry is {type(raw).__name__}, not an object")
        path = raw.get("path")
        if not isinstance(path, str):
            raise Damaged(f"a file entry has no path ({raw!r})")
        check_relative_path(path)
        rows = int_field(raw, "rows", path)
        version = int_field(raw, "schema_version", path)
        if rows < 0:
            raise Damaged(f"{path} has {rows} rows")
        if not 1 <= version <= max_schema_version:
            raise Damaged(
                f"{path} has schema version {version}; this usage_analytics knows versions 1 "
                f"to {max_schema_version}"
            )
        raw_stats = raw.get("stats", {})
        if not isinstance(raw_stats, dict):
            raise Damaged(f"the stats of {path} are not an object")
        stats: dict[str, tuple[int, int]] = {}
        for name, bounds in raw_stats.items():
            if (
                not isinstance(bounds, list)
                or len(bounds) != 2
                or not all(is_int(v) for v in bounds)
                or bounds[0] > bounds[1]
            ):
                raise Damaged(f"the {name!r} stats of {path} are not [min, max] ({bounds!r})")
            stats[str(name)] = (bounds[0], bounds[1])
        missing = [c for c in stats_columns if c not in stats]
        if missing:
            raise Damaged(f"{path} has no {', '.join(map(repr, missing))} stats")
        sidecars = _kinds(raw, "sidecars", path)
        return cls(path, rows, version, stats, sidecars, _kinds(raw, "skipped", path))


def _kinds(raw: Mapping[str, Any], name: str, what: str) -> tuple[str, ...]:
    """A list of summary kinds of a manifest entry."""
    kinds = raw.get(name, [])
    if not isinstance(kinds, list) or not all(
        isinstance(k, str) and SIDECAR_KIND_RE.fullmatch(k) for k in kinds
    ):
        raise Damaged(f"{what} lists odd summary kinds {kinds!r} as {name}")
    return tuple(kinds)


#: What the manifest's path holds once the dataset's states are in the commit log: older
#: versions of usage_analytics refuse the format, and no one mistakes an old manifest for the
#: state.
LOG_DIR_NAME: Final = "_delta_log"
MARKER: Final = {"format": FORMAT_NAME, "format_version": 2, "log": LOG_DIR_NAME}


def parse_manifest(
    data: bytes, path: Path, max_schema_version: int, stats_columns: Sequence[str]
) -> Snapshot:
    """The state a manifest (the format before the commit log) holds, checked field by field."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptDatasetError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CorruptDatasetError(f"{path} does not hold a JSON object")
    if raw.get("format_version") == MARKER["format_version"]:
        raise CorruptDatasetError(
            f"the commit log {path.parent / LOG_DIR_NAME} of the dataset at {path.parent} is "
            "missing; restore it from a backup"
        )
    try:
        return Snapshot.from_json(raw, max_schema_version, stats_columns)
    except Damaged as exc:
        raise CorruptDatasetError(f"{path} is damaged: {exc}; restore it from a backup") from None


class Damaged(Exception):
    """What is wrong with a manifest or journal; the reader turns it into a
    ``CorruptDatasetError`` that names the file."""


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def int_field(raw: Mapping[str, Any], name: str, what: str) -> int:
    value = raw.get(name)
    if not is_int(value):
        raise Damaged(f"{what} has no integer {name!r} (found {value!r})")
    return int(value)


def check_relative_path(path: str, *, sidecar_ok: bool = False) -> list[str]:
    """Check a path the manifest or journal names; returns its folders, outermost first."""
    parts = path.split("/")
    if sidecar_ok and path.startswith(SPAN_DIR + "/") and len(parts) == 3:
        if not _SPAN_FILE_RE.fullmatch(parts[2]):
            raise CorruptDatasetError(f"the dataset lists {path!r}, which is not a span path")
        return [SIDECAR_DIR, SPAN_DIR]
    is_sidecar = sidecar_ok and len(parts) == 3 and parts[0] == SIDECAR_DIR
    if is_sidecar:
        folders = [SIDECAR_DIR, f"{SIDECAR_DIR}/{parts[1]}"]
    elif len(parts) == 2:
        folders = [parts[0]]
    else:
        folders = []
    part, name = (parts[-2], parts[-1]) if folders else ("", "")
    name_re = _SIDECAR_FILE_RE if is_sidecar else _DATA_FILE_RE
    if (
        not folders
        or not _PARTITION_RE.fullmatch(part)
        or not name_re.fullmatch(name)
        or not valid_date(part[len(PARTITION_PREFIX) :])
    ):
        raise CorruptDatasetError(
            f"the dataset lists {path!r}, which is not a file path of this format "
            "(date=YYYY-MM-DD/<hex>.parquet); the manifest or journal was edited or damaged"
        )
    return folders


def valid_date(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SpanEntry:
    """Summary files of the data files of the days ``first_day..last_day``.

    Days are numbered from the Unix epoch. A span summarizes every file of its days, or (when
    ``files`` is given, a *partial* span) exactly the files it lists. A commit that removes a
    file a span summarizes drops it; one that adds files to its days drops a span of several
    days, and makes a span of one day partial, listing the files the day had (a report reads
    the newer files by their own summaries).
    """

    name: str  # hex
    first_day: int
    last_day: int
    kinds: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # kinds computed for it and found not worth writing
    #: The data files it summarizes, sorted, when not every file of its days.
    files: tuple[str, ...] | None = None

    @property
    def partial(self) -> bool:
        return self.files is not None

    def covers(self, entry: FileEntry) -> bool:
        """Whether the span summarizes the rows of a live file ``entry``."""
        if not self.first_day <= entry.day <= self.last_day:
            return False
        return self.files is None or entry.path in self._listed

    @functools.cached_property
    def _listed(self) -> frozenset[str]:
        return frozenset(self.files or ())

    def path(self, kind: str) -> str:
        return f"{SPAN_DIR}/{self.name}.{kind}.rollup"

    @property
    def all_paths(self) -> list[str]:
        return [self.path(k) for k in self.kinds]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "first_day": self.first_day,
            "last_day": self.last_day,
            "kinds": list(self.kinds),
        }
        if self.skipped:
            out["skipped"] = list(self.skipped)
        if self.files is not None:
            out["files"] = list(self.files)
        return out

    @classmethod
    def from_json(cls, raw: Any) -> SpanEntry:
        if not isinstance(raw, dict):
            raise Damaged(f"a span entry is {type(raw).__name__}, not an object")
        name, kinds = raw.get("name"), raw.get("kinds")
        if (
            not isinstance(name, str)
            or not re.fullmatch(r"[0-9a-f]{32}", name)
            or not isinstance(kinds, list)
            or not all(isinstance(k, str) and SIDECAR_KIND_RE.fullmatch(k) for k in kinds)
        ):
            raise Damaged(f"an odd span entry {raw!r}")
        first, last = int_field(raw, "first_day", "a span"), int_field(raw, "last_day", "a span")
        if not 0 <= first <= last <= MAX_DAY:
            raise Damaged(f"a span of days {first}..{last}")
        files = raw.get("files")
        if files is not None:
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise Damaged(f"the span {name} lists odd files {files!r:.80}")
            for path in files:
                check_relative_path(path)
                if not first <= day_number(path[len(PARTITION_PREFIX) :][:10]) <= last:
                    raise Damaged(f"the span {name} of days {first}..{last} lists {path!r}")
            files = sorted(files)
        return cls(
            name,
            first,
            last,
            tuple(kinds),
            _kinds(raw, "skipped", "a span"),
            None if files is None else tuple(files),
        )


def day_number(date: str) -> int:
    """Days since the Unix epoch of a partition date."""
    return (dt.date.fromisoformat(date) - dt.date(1970, 1, 1)).days


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many objects are built at once (the entries
    of a checkpoint, none of them in a cycle): it would walk every object built so far, again
    and again, for nothing."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def day_date(day: int) -> str:
    """The partition date of a day numbered from the Unix epoch."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


@dataclass(frozen=True)
class Snapshot:
    """One committed state of the dataset."""

    version: int
    txid: str
    schema_version: int
    next_id: int
    #: The live files, by path (see :class:`FileSet`: a date's entries are made when used).
    fileset: FileSet = field(default_factory=FileSet)
    spans: tuple[SpanEntry, ...] = ()
    #: Seconds the files a commit removes are kept, so that older versions stay readable
    #: (0: they are removed right after the commit).
    retention: int = 0

    @classmethod
    def first(cls, schema_version: int) -> Snapshot:
        """The state a new dataset starts from: version 0, no file, ids from 1."""
        return cls(version=0, txid=uuid.uuid4().hex, schema_version=schema_version, next_id=1)

    @property
    def files(self) -> tuple[FileEntry, ...]:
        """Every live file, in date order (makes every date's entries: a read or a commit
        of a few dates uses :meth:`files_between`, :meth:`by_date` or :meth:`entry`)."""
        return self.fileset.all()

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def dates(self) -> list[str]:
        """The partition dates with files, ascending (do not modify the list)."""
        return self.fileset.dates()

    def by_date(self) -> Mapping[str, list[FileEntry]]:
        """The files per partition date, dates ascending (do not modify the lists)."""
        return self.fileset.by_date()

    def files_between(self, first: str, last: str) -> list[FileEntry]:
        """The files of the partition dates ``first..last``, in date order."""
        return self.fileset.between(first, last)

    def entry(self, path: str) -> FileEntry | None:
        """The live file at ``path``, if any."""
        return self.fileset.get(path)

    @property
    def by_path(self) -> Mapping[str, FileEntry]:
        """The files by path, in the order of :attr:`files`."""
        return self.fileset

    def evolve(self, removed: Iterable[str], added: Sequence[FileEntry], **fields: Any) -> Snapshot:
        """The state after this one where the files ``removed`` (paths, all live) are gone
        and ``added`` are live (an entry of a live path replaces it, in its place), with
        ``fields`` changed. It shares this state's dates the change leaves alone, so that a
        commit of a few files costs its change, not the dataset's size."""
        removed = tuple(removed)
        new = dataclasses.replace(self, fileset=self.fileset.evolve(removed, added), **fields)
        new.__dict__["_change"] = (weakref.ref(self), removed, tuple(added))
        return new

    def change_from(self, base: Snapshot) -> tuple[tuple[str, ...], tuple[FileEntry, ...]] | None:
        """The files removed and added since ``base``, when this state was made from it by
        :meth:`evolve`; else None."""
        change = self.__dict__.get("_change")
        if change is None or change[0]() is not base:
            return None
        return change[1], change[2]

    def to_bytes(self) -> bytes:
        """The manifest's JSON text."""
        header = json_bytes(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "schema_version": self.schema_version,
                "version": self.version,
                "txid": self.txid,
                "next_id": self.next_id,
            }
        )
        spans = b",".join(json_bytes(sp.to_json()) for sp in self.spans)
        files = b",".join(f.json_bytes for f in self.files)
        return header[:-1] + b',"spans":[' + spans + b'],"files":[' + files + b"]}"

    @classmethod
    def from_json(
        cls, raw: Mapping[str, Any], max_schema_version: int, stats_columns: Sequence[str] = ()
    ) -> Snapshot:
        """A manifest's state; raises ``Damaged`` for a missing or wrong field."""
        if raw.get("format") != FORMAT_NAME:
            raise IncompatibleDatasetError(
                f"the manifest names format {raw.get('format')!r}, not {FORMAT_NAME!r}"
            )
        fmt = raw.get("format_version")
        if not is_int(fmt) or fmt > FORMAT_VERSION or fmt < 1:
            raise IncompatibleDatasetError(
                f"the dataset has format version {fmt!r}; this usage_analytics reads format "
                f"version {FORMAT_VERSION}: upgrade usage_analytics"
            )
        schema_version = raw.get("schema_version")
        if not is_int(schema_version) or not 1 <= schema_version <= max_schema_version:
            raise IncompatibleDatasetError(
                f"the dataset has schema version {schema_version!r}; this usage_analytics knows "
                f"versions 1 to {max_schema_version}: upgrade usage_analytics"
            )
        files, spans = raw.get("files"), raw.get("spans", [])
        if not isinstance(files, list) or not isinstance(spans, list):
            raise Damaged("its 'files' or 'spans' is not a list")
        txid = raw.get("txid")
        if not isinstance(txid, str):
            raise Damaged(f"it has no text 'txid' (found {txid!r})")
        return cls(
            version=int_field(raw, "version", "it"),
            txid=txid,
            schema_version=schema_version,
            next_id=int_field(raw, "next_id", "it"),
            fileset=FileSet.of(
                FileEntry.from_json(
                    f, max_schema_version=max_schema_version, stats_columns=stats_columns
                )
                for f in files
            ),
            spans=tuple(SpanEntry.from_json(sp) for sp in spans),
        )
