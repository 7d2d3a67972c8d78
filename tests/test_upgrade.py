"""Schema version 2: a version-1 dataset upgrades in place without rewriting its data files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from _crash_worker import DAY, T0, batch, make_v1
from helpers import dataset_state, snapshot_files

from usage_analytics import IncompatibleDatasetError, Store
from usage_analytics.schema import ADDED_IN_V2

MANIFEST = "_usage_analytics.json"


def manifest(root: Path) -> dict[str, object]:
    return json.loads((root / MANIFEST).read_text())  # type: ignore[no-any-return]


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    root = tmp_path / "v1"
    make_v1(root)
    return root


def test_version_1_reads_with_zeros_before_upgrade(v1: Path) -> None:
    rows = Store(v1).find_usages()
    assert len(rows) == 30
    for name in ADDED_IN_V2:
        assert rows[name].dtype == "int32"
        assert (rows[name] == 0).all()


def test_writes_to_version_1_ask_for_auto_migrate(v1: Path) -> None:
    before = snapshot_files(v1)
    with pytest.raises(IncompatibleDatasetError, match="auto_migrate"):
        Store(v1).create_usage(batch(8))
    with pytest.raises(IncompatibleDatasetError, match="auto_migrate"):
        Store(v1).delete_usage(T0 + DAY)
    assert snapshot_files(v1) == before


def test_upgrade_keeps_data_files_byte_identical(v1: Path) -> None:
    before = snapshot_files(v1)
    rows_before = Store(v1).find_usages()
    summary_before = Store(v1).aggregated_usage("t0", T0, T0 + 10 * DAY)
    groups_before = Store(v1).get_usages_by_groups("t1", T0, T0 + 10 * DAY)

    Store(v1).auto_migrate()

    after = snapshot_files(v1)
    data = {k for k in before if k.endswith(".parquet")}
    assert data and {k: after[k] for k in data} == {k: before[k] for k in data}
    assert dataset_state(v1)["schema_version"] == 2
    assert Store(v1).info().schema_version == 2
    pd.testing.assert_frame_equal(Store(v1).find_usages(), rows_before)
    pd.testing.assert_frame_equal(
        Store(v1).aggregated_usage("t0", T0, T0 + 10 * DAY), summary_before
    )
    pd.testing.assert_frame_equal(
        Store(v1).get_usages_by_groups("t1", T0, T0 + 10 * DAY), groups_before
    )
    # A second call changes nothing.
    Store(v1).auto_migrate()
    assert snapshot_files(v1) == after


def test_upgraded_dataset_mixes_old_and_new_files(v1: Path) -> None:
    store = Store(v1)
    store.auto_migrate()
    new = batch(9, days=(1, 2))
    new["runtime_latency_ms"] = 7
    assert store.create_usage(new) == 20
    rows = store.find_usages()
    assert len(rows) == 50
    assert (rows.loc[rows["id"] <= 30, "runtime_latency_ms"] == 0).all()
    assert (rows.loc[rows["id"] > 30, "runtime_latency_ms"] == 7).all()
    # A delete that rewrites a version-1 file writes it as version 2, zeros filled in.
    deleted = store.delete_usage(T0 + DAY + 3 * 60_000_000_000 + 5_000_000)
    assert deleted == 15
    kept = store.find_usages()
    pd.testing.assert_frame_equal(
        kept.reset_index(drop=True),
        rows[rows["timestamp"] >= T0 + DAY + 3 * 60_000_000_000 + 5_000_000].reset_index(drop=True),
    )
    for path in store.files():
        names = pq.read_schema(path).names
        assert set(ADDED_IN_V2) <= set(names) or path.name in {
            Path(f.path).name for f in store._ds.snapshot().files if f.schema_version == 1
        }
    assert store.compact() >= 1
    pd.testing.assert_frame_equal(store.find_usages(), kept)
    assert all(set(ADDED_IN_V2) <= set(pq.read_schema(p).names) for p in store.files())


def test_newer_or_unknown_versions_are_refused(v1: Path) -> None:
    raw = manifest(v1)
    for version in (3, 0, "2"):
        raw["schema_version"] = version
        (v1 / MANIFEST).write_text(json.dumps(raw))
        before = snapshot_files(v1)
        with pytest.raises(IncompatibleDatasetError):
            Store(v1).auto_migrate()
        with pytest.raises(IncompatibleDatasetError):
            Store(v1).find_usages()
        assert snapshot_files(v1) == before
    raw["schema_version"] = 1
    raw["format_version"] = 3
    (v1 / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(IncompatibleDatasetError, match="format version"):
        Store(v1).find_usages()
