"""Log records in: GenAI content events onto their span, every other record into ``logs``.

Instrumentations following the current GenAI conventions may send a call's messages as a log
record (``gen_ai.client.inference.operation.details``, or the older per-message events) instead of
span attributes. Such a record becomes an event of its span and fills the span's texts, whichever
of the two reaches the file first: it waits in ``pending_content`` until its span is stored and has
ended (see ``MERGE_PENDING_CONTENT``). Any other record is stored in ``logs``, linked to its span by
trace and span id.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from functools import partial
from types import SimpleNamespace
from typing import Any

from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._content import CONTENT_EVENTS, NO_TEXT, Texts, events_text, without_content
from otel_sqlite_exporter._normalize import SpanMapper, to_json
from otel_sqlite_exporter._schema import connect
from otel_sqlite_exporter._writer import DELETE_MERGED_CONTENT, MERGE_PENDING_CONTENT, store_resource

_INSERT_PENDING = """INSERT INTO pending_content
    (trace_id, span_id, received_unix_nano, input_text, output_text, reasoning_text, event)
    VALUES (?, ?, ?, ?, ?, ?, ?)"""
_INSERT_LOG = """INSERT INTO logs
    (trace_id, span_id, time_unix_nano, observed_time_unix_nano, severity_number, severity_text,
     event_name, body, attributes, resource_id, scope_name, scope_version)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
# Only the rows this batch added need merging: older ones were merged when their span was written.
_NEW_PENDING = "SELECT id FROM pending_content WHERE id > {last}"


class LogWriter:
    """Owns one connection to a trace file and writes batches of log records, one transaction each."""

    def __init__(self, options: Options) -> None:
        self._conn = connect(options.path, busy_timeout_millis=options.busy_timeout_millis)
        self._capture = options.capture_content
        self._limit = options.max_content_length
        # Resources are stored (redacted, cached) the way span rows store them.
        self._mapper = SpanMapper(options, partial(store_resource, self._conn))
        self._redactor = self._mapper.redactor
        self._lock = threading.Lock()

    def write(self, records: Sequence[Any]) -> None:
        """Store the records (SDK ``ReadableLogRecord``/``LogData`` objects) in one transaction.

        Raises ``sqlite3.Error`` when the transaction fails; nothing of the batch is then stored.
        """
        content: list[tuple[Any, ...]] = []
        logs: list[tuple[Any, ...]] = []
        now = time.time_ns()
        with self._lock:
            for item in records:
                record = getattr(item, "log_record", item)
                attributes = dict(getattr(record, "attributes", None) or {})
                name = getattr(record, "event_name", None) or attributes.get("event.name")
                trace_id, span_id = _ids(record)
                if name in CONTENT_EVENTS and span_id is not None:
                    content.append((trace_id, span_id, now, *self._content(record, name, attributes)))
                else:
                    logs.append(self._log_row(item, record, name, attributes, trace_id, span_id))
            if not content and not logs:
                return
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if content:
                    last = conn.execute("SELECT coalesce(max(id), 0) FROM pending_content").fetchone()[0]
                    conn.executemany(_INSERT_PENDING, content)
                    pending = _NEW_PENDING.format(last=int(last))
                    conn.execute(MERGE_PENDING_CONTENT.format(pending=pending))
                    conn.execute(DELETE_MERGED_CONTENT.format(pending=pending))
                if logs:
                    conn.executemany(_INSERT_LOG, logs)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _content(self, record: Any, name: str, attributes: dict[str, Any]) -> tuple[Any, ...]:
        """(input_text, output_text, reasoning_text, event JSON) of a GenAI content record."""
        body = getattr(record, "body", None)
        # The older per-message events carry the message in the body, the current one in attributes.
        if isinstance(body, Mapping):
            attributes = {**attributes, **body}
        elif body is not None:
            attributes = {**attributes, "content": body}
        attributes.pop("event.name", None)
        if self._capture:
            texts = events_text([SimpleNamespace(name=name, attributes=attributes)])
        else:
            texts = NO_TEXT
            attributes = without_content(attributes)
        if self._redactor is not None:
            attributes = self._redactor.attributes(attributes)
            texts = Texts(*(None if t is None else self._redactor.text(t) for t in texts))
        texts = Texts(*(None if t is None else t[: self._limit] for t in texts))
        event = {"name": name, "time_unix_nano": _time(record), "attributes": attributes}
        return (*texts, to_json(event))

    def _log_row(
        self,
        item: Any,
        record: Any,
        name: str | None,
        attributes: dict[str, Any],
        trace_id: str | None,
        span_id: str | None,
    ) -> tuple[Any, ...]:
        body = getattr(record, "body", None)
        if self._redactor is not None:
            attributes = self._redactor.attributes(attributes)
            body = self._redactor.value(body)
        severity = getattr(record, "severity_number", None)
        scope = getattr(item, "instrumentation_scope", None)
        resource = getattr(item, "resource", None) or getattr(record, "resource", None)
        return (
            trace_id,
            span_id,
            _time(record),
            getattr(record, "observed_timestamp", None),
            getattr(severity, "value", severity),
            getattr(record, "severity_text", None),
            name,
            body if body is None or isinstance(body, str) else to_json(body),
            to_json(attributes) if attributes else None,
            self._mapper.resource_id(resource),
            None if scope is None else scope.name,
            None if scope is None else scope.version,
        )

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass


def _ids(record: Any) -> tuple[str | None, str | None]:
    """The record's trace and span id as stored (hex), None when it was emitted outside a span."""
    trace_id = getattr(record, "trace_id", None) or 0
    span_id = getattr(record, "span_id", None) or 0
    return (f"{trace_id:032x}" if trace_id else None, f"{span_id:016x}" if trace_id and span_id else None)


def _time(record: Any) -> int:
    return getattr(record, "timestamp", None) or getattr(record, "observed_timestamp", None) or time.time_ns()
