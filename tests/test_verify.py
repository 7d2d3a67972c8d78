"""Store.verify() and `usage-analytics verify`: every summary recomputed from its rows, damage
reported (a summary with wrong numbers, an unreadable summary, a damaged data file); and the
adaptive summaries: kinds not worth writing are listed as skipped and scanned instead."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from helpers import DAY0, NS_PER_DAY, new_store, random_usage_frame, usage_frame, usage_row

from usage_analytics import Store, _layout
from usage_analytics._storage import files as summary_files
from usage_analytics.cli import cli
from usage_analytics.reports import grains


@pytest.fixture(autouse=True)
def summaries_for_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = new_store(tmp_path / "usage")
    for i in range(3):
        store.create_usage(
            random_usage_frame(400, 30 + i, days=4, tenants=("t0", "t1")), on_conflict="ignore"
        )
    snap = store._ds.snapshot()
    assert snap.spans and all(e.sidecars for e in snap.files)  # something to verify
    return store


def _bump_first_count(path: Path) -> None:
    """Rewrite the summary file at ``path`` with one more request in its first row (a valid
    file with a wrong number in it)."""
    table = summary_files.read_summary(path, None)
    column = "total_requests" if "total_requests" in table.column_names else "count"
    values = pc.cast(table.column(column), pa.int64()).to_numpy().copy()
    values[0] += 1
    index = table.column_names.index(column)
    summary_files.write_summary(table.set_column(index, column, pa.array(values)), path)


def test_a_sound_dataset_has_no_problem(store: Store) -> None:
    problems = store.verify()
    assert problems.empty
    assert list(problems.columns) == ["piece", "kind", "problem"]


def test_a_file_summary_with_a_wrong_number_is_reported(store: Store) -> None:
    entry = store._ds.snapshot().files[1]
    kind = sorted(entry.sidecars)[0]
    _bump_first_count(store.root / entry.sidecar_path(kind))
    problems = store.verify()
    assert problems.to_dict("records") == [
        {"piece": entry.path, "kind": kind, "problem": "differs from the summary of its rows"}
    ]
    store.compact()  # rewrites the summaries from the rows
    assert store.verify().empty


def test_a_span_summary_with_a_wrong_number_is_reported(store: Store) -> None:
    span = store._ds.snapshot().spans[0]
    kind = span.kinds[0]
    _bump_first_count(store.root / span.path(kind))
    problems = store.verify()
    assert len(problems) == 1
    row = problems.iloc[0]
    assert row["piece"].startswith("span ") and row["kind"] == kind
    assert row["problem"] == "differs from the summary of its rows"


def test_unreadable_summary_and_data_files_are_reported(store: Store) -> None:
    snap = store._ds.snapshot()
    entry, damaged = snap.files[0], snap.files[-1]
    kind = sorted(entry.sidecars)[-1]
    (store.root / entry.sidecar_path(kind)).write_bytes(b"not a summary")
    data = store.root / damaged.path
    data.write_bytes(data.read_bytes()[:100])
    problems = store.verify()
    found = {(r.piece, r.kind) for r in problems.itertuples()}
    assert (entry.path, kind) in found
    assert (damaged.path, "data") in found
    messages = {(r.piece, r.kind): r.problem for r in problems.itertuples()}
    assert messages[(entry.path, kind)].startswith("cannot be read")
    assert messages[(damaged.path, "data")].startswith("cannot be read")


def test_cli_verify_exits_1_on_a_problem_and_0_when_sound(store: Store) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["verify", str(store.root)])
    assert result.exit_code == 0
    assert "No problem found" in result.stdout
    entry = store._ds.snapshot().files[0]
    kind = sorted(entry.sidecars)[0]
    _bump_first_count(store.root / entry.sidecar_path(kind))
    result = runner.invoke(cli, ["verify", str(store.root), "--format", "json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["rows"] == [
        {"piece": entry.path, "kind": kind, "problem": "differs from the summary of its rows"}
    ]


# -- adaptive summaries -------------------------------------------------------------------------


def test_summaries_not_worth_writing_are_skipped_and_scanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each row its own group: no grain with user_id shrinks the rows; at a ratio of 0.5 the
    # grains over (key, user) are skipped, the small ones kept.
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", 0.5)
    store = new_store(tmp_path / "usage")
    frame = random_usage_frame(2000, 5, days=2, tenants=("t0",), users=2000)
    store.create_usage(frame, on_conflict="ignore")
    snap = store._ds.snapshot()
    for entry in snap.files:
        assert {"groups", "users"} <= set(entry.skipped), entry
        assert "summary" in entry.sidecars and not set(entry.sidecars) & set(entry.skipped)
        assert not (store.root / entry.sidecar_path("groups")).exists()
    for span in snap.spans:
        assert "groups" not in span.kinds
    assert store.verify().empty
    plan = store.report("t0", DAY0, DAY0 + 2 * NS_PER_DAY, by="user_id", explain=True)
    assert set(plan["read"]) == {"scan"}  # no grain over user_id was kept
    plan = store.report("t0", DAY0, DAY0 + 2 * NS_PER_DAY, by="api_method", explain=True)
    assert "scan" not in set(plan["read"])
    rows = store.find_usages()
    got = store.report("t0", DAY0, DAY0 + 2 * NS_PER_DAY, by="user_id", metrics=["requests"])
    expected = rows.groupby("user_id").size()
    assert got.set_index("user_id")["requests"].to_dict() == expected.to_dict()
    # A later compact() does not compute them again: they are listed as skipped, not missing.
    before = {e.path: e.skipped for e in store._ds.snapshot().files}
    store.compact()
    after = store._ds.snapshot().files
    assert all(set(e.skipped) >= {"groups", "users"} for e in after)
    assert len(after) <= len(before)


def test_every_grain_is_kept_where_it_shrinks_the_rows(store: Store) -> None:
    for entry in store._ds.snapshot().files:
        assert set(entry.sidecars) | set(entry.skipped) == {g.name for g in grains.GRAINS}


def test_a_missing_summary_file_is_reported(store: Store) -> None:
    entry = store._ds.snapshot().files[0]
    (store.root / entry.sidecar_path("daily")).unlink()
    problems = store.verify()
    assert problems[["piece", "kind"]].to_dict("records") == [
        {"piece": entry.path, "kind": "daily"}
    ]
    assert problems["problem"].iloc[0].startswith("cannot be read")


def test_a_day_of_files_without_a_kind_gets_a_span_of_it_where_the_day_shrinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two files of one day over the same 200 users: each file's groups are a fifth of its
    # rows (over the ratio, not written), the day's a tenth (written as the day's span).
    monkeypatch.setattr(_layout, "SUMMARY_MAX_RATIO", 0.15)
    store = new_store(tmp_path / "usage")
    for seed in (1, 2):
        frame = random_usage_frame(1100, seed, days=1, tenants=("t0",), users=200, keys=1, models=1)
        store.create_usage(frame, on_conflict="ignore")
    store.create_usage(random_usage_frame(50, 3, start=DAY0 + NS_PER_DAY, days=1, tenants=("t0",)))
    snap = store._ds.snapshot()
    day0 = [e for e in snap.files if e.day == snap.files[0].day]
    assert len(day0) == 2 and all("groups" in e.skipped for e in day0)
    spans = {(sp.first_day, sp.last_day): sp for sp in snap.spans}
    span = spans[(day0[0].day, day0[0].day)]
    assert {"groups", "users"} <= set(span.kinds)
    assert store.verify().empty
    kwargs = {"by": "user_id", "metrics": ["requests", "prompt_tokens"]}
    plan = store.report("t0", DAY0, DAY0 + NS_PER_DAY, **kwargs, explain=True)
    assert plan[["read", "grain"]].values.tolist() == [["summary", "groups"]]
    got = store.report("t0", DAY0, DAY0 + NS_PER_DAY, **kwargs)
    rows = store.find_usages()
    day = rows[rows["timestamp"] < DAY0 + NS_PER_DAY].groupby("user_id")
    assert got.set_index("user_id")["requests"].to_dict() == day.size().to_dict()
    assert got.set_index("user_id")["prompt_tokens"].to_dict() == (
        day["prompt_tokens"].sum().to_dict()
    )


def test_a_day_of_two_files_with_nearly_the_same_keys_gets_a_span(tmp_path: Path) -> None:
    # Methods m0..m9 in one file, m2..m11 in the other: the day's span has 12 rows per grain
    # over methods, 0.6 of its parts' 20, and saves a report one read of two.
    store = new_store(tmp_path / "usage")
    for first, offset in ((0, 0), (2, 10**9)):
        rows = [
            usage_row(
                tenant="t0", user_id="u", api_method=f"m{first + i}", timestamp=DAY0 + i + offset
            )
            for i in range(10)
        ]
        store.create_usage(usage_frame(rows))
    store.create_usage(
        usage_frame([usage_row(tenant="t0", user_id="u", timestamp=DAY0 + NS_PER_DAY)])
    )
    snap = store._ds.snapshot()
    day = snap.files[0].day
    assert len([e for e in snap.files if e.day == day]) == 2
    span = {(sp.first_day, sp.last_day): sp for sp in snap.spans}[(day, day)]
    assert {"summary", "daily"} <= set(span.kinds)
    assert store.verify().empty
    plan = store.report("t0", DAY0, DAY0 + NS_PER_DAY, by="api_method", explain=True)
    assert plan["read"].tolist() == ["summary"]
    got = store.report("t0", DAY0, DAY0 + NS_PER_DAY, by="api_method", metrics=["requests"])
    assert got.set_index("api_method")["requests"].to_dict() == {
        f"m{i}": 2 if 2 <= i < 10 else 1 for i in range(12)
    }
