"""Read: what the read side returns. Frozen records built from rows, with UTC datetimes and parsed JSON.

Each record keeps the exact integer nanosecond times next to its datetimes (which hold microseconds),
and ``to_dict()`` gives JSON-ready data (ISO-8601 UTC text for times).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

# The values of TraceSession.budget_status, beside SESSION_STATUSES for the read side.
from otel_sqlite_exporter._budget import BUDGET_STATUSES as BUDGET_STATUSES
from otel_sqlite_exporter._exceptions import QueryError

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: What ``TraceEntry.status`` reads: a span still open is running (or interrupted, when its session
#: was), an ended span reads its OpenTelemetry status code in lower case.
SPAN_STATUSES = ("running", "interrupted", "ok", "error", "unset")
#: The values of ``TraceSession.status``.
SESSION_STATUSES = ("running", "completed", "failed", "cancelled", "interrupted")


def from_ns(ns: int | None) -> datetime | None:
    """A Unix-nanosecond time as an aware UTC datetime (to the microsecond)."""
    return None if ns is None else _EPOCH + timedelta(0, 0, ns // 1000)  # positional: faster


def to_ns(value: datetime | str | None, name: str) -> int | None:
    """A datetime (naive means UTC) or ISO-8601 text as Unix nanoseconds; None passes through."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            # Python 3.10's fromisoformat does not read a trailing "Z".
            value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise QueryError(
                f"{name}: {text!r} is not an ISO-8601 time (like 2026-01-31T14:00:00Z)"
            ) from None
    if not isinstance(value, datetime):
        raise QueryError(f"{name}: expected a datetime or ISO-8601 text, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    # Unix nanoseconds fit SQLite's 64-bit integers only from 1677 to 2262: a bound beyond them
    # (datetime.max as "no bound") is clamped, which compares the same against any stored time.
    return max(_INT64_MIN, min(ns, _INT64_MAX))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _loads(text: str | None, empty: Any) -> Any:
    if text is None:
        return empty
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text  # not JSON (written by another tool): the text as it is


def fast_constructor(cls: type) -> Any:
    """A constructor for a frozen, slotted dataclass taking the same arguments as its ``__init__``,
    which sets each field through ``object.__setattr__`` (the price of ``frozen``) and costs about
    three times as much: reading a session builds one record per span."""
    names = [field.name for field in dataclasses.fields(cls)]
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    scope.update({f"_set_{name}": getattr(cls, name).__set__ for name in names})
    body = "".join(f"\n    _set_{name}(self, {name})" for name in names)
    exec(f"def build({', '.join(names)}):\n    self = _new(_cls){body}\n    return self", scope)
    build = scope["build"]
    build.__qualname__ = build.__name__ = f"new_{cls.__name__}"
    return build


class _Record:
    """JSON-ready conversion shared by the records."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data: times as ISO-8601 UTC text, everything else as is."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            out[field.name] = _iso(value) if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True, slots=True)
class TraceSession(_Record):
    """One session: a task of the application, one or more traces, with its rollups.

    ``budget_status`` is where the session stands against the writer's ``TokenBudget``, one of
    ``BUDGET_STATUSES`` ("ok", "warning", "exceeded"; it never goes back), or None when no budget
    tracked it.
    """

    id: str
    task: str | None
    status: str
    started_at: datetime | None
    completed_at: datetime | None
    duration_ms: float | None
    user_id: str | None
    service_name: str | None
    total_events: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_usd: float | None
    error_count: int
    start_time_unix_nano: int | None
    end_time_unix_nano: int | None
    budget_status: str | None = None


# A file written before schema 3 has no budget_status column, and the read side reads such a file
# as it is. Names resolve from the innermost query outward: the inner budget_status is the sessions
# column where there is one, else the NULL of the enclosing subquery. Both are rowid look-ups.
_BUDGET_STATUS = """(SELECT (SELECT budget_status FROM sessions AS b WHERE b.rowid = se.rowid)
        FROM (SELECT NULL AS budget_status FROM sessions AS d WHERE d.rowid = se.rowid))"""

# The columns behind a TraceSession, in field order (FROM sessions AS se).
SESSION_COLUMNS = f"""se.session_id, se.task, se.status, se.start_time_unix_nano, se.end_time_unix_nano,
    se.user_id, se.service_name, se.span_count, se.input_tokens, se.output_tokens,
    se.cache_read_tokens, se.cache_write_tokens, se.reasoning_tokens, se.cost_usd, se.error_count,
    {_BUDGET_STATUS}"""


def session_from_row(row: Sequence[Any]) -> TraceSession:
    (sid, task, status, start, end, user, service, spans, inp, out, cr, cw, rs, cost, errors, budget) = row
    return TraceSession(
        id=sid,
        task=task,
        status=status,
        started_at=from_ns(start),
        completed_at=from_ns(end),
        duration_ms=(end - start) / 1e6 if start is not None and end is not None else None,
        user_id=user,
        service_name=service,
        total_events=spans,
        input_tokens=inp,
        output_tokens=out,
        total_tokens=inp + out,
        cache_read_tokens=cr,
        cache_write_tokens=cw,
        reasoning_tokens=rs,
        cost_usd=cost,
        error_count=errors,
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        budget_status=budget,
    )


@dataclass(frozen=True, slots=True)
class TraceEntry(_Record):
    """One span: a step of the session (an LLM call, a tool call, an agent step, ...).

    Token counts and ``cost_usd`` are the span's own (None when it carries none); ``counted`` says
    whether they count in the rollups (False when a span beneath it reports the same usage).
    """

    id: str
    trace_id: str
    parent_id: str | None
    session_id: str
    type: str
    name: str
    kind: str
    timestamp: datetime
    end_time: datetime | None
    duration_ms: float | None
    status: str
    status_message: str | None
    model: str | None
    provider: str | None
    operation: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: float | None
    input_text: str | None
    output_text: str | None
    #: The model's reasoning (thinking blocks, reasoning summaries), apart from its output.
    reasoning_text: str | None
    #: The provider's response id (``gen_ai.response.id``); spans sharing one recorded the same call.
    response_id: str | None
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    links: list[dict[str, Any]]
    service_name: str | None
    scope_name: str | None
    scope_version: str | None
    is_root: bool
    counted: bool
    start_time_unix_nano: int
    end_time_unix_nano: int | None

    @property
    def total_tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)


# The columns behind a TraceEntry, in field order (FROM spans AS s LEFT JOIN sessions AS se,
# resources AS r). An open span reads "interrupted" once its session was found interrupted.
ENTRY_COLUMNS = """s.span_id, s.trace_id, s.parent_span_id, s.session_id, s.type, s.name, s.kind,
    s.start_time_unix_nano, s.end_time_unix_nano, s.duration_ms,
    CASE WHEN s.end_time_unix_nano IS NOT NULL THEN lower(s.status_code)
         WHEN se.status = 'interrupted' THEN 'interrupted' ELSE 'running' END,
    s.status_message, s.model, s.provider, s.operation, s.input_tokens, s.output_tokens,
    s.cache_read_tokens, s.cache_write_tokens, s.reasoning_tokens, s.cost_usd,
    s.input_text, s.output_text, s.reasoning_text, s.response_id, s.attributes, s.events, s.links,
    r.service_name,
    s.scope_name, s.scope_version, s.is_root, s.has_usage AND NOT s.usage_below"""
ENTRY_JOINS = """LEFT JOIN sessions AS se ON se.session_id = s.session_id
    LEFT JOIN resources AS r ON r.resource_id = s.resource_id"""
ENTRY_FROM = f"spans AS s {ENTRY_JOINS}"


_new_entry = fast_constructor(TraceEntry)


def entry_from_row(row: Sequence[Any]) -> TraceEntry:
    (span_id, trace_id, parent, session_id, type_, name, kind, start, end, duration, status, message,
     model, provider, operation, inp, out, cr, cw, rs, cost, in_text, out_text, reasoning,
     response_id, attributes, events, links, service, scope, scope_version, is_root,
     counted) = row  # fmt: skip
    return _new_entry(
        id=span_id,
        trace_id=trace_id,
        parent_id=parent,
        session_id=session_id,
        type=type_,
        name=name,
        kind=kind,
        timestamp=from_ns(start),  # type: ignore[arg-type]
        end_time=from_ns(end),
        duration_ms=duration,
        status=status,
        status_message=message,
        model=model,
        provider=provider,
        operation=operation,
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=cr,
        cache_write_tokens=cw,
        reasoning_tokens=rs,
        cost_usd=cost,
        input_text=in_text,
        output_text=out_text,
        reasoning_text=reasoning,
        response_id=response_id,
        attributes=_loads(attributes, {}),
        events=_loads(events, []),
        links=_loads(links, []),
        service_name=service,
        scope_name=scope,
        scope_version=scope_version,
        is_root=bool(is_root),
        counted=bool(counted),
        start_time_unix_nano=start,
        end_time_unix_nano=end,
    )


@dataclass(frozen=True, slots=True)
class LogEntry(_Record):
    """One log record, linked to the span it was emitted in (when it was emitted inside one).

    ``body`` is the record's body as stored: a text body as it is, any other body as JSON text.
    """

    id: int
    trace_id: str | None
    span_id: str | None
    session_id: str | None
    timestamp: datetime
    severity_number: int | None
    severity: str | None
    event_name: str | None
    body: str | None
    attributes: dict[str, Any]
    service_name: str | None
    scope_name: str | None
    time_unix_nano: int


# The columns behind a LogEntry, in field order (FROM logs AS l LEFT JOIN traces AS t, resources AS r).
LOG_COLUMNS = """l.log_id, l.trace_id, l.span_id, t.session_id, l.time_unix_nano, l.severity_number,
    l.severity_text, l.event_name, l.body, l.attributes, r.service_name, l.scope_name, l.time_unix_nano"""
LOG_FROM = """logs AS l LEFT JOIN traces AS t ON t.trace_id = l.trace_id
    LEFT JOIN resources AS r ON r.resource_id = l.resource_id"""


def log_from_row(row: Sequence[Any]) -> LogEntry:
    (log_id, trace_id, span_id, session_id, time, severity_number, severity, event_name, body,
     attributes, service, scope, time_ns) = row  # fmt: skip
    return LogEntry(
        id=log_id,
        trace_id=trace_id,
        span_id=span_id,
        session_id=session_id,
        timestamp=from_ns(time),  # type: ignore[arg-type]
        severity_number=severity_number,
        severity=severity,
        event_name=event_name,
        body=body,
        attributes=_loads(attributes, {}),
        service_name=service,
        scope_name=scope,
        time_unix_nano=time_ns,
    )


@dataclass(frozen=True, slots=True)
class SearchHit(_Record):
    """A span matching a full-text search; lower ``score`` is a better match (SQLite's bm25)."""

    entry: TraceEntry
    score: float
    snippet: str

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry.to_dict(), "score": self.score, "snippet": self.snippet}


@dataclass(frozen=True, slots=True)
class ModelUsage(_Record):
    """Calls, tokens and cost of one model (counted once, as in the rollups)."""

    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float | None


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """What happened in a session at a glance."""

    session: TraceSession
    duration_ms: float | None
    trace_count: int
    spans_by_type: dict[str, int]
    models: list[ModelUsage]
    errors: list[TraceEntry]
    slowest: list[TraceEntry]

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session.to_dict(),
            "duration_ms": self.duration_ms,
            "trace_count": self.trace_count,
            "spans_by_type": dict(self.spans_by_type),
            "models": [m.to_dict() for m in self.models],
            "errors": [e.to_dict() for e in self.errors],
            "slowest": [e.to_dict() for e in self.slowest],
        }
