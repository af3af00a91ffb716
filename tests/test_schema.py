"""The SQLite trace schema v1: tables, views, indexes, full-text search, file safety and migrations.

Everything goes through the real SDK and real SQLite files; the file is then read with plain ``sqlite3``
as any user or tool (Datasette, the ``sqlite3`` shell) would read it.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from helpers import query, sha256, write_foreign_database
from opentelemetry.sdk.trace import TracerProvider

import otel_sqlite_exporter
from otel_sqlite_exporter import NotATraceFileError, SchemaVersionError, SQLiteSpanProcessor, TraceFileError
from otel_sqlite_exporter._schema import SCHEMA_VERSION, connect

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

SESSION_VIEW_COLUMNS = [
    "id",
    "task",
    "started_at",
    "completed_at",
    "status",
    "total_events",
    "total_tokens",
    "total_cost_usd",
]
TRACE_VIEW_COLUMNS = [
    "id",
    "session_id",
    "type",
    "timestamp",
    "duration_ms",
    "parent_trace_id",
    "data",
    "input_tokens",
    "output_tokens",
    "model_used",
    "provider_used",
    "cost_usd",
    "raw_input",
    "raw_output",
    "created_at",
]


# --- helpers ----------------------------------------------------------------------------------------------


def write_trace(path: Path, *, name: str = "root", child: str = "child", **attributes: object) -> None:
    """One trace (a root with one child) written through SQLiteSpanProcessor, then the file is closed."""
    processor = SQLiteSpanProcessor(path)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test_schema")
    try:
        with tracer.start_as_current_span(name), tracer.start_as_current_span(child, attributes=attributes):
            pass
        assert processor.force_flush(10_000)
    finally:
        provider.shutdown()


def index_columns(conn: sqlite3.Connection, table: str) -> list[tuple[bool, list[str]]]:
    """(unique, columns) of every index on ``table``, including UNIQUE constraints."""
    out = []
    for _seq, name, unique, *_rest in conn.execute(f"PRAGMA index_list('{table}')").fetchall():
        cols = [row[2] for row in conn.execute(f"PRAGMA index_info('{name}')").fetchall()]
        out.append((bool(unique), cols))
    return out


def iso_to_ns(text: str) -> int:
    parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000) * 1_000_000


@pytest.fixture
def trace_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "traces.db"
    write_trace(
        path,
        name="plan the trip",
        child="chat gpt-4o-mini",
        **{
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 5,
            "input.value": "which volcano erupted loudest",
        },
    )
    yield path


# --- tables, views, indexes -------------------------------------------------------------------------------


def test_new_file_has_every_table(trace_file: Path) -> None:
    names = {row[0] for row in query(trace_file, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table in ("sessions", "traces", "spans", "settings", "resources", "schema_migrations"):
        assert table in names
    assert query(trace_file, "SELECT count(*) FROM spans") == [(2,)]
    assert query(trace_file, "SELECT value FROM settings WHERE key = 'retention_days'") == [("30",)]


def test_table_columns_follow_the_design(trace_file: Path) -> None:
    conn = sqlite3.connect(trace_file)
    try:

        def columns(table: str) -> set[str]:
            return {row[1] for row in conn.execute(f"PRAGMA table_info('{table}')")}

        rollups = {
            "span_count",
            "error_count",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "cost_usd",
        }
        assert {
            "session_id",
            "task",
            "status",
            "start_time_unix_nano",
            "end_time_unix_nano",
            "user_id",
            "service_name",
            *rollups,
        } <= columns("sessions")
        assert {
            "trace_id",
            "session_id",
            "root_span_name",
            "start_time_unix_nano",
            "end_time_unix_nano",
            "status",
            *rollups,
        } <= columns("traces")
        assert {
            "trace_id",
            "span_id",
            "parent_span_id",
            "session_id",
            "name",
            "kind",
            "type",
            "start_time_unix_nano",
            "end_time_unix_nano",
            "duration_ms",
            "status_code",
            "status_message",
            "model",
            "provider",
            "operation",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "cost_usd",
            "input_text",
            "output_text",
            "attributes",
            "events",
            "links",
            "resource_id",
            "scope_name",
            "scope_version",
        } <= columns("spans")
        assert {"key", "value"} <= columns("settings")
        assert {"version", "name", "applied_at"} <= columns("schema_migrations")
    finally:
        conn.close()


def test_views_have_exactly_the_design_columns(trace_file: Path) -> None:
    conn = sqlite3.connect(trace_file)
    try:
        views = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
        assert {"agent_trace_sessions", "agent_traces"} <= views
        assert [
            r[1] for r in conn.execute("PRAGMA table_info('agent_trace_sessions')")
        ] == SESSION_VIEW_COLUMNS
        assert [r[1] for r in conn.execute("PRAGMA table_info('agent_traces')")] == TRACE_VIEW_COLUMNS
    finally:
        conn.close()


def test_agent_traces_view_timestamps_are_iso_utc_of_the_span_times(trace_file: Path) -> None:
    rows = query(
        trace_file,
        """SELECT v.id, v.timestamp, v.created_at, s.start_time_unix_nano, v.session_id, s.session_id,
                  v.parent_trace_id, s.parent_span_id, v.input_tokens, v.model_used, v.raw_input, v.type
           FROM agent_traces v JOIN spans s ON s.span_id = v.id""",
    )
    assert len(rows) == 2
    for span_id, timestamp, created_at, start_ns, v_session, s_session, v_parent, s_parent, *_ in rows:
        assert re.fullmatch(r"[0-9a-f]{16}", span_id)
        assert ISO_UTC.match(timestamp), timestamp
        assert ISO_UTC.match(created_at), created_at
        assert abs(iso_to_ns(timestamp) - start_ns) <= 1_000_000  # millisecond text of the same instant
        assert v_session == s_session
        assert v_parent == s_parent
    llm = [r for r in rows if r[8] is not None]
    assert len(llm) == 1
    assert llm[0][8:] == (12, "gpt-4o-mini", "which volcano erupted loudest", "llm")


def test_agent_trace_sessions_view_timestamps_and_totals(trace_file: Path) -> None:
    [(sid, started, completed, status, events, tokens)] = query(
        trace_file,
        "SELECT id, started_at, completed_at, status, total_events, total_tokens FROM agent_trace_sessions",
    )
    [(start_ns, end_ns, trace_id)] = query(
        trace_file, "SELECT start_time_unix_nano, end_time_unix_nano, session_id FROM sessions"
    )
    assert sid == trace_id
    assert ISO_UTC.match(started) and ISO_UTC.match(completed)
    assert abs(iso_to_ns(started) - start_ns) <= 1_000_000
    assert abs(iso_to_ns(completed) - end_ns) <= 1_000_000
    assert status == "completed"
    assert events == 2
    assert tokens == 17


def test_indexes_serve_the_common_queries(trace_file: Path) -> None:
    conn = sqlite3.connect(trace_file)
    try:
        spans = index_columns(conn, "spans")
        firsts = {cols[0] for _unique, cols in spans}
        assert "session_id" in firsts
        assert "start_time_unix_nano" in firsts
        assert "model" in firsts
        assert {"type", "name"} <= firsts
        assert (True, ["trace_id", "span_id"]) in spans
        sessions = index_columns(conn, "sessions")
        assert any(cols[0] == "start_time_unix_nano" for _unique, cols in sessions)
        # The queries use them (not a full scan).
        for where in ("session_id = 'x'", "type = 'llm' AND name = 'chat'"):
            plan = " ".join(
                str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN SELECT * FROM spans WHERE {where}")
            )
            assert "USING INDEX" in plan, where
    finally:
        conn.close()


def test_unique_trace_and_span_id_is_enforced(trace_file: Path) -> None:
    conn = sqlite3.connect(trace_file)
    try:
        row = conn.execute("SELECT trace_id, span_id FROM spans LIMIT 1").fetchone()
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO spans (trace_id, span_id, session_id, name, kind, type, start_time_unix_nano) "
                "VALUES (?, ?, 's', 'dup', 'internal', 'span', 1)",
                row,
            )
    finally:
        conn.close()


def test_full_text_search_finds_a_span_by_name_and_by_input_text(trace_file: Path) -> None:
    sql = "SELECT s.name FROM spans_fts f JOIN spans s ON s.id = f.rowid WHERE spans_fts MATCH ?"
    assert query(trace_file, sql, ("trip",)) == [("plan the trip",)]
    assert query(trace_file, sql, ("volcano",)) == [("chat gpt-4o-mini",)]
    assert query(trace_file, sql, ("input_text:loudest",)) == [("chat gpt-4o-mini",)]
    assert query(trace_file, sql, ("nonexistentword",)) == []


def test_full_text_index_follows_a_completed_start_row(tmp_path: Path) -> None:
    """A start row has no text yet; the text set before end must become searchable."""
    path = tmp_path / "t.db"
    processor = SQLiteSpanProcessor(path)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    try:
        span = tracer.start_span("open step")
        assert processor.force_flush(10_000)
        span.set_attribute("input.value", "platypus question")
        span.end()
        assert processor.force_flush(10_000)
    finally:
        provider.shutdown()
    sql = "SELECT s.name FROM spans_fts f JOIN spans s ON s.id = f.rowid WHERE spans_fts MATCH ?"
    assert query(path, sql, ("platypus",)) == [("open step",)]
    assert query(path, "INSERT INTO spans_fts (spans_fts) VALUES ('integrity-check')") == []


def test_wal_journal_and_user_version(trace_file: Path) -> None:
    assert query(trace_file, "PRAGMA journal_mode") == [("wal",)]
    assert query(trace_file, "PRAGMA user_version") == [(otel_sqlite_exporter.SCHEMA_VERSION,)]
    assert otel_sqlite_exporter.SCHEMA_VERSION >= 1
    versions = [row[0] for row in query(trace_file, "SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, otel_sqlite_exporter.SCHEMA_VERSION + 1))


# --- file safety ------------------------------------------------------------------------------------------


def test_file_and_wal_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "secret.db"
    old_umask = os.umask(0o022)
    processor = SQLiteSpanProcessor(path)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    try:
        with provider.get_tracer("t").start_as_current_span("prompt"):
            pass
        assert processor.force_flush(10_000)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wal = Path(f"{path}-wal")
        assert wal.exists(), "the writer keeps the WAL open while it runs"
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)
        provider.shutdown()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_missing_parent_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "does" / "not" / "exist" / "traces.db"
    write_trace(path)
    assert query(path, "SELECT count(*) FROM spans") == [(2,)]


def test_empty_file_is_initialised(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    conn = connect(str(path))
    conn.close()
    assert query(path, "PRAGMA user_version") == [(otel_sqlite_exporter.SCHEMA_VERSION,)]
    write_trace(path)
    assert query(path, "SELECT count(*) FROM spans") == [(2,)]


# --- migrations -------------------------------------------------------------------------------------------


def test_reopening_an_existing_file_keeps_rows_and_migrates_idempotently(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    write_trace(path, name="first")
    first = query(path, "SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
    write_trace(path, name="second")
    write_trace(path, name="third")
    names = sorted(row[0] for row in query(path, "SELECT name FROM spans WHERE parent_span_id IS NULL"))
    assert names == ["first", "second", "third"]
    assert query(path, "SELECT count(*) FROM spans") == [(6,)]
    assert query(path, "SELECT count(*) FROM traces") == [(3,)]
    counts = query(path, "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version")
    assert counts == [(v, 1) for v in range(1, otel_sqlite_exporter.SCHEMA_VERSION + 1)]
    # Re-opening did not re-run (or re-date) anything.
    assert query(path, "SELECT version, name, applied_at FROM schema_migrations ORDER BY version") == first
    assert query(path, "PRAGMA user_version") == [(otel_sqlite_exporter.SCHEMA_VERSION,)]
    assert query(path, "SELECT count(*) FROM settings WHERE key = 'retention_days'") == [(1,)]


def test_connect_twice_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    for _ in range(3):
        connect(str(path)).close()
    assert query(path, "SELECT count(*) FROM schema_migrations") == [(otel_sqlite_exporter.SCHEMA_VERSION,)]


@pytest.fixture
def newer_file(tmp_path: Path) -> Path:
    path = tmp_path / "future.db"
    write_trace(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    assert not Path(f"{path}-wal").exists()
    return path


def test_newer_schema_is_refused_untouched(newer_file: Path) -> None:
    before = sha256(newer_file)
    with pytest.raises(SchemaVersionError) as info:
        connect(str(newer_file))
    assert str(newer_file) in str(info.value)
    assert "99" in str(info.value)
    assert isinstance(info.value, TraceFileError)
    assert isinstance(info.value, otel_sqlite_exporter.OtelSQLiteError)
    assert sha256(newer_file) == before
    assert query(newer_file, "PRAGMA user_version") == [(99,)]


def test_newer_schema_with_the_processor_logs_and_leaves_the_file(
    newer_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = sha256(newer_file)
    caplog.set_level("ERROR", logger="otel_sqlite_exporter")
    processor = SQLiteSpanProcessor(newer_file, schedule_delay_millis=10)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    try:
        with provider.get_tracer("t").start_as_current_span("goes nowhere"):
            pass
        processor.force_flush(10_000)
        stats = processor.stats
        assert stats["errors"] > 0
        assert "newer" in stats["last_error"]
    finally:
        provider.shutdown()
    assert sha256(newer_file) == before
    messages = [r.getMessage() for r in caplog.records if r.name == "otel_sqlite_exporter"]
    assert len(messages) == 1
    assert str(newer_file) in messages[0]


def test_text_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 10)
    before = sha256(path)
    with pytest.raises(NotATraceFileError) as info:
        connect(str(path))
    assert str(path) in str(info.value)
    assert sha256(path) == before


@pytest.mark.parametrize("user_version", [0, 7])
def test_other_applications_database_is_refused_untouched(tmp_path: Path, user_version: int) -> None:
    path = tmp_path / "app.db"
    write_foreign_database(path, user_version)
    before = sha256(path)
    with pytest.raises(NotATraceFileError) as info:
        connect(str(path))
    assert str(path) in str(info.value)
    assert sha256(path) == before
    assert query(path, "PRAGMA journal_mode") == [("delete",)]
    assert query(path, "SELECT name FROM customers") == [("ada",)]


@pytest.mark.parametrize("kept", [0.1, 0.5, 0.9])
def test_a_truncated_trace_file_is_refused_untouched(
    tmp_path: Path, kept: float, caplog: pytest.LogCaptureFixture
) -> None:
    whole = tmp_path / "whole.db"
    processor = SQLiteSpanProcessor(whole)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test_schema")
    for i in range(300):
        with tracer.start_as_current_span(f"span {i}", attributes={"input.value": "x" * 500}):
            pass
    provider.shutdown()
    data = whole.read_bytes()
    path = tmp_path / "cut.db"
    path.write_bytes(data[: int(len(data) * kept)])  # a copy cut short, as by a full disk or a bad transfer
    before = sha256(path)
    for readonly in (True, False):
        with pytest.raises(NotATraceFileError) as info:
            otel_sqlite_exporter.TraceStore(path, readonly=readonly)
        assert str(path) in str(info.value)
        assert "malformed" in str(info.value)
    caplog.set_level("ERROR", logger="otel_sqlite_exporter")
    processor = SQLiteSpanProcessor(path, schedule_delay_millis=10)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    for _ in range(3):
        with provider.get_tracer("t").start_as_current_span("goes nowhere"):
            pass
        processor.force_flush(10_000)
    provider.shutdown()
    assert processor.stats["written"] == 0
    assert processor.stats["failed"] == 6
    messages = [r.getMessage() for r in caplog.records if r.name == "otel_sqlite_exporter"]
    assert len(messages) == 1 and str(path) in messages[0], messages
    assert sha256(path) == before


# --- version 3: last activity, owners, incremental auto-vacuum -------------------------------------------


def write_mixed_file(path: Path) -> None:
    """Sessions of every kind, written through the processor: a session() block, spans naming their
    session, a trace that is its own session, and a span still open when the file is closed."""
    processor = SQLiteSpanProcessor(path)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test_schema")
    try:
        with otel_sqlite_exporter.session(task="managed"), tracer.start_as_current_span("step"):
            pass
        with tracer.start_as_current_span("named", attributes={"session.id": "named"}):
            with tracer.start_as_current_span("child", start_time=time.time_ns()):
                pass
        with tracer.start_as_current_span("own session"):
            pass
        tracer.start_span("left open", attributes={"session.id": "open"})
        assert processor.force_flush(10_000)
    finally:
        provider.shutdown()


def downgrade_to_v5(path: Path) -> None:
    """The file as version 5 wrote it: with the span id index."""
    downgrade(path, 5, "CREATE INDEX spans_by_span_id ON spans (span_id)")


def downgrade_to_v4(path: Path) -> None:
    """The file as version 4 wrote it: with the (type, name) index."""
    downgrade_to_v5(path)
    downgrade(path, 4, "CREATE INDEX spans_by_type_name ON spans (type, name)")


def downgrade(path: Path, version: int, *statements: str) -> None:
    """Undo migration ``version + 1`` (which ``statements`` reverse) of a file at that version."""
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in (
        *statements,
        f"DELETE FROM schema_migrations WHERE version = {version + 1}",
        f"PRAGMA user_version = {version}",
    ):
        conn.execute(statement)
    conn.close()


def downgrade_to_v3(path: Path) -> None:
    """The file as version 3 wrote it: no logs, no reasoning text or response ids, a three-column
    full-text index."""
    downgrade_to_v4(path)
    conn = sqlite3.connect(path, isolation_level=None)
    columns = "name, input_text, output_text"
    for statement in (
        "DROP TABLE logs",
        "DROP TABLE pending_content",
        "DROP INDEX spans_by_response_id",
        "DROP TRIGGER spans_fts_insert",
        "DROP TRIGGER spans_fts_delete",
        "DROP TRIGGER spans_fts_update",
        "DROP TABLE spans_fts",
        "ALTER TABLE spans DROP COLUMN reasoning_text",
        "ALTER TABLE spans DROP COLUMN response_id",
        f"CREATE VIRTUAL TABLE spans_fts USING fts5 ({columns}, content='spans', content_rowid='id')",
        f"""CREATE TRIGGER spans_fts_insert AFTER INSERT ON spans BEGIN
            INSERT INTO spans_fts (rowid, {columns})
            VALUES (new.id, new.name, new.input_text, new.output_text);
        END""",
        f"""CREATE TRIGGER spans_fts_delete AFTER DELETE ON spans BEGIN
            INSERT INTO spans_fts (spans_fts, rowid, {columns})
            VALUES ('delete', old.id, old.name, old.input_text, old.output_text);
        END""",
        f"""CREATE TRIGGER spans_fts_update AFTER UPDATE OF name, input_text, output_text ON spans BEGIN
            INSERT INTO spans_fts (spans_fts, rowid, {columns})
            VALUES ('delete', old.id, old.name, old.input_text, old.output_text);
            INSERT INTO spans_fts (rowid, {columns})
            VALUES (new.id, new.name, new.input_text, new.output_text);
        END""",
        "INSERT INTO spans_fts (spans_fts) VALUES ('rebuild')",
        "DELETE FROM schema_migrations WHERE version = 4",
        "PRAGMA user_version = 3",
    ):
        conn.execute(statement)
    conn.close()


def downgrade_to_v2(path: Path) -> None:
    """The file as version 2 wrote it: no v3 columns, no v3 migration row, no auto-vacuum."""
    downgrade_to_v3(path)
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in (
        "DROP INDEX sessions_by_activity",
        "DROP INDEX sessions_by_budget",
        "ALTER TABLE sessions DROP COLUMN budget_status",
        "ALTER TABLE sessions DROP COLUMN owner_pid",
        "ALTER TABLE sessions DROP COLUMN owner_host",
        "ALTER TABLE sessions DROP COLUMN last_activity_unix_nano",
        "ALTER TABLE traces DROP COLUMN last_activity_unix_nano",
        "DELETE FROM schema_migrations WHERE version = 3",
        "PRAGMA user_version = 2",
        "PRAGMA auto_vacuum = NONE",
        "VACUUM",
    ):
        conn.execute(statement)
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    conn.close()


def test_a_new_file_uses_incremental_auto_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    write_trace(path)
    assert query(path, "PRAGMA auto_vacuum") == [(2,)]  # INCREMENTAL


def test_writer_keeps_last_activity_and_owner(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    write_mixed_file(path)
    for trace_id, activity, latest in query(
        path,
        "SELECT t.trace_id, t.last_activity_unix_nano, (SELECT max(max(s.start_time_unix_nano), "
        "coalesce(max(s.end_time_unix_nano), 0)) FROM spans AS s WHERE s.trace_id = t.trace_id) "
        "FROM traces AS t",
    ):
        assert activity == latest, trace_id
    rows = query(path, "SELECT session_id, last_activity_unix_nano, owner_pid, owner_host FROM sessions")
    assert len(rows) == 4
    for session_id, activity, pid, host in rows:
        latest = query(
            path,
            "SELECT max(coalesce(max(t.last_activity_unix_nano), 0), coalesce(se.start_time_unix_nano, 0), "
            "coalesce(se.end_time_unix_nano, 0)) FROM sessions AS se "
            "LEFT JOIN traces AS t ON t.session_id = se.session_id WHERE se.session_id = ?",
            (session_id,),
        )[0][0]
        assert activity == latest > 0, session_id
        assert (pid, host) == (os.getpid(), socket.gethostname()), session_id


def test_upgrade_from_version_2_fills_in_last_activity_and_enables_incremental_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    write_mixed_file(path)
    sessions = query(path, "SELECT session_id, last_activity_unix_nano FROM sessions ORDER BY 1")
    traces = query(path, "SELECT trace_id, last_activity_unix_nano FROM traces ORDER BY 1")
    spans = query(path, "SELECT trace_id, span_id, end_time_unix_nano FROM spans ORDER BY 1, 2")
    downgrade_to_v2(path)

    # Readers take a version 2 file as it is.
    before = sha256(path)
    with otel_sqlite_exporter.TraceStore(path) as store:
        assert {s.id for s in store.get_sessions()} == {row[0] for row in sessions}
    assert sha256(path) == before

    connect(str(path)).close()
    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(path, "SELECT version FROM schema_migrations ORDER BY version") == [
        (v,) for v in range(1, SCHEMA_VERSION + 1)
    ]
    assert query(path, "PRAGMA auto_vacuum") == [(2,)]
    # The backfill gives every row the value the writer would have kept.
    assert query(path, "SELECT session_id, last_activity_unix_nano FROM sessions ORDER BY 1") == sessions
    assert query(path, "SELECT trace_id, last_activity_unix_nano FROM traces ORDER BY 1") == traces
    assert query(path, "SELECT trace_id, span_id, end_time_unix_nano FROM spans ORDER BY 1, 2") == spans
    assert query(path, "SELECT count(*) FROM sessions WHERE owner_pid IS NOT NULL") == [(0,)]
    plan = query(path, "EXPLAIN QUERY PLAN SELECT * FROM sessions WHERE last_activity_unix_nano < 5")
    assert "sessions_by_activity" in plan[0][3]
    # And the writer goes on writing it.
    write_trace(path, name="after the upgrade")
    assert query(path, "SELECT count(*) FROM spans WHERE name = 'after the upgrade'") == [(1,)]


def test_processes_opening_a_new_file_at_the_same_moment(tmp_path: Path) -> None:
    # Each round, several connections create one new file at once: none may fail, and whichever
    # writes first must set incremental auto-vacuum.
    for round_ in range(15):
        path = tmp_path / f"race-{round_}.db"
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_it(
            path: Path = path, barrier: threading.Barrier = barrier, errors: list[BaseException] = errors
        ) -> None:
            barrier.wait()
            try:
                connect(str(path)).close()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert query(path, "PRAGMA auto_vacuum") == [(2,)]
        assert query(path, "SELECT count(*) FROM schema_migrations") == [
            (otel_sqlite_exporter.SCHEMA_VERSION,)
        ]


CLOSE_ON_REQUEST = """
import sys
from otel_sqlite_exporter._schema import SCHEMA_VERSION, connect
conn = connect(sys.argv[1])
conn.execute("INSERT INTO settings (key, value) VALUES ('from another process', '1')")
print("ready", flush=True)
sys.stdin.read()
conn.close()
"""


def test_opening_one_more_connection_keeps_the_log_of_the_others(tmp_path: Path) -> None:
    # POSIX drops every lock a process holds on a file when it closes any descriptor of it: had
    # opening a connection read the file itself, this process's open connection would look gone to
    # another process, which would then delete the shared log and memory while they are in use.
    path = tmp_path / "shared.db"
    mine = connect(str(path))
    mine.execute("INSERT INTO settings (key, value) VALUES ('before', '1')")
    other = subprocess.Popen(
        [sys.executable, "-c", CLOSE_ON_REQUEST, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
    )
    try:
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "ready"
        connect(str(path)).close()
        with otel_sqlite_exporter.TraceStore(path) as store:
            assert store.get_retention_days() == 30
    finally:
        other.communicate("", timeout=20)
    assert other.returncode == 0
    # The other process closed last-but-one: the log and shared memory are still there, in use.
    assert os.path.exists(f"{path}-wal")
    assert os.path.exists(f"{path}-shm")
    mine.execute("INSERT INTO settings (key, value) VALUES ('after', '1')")
    keys = {row[0] for row in query(path, "SELECT key FROM settings")}
    assert {"before", "from another process", "after"} <= keys
    mine.close()
    assert {"before", "from another process", "after"} <= {
        row[0] for row in query(path, "SELECT key FROM settings")
    }


def test_upgrade_from_version_3_indexes_reasoning_and_keeps_search(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    write_mixed_file(path)
    spans = query(path, "SELECT trace_id, span_id, name, input_text, output_text FROM spans ORDER BY 1, 2")
    downgrade_to_v3(path)

    # A reader takes the version 3 file as it is: no reasoning, no logs, nothing changed.
    before = sha256(path)
    with otel_sqlite_exporter.TraceStore(path) as store:
        entries = store.get_traces()
        assert len(entries) == len(spans)
        assert all(entry.reasoning_text is None for entry in entries)
        assert store.get_logs() == []
        name = spans[0][2]
        assert [hit.entry.name for hit in store.search(name)][:1] == [name]
    assert sha256(path) == before

    connect(str(path)).close()
    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert (
        query(path, "SELECT trace_id, span_id, name, input_text, output_text FROM spans ORDER BY 1, 2")
        == spans
    )
    # The full-text index was rebuilt with the new column: old rows are found, new ones by reasoning.
    assert (
        query(path, "SELECT count(*) FROM spans_fts WHERE spans_fts MATCH ?", (f'"{spans[0][2]}"',))[0][0]
        >= 1
    )
    conn = sqlite3.connect(path)
    conn.execute("UPDATE spans SET reasoning_text = 'pondering zebras' WHERE rowid = 1")
    conn.execute("INSERT INTO spans_fts (spans_fts) VALUES ('integrity-check')")  # raises if out of step
    conn.commit()
    conn.close()
    assert query(path, "SELECT rowid FROM spans_fts WHERE spans_fts MATCH 'zebras'") == [(1,)]


def migrate_dropping(path: Path, index: str, spans: list[tuple[object, ...]]) -> None:
    """A writer opens the file: it is brought to the current version without ``index``, every
    row as it was."""
    connect(str(path)).close()
    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(path, "SELECT name FROM sqlite_master WHERE name = ?", (index,)) == []
    assert query(path, "SELECT * FROM spans ORDER BY id") == spans
    assert query(path, "PRAGMA integrity_check") == [("ok",)]


def test_upgrade_from_version_4_drops_the_type_name_index_and_keeps_every_query(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    write_mixed_file(path)
    spans = query(path, "SELECT * FROM spans ORDER BY id")
    downgrade_to_v4(path)

    before = sha256(path)
    with otel_sqlite_exporter.TraceStore(path) as store:  # a reader leaves version 4 as it is
        assert len(store.get_traces()) == len(spans)
    assert sha256(path) == before

    migrate_dropping(path, "spans_by_type_name", spans)
    with otel_sqlite_exporter.TraceStore(path) as store:
        found = store.get_traces(event_type="span", name="child")
        assert [(entry.type, entry.name) for entry in found] == [("span", "child")]


def test_upgrade_from_version_5_drops_the_span_id_index_and_still_finds_a_span_by_id(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    write_mixed_file(path)
    spans = query(path, "SELECT * FROM spans ORDER BY id")
    trace_id, span_id, name = query(path, "SELECT trace_id, span_id, name FROM spans WHERE name = 'child'")[0]
    downgrade_to_v5(path)

    before = sha256(path)
    with otel_sqlite_exporter.TraceStore(path) as store:  # a reader leaves version 5 as it is
        found = store.get_span(span_id)
        assert found is not None and found.name == name
    assert sha256(path) == before

    migrate_dropping(path, "spans_by_span_id", spans)
    with otel_sqlite_exporter.TraceStore(path) as store:
        for found in (store.get_span(span_id), store.get_span(span_id, trace_id)):
            assert found is not None and (found.trace_id, found.name) == (trace_id, name)
        assert store.get_span(span_id, "0" * 32) is None
        assert store.get_span("0" * 16) is None


def test_a_file_locked_too_long_is_reported_as_locked(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    connect(str(path)).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = DELETE")  # a rollback journal: an exclusive lock stops readers too
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TraceFileError) as info:
            connect(str(path), busy_timeout_millis=100)
        assert not isinstance(info.value, NotATraceFileError)
        assert "locked" in str(info.value) and str(path) in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
