"""The store on object storage: S3 (moto's server on loopback) and fsspec's memory filesystem.

The same answers as a local store; other engines reading its snapshot; writers in several
processes at once with no lock (exact totals, no duplicate key, unique ids); racing batches with
a common key; a reader during appends, deletes and compactions; the kill matrix of each write;
and the errors a user can meet.
"""

from __future__ import annotations

import json
import math
import signal
import threading
from pathlib import Path
from typing import Any

import _workers
import pandas as pd
import pyarrow.parquet as pq
import pytest
from _crash_worker import DAY, FANOUT_ENV, T0, batch, run, single_row
from helpers import cli_fails, cli_ok
from test_concurrency import (
    CTX,
    WAIT,
    _collect,
    _frame,
    _join,
    _keyed,
    _start,
    assert_every_row_once,
)
from test_crash import run_child

from conftest import Remote, new_bucket
from usage_analytics import (
    ConcurrentWriteError,
    DatasetNotInitializedError,
    DuplicateUsageError,
    InvalidArgumentError,
    Store,
    UsageAnalyticsError,
    _layout,
)
from usage_analytics._storage import checkpoint, dataset, faults, objects

WORKER = Path(__file__).with_name("_crash_worker.py")
REPORT = {
    "by": "model_id",
    "every": "1d",
    "metrics": ["requests", "prompt_tokens", "latency_ms_p50", "latency_ms_p99", "users"],
}


#: Small files merge four at a time here (32 on disk): as many merges, fewer objects.
FANOUT = 4


def small_layout(mp: pytest.MonkeyPatch) -> None:
    """Small batches get their summaries and spans, so that those are written (and killed)
    on object storage too, and small files merge four at a time (the crash worker does the
    same, told by the environment)."""
    mp.setattr(_layout, "ROLLUP_MIN_ROWS", 1)
    mp.setattr(_layout, "SUMMARY_MAX_RATIO", math.inf)
    mp.setattr(_layout, "MERGE_FANOUT", FANOUT)
    mp.setattr(_layout, "MERGE_BELOW_ROWS", FANOUT**2)


@pytest.fixture(autouse=True)
def rollups_for_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    small_layout(monkeypatch)


def rows(store: Store) -> pd.DataFrame:
    return store.find_usages().drop(columns=["created_at"])


def listed(store: Store) -> set[str]:
    """The data and summary files the latest commit lists, relative to the root."""
    return set(store._ds.live_paths())


def unlisted(remote: Remote) -> set[str]:
    """Objects under the root that are neither the log nor the marker nor listed."""
    fs = remote.fs
    root = fs._strip_protocol(remote.url).rstrip("/")
    fs.invalidate_cache()
    names = {p[len(root) + 1 :] for p in fs.find(root)}
    own = {n for n in names if not n.startswith("_delta_log/") and n != "_usage_analytics.json"}
    return own - listed(remote.store())


def load_like(store: Store) -> None:
    """Appends, a delete that rewrites a partition, merged single-row files and compaction."""
    store.auto_migrate()
    store.create_usage(batch(1))
    store.create_usage(batch(2))
    store.create_usage(batch(7, days=(1, 2, 3)))
    store.delete_usage(T0 + DAY + 60_000_000_000 + 5_000_000)
    for i in range(_layout.MERGE_FANOUT):
        store.create_usage(single_row(i))
    store.compact()


def same_answers(remote: Store, local: Store) -> None:
    pd.testing.assert_frame_equal(rows(remote), rows(local))
    for tenant in ("t0", "t1"):
        args = (tenant, T0, T0 + 8 * DAY)
        pd.testing.assert_frame_equal(remote.aggregated_usage(*args), local.aggregated_usage(*args))
        pd.testing.assert_frame_equal(
            remote.get_usages_by_groups(*args), local.get_usages_by_groups(*args)
        )
        pd.testing.assert_frame_equal(remote.report(*args, **REPORT), local.report(*args, **REPORT))
        # Summaries answer on object storage as they do on disk.
        plans = [
            sorted(s.report(*args, **REPORT, explain=True)[["read", "grain", "rows"]].itertuples())
            for s in (remote, local)
        ]
        assert [p[1:] for p in plans[0]] == [p[1:] for p in plans[1]]


# ---------------------------------------------------------------------------------------------
# 1. The same store.


@pytest.mark.parametrize("where", ["s3", "memory"])
def test_the_same_answers_as_a_local_store(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    remote: Remote = request.getfixturevalue(where)
    store, local = remote.store(), Store(tmp_path / "usage")
    for s in (store, local):
        s.auto_migrate()
        s.set_history_retention("7d")  # old versions stay readable
        load_like(s)
    same_answers(store, local)
    assert store.verify().empty
    assert store.info().rows == local.info().rows
    assert store.root == remote.url
    assert all(str(f).startswith(remote.url + "/date=") for f in store.files())
    assert len(store.history()) > len(local.history())  # plus the commits that reserve ids
    # Time travel: the first write's version answers as the first write did.
    first_write = int(store.history().query("operation == 'WRITE'")["version"].iloc[0])
    pinned = remote.store(as_of=first_write)
    assert len(pinned.find_usages()) == 30
    with pytest.raises(UsageAnalyticsError, match="as_of"):
        pinned.create_usage(batch(40))
    # A vacuum without retention removes what only older versions list, young as it is.
    left = unlisted(remote)
    assert left != set()
    removed = store.vacuum(retention=0)
    assert {str(p).removeprefix(remote.url + "/") for p in removed} == left
    assert unlisted(remote) == set()
    with pytest.raises(UsageAnalyticsError, match="gone"):
        remote.store(as_of=first_write).find_usages()
    same_answers(store, local)


def delta_options(s3: Remote) -> dict[str, str]:
    """The storage options of ``deltalake`` for the S3 server of the tests."""
    return {
        "AWS_ENDPOINT_URL": s3.options["endpoint_url"],
        "AWS_ACCESS_KEY_ID": s3.options["key"],
        "AWS_SECRET_ACCESS_KEY": s3.options["secret"],
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }


def test_other_engines_read_the_snapshot_on_s3(s3: Remote) -> None:
    import deltalake

    store = s3.store()
    load_like(store)
    expected = store.find_usages().sort_values("id").reset_index(drop=True)
    options = delta_options(s3)
    table = deltalake.DeltaTable(s3.url, storage_options=options)
    assert table.version() == int(store.history()["version"].max())
    from_delta = table.to_pyarrow_table().to_pandas().sort_values("id")
    assert from_delta["id"].tolist() == expected["id"].tolist()
    assert from_delta["latency_ms"].tolist() == expected["latency_ms"].tolist()
    assert from_delta["user_id"].tolist() == expected["user_id"].tolist()
    duck = store.to_duckdb().df().sort_values("id").reset_index(drop=True)
    polars = store.to_polars().collect().to_pandas().sort_values("id").reset_index(drop=True)
    for got in (duck, polars):
        assert list(got.columns) == list(expected.columns)
        for column in ("id", "user_id", "timestamp", "prompt_tokens", "tenant"):
            assert got[column].tolist() == expected[column].tolist(), column


def test_checkpoints_on_s3_are_read_by_the_store_and_by_deltalake(
    s3: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deltalake

    monkeypatch.setattr(dataset, "CHECKPOINT_EVERY", 5)
    monkeypatch.setattr(checkpoint, "ROW_GROUP_ROWS", 2)  # a few adds a row group
    store, local = s3.store(), Store(tmp_path / "usage")
    for s in (store, local):
        load_like(s)
    fs = s3.fs
    fs.invalidate_cache()
    log = s3.url + "/_delta_log"
    hint = json.loads(fs.cat_file(f"{log}/_last_checkpoint"))
    assert hint["version"] >= 5 and hint["version"] % 5 == 0
    name = f"{log}/{hint['version']:020d}.checkpoint.parquet"
    with fs.open(name, "rb") as fh:
        assert pq.ParquetFile(fh).metadata.num_row_groups > 2
    # Without the commits the checkpoint holds, a new store reads as the local one does.
    for version in range(hint["version"] + 1):
        fs.rm_file(f"{log}/{version:020d}.json")
    same_answers(s3.store(), local)
    assert s3.store().verify().empty
    options = delta_options(s3)
    from_delta = deltalake.DeltaTable(s3.url, storage_options=options).to_pyarrow_table()
    assert sorted(from_delta.column("id").to_pylist()) == sorted(rows(local)["id"].tolist())


# ---------------------------------------------------------------------------------------------
# 2. Writers in several processes, no lock.


@pytest.mark.parametrize("writers", [2, 4])
def test_parallel_writers_keep_every_row_once(s3: Remote, writers: int, procs: list[Any]) -> None:
    batches, per_batch = 6, 10
    go = CTX.Event()
    out = CTX.Queue()
    for w in range(writers):
        _start(procs, _workers.append_batches, s3.url, w, batches, per_batch, go, out)
    go.set()
    results = _collect(out, writers)
    _join(procs)
    assert sorted(results) == [("ok", w, batches * per_batch) for w in range(writers)]

    store = s3.store()
    assert_every_row_once(store.find_usages(), writers, batches, per_batch)
    assert store.verify().empty
    assert unlisted(s3) == set()


# ---------------------------------------------------------------------------------------------
# 3. Racing batches with a common key.


def _race(remote: Remote, on_conflict: str) -> list[tuple[int, str]]:
    """Writers 0 and 1 append ``race_batch`` at once: both have checked their keys, reserved
    their ids and written their files before either commits (a barrier before the first
    commit of their rows; the commit before it reserved their ids)."""
    barrier = threading.Barrier(2, timeout=60)
    commits = threading.local()  # a write commits on the thread that called it

    def hook(point: str) -> None:
        if point == "commit_tmp_written":
            commits.n = getattr(commits, "n", 0) + 1
            if commits.n == 2:
                barrier.wait()

    outcomes: list[tuple[int, str]] = []

    def write(who: int) -> None:
        try:
            n = remote.store().create_usage(
                _workers.race_batch(who, 0),
                on_conflict=on_conflict,  # type: ignore[arg-type]
            )
        except UsageAnalyticsError as exc:
            outcomes.append((who, type(exc).__name__))
        else:
            outcomes.append((who, f"ok {n}"))

    threads = [threading.Thread(target=write, args=(who,)) for who in (0, 1)]
    faults.FAULT_HOOK = hook
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        faults.FAULT_HOOK = None
    return sorted(outcomes)


def test_racing_batches_with_a_common_key_exactly_one_lands(s3: Remote) -> None:
    s3.store().auto_migrate()
    outcomes = _race(s3, "error")
    assert sorted(kind for _, kind in outcomes) == ["DuplicateUsageError", "ok 10"], outcomes
    (winner,) = [who for who, kind in outcomes if kind == "ok 10"]
    store = s3.store()
    got = store.find_usages()
    columns = ["user_id", "organization", "timestamp", "latency_ms"]
    assert _keyed(got, columns) == _keyed(_frame(_workers.race_batch(winner, 0)), columns)
    assert store.verify().empty
    # The loser wrote its files before its commit failed, and removed them then.
    assert unlisted(s3) == set()


def test_racing_batches_with_on_conflict_ignore_both_land_once(s3: Remote) -> None:
    s3.store().auto_migrate()
    outcomes = _race(s3, "ignore")
    counts = sorted(kind for _, kind in outcomes)
    assert counts == ["ok 10", "ok 5"], outcomes  # the second skips the five common keys
    got = s3.store().find_usages()
    assert len(got) == 15
    assert not got.duplicated(["user_id", "timestamp"]).any()
    assert got["id"].is_unique


def _load_raced_by(remote: Remote, tmp_path: Path, on_conflict: str) -> Any:
    """Load a 3-row CSV while, during its first attempt only, another writer commits a row
    with the key of the second line; returns the load's result (or its error)."""
    from usage_analytics import ingest

    export = tmp_path / "export.csv"
    export.write_text(
        "timestamp,tenant,user_id\n"
        "2026-11-02T10:00:00Z,t0,u1\n2026-11-02T10:00:01Z,t0,u1\n2026-11-02T10:00:02Z,t0,u2\n"
    )
    other = remote.store()
    chunks = ingest._Reader.chunks
    attempts = []

    def racing(self: Any, **kw: Any) -> Any:
        attempts.append(1)
        for chunk in chunks(self, **kw):
            yield chunk
            if len(attempts) == 1:  # the other writer commits before this load does
                other.create_usage(
                    {"user_id": "u1", "tenant": "t0", "timestamp": "2026-11-02T10:00:01Z"}
                )

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ingest._Reader, "chunks", racing)
        try:
            result = ingest.load_files(remote.store(), [export], on_conflict=on_conflict)
        except UsageAnalyticsError as exc:
            result = exc
    return result, len(attempts)


def test_a_load_raced_by_a_common_key_runs_again_and_skips_it(
    memory: Remote, tmp_path: Path
) -> None:
    memory.store().auto_migrate()
    result, attempts = _load_raced_by(memory, tmp_path, "ignore")
    assert attempts == 2
    assert (result.rows_read, result.rows_written, result.duplicates_skipped) == (3, 2, 1)
    got = memory.store().find_usages()
    assert len(got) == 3
    assert not got.duplicated(["user_id", "timestamp"]).any()
    assert memory.store().verify().empty


def test_a_load_raced_by_a_common_key_with_on_conflict_error_lands_nothing(
    memory: Remote, tmp_path: Path
) -> None:
    memory.store().auto_migrate()
    result, attempts = _load_raced_by(memory, tmp_path, "error")
    assert isinstance(result, DuplicateUsageError), result
    assert "another writer" in str(result)
    assert attempts == 1
    assert len(memory.store().find_usages()) == 1  # the other writer's row alone


def test_racing_writer_processes_exactly_one_lands(s3: Remote, procs: list[Any]) -> None:
    rounds = 3
    s3.store().auto_migrate()
    barrier = CTX.Barrier(2)
    out = CTX.Queue()
    for who in (0, 1):
        _start(procs, _workers.racing_writer, s3.url, who, rounds, barrier, out)
    results = _collect(out, 2 * rounds)
    _join(procs)
    df = s3.store().find_usages()
    assert len(df) == 10 * rounds
    for r in range(rounds):
        outcome = [item for item in results if item[2] == r]
        assert sorted(item[0] for item in outcome) == ["ok", "raised"], outcome
        assert [item[3] for item in outcome if item[0] == "raised"] == ["DuplicateUsageError"]


# ---------------------------------------------------------------------------------------------
# 4. A reader during writes.


def test_a_reader_sees_whole_batches_during_writes(s3: Remote, procs: list[Any]) -> None:
    steps, per_batch = 16, 6
    s3.store().auto_migrate()
    done = CTX.Event()
    started = CTX.Event()
    reader_out = CTX.Queue()
    writer_out = CTX.Queue()
    _start(procs, _workers.slot_reader, s3.url, per_batch, done, started, WAIT, reader_out)
    assert started.wait(WAIT)
    _start(procs, _workers.slot_mutator, s3.url, steps, per_batch, done, writer_out)
    ((_, (lo, hi), rewrites, deletes),) = _collect(writer_out, 1)
    ((_, observations, states, violations),) = _collect(reader_out, 1)
    _join(procs)
    assert violations == []
    assert observations >= 3
    assert states >= 2
    assert deletes >= 3 and rewrites >= 1
    counts = s3.store().find_usages().groupby("api_method").size()
    assert sorted(_workers.parse_slot_method(str(m)) for m in counts.index) == list(range(lo, hi))
    assert set(counts) == {per_batch}


# ---------------------------------------------------------------------------------------------
# 5. The kill matrix on S3.

#: The steps of a write on object storage: its files, the put-if-absent of the commit object
#: (the first one of an append reserves its ids), then the removal of the files it replaced.
BEFORE = ("data_renamed", "commit_tmp_written", "commit_tmp_written:2")
AFTER = ("committed", "file_removed", "cleanup_done")
OPS = {
    "append": {"data_renamed", "commit_tmp_written", "committed", "cleanup_done"},
    "append_merge": {"data_renamed", "commit_tmp_written", *AFTER},
    "delete": {"data_renamed", "commit_tmp_written", *AFTER},
    "delete_limit": {"data_renamed", "commit_tmp_written", *AFTER},
    "compact": {"data_renamed", "commit_tmp_written", *AFTER},
}
KILLS = [(op, point) for op in OPS for point in (*BEFORE, *AFTER)]


@pytest.fixture(scope="module")
def kill_states(s3_endpoint: str) -> dict[str, tuple[Remote, pd.DataFrame]]:
    """For each operation: a base dataset on S3 and the rows after the operation."""
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    bucket = new_bucket(s3_endpoint)
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        small_layout(mp)
        for op in OPS:
            base = Remote(f"s3://{bucket}/{op}-base", options)
            store = base.store()
            store.auto_migrate()
            store.create_usage(batch(1))
            store.create_usage(batch(2))
            if op == "append_merge":
                for i in range(_layout.MERGE_FANOUT - 1):
                    store.create_usage(single_row(i))
            after = base.sub(f"{op}-after")
            base.fs.copy(base.url, after.url, recursive=True)
            run(after.store(), op)
            out[op] = (base, rows(after.store()))
    return out


@pytest.mark.parametrize(("op", "kill_at"), KILLS, ids=[f"{o}@{p}" for o, p in KILLS])
def test_kill_at_each_step_on_s3(
    kill_states: dict[str, tuple[Remote, pd.DataFrame]], op: str, kill_at: str
) -> None:
    base, after = kill_states[op]
    remote = base.sub(f"{op}-{kill_at.replace(':', '-')}")
    base.fs.copy(base.url, remote.url, recursive=True)
    before = rows(base.store())

    env = {_workers.STORAGE_ENV: json.dumps(remote.options), FANOUT_ENV: str(FANOUT)}
    code = run_child(remote.url, op, kill_at, **env)

    point = kill_at.split(":")[0]
    if point in OPS[op] and ":" not in kill_at:
        assert code == -signal.SIGKILL, f"{op} never reached {kill_at}"
    expected = before if (code != 0 and kill_at in BEFORE) else after
    store = remote.store()
    pd.testing.assert_frame_equal(rows(store), expected)
    assert store.verify().empty
    # What the killed write left (its files before the commit, the files it replaced after
    # it) no commit lists; a vacuum removes it once it is old enough.
    left = unlisted(remote)
    assert not any(p.endswith(".tmp") for p in left)
    if code == 0:
        assert left == set()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(objects, "ORPHAN_AGE_S", 0)
        assert {str(p).removeprefix(remote.url + "/") for p in store.vacuum()} == left
    assert unlisted(remote) == set()
    # The next write works and lands on top.
    assert store.create_usage(batch(50, days=(5,))) == 10
    assert len(rows(store)) == len(expected) + 10


# ---------------------------------------------------------------------------------------------
# 6. Orphans, errors, and filesystems that cannot commit.


def test_vacuum_keeps_young_orphans_and_foreign_files(memory: Remote) -> None:
    store = memory.store()
    store.auto_migrate()
    store.create_usage(batch(1))
    fs = memory.fs
    orphan = f"{memory.url}/date=2025-11-08/{'ab' * 16}.parquet"
    foreign = f"{memory.url}/date=2025-11-08/notes.txt"
    fs.pipe_file(orphan, b"from a write still running elsewhere")
    fs.pipe_file(foreign, b"not the store's")
    assert store.vacuum() == []  # younger than a day: it may belong to a running write
    assert fs.exists(orphan)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(objects, "ORPHAN_AGE_S", 0)
        assert store.vacuum(dry_run=True) == [orphan]
        assert fs.exists(orphan)
        assert store.vacuum() == [orphan]
    assert not fs.exists(orphan)
    assert fs.exists(foreign)
    assert len(store.find_usages()) == 30


def test_errors_say_what_and_what_to_do(s3: Remote, tmp_path: Path) -> None:
    missing = s3.sub("nothing-here").store()
    with pytest.raises(DatasetNotInitializedError, match=r"auto_migrate\(\)"):
        missing.find_usages()
    no_bucket = Remote("s3://no-such-bucket-here/usage", s3.options).store()
    with pytest.raises(UsageAnalyticsError, match="bucket exists"):
        no_bucket.auto_migrate()
    with pytest.raises(InvalidArgumentError, match="storage_options"):
        Store(tmp_path / "local", storage_options={"key": "x"})
    with pytest.raises(InvalidArgumentError, match="storage_options must be a dict"):
        Store(s3.url, storage_options="key=x")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="Protocol not known"):
        Store("nosuch://bucket/usage").find_usages()


def test_a_filesystem_without_put_if_absent_is_read_only(
    memory: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory.store().auto_migrate()
    memory.store().create_usage(batch(1))
    monkeypatch.setattr(objects, "PUT_IF_ABSENT", frozenset({"s3"}))
    store = memory.store()
    assert len(store.find_usages()) == 30  # reads work
    with pytest.raises(UsageAnalyticsError, match="create-if-absent"):
        store.create_usage(batch(2))
    assert len(memory.store().find_usages()) == 30


def test_a_writer_that_keeps_losing_gives_up_with_nothing_written(
    memory: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = memory.store()
    store.auto_migrate()
    store.create_usage(batch(1))
    other = memory.store()

    def another_commit_first(point: str) -> None:
        # Each commit attempt of this write meets a new commit of another writer.
        if point == "commit_tmp_written" and not busy.is_set():
            busy.set()
            try:
                other._ds.reserve_ids(0, 1)
            finally:
                busy.clear()

    busy = threading.Event()
    monkeypatch.setattr(objects, "_COMMIT_ATTEMPTS", 3)
    monkeypatch.setattr(faults, "FAULT_HOOK", another_commit_first)
    with pytest.raises(ConcurrentWriteError, match="run the write again"):
        store.create_usage(batch(2))
    monkeypatch.setattr(faults, "FAULT_HOOK", None)
    assert len(memory.store().find_usages()) == 30
    with pytest.raises(DuplicateUsageError):  # the first batch is still there, once
        memory.store().create_usage(batch(1))


def test_the_command_line_reaches_s3_through_the_aws_environment(
    s3: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.options["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.options["secret"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.options["endpoint_url"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    batch(3).to_csv(first, index=False)
    batch(4, days=(2, 3)).to_csv(second, index=False)
    assert cli_ok("init", s3.url) == f"dataset ready at {s3.url}\n"
    assert cli_ok("load", s3.url, first, second, "--quiet").startswith(
        "50 rows read from 2 files: 50 written"
    )
    err = cli_fails(1, "load", s3.url, first, "--quiet")
    assert "30 (user_id, timestamp) key(s) already stored" in err
    info = json.loads(cli_ok("info", s3.url, "--format", "json"))
    assert info["rows"] == 50 and info["root"] == s3.url
    expected = s3.store().aggregated_usage("t0", T0, T0 + 8 * DAY)
    summary = json.loads(
        cli_ok("summary", s3.url, "--tenant", "t0", "--start", str(T0), "--format", "json")
    )
    assert sum(r["total_requests"] for r in summary["rows"]) == expected["total_requests"].sum()
