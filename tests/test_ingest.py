"""Loading other systems' exports: formats, timestamps, bad lines, all or nothing per load."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from helpers import new_store, snapshot_files

from usage_analytics import (
    DuplicateUsageError,
    InvalidArgumentError,
    Store,
    Usage,
    ValidationError,
    ingest,
    load_files,
    read_usage_file,
    synthetic,
)
from usage_analytics._storage.faults import FAULT_ENV

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """1,500 rows over two days, in time order, some with an empty model id."""
    frame = synthetic.generate(1500, start="2026-11-01", days=2, seed=11)
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def stored(store: Store) -> pd.DataFrame:
    found = store.find_usages().drop(columns=["id", "created_at"])
    return found.sort_values(["timestamp", "user_id"]).reset_index(drop=True)


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    key = ["timestamp", "user_id"]
    a = a.sort_values(key).reset_index(drop=True)
    b = b[list(a.columns)].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


def write_zstd(path: Path, data: bytes) -> None:
    with pa.CompressedOutputStream(str(path), "zstd") as out:
        out.write(data)


# -- formats -----------------------------------------------------------------------------


def test_every_format_and_compression_reads_the_same_rows(
    tmp_path: Path, rows: pd.DataFrame
) -> None:
    text = rows.to_csv(index=False)
    files = {
        "a.csv": text.encode(),
        "b.tsv": rows.to_csv(index=False, sep="\t").encode(),
        "c.jsonl": rows.to_json(orient="records", lines=True).encode(),
        "d.csv.gz": gzip.compress(text.encode()),
        "e.jsonl.gz": gzip.compress(rows.to_json(orient="records", lines=True).encode()),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    write_zstd(tmp_path / "f.csv.zst", text.encode())
    rows.to_parquet(tmp_path / "g.parquet")
    (tmp_path / "h.parquet.gz").write_bytes(gzip.compress((tmp_path / "g.parquet").read_bytes()))
    for path in sorted(tmp_path.iterdir()):
        got = read_usage_file(path)
        same_rows(got, rows)
        assert got["model_id"].eq("").sum() == rows["model_id"].eq("").sum() > 0, path.name


def test_content_decides_over_the_extension(tmp_path: Path, rows: pd.DataFrame) -> None:
    # gzip content named .csv, Parquet named .csv, JSON lines named .txt, TSV named .txt
    (tmp_path / "gz.csv").write_bytes(gzip.compress(rows.to_csv(index=False).encode()))
    rows.to_parquet(tmp_path / "pq.csv")
    (tmp_path / "j.txt").write_text(rows.to_json(orient="records", lines=True))
    (tmp_path / "t.txt").write_text(rows.to_csv(index=False, sep="\t"))
    for name in ("gz.csv", "pq.csv", "j.txt", "t.txt"):
        same_rows(read_usage_file(tmp_path / name), rows)
    # forcing a format that does not fit is an error naming the file, not a traceback
    with pytest.raises(InvalidArgumentError, match=r"pq\.csv as JSON lines: it is Parquet"):
        read_usage_file(tmp_path / "pq.csv", format="jsonl")
    with pytest.raises(InvalidArgumentError, match=r"t\.txt as Parquet: it is not Parquet"):
        read_usage_file(tmp_path / "t.txt", format="parquet")


def test_the_packages_own_csv_round_trips_with_empty_texts(tmp_path: Path) -> None:
    store = Store(ROOT / "data" / "sample")
    rows = store.scan("tenant-005", "2026-11-03", "2026-11-04")
    assert rows["model_id"].eq("").any()
    path = tmp_path / "export.csv"
    rows.to_csv(path, index=False)  # with id and created_at, which a load ignores
    got = read_usage_file(path)
    same_rows(got, rows.drop(columns=["id", "created_at"], errors="ignore"))
    # what the docs tell pandas users: read the texts as texts, empty fields as ""
    plain = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert plain["model_id"].eq("").sum() == rows["model_id"].eq("").sum()


# -- timestamps -----------------------------------------------------------------------------


def test_iso_times_with_z_offsets_or_naive(tmp_path: Path) -> None:
    path = tmp_path / "iso.csv"
    path.write_text(
        "timestamp,tenant,user_id\n"
        "2026-11-02T10:00:00Z,t,a\n"
        "2026-11-02T11:00:00+01:00,t,b\n"
        "2026-11-02 10:00:00.123456789,t,c\n"
        "2026-11-02,t,d\n"
    )
    got = read_usage_file(path)["timestamp"].tolist()
    base = int(pd.Timestamp("2026-11-02T10:00:00Z").value)
    assert got == [base, base, base + 123_456_789, int(pd.Timestamp("2026-11-02", tz="UTC").value)]


def test_usage_takes_an_iso_time_with_z(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s")
    store.create_usage(Usage(user_id="u", tenant="t", timestamp="2026-11-02T10:00:00Z"))
    assert store.find_usages()["timestamp"].tolist() == [
        int(pd.Timestamp("2026-11-02T10:00Z").value)
    ]


def test_integer_units_and_the_early_date_guard(tmp_path: Path, rows: pd.DataFrame) -> None:
    store = new_store(tmp_path / "s")
    before = snapshot_files(store.root)
    in_ms = rows.assign(timestamp=rows["timestamp"] // 10**6)
    path = tmp_path / "ms.csv"
    in_ms.to_csv(path, index=False)
    with pytest.raises(InvalidArgumentError) as err:
        load_files(store, [path])
    message = str(err.value)
    assert f"{path}, line 2" in message and "milliseconds" in message
    assert "--timestamp-unit" in message and "nothing was written" in message
    assert snapshot_files(store.root) == before
    result = load_files(store, [path], timestamp_unit="ms")
    assert result.rows_written == len(rows)
    assert stored(store)["timestamp"].tolist() == sorted((in_ms["timestamp"] * 10**6).tolist())
    for unit, factor in (("s", 10**9), ("us", 10**3), ("ns", 1)):
        frame = read_usage_file(
            _write(tmp_path / f"{unit}.csv", rows.assign(timestamp=rows["timestamp"] // factor)),
            timestamp_unit=unit,  # type: ignore[arg-type]
        )
        assert (frame["timestamp"] == rows["timestamp"] // factor * factor).all()


def _write(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def test_datetime_columns_of_parquet(tmp_path: Path, rows: pd.DataFrame) -> None:
    frame = rows.assign(timestamp=pd.to_datetime(rows["timestamp"], unit="ns"))  # naive: UTC
    frame.to_parquet(tmp_path / "naive.parquet")
    assert (
        read_usage_file(tmp_path / "naive.parquet")["timestamp"].tolist()
        == rows["timestamp"].tolist()
    )
    zoned = frame.assign(
        timestamp=frame["timestamp"].dt.tz_localize("UTC").dt.tz_convert("Asia/Tokyo")
    )
    zoned.to_parquet(tmp_path / "zoned.parquet")
    assert (
        read_usage_file(tmp_path / "zoned.parquet")["timestamp"].tolist()
        == rows["timestamp"].tolist()
    )


# -- columns ------------------------------------------------------------------------------------


def test_rename_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "foreign.csv"
    path.write_text("ts,customer,who,latency\n2026-11-02T10:00:00Z,acme,u1,120\n")
    with pytest.raises(InvalidArgumentError, match=r"\['ts', 'customer', 'who', 'latency'\]"):
        read_usage_file(path)
    got = read_usage_file(
        path,
        rename={"ts": "timestamp", "customer": "tenant", "who": "user_id", "latency": "latency_ms"},
        defaults={"api_method": "/v1/chat/completions"},
    )
    assert got.loc[0, ["tenant", "user_id", "api_method"]].tolist() == [
        "acme",
        "u1",
        "/v1/chat/completions",
    ]
    assert got.loc[0, "latency_ms"] == 120


def test_required_columns(tmp_path: Path) -> None:
    path = tmp_path / "no_user.csv"
    path.write_text("timestamp,tenant\n2026-11-02T10:00:00Z,t\n")
    with pytest.raises(InvalidArgumentError, match=r"no column 'user_id'.*--default"):
        read_usage_file(path)
    assert read_usage_file(path, defaults={"user_id": "batch"})["user_id"].tolist() == ["batch"]
    (tmp_path / "no_time.csv").write_text("tenant,user_id\nt,u\n")
    with pytest.raises(InvalidArgumentError, match="no column 'timestamp'"):
        read_usage_file(tmp_path / "no_time.csv")
    with pytest.raises(InvalidArgumentError, match="not a usage column"):
        read_usage_file(path, defaults={"colour": "red"})


def test_nulls_become_zero_values_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "nulls.jsonl"
    path.write_text(
        '{"timestamp": "2026-11-02T10:00:00Z", "tenant": "t", "user_id": "u", "model_id": null, '
        '"latency_ms": 5}\n'
        '{"timestamp": "2026-11-02T10:00:01Z", "tenant": "t", "user_id": "u", "model_id": "m", '
        '"latency_ms": null}\n'
    )
    with pytest.raises(ValidationError) as err:
        read_usage_file(path)
    assert "line 1: column 'model_id' has no value" in str(err.value)
    assert "line 2: column 'latency_ms' has no value" in str(err.value)
    got = read_usage_file(path, fill_nulls=True)
    assert got["model_id"].tolist() == ["", "m"] and got["latency_ms"].tolist() == [5, 0]


# -- bad lines ------------------------------------------------------------------------------


def bad_csv(tmp_path: Path, rows: pd.DataFrame) -> Path:
    """``rows`` as CSV with a blank line, a line of too few fields, a bad number and a bad
    time; returns the path (its bad lines are 4, 8 and 11, and 13 is blank)."""
    lines = rows.head(20).to_csv(index=False).splitlines()
    lines[3] = lines[3].replace(",200,", ",two hundred,", 1) if ",200," in lines[3] else "x,y"
    lines[7] = "only,two"
    fields = lines[10].split(",")
    fields[7] = "yesterday"
    lines[10] = ",".join(fields)
    lines.insert(12, "")
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_lines_are_named_by_file_and_line_one_message_each(
    tmp_path: Path, rows: pd.DataFrame
) -> None:
    path = bad_csv(tmp_path, rows)
    with pytest.raises(ValidationError) as err:
        read_usage_file(path)
    message = str(err.value)
    bullets = [line for line in message.splitlines() if line.startswith("  - ")]
    assert [b.split(": ", 1)[0] for b in bullets] == [
        f"  - {path}, line 4",
        f"  - {path}, line 8",
        f"  - {path}, line 11",
    ]
    assert "fields" in bullets[1] and "'yesterday' is neither an ISO 8601 time" in bullets[2]
    assert err.value.failure_cases["line"].tolist() == [4, 8, 11]


def test_a_bad_file_among_good_ones_writes_nothing(tmp_path: Path, rows: pd.DataFrame) -> None:
    store = new_store(tmp_path / "s")
    good = _write(tmp_path / "good.csv", rows)
    later = _write(tmp_path / "later.csv", rows.assign(user_id="other-" + rows["user_id"]))
    bad = bad_csv(tmp_path, rows.assign(user_id="third-" + rows["user_id"]))
    before = snapshot_files(store.root)
    with pytest.raises(ValidationError, match="nothing was written"):
        load_files(store, [good, bad, later])
    assert snapshot_files(store.root) == before
    assert store.info().rows == 0


def test_rejects_file_lists_the_bad_rows_and_loads_the_rest(
    tmp_path: Path, rows: pd.DataFrame
) -> None:
    store = new_store(tmp_path / "s")
    path = bad_csv(tmp_path, rows)
    result = load_files(store, [path], rejects=tmp_path / "rejects.csv")
    assert (result.rows_read, result.rows_written, result.rows_rejected) == (20, 17, 3)
    with open(tmp_path / "rejects.csv", newline="") as f:
        rejected = list(csv.DictReader(f))
    assert [(r["file"], r["line"]) for r in rejected] == [(str(path), n) for n in ("4", "8", "11")]
    assert rejected[1]["row"] == "only,two"
    assert json.loads(rejected[2]["row"])["timestamp"] == "yesterday"
    assert str(result) == (
        f"20 rows read from 1 file: 17 written, 0 skipped as duplicates, 3 rejected "
        f"(listed in {tmp_path / 'rejects.csv'})"
    )
    assert not list(tmp_path.glob(".rejects.csv.tmp"))


def test_malformed_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_text(
        '{"timestamp": "2026-11-02T10:00:00Z", "tenant": "t", "user_id": "u"}\n'
        "\n"
        "{not json\n"
        "[1, 2]\n"
        '{"timestamp": 1793613601000000000, "tenant": "t", "user_id": 7}\n'
    )
    with pytest.raises(ValidationError) as err:
        read_usage_file(path)
    assert err.value.failure_cases["line"].tolist() == [3, 4]
    store = new_store(tmp_path / "s")
    result = load_files(store, [path], rejects=tmp_path / "r.csv")
    assert (result.rows_written, result.rows_rejected) == (2, 2)
    assert sorted(store.find_usages()["user_id"]) == ["7", "u"]


def test_quoted_newlines_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text(
        "timestamp,tenant,user_id,api_method\n"
        '2026-11-02T10:00:00Z,t,u,"two\nlines"\n'
        "2026-11-02T10:00:01Z,t,u,x,extra\n"
    )
    with pytest.raises(ValidationError) as err:
        read_usage_file(path)
    # records are counted as lines: a quoted newline does not start a new one
    assert err.value.failure_cases["line"].tolist() == [3]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"\x00\x01\x02binary", "neither UTF-8 text nor Parquet"),
        (b"timestamp,tenant,user_id\n\x80\x81,t,u\n", "neither UTF-8 text nor Parquet"),
    ],
)
def test_missing_empty_and_binary_files(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "input.dat"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidArgumentError, match=match):
        read_usage_file(path)


def test_damaged_compressed_file_is_an_error_naming_it(tmp_path: Path, rows: pd.DataFrame) -> None:
    data = gzip.compress(rows.to_csv(index=False).encode())
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidArgumentError, match=r"cut\.csv\.gz"):
        read_usage_file(tmp_path / "cut.csv.gz")


# -- loads ------------------------------------------------------------------------------------


def test_reload_counts_skipped_duplicates(tmp_path: Path, rows: pd.DataFrame) -> None:
    store = new_store(tmp_path / "s")
    path = _write(tmp_path / "a.csv", rows)
    first = load_files(store, [path])
    assert (first.rows_read, first.rows_written, first.duplicates_skipped) == (1500, 1500, 0)
    again = load_files(store, [path], on_conflict="ignore")
    assert (again.rows_read, again.rows_written, again.duplicates_skipped) == (1500, 0, 1500)
    with pytest.raises(DuplicateUsageError):
        load_files(store, [path])
    same_rows(stored(store), rows)


def test_large_loads_go_in_bounded_chunks_in_one_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With small chunks, a load of several files is many batches, still one commit with
    exactly the rows of the files, one data file per day."""
    monkeypatch.setattr(ingest, "CHUNK_ROWS", 700)
    monkeypatch.setattr(ingest._formats, "_BLOCK_BYTES", 1 << 14)
    frame = synthetic.generate(9000, start="2026-11-01", days=4, seed=5)
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    paths = [
        _write(tmp_path / f"part{i}.csv", part)
        for i, part in enumerate([frame.iloc[:3000], frame.iloc[3000:6000], frame.iloc[6000:]])
    ]
    store = new_store(tmp_path / "s")
    from usage_analytics._storage.transaction import Transaction

    commits: list[int] = []
    commit = Transaction.commit

    def counting(self: Transaction) -> None:
        commits.append(len(self._staged))
        commit(self)

    monkeypatch.setattr(Transaction, "commit", counting)
    result = load_files(store, paths)
    assert result.rows_written == 9000 and result.files == 3
    same_rows(stored(store), frame)
    assert [n for n in commits if n] == [4]  # one commit adds every data file, one per day
    files_per_day = pd.Series([p.parent.name for p in store.files()]).value_counts()
    assert (files_per_day == 1).all(), files_per_day
    assert store.verify().empty


def test_duplicates_across_chunks_of_one_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: pd.DataFrame
) -> None:
    monkeypatch.setattr(ingest, "CHUNK_ROWS", 200)
    path = _write(tmp_path / "twice.csv", pd.concat([rows, rows]))
    store = new_store(tmp_path / "s")
    with pytest.raises(DuplicateUsageError):
        load_files(store, [path])
    assert store.info().rows == 0
    result = load_files(store, [path], on_conflict="ignore")
    assert (result.rows_written, result.duplicates_skipped) == (1500, 1500)


@pytest.fixture
def four_days(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """4,000 rows over four days (too few a day for summaries) as one CSV file."""
    frame = synthetic.generate(4000, start="2026-11-01", days=4, seed=9)
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return frame, _write(tmp_path / "four.csv", frame)


def test_a_failure_while_writing_chunks_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, four_days: tuple[pd.DataFrame, Path]
) -> None:
    from usage_analytics._storage import faults

    monkeypatch.setattr(ingest, "CHUNK_ROWS", 300)
    monkeypatch.setattr(ingest._formats, "_BLOCK_BYTES", 1 << 14)
    frame, path = four_days
    store = new_store(tmp_path / "s")
    before = snapshot_files(store.root)
    renamed = 0

    def hook(point: str) -> None:
        nonlocal renamed
        if point == "data_renamed":
            renamed += 1
            if renamed == 3:  # the third day's file: two batches are on disk, uncommitted
                raise OSError(5, "injected failure")

    monkeypatch.setattr(faults, "FAULT_HOOK", hook)
    with pytest.raises(OSError, match="injected failure"):
        load_files(store, [path])
    monkeypatch.setattr(faults, "FAULT_HOOK", None)
    assert renamed >= 3  # (summaries of the same file are written meanwhile)
    assert snapshot_files(store.root) == before
    load_files(store, [path])
    same_rows(stored(store), frame)


def test_a_load_killed_between_chunks_is_undone(
    tmp_path: Path, four_days: tuple[pd.DataFrame, Path]
) -> None:
    frame, path = four_days
    store = new_store(tmp_path / "s")
    before = snapshot_files(store.root)
    script = (
        "from usage_analytics import Store, ingest, load_files\n"
        "ingest.CHUNK_ROWS = 300\n"
        "ingest._formats._BLOCK_BYTES = 1 << 14\n"
        f"load_files(Store({str(store.root)!r}), [{str(path)!r}])\n"
    )
    env = {**os.environ, FAULT_ENV: "data_renamed:3"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert snapshot_files(store.root) != before  # the first two days' files were left
    assert Store(store.root).info().rows == 0  # readers see the committed state
    load_files(Store(store.root), [path])  # the next writer recovers first
    same_rows(stored(store), frame)
    assert Store(store.root).verify().empty


def test_progress_bar_goes_to_stderr_only_when_asked(
    tmp_path: Path, rows: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "a.csv", rows)
    load_files(new_store(tmp_path / "s"), [path])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_bad_arguments(tmp_path: Path, rows: pd.DataFrame) -> None:
    path = _write(tmp_path / "a.csv", rows)
    store = new_store(tmp_path / "s")
    for kwargs, match in (
        ({"format": "xml"}, "format must be one of"),
        ({"timestamp_unit": "days"}, "timestamp_unit must be one of"),
        ({"rename": {"a": "colour"}}, "not a usage column"),
        ({"rejects": path}, "is one of the files"),
        ({"on_conflict": "replace"}, "on_conflict"),
    ):
        with pytest.raises(InvalidArgumentError, match=match):
            load_files(store, [path], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="one or more files"):
        load_files(store, [])
    with pytest.raises(InvalidArgumentError, match="cannot write the rejects file"):
        load_files(store, [path], rejects=tmp_path / "missing" / "rejects.csv")
    assert store.info().rows == 0


def test_an_unreadable_file_is_an_error_naming_it(
    tmp_path: Path, rows: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "a.csv", rows)
    real_open = open

    def refuse(file: object, *args: object, **kwargs: object) -> object:
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(InvalidArgumentError, match=r"cannot read .*a\.csv \(Permission denied\)"):
        read_usage_file(path)


def test_a_bad_number_deep_in_a_file_is_found_after_chunks_were_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Integer columns are parsed as integers first; a bad value deep in the file makes the
    rest of it be read again as text: no row is lost or read twice, and lines stay right."""
    monkeypatch.setattr(ingest._formats, "_BLOCK_BYTES", 1 << 14)
    frame = synthetic.generate(3000, start="2026-11-01", days=2, seed=4)
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    lines = frame.to_csv(index=False).splitlines()
    lines[2500] = lines[2500].replace(",", ",,", 1).replace(",,", ",", 1)
    fields = lines[2500].split(",")
    fields[8] = "12.5ms"  # latency_ms
    lines[2500] = ",".join(fields)
    lines[1200] = "short,line"
    path = tmp_path / "deep.csv"
    path.write_text("\n".join(lines) + "\n")
    store = new_store(tmp_path / "s")
    result = load_files(store, [path], rejects=tmp_path / "r.csv")
    assert (result.rows_read, result.rows_written, result.rows_rejected) == (3000, 2998, 2)
    with open(tmp_path / "r.csv", newline="") as f:
        assert [r["line"] for r in csv.DictReader(f)] == ["1201", "2501"]
    expected = frame.drop(index=[1199, 2499])
    same_rows(stored(store), expected)
