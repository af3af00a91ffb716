"""``otel-sqlite sweep``, ``settings`` and ``redact``: the real program, on files the processor wrote."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from helpers import query, sha256, start_tracing
from test_cli import assert_not_found, assert_usage_error, in_process, run, run_many
from test_retention import DAY, HOUR, write_session

from otel_sqlite_exporter import TraceStore

OLD_SPANS = 14  # spans of one write_session() with its defaults


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Two sessions past 30 days (``older`` the oldest), one from an hour ago, one running now."""
    path = tmp_path / "traces.db"
    tracing = start_tracing(path)
    now = time.time_ns()
    write_session(tracing, "older", start=now - 50 * DAY)
    write_session(tracing, "old", start=now - 40 * DAY)
    write_session(tracing, "recent", start=now - HOUR)
    running = tracing.tracer.start_span("serving", attributes={"session.id": "live"})
    tracing.flush()
    tracing.close()  # the open span stays running in the file, as a live process's would
    del running
    return path


def sessions(path: Path) -> set[str]:
    return {row[0] for row in query(path, "SELECT session_id FROM sessions")}


def test_dry_run_prints_what_would_go_and_changes_nothing(db: Path) -> None:
    before = sha256(db)
    text, as_json = run_many(db, [["sweep", "--dry-run"], ["sweep", "--dry-run", "--json"]])
    assert sha256(db) == before
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0] == "Dry run: nothing was changed."
    assert lines[1].startswith(
        f"Would delete 2 sessions (4 traces, {2 * OLD_SPANS} spans): 2 with no activity since "
    )
    assert "(30 days of retention)" in lines[1]
    header = next(i for i, line in enumerate(lines) if line.startswith("SESSION"))
    assert lines[header].split() == [
        "SESSION",
        "LAST",
        "ACTIVITY",
        "STATUS",
        "TRACES",
        "SPANS",
        "REASON",
        "TASK",
    ]
    assert [line.split()[0] for line in lines[header + 1 :]] == ["older", "old"]
    plan = as_json.json()
    assert plan["dry_run"] is True
    assert (plan["deleted_sessions"], plan["deleted_traces"], plan["deleted_spans"]) == (2, 4, 2 * OLD_SPANS)
    assert [(s["session_id"], s["reason"], s["spans"]) for s in plan["sessions"]] == [
        ("older", "age", OLD_SPANS),
        ("old", "age", OLD_SPANS),
    ]
    assert plan["retention_days"] == 30
    assert plan["cutoff"].endswith("Z")
    assert sessions(db) == {"older", "old", "recent", "live"}


def test_dry_run_by_size_and_its_limit(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = in_process(capsys, "sweep", "--dry-run", "--days", "0", "--max-size", "1", "--limit", "1", db=db)
    assert result.code == 0, result.err
    assert "none by age (retention_days is 0: kept forever)" in result.out
    assert "3 of the oldest to bring" in result.out
    rows = [
        line.split()[0] for line in result.out.splitlines() if line.startswith(("older", "old", "recent"))
    ]
    assert rows == ["older"]  # the running session is never on the list
    assert "... and 2 more (--limit N lists more, --json lists all)" in result.out


def test_sweep_deletes_and_reports(db: Path) -> None:
    result = run("sweep", db=db)
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == "Swept"
    assert f"deleted    2 sessions, 4 traces, {2 * OLD_SPANS} spans" in result.out
    assert "reclaimed" in result.out and "the file is now" in result.out
    assert sessions(db) == {"recent", "live"}
    again = run("sweep", "--json", "--days", "0", "--max-size", "1", db=db).json()
    assert again["dry_run"] is False
    assert (again["deleted_sessions"], again["deleted_spans"], again["interrupted_sessions"]) == (
        1,
        OLD_SPANS,
        0,
    )
    assert again["complete"] is True
    assert sessions(db) == {"live"}  # running and active: never deleted


def test_days_given_on_the_command_line_win_over_the_file(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = in_process(capsys, "sweep", "--days", "45", "--json", db=db)
    assert result.code == 0, result.err
    assert sessions(db) == {"old", "recent", "live"}
    assert query(db, "SELECT value FROM settings WHERE key = 'retention_days'") == [("30",)]


def test_settings_print_and_set_the_retention(db: Path) -> None:
    table, days, as_json = run_many(
        db, [["settings"], ["settings", "retention-days"], ["settings", "--json"]]
    )
    assert table.code == 0, table.err
    assert table.out.split()[:4] == ["SETTING", "VALUE", "retention_days", "30"]
    assert days.out == "30\n"
    assert as_json.json() == {"retention_days": 30}

    changed = run("settings", "retention-days", "45", db=db)
    assert (changed.code, changed.out, changed.err) == (0, "45\n", "")
    assert query(db, "SELECT value FROM settings WHERE key = 'retention_days'") == [("45",)]
    # Every sweep without --days now keeps 45 days.
    assert run("sweep", "--json", db=db).json()["deleted_sessions"] == 1
    assert sessions(db) == {"old", "recent", "live"}
    listed = run("settings", "--json", db=db).json()
    assert listed["retention_days"] == 45
    assert isinstance(listed["last_sweep_unix_nano"], int)


def test_usage_errors_exit_2_and_change_nothing(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sha256(db)
    cases = [
        (["sweep", "--max-size", "12XB"], "--max-size: '12XB': expected a size in bytes"),
        (["sweep", "--max-size", "0"], "must be at least 1 byte"),
        (["sweep", "--days", "-1"], "--days: expected a whole number"),
        (["sweep", "--days", "week"], "--days: expected a whole number"),
        (["settings", "retention-days", "forever"], "expected a whole number"),
        (["settings", "retention-days", "-5"], "expected a whole number"),
        (["settings", "colour", "blue"], "invalid choice: 'colour'"),
    ]
    for args, fragment in cases:
        assert_usage_error(in_process(capsys, *args, db=db), fragment)
    assert_usage_error(run("sweep", "--max-size", "lots", db=db), "--max-size")
    assert sha256(db) == before


def test_missing_and_unusable_files_exit_1(db: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for args in (["sweep"], ["sweep", "--dry-run"], ["settings", "retention-days", "3"]):
        assert_not_found(run(*args, db=missing), f"{missing}: no such trace file")
    assert not missing.exists()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE settings SET value = 'a month' WHERE key = 'retention_days'")
    conn.commit()
    conn.close()
    assert_not_found(run("sweep", db=db), "retention_days = 'a month' is not a whole number of days")
    assert sessions(db) == {"older", "old", "recent", "live"}
    # Naming the period, or fixing the setting, works.
    assert run("sweep", "--days", "45", "--json", db=db).json()["deleted_sessions"] == 1


# -- redact ----------------------------------------------------------------------------------------

_LEAKED = "sk-proj-" + "Q7x" * 12


def _raw_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_redact_scrubs_secrets_already_stored(tmp_path: Path) -> None:
    path = tmp_path / "traces.db"
    tracing = start_tracing(path, redact=False)
    with tracing.tracer.start_as_current_span(
        "chat", attributes={"input.value": f"my key is {_LEAKED}", "ticket": "ACME-12345678"}
    ):
        pass
    tracing.close()
    assert _LEAKED.encode() in _raw_bytes(path)

    dry = run("redact", "--dry-run", "--json", db=path).json()
    assert dry["dry_run"] and dry["spans_changed"] == 1
    assert _LEAKED.encode() in _raw_bytes(path), "a dry run changes nothing"

    bad = run("redact", "--pattern", "([", db=path)
    assert bad.code == 2 and "--pattern" in bad.err

    done = run("redact", "--pattern", r"ACME-\d{8}", db=path)
    assert done.code == 0, done.err
    assert "changed 1 span" in done.out
    raw = _raw_bytes(path)
    assert _LEAKED.encode() not in raw and b"ACME-12345678" not in raw
    with TraceStore(path) as store:
        (entry,) = store.get_traces()
    assert entry.attributes["input.value"] == "my key is [REDACTED]"
    assert entry.attributes["ticket"] == "[REDACTED]"
