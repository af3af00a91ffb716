"""The trace file: schema, versioned migrations, and opening a connection safely.

``PRAGMA user_version`` holds the schema version and ``schema_migrations`` records when each
migration ran. A file from a newer version is refused untouched.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeVar
from urllib.request import pathname2url

from otel_sqlite_exporter._exceptions import NotATraceFileError, SchemaVersionError, TraceFileError
from otel_sqlite_exporter._owners import read_dead_as_interrupted

logger = logging.getLogger("otel_sqlite_exporter")
T = TypeVar("T")

# Page cache per connection, in KiB. A span writer's is smaller: a batch appends its rows and
# reaches the indexes at scattered pages it seldom meets again, so a bigger cache measured no faster,
# on a fresh file or one of a million spans, and only held the last batches' pages (24 MiB more of
# the application's memory).
CACHE_KIB = 32_768
WRITER_CACHE_KIB = 8_192
_ISO = "strftime('%Y-%m-%dT%H:%M:%fZ', {col} / 1000000000.0, 'unixepoch')"
_TOKENS = """
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


_V1 = Migration(
    1,
    "initial schema: sessions, traces, spans, settings, compatibility views, full-text index",
    (
        f"""CREATE TABLE sessions (
            session_id TEXT PRIMARY KEY,
            task TEXT,
            status TEXT NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'completed', 'failed', 'cancelled', 'interrupted')),
            start_time_unix_nano INTEGER,
            end_time_unix_nano INTEGER,
            user_id TEXT,
            service_name TEXT,
            span_count INTEGER NOT NULL DEFAULT 0,
            error_count INTEGER NOT NULL DEFAULT 0,{_TOKENS},
            -- 1 when opened by session(): its status follows the block, not its spans.
            managed INTEGER NOT NULL DEFAULT 0,
            -- How a managed block ended (completed, failed, cancelled); NULL while it runs.
            outcome TEXT
        )""",
        "CREATE INDEX sessions_by_start ON sessions (start_time_unix_nano)",
        f"""CREATE TABLE traces (
            trace_id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL,
            -- Which span named the session: 0 for the root, else that span's start time (lower
            -- wins, in any arrival order); NULL while the session is the trace's own id.
            session_rank INTEGER,
            root_span_id TEXT,
            root_span_name TEXT,
            start_time_unix_nano INTEGER,
            end_time_unix_nano INTEGER,
            status TEXT NOT NULL DEFAULT 'running',
            service_name TEXT,
            span_count INTEGER NOT NULL DEFAULT 0,
            error_count INTEGER NOT NULL DEFAULT 0,{_TOKENS}
        ) WITHOUT ROWID""",
        "CREATE INDEX traces_by_session ON traces (session_id, start_time_unix_nano)",
        """CREATE TABLE resources (
            resource_id INTEGER PRIMARY KEY,
            attributes TEXT NOT NULL,
            schema_url TEXT NOT NULL DEFAULT '',
            service_name TEXT,
            UNIQUE (attributes, schema_url)
        )""",
        """CREATE TABLE spans (
            id INTEGER PRIMARY KEY,
            trace_id TEXT NOT NULL,
            span_id TEXT NOT NULL,
            parent_span_id TEXT,
            session_id TEXT NOT NULL,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            type TEXT NOT NULL,
            start_time_unix_nano INTEGER NOT NULL,
            end_time_unix_nano INTEGER,
            duration_ms REAL,
            status_code TEXT NOT NULL DEFAULT 'UNSET',
            status_message TEXT,
            model TEXT,
            provider TEXT,
            operation TEXT,
            input_tokens INTEGER,
            output_tokens INTEGER,
            cache_read_tokens INTEGER,
            cache_write_tokens INTEGER,
            reasoning_tokens INTEGER,
            cost_usd REAL,
            input_text TEXT,
            output_text TEXT,
            attributes TEXT,
            events TEXT,
            links TEXT,
            resource_id INTEGER REFERENCES resources (resource_id),
            scope_name TEXT,
            scope_version TEXT,
            -- 1 for a local root: no parent, or a parent in another process.
            is_root INTEGER NOT NULL DEFAULT 0,
            -- 1 when the span carries token counts or cost of its own.
            has_usage INTEGER NOT NULL DEFAULT 0,
            -- 1 when a span beneath it carries usage: then its own usage is a repeat and is not rolled up.
            usage_below INTEGER NOT NULL DEFAULT 0,
            UNIQUE (trace_id, span_id)
        )""",
        "CREATE INDEX spans_by_session ON spans (session_id, start_time_unix_nano)",
        "CREATE INDEX spans_by_start ON spans (start_time_unix_nano)",
        "CREATE INDEX spans_by_type_name ON spans (type, name)",
        "CREATE INDEX spans_by_model ON spans (model) WHERE model IS NOT NULL",
        # Ancestors not stored yet whose subtree already carries usage (children often arrive first).
        """CREATE TABLE pending_ancestors (
            trace_id TEXT NOT NULL,
            span_id TEXT NOT NULL,
            PRIMARY KEY (trace_id, span_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT
        )""",
        "INSERT INTO settings (key, value) VALUES ('retention_days', '30')",
        """CREATE VIRTUAL TABLE spans_fts USING fts5 (
            name, input_text, output_text, content='spans', content_rowid='id'
        )""",
        """CREATE TRIGGER spans_fts_insert AFTER INSERT ON spans BEGIN
            INSERT INTO spans_fts (rowid, name, input_text, output_text)
            VALUES (new.id, new.name, new.input_text, new.output_text);
        END""",
        """CREATE TRIGGER spans_fts_delete AFTER DELETE ON spans BEGIN
            INSERT INTO spans_fts (spans_fts, rowid, name, input_text, output_text)
            VALUES ('delete', old.id, old.name, old.input_text, old.output_text);
        END""",
        """CREATE TRIGGER spans_fts_update AFTER UPDATE OF name, input_text, output_text ON spans
        WHEN old.name IS NOT new.name OR old.input_text IS NOT new.input_text
            OR old.output_text IS NOT new.output_text
        BEGIN
            INSERT INTO spans_fts (spans_fts, rowid, name, input_text, output_text)
            VALUES ('delete', old.id, old.name, old.input_text, old.output_text);
            INSERT INTO spans_fts (rowid, name, input_text, output_text)
            VALUES (new.id, new.name, new.input_text, new.output_text);
        END""",
        f"""CREATE VIEW agent_trace_sessions AS SELECT
            session_id AS id,
            task,
            {_ISO.format(col="start_time_unix_nano")} AS started_at,
            {_ISO.format(col="end_time_unix_nano")} AS completed_at,
            status,
            span_count AS total_events,
            input_tokens + output_tokens AS total_tokens,
            cost_usd AS total_cost_usd
        FROM sessions""",
        f"""CREATE VIEW agent_traces AS SELECT
            span_id AS id,
            session_id,
            type,
            {_ISO.format(col="start_time_unix_nano")} AS timestamp,
            duration_ms,
            parent_span_id AS parent_trace_id,
            attributes AS data,
            input_tokens,
            output_tokens,
            model AS model_used,
            provider AS provider_used,
            cost_usd,
            input_text AS raw_input,
            output_text AS raw_output,
            {_ISO.format(col="start_time_unix_nano")} AS created_at
        FROM spans""",
    ),
)

_V2 = Migration(
    2,
    "read-side indexes: spans by span id, type, name, model and time, open and failed spans; "
    "sessions by status and user",
    (
        # get_span(span_id) without its trace id (dropped in version 6).
        "CREATE INDEX spans_by_span_id ON spans (span_id)",
        # get_traces(event_type=...) and get_traces(name=...) in start order, alone or in a time window.
        "CREATE INDEX spans_by_type ON spans (type, start_time_unix_nano)",
        "CREATE INDEX spans_by_name ON spans (name, start_time_unix_nano)",
        # Model plus time window in (start, id) order, and usage by model read from the index alone (stats).
        "DROP INDEX spans_by_model",
        """CREATE INDEX spans_by_model ON spans (
            model, start_time_unix_nano, id, has_usage, usage_below, input_tokens, output_tokens, cost_usd
        ) WHERE model IS NOT NULL""",
        # With no statistics SQLite takes any two equalities as equally selective and, on a tie, uses
        # the index created last: the session index is rebuilt after the type, name and model ones,
        # so a session filter drives the query whatever other filter comes with it.
        "DROP INDEX spans_by_session",
        "CREATE INDEX spans_by_session ON spans (session_id, start_time_unix_nano)",
        # get_traces(status=...) for running or interrupted spans, and for errors: the few such spans.
        "CREATE INDEX spans_open ON spans (start_time_unix_nano) WHERE end_time_unix_nano IS NULL",
        "CREATE INDEX spans_failed ON spans (start_time_unix_nano) WHERE status_code = 'ERROR'",
        # get_sessions(status=...) and get_sessions(user_id=...), newest first.
        "CREATE INDEX sessions_by_status ON sessions (status, start_time_unix_nano)",
        "CREATE INDEX sessions_by_user ON sessions (user_id, start_time_unix_nano)",
    ),
)

_V3 = Migration(
    3,
    "retention and budgets: last activity of traces and sessions, the process writing a session, "
    "budget status",
    (
        # The latest start or end time of any span in the trace (or session): what retention ages by.
        "ALTER TABLE traces ADD COLUMN last_activity_unix_nano INTEGER",
        "ALTER TABLE sessions ADD COLUMN last_activity_unix_nano INTEGER",
        """UPDATE traces SET last_activity_unix_nano = (
            SELECT max(max(s.start_time_unix_nano), coalesce(max(s.end_time_unix_nano), 0))
            FROM spans AS s WHERE s.trace_id = traces.trace_id)""",
        """UPDATE sessions SET last_activity_unix_nano = max(
            coalesce((SELECT max(t.last_activity_unix_nano) FROM traces AS t
                      WHERE t.session_id = sessions.session_id), 0),
            coalesce(start_time_unix_nano, 0), coalesce(end_time_unix_nano, 0))""",
        "CREATE INDEX sessions_by_activity ON sessions (last_activity_unix_nano)",
        # Which process (on which host) last wrote the session: a running session whose process is
        # gone is interrupted, not running.
        "ALTER TABLE sessions ADD COLUMN owner_pid INTEGER",
        "ALTER TABLE sessions ADD COLUMN owner_host TEXT",
        # NULL when no budget tracks the session; else ok, warning or exceeded (never goes back).
        """ALTER TABLE sessions ADD COLUMN budget_status TEXT
            CHECK (budget_status IN ('ok', 'warning', 'exceeded'))""",
        # get_sessions(budget_status=...): the sessions a budget tracks, newest first.
        """CREATE INDEX sessions_by_budget ON sessions (budget_status, start_time_unix_nano)
            WHERE budget_status IS NOT NULL""",
    ),
)

_FTS_COLUMNS = "name, input_text, output_text, reasoning_text"
# Also created empty in temp for a reader of an older file (see _READ_AS_CURRENT).
_LOGS_TABLE = """CREATE TABLE {schema}logs (
            log_id INTEGER PRIMARY KEY,
            trace_id TEXT,
            span_id TEXT,
            time_unix_nano INTEGER NOT NULL,
            observed_time_unix_nano INTEGER,
            severity_number INTEGER,
            severity_text TEXT,
            event_name TEXT,
            -- A text body as it is; any other body as JSON.
            body TEXT,
            attributes TEXT,
            resource_id INTEGER REFERENCES resources (resource_id),
            scope_name TEXT,
            scope_version TEXT
        )"""
_V4 = Migration(
    4,
    "GenAI content and logs: reasoning text, response ids, log records, content waiting for its span",
    (
        # The model's reasoning (thinking blocks, reasoning summaries), kept out of output_text.
        "ALTER TABLE spans ADD COLUMN reasoning_text TEXT",
        # gen_ai.response.id: one model call recorded by two instrumentations is counted once.
        "ALTER TABLE spans ADD COLUMN response_id TEXT",
        """CREATE INDEX spans_by_response_id ON spans (response_id, scope_name)
            WHERE response_id IS NOT NULL""",
        # The full-text index gains the reasoning text: rebuilt from the spans.
        "DROP TRIGGER spans_fts_insert",
        "DROP TRIGGER spans_fts_delete",
        "DROP TRIGGER spans_fts_update",
        "DROP TABLE spans_fts",
        f"CREATE VIRTUAL TABLE spans_fts USING fts5 ({_FTS_COLUMNS}, content='spans', content_rowid='id')",
        f"""CREATE TRIGGER spans_fts_insert AFTER INSERT ON spans BEGIN
            INSERT INTO spans_fts (rowid, {_FTS_COLUMNS})
            VALUES (new.id, new.name, new.input_text, new.output_text, new.reasoning_text);
        END""",
        f"""CREATE TRIGGER spans_fts_delete AFTER DELETE ON spans BEGIN
            INSERT INTO spans_fts (spans_fts, rowid, {_FTS_COLUMNS})
            VALUES ('delete', old.id, old.name, old.input_text, old.output_text, old.reasoning_text);
        END""",
        f"""CREATE TRIGGER spans_fts_update
        AFTER UPDATE OF name, input_text, output_text, reasoning_text ON spans
        WHEN old.name IS NOT new.name OR old.input_text IS NOT new.input_text
            OR old.output_text IS NOT new.output_text OR old.reasoning_text IS NOT new.reasoning_text
        BEGIN
            INSERT INTO spans_fts (spans_fts, rowid, {_FTS_COLUMNS})
            VALUES ('delete', old.id, old.name, old.input_text, old.output_text, old.reasoning_text);
            INSERT INTO spans_fts (rowid, {_FTS_COLUMNS})
            VALUES (new.id, new.name, new.input_text, new.output_text, new.reasoning_text);
        END""",
        "INSERT INTO spans_fts (spans_fts) VALUES ('rebuild')",
        # Log records (other than GenAI content, which goes onto its span), linked to their span.
        _LOGS_TABLE.format(schema=""),
        # get_logs() by session (its traces), trace or span, and in time order.
        "CREATE INDEX logs_by_trace ON logs (trace_id, time_unix_nano) WHERE trace_id IS NOT NULL",
        "CREATE INDEX logs_by_span ON logs (span_id) WHERE span_id IS NOT NULL",
        "CREATE INDEX logs_by_time ON logs (time_unix_nano)",
        # GenAI content that came as a log record (gen_ai.client.inference.operation.details, ...)
        # before its span was stored, or before it ended: merged into the span when it is written.
        """CREATE TABLE pending_content (
            id INTEGER PRIMARY KEY,
            trace_id TEXT NOT NULL,
            span_id TEXT NOT NULL,
            received_unix_nano INTEGER NOT NULL,
            input_text TEXT,
            output_text TEXT,
            reasoning_text TEXT,
            -- The span event it becomes: {"name", "time_unix_nano", "attributes"}.
            event TEXT NOT NULL
        )""",
        "CREATE INDEX pending_content_by_span ON pending_content (trace_id, span_id)",
    ),
)

_V5 = Migration(
    5,
    "drop spans_by_type_name: spans_by_type and spans_by_name serve its queries",
    # A type-and-name filter is served as well by spans_by_name (the name is the selective part),
    # and the index cost every span about 30 bytes and a B-tree insert.
    ("DROP INDEX IF EXISTS spans_by_type_name",),
)

_V6 = Migration(
    6,
    "drop spans_by_span_id: a span id alone is found through the (trace_id, span_id) key",
    # Span ids are random, so every span written went to a random page of this index: on a file of
    # a million spans each batch dirtied most of its pages, about a fifth of the write time. The
    # rare lookup by a span id alone reads the key index instead (a covering scan, ~0.1 s a
    # million spans); a lookup with its trace id is a search, as before.
    ("DROP INDEX IF EXISTS spans_by_span_id",),
)

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3, _V4, _V5, _V6)
SCHEMA_VERSION = MIGRATIONS[-1].version

# A file of an older version is read as it is (never migrated by a reader): what later versions
# added is seen through temporary views and tables, empty, so one set of queries reads them all.
_READ_AS_CURRENT = {
    4: (
        "CREATE TEMP VIEW spans AS SELECT *, NULL AS reasoning_text, NULL AS response_id FROM main.spans",
        _LOGS_TABLE.format(schema="temp."),
    ),
}


def connect(
    path: str, *, busy_timeout_millis: int = 10_000, create: bool = True, cache_kib: int = CACHE_KIB
) -> sqlite3.Connection:
    """Open (creating with mode 0600 if allowed) and migrate a trace file; the connection autocommits.

    Raises ``TraceFileError`` (or a subclass) naming the file and the problem; a file that is not
    ours, or is newer than this package, is never modified.
    """
    path = os.path.abspath(path)
    fresh = _prepare_file(path, create)

    def setup(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_millis)}")
        empty = _check_foreign(conn, path, fresh)
        if fresh or empty:
            # Only possible before the first page is written: retention then gives freed pages back
            # to the file system a step at a time (PRAGMA incremental_vacuum) instead of by a full
            # VACUUM. Also when another process created the file a moment ago and has not written
            # it yet: whichever process writes first must write it this way.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = _while_locked(
            lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0], busy_timeout_millis
        )
        if mode.lower() != "wal":
            raise TraceFileError(path, "cannot switch to WAL journal mode")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
        if 0 < migrate(conn, path) < 3:
            _enable_incremental_vacuum(conn, path)

    return _open(path, path, busy_timeout_millis, setup)


def open_reader(path: str, *, busy_timeout_millis: int = 10_000) -> sqlite3.Connection:
    """Open an existing trace file read-only: nothing is created, migrated or otherwise changed.

    A file of an older schema version is read as it is; one that is missing, empty, foreign or
    newer raises ``TraceFileError`` (or a subclass) naming the file and the problem.
    """
    path = os.path.abspath(path)
    if _prepare_file(path, create=False):
        raise TraceFileError(path, "is empty: nothing has been written to it yet")

    def setup(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_millis)}")
        if _check_foreign(conn, path, fresh=False):
            raise TraceFileError(path, "has no trace schema yet: nothing has been written to it")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for added_in, statements in _READ_AS_CURRENT.items():
            if version < added_in:
                for statement in statements:
                    conn.execute(statement)
        if version >= 3:  # sessions record their owner since version 3
            read_dead_as_interrupted(conn)

    return _open(path, f"file:{pathname2url(path)}?mode=ro", busy_timeout_millis, setup)


def _open(
    path: str, database: str, busy_timeout_millis: int, setup: Callable[[sqlite3.Connection], None]
) -> sqlite3.Connection:
    """Connect (``database`` is the path or a URI) and run ``setup``; errors name the file, and a
    connection whose setup failed is closed."""
    try:
        conn = sqlite3.connect(
            database,
            uri=database.startswith("file:"),
            timeout=busy_timeout_millis / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise TraceFileError(path, f"cannot open: {exc}") from exc
    try:
        setup(conn)
    except sqlite3.OperationalError as exc:
        conn.close()
        if is_lock_wait(exc):
            raise TraceFileError(
                path, f"is locked by another connection (waited {busy_timeout_millis} ms): {exc}"
            ) from exc
        raise NotATraceFileError(path, f"not a usable SQLite database: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        conn.close()
        if "file is not a database" in str(exc):
            raise NotATraceFileError(path, "is not a SQLite database (it was left untouched)") from exc
        raise NotATraceFileError(path, f"not a usable SQLite database: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the file to ``SCHEMA_VERSION`` in one transaction; returns the version found before."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(path, found, SCHEMA_VERSION)
        if found < SCHEMA_VERSION:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"""
            )
            for migration in MIGRATIONS:
                if migration.version <= found:
                    continue
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, datetime.now(timezone.utc).isoformat()),
                )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def _enable_incremental_vacuum(conn: sqlite3.Connection, path: str) -> None:
    """A file made before schema 3 is rebuilt once (VACUUM) so that it can shrink incrementally.

    A failure (another process busy in the file, a full disk) leaves the file as it was and only
    means retention frees pages for reuse without shrinking the file.
    """
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    try:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
    except sqlite3.Error as exc:
        logger.warning(
            "otel-sqlite-exporter: %s was not rebuilt for incremental vacuum (%s); retention will "
            "reuse freed space but not shrink the file",
            path,
            exc,
        )


def _prepare_file(path: str, create: bool) -> bool:
    """True when the file is new (or empty). Creates it, and its folder, owner-only.

    The file is only looked at (``stat``), never opened here: closing any descriptor of a file
    releases every POSIX lock this process holds on it, those of its open SQLite connections
    included, and another process closing its own connection would then take the file for unused
    and delete its write-ahead log and shared memory while this process still uses them. SQLite
    itself tells a file that is not a database (see ``_open``).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if not create:
            raise TraceFileError(path, "no such trace file") from None
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False  # another process created it first; it migrates (or refuses) below
        except OSError as exc:
            raise TraceFileError(path, f"cannot create the trace file: {exc.strerror or exc}") from exc
        return True
    except OSError as exc:
        raise TraceFileError(path, f"cannot read: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise TraceFileError(path, "is a directory, not a trace file")
    return info.st_size == 0


def _check_foreign(conn: sqlite3.Connection, path: str, fresh: bool) -> bool:
    """Refuse a file that is not ours (or is newer); True when it has no tables yet."""
    if fresh:
        return True
    # One statement, so one snapshot: another process may be creating the schema right now, and
    # its tables must not be seen without the version that comes with them.
    version, ours, tables = conn.execute(
        "SELECT (SELECT user_version FROM pragma_user_version), "
        "EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations'), "
        "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table')"
    ).fetchone()
    if version > 0:
        if not ours:
            raise NotATraceFileError(
                path, "is a SQLite database of another application (it was left untouched)"
            )
        if version > SCHEMA_VERSION:
            # Checked before anything (even the journal mode) is changed in the file.
            raise SchemaVersionError(path, version, SCHEMA_VERSION)
        return False
    if tables:
        raise NotATraceFileError(path, "is a SQLite database of another application (it was left untouched)")
    return True


def is_lock_wait(exc: BaseException) -> bool:
    """True for a statement that gave up waiting for another connection's lock: worth another try."""
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def _while_locked(run: Callable[[], T], busy_timeout_millis: int) -> T:
    """``run()``, tried again while another connection holds the lock it needs.

    Switching the journal mode needs the file to itself, and SQLite reports a conflict there at
    once instead of calling the busy handler: two processes opening a new file at the same moment
    would otherwise fail with "database is locked".
    """
    deadline = time.monotonic() + busy_timeout_millis / 1000
    pause = 0.001
    while True:
        try:
            return run()
        except sqlite3.OperationalError as exc:
            if not is_lock_wait(exc):
                raise
            if time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
