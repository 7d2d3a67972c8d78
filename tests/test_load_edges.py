"""Edges of loading exports and of the CLI's load: mixed timestamp forms, JSON lines whose keys
change, a stray quote, a header alone, repeated keys across files, bad options."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from usage_analytics import Store, load_files, read_usage_file
from usage_analytics.cli import cli
from usage_analytics.errors import UsageAnalyticsError


def _store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "ds")
    store.auto_migrate()
    return store


def test_iso_rows_not_scaled_by_timestamp_unit(tmp_path: Path) -> None:
    """--timestamp-unit applies to integers only: an ISO row of the same file keeps its time
    (it was multiplied by 10**9 too, wrapping around int64, and landed in 2020)."""
    p = tmp_path / "mixed.csv"
    p.write_text("timestamp,tenant,user_id\n1793613600,t,u1\n2026-11-02T10:00:00Z,t,u2\n")
    frame = read_usage_file(p, timestamp_unit="s")
    assert frame["timestamp"].tolist() == [1793613600 * 10**9, 1793613600 * 10**9]


def test_jsonl_keys_after_first_record_are_kept(tmp_path: Path) -> None:
    """A JSONL file whose values change type between lines (an int timestamp, then an ISO
    one) must keep every key of every line: model_id and prompt_tokens of line 2 were dropped
    silently, because the per-line path took its schema from the first record only."""
    p = tmp_path / "mixed.jsonl"
    p.write_text(
        '{"timestamp": 1793613600000000000, "tenant": "t", "user_id": "a"}\n'
        '{"timestamp": "2026-11-02T10:00:01Z", "tenant": "t", "user_id": "b", '
        '"model_id": "gpt-4o", "prompt_tokens": 100}\n'
    )
    frame = read_usage_file(p, fill_nulls=True)  # a key a line lacks is a null there
    assert frame["model_id"].tolist() == ["", "gpt-4o"]
    assert frame["prompt_tokens"].tolist() == [0, 100]
    with pytest.raises(UsageAnalyticsError, match="line 1: column 'model_id' has no value"):
        read_usage_file(p)  # as when every line is read at once


def test_jsonl_with_rejects_keeps_later_keys(tmp_path: Path) -> None:
    """With --rejects, a bad JSON line must not make the good lines after it lose their
    columns (model_id and prompt_tokens of line 3 were loaded as '' and 0)."""
    p = tmp_path / "export.jsonl"
    p.write_text(
        '{"timestamp": "2026-11-02T10:00:00Z", "tenant": "t", "user_id": "a"}\n'
        "{not json\n"
        '{"timestamp": "2026-11-02T10:00:01Z", "tenant": "t", "user_id": "b", '
        '"model_id": "gpt-4o", "prompt_tokens": 100}\n'
    )
    store = _store(tmp_path)
    result = load_files(store, [p], rejects=tmp_path / "rejects.csv", fill_nulls=True)
    assert result.rows_written == 2 and result.rows_rejected == 1
    rows = store.find_usages().set_index("user_id")
    assert rows.loc["b", "model_id"] == "gpt-4o"
    assert rows.loc["b", "prompt_tokens"] == 100


def test_json_array_file_is_not_loaded_as_zero_rows(tmp_path: Path) -> None:
    """A .json file holding a JSON array (one line) was read as a CSV header: '0 rows read
    ... 0 written', exit 0, the row silently not loaded. It must load, or be refused."""
    p = tmp_path / "export.json"
    p.write_text('[{"timestamp": "2026-11-02T10:00:00Z", "tenant": "t", "user_id": "u"}]\n')
    store = _store(tmp_path)
    result = CliRunner().invoke(cli, ["load", str(store.root), str(p)])
    loaded = store.info().rows
    assert (result.exit_code == 0 and loaded == 1) or (result.exit_code == 1 and loaded == 0), (
        result.exit_code,
        result.output,
    )


def test_header_only_file_without_required_columns_is_refused(tmp_path: Path) -> None:
    """'A file without tenant or user_id is refused': a file of only a header is not
    checked at all (any header, even of unknown columns, loads as 0 rows)."""
    p = tmp_path / "export.csv"
    p.write_text("when,who\n")
    with pytest.raises(UsageAnalyticsError):
        read_usage_file(p)


def test_unterminated_quote_does_not_swallow_the_rest_of_the_file(tmp_path: Path) -> None:
    """A stray opening quote on line 2 turned lines 2-4 into one row (model_id held the two
    following lines) and the load reported '1 row read ... 1 written', exit 0. pandas reports
    'EOF inside string'. The load must fail naming the line (or load 3 rows)."""
    p = tmp_path / "export.csv"
    p.write_text(
        "timestamp,tenant,user_id,model_id\n"
        '2026-11-02T10:00:00Z,t,u1,"gpt-4o\n'
        "2026-11-02T10:00:01Z,t,u2,x\n"
        "2026-11-02T10:00:02Z,t,u3,y\n"
    )
    try:
        frame = read_usage_file(p)
    except UsageAnalyticsError as exc:
        assert "line 2" in str(exc)
        return
    assert len(frame) == 3, frame["model_id"].tolist()


def test_duplicate_keys_in_a_load_name_file_and_line(tmp_path: Path) -> None:
    """'Errors name the file and the 1-based line': a key repeated across the files of one
    load is reported as '1 (user_id, timestamp) key(s) inside a batch: ...', naming neither."""
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    a.write_text("timestamp,tenant,user_id\n2026-11-02T10:00:00Z,t,u\n")
    b.write_text("timestamp,tenant,user_id\n2026-11-02T10:00:01Z,t,v\n2026-11-02T10:00:00Z,t,u\n")
    store = _store(tmp_path)
    result = CliRunner().invoke(cli, ["load", str(store.root), str(a), str(b)])
    assert result.exit_code == 1
    assert "b.csv" in result.stderr and "line 3" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "option", [["--default", "foo=1"], ["--rename", "user_id=bogus"]], ids=["default", "rename"]
)
def test_bad_load_options_exit_2(tmp_path: Path, option: list[str]) -> None:
    """'2 on bad arguments': an unknown column in --default or --rename is refused before
    anything is read, yet exits 1 as a library error."""
    p = tmp_path / "a.csv"
    p.write_text("timestamp,tenant,user_id\n2026-11-02T10:00:00Z,t,u\n")
    store = _store(tmp_path)
    result = CliRunner().invoke(cli, ["load", str(store.root), str(p), *option])
    assert result.exit_code == 2, (result.exit_code, result.output)
