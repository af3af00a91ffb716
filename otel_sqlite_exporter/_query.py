"""Query: ``TraceStore``, the read side of a trace file.

Every filter is a bound parameter (no SQL is ever built from caller text), every query is served by
an index (see the v2 migration), and each method reads one consistent snapshot: several statements
run inside one read transaction, which in WAL mode never blocks the writers appending to the file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from otel_sqlite_exporter import _export, _render
from otel_sqlite_exporter._exceptions import NotFoundError, QueryError, ReadOnlyStoreError
from otel_sqlite_exporter._normalize import SPAN_TYPES
from otel_sqlite_exporter._records import (
    BUDGET_STATUSES,
    ENTRY_COLUMNS,
    ENTRY_FROM,
    ENTRY_JOINS,
    LOG_COLUMNS,
    LOG_FROM,
    SESSION_COLUMNS,
    SESSION_STATUSES,
    SPAN_STATUSES,
    LogEntry,
    ModelUsage,
    SearchHit,
    SessionSummary,
    TraceEntry,
    TraceSession,
    _Record,
    entry_from_row,
    from_ns,
    log_from_row,
    session_from_row,
    to_ns,
)
from otel_sqlite_exporter._retention import (
    RetentionSweeper,
    check_days,
    disk_bytes,
    read_retention_days,
    write_retention_days,
)
from otel_sqlite_exporter._schema import connect, open_reader
from otel_sqlite_exporter._tree import SessionTree, TraceNode, build_traces

_ENTRIES = f"SELECT {ENTRY_COLUMNS} FROM {ENTRY_FROM}"
_SESSIONS = f"SELECT {SESSION_COLUMNS} FROM sessions AS se"
# An ended span's status filter; running and interrupted depend on the session (see ENTRY_COLUMNS).
_STATUS_FILTERS = {
    "running": "s.end_time_unix_nano IS NULL AND se.status IS NOT 'interrupted'",
    "interrupted": "s.end_time_unix_nano IS NULL AND se.status = 'interrupted'",
    "ok": "s.end_time_unix_nano IS NOT NULL AND s.status_code = 'OK'",
    "error": "s.end_time_unix_nano IS NOT NULL AND s.status_code = 'ERROR'",
    "unset": "s.end_time_unix_nano IS NOT NULL AND s.status_code = 'UNSET'",
}
_COUNTED = "s.has_usage = 1 AND s.usage_below = 0"
# A span with usage beneath it (an agent echoing its model call) is not a call of its own either:
# calls count only spans with no usage below them, and a model named only by such spans is left out.
_BY_MODEL = f"""
SELECT s.model, count(*) FILTER (WHERE s.usage_below = 0),
       coalesce(sum(s.input_tokens) FILTER (WHERE {_COUNTED}), 0),
       coalesce(sum(s.output_tokens) FILTER (WHERE {_COUNTED}), 0),
       sum(s.cost_usd) FILTER (WHERE {_COUNTED})
FROM spans AS s WHERE s.model IS NOT NULL {{where}}
GROUP BY s.model HAVING count(*) FILTER (WHERE s.usage_below = 0) > 0 ORDER BY 5 DESC, 1
"""


@dataclass(frozen=True, slots=True)
class StoreStats(_Record):
    """The whole file at a glance: size, counts, time range, and usage by model."""

    path: str
    file_bytes: int
    schema_version: int
    sessions: int
    traces: int
    spans: int
    running_sessions: int
    oldest: datetime | None
    newest: datetime | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    models: list[ModelUsage]

    def to_dict(self) -> dict[str, Any]:
        out = _Record.to_dict(self)
        out["models"] = [m.to_dict() for m in self.models]
        return out


class TraceStore:
    """Read a trace file: sessions, spans, trees, timelines, summaries, search and export.

    Opening never creates or changes the file (``readonly=False`` opens it for writing, migrating
    it to the current schema first). A missing, foreign or newer file raises ``TraceFileError``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        readonly: bool = True,
        busy_timeout_millis: int = 10_000,
    ) -> None:
        self.path = os.path.abspath(
            os.fspath(path or os.environ.get("OTEL_EXPORTER_SQLITE_PATH") or "traces.db")
        )
        self.readonly = readonly
        self._busy_timeout_millis = busy_timeout_millis
        if readonly:
            self._conn = open_reader(self.path, busy_timeout_millis=busy_timeout_millis)
        else:
            self._conn = connect(self.path, busy_timeout_millis=busy_timeout_millis, create=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TraceStore({self.path!r}{'' if self.readonly else ', readonly=False'})"

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One snapshot of the file for every statement inside the block."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    # -- sessions ----------------------------------------------------------------------------------

    def get_sessions(
        self,
        limit: int = 50,
        offset: int = 0,
        *,
        status: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        user_id: str | None = None,
        budget_status: str | None = None,
    ) -> list[TraceSession]:
        """Sessions, newest first; ``since``/``until`` bound their start time (until is exclusive);
        ``budget_status`` is ok, warning or exceeded (sessions a ``TokenBudget`` tracked)."""
        where, params = [], []
        if status is not None:
            where.append("se.status = ?")
            params.append(_choice(status, SESSION_STATUSES, "status"))
        for bound, op, name in ((since, ">=", "since"), (until, "<", "until")):
            if bound is not None:
                where.append(f"se.start_time_unix_nano {op} ?")
                params.append(to_ns(bound, name))
        if user_id is not None:
            where.append("se.user_id = ?")
            params.append(user_id)
        if budget_status is not None:
            where.append("se.budget_status = ?")
            params.append(_choice(budget_status, BUDGET_STATUSES, "budget_status"))
        order = "ORDER BY se.start_time_unix_nano DESC, se.rowid DESC"
        sql = f"{_SESSIONS} {_where(where)} {order} LIMIT ? OFFSET ?"
        with self._read() as conn:
            if budget_status is not None and conn.execute("PRAGMA user_version").fetchone()[0] < 3:
                return []  # a file from before budgets were recorded
            rows = conn.execute(sql, (*params, *_page(limit, offset))).fetchall()
        return [session_from_row(row) for row in rows]

    def get_session(self, session_id: str) -> TraceSession | None:
        with self._read() as conn:
            return self._session(conn, session_id)

    def _session(self, conn: sqlite3.Connection, session_id: str) -> TraceSession | None:
        row = conn.execute(f"{_SESSIONS} WHERE se.session_id = ?", (session_id,)).fetchone()
        return None if row is None else session_from_row(row)

    def _require_session(self, conn: sqlite3.Connection, session_id: str) -> TraceSession:
        found = self._session(conn, session_id)
        if found is None:
            raise NotFoundError(f"no session {session_id!r} in {self.path}")
        return found

    # -- spans -------------------------------------------------------------------------------------

    def get_traces(
        self,
        session_id: str | None = None,
        event_type: str | None = None,
        start_time: datetime | str | None = None,
        end_time: datetime | str | None = None,
        search_text: str | None = None,
        *,
        trace_id: str | None = None,
        name: str | None = None,
        status: str | None = None,
        model: str | None = None,
        min_duration_ms: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TraceEntry]:
        """Spans matching every filter given, one entry each, in start order.

        ``start_time``/``end_time`` bound the span's start (end exclusive); ``search_text`` is a
        full-text search as in :meth:`search`; ``status`` is one of running, interrupted, ok,
        error, unset.
        """
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("session_id", session_id),
            ("trace_id", trace_id),
            ("name", name),
            ("model", model),
        ):
            if value is not None:
                where.append(f"s.{column} = ?")
                params.append(value)
        if event_type is not None:
            where.append("s.type = ?")
            params.append(_choice(event_type, SPAN_TYPES, "event_type"))
        if status is not None:
            where.append(_STATUS_FILTERS[_choice(status, SPAN_STATUSES, "status")])
        for bound, op, label in ((start_time, ">=", "start_time"), (end_time, "<", "end_time")):
            if bound is not None:
                where.append(f"s.start_time_unix_nano {op} ?")
                params.append(to_ns(bound, label))
        if min_duration_ms is not None:
            if isinstance(min_duration_ms, bool) or not isinstance(min_duration_ms, (int, float)):
                raise QueryError(f"min_duration_ms: expected a number, got {min_duration_ms!r}")
            where.append("s.duration_ms >= ?")
            params.append(float(min_duration_ms))  # durations are REAL; any int fits as a float
        if search_text is not None:
            query = fts_query(search_text)
            if query is None:
                return []
            where.append("s.id IN (SELECT rowid FROM spans_fts WHERE spans_fts MATCH ?)")
            params.append(query)
        sql = f"{_ENTRIES} {_where(where)} ORDER BY s.start_time_unix_nano, s.id LIMIT ? OFFSET ?"
        with self._read() as conn:
            rows = _fts_guard(lambda: conn.execute(sql, (*params, *_page(limit, offset))).fetchall())
        return [entry_from_row(row) for row in rows]

    def get_span(self, span_id: str, trace_id: str | None = None) -> TraceEntry | None:
        """One span in full (all its attributes, events and links); the latest if ids repeat.

        With ``trace_id`` this is an index search; a span id alone is looked for in the key index
        of every span (about 0.1 s a million spans)."""
        if trace_id is not None:
            where, params = "s.trace_id = ? AND s.span_id = ?", (trace_id, span_id)
        else:
            # No index leads with the span id (random ids made it the costliest index to write):
            # the (trace_id, span_id) key index, a few dozen bytes a span, is read, not the table.
            where, params = "s.id IN (SELECT id FROM spans WHERE span_id = ?)", (span_id,)
        sql = f"{_ENTRIES} WHERE {where} ORDER BY s.start_time_unix_nano DESC LIMIT 1"
        with self._read() as conn:
            row = conn.execute(sql, params).fetchone()
        return None if row is None else entry_from_row(row)

    def session_timeline(self, session_id: str) -> list[TraceEntry]:
        """Every span of the session, in start order."""
        with self._read() as conn:
            self._require_session(conn, session_id)
            return self._session_entries(conn, session_id)

    def _session_entries(self, conn: sqlite3.Connection, session_id: str) -> list[TraceEntry]:
        rows = conn.execute(
            f"{_ENTRIES} WHERE s.session_id = ? ORDER BY s.start_time_unix_nano, s.id", (session_id,)
        ).fetchall()
        return [entry_from_row(row) for row in rows]

    # -- logs --------------------------------------------------------------------------------------

    def get_logs(
        self,
        *,
        session_id: str | None = None,
        trace_id: str | None = None,
        span_id: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        min_severity: int | None = None,
        event_name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[LogEntry]:
        """Log records matching every filter given, oldest first.

        GenAI content events are not here: they are on their span (``TraceEntry.events`` and its
        texts). ``min_severity`` is an OpenTelemetry severity number (9 INFO, 13 WARN, 17 ERROR).
        """
        where: list[str] = []
        params: list[Any] = []
        if session_id is not None:
            where.append("l.trace_id IN (SELECT trace_id FROM traces WHERE session_id = ?)")
            params.append(session_id)
        for column, value in (("trace_id", trace_id), ("span_id", span_id), ("event_name", event_name)):
            if value is not None:
                where.append(f"l.{column} = ?")
                params.append(value)
        for bound, op, label in ((since, ">=", "since"), (until, "<", "until")):
            if bound is not None:
                where.append(f"l.time_unix_nano {op} ?")
                params.append(to_ns(bound, label))
        if min_severity is not None:
            where.append("l.severity_number >= ?")
            params.append(_whole(min_severity, "min_severity"))
        sql = f"SELECT {LOG_COLUMNS} FROM {LOG_FROM} {_where(where)} ORDER BY l.time_unix_nano, l.log_id"
        with self._read() as conn:
            rows = conn.execute(sql + " LIMIT ? OFFSET ?", (*params, *_page(limit, offset))).fetchall()
        return [log_from_row(row) for row in rows]

    def _session_logs(self, conn: sqlite3.Connection, session_id: str) -> list[LogEntry]:
        rows = conn.execute(
            f"SELECT {LOG_COLUMNS} FROM {LOG_FROM} "
            "WHERE l.trace_id IN (SELECT trace_id FROM traces WHERE session_id = ?) "
            "ORDER BY l.time_unix_nano, l.log_id",
            (session_id,),
        ).fetchall()
        return [log_from_row(row) for row in rows]

    # -- trees -------------------------------------------------------------------------------------

    def session_tree(self, session_id: str) -> SessionTree:
        """The session, its traces in start order, each a forest of spans with subtree rollups."""
        with self._read() as conn:
            session = self._require_session(conn, session_id)
            entries = self._session_entries(conn, session_id)
        return _session_tree(session, entries)

    def trace_tree(self, trace_id: str) -> TraceNode:
        """One trace as a forest of spans (its root, then any orphans)."""
        with self._read() as conn:
            rows = conn.execute(
                f"{_ENTRIES} WHERE s.trace_id = ? ORDER BY s.start_time_unix_nano, s.id", (trace_id,)
            ).fetchall()
        if not rows:
            raise NotFoundError(f"no trace {trace_id!r} in {self.path}")
        return build_traces([entry_from_row(row) for row in rows], {})[0]

    def session_summary(self, session_id: str, *, slowest: int = 5) -> SessionSummary:
        """Duration, spans by type, usage by model, the errors and the slowest spans of a session."""
        slowest = _whole(slowest, "slowest")
        with self._read() as conn:
            session = self._require_session(conn, session_id)
            by_type = dict(
                conn.execute(
                    "SELECT type, count(*) FROM spans WHERE session_id = ? GROUP BY type ORDER BY 2 DESC, 1",
                    (session_id,),
                ).fetchall()
            )
            traces = conn.execute(
                "SELECT count(*) FROM traces WHERE session_id = ?", (session_id,)
            ).fetchone()[0]
            models = _models(conn.execute(_BY_MODEL.format(where="AND s.session_id = ?"), (session_id,)))
            errors = conn.execute(
                f"{_ENTRIES} WHERE s.session_id = ? AND s.status_code = 'ERROR' "
                "ORDER BY s.start_time_unix_nano, s.id",
                (session_id,),
            ).fetchall()
            slow = conn.execute(
                f"{_ENTRIES} WHERE s.session_id = ? AND s.duration_ms IS NOT NULL "
                "ORDER BY s.duration_ms DESC, s.id LIMIT ?",
                (session_id, slowest),
            ).fetchall()
        return SessionSummary(
            session=session,
            duration_ms=session.duration_ms,
            trace_count=traces,
            spans_by_type=by_type,
            models=models,
            errors=[entry_from_row(row) for row in errors],
            slowest=[entry_from_row(row) for row in slow],
        )

    # -- search ------------------------------------------------------------------------------------

    def search(
        self, text: str, *, session_id: str | None = None, limit: int = 50, raw: bool = False
    ) -> list[SearchHit]:
        """Spans whose name or input/output text match, best match first.

        The words of ``text`` must all appear (in any order); with ``raw=True`` the text is an
        FTS5 query (``"exact phrase"``, ``OR``, ``NOT``, ``prefix*``, ...).
        """
        if raw and not isinstance(text, str):
            raise QueryError(f"search text: expected a string, got {type(text).__name__}")
        query = _no_nul(text) if raw else fts_query(text)
        if not query:
            return []
        sql = (
            f"SELECT {ENTRY_COLUMNS}, bm25(spans_fts), "
            "snippet(spans_fts, -1, '[', ']', '...', 16) "
            f"FROM spans_fts JOIN spans AS s ON s.id = spans_fts.rowid {ENTRY_JOINS} WHERE spans_fts MATCH ?"
        )
        params: list[Any] = [query]
        if session_id is not None:
            sql += " AND s.session_id = ?"
            params.append(session_id)
        sql += " ORDER BY bm25(spans_fts) LIMIT ?"
        params.append(_page(limit, 0)[0])
        with self._read() as conn:
            rows = _fts_guard(lambda: conn.execute(sql, params).fetchall())
        return [SearchHit(entry=entry_from_row(row[:-2]), score=row[-2], snippet=row[-1]) for row in rows]

    # -- renderings and export -----------------------------------------------------------------------

    def format_tree(self, session_id: str, *, color: bool = False) -> str:
        """The session tree as text: one line per span with type, duration, model, tokens, cost,
        and the log records emitted in each span beneath it."""
        with self._read() as conn:
            session = self._require_session(conn, session_id)
            entries = self._session_entries(conn, session_id)
            logs = self._session_logs(conn, session_id)
        return _render.tree(_session_tree(session, entries), logs, color=color)

    def format_timeline(self, session_id: str, *, color: bool = False) -> str:
        """The session's spans in start order, each with its offset from the session start."""
        with self._read() as conn:
            session = self._require_session(conn, session_id)
            entries = self._session_entries(conn, session_id)
        return _render.timeline(session, entries, color=color)

    def export_session(self, session_id: str) -> dict[str, Any]:
        """The whole session as JSON-ready data: the session, its traces, and every span in full."""
        tree = self.session_tree(session_id)
        return _export.session_document(tree)

    def export_otlp_json(self, session_id: str) -> dict[str, Any]:
        """The session's spans as OTLP/JSON (``{"resourceSpans": [...]}``), for any OTLP backend."""
        with self._read() as conn:
            self._require_session(conn, session_id)
            rows = conn.execute(
                f"SELECT r.attributes, r.schema_url, {ENTRY_COLUMNS} FROM {ENTRY_FROM} "
                "WHERE s.session_id = ? ORDER BY s.start_time_unix_nano, s.id",
                (session_id,),
            ).fetchall()
        return _export.otlp_document((row[0], row[1], entry_from_row(row[2:])) for row in rows)

    # -- the file ----------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """Size, counts, time range and usage by model of the whole file."""
        with self._read() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            sessions, running, inp, out, cost = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE status = 'running'), "
                "coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), sum(cost_usd) FROM sessions"
            ).fetchone()
            traces = conn.execute("SELECT count(*) FROM traces").fetchone()[0]
            spans = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
            oldest = conn.execute("SELECT min(start_time_unix_nano) FROM spans").fetchone()[0]
            newest = conn.execute("SELECT max(start_time_unix_nano) FROM spans").fetchone()[0]
            models = _models(conn.execute(_BY_MODEL.format(where="")))
        return StoreStats(
            path=self.path,
            file_bytes=disk_bytes(self.path),
            schema_version=version,
            sessions=sessions,
            traces=traces,
            spans=spans,
            running_sessions=running,
            oldest=from_ns(oldest),
            newest=from_ns(newest),
            input_tokens=inp,
            output_tokens=out,
            cost_usd=cost,
            models=models,
        )

    # -- retention ---------------------------------------------------------------------------------

    def get_settings(self) -> dict[str, str]:
        """The file's ``settings`` table (``retention_days``, when the last sweep ran, ...)."""
        with self._read() as conn:
            return {key: value for key, value in conn.execute("SELECT key, value FROM settings ORDER BY key")}

    def get_retention_days(self) -> int:
        """Days a session is kept after its last activity (0: forever); the file's setting, default 30.

        A setting that is not a whole number of days raises ``TraceFileError``.
        """
        with self._read() as conn:
            return read_retention_days(conn, self.path)

    def set_retention_days(self, days: int) -> None:
        """Store the retention period in the file, for every process and sweep that reads it."""
        check_days(days, "days")
        self._writable("set_retention_days")
        with self._lock:
            write_retention_days(self._conn, days)

    def cleanup_old_traces(self, retention_days: int | None = None) -> int:
        """Delete sessions with no activity for ``retention_days`` (default: the file's setting; 0
        deletes nothing), whole and in small transactions so writers keep writing, and give the space
        back; returns the number of spans deleted. Running sessions stay (stale ones are marked
        interrupted first); see :class:`RetentionSweeper` for the rules.
        """
        if retention_days is not None:
            check_days(retention_days)
        self._writable("cleanup_old_traces")
        sweeper = RetentionSweeper(
            self.path, retention_days=retention_days, busy_timeout_millis=self._busy_timeout_millis
        )
        try:
            return sweeper.sweep_once().deleted_spans
        finally:
            sweeper.close()

    def _writable(self, method: str) -> None:
        if self.readonly:
            raise ReadOnlyStoreError(
                self.path,
                f"{method}() changes the file, and this TraceStore was opened read-only; "
                "open it with TraceStore(path, readonly=False)",
            )

    def follow(
        self,
        *,
        session_id: str | None = None,
        backlog: int = 0,
        interval_seconds: float = 0.5,
        stop: threading.Event | None = None,
    ) -> Iterator[TraceEntry]:
        """New spans as they are written, like ``tail -f``: each span once when it first appears
        and once more when it ends (if it was first seen running). Starts with the last ``backlog``
        spans; runs until ``stop`` is set (or the caller stops iterating)."""
        where = "AND s.session_id = ?" if session_id is not None else ""
        extra: tuple[Any, ...] = (session_id,) if session_id is not None else ()
        with self._read() as conn:
            last = conn.execute("SELECT coalesce(max(id), 0) FROM spans").fetchone()[0]
            start = conn.execute(
                f"SELECT coalesce(min(id), 0) FROM (SELECT s.id FROM spans AS s WHERE s.id <= ? {where} "
                "ORDER BY s.id DESC LIMIT ?)",
                (last, *extra, max(0, backlog)),
            ).fetchone()[0]
        cursor = start - 1 if backlog > 0 and start else last
        running: dict[int, None] = {}  # ids of spans shown while running, oldest first
        while stop is None or not stop.is_set():
            with self._read() as conn:
                rows = conn.execute(
                    f"SELECT s.id, {ENTRY_COLUMNS} FROM {ENTRY_FROM} WHERE s.id > ? {where} ORDER BY s.id",
                    (cursor, *extra),
                ).fetchall()
                ended = []
                if running:
                    ids = list(running)
                    marks = ",".join("?" * len(ids))
                    ended = conn.execute(
                        f"SELECT s.id, {ENTRY_COLUMNS} FROM {ENTRY_FROM} "
                        f"WHERE s.id IN ({marks}) AND s.end_time_unix_nano IS NOT NULL "
                        "ORDER BY s.end_time_unix_nano",
                        ids,
                    ).fetchall()
            for row in ended:
                del running[row[0]]
                yield entry_from_row(row[1:])
            for row in rows:
                cursor = row[0]
                entry = entry_from_row(row[1:])
                if entry.end_time is None:
                    running[row[0]] = None
                    if len(running) > 900:  # bounded: the oldest open spans are no longer watched
                        del running[next(iter(running))]
                yield entry
            if not rows and not ended:
                if stop is not None:
                    stop.wait(interval_seconds)
                else:
                    time.sleep(interval_seconds)


def fts_query(text: str) -> str | None:
    """User text as an FTS5 query that matches every word as written (None when there is none):
    each word becomes a quoted string, so nothing in it is read as FTS5 syntax."""
    if not isinstance(text, str):
        raise QueryError(f"search text: expected a string, got {type(text).__name__}")
    words = _no_nul(text).split()
    return " ".join('"' + word.replace('"', '""') + '"' for word in words) or None


def _no_nul(text: str) -> str:
    # FTS5 reads its query as C text: a NUL would end it early (mid-string, an "unterminated
    # string" error). The tokenizer separates words at a NUL anyway, so it reads as a space.
    return text.replace("\x00", " ")


# What SQLite says about a malformed FTS5 query (a few of its messages lack the "fts5" prefix).
_FTS_ERRORS = ("fts5", "MATCH", "unterminated string", "no such column", "unknown special query")


def _fts_guard(run: Any) -> Any:
    try:
        return run()
    except sqlite3.OperationalError as exc:
        if any(marker in str(exc) for marker in _FTS_ERRORS):
            raise QueryError(f"invalid full-text query: {exc}") from None
        raise


def _models(rows: Any) -> list[ModelUsage]:
    return [
        ModelUsage(model=m, calls=n, input_tokens=i, output_tokens=o, total_tokens=i + o, cost_usd=c)
        for m, n, i, o, c in rows
    ]


def _session_tree(session: TraceSession, entries: list[TraceEntry]) -> SessionTree:
    index: dict[tuple[str, str], Any] = {}
    return SessionTree(session=session, traces=tuple(build_traces(entries, index)), _index=index)


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if isinstance(value, str) and value.lower() in allowed:
        return value.lower()
    raise QueryError(f"{name}: {value!r} is not one of {', '.join(allowed)}")


def _page(limit: int, offset: int) -> tuple[int, int]:
    return _whole(limit, "limit"), _whole(offset, "offset")


def _whole(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise QueryError(f"{name}: expected a whole number >= 0, got {value!r}")
    # SQLite's integers are 64-bit; any larger count means the same as the largest.
    return min(value, 2**63 - 1)


def _where(clauses: list[str]) -> str:
    return "WHERE " + " AND ".join(clauses) if clauses else ""
