"""Write: one batch of spans (and session lifecycle events) into the trace file, in one transaction.

Every step is one set-based SQL statement over the whole batch, which arrives as a single JSON
array. The sqlite3 module re-takes the GIL after every statement step; doing the rows inside SQLite
keeps that to a few dozen times per batch instead of once per row, so the writer never competes
with the traced application for the interpreter.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._normalize import JSON_COLUMNS, ROW_COLUMNS, SpanMapper, encode_rows
from otel_sqlite_exporter._schema import connect

logger = logging.getLogger("otel_sqlite_exporter")

_TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
# Columns an end row overwrites in its start row (everything but the keys and the bookkeeping flags).
_SPAN_DATA = (
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
    *_TOKEN_COLUMNS,
    "cost_usd",
    "input_text",
    "output_text",
    "attributes",
    "events",
    "links",
    "resource_id",
    "scope_name",
    "scope_version",
    "is_root",
    "has_usage",
)

_CREATE_TEMP = (
    f"CREATE TEMP TABLE IF NOT EXISTS staged_spans ({', '.join(ROW_COLUMNS)}, "
    "PRIMARY KEY (trace_id, span_id))",
    """CREATE TEMP TABLE IF NOT EXISTS staged_traces (
        trace_id TEXT PRIMARY KEY, explicit_session TEXT, service_name TEXT, user_id TEXT)""",
    "CREATE TEMP TABLE IF NOT EXISTS moved_traces (trace_id TEXT PRIMARY KEY, old_session_id TEXT)",
    "CREATE TEMP TABLE IF NOT EXISTS touched_sessions (session_id TEXT PRIMARY KEY)",
    "CREATE TEMP TABLE IF NOT EXISTS ancestors (trace_id, span_id, PRIMARY KEY (trace_id, span_id))",
)
_CLEAR_TEMP = tuple(
    f"DELETE FROM temp.{name}"
    for name in ("staged_spans", "staged_traces", "moved_traces", "touched_sessions", "ancestors")
)

_STAGE = (
    f"INSERT INTO temp.staged_spans ({', '.join(ROW_COLUMNS)}) "
    "SELECT "
    + ", ".join(
        f"nullif(value -> {i}, 'null')" if name in JSON_COLUMNS else f"value ->> {i}"
        for i, name in enumerate(ROW_COLUMNS)
    )
    + " FROM json_each(?)"
)
# A trace's session: its root's explicit session, else the earliest explicit one, else the trace id.
_STAGE_TRACES = """
INSERT INTO temp.staged_traces (trace_id, explicit_session, service_name, user_id)
SELECT s.trace_id,
       (SELECT e.explicit_session FROM temp.staged_spans e
         WHERE e.trace_id = s.trace_id AND e.explicit_session IS NOT NULL
         ORDER BY e.is_root DESC, e.start_time_unix_nano LIMIT 1),
       max(s.service_name), max(s.user_id)
FROM temp.staged_spans s GROUP BY s.trace_id
"""
_FIND_MOVED = """
INSERT INTO temp.moved_traces (trace_id, old_session_id)
SELECT t.trace_id, t.session_id FROM temp.staged_traces st JOIN traces t ON t.trace_id = st.trace_id
WHERE t.session_explicit = 0 AND st.explicit_session IS NOT NULL
"""
_UPSERT_TRACES = """
INSERT INTO traces (trace_id, session_id, session_explicit, service_name)
SELECT trace_id, coalesce(explicit_session, trace_id), explicit_session IS NOT NULL, service_name
FROM temp.staged_traces WHERE true
ON CONFLICT (trace_id) DO UPDATE SET session_id = excluded.session_id, session_explicit = 1
WHERE traces.session_explicit = 0 AND excluded.session_explicit = 1
"""
_MOVE_SPANS = """
UPDATE spans SET session_id = (SELECT t.session_id FROM traces t WHERE t.trace_id = spans.trace_id)
WHERE trace_id IN (SELECT trace_id FROM temp.moved_traces)
"""
_DROP_PLACEHOLDERS = """
DELETE FROM sessions
WHERE session_id IN (SELECT old_session_id FROM temp.moved_traces) AND managed = 0
  AND NOT EXISTS (SELECT 1 FROM traces t WHERE t.session_id = sessions.session_id)
"""
_UPSERT_SESSIONS = """
INSERT INTO sessions (session_id, user_id, service_name)
SELECT t.session_id, max(st.user_id), max(st.service_name)
FROM temp.staged_traces st JOIN traces t ON t.trace_id = st.trace_id WHERE true GROUP BY t.session_id
ON CONFLICT (session_id) DO UPDATE SET
    user_id = coalesce(sessions.user_id, excluded.user_id),
    service_name = coalesce(sessions.service_name, excluded.service_name)
"""
_TOUCH_SESSIONS = """
INSERT OR IGNORE INTO temp.touched_sessions (session_id)
SELECT t.session_id FROM temp.staged_traces st JOIN traces t ON t.trace_id = st.trace_id
UNION SELECT old_session_id FROM temp.moved_traces
"""
_OPEN_SESSION = """
INSERT INTO sessions (session_id, task, user_id, service_name, start_time_unix_nano, managed, status)
VALUES (:session_id, :task, :user_id, :service_name, :time, 1, 'running')
ON CONFLICT (session_id) DO UPDATE SET
    task = coalesce(excluded.task, sessions.task),
    user_id = coalesce(excluded.user_id, sessions.user_id),
    service_name = coalesce(sessions.service_name, excluded.service_name),
    start_time_unix_nano = min(coalesce(sessions.start_time_unix_nano, excluded.start_time_unix_nano),
                               excluded.start_time_unix_nano),
    end_time_unix_nano = NULL, managed = 1, outcome = NULL, status = 'running'
"""
_CLOSE_SESSION = """
INSERT INTO sessions (session_id, task, user_id, end_time_unix_nano, managed, outcome, status)
VALUES (:session_id, :task, :user_id, :time, 1, :outcome, :outcome)
ON CONFLICT (session_id) DO UPDATE SET end_time_unix_nano = excluded.end_time_unix_nano,
    managed = 1, outcome = excluded.outcome
"""
_has_usage = " OR ".join(f"s.{c} IS NOT NULL" for c in (*_TOKEN_COLUMNS, "cost_usd"))
_UPSERT_SPANS = f"""
INSERT INTO spans ({", ".join(("trace_id", "span_id", *_SPAN_DATA))})
SELECT s.trace_id, s.span_id, s.parent_span_id, t.session_id, s.name, s.kind, s.type,
       s.start_time_unix_nano, s.end_time_unix_nano,
       (s.end_time_unix_nano - s.start_time_unix_nano) / 1000000.0,
       s.status_code, s.status_message, s.model, s.provider, s.operation,
       {", ".join(f"s.{c}" for c in _TOKEN_COLUMNS)}, s.cost_usd, s.input_text, s.output_text,
       s.attributes, s.events, s.links, s.resource_id, s.scope_name, s.scope_version, s.is_root,
       {_has_usage}
FROM temp.staged_spans s JOIN traces t ON t.trace_id = s.trace_id WHERE true
ON CONFLICT (trace_id, span_id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _SPAN_DATA)}
-- A late start row never overwrites the completed row.
WHERE excluded.end_time_unix_nano IS NOT NULL OR spans.end_time_unix_nano IS NULL
"""
# A span whose descendant carries usage is marked usage_below, so only the innermost usage counts.
# Children often arrive before their parents: an ancestor not stored yet waits in pending_ancestors.
_CLAIM_PENDING = """
UPDATE spans SET usage_below = 1
WHERE usage_below = 0 AND (trace_id, span_id) IN (
    SELECT p.trace_id, p.span_id FROM pending_ancestors p
    JOIN temp.staged_spans s ON s.trace_id = p.trace_id AND s.span_id = p.span_id)
"""
_DELETE_PENDING = """
DELETE FROM pending_ancestors WHERE (trace_id, span_id) IN (SELECT trace_id, span_id FROM temp.staged_spans)
"""
_WALK_UP = """
WITH RECURSIVE up (trace_id, span_id) AS (
    SELECT sp.trace_id, sp.parent_span_id
    FROM temp.staged_spans st JOIN spans sp ON sp.trace_id = st.trace_id AND sp.span_id = st.span_id
    WHERE sp.parent_span_id IS NOT NULL AND sp.is_root = 0 AND (sp.has_usage = 1 OR sp.usage_below = 1)
    UNION
    SELECT sp.trace_id, sp.parent_span_id
    FROM up JOIN spans sp ON sp.trace_id = up.trace_id AND sp.span_id = up.span_id
    -- An ancestor already marked has had its own ancestors marked: stop there.
    WHERE sp.parent_span_id IS NOT NULL AND sp.is_root = 0 AND sp.usage_below = 0
)
INSERT OR IGNORE INTO temp.ancestors (trace_id, span_id) SELECT trace_id, span_id FROM up
"""
_MARK_ANCESTORS = """
UPDATE spans SET usage_below = 1
WHERE usage_below = 0 AND (trace_id, span_id) IN (SELECT trace_id, span_id FROM temp.ancestors)
"""
_PEND_ANCESTORS = """
INSERT OR IGNORE INTO pending_ancestors (trace_id, span_id)
SELECT a.trace_id, a.span_id FROM temp.ancestors a
WHERE NOT EXISTS (SELECT 1 FROM spans s WHERE s.trace_id = a.trace_id AND s.span_id = a.span_id)
"""
_counted = "FILTER (WHERE s.has_usage = 1 AND s.usage_below = 0)"
_ROLLUP_TRACES = f"""
UPDATE traces SET
    span_count = a.n, error_count = a.errors,
    {", ".join(f"{c} = a.{c}" for c in _TOKEN_COLUMNS)}, cost_usd = a.cost_usd,
    start_time_unix_nano = a.start_time,
    end_time_unix_nano = CASE WHEN a.status = 'running' THEN NULL ELSE a.end_time END,
    root_span_id = a.root_span_id, root_span_name = a.root_span_name, status = a.status
FROM (
    SELECT s.trace_id, count(*) AS n, count(*) FILTER (WHERE s.status_code = 'ERROR') AS errors,
           {", ".join(f"coalesce(sum(s.{c}) {_counted}, 0) AS {c}" for c in _TOKEN_COLUMNS)},
           sum(s.cost_usd) {_counted} AS cost_usd,
           min(s.start_time_unix_nano) AS start_time, max(s.end_time_unix_nano) AS end_time,
           max(s.span_id) FILTER (WHERE s.is_root = 1) AS root_span_id,
           max(s.name) FILTER (WHERE s.is_root = 1) AS root_span_name,
           CASE
               WHEN max(s.is_root) = 1 THEN CASE
                   WHEN max(s.end_time_unix_nano IS NULL) FILTER (WHERE s.is_root = 1) THEN 'running'
                   WHEN max(s.status_code = 'ERROR') FILTER (WHERE s.is_root = 1) THEN 'failed'
                   ELSE 'completed' END
               WHEN max(s.end_time_unix_nano IS NULL) THEN 'running'
               ELSE 'completed'
           END AS status
    FROM spans s WHERE s.trace_id IN (SELECT trace_id FROM temp.staged_traces) GROUP BY s.trace_id
) AS a
WHERE traces.trace_id = a.trace_id
"""
_ROLLUP_SESSIONS = f"""
UPDATE sessions SET
    span_count = a.n, error_count = a.errors,
    {", ".join(f"{c} = a.{c}" for c in _TOKEN_COLUMNS)}, cost_usd = a.cost_usd,
    start_time_unix_nano = min(coalesce(sessions.start_time_unix_nano, a.start_time),
                               coalesce(a.start_time, sessions.start_time_unix_nano)),
    end_time_unix_nano = CASE WHEN a.status = 'running' THEN NULL
        ELSE nullif(max(coalesce(sessions.end_time_unix_nano, 0), coalesce(a.end_time, 0)), 0) END,
    status = a.status
FROM (
    SELECT se.session_id, coalesce(sum(t.span_count), 0) AS n, coalesce(sum(t.error_count), 0) AS errors,
           {", ".join(f"coalesce(sum(t.{c}), 0) AS {c}" for c in _TOKEN_COLUMNS)},
           sum(t.cost_usd) AS cost_usd,
           min(t.start_time_unix_nano) AS start_time, max(t.end_time_unix_nano) AS end_time,
           CASE
               WHEN se.status = 'interrupted' AND se.managed = 0 THEN 'interrupted'
               WHEN se.managed = 1 THEN CASE
                   WHEN se.outcome IS NULL THEN 'running'
                   WHEN se.outcome != 'completed' THEN se.outcome
                   WHEN max(t.status = 'failed') THEN 'failed'
                   ELSE 'completed' END
               WHEN max(t.status = 'running') THEN 'running'
               WHEN max(t.status = 'failed') THEN 'failed'
               ELSE 'completed'
           END AS status
    FROM temp.touched_sessions ts
    JOIN sessions se ON se.session_id = ts.session_id
    LEFT JOIN traces t ON t.session_id = se.session_id
    GROUP BY se.session_id
) AS a
WHERE sessions.session_id = a.session_id
"""


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A session() block opening or closing, written in order with the spans around it."""

    kind: str  # "open" or "close"
    session_id: str
    time_unix_nano: int
    task: str | None = None
    user_id: str | None = None
    outcome: str | None = None  # for "close": completed, failed or cancelled


class TraceWriter:
    """Owns one connection to a trace file and writes batches into it, one transaction each."""

    def __init__(self, options: Options) -> None:
        self.path = options.path
        self._conn = connect(options.path, busy_timeout_millis=options.busy_timeout_millis)
        for statement in _CREATE_TEMP:
            self._conn.execute(statement)
        if options.retention_days is not None:
            self._conn.execute(
                "INSERT INTO settings (key, value) VALUES ('retention_days', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(options.retention_days),),
            )
        self._mapper = SpanMapper(options, self._resource_id)
        self._service_name: str | None = None
        #: Spans skipped because they could not be mapped at all (a bug worth reporting).
        self.unmappable = 0

    def write(self, spans: Iterable[ReadableSpan], events: Sequence[SessionEvent] = ()) -> int:
        """Write the spans (and session events) in one transaction; returns the number of span rows.

        Raises ``sqlite3.Error`` when the transaction fails; nothing of the batch is then stored.
        """
        rows = self._rows(spans)
        if not rows and not events:
            return 0
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for event in events:
                self._apply_event(event)
            if rows:
                conn.execute(_STAGE, (encode_rows(rows),))
                for statement in (
                    _STAGE_TRACES,
                    _FIND_MOVED,
                    _UPSERT_TRACES,
                    _MOVE_SPANS,
                    _DROP_PLACEHOLDERS,
                    _UPSERT_SESSIONS,
                    _UPSERT_SPANS,
                    _CLAIM_PENDING,
                    _DELETE_PENDING,
                    _WALK_UP,
                    _MARK_ANCESTORS,
                    _PEND_ANCESTORS,
                    _ROLLUP_TRACES,
                    _TOUCH_SESSIONS,
                ):
                    conn.execute(statement)
            conn.execute(_ROLLUP_SESSIONS)
            for statement in _CLEAR_TEMP:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return len(rows)

    def _rows(self, spans: Iterable[ReadableSpan]) -> list[list[Any]]:
        row = self._mapper.row
        try:
            return [row(span) for span in spans]
        except Exception:  # noqa: BLE001 - one malformed span must not cost the whole batch
            rows = []
            for span in spans:
                try:
                    rows.append(row(span))
                except Exception:
                    self.unmappable += 1
                    if self.unmappable == 1:
                        logger.exception(
                            "otel-sqlite-exporter could not map span %r; it is skipped", span.name
                        )
            return rows

    def _apply_event(self, event: SessionEvent) -> None:
        params: dict[str, Any] = {
            "session_id": event.session_id,
            "task": event.task,
            "user_id": event.user_id,
            "time": event.time_unix_nano,
            "service_name": self._service_name,
            "outcome": event.outcome,
        }
        self._conn.execute(_OPEN_SESSION if event.kind == "open" else _CLOSE_SESSION, params)
        self._conn.execute(
            "INSERT OR IGNORE INTO temp.touched_sessions (session_id) VALUES (?)", (event.session_id,)
        )

    def _resource_id(self, attributes: str, schema_url: str | None) -> int:
        # Outside the batch transaction when called from row mapping: a resource row is harmless on its own.
        self._conn.execute(
            "INSERT OR IGNORE INTO resources (attributes, schema_url) VALUES (?, ?)",
            (attributes, schema_url or ""),
        )
        row = self._conn.execute(
            "SELECT resource_id FROM resources WHERE attributes = ? AND schema_url = ?",
            (attributes, schema_url or ""),
        ).fetchone()
        return int(row[0])

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            for statement in _CLEAR_TEMP:
                self._conn.execute(statement)
        except sqlite3.Error:
            pass
        self._mapper.forget_resources()

    def close(self) -> None:
        try:
            self._conn.close()
        except sqlite3.Error:
            pass
