"""Reading the files of a dataset: data files (filling the columns a file predates) and
summary files, never through a symbolic link."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ..errors import CorruptDatasetError
from .files import read_summary
from .manifest import FileEntry, check_relative_path

__all__ = ["FileReader"]


class FileReader:
    """The file reads of :class:`~usage_analytics._storage.dataset.Dataset`."""

    root: Path
    _fill_values: Mapping[str, pa.Scalar]
    _columns_for_version: Callable[[int], Sequence[str]]
    #: The filesystem of the files (an fsspec one on object storage); None: local files.
    filesystem: Any = None

    def path_of(self, entry: FileEntry) -> Path:
        return self.root / entry.path

    def _source(self, rel: str) -> str:
        """What pyarrow opens to read the file ``rel`` (with :attr:`filesystem`)."""
        return str(self.root / rel)

    def read_file(
        self,
        entry: FileEntry,
        columns: Sequence[str],
        filter: pc.Expression | None = None,
        *,
        dictionary: Sequence[str] = (),
    ) -> pa.Table:
        """Read ``columns`` of one data file, filling columns it predates with their defaults."""
        path = self._checked_path(entry)
        present = set(self._columns_for_version(entry.schema_version))
        wanted = [c for c in columns if c in present]
        missing = [c for c in columns if c not in present]
        if filter is not None and missing:
            # A filter on a column the file predates would fail; such filters are evaluated
            # after filling in the defaults.
            table = pq.read_table(
                path,
                columns=wanted,
                read_dictionary=dictionary or None,
                filesystem=self.filesystem,
            )
            return self._fill(table, columns).filter(filter)
        table = pq.read_table(
            path,
            columns=wanted,
            filters=filter,
            read_dictionary=dictionary or None,
            filesystem=self.filesystem,
        )
        return self._fill(table, columns)

    def scan(
        self,
        entries: Sequence[FileEntry],
        columns: Sequence[str],
        filter: pc.Expression,
        *,
        dictionary: Sequence[str] = (),
        chunk_rows: int = 1 << 20,
    ) -> Iterator[pa.Table]:
        """Stream the filtered ``columns`` of many data files, in tables of about
        ``chunk_rows`` rows, so that memory stays bounded whatever the number of files.

        The filter may only name columns every schema version has.
        """
        by_version: dict[int, list[FileEntry]] = {}
        for entry in entries:
            by_version.setdefault(entry.schema_version, []).append(entry)
        for version, group in sorted(by_version.items()):
            present = set(self._columns_for_version(version))
            wanted = [c for c in columns if c in present]
            paths = [self._checked_path(e) for e in group]
            fmt = pads.ParquetFileFormat(
                read_options=pads.ParquetReadOptions(
                    dictionary_columns=[c for c in dictionary if c in present]
                )
            )
            batches: list[pa.RecordBatch] = []
            rows = 0
            files = pads.dataset(paths, format=fmt, filesystem=self.filesystem)
            for batch in files.to_batches(columns=wanted, filter=filter):
                if batch.num_rows:
                    batches.append(batch)
                    rows += batch.num_rows
                if rows >= chunk_rows:
                    yield self._fill(pa.Table.from_batches(batches), columns)
                    batches, rows = [], 0
            if batches:
                yield self._fill(pa.Table.from_batches(batches), columns)

    def _check_folder(self, folder: str, of: str | None = None) -> None:
        """Refuse to read through a folder that is a symbolic link (``of``: a file in it)."""
        if (self.root / folder).is_symlink():
            if of is not None:
                raise CorruptDatasetError(
                    f"{self.root / of} is in a linked folder; the store does not follow links"
                )
            raise CorruptDatasetError(
                f"{self.root / folder} is a symbolic link; the store does not follow links"
            )

    def _fill(self, table: pa.Table, columns: Sequence[str]) -> pa.Table:
        """``table`` with the columns it predates added as their defaults, in order."""
        for name in columns:
            if name not in table.column_names:
                table = table.append_column(
                    name, pa.repeat(self._fill_values[name], table.num_rows)
                )
        return table.select(list(columns))

    def _checked_path(self, entry: FileEntry) -> str:
        path = self.path_of(entry)
        if path.is_symlink() or path.parent.is_symlink():
            raise CorruptDatasetError(f"{path} is a symbolic link; the store does not follow links")
        return str(path)

    def read_sidecars(
        self, entries: Sequence[FileEntry], kind: str, first: str | None = None
    ) -> list[pa.Table]:
        """The ``kind`` summary files of ``entries``, one table each; with ``first``, only the
        rows whose first column equals it."""
        for entry in entries:
            self._check_folder(entry.path.split("/")[0], entry.path)
        return self.read_summaries([e.sidecar_path(kind) for e in entries], first)

    def read_summaries(self, paths: Sequence[str], first: str | None = None) -> list[pa.Table]:
        """Summary files (rollups of data files or of spans) by relative path, one table each
        (their integer columns may differ in width); with ``first``, only the rows whose first
        column equals it."""
        checked = []
        folders: set[str] = set()  # each folder is looked at once (most paths share theirs)
        for rel in paths:
            for folder in check_relative_path(rel, sidecar_ok=True):
                if folder not in folders:
                    self._check_folder(folder)
                    folders.add(folder)
            checked.append(self._source(rel))
        tables = []
        fs = self.filesystem
        for path in checked:
            try:
                tables.append(read_summary(path, first, opener=None if fs is None else fs.open))
            except (pa.ArrowException, ValueError, IndexError) as exc:
                if isinstance(exc, FileNotFoundError):
                    raise
                raise CorruptDatasetError(
                    f"the summary file {path} is damaged ({exc}); restore it from a backup"
                ) from exc
        return tables
