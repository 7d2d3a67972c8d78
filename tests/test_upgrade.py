"""Schema version 2: a version-1 dataset upgrades in place, its data files rewritten with zeros
in the new columns, so that every engine reads what the store reads."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from _crash_worker import DAY, T0, batch, make_v1
from helpers import dataset_state, snapshot_files

from usage_analytics import IncompatibleDatasetError, Store
from usage_analytics._storage import faults
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


def test_upgrade_rewrites_the_data_files_with_the_same_rows(v1: Path) -> None:
    before = snapshot_files(v1)
    rows_before = Store(v1).find_usages()
    summary_before = Store(v1).aggregated_usage("t0", T0, T0 + 10 * DAY)
    groups_before = Store(v1).get_usages_by_groups("t1", T0, T0 + 10 * DAY)

    Store(v1).auto_migrate()

    after = snapshot_files(v1)
    data = {k for k in before if k.endswith(".parquet")}
    assert data and not data & set(after)  # every version-1 file was replaced
    assert all(f.schema_version == 2 for f in Store(v1)._ds.snapshot().files)
    for path in Store(v1).files():
        assert set(ADDED_IN_V2) <= set(pq.read_schema(path).names)
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


def test_engines_reading_the_upgraded_folder_see_the_stores_zeros(v1: Path) -> None:
    Store(v1).auto_migrate()
    Store(v1).create_usage(batch(9, days=(1, 2)).assign(runtime_latency_ms=7))
    expected = Store(v1).find_usages().sort_values("id").reset_index(drop=True)
    table = pads.dataset(v1, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(expected)
    found = table.to_pandas().sort_values("id").reset_index(drop=True)
    for name in ADDED_IN_V2:
        assert found[name].tolist() == expected[name].tolist()
    deltalake = pytest.importorskip("deltalake")
    delta = deltalake.DeltaTable(v1).to_pyarrow_table().to_pandas().sort_values("id")
    for name in ADDED_IN_V2:
        assert delta[name].tolist() == expected[name].tolist()  # zeros, not nulls


def test_an_upgrade_is_one_commit_and_an_interrupted_one_changes_nothing(v1: Path) -> None:
    rows_before = Store(v1).find_usages()
    files = 0

    def stop_before_commit(point: str) -> None:
        nonlocal files
        if point == "data_renamed":
            files += 1
            if files == 2:  # two rewritten files written: the commit is still to come
                raise KeyboardInterrupt

    faults.FAULT_HOOK = stop_before_commit
    try:
        with pytest.raises(KeyboardInterrupt):
            Store(v1).auto_migrate()
    finally:
        faults.FAULT_HOOK = None
    snap = Store(v1)._ds.snapshot()
    assert snap.schema_version == 1 and {f.schema_version for f in snap.files} == {1}
    pd.testing.assert_frame_equal(Store(v1).find_usages(), rows_before)
    Store(v1).auto_migrate()
    history = Store(v1).history()
    assert list(history["operation"]).count("UPGRADE") == 1  # every partition at once
    assert {f.schema_version for f in Store(v1)._ds.snapshot().files} == {2}
    pd.testing.assert_frame_equal(Store(v1).find_usages(), rows_before)


def test_a_dataset_left_half_upgraded_is_finished_by_the_next_call(v1: Path) -> None:
    """Earlier versions committed the new schema first, then rewrote the files a partition
    per commit: one interrupted in between left files of version 1 in a version-2 dataset."""
    rows_before = Store(v1).find_usages()
    ds = Store(v1)._ds
    with ds.transaction(upgrade=True) as tx:
        tx.schema_version = 2
        tx.commit()
    assert {f.schema_version for f in Store(v1)._ds.snapshot().files} == {1}
    pd.testing.assert_frame_equal(Store(v1).find_usages(), rows_before)
    Store(v1).auto_migrate()
    assert {f.schema_version for f in Store(v1)._ds.snapshot().files} == {2}
    pd.testing.assert_frame_equal(Store(v1).find_usages(), rows_before)


def test_upgraded_dataset_takes_new_rows(v1: Path) -> None:
    store = Store(v1)
    store.auto_migrate()
    new = batch(9, days=(1, 2))
    new["runtime_latency_ms"] = 7
    assert store.create_usage(new) == 20
    rows = store.find_usages()
    assert len(rows) == 50
    assert (rows.loc[rows["id"] <= 30, "runtime_latency_ms"] == 0).all()
    assert (rows.loc[rows["id"] > 30, "runtime_latency_ms"] == 7).all()
    deleted = store.delete_usage(T0 + DAY + 3 * 60_000_000_000 + 5_000_000)
    assert deleted == 15
    kept = store.find_usages()
    pd.testing.assert_frame_equal(
        kept.reset_index(drop=True),
        rows[rows["timestamp"] >= T0 + DAY + 3 * 60_000_000_000 + 5_000_000].reset_index(drop=True),
    )
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
