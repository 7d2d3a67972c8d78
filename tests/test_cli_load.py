"""``usage-analytics load``: the command over ``usage_analytics.ingest.load_files``, run
in-process with exact exit codes and output, checked against the rows on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from _crash_worker import T0, batch
from helpers import cli_fails, cli_invoke, cli_ok

from usage_analytics import Store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    store = Store(tmp_path / "usage")
    store.auto_migrate()
    return store.root


def test_load_prints_what_it_did_and_reruns_with_ignore(root: Path, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    batch(3).to_csv(path, index=False)
    assert cli_ok("load", root, path) == (
        "30 rows read from 1 file: 30 written, 0 skipped as duplicates, 0 rejected\n"
    )
    assert cli_ok("load", root, path, "--on-conflict", "ignore", "--quiet") == (
        "30 rows read from 1 file: 0 written, 30 skipped as duplicates, 0 rejected\n"
    )
    err = cli_fails(1, "load", root, path)
    assert "30 (user_id, timestamp) key(s) already stored" in err
    assert "--on-conflict ignore to skip" in err
    rows = Store(root).find_usages()
    assert len(rows) == 30
    assert sorted(rows["timestamp"].tolist()) == sorted(batch(3)["timestamp"].tolist())


def test_several_files_load_all_or_nothing(root: Path, tmp_path: Path) -> None:
    good, bad = tmp_path / "a.csv", tmp_path / "b.csv"
    batch(1).to_csv(good, index=False)
    bad.write_text("user_id,tenant,timestamp,status_code\nu,t0,5,not-a-code\n")
    err = cli_fails(1, "load", root, good, bad)
    assert str(bad) in err
    assert Store(root).info().rows == 0
    other = tmp_path / "c.parquet"
    batch(2).to_parquet(other)
    assert cli_ok("load", root, good, other) == (
        "60 rows read from 2 files: 60 written, 0 skipped as duplicates, 0 rejected\n"
    )


def test_rejects_keep_the_good_rows(root: Path, tmp_path: Path) -> None:
    path, rejects = tmp_path / "in.csv", tmp_path / "rejects.csv"
    path.write_text(
        "user_id,tenant,timestamp,status_code\n"
        f"u1,t0,{T0},200\n"
        f"u2,t0,{T0 + 1},not-a-code\n"
        f"u3,t0,{T0 + 2},404\n"
    )
    out = cli_ok("load", root, path, "--rejects", rejects)
    assert out == (
        f"3 rows read from 1 file: 2 written, 0 skipped as duplicates, 1 rejected (written to "
        f"{rejects})\n"
    )
    assert Store(root).find_usages()["user_id"].tolist() == ["u1", "u3"]
    listed = pd.read_csv(rejects)
    assert listed[["file", "line"]].values.tolist() == [[str(path), 3]]


def test_units_renames_defaults_and_a_forced_format(root: Path, tmp_path: Path) -> None:
    path = tmp_path / "export.txt"  # the extension says nothing: --format does
    path.write_text(
        "\n".join(
            json.dumps({"ts": T0 // 10**6 + i, "who": f"u{i}", "latency": 10 * i}) for i in range(3)
        )
        + "\n"
    )
    out = cli_ok(
        "load", root, path, "--format", "jsonl", "--timestamp-unit", "ms",
        "--rename", "ts=timestamp", "--rename", "who=user_id", "--rename", "latency=latency_ms",
        "--default", "tenant=acme",
    )  # fmt: skip
    assert out == "3 rows read from 1 file: 3 written, 0 skipped as duplicates, 0 rejected\n"
    rows = Store(root).find_usages()
    assert rows["timestamp"].tolist() == [T0 + i * 10**6 for i in range(3)]
    assert rows["tenant"].tolist() == ["acme"] * 3
    assert rows["latency_ms"].tolist() == [0, 10, 20]


def test_load_into_a_folder_without_a_dataset_says_run_init(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    batch(1).to_csv(path, index=False)
    missing = tmp_path / "new"
    err = cli_fails(1, "load", missing, path)
    assert err == (
        f"usage-analytics: error: no usage dataset at {missing}: run 'usage-analytics init "
        f"{missing}' to create it\n"
    )
    assert not missing.exists()


def test_bad_load_options_exit_2(root: Path, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    batch(1).to_csv(path, index=False)
    for args, message in [
        ([], "Missing argument 'FILE...'"),
        ([path, "--rename", "ts"], "'ts' is not NAME=VALUE"),
        ([path, "--default", "=x"], "'=x' is not NAME=VALUE"),
        ([path, "--timestamp-unit", "min"], "Invalid value for '--timestamp-unit'"),
        ([path, "--format", "xml"], "Invalid value for '--format'"),
        ([path, "--on-conflict", "replace"], "Invalid value for '--on-conflict'"),
    ]:
        result = cli_invoke("load", root, *args)
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    assert Store(root).info().rows == 0
