"""SQLiteLogExporter with the real SDK: GenAI content events reach their span in any arrival order;
other log records land in ``logs``, linked to their span, read back and shown under it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from time import time_ns
from typing import Any

import pytest
from helpers import query
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, set_span_in_context

from otel_sqlite_exporter import SQLiteLogExporter, SQLiteSpanProcessor, TraceStore, scrub_file
from otel_sqlite_exporter._cli import main as cli
from otel_sqlite_exporter._schema import connect

DETAILS = "gen_ai.client.inference.operation.details"
CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 21,
    "gen_ai.usage.output_tokens": 5,
}
INPUT = [{"role": "user", "parts": [{"type": "text", "content": "What is 2+2?"}]}]
OUTPUT = [
    {
        "role": "assistant",
        "parts": [
            {"type": "reasoning", "content": "Adding two and two gives four."},
            {"type": "text", "content": "4"},
        ],
        "finish_reason": "stop",
    }
]


@dataclass
class Pipeline:
    path: Path
    tracer_provider: TracerProvider
    processor: SQLiteSpanProcessor
    logger_provider: LoggerProvider

    @property
    def tracer(self) -> Any:
        return self.tracer_provider.get_tracer("app")

    def emit(self, span: Span | SpanContext | None, **record: Any) -> None:
        """Emit a log record (exported at once) in the context of ``span``."""
        if span is not None:
            context = span.get_span_context() if isinstance(span, Span) else span
            record["context"] = set_span_in_context(NonRecordingSpan(context))
        self.logger_provider.get_logger("genai").emit(LogRecord(**record))

    def details(self, span: Span | SpanContext, output: list[dict[str, Any]] = OUTPUT) -> None:
        self.emit(
            span,
            event_name=DETAILS,
            attributes={
                "gen_ai.input.messages": json.dumps(INPUT),
                "gen_ai.output.messages": json.dumps(output),
            },
        )

    def flush(self) -> None:
        assert self.processor.force_flush(10_000)

    def span(self, name: str) -> sqlite3.Row:
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            (row,) = conn.execute("SELECT * FROM spans WHERE name = ?", (name,)).fetchall()
            return row
        finally:
            conn.close()


def make_pipeline(path: Path, **options: Any) -> Pipeline:
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": "logs-test"}))
    processor = SQLiteSpanProcessor(path, schedule_delay_millis=10, **options)
    tracer_provider.add_span_processor(processor)
    logger_provider = LoggerProvider(resource=Resource.create({"service.name": "logs-test"}))
    # Simple: each record is written before emit() returns, so the tests choose the arrival order.
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(SQLiteLogExporter(path, **options)))
    return Pipeline(path, tracer_provider, processor, logger_provider)


@pytest.fixture
def pipe(tmp_path: Path) -> Iterator[Pipeline]:
    pipeline = make_pipeline(tmp_path / "traces.db")
    yield pipeline
    pipeline.tracer_provider.shutdown()
    pipeline.logger_provider.shutdown()


def events(row: sqlite3.Row) -> list[dict[str, Any]]:
    return json.loads(row["events"] or "[]")


def assert_attached(pipe: Pipeline, name: str = "chat") -> None:
    """The details record is on the span, once: texts, reasoning and event; nothing left over."""
    row = pipe.span(name)
    assert row["input_text"] == "user: What is 2+2?"
    assert row["output_text"] == "assistant: 4"
    assert row["reasoning_text"] == "Adding two and two gives four."
    assert [e["name"] for e in events(row)] == [DETAILS]
    assert "gen_ai.input.messages" not in json.loads(row["attributes"])
    assert query(pipe.path, "SELECT count(*) FROM logs") == [(0,)]
    assert query(pipe.path, "SELECT count(*) FROM pending_content") == [(0,)]


def test_content_log_before_the_span_is_stored(pipe: Pipeline) -> None:
    with pipe.tracer.start_as_current_span("chat", attributes=CHAT) as span:
        pipe.details(span)  # written now; the span only when it ends
    pipe.flush()
    assert_attached(pipe)


def test_content_log_after_the_span_is_stored(pipe: Pipeline) -> None:
    with pipe.tracer.start_as_current_span("chat", attributes=CHAT) as span:
        context = span.get_span_context()
    pipe.flush()
    assert pipe.span("chat")["input_text"] is None
    pipe.details(context)
    assert_attached(pipe)


def test_content_log_between_start_and_end_rows(pipe: Pipeline) -> None:
    span = pipe.tracer.start_span("chat", attributes=CHAT)
    pipe.flush()  # the start row is stored (end time NULL)
    pipe.details(span)
    assert pipe.span("chat")["input_text"] == "user: What is 2+2?"
    span.end()
    pipe.flush()
    assert pipe.span("chat")["end_time_unix_nano"] is not None
    assert_attached(pipe)  # once: not repeated when the end row merged the pending record again


def test_span_text_from_attributes_is_not_repeated(pipe: Pipeline) -> None:
    # SPAN_AND_EVENT: the messages come on the span and as a record.
    attributes = {**CHAT, "gen_ai.input.messages": json.dumps(INPUT)}
    with pipe.tracer.start_as_current_span("chat", attributes=attributes) as span:
        context = span.get_span_context()
    pipe.flush()
    pipe.details(context)
    row = pipe.span("chat")
    assert row["input_text"] == "user: What is 2+2?"
    assert row["output_text"] == "assistant: 4"
    assert [e["name"] for e in events(row)] == [DETAILS]


def test_older_per_message_events_one_record_each(pipe: Pipeline) -> None:
    with pipe.tracer.start_as_current_span("chat", attributes=CHAT) as span:
        context = span.get_span_context()
    pipe.flush()
    pipe.emit(context, event_name="gen_ai.system.message", body={"content": "Be brief."})
    pipe.emit(context, event_name="gen_ai.user.message", body={"content": "What is 2+2?"})
    pipe.emit(
        context,
        event_name="gen_ai.choice",
        body={"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "4"}},
    )
    row = pipe.span("chat")
    assert row["input_text"] == "system: Be brief.\nuser: What is 2+2?"
    assert row["output_text"] == "assistant: 4"
    assert [e["name"] for e in events(row)] == [
        "gen_ai.system.message",
        "gen_ai.user.message",
        "gen_ai.choice",
    ]


def test_attached_content_survives_the_span_written_again(pipe: Pipeline) -> None:
    with pipe.tracer.start_as_current_span("chat", attributes=CHAT) as span:
        context = span.get_span_context()
    pipe.flush()
    pipe.details(context)
    # A re-export of the same span (an exporter retry) rewrites its row.
    from otel_sqlite_exporter._writer import TraceWriter

    writer = TraceWriter(pipe.processor.options)
    try:
        writer.write([span])  # type: ignore[list-item]
    finally:
        writer.close()
    assert_attached(pipe)


def test_reasoning_is_searchable_and_shown(pipe: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    with pipe.tracer.start_as_current_span("chat", attributes=CHAT) as span:
        pipe.details(span)
    pipe.flush()
    with TraceStore(pipe.path) as store:
        (hit,) = store.search("adding")
        assert hit.entry.name == "chat"
        assert hit.entry.reasoning_text == "Adding two and two gives four."
        assert hit.entry.output_text == "assistant: 4"
    assert cli(["--db", str(pipe.path), "span", hit.entry.id]) == 0
    out = capsys.readouterr().out
    assert "\nReasoning\n    Adding two and two gives four.\nOutput\n    assistant: 4\n" in out


def test_other_records_go_to_the_logs_table(pipe: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    with pipe.tracer.start_as_current_span("agent step") as span:
        pipe.emit(span, body="tool cache miss", severity_number=SeverityNumber.WARN, severity_text="WARN")
        pipe.emit(span, event_name="app.retry", body={"attempt": 2}, attributes={"reason": "timeout"})
        context = span.get_span_context()
    pipe.emit(None, body="outside any span", severity_number=SeverityNumber.INFO, severity_text="INFO")
    pipe.flush()
    trace_id, span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
    with TraceStore(pipe.path) as store:
        (session,) = store.get_sessions()
        logs = store.get_logs(session_id=session.id)
        assert [(log.severity, log.event_name, log.body) for log in logs] == [
            ("WARN", None, "tool cache miss"),
            (None, "app.retry", '{"attempt":2}'),
        ]
        assert {(log.trace_id, log.span_id, log.session_id) for log in logs} == {
            (trace_id, span_id, session.id)
        }
        assert logs[1].attributes == {"reason": "timeout"}
        assert logs[0].service_name == "logs-test" and logs[0].scope_name == "genai"
        assert [log.body for log in store.get_logs(span_id=span_id, min_severity=13)] == ["tool cache miss"]
        assert [log.body for log in store.get_logs(event_name="app.retry")] == ['{"attempt":2}']
        everything = store.get_logs()
        assert [log.body for log in everything][-1] == "outside any span"
        assert everything[-1].trace_id is None and everything[-1].session_id is None
        assert store.get_logs(limit=1, offset=1) == everything[1:2]
    assert cli(["--db", str(pipe.path), "show", "latest"]) == 0
    lines = capsys.readouterr().out.splitlines()
    step = next(i for i, line in enumerate(lines) if "agent step" in line)
    assert "WARN tool cache miss" in lines[step + 1]
    assert 'app.retry {"attempt":2}' in lines[step + 2]


def test_no_content_capture_keeps_the_event_without_messages(tmp_path: Path) -> None:
    pipe = make_pipeline(tmp_path / "traces.db", capture_content=False)
    try:
        with pipe.tracer.start_as_current_span("chat", attributes=CHAT) as span:
            pipe.details(span)
        pipe.flush()
        row = pipe.span("chat")
    finally:
        pipe.tracer_provider.shutdown()
        pipe.logger_provider.shutdown()
    assert (row["input_text"], row["output_text"], row["reasoning_text"]) == (None, None, None)
    (event,) = events(row)
    assert event["name"] == DETAILS
    assert "What is 2+2" not in row["events"]


def test_secrets_in_records_are_redacted(pipe: Pipeline, tmp_path: Path) -> None:
    key = "sk-proj-" + "a1B2c3D4" * 6
    output = [{"role": "assistant", "parts": [{"type": "text", "content": f"use {key}"}]}]
    with pipe.tracer.start_as_current_span("chat", attributes=CHAT) as span:
        pipe.details(span, output=output)
        pipe.emit(span, body=f"calling with {key}", attributes={"api_key": "hunter2"})
    pipe.flush()
    rows = query(pipe.path, "SELECT * FROM spans") + query(pipe.path, "SELECT * FROM logs")
    dump = "\n".join(map(str, rows))
    assert key not in dump and "hunter2" not in dump
    assert "[REDACTED]" in pipe.span("chat")["output_text"]


def test_scrub_file_reaches_logs_and_reasoning(tmp_path: Path) -> None:
    key = "sk-proj-" + "Z9y8X7w6" * 6
    pipe = make_pipeline(tmp_path / "raw.db", redact=False)
    try:
        output = [{"role": "assistant", "parts": [{"type": "reasoning", "content": f"the key is {key}"}]}]
        with pipe.tracer.start_as_current_span("chat", attributes=CHAT) as span:
            pipe.details(span, output=output)
            pipe.emit(span, body=f"token {key}")
        pipe.flush()
    finally:
        pipe.tracer_provider.shutdown()
        pipe.logger_provider.shutdown()
    assert key in pipe.span("chat")["reasoning_text"]
    result = scrub_file(pipe.path)
    assert result.logs_changed == 1 and result.spans_changed == 1
    assert key not in pipe.path.read_bytes().decode("latin-1")


def test_exporter_contract(tmp_path: Path) -> None:
    (ep,) = [ep for ep in entry_points(group="opentelemetry_logs_exporter") if ep.name == "sqlite"]
    assert ep.load() is SQLiteLogExporter
    folder = tmp_path / "not-a-folder"
    folder.write_text("a file where the trace file's folder should be")
    exporter = SQLiteLogExporter(folder / "traces.db")
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    provider.get_logger("app").emit(LogRecord(body="lost"))  # never raises into the app
    assert exporter.stats["failed"] == 1 and exporter.stats["last_error"]
    exporter.shutdown()
    assert exporter.export([]).name == "FAILURE"
    assert exporter.force_flush() is True


def test_retention_sweeps_log_records_with_their_sessions(pipe: Pipeline) -> None:
    from otel_sqlite_exporter import RetentionSweeper

    day = 86_400 * 10**9
    old = time_ns() - 40 * day
    span = pipe.tracer.start_span("old step", start_time=old)
    pipe.emit(span, body="old record", timestamp=old)
    span.end(end_time=old + 10**9)
    orphan = SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=True)
    pipe.details(orphan)  # content whose span never comes
    pipe.emit(None, body="old, outside any span", timestamp=old)
    with pipe.tracer.start_as_current_span("new step") as fresh:
        pipe.emit(fresh, body="new record")
    pipe.emit(None, body="new, outside any span")
    pipe.flush()
    conn = sqlite3.connect(pipe.path)
    conn.execute("UPDATE pending_content SET received_unix_nano = ?", (old,))
    conn.commit()
    conn.close()

    result = RetentionSweeper(pipe.path, retention_days=30).sweep_once()
    assert result.deleted_sessions == 1
    assert sorted(body for (body,) in query(pipe.path, "SELECT body FROM logs")) == [
        "new record",
        "new, outside any span",
    ]
    assert query(pipe.path, "SELECT count(*) FROM pending_content") == [(0,)]


def test_show_latest_is_the_newest_session(pipe: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("first", "second"):
        with pipe.tracer.start_as_current_span(name):
            pass
    pipe.flush()
    assert cli(["--db", str(pipe.path), "show", "latest"]) == 0
    out = capsys.readouterr().out
    assert "second" in out and "first" not in out
    assert cli(["--db", str(pipe.path), "summary", "latest"]) == 0
    empty = pipe.path.with_name("empty.db")
    connect(str(empty)).close()  # a trace file with nothing in it yet
    assert cli(["--db", str(empty), "show", "latest"]) == 1
    assert "no sessions in" in capsys.readouterr().err
