"""TraceStore, the read side: opening files safely, every query and filter, trees and rollups, search,
renderings, export (JSON and OTLP/JSON), stats, hostile input, reading beside a live writer, follow().

Every file here is written by the real SDK through ``SQLiteSpanProcessor`` (or the exporter), then
read back the way an application or the CLI would read it.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from helpers import Tracing, query, sha256, start_tracing, write_foreign_database
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from otel_sqlite_exporter import (
    SCHEMA_VERSION,
    NotATraceFileError,
    NotFoundError,
    Options,
    QueryError,
    SchemaVersionError,
    SQLiteSpanExporter,
    TraceFileError,
    TraceStore,
    _render,
    session,
)
from otel_sqlite_exporter._schema import MIGRATIONS

UTC = timezone.utc
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MS = 1_000_000
LONG_PROMPT = "summarise the needle report " + "lorem ipsum dolor sit amet " * 1000  # ~27,000 chars
SERVICE = "shop-api"


def ns(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def at(minutes: int = 0, ms: int = 0) -> int:
    """T0 plus an offset, in Unix nanoseconds."""
    return ns(T0) + minutes * 60 * 1_000_000_000 + ms * MS


def usage(inp: int, out: int, cost: float | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"gen_ai.usage.input_tokens": inp, "gen_ai.usage.output_tokens": out}
    if cost is not None:
        attrs["llm.cost.total"] = cost
    return attrs


def chat(model: str, inp: int, out: int, cost: float, **extra: Any) -> dict[str, Any]:
    return {"gen_ai.operation.name": "chat", "gen_ai.request.model": model, **usage(inp, out, cost), **extra}


def sid(span: trace.Span) -> str:
    return trace.format_span_id(span.get_span_context().span_id)


def tid(span: trace.Span) -> str:
    return trace.format_trace_id(span.get_span_context().trace_id)


def names(entries: Any) -> list[str]:
    return [e.name for e in entries]


def open_writer(path: Path, **options: Any) -> Tracing:
    return start_tracing(
        path, scope=("shop", "1.2.3"), resource={"service.name": SERVICE}, schedule_delay_millis=10, **options
    )


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Tracing]:
    w = open_writer(tmp_path / "traces.db")
    yield w
    w.close()


# --- the shared file: four sessions, written once and only read afterwards -------------------------------


@dataclass
class Shop:
    path: Path
    ask: str  # a session() block: two traces, an agent echoing its model call, a tool error, a link
    trace1: str
    trace2: str
    ids: dict[str, str]  # span name -> span id (names are unique within the ask session)
    explicit: dict[str, str]  # span name -> span id in the timed sessions


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    path = tmp_path_factory.mktemp("shop") / "traces.db"
    w = open_writer(path)
    t = w.tracer
    ids: dict[str, str] = {}
    explicit: dict[str, str] = {}
    # Three sessions at fixed times in the past (no session() block: spans name their session).
    root = t.start_span(
        "nightly batch",
        start_time=at(0),
        attributes={"session.id": "s-old", "user.id": "carol", "openinference.span.kind": "CHAIN"},
    )
    child = t.start_span(
        "search docs",
        context=trace.set_span_in_context(root),
        start_time=at(0, 100),
        attributes={"openinference.span.kind": "RETRIEVER"},
    )
    child.end(end_time=at(0, 1600))
    root.end(end_time=at(0, 2000))
    explicit.update({"nightly batch": sid(root), "search docs": sid(child)})

    root = t.start_span("broken", start_time=at(60), attributes={"session.id": "s-mid", "user.id": "alice"})
    child = t.start_span(
        "chat gpt-4o",
        context=trace.set_span_in_context(root),
        start_time=at(60, 10),
        attributes=chat("gpt-4o", 7, 3, 0.0005),
    )
    child.end(end_time=at(60, 510))
    root.set_status(Status(StatusCode.ERROR, "boom"))
    root.end(end_time=at(60, 600))
    explicit.update({"broken": sid(root), "mid chat": sid(child)})

    root = t.start_span("long job", start_time=at(180), attributes={"session.id": "s-run", "user.id": "bob"})
    child = t.start_span("step 1", context=trace.set_span_in_context(root), start_time=at(180, 5))
    child.end(end_time=at(180, 305))
    explicit.update({"long job": sid(root), "step 1": sid(child)})  # "long job" never ends

    # The newest session, recorded live.
    with session(task="refund question", user_id="alice") as ask:
        with t.start_as_current_span(
            "invoke_agent support",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "gpt-4o"}
            | usage(100, 20, 0.002),  # the same usage as its model call beneath: counted once
        ) as agent:
            with t.start_as_current_span(
                "chat gpt-4o",
                kind=SpanKind.CLIENT,
                attributes=chat(
                    "gpt-4o",
                    100,
                    20,
                    0.002,
                    **{
                        "gen_ai.provider.name": "openai",
                        "input.value": "What is the refund policy for damaged items?",
                        "output.value": "Damaged items are refunded within 30 days.",
                    },
                ),
            ) as llm:
                llm.set_status(Status(StatusCode.OK))
            with t.start_as_current_span(
                "execute_tool lookup_order",
                attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_order"},
            ) as tool:
                tool.add_event("retry", {"attempt": 2, "backends": ["eu", "us"]})
                tool.set_status(Status(StatusCode.ERROR, "order 42 not found"))
            with t.start_as_current_span(
                "chat gpt-4o-mini",
                kind=SpanKind.CLIENT,
                attributes=chat("gpt-4o-mini", 30, 5, 0.0001, **{"input.value": LONG_PROMPT}),
            ) as mini:
                pass
        with t.start_as_current_span("followup", links=[trace.Link(llm.get_span_context())]) as followup:
            with t.start_as_current_span(
                "chat claude-3-5-sonnet",
                kind=SpanKind.CLIENT,
                attributes=chat("claude-3-5-sonnet", 50, 10, 0.01),
            ) as claude:
                pass
    for span in (agent, llm, tool, mini, followup, claude):
        ids[span.name] = sid(span)
    w.flush()
    w.close()
    return Shop(path, ask.session_id, tid(agent), tid(followup), ids, explicit)


@pytest.fixture
def store(shop: Shop) -> Iterator[TraceStore]:
    with TraceStore(shop.path) as s:
        yield s


# --- opening a file ----------------------------------------------------------------------------------------


def test_a_missing_file_raises_naming_it_and_nothing_is_created(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "nope.db"
    with pytest.raises(TraceFileError) as info:
        TraceStore(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    with pytest.raises(TraceFileError, match="no such trace file"):
        TraceStore(path, readonly=False)  # writing opens only an existing file too
    assert not path.parent.exists()


def test_an_empty_file_is_refused_and_stays_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(TraceFileError, match="empty"):
        TraceStore(path)
    assert path.read_bytes() == b""


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"my notes, not a database\n" * 100)
    before = sha256(path)
    with pytest.raises(NotATraceFileError) as info:
        TraceStore(path)
    assert str(path) in str(info.value)
    assert sha256(path) == before


@pytest.mark.parametrize("user_version", [0, 5])
def test_another_applications_sqlite_file_is_refused_untouched(tmp_path: Path, user_version: int) -> None:
    path = tmp_path / "app.db"
    write_foreign_database(path, user_version)
    before = sha256(path)
    with pytest.raises(NotATraceFileError, match="another application"):
        TraceStore(path)
    with pytest.raises(NotATraceFileError):
        TraceStore(path, readonly=False)
    assert sha256(path) == before
    assert query(path, "SELECT name FROM customers") == [("ada",)]


def test_a_newer_schema_version_is_refused_untouched(tmp_path: Path) -> None:
    w = open_writer(tmp_path / "future.db")
    with w.tracer.start_as_current_span("from the future"):
        pass
    w.close()
    conn = sqlite3.connect(w.path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    assert query(w.path, "SELECT count(*) FROM schema_migrations")[0][0] >= 1
    before = sha256(w.path)
    for readonly in (True, False):
        with pytest.raises(SchemaVersionError) as info:
            TraceStore(w.path, readonly=readonly)
        assert str(w.path) in str(info.value)
        assert (info.value.found, info.value.supported) == (99, SCHEMA_VERSION)
    assert sha256(w.path) == before


def test_reading_never_modifies_the_file(shop: Shop) -> None:
    before = sha256(shop.path)
    with TraceStore(shop.path) as s:
        assert s.readonly
        sessions = s.get_sessions()
        assert len(sessions) == 4
        for found in sessions:
            s.get_session(found.id)
            s.session_tree(found.id)
            s.session_timeline(found.id)
            s.session_summary(found.id)
            s.format_tree(found.id)
            s.format_timeline(found.id)
            s.export_session(found.id)
            s.export_otlp_json(found.id)
        for entry in s.get_traces(limit=1000):
            s.get_span(entry.id, entry.trace_id)
            s.trace_tree(entry.trace_id)
        s.search("refund")
        s.search("refund OR needle", raw=True)
        s.stats()
        s.get_traces(status="running", search_text="refund")
    assert sha256(shop.path) == before


def _v1_file(path: Path) -> None:
    """A file as schema version 1 left it, with one session and one span."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    for statement in MIGRATIONS[0].statements:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO schema_migrations VALUES (1, ?, '2025-01-01T00:00:00+00:00')", (MIGRATIONS[0].name,)
    )
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO sessions (session_id, status, start_time_unix_nano, end_time_unix_nano, span_count) "
        "VALUES ('legacy', 'completed', ?, ?, 1)",
        (at(0), at(0, 250)),
    )
    conn.execute(
        "INSERT INTO spans (trace_id, span_id, session_id, name, kind, type, start_time_unix_nano, "
        "end_time_unix_nano, duration_ms, is_root) "
        "VALUES (?, ?, 'legacy', 'old step', 'internal', 'span', ?, ?, 250.0, 1)",
        ("ab" * 16, "cd" * 8, at(0), at(0, 250)),
    )
    conn.close()


def test_an_older_file_is_read_as_it_is_and_readonly_false_migrates_it(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _v1_file(path)
    before = sha256(path)
    with TraceStore(path) as s:
        assert s.get_session("legacy").duration_ms == 250.0
        assert [h.entry.name for h in s.search("old step")] == ["old step"]
        assert s.get_span("cd" * 8).name == "old step"
        assert s.stats().schema_version == 1
    assert sha256(path) == before
    assert query(path, "PRAGMA user_version") == [(1,)]

    with TraceStore(path, readonly=False) as s:
        assert not s.readonly
        assert s.stats().schema_version == SCHEMA_VERSION
        assert names(s.get_traces()) == ["old step"]
    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert [v for (v,) in query(path, "SELECT version FROM schema_migrations ORDER BY 1")] == list(
        range(1, SCHEMA_VERSION + 1)
    )


# --- sessions --------------------------------------------------------------------------------------------


def ids_of(sessions: Any) -> list[str]:
    return [s.id for s in sessions]


def test_sessions_newest_first_with_paging(shop: Shop, store: TraceStore) -> None:
    everything = ids_of(store.get_sessions())
    assert everything == [shop.ask, "s-run", "s-mid", "s-old"]
    assert ids_of(store.get_sessions(limit=2)) == [shop.ask, "s-run"]
    assert ids_of(store.get_sessions(limit=2, offset=2)) == ["s-mid", "s-old"]
    assert ids_of(store.get_sessions(limit=10, offset=3)) == ["s-old"]
    assert store.get_sessions(offset=4) == []
    assert store.get_sessions(limit=0) == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("running", ["s-run"]),
        ("failed", ["s-mid"]),
        ("completed", ["ask", "s-old"]),
        ("COMPLETED", ["ask", "s-old"]),
        ("interrupted", []),
        ("cancelled", []),
    ],
)
def test_sessions_by_status(shop: Shop, store: TraceStore, status: str, expected: list[str]) -> None:
    assert ids_of(store.get_sessions(status=status)) == [shop.ask if e == "ask" else e for e in expected]


def test_sessions_by_start_time_user_and_combined(shop: Shop, store: TraceStore) -> None:
    hour = timedelta(hours=1)
    assert ids_of(store.get_sessions(since=T0 + hour)) == [shop.ask, "s-run", "s-mid"]
    # until is exclusive: s-mid starts exactly at T0 + 1h
    assert ids_of(store.get_sessions(until=T0 + hour)) == ["s-old"]
    assert ids_of(store.get_sessions(since="2025-03-01T12:00:00Z", until="2025-03-01T13:00:00.000001Z")) == [
        "s-mid",
        "s-old",
    ]
    # a naive datetime is UTC; an aware one in another zone means the same instant
    assert ids_of(store.get_sessions(since=(T0 + hour).replace(tzinfo=None), until=T0 + 2 * hour)) == [
        "s-mid"
    ]
    paris = timezone(timedelta(hours=1))
    assert ids_of(
        store.get_sessions(since=datetime(2025, 3, 1, 14, 0, tzinfo=paris), until=T0 + 2 * hour)
    ) == ["s-mid"]
    assert ids_of(store.get_sessions(user_id="alice")) == [shop.ask, "s-mid"]
    assert ids_of(store.get_sessions(user_id="alice", status="failed")) == ["s-mid"]
    assert ids_of(store.get_sessions(user_id="alice", since=T0 + 2 * hour)) == [shop.ask]
    assert ids_of(store.get_sessions(user_id="carol", status="completed", until=T0 + hour)) == ["s-old"]
    assert store.get_sessions(user_id="carol", status="failed") == []
    assert store.get_sessions(user_id="nobody") == []


def test_bounds_beyond_what_nanoseconds_can_hold_mean_no_bound(shop: Shop, store: TraceStore) -> None:
    everything = ids_of(store.get_sessions())
    assert ids_of(store.get_sessions(since=datetime.min, until=datetime.max, limit=10**30)) == everything
    assert store.get_sessions(since=datetime.max) == [] and store.get_sessions(until=datetime.min) == []
    spans = store.get_traces(start_time="1000-01-01T00:00:00Z", end_time="9999-12-31T23:59:59Z", limit=10**30)
    assert len(spans) == 12
    assert len(store.get_traces(offset=10**30)) == 0
    assert len(store.search("refund", limit=10**30)) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": "done"},
        {"status": 3},
        {"since": "yesterday"},
        {"until": "2025-13-01"},
        {"since": 12345},
        {"limit": -1},
        {"offset": -5},
        {"limit": "10"},
        {"limit": True},
    ],
)
def test_sessions_bad_arguments_raise_query_error(store: TraceStore, kwargs: dict[str, Any]) -> None:
    with pytest.raises(QueryError):
        store.get_sessions(**kwargs)


def test_session_records_carry_every_field(shop: Shop, store: TraceStore) -> None:
    old = store.get_session("s-old")
    assert old is not None
    assert (old.id, old.task, old.status, old.user_id, old.service_name) == (
        "s-old",
        None,
        "completed",
        "carol",
        SERVICE,
    )
    assert old.started_at == T0
    assert old.completed_at == T0 + timedelta(seconds=2)
    assert old.started_at.tzinfo is not None and old.started_at.utcoffset() == timedelta(0)
    assert old.duration_ms == 2000.0
    assert (old.total_events, old.input_tokens, old.output_tokens, old.total_tokens) == (2, 0, 0, 0)
    assert (old.cost_usd, old.error_count) == (None, 0)

    mid = store.get_session("s-mid")
    assert (mid.status, mid.error_count, mid.input_tokens, mid.output_tokens, mid.total_tokens) == (
        "failed",
        1,
        7,
        3,
        10,
    )
    assert mid.cost_usd == pytest.approx(0.0005)
    assert mid.duration_ms == 600.0

    run = store.get_session("s-run")
    assert (run.status, run.completed_at, run.duration_ms, run.total_events) == ("running", None, None, 2)

    ask = store.get_session(shop.ask)
    assert (ask.task, ask.user_id, ask.status, ask.service_name) == (
        "refund question",
        "alice",
        "completed",
        SERVICE,
    )
    assert ask.started_at.utcoffset() == timedelta(0) and ask.completed_at.utcoffset() == timedelta(0)
    assert ask.started_at <= ask.completed_at
    assert ask.duration_ms == (ask.end_time_unix_nano - ask.start_time_unix_nano) / 1e6
    # the agent echoes its model call's 100/20: counted once
    assert (ask.total_events, ask.input_tokens, ask.output_tokens, ask.total_tokens, ask.error_count) == (
        6,
        180,
        35,
        215,
        1,
    )
    assert ask.cost_usd == pytest.approx(0.0121)
    spans = store.session_timeline(shop.ask)
    assert ask.start_time_unix_nano <= min(e.start_time_unix_nano for e in spans)
    assert ask.end_time_unix_nano >= max(e.end_time_unix_nano for e in spans)
    assert json.loads(json.dumps(ask.to_dict()))["started_at"].endswith("Z")


def test_get_session_of_an_unknown_id_is_none(store: TraceStore) -> None:
    assert store.get_session("no such session") is None
    assert store.get_session("") is None


# --- spans -----------------------------------------------------------------------------------------------

ASK_ORDER = [
    "invoke_agent support",
    "chat gpt-4o",
    "execute_tool lookup_order",
    "chat gpt-4o-mini",
    "followup",
    "chat claude-3-5-sonnet",
]
TIMED_ORDER = ["nightly batch", "search docs", "broken", "chat gpt-4o", "long job", "step 1"]


def test_spans_one_entry_each_in_start_order_with_paging(shop: Shop, store: TraceStore) -> None:
    everything = store.get_traces(limit=1000)
    assert names(everything) == TIMED_ORDER + ASK_ORDER
    starts = [e.start_time_unix_nano for e in everything]
    assert starts == sorted(starts)
    assert len({(e.trace_id, e.id) for e in everything}) == 12
    assert len(store.get_traces()) == 12
    page = store.get_traces(limit=5, offset=3)
    assert [e.id for e in page] == [e.id for e in everything[3:8]]
    assert store.get_traces(limit=5, offset=12) == []


def test_spans_by_each_filter(shop: Shop, store: TraceStore) -> None:
    assert names(store.get_traces(shop.ask)) == ASK_ORDER
    assert names(store.get_traces(session_id="s-old")) == ["nightly batch", "search docs"]
    assert names(store.get_traces(event_type="llm")) == [
        "chat gpt-4o",
        "chat gpt-4o",
        "chat gpt-4o-mini",
        "chat claude-3-5-sonnet",
    ]
    assert names(store.get_traces(event_type="agent")) == ["invoke_agent support"]
    assert names(store.get_traces(event_type="tool")) == ["execute_tool lookup_order"]
    assert names(store.get_traces(event_type="retrieval")) == ["search docs"]
    assert names(store.get_traces(event_type="chain")) == ["nightly batch"]
    assert names(store.get_traces(event_type="span")) == ["broken", "long job", "step 1", "followup"]
    assert store.get_traces(event_type="embedding") == []
    # start times: [start_time, end_time)
    assert names(store.get_traces(start_time=T0 + timedelta(hours=1), end_time="2025-03-01T15:00:00Z")) == [
        "broken",
        "chat gpt-4o",
    ]
    assert names(store.get_traces(start_time=T0, end_time=T0 + timedelta(milliseconds=100))) == [
        "nightly batch"
    ]
    assert names(store.get_traces(search_text="refund damaged")) == ["chat gpt-4o"]
    assert names(store.get_traces(trace_id=shop.trace2)) == ["followup", "chat claude-3-5-sonnet"]
    assert [e.session_id for e in store.get_traces(name="chat gpt-4o")] == ["s-mid", shop.ask]
    assert names(store.get_traces(model="claude-3-5-sonnet")) == ["chat claude-3-5-sonnet"]
    assert names(store.get_traces(model="gpt-4o")) == ["chat gpt-4o", "invoke_agent support", "chat gpt-4o"]
    assert names(store.get_traces(min_duration_ms=1000)) == ["nightly batch", "search docs"]
    assert names(store.get_traces(min_duration_ms=500, end_time=T0 + timedelta(hours=2))) == [
        "nightly batch",
        "search docs",
        "broken",
        "chat gpt-4o",  # exactly 500 ms: the bound is inclusive
    ]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("error", ["broken", "execute_tool lookup_order"]),
        ("running", ["long job"]),
        ("ok", ["chat gpt-4o"]),
        ("interrupted", []),
    ],
)
def test_spans_by_status(store: TraceStore, status: str, expected: list[str]) -> None:
    assert names(store.get_traces(status=status)) == expected


def test_span_statuses_partition_the_spans(store: TraceStore) -> None:
    unset = store.get_traces(status="unset")
    assert len(unset) == 12 - 2 - 1 - 1
    assert {e.status for e in unset} == {"unset"}
    assert all(e.end_time is not None for e in unset)


def test_spans_by_combined_filters(shop: Shop, store: TraceStore) -> None:
    assert names(store.get_traces(session_id=shop.ask, name="chat gpt-4o")) == ["chat gpt-4o"]
    assert names(store.get_traces(shop.ask, "llm", model="gpt-4o-mini")) == ["chat gpt-4o-mini"]
    assert names(store.get_traces(session_id=shop.ask, status="error", event_type="tool")) == [
        "execute_tool lookup_order"
    ]
    assert store.get_traces(session_id="s-mid", search_text="refund") == []
    assert names(store.get_traces(event_type="llm", model="gpt-4o", end_time=T0 + timedelta(days=1))) == [
        "chat gpt-4o"
    ]
    assert store.get_traces(session_id="s-old", status="error") == []
    assert names(store.get_traces(trace_id=shop.trace1, event_type="llm", limit=1, offset=1)) == [
        "chat gpt-4o-mini"
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event_type": "robot"},
        {"status": "finished"},
        {"start_time": "noon"},
        {"end_time": "2025-02-30T00:00:00Z"},
        {"min_duration_ms": "5"},
        {"min_duration_ms": True},
        {"limit": -1},
        {"offset": 1.5},
    ],
)
def test_spans_bad_arguments_raise_query_error(store: TraceStore, kwargs: dict[str, Any]) -> None:
    with pytest.raises(QueryError):
        store.get_traces(**kwargs)


def test_span_entries_carry_every_field(shop: Shop, store: TraceStore) -> None:
    by_name = {e.name: e for e in store.get_traces(shop.ask)}
    llm, agent = by_name["chat gpt-4o"], by_name["invoke_agent support"]
    assert (llm.id, llm.trace_id, llm.parent_id, llm.session_id) == (
        shop.ids["chat gpt-4o"],
        shop.trace1,
        agent.id,
        shop.ask,
    )
    assert (llm.type, llm.kind, llm.model, llm.provider, llm.operation) == (
        "llm",
        "client",
        "gpt-4o",
        "openai",
        "chat",
    )
    assert (llm.input_tokens, llm.output_tokens, llm.total_tokens) == (100, 20, 120)
    assert llm.cost_usd == pytest.approx(0.002)
    assert llm.input_text == "What is the refund policy for damaged items?"
    assert llm.output_text == "Damaged items are refunded within 30 days."
    assert llm.timestamp.utcoffset() == timedelta(0)
    assert llm.timestamp <= llm.end_time
    assert llm.duration_ms == (llm.end_time_unix_nano - llm.start_time_unix_nano) / 1e6
    assert (llm.status, llm.status_message, llm.is_root, llm.counted) == ("ok", None, False, True)
    assert (llm.service_name, llm.scope_name, llm.scope_version) == (SERVICE, "shop", "1.2.3")
    assert llm.attributes["gen_ai.usage.input_tokens"] == 100
    assert llm.attributes["session.id"] == shop.ask and llm.attributes["user.id"] == "alice"
    # the agent repeats its model call's usage: it keeps its numbers but does not count
    assert (agent.type, agent.kind, agent.is_root, agent.parent_id) == ("agent", "internal", True, None)
    assert (agent.input_tokens, agent.counted) == (100, False)
    tool = by_name["execute_tool lookup_order"]
    assert (tool.type, tool.status, tool.status_message) == ("tool", "error", "order 42 not found")
    assert (tool.input_tokens, tool.total_tokens, tool.cost_usd, tool.counted) == (None, None, None, False)
    followup = by_name["followup"]
    assert followup.links == [{"trace_id": shop.trace1, "span_id": shop.ids["chat gpt-4o"], "attributes": {}}]

    old = store.get_span(shop.explicit["search docs"])
    assert (old.timestamp, old.end_time, old.duration_ms) == (
        T0 + timedelta(milliseconds=100),
        T0 + timedelta(milliseconds=1600),
        1500.0,
    )
    assert (old.start_time_unix_nano, old.end_time_unix_nano) == (at(0, 100), at(0, 1600))
    entry_json = json.loads(json.dumps(llm.to_dict()))
    assert entry_json["timestamp"].endswith("Z") and entry_json["id"] == llm.id


def test_a_running_span_has_no_end_and_reads_running(shop: Shop, store: TraceStore) -> None:
    running = store.get_span(shop.explicit["long job"])
    assert (
        running.name,
        running.end_time,
        running.end_time_unix_nano,
        running.duration_ms,
        running.status,
    ) == (
        "long job",
        None,
        None,
        None,
        "running",
    )
    assert running.timestamp == T0 + timedelta(hours=3)


def test_get_span_returns_everything_in_full(shop: Shop, store: TraceStore) -> None:
    mini = store.get_span(shop.ids["chat gpt-4o-mini"])
    assert mini is not None and mini.name == "chat gpt-4o-mini"
    assert len(LONG_PROMPT) > 4096
    assert mini.attributes["input.value"] == LONG_PROMPT  # attributes keep everything
    limit = Options().max_content_length
    assert mini.input_text == LONG_PROMPT[:limit]  # the text column is cut to max_content_length
    assert store.get_span(shop.ids["chat gpt-4o-mini"], trace_id=shop.trace1).id == mini.id
    assert store.get_span(shop.ids["chat gpt-4o-mini"], trace_id=shop.trace2) is None
    assert store.get_span("0000000000000000") is None


def test_the_text_cut_follows_max_content_length(tmp_path: Path) -> None:
    w = open_writer(tmp_path / "short.db", max_content_length=10)
    with w.tracer.start_as_current_span("step", attributes={"input.value": "0123456789abcdef"}) as span:
        pass
    w.close()
    with TraceStore(w.path) as s:
        entry = s.get_span(sid(span))
    assert entry.input_text == "0123456789"
    assert entry.attributes["input.value"] == "0123456789abcdef"


def test_timeline_is_every_span_in_start_order(shop: Shop, store: TraceStore) -> None:
    timeline = store.session_timeline(shop.ask)
    assert names(timeline) == ASK_ORDER
    assert [e.id for e in timeline] == [shop.ids[n] for n in ASK_ORDER]
    assert names(store.session_timeline("s-run")) == ["long job", "step 1"]


# --- trees -----------------------------------------------------------------------------------------------


def rollup(node: Any) -> tuple[int, int, int, float | None, int]:
    cost = None if node.cost_usd is None else round(node.cost_usd, 10)
    return (node.input_tokens, node.output_tokens, node.total_tokens, cost, node.error_count)


def test_session_tree_structure_and_rollups(shop: Shop, store: TraceStore) -> None:
    tree = store.session_tree(shop.ask)
    assert tree.session == store.get_session(shop.ask)
    assert [t.trace_id for t in tree.traces] == [shop.trace1, shop.trace2]
    first, second = tree.traces
    assert [r.entry.name for r in first.roots] == ["invoke_agent support"]
    agent = first.roots[0]
    assert [c.entry.name for c in agent.children] == [
        "chat gpt-4o",
        "execute_tool lookup_order",
        "chat gpt-4o-mini",
    ]
    llm, tool, mini = agent.children
    assert all(not c.children and not c.orphan for c in agent.children)
    assert not agent.orphan
    # leaves: their own usage; the agent: its subtree, without its own echo of the model call
    assert rollup(llm) == (100, 20, 120, 0.002, 0)
    assert rollup(tool) == (0, 0, 0, None, 1)
    assert rollup(mini) == (30, 5, 35, 0.0001, 0)
    assert rollup(agent) == (130, 25, 155, 0.0021, 1)
    assert agent.span_count == 4
    assert rollup(first) == rollup(agent) and first.span_count == 4
    assert [r.entry.name for r in second.roots] == ["followup"]
    assert [c.entry.name for c in second.roots[0].children] == ["chat claude-3-5-sonnet"]
    assert rollup(second) == (50, 10, 60, 0.01, 0)
    # the tree's totals are the session's totals as the sessions table holds them
    row = query(
        shop.path,
        "SELECT input_tokens, output_tokens, cost_usd, error_count, span_count FROM sessions "
        "WHERE session_id = ?",
        (shop.ask,),
    )[0]
    assert (
        (tree.input_tokens, tree.output_tokens, tree.error_count) == (row[0], row[1], row[3]) == (180, 35, 1)
    )
    assert tree.cost_usd == pytest.approx(row[2]) and tree.total_tokens == 215
    assert sum(t.span_count for t in tree.traces) == row[4] == 6
    # and the sum over the counted spans
    counted = [e for e in store.session_timeline(shop.ask) if e.counted]
    assert sum(e.input_tokens for e in counted) == tree.input_tokens


def test_tree_walk_find_and_links(shop: Shop, store: TraceStore) -> None:
    tree = store.session_tree(shop.ask)
    walked = [(trace.trace_id, depth, node.entry.name) for trace, depth, node in tree.walk()]
    assert walked == [
        (shop.trace1, 0, "invoke_agent support"),
        (shop.trace1, 1, "chat gpt-4o"),
        (shop.trace1, 1, "execute_tool lookup_order"),
        (shop.trace1, 1, "chat gpt-4o-mini"),
        (shop.trace2, 0, "followup"),
        (shop.trace2, 1, "chat claude-3-5-sonnet"),
    ]
    llm = tree.find(shop.trace1, shop.ids["chat gpt-4o"])
    assert llm is tree.traces[0].roots[0].children[0]
    followup = tree.find(shop.trace2, shop.ids["followup"])
    assert followup.linked == [llm]  # across traces of the session
    assert llm.linked == []
    assert tree.find(shop.trace2, shop.ids["chat gpt-4o"]) is None
    assert "children=0" in repr(llm)


def test_trace_tree_is_one_trace(shop: Shop, store: TraceStore) -> None:
    node = store.trace_tree(shop.trace1)
    assert node.trace_id == shop.trace1
    assert [(d, n.entry.name) for d, n in node.walk()] == [
        (0, "invoke_agent support"),
        (1, "chat gpt-4o"),
        (1, "execute_tool lookup_order"),
        (1, "chat gpt-4o-mini"),
    ]
    assert rollup(node) == (130, 25, 155, 0.0021, 1)
    running = store.trace_tree(store.get_span(shop.explicit["long job"]).trace_id)
    assert [(n.entry.name, n.entry.status) for _, n in running.walk()] == [
        ("long job", "running"),
        ("step 1", "unset"),
    ]


def test_children_arriving_before_parents_and_parents_that_never_arrive(tmp_path: Path) -> None:
    # The exporter writes spans as they end, so a child is in the file before its parent.
    path = tmp_path / "traces.db"
    exporter = SQLiteSpanExporter(path)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("agents")
    try:
        agent = tracer.start_span(
            "agent",
            attributes={"session.id": "ooo", "gen_ai.operation.name": "invoke_agent"} | usage(40, 8, 0.004),
        )
        llm = tracer.start_span(
            "llm call",
            context=trace.set_span_in_context(agent),
            attributes=chat("m", 40, 8, 0.004, **{"session.id": "ooo"}),  # as session() stamps every span
        )
        llm.end()
        with TraceStore(path) as s:
            tree = s.session_tree("ooo")
            assert [(r.entry.name, r.orphan) for r in tree.traces[0].roots] == [("llm call", True)]
            assert rollup(tree) == (40, 8, 48, 0.004, 0)

            agent.end()
            ghost = NonRecordingSpan(
                SpanContext(
                    trace_id=agent.get_span_context().trace_id,
                    span_id=0xDEAD0000BEEF,
                    is_remote=False,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                )
            )
            stray = tracer.start_span(
                "stray", context=trace.set_span_in_context(ghost), attributes=usage(1, 1)
            )
            stray.end()

            tree = s.session_tree("ooo")
            (only,) = tree.traces
            assert [(r.entry.name, r.orphan) for r in only.roots] == [("agent", False), ("stray", True)]
            agent_node, stray_node = only.roots
            assert [(c.entry.name, c.orphan) for c in agent_node.children] == [("llm call", False)]
            assert stray_node.entry.parent_id == "0000dead0000beef"
            # the agent's echo of its model call is not counted a second time
            assert rollup(agent_node) == (40, 8, 48, 0.004, 0)
            assert rollup(tree) == (41, 9, 50, 0.004, 0)
            session = s.get_session("ooo")
            assert (session.input_tokens, session.output_tokens, session.total_events) == (41, 9, 3)
            assert session.cost_usd == pytest.approx(tree.cost_usd)
            assert [(d, n.entry.name) for d, n in s.trace_tree(tid(agent)).walk()] == [
                (0, "agent"),
                (1, "llm call"),
                (0, "stray"),
            ]
    finally:
        provider.shutdown()


def test_a_10000_deep_chain_builds_walks_renders_and_exports(tmp_path: Path) -> None:
    depth = 10_000
    assert sys.getrecursionlimit() < depth  # so anything recursive would fail here
    w = open_writer(tmp_path / "deep.db")
    spans = []
    context = None
    with session(task="deep") as deep:
        for level in range(depth):
            attrs = usage(7, 3) if level == depth - 1 else None
            span = w.tracer.start_span(f"level {level}", context=context, attributes=attrs)
            spans.append(span)
            context = trace.set_span_in_context(span)
        for span in reversed(spans):
            span.end()
    w.close()
    with TraceStore(w.path) as s:
        tree = s.session_tree(deep.session_id)
        (chain,) = tree.traces
        assert len(chain.roots) == 1 and chain.span_count == depth
        walked = list(tree.walk())
        assert [(d, n.entry.name) for _, d, n in walked] == [(i, f"level {i}") for i in range(depth)]
        assert all(n.span_count == depth - d for _, d, n in walked[:: depth // 10])
        assert (
            chain.roots[0].input_tokens,
            tree.output_tokens,
            s.get_session(deep.session_id).input_tokens,
        ) == (
            7,
            3,
            7,
        )
        text = s.format_tree(deep.session_id)
        assert "level 0" in text and f"level {depth - 1}" in text
        assert sum(1 for line in text.splitlines() if "level " in line) == depth
        document = s.export_session(deep.session_id)
        spans_out = document["traces"][0]["spans"]
        assert len(spans_out) == depth and spans_out[-1]["depth"] == depth - 1
        assert len(json.dumps(document)) > 0
        otlp = s.export_otlp_json(deep.session_id)
        exported = otlp["resourceSpans"][0]["scopeSpans"][0]["spans"]
        assert len(exported) == depth
        json.dumps(otlp)
        assert len(s.trace_tree(chain.trace_id).roots) == 1
        del tree, walked  # freeing a deep tree must not recurse either


def test_a_span_left_open_by_a_killed_process_reads_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    code = textwrap.dedent(
        """
        import sys, time
        from opentelemetry.sdk.trace import TracerProvider
        from otel_sqlite_exporter import SQLiteSpanProcessor
        processor = SQLiteSpanProcessor(sys.argv[1], schedule_delay_millis=10)
        provider = TracerProvider()
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("doomed")
        with tracer.start_as_current_span("agent run", attributes={"session.id": "crashed"}):
            with tracer.start_as_current_span("finished step"):
                pass
            with tracer.start_as_current_span("stuck step"):
                assert processor.force_flush(10_000)
                print("open", flush=True)
                time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    # The file still says running (nothing has written to it since); the reader knows better.
    assert query(path, "SELECT status FROM sessions") == [("running",)]
    with TraceStore(path) as s:
        entries = s.get_traces("crashed")
        assert [(e.name, e.status, e.end_time) for e in entries] == [
            ("agent run", "interrupted", None),
            ("finished step", "unset", entries[1].end_time),
            ("stuck step", "interrupted", None),
        ]
        assert entries[1].end_time is not None
        assert names(s.get_traces(status="interrupted")) == ["agent run", "stuck step"]
        assert s.get_traces(status="running") == []
        assert ids_of(s.get_sessions(status="interrupted")) == ["crashed"]
        tree = s.session_tree("crashed")
        assert [(d, n.entry.status) for _, d, n in tree.walk()] == [
            (0, "interrupted"),
            (1, "unset"),
            (1, "interrupted"),
        ]
        assert "interrupted" in s.format_tree("crashed")
        otlp_spans = s.export_otlp_json("crashed")["resourceSpans"][0]["scopeSpans"][0]["spans"]
        assert [("endTimeUnixNano" in sp) for sp in otlp_spans] == [False, True, False]


# --- summary, renderings, export, stats --------------------------------------------------------------------


def test_session_summary(shop: Shop, store: TraceStore) -> None:
    summary = store.session_summary(shop.ask, slowest=3)
    ask = store.get_session(shop.ask)
    assert summary.session == ask and summary.duration_ms == ask.duration_ms > 0
    assert summary.trace_count == 2
    assert summary.spans_by_type == {"llm": 3, "agent": 1, "tool": 1, "span": 1}
    # the agent names gpt-4o too and echoes its usage: still one call, counted once
    models = [(m.model, m.calls, m.input_tokens, m.output_tokens, m.total_tokens) for m in summary.models]
    assert models == [
        ("claude-3-5-sonnet", 1, 50, 10, 60),
        ("gpt-4o", 1, 100, 20, 120),
        ("gpt-4o-mini", 1, 30, 5, 35),
    ]
    assert [m.cost_usd for m in summary.models] == pytest.approx([0.01, 0.002, 0.0001])
    assert [(e.name, e.status_message) for e in summary.errors] == [
        ("execute_tool lookup_order", "order 42 not found")
    ]
    durations = [e.duration_ms for e in summary.slowest]
    assert len(durations) == 3 and durations == sorted(durations, reverse=True)
    assert durations[0] == max(e.duration_ms for e in store.session_timeline(shop.ask))

    old = store.session_summary("s-old")
    assert old.duration_ms == 2000.0
    assert [(e.name, e.duration_ms) for e in old.slowest] == [
        ("nightly batch", 2000.0),
        ("search docs", 1500.0),
    ]
    assert (old.models, old.errors, old.spans_by_type) == ([], [], {"chain": 1, "retrieval": 1})
    mid = store.session_summary("s-mid")
    assert [(e.name, e.status_message) for e in mid.errors] == [("broken", "boom")]
    running = store.session_summary("s-run")
    assert running.duration_ms is None
    assert [e.name for e in running.slowest] == ["step 1"]  # a running span has no duration yet
    json.dumps(summary.to_dict())
    assert store.session_summary(shop.ask, slowest=0).slowest == []
    for bad in (-1, "3", 2.5):
        with pytest.raises(QueryError, match="slowest"):
            store.session_summary(shop.ask, slowest=bad)


@pytest.mark.parametrize(
    "method",
    [
        "session_tree",
        "session_timeline",
        "session_summary",
        "format_tree",
        "format_timeline",
        "export_session",
        "export_otlp_json",
        "trace_tree",
    ],
)
def test_missing_ids_raise_not_found(store: TraceStore, method: str) -> None:
    with pytest.raises(NotFoundError, match="no-such-id"):
        getattr(store, method)("no-such-id")


def test_format_tree_shows_names_types_models_usage_and_errors(shop: Shop, store: TraceStore) -> None:
    text = store.format_tree(shop.ask)
    lines = text.splitlines()
    assert shop.ask in lines[0] and "refund question" in lines[0] and "completed" in lines[0]

    def line_of(name: str) -> str:
        (found,) = [line for line in lines if f" {name} " in line]
        return found

    agent = line_of("invoke_agent support")
    assert "[agent]" in agent and "gpt-4o" in agent
    assert _render.tokens(130, 25) in agent and _render.cost(0.0021) in agent  # its subtree, counted once
    llm = line_of("chat gpt-4o")
    assert "[llm]" in llm and _render.tokens(100, 20) in llm and _render.cost(0.002) in llm
    assert "ERROR: order 42 not found" in line_of("execute_tool lookup_order")
    assert "[tool]" in line_of("execute_tool lookup_order")
    claude = line_of("chat claude-3-5-sonnet")
    assert "claude-3-5-sonnet" in claude and _render.tokens(50, 10) in claude and _render.cost(0.01) in claude
    # traces in order, each span under its trace
    order = [i for i, line in enumerate(lines) if shop.trace1 in line or shop.trace2 in line]
    assert [shop.trace1 in lines[order[0]], shop.trace2 in lines[order[1]]] == [True, True]
    assert order[0] < lines.index(agent) < order[1] < lines.index(claude)
    assert "\x1b[" not in text and "\x1b[" in store.format_tree(shop.ask, color=True)


def test_format_timeline_lists_spans_in_start_order(shop: Shop, store: TraceStore) -> None:
    text = store.format_timeline(shop.ask)
    positions = [text.index(f" {name} ") for name in ASK_ORDER]
    assert positions == sorted(positions)
    assert "ERROR: order 42 not found" in text
    assert "gpt-4o-mini" in text and _render.tokens(30, 5) in text
    timed = store.format_timeline("s-old")
    assert "+    0.000 s" in timed and "+    0.100 s" in timed  # offsets from the session start
    assert "running" in store.format_timeline("s-run")


def test_export_session_is_json_ready_with_session_traces_and_spans(shop: Shop, store: TraceStore) -> None:
    document = store.export_session(shop.ask)
    decoded = json.loads(json.dumps(document))
    assert decoded["session"]["id"] == shop.ask and decoded["session"]["task"] == "refund question"
    assert decoded["session"]["total_tokens"] == 215
    assert [t["trace_id"] for t in decoded["traces"]] == [shop.trace1, shop.trace2]
    first = decoded["traces"][0]
    assert (first["span_count"], first["input_tokens"], first["output_tokens"], first["error_count"]) == (
        4,
        130,
        25,
        1,
    )
    assert [(s["name"], s["depth"], s["orphan"], s["parent_id"]) for s in first["spans"]] == [
        ("invoke_agent support", 0, False, None),
        ("chat gpt-4o", 1, False, shop.ids["invoke_agent support"]),
        ("execute_tool lookup_order", 1, False, shop.ids["invoke_agent support"]),
        ("chat gpt-4o-mini", 1, False, shop.ids["invoke_agent support"]),
    ]
    llm = first["spans"][1]
    assert llm["attributes"]["gen_ai.request.model"] == "gpt-4o" and llm["input_tokens"] == 100
    assert llm["input_text"].startswith("What is the refund policy")
    assert sum(len(t["spans"]) for t in decoded["traces"]) == 6


def otlp_spans(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        span["name"]: span
        for resource in document["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    }


def attribute(span: dict[str, Any], key: str) -> dict[str, Any]:
    (value,) = [kv["value"] for kv in span["attributes"] if kv["key"] == key]
    return value


def test_export_otlp_json_structure(shop: Shop, store: TraceStore) -> None:
    document = store.export_otlp_json(shop.ask)
    json.dumps(document)
    (resource,) = document["resourceSpans"]
    assert {"key": "service.name", "value": {"stringValue": SERVICE}} in resource["resource"]["attributes"]
    (scope,) = resource["scopeSpans"]
    assert scope["scope"] == {"name": "shop", "version": "1.2.3"}
    spans = otlp_spans(document)
    assert set(spans) == set(ASK_ORDER)
    timeline = {e.name: e for e in store.session_timeline(shop.ask)}
    for name, span in spans.items():
        entry = timeline[name]
        assert (span["traceId"], span["spanId"]) == (entry.trace_id, entry.id)
        assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16
        assert span["startTimeUnixNano"] == str(entry.start_time_unix_nano)
        assert span["endTimeUnixNano"] == str(entry.end_time_unix_nano)
        assert span.get("parentSpanId") == entry.parent_id
    llm, tool = spans["chat gpt-4o"], spans["execute_tool lookup_order"]
    assert (llm["kind"], spans["invoke_agent support"]["kind"]) == (3, 1)  # CLIENT, INTERNAL
    assert llm["status"] == {"code": 1}
    assert tool["status"] == {"code": 2, "message": "order 42 not found"}
    assert spans["followup"]["status"] == {"code": 0}
    assert attribute(llm, "gen_ai.usage.input_tokens") == {"intValue": "100"}
    assert attribute(llm, "llm.cost.total") == {"doubleValue": 0.002}
    assert attribute(llm, "gen_ai.request.model") == {"stringValue": "gpt-4o"}
    assert spans["followup"]["links"] == [
        {"traceId": shop.trace1, "spanId": shop.ids["chat gpt-4o"], "attributes": []}
    ]
    (event,) = tool["events"]
    (stored,) = store.get_span(shop.ids["execute_tool lookup_order"]).events
    assert event == {
        "timeUnixNano": str(stored["time_unix_nano"]),
        "name": "retry",
        "attributes": [
            {"key": "attempt", "value": {"intValue": "2"}},
            {
                "key": "backends",
                "value": {"arrayValue": {"values": [{"stringValue": "eu"}, {"stringValue": "us"}]}},
            },
        ],
    }


def test_export_otlp_json_parses_as_the_otlp_protobuf_message(shop: Shop, store: TraceStore) -> None:
    trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    json_format = pytest.importorskip("google.protobuf.json_format")
    trace_pb2 = pytest.importorskip("opentelemetry.proto.trace.v1.trace_pb2")
    span_kind, status_code = trace_pb2.Span, trace_pb2.Status

    document = copy.deepcopy(store.export_otlp_json(shop.ask))

    def b64(hex_id: str) -> str:
        return base64.b64encode(bytes.fromhex(hex_id)).decode()

    # OTLP/JSON writes ids as hex; protobuf's own JSON mapping expects base64 for bytes fields.
    for span in otlp_spans(document).values():
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = b64(span[key])
        for link in span["links"]:
            link["traceId"], link["spanId"] = b64(link["traceId"]), b64(link["spanId"])
    message = json_format.ParseDict(document, trace_service.ExportTraceServiceRequest())
    parsed = {s.name: s for rs in message.resource_spans for ss in rs.scope_spans for s in ss.spans}
    assert sorted(parsed) == sorted(ASK_ORDER)
    llm, agent, tool = (
        parsed["chat gpt-4o"],
        parsed["invoke_agent support"],
        parsed["execute_tool lookup_order"],
    )
    assert llm.kind == span_kind.SPAN_KIND_CLIENT and agent.kind == span_kind.SPAN_KIND_INTERNAL
    assert llm.parent_span_id == bytes.fromhex(shop.ids["invoke_agent support"])
    assert llm.trace_id == bytes.fromhex(shop.trace1) and llm.span_id == bytes.fromhex(
        shop.ids["chat gpt-4o"]
    )
    assert agent.parent_span_id == b""
    attrs = {kv.key: kv.value for kv in llm.attributes}
    assert attrs["gen_ai.usage.input_tokens"].int_value == 100
    assert attrs["gen_ai.request.model"].string_value == "gpt-4o"
    assert attrs["llm.cost.total"].double_value == pytest.approx(0.002)
    assert (tool.status.code, tool.status.message) == (status_code.STATUS_CODE_ERROR, "order 42 not found")
    assert llm.end_time_unix_nano - llm.start_time_unix_nano == round(
        store.get_span(shop.ids["chat gpt-4o"]).duration_ms * 1e6
    )
    (event,) = tool.events
    event_attrs = {kv.key: kv.value for kv in event.attributes}
    assert (event.name, event_attrs["attempt"].int_value) == ("retry", 2)
    assert [v.string_value for v in event_attrs["backends"].array_value.values] == ["eu", "us"]
    (link,) = parsed["followup"].links
    assert link.span_id == bytes.fromhex(shop.ids["chat gpt-4o"])
    resource_attrs = {kv.key: kv.value.string_value for kv in message.resource_spans[0].resource.attributes}
    assert resource_attrs["service.name"] == SERVICE


def test_stats_cover_the_whole_file(shop: Shop, store: TraceStore) -> None:
    stats = store.stats()
    assert (stats.path, stats.schema_version) == (str(shop.path), SCHEMA_VERSION)
    assert (stats.sessions, stats.traces, stats.spans, stats.running_sessions) == (4, 5, 12, 1)
    assert stats.oldest == T0
    assert stats.newest == max(e.timestamp for e in store.get_traces())
    assert (stats.input_tokens, stats.output_tokens) == (180 + 7, 35 + 3)
    assert stats.cost_usd == pytest.approx(0.0121 + 0.0005)
    assert stats.file_bytes >= os.path.getsize(shop.path) > 0
    # by model: the agent's echo of gpt-4o is neither a call nor counted again
    assert [(m.model, m.calls, m.input_tokens, m.output_tokens) for m in stats.models] == [
        ("claude-3-5-sonnet", 1, 50, 10),
        ("gpt-4o", 2, 107, 23),
        ("gpt-4o-mini", 1, 30, 5),
    ]
    assert [m.cost_usd for m in stats.models] == pytest.approx([0.01, 0.0025, 0.0001])
    assert sum(m.input_tokens for m in stats.models) == stats.input_tokens
    decoded = json.loads(json.dumps(stats.to_dict()))
    assert (
        decoded["oldest"] == "2025-03-01T12:00:00Z" and decoded["models"][0]["model"] == "claude-3-5-sonnet"
    )


# --- search ----------------------------------------------------------------------------------------------

DOCS = {
    "doc one": "alpha beta filler filler",
    "doc two": "alpha filler filler filler",
    "doc three": "beta filler filler filler",
    "doc four": "gamma filler filler filler",
    "doc five": "alpha alpha alpha filler",
    "doc six": "alphabet filler filler filler",
    "doc seven": "the store is NEAR the station",
    "doc eight": 'say "hello" -- 100% off: x_y',
    "doc nine": "filler filler filler filler",
    "doc ten": "filler filler filler filler",
}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TraceStore]:
    w = open_writer(tmp_path_factory.mktemp("library") / "traces.db")
    with session(session_id="docs"):
        for name, text in DOCS.items():
            with w.tracer.start_as_current_span(name, attributes={"input.value": text}):
                pass
    with session(session_id="unicode"):
        for name, text in {
            "café ☕ résumé": "Où est la gare? naïve 🚂 question",
            "東京 weather": "東京 の 天気 は 晴れ 🌞",
            "long text": "the needle is near the start " + "lorem ipsum dolor " * 5000,
        }.items():
            with w.tracer.start_as_current_span(name, attributes={"input.value": text}):
                pass
    w.close()
    with TraceStore(w.path) as s:
        yield s


def hit_names(hits: Any) -> list[str]:
    return [h.entry.name for h in hits]


def test_search_requires_every_word_and_ranks_best_first(library: TraceStore) -> None:
    hits = library.search("alpha")
    assert sorted(hit_names(hits)) == ["doc five", "doc one", "doc two"]  # not "alphabet": words match whole
    assert hits[0].entry.name == "doc five"  # the word three times in a text as long as the others
    scores = [h.score for h in hits]
    assert scores == sorted(scores)
    assert hit_names(library.search("alpha beta")) == ["doc one"]
    assert hit_names(library.search("BETA   Alpha")) == ["doc one"]
    assert library.search("alpha gamma") == []
    # more matching terms first, then rarer terms first
    assert hit_names(library.search("alpha OR beta", raw=True))[0] == "doc one"
    assert hit_names(library.search("alpha OR gamma", raw=True))[0] == "doc four"
    assert "[alpha]" in hits[0].snippet
    assert hit_names(library.search("alpha", limit=2)) == hit_names(hits)[:2]
    assert hit_names(library.search("filler", session_id="unicode")) == []
    assert len(library.search("filler", session_id="docs")) == 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"hello"', ["doc eight"]),
        ("hello*", ["doc eight"]),
        ("alpha*", ["doc five", "doc one", "doc two"]),  # no prefix search: "alphabet" stays out
        ("alpha OR gamma", []),  # OR is a word to find, and no text has it
        ("NEAR(", ["doc seven", "long text"]),  # the word "near", as in "near the start"
        ("near(station", []),
        ("-alpha", ["doc five", "doc one", "doc two"]),
        ("x_y:", ["doc eight"]),
        ("col:alpha", []),
        ("100%", ["doc eight"]),
        ('"', []),
        ("*", []),
        (":", []),
        ("-", []),
        ("NOT", []),
        ("(", []),
        ("^alpha", ["doc five", "doc one", "doc two"]),
        ("", []),
        ("   ", []),
    ],
)
def test_search_takes_fts_syntax_in_user_text_literally(
    library: TraceStore, text: str, expected: list[str]
) -> None:
    assert sorted(hit_names(library.search(text))) == expected
    assert sorted(names(library.get_traces(search_text=text))) == expected


def test_raw_search_allows_fts_syntax_and_rejects_invalid_syntax(library: TraceStore) -> None:
    assert sorted(hit_names(library.search("alpha*", raw=True))) == [
        "doc five",
        "doc one",
        "doc six",
        "doc two",
    ]
    assert hit_names(library.search('"alpha beta"', raw=True)) == ["doc one"]
    assert sorted(hit_names(library.search("alpha NOT beta", raw=True))) == ["doc five", "doc two"]
    assert hit_names(library.search("NEAR(store station, 3)", raw=True)) == ["doc seven"]
    assert hit_names(library.search("name: seven", raw=True)) == ["doc seven"]
    for bad in ('"unterminated', "alpha AND", "NEAR(", "nosuchcolumn: alpha", "(alpha", "*", "alpha\x00 AND"):
        with pytest.raises(QueryError):
            library.search(bad, raw=True)
    with pytest.raises(QueryError):
        library.search(42)  # type: ignore[arg-type]


def test_search_and_filters_handle_unicode_and_long_texts(library: TraceStore) -> None:
    assert hit_names(library.search("café")) == ["café ☕ résumé"]
    assert hit_names(library.search("cafe resume")) == ["café ☕ résumé"]  # accents folded
    assert hit_names(library.search("naïve ☕")) == ["café ☕ résumé"]  # emoji are not words: ignored
    assert hit_names(library.search("東京")) == ["東京 weather"]
    assert hit_names(library.search("晴れ")) == ["東京 weather"]
    assert isinstance(library.search("🌞"), list)  # never raises
    entry = library.get_traces(name="café ☕ résumé")[0]
    assert entry.input_text == "Où est la gare? naïve 🚂 question"
    assert library.get_span(entry.id).name == "café ☕ résumé"
    (hit,) = library.search("needle")
    assert hit.entry.name == "long text" and "[needle]" in hit.snippet
    assert len(hit.snippet) < 300  # a snippet, not the text
    assert len(hit.entry.input_text) == Options().max_content_length


# --- hostile input -----------------------------------------------------------------------------------------

HOSTILE = [
    "x' OR '1'='1",
    'x" OR "1"="1',
    '"; DROP TABLE spans; --',
    "'); DELETE FROM sessions; --",
    "%",
    "_",
    "%' --",
    "\x00",
    "s-old\x00",
    "x\x00' OR 1=1 --",
    "* OR 1",
]


def table_counts(path: Path) -> dict[str, int]:
    tables = [name for (name,) in query(path, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: query(path, f'SELECT count(*) FROM "{t}"')[0][0] for t in tables}


def test_injection_shaped_input_returns_nothing_and_changes_nothing(shop: Shop) -> None:
    before_hash, before_counts = sha256(shop.path), table_counts(shop.path)
    assert {"sessions", "traces", "spans", "spans_fts"} <= set(before_counts)
    with TraceStore(shop.path) as s:
        real_span = shop.ids["chat gpt-4o"]
        for text in HOSTILE:
            assert s.get_sessions(user_id=text) == []
            assert s.get_session(text) is None
            for key in ("session_id", "trace_id", "name", "model", "search_text"):
                assert s.get_traces(**{key: text}) == [], (key, text)
            assert s.search(text) == []
            assert s.search("refund", session_id=text) == []
            assert s.get_span(text) is None
            assert s.get_span(real_span, trace_id=text) is None
            for method in (s.session_tree, s.session_summary, s.export_otlp_json, s.trace_tree):
                with pytest.raises(NotFoundError):
                    method(text)
            for bad in ({"status": text}, {"since": text}, {"until": text}):
                with pytest.raises(QueryError):
                    s.get_sessions(**bad)
            for bad in ({"status": text}, {"event_type": text}, {"start_time": text}, {"end_time": text}):
                with pytest.raises(QueryError):
                    s.get_traces(**bad)
        # the file is intact and still answers
        assert len(s.get_sessions()) == 4 and len(s.get_traces()) == 12
    assert sha256(shop.path) == before_hash
    assert table_counts(shop.path) == before_counts


# --- beside a live writer ---------------------------------------------------------------------------------

LIVE_WRITER = textwrap.dedent(
    """
    import sys, time
    from opentelemetry.sdk.trace import TracerProvider
    from otel_sqlite_exporter import SQLiteSpanProcessor, session
    processor = SQLiteSpanProcessor(sys.argv[1], schedule_delay_millis=5)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("live")
    with tracer.start_as_current_span("first"):
        pass
    assert processor.force_flush(10_000)
    print("ready", flush=True)
    deadline = time.monotonic() + float(sys.argv[2])
    n = 0
    while time.monotonic() < deadline:
        with session(task=f"task {n}"):
            with tracer.start_as_current_span("agent step"):
                attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m",
                         "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 2,
                         "input.value": f"haystack needle {n}"}
                with tracer.start_as_current_span("chat", attributes=attrs):
                    pass
        n += 1
        if n % 20 == 0:
            time.sleep(0.002)
    provider.shutdown()
    print(n, flush=True)
    """
)


def test_reading_while_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    child = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER, str(path), "2.0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        seen = (0, 0, 0)
        reads = 0
        with TraceStore(path, busy_timeout_millis=10_000) as s:
            while child.poll() is None or reads < 3:
                sessions = s.get_sessions(limit=1_000_000)
                spans = s.get_traces(limit=1_000_000)
                hits = s.search("needle", limit=1_000_000)
                counts = (len(sessions), len(spans), len(hits))
                assert all(now >= then for now, then in zip(counts, seen, strict=True)), (counts, seen)
                seen = counts
                newest = s.get_sessions(limit=1)
                if newest and newest[0].task:
                    tree = s.session_tree(newest[0].id)
                    # one snapshot: the tree and the session row agree however far the writer got
                    assert sum(t.span_count for t in tree.traces) == tree.session.total_events
                    assert tree.input_tokens == tree.session.input_tokens
                reads += 1
            written = int(child.stdout.read().strip())
            assert child.wait(10) == 0
            final = s.stats()
        assert written > 10 and reads >= 3
        assert final.sessions == written + 1  # each task, and the first span's own trace
        assert final.spans == 2 * written + 1
        assert final.input_tokens == 3 * written
        assert seen[1] <= final.spans
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


# --- follow ---------------------------------------------------------------------------------------------


def test_follow_shows_spans_as_they_start_and_end(writer: Tracing) -> None:
    with writer.tracer.start_as_current_span("seed"):
        pass
    writer.flush()
    stop = threading.Event()
    seen: queue.Queue[Any] = queue.Queue()
    with TraceStore(writer.path) as s:

        def run() -> None:
            for entry in s.follow(backlog=1, interval_seconds=0.02, stop=stop):
                seen.put(entry)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            first = seen.get(timeout=10)
            assert (first.name, first.status) == ("seed", "unset")  # the backlog, then live
            live = writer.tracer.start_span("live step", attributes={"session.id": "watched"})
            writer.flush()
            started = seen.get(timeout=10)
            assert (started.name, started.status, started.end_time) == ("live step", "running", None)
            quick = writer.tracer.start_span("quick", attributes={"session.id": "watched"})
            quick.end()
            live.set_status(Status(StatusCode.ERROR, "gave up"))
            live.end()
            writer.flush()
            arrived = [seen.get(timeout=10), seen.get(timeout=10)]
            ended = next(e for e in arrived if e.name == "live step")
            assert (ended.id, ended.status, ended.status_message) == (started.id, "error", "gave up")
            assert ended.end_time is not None
            assert [(e.name, e.status) for e in arrived if e.name != "live step"] == [("quick", "unset")]
        finally:
            stop.set()
            thread.join(10)
        assert not thread.is_alive()
        assert seen.empty()  # nothing shown twice


def test_follow_one_session(writer: Tracing) -> None:
    with writer.tracer.start_as_current_span("earlier", attributes={"session.id": "mine"}):
        pass
    with writer.tracer.start_as_current_span("elsewhere", attributes={"session.id": "other"}):
        pass
    writer.flush()
    stop = threading.Event()
    seen: queue.Queue[Any] = queue.Queue()
    with TraceStore(writer.path) as s:
        follower = s.follow(session_id="mine", backlog=1, interval_seconds=0.02, stop=stop)
        thread = threading.Thread(target=lambda: [seen.put(e) for e in follower], daemon=True)
        thread.start()
        try:
            assert seen.get(timeout=10).name == "earlier"  # the session's latest span, not the file's
            with writer.tracer.start_as_current_span("theirs", attributes={"session.id": "other"}):
                pass
            with writer.tracer.start_as_current_span("ours", attributes={"session.id": "mine"}):
                pass
            writer.flush()
            got = seen.get(timeout=10)
        finally:
            stop.set()
            thread.join(10)
        assert (got.name, got.session_id, got.status) == ("ours", "mine", "unset")
        assert seen.empty()
