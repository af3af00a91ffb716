"""Every instrumentation dialect of DESIGN.md section 3, end to end.

Spans are built with the real OpenTelemetry SDK in the shapes the real instrumentations emit
(openai-v2 / opentelemetry-util-genai, OpenLLMetry openai and anthropic, OpenInference openai,
Langfuse), written by ``SQLiteSpanProcessor`` into a real SQLite file and read back with ``sqlite3``.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from otel_sqlite_exporter import PriceTable, SQLiteSpanExporter, SQLiteSpanProcessor

Event = tuple[str, Mapping[str, Any]]


class TraceFile:
    """One SQLite trace file fed by a real TracerProvider + SQLiteSpanProcessor."""

    def __init__(self, path: Path, **options: Any) -> None:
        self.path = path
        self.processor = SQLiteSpanProcessor(path, **options)
        self.provider = TracerProvider()
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("tests.normalization", "1.0")

    def record(
        self,
        name: str = "span",
        attributes: Mapping[str, Any] | None = None,
        *,
        start: Mapping[str, Any] | None = None,
        events: Sequence[Event] = (),
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> dict[str, Any]:
        """Start a span with ``start``, add ``events`` and ``attributes``, end it, return its row."""
        span = self.tracer.start_span(name, kind=kind, attributes=start)
        for event_name, event_attributes in events:
            span.add_event(event_name, event_attributes)
        if attributes:
            span.set_attributes(attributes)
        span.end()
        self.flush()
        return self.row(span.get_span_context().span_id)

    def flush(self) -> None:
        assert self.processor.force_flush(10_000)

    def row(self, span_id: int) -> dict[str, Any]:
        rows = self.query("SELECT * FROM spans WHERE span_id = ?", (trace.format_span_id(span_id),))
        assert len(rows) == 1
        return rows[0]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.path)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()

    def close(self) -> None:
        self.provider.shutdown()


@pytest.fixture
def open_file(tmp_path: Path) -> Iterator[Callable[..., TraceFile]]:
    opened: list[TraceFile] = []

    def open_(**options: Any) -> TraceFile:
        name = "t.db" if not opened else f"t{len(opened)}.db"
        opened.append(TraceFile(tmp_path / name, **options))
        return opened[-1]

    yield open_
    for f in opened:
        f.close()


@pytest.fixture
def db(open_file: Callable[..., TraceFile]) -> TraceFile:
    return open_file()


def attrs_of(row: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(row["attributes"]) if row["attributes"] else {}


def expected_cost(
    model: str,
    prices: Mapping[str, Any] | None = None,
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
) -> float:
    """Input tokens include cache reads and writes; output tokens include reasoning (GenAI conventions)."""
    price = PriceTable(prices).lookup(model)
    assert price is not None, model
    read_price = price.input if price.cache_read is None else price.cache_read
    write_price = price.input if price.cache_write is None else price.cache_write
    reasoning_price = price.output if price.reasoning is None else price.reasoning
    usd = (
        (input_tokens - cache_read - cache_write) * price.input
        + cache_read * read_price
        + cache_write * write_price
        + (output_tokens - reasoning) * price.output
        + reasoning * reasoning_price
    )
    return usd / 1_000_000


def genai_messages(role: str, text: str) -> str:
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": text}]}])


# --- OpenTelemetry GenAI, current conventions -------------------------------------------------------------


def test_genai_chat_span_as_util_genai_emits_it(db: TraceFile) -> None:
    # opentelemetry-util-genai: start attributes, then response/usage/content attributes before end.
    row = db.record(
        "chat gpt-4o-mini",
        kind=SpanKind.CLIENT,
        start={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "server.address": "127.0.0.1",
            "server.port": 8080,
        },
        attributes={
            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
            "gen_ai.response.id": "chatcmpl-1",
            "gen_ai.response.finish_reasons": ("stop",),
            "gen_ai.usage.input_tokens": 1200,
            "gen_ai.usage.output_tokens": 300,
            "gen_ai.usage.cache_read.input_tokens": 1000,
            "gen_ai.usage.cache_creation.input_tokens": 100,
            "gen_ai.usage.reasoning.output_tokens": 50,
            "gen_ai.conversation.id": "conv-42",
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}]),
            "gen_ai.input.messages": genai_messages("user", "Weather in Paris?"),
            "gen_ai.output.messages": json.dumps(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": "Sunny."}],
                        "finish_reason": "stop",
                    }
                ]
            ),
        },
    )
    assert row["type"] == "llm"
    assert row["kind"] == "client"
    assert row["model"] == "gpt-4o-mini-2024-07-18"
    assert row["provider"] == "openai"
    assert row["operation"] == "chat"
    assert (
        row["input_tokens"],
        row["output_tokens"],
        row["cache_read_tokens"],
        row["cache_write_tokens"],
        row["reasoning_tokens"],
    ) == (1200, 300, 1000, 100, 50)
    assert row["input_text"] == "system: Be brief.\nuser: Weather in Paris?"
    assert row["output_text"] == "assistant: Sunny."
    assert row["session_id"] == "conv-42"
    assert db.query("SELECT session_id FROM sessions") == [{"session_id": "conv-42"}]
    assert row["cost_usd"] == pytest.approx(
        expected_cost(
            "gpt-4o-mini-2024-07-18",
            input_tokens=1200,
            output_tokens=300,
            cache_read=1000,
            cache_write=100,
            reasoning=50,
        )
    )
    stored = attrs_of(row)
    assert stored["gen_ai.response.finish_reasons"] == ["stop"]
    assert stored["server.port"] == 8080


@pytest.mark.parametrize(
    ("operation", "span_type"),
    [
        ("chat", "llm"),
        ("text_completion", "llm"),
        ("generate_content", "llm"),
        ("execute_tool", "tool"),
        ("invoke_agent", "agent"),
        ("create_agent", "agent"),
        ("embeddings", "embedding"),
        ("retrieval", "retrieval"),
        ("invoke_workflow", "workflow"),
    ],
)
def test_genai_operation_name_gives_type(db: TraceFile, operation: str, span_type: str) -> None:
    row = db.record(f"{operation} x", start={"gen_ai.operation.name": operation})
    assert row["type"] == span_type
    assert row["operation"] == operation


def test_genai_execute_tool_span(db: TraceFile) -> None:
    row = db.record(
        "execute_tool get_weather",
        start={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "get_weather",
            "gen_ai.tool.call.id": "call_1",
            "gen_ai.tool.type": "function",
        },
        attributes={"gen_ai.tool.call.arguments": '{"city": "Paris"}', "gen_ai.tool.call.result": "Sunny"},
    )
    assert row["type"] == "tool"
    assert row["model"] is None and row["input_tokens"] is None and row["cost_usd"] is None


USER_HI = [{"role": "user", "parts": [{"type": "text", "content": "Hi there"}]}]
ASSISTANT_HELLO = [
    {"role": "assistant", "parts": [{"type": "text", "content": "Hello!"}], "finish_reason": "stop"}
]


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(json.dumps, id="json-string"),
        pytest.param(lambda msgs: tuple(json.dumps(m) for m in msgs), id="tuple-of-json-strings"),
        pytest.param(lambda msgs: msgs, id="structured-any-value"),
    ],
)
def test_genai_messages_in_every_shape(db: TraceFile, encode: Callable[[list[Any]], Any]) -> None:
    row = db.record(
        "chat m",
        start={"gen_ai.operation.name": "chat"},
        attributes={
            "gen_ai.input.messages": encode(USER_HI),
            "gen_ai.output.messages": encode(ASSISTANT_HELLO),
        },
    )
    assert row["input_text"] == "user: Hi there"
    assert row["output_text"] == "assistant: Hello!"


def test_genai_system_instructions_alone(db: TraceFile) -> None:
    row = db.record(
        "chat s",
        attributes={
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "You are terse."}])
        },
    )
    assert row["input_text"] == "system: You are terse."


def test_genai_tool_call_part_is_rendered(db: TraceFile) -> None:
    output = [
        {
            "role": "assistant",
            "parts": [
                {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}
            ],
            "finish_reason": "tool_calls",
        }
    ]
    row = db.record("chat t", attributes={"gen_ai.output.messages": json.dumps(output)})
    prefix = "assistant: [tool call] get_weather("
    assert row["output_text"].startswith(prefix) and row["output_text"].endswith(")")
    assert json.loads(row["output_text"][len(prefix) : -1]) == {"city": "Paris"}


# --- every key of the normalisation table, and its precedence ---------------------------------------------

COLUMN_KEYS: dict[str, tuple[str, ...]] = {
    "session_id": (
        "session.id",
        "gen_ai.conversation.id",
        "traceloop.association.properties.session_id",
        "langfuse.session.id",
    ),
    "model": (
        "gen_ai.response.model",
        "gen_ai.request.model",
        "llm.response.model_name",
        "llm.model_name",
        "llm.request.model_name",
    ),
    "provider": ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"),
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"),
    "output_tokens": (
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
    ),
    "cache_read_tokens": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "llm.token_count.prompt_details.cache_read",
    ),
    "cache_write_tokens": (
        "gen_ai.usage.cache_write.input_tokens",
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "llm.token_count.prompt_details.cache_write",
    ),
    "reasoning_tokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "llm.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
    ),
}


def _value(column: str, rank: int) -> Any:
    return 100 + rank if column.endswith("_tokens") else f"{column}-{rank}"


@pytest.mark.parametrize(
    ("column", "key"), [(column, key) for column, keys in COLUMN_KEYS.items() for key in keys]
)
def test_each_key_fills_its_column(db: TraceFile, column: str, key: str) -> None:
    row = db.record("keyed", attributes={key: _value(column, 0)})
    assert row[column] == _value(column, 0)


@pytest.mark.parametrize(
    ("column", "first"),
    [(column, first) for column, keys in COLUMN_KEYS.items() for first in range(len(keys) - 1)],
)
def test_first_key_in_table_order_wins(db: TraceFile, column: str, first: int) -> None:
    # keys[first:] all present with distinct values (set in reverse order so insertion order cannot help).
    keys = COLUMN_KEYS[column]
    attributes = {keys[rank]: _value(column, rank) for rank in reversed(range(first, len(keys)))}
    row = db.record("precedence", attributes=attributes)
    assert row[column] == _value(column, first)


def test_an_empty_or_sequence_value_leaves_the_column_to_the_next_key(db: TraceFile) -> None:
    row = db.record(
        "chat",
        attributes={
            "gen_ai.response.model": "",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": (1, 2),
            "gen_ai.usage.prompt_tokens": 7,
            # Present but not a count: the best-ranked key still decides, and the column stays empty.
            "gen_ai.usage.output_tokens": "many",
            "gen_ai.usage.completion_tokens": 9,
        },
    )
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == ("gpt-4o", 7, None)


def test_response_model_beats_request_model_and_session_id_beats_conversation(db: TraceFile) -> None:
    row = db.record(
        "chat p",
        start={"gen_ai.request.model": "gpt-4o", "gen_ai.conversation.id": "conversation"},
        attributes={"gen_ai.response.model": "gpt-4o-2024-08-06", "session.id": "explicit"},
    )
    assert row["model"] == "gpt-4o-2024-08-06"
    assert row["session_id"] == "explicit"


def test_child_spans_inherit_the_trace_session(db: TraceFile) -> None:
    with db.tracer.start_as_current_span("agent", attributes={"langfuse.session.id": "lf-1"}) as parent:
        with db.tracer.start_as_current_span("child") as child:
            pass
    db.flush()
    assert db.row(child.get_span_context().span_id)["session_id"] == "lf-1"
    assert db.row(parent.get_span_context().span_id)["session_id"] == "lf-1"


def test_trace_without_session_is_its_own_session(db: TraceFile) -> None:
    with db.tracer.start_as_current_span("lonely") as span:
        pass
    db.flush()
    assert db.row(span.get_span_context().span_id)["session_id"] == trace.format_trace_id(
        span.get_span_context().trace_id
    )


# Text sources, best first (messages before whole payloads); dropping the first ``i`` leaves
# source ``i`` as the winner.
INPUT_SOURCES: list[tuple[dict[str, Any], list[Event], str]] = [
    ({"gen_ai.input.messages": genai_messages("user", "in0")}, [], "user: in0"),
    (
        {"llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": "in1"},
        [],
        "user: in1",
    ),
    ({"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "in2"}, [], "user: in2"),
    ({"input.value": "in3"}, [], "in3"),
    ({"traceloop.entity.input": "in4"}, [], "in4"),
    ({}, [("gen_ai.user.message", {"content": "in5"})], "user: in5"),
]
OUTPUT_SOURCES: list[tuple[dict[str, Any], list[Event], str]] = [
    ({"gen_ai.output.messages": genai_messages("assistant", "out0")}, [], "assistant: out0"),
    (
        {"llm.output_messages.0.message.role": "assistant", "llm.output_messages.0.message.content": "out1"},
        [],
        "assistant: out1",
    ),
    ({"gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "out2"}, [], "assistant: out2"),
    ({"output.value": "out3"}, [], "out3"),
    ({"traceloop.entity.output": "out4"}, [], "out4"),
    (
        {},
        [("gen_ai.choice", {"index": 0, "message": '{"role": "assistant", "content": "out5"}'})],
        "assistant: out5",
    ),
]


@pytest.mark.parametrize("first", range(len(INPUT_SOURCES)))
def test_text_sources_precedence(db: TraceFile, first: int) -> None:
    attributes: dict[str, Any] = {}
    events: list[Event] = []
    for sources in (INPUT_SOURCES, OUTPUT_SOURCES):
        for source_attrs, source_events, _ in sources[first:]:
            attributes.update(source_attrs)
            events.extend(source_events)
    row = db.record("texts", attributes=attributes, events=events)
    assert row["input_text"] == INPUT_SOURCES[first][2]
    assert row["output_text"] == OUTPUT_SOURCES[first][2]


# --- deprecated GenAI keys and OpenLLMetry / Traceloop ------------------------------------------------------


def test_openllmetry_legacy_openai_chat_span(db: TraceFile) -> None:
    # OpenLLMetry before the GenAI 1.37 migration: flattened gen_ai.prompt.N / gen_ai.completion.N.
    row = db.record(
        "openai.chat",
        kind=SpanKind.CLIENT,
        start={
            "llm.request.type": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o",
            "llm.is_streaming": False,
            "gen_ai.openai.api_base": "http://127.0.0.1:8080/v1/",
            "traceloop.association.properties.session_id": "tl-session",
            "gen_ai.prompt.0.role": "system",
            "gen_ai.prompt.0.content": "Be brief.",
            "gen_ai.prompt.1.role": "user",
            "gen_ai.prompt.1.content": "Hi",
        },
        attributes={
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.response.id": "chatcmpl-2",
            "llm.usage.total_tokens": 70,
            "gen_ai.usage.prompt_tokens": 50,
            "gen_ai.usage.completion_tokens": 20,
            "gen_ai.usage.cache_read_input_tokens": 32,
            "llm.usage.reasoning_tokens": 5,
            "gen_ai.completion.0.finish_reason": "stop",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "Hello!",
        },
    )
    assert row["type"] == "llm"
    assert row["operation"] == "chat"
    assert row["model"] == "gpt-4o-2024-08-06"
    assert row["provider"] == "openai"
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["reasoning_tokens"]) == (
        50,
        20,
        32,
        5,
    )
    assert row["cache_write_tokens"] is None
    assert row["input_text"] == "system: Be brief.\nuser: Hi"
    assert row["output_text"] == "assistant: Hello!"
    assert row["session_id"] == "tl-session"
    assert row["cost_usd"] == pytest.approx(
        expected_cost("gpt-4o-2024-08-06", input_tokens=50, output_tokens=20, cache_read=32, reasoning=5)
    )


def test_openllmetry_legacy_completion_tool_calls(db: TraceFile) -> None:
    row = db.record(
        "openai.chat",
        attributes={
            "llm.request.type": "chat",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.finish_reason": "tool_calls",
            "gen_ai.completion.0.tool_calls.0.id": "call_1",
            "gen_ai.completion.0.tool_calls.0.name": "get_weather",
            "gen_ai.completion.0.tool_calls.0.arguments": '{"city": "Paris"}',
        },
    )
    assert row["output_text"] == 'assistant: [tool call] get_weather({"city": "Paris"})'


def test_plain_string_prompt_and_completion(db: TraceFile) -> None:
    row = db.record(
        "completion",
        attributes={
            "gen_ai.system": "openai",
            "gen_ai.prompt": "Say hi",
            "gen_ai.completion": "hi",
        },
    )
    assert (row["input_text"], row["output_text"]) == ("Say hi", "hi")
    assert row["provider"] == "openai"


@pytest.mark.parametrize(
    ("key", "value", "span_type"),
    [
        ("llm.request.type", "chat", "llm"),
        ("llm.request.type", "completion", "llm"),
        ("llm.request.type", "embedding", "embedding"),
        ("traceloop.span.kind", "workflow", "workflow"),
        ("traceloop.span.kind", "task", "chain"),
        ("traceloop.span.kind", "agent", "agent"),
        ("traceloop.span.kind", "tool", "tool"),
    ],
)
def test_deprecated_type_keys(db: TraceFile, key: str, value: str, span_type: str) -> None:
    assert db.record("typed", start={key: value})["type"] == span_type


def test_traceloop_workflow_entity_input_output(db: TraceFile) -> None:
    entity_input = json.dumps({"args": [], "kwargs": {"question": "What is the capital of France?"}})
    row = db.record(
        "ask.workflow",
        start={
            "traceloop.span.kind": "workflow",
            "traceloop.workflow.name": "ask",
            "traceloop.entity.name": "ask",
            "traceloop.entity.input": entity_input,
            "traceloop.association.properties.session_id": "tl-2",
        },
        attributes={"traceloop.entity.output": json.dumps("Paris")},
    )
    assert row["type"] == "workflow"
    assert row["session_id"] == "tl-2"
    assert "What is the capital of France?" in row["input_text"]
    assert "Paris" in row["output_text"]


def test_openllmetry_legacy_anthropic_cache_tokens_and_cost(db: TraceFile) -> None:
    # Old OpenLLMetry anthropic: prompt_tokens already include cache reads and creations.
    model = "claude-sonnet-4-5-20250929"
    row = db.record(
        "anthropic.chat",
        kind=SpanKind.CLIENT,
        start={"gen_ai.system": "Anthropic", "llm.request.type": "completion", "gen_ai.request.model": model},
        attributes={
            "gen_ai.response.model": model,
            "gen_ai.usage.prompt_tokens": 3000,
            "gen_ai.usage.completion_tokens": 200,
            "gen_ai.usage.cache_read_input_tokens": 2000,
            "gen_ai.usage.cache_creation_input_tokens": 500,
        },
    )
    assert (row["type"], row["provider"], row["model"]) == ("llm", "Anthropic", model)
    assert (row["cache_read_tokens"], row["cache_write_tokens"]) == (2000, 500)
    assert row["cost_usd"] == pytest.approx(
        expected_cost(model, input_tokens=3000, output_tokens=200, cache_read=2000, cache_write=500)
    )


def test_openllmetry_anthropic_current_span(db: TraceFile) -> None:
    # opentelemetry-instrumentation-anthropic 0.62: GenAI keys, JSON messages, system instructions.
    row = db.record(
        "chat claude-haiku-4-5",
        kind=SpanKind.CLIENT,
        start={"gen_ai.provider.name": "anthropic", "gen_ai.operation.name": "chat"},
        attributes={
            "gen_ai.request.model": "claude-haiku-4-5",
            "gen_ai.request.max_tokens": 256,
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Answer in French."}]),
            "gen_ai.input.messages": genai_messages("user", "Hello"),
            "gen_ai.response.model": "claude-haiku-4-5-20251001",
            "gen_ai.response.id": "msg_1",
            "gen_ai.usage.input_tokens": 40,
            "gen_ai.usage.output_tokens": 12,
            "gen_ai.usage.total_tokens": 52,
            "gen_ai.usage.cache_read.input_tokens": 0,
            "gen_ai.usage.cache_creation.input_tokens": 0,
            "gen_ai.response.finish_reasons": ("stop",),
            "gen_ai.output.messages": genai_messages("assistant", "Bonjour"),
        },
    )
    assert (row["type"], row["provider"], row["model"]) == ("llm", "anthropic", "claude-haiku-4-5-20251001")
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (40, 12, 0)
    assert row["input_text"] == "system: Answer in French.\nuser: Hello"
    assert row["output_text"] == "assistant: Bonjour"


# --- GenAI span events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "choice_message",
    [
        pytest.param(json.dumps({"role": "assistant", "content": "Bonjour!"}), id="json-string"),
        pytest.param({"role": "assistant", "content": "Bonjour!"}, id="mapping"),
    ],
)
def test_per_message_events_give_text(db: TraceFile, choice_message: Any) -> None:
    row = db.record(
        "chat e",
        start={"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"},
        events=[
            ("gen_ai.system.message", {"gen_ai.system": "openai", "content": "Speak French."}),
            ("gen_ai.user.message", {"gen_ai.system": "openai", "content": "Hello"}),
            (
                "gen_ai.choice",
                {"gen_ai.system": "openai", "index": 0, "finish_reason": "stop", "message": choice_message},
            ),
        ],
    )
    assert row["input_text"] == "system: Speak French.\nuser: Hello"
    assert row["output_text"] == "assistant: Bonjour!"
    events = json.loads(row["events"])
    assert [e["name"] for e in events] == ["gen_ai.system.message", "gen_ai.user.message", "gen_ai.choice"]
    assert events[1]["attributes"]["content"] == "Hello"
    assert all(isinstance(e["time_unix_nano"], int) for e in events)


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(json.dumps, id="json-string"),
        pytest.param(lambda msgs: msgs, id="structured"),  # util-genai builds events with lists of dicts
    ],
)
def test_inference_details_event_gives_text(db: TraceFile, encode: Callable[[list[Any]], Any]) -> None:
    details = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.system_instructions": encode([{"type": "text", "content": "Be brief."}]),
        "gen_ai.input.messages": encode(USER_HI),
        "gen_ai.output.messages": encode(ASSISTANT_HELLO),
    }
    row = db.record(
        "chat d",
        start={"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini"},
        events=[("gen_ai.client.inference.operation.details", details)],
    )
    assert row["input_text"] == "system: Be brief.\nuser: Hi there"
    assert row["output_text"] == "assistant: Hello!"
    assert json.loads(row["events"])[0]["name"] == "gen_ai.client.inference.operation.details"


def test_attributes_win_over_events(db: TraceFile) -> None:
    row = db.record(
        "chat w",
        attributes={
            "gen_ai.input.messages": genai_messages("user", "from attribute"),
            "gen_ai.output.messages": genai_messages("assistant", "attribute answer"),
        },
        events=[
            ("gen_ai.user.message", {"content": "from event"}),
            ("gen_ai.choice", {"index": 0, "message": '{"role": "assistant", "content": "event answer"}'}),
        ],
    )
    assert row["input_text"] == "user: from attribute"
    assert row["output_text"] == "assistant: attribute answer"


# --- OpenInference ----------------------------------------------------------------------------------------


def test_openinference_openai_llm_span(db: TraceFile) -> None:
    request = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "model": "gpt-4o-mini",
    }
    row = db.record(
        "ChatCompletion",
        start={
            "openinference.span.kind": "LLM",
            "llm.provider": "openai",
            "llm.system": "openai",
            "input.value": json.dumps(request),
            "input.mime_type": "application/json",
            "llm.invocation_parameters": json.dumps({"model": "gpt-4o-mini"}),
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": "Be brief.",
            "llm.input_messages.1.message.role": "user",
            "llm.input_messages.1.message.content": "Hi",
            "session.id": "oi-session",
        },
        attributes={
            "output.value": json.dumps({"id": "chatcmpl-3", "choices": [{"message": {"content": "Hello!"}}]}),
            "output.mime_type": "application/json",
            "llm.model_name": "gpt-4o-mini-2024-07-18",
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": "Hello!",
            "llm.token_count.total": 40,
            "llm.token_count.prompt": 30,
            "llm.token_count.completion": 10,
            "llm.token_count.prompt_details.cache_read": 20,
            "llm.token_count.prompt_details.cache_write": 4,
            "llm.token_count.completion_details.reasoning": 3,
        },
    )
    assert (row["type"], row["model"], row["provider"]) == ("llm", "gpt-4o-mini-2024-07-18", "openai")
    assert (
        row["input_tokens"],
        row["output_tokens"],
        row["cache_read_tokens"],
        row["cache_write_tokens"],
        row["reasoning_tokens"],
    ) == (30, 10, 20, 4, 3)
    assert row["session_id"] == "oi-session"
    assert "Hi" in row["input_text"]
    assert "Hello!" in row["output_text"]
    assert row["cost_usd"] == pytest.approx(
        expected_cost(
            "gpt-4o-mini-2024-07-18",
            input_tokens=30,
            output_tokens=10,
            cache_read=20,
            cache_write=4,
            reasoning=3,
        )
    )


def test_openinference_flattened_messages(db: TraceFile) -> None:
    row = db.record(
        "ChatCompletion",
        start={
            "openinference.span.kind": "LLM",
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": "Be brief.",
            "llm.input_messages.1.message.role": "user",
            "llm.input_messages.1.message.contents.0.message_content.type": "text",
            "llm.input_messages.1.message.contents.0.message_content.text": "What is",
            "llm.input_messages.1.message.contents.1.message_content.type": "text",
            "llm.input_messages.1.message.contents.1.message_content.text": "the weather?",
        },
        attributes={
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.tool_calls.0.tool_call.id": "call_1",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "get_weather",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"city": "Paris"}',
        },
    )
    assert row["input_text"] == "system: Be brief.\nuser: What is the weather?"
    assert row["output_text"] == 'assistant: [tool call] get_weather({"city": "Paris"})'


def test_openinference_many_messages_keep_index_order(db: TraceFile) -> None:
    attributes: dict[str, Any] = {}
    for i in range(12):
        attributes[f"llm.input_messages.{i}.message.role"] = "user"
        attributes[f"llm.input_messages.{i}.message.content"] = f"m{i}"
    row = db.record("ChatCompletion", attributes=attributes)
    assert row["input_text"] == "\n".join(f"user: m{i}" for i in range(12))


def test_openinference_many_content_parts_keep_index_order(db: TraceFile) -> None:
    attributes: dict[str, Any] = {"llm.output_messages.0.message.role": "assistant"}
    for j in range(12):
        attributes[f"llm.output_messages.0.message.contents.{j}.message_content.type"] = "text"
        attributes[f"llm.output_messages.0.message.contents.{j}.message_content.text"] = f"p{j}"
    row = db.record("ChatCompletion", attributes=attributes)
    assert row["output_text"] == "assistant: " + " ".join(f"p{j}" for j in range(12))


@pytest.mark.parametrize(
    ("kind", "span_type"),
    [
        ("LLM", "llm"),
        ("TOOL", "tool"),
        ("AGENT", "agent"),
        ("CHAIN", "chain"),
        ("RETRIEVER", "retrieval"),
        ("EMBEDDING", "embedding"),
    ],
)
def test_openinference_span_kind_gives_type(db: TraceFile, kind: str, span_type: str) -> None:
    assert db.record("oi", start={"openinference.span.kind": kind})["type"] == span_type


def test_openinference_chain_input_output_value(db: TraceFile) -> None:
    row = db.record(
        "agent.run",
        start={
            "openinference.span.kind": "CHAIN",
            "input.value": "What is the weather?",
            "session.id": "s-9",
        },
        attributes={"output.value": "Sunny", "output.mime_type": "text/plain"},
    )
    assert (row["type"], row["input_text"], row["output_text"], row["session_id"]) == (
        "chain",
        "What is the weather?",
        "Sunny",
        "s-9",
    )


# --- content options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "full_input"),
    [
        pytest.param(
            {"gen_ai.input.messages": genai_messages("user", "x" * 300)}, "user: " + "x" * 300, id="genai"
        ),
        pytest.param({"input.value": "y" * 300}, "y" * 300, id="openinference"),
        pytest.param(
            {"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "z" * 300},
            "user: " + "z" * 300,
            id="legacy",
        ),
    ],
)
def test_max_content_length_truncates_text_not_attributes(
    open_file: Callable[..., TraceFile], attributes: dict[str, Any], full_input: str
) -> None:
    db = open_file(max_content_length=50)
    row = db.record("long", attributes={**attributes, "output.value": "o" * 120})
    assert row["input_text"] == full_input[:50]
    assert row["output_text"] == "o" * 50
    assert attrs_of(row) == attributes | {"output.value": "o" * 120}


def test_default_max_content_length_is_4096(db: TraceFile) -> None:
    row = db.record("long", attributes={"input.value": "a" * 10_000, "output.value": "b" * 4096})
    assert row["input_text"] == "a" * 4096
    assert row["output_text"] == "b" * 4096


def test_capture_content_false_stores_no_content(open_file: Callable[..., TraceFile]) -> None:
    db = open_file(capture_content=False)
    marker = "SECRET-PROMPT-MARKER"
    row = db.record(
        "chat c",
        start={"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "input.value": marker},
        attributes={
            "gen_ai.input.messages": genai_messages("user", marker),
            "gen_ai.output.messages": genai_messages("assistant", marker),
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": marker}]),
            "gen_ai.prompt": marker,
            "gen_ai.completion": marker,
            "gen_ai.prompt.0.content": marker,
            "gen_ai.completion.0.content": marker,
            "llm.input_messages.0.message.content": marker,
            "llm.output_messages.0.message.content": marker,
            "output.value": marker,
            "traceloop.entity.input": marker,
            "traceloop.entity.output": marker,
            "gen_ai.usage.input_tokens": 10,
            "gen_ai.usage.output_tokens": 5,
        },
        events=[
            ("gen_ai.user.message", {"content": marker}),
            ("gen_ai.choice", {"index": 0, "message": json.dumps({"role": "assistant", "content": marker})}),
            (
                "gen_ai.client.inference.operation.details",
                {"gen_ai.input.messages": genai_messages("user", marker)},
            ),
        ],
    )
    assert row["input_text"] is None and row["output_text"] is None
    stored = attrs_of(row)
    assert stored == {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"} | {
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 5,
    }
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == ("gpt-4o", 10, 5)
    assert marker not in json.dumps(db.query("SELECT * FROM spans"))
    assert [e["name"] for e in json.loads(row["events"])] == [
        "gen_ai.user.message",
        "gen_ai.choice",
        "gen_ai.client.inference.operation.details",
    ]


# --- cost ------------------------------------------------------------------------------------------------


def test_explicit_cost_wins_over_price_table(db: TraceFile) -> None:
    row = db.record(
        "ChatCompletion",
        attributes={
            "openinference.span.kind": "LLM",
            "llm.model_name": "gpt-4o",
            "llm.token_count.prompt": 1000,
            "llm.token_count.completion": 100,
            "llm.cost.total": 0.0123,
        },
    )
    assert row["cost_usd"] == pytest.approx(0.0123)


@pytest.mark.parametrize(
    ("attributes", "model", "counts"),
    [
        pytest.param(
            {
                "gen_ai.request.model": "gpt-4.1",
                "gen_ai.usage.input_tokens": 5000,
                "gen_ai.usage.output_tokens": 900,
                "gen_ai.usage.cache_read.input_tokens": 4000,
                "gen_ai.usage.reasoning.output_tokens": 600,
            },
            "gpt-4.1",
            {"input_tokens": 5000, "output_tokens": 900, "cache_read": 4000, "reasoning": 600},
            id="genai-openai",
        ),
        pytest.param(
            {
                "gen_ai.response.model": "claude-3-5-haiku-20241022",
                "gen_ai.usage.input_tokens": 2200,
                "gen_ai.usage.output_tokens": 100,
                "gen_ai.usage.cache_read.input_tokens": 1000,
                "gen_ai.usage.cache_write.input_tokens": 1000,
            },
            "claude-3-5-haiku-20241022",
            {"input_tokens": 2200, "output_tokens": 100, "cache_read": 1000, "cache_write": 1000},
            id="genai-anthropic",
        ),
        pytest.param(
            {
                "llm.model_name": "gemini-2.5-flash",
                "llm.token_count.prompt": 800,
                "llm.token_count.completion": 400,
                "llm.token_count.prompt_details.cache_read": 300,
                "llm.token_count.completion_details.reasoning": 250,
            },
            "gemini-2.5-flash",
            {"input_tokens": 800, "output_tokens": 400, "cache_read": 300, "reasoning": 250},
            id="openinference-gemini",
        ),
        pytest.param(
            {
                "gen_ai.request.model": "o3-mini",
                "gen_ai.usage.output_tokens": 700,
                "llm.usage.reasoning_tokens": 650,
            },
            "o3-mini",
            {"output_tokens": 700, "reasoning": 650},
            id="output-only",
        ),
    ],
)
def test_cost_from_bundled_price_table(
    db: TraceFile, attributes: dict[str, Any], model: str, counts: dict[str, int]
) -> None:
    row = db.record("priced", attributes=attributes)
    assert row["cost_usd"] is not None
    assert row["cost_usd"] == pytest.approx(expected_cost(model, **counts), rel=1e-6)


def test_unknown_model_costs_null(db: TraceFile) -> None:
    row = db.record(
        "chat u",
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "acme-llm-7",
            "gen_ai.usage.input_tokens": 10,
            "gen_ai.usage.output_tokens": 5,
        },
    )
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == ("acme-llm-7", 10, 5)
    assert row["cost_usd"] is None


def test_no_usage_costs_null(db: TraceFile) -> None:
    row = db.record("chat n", attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"})
    assert row["cost_usd"] is None


@pytest.mark.parametrize(
    ("model", "prices"),
    [
        ("my-model", {"my-model": {"input": 1.0, "output": 2.0}}),
        ("gpt-4o", {"gpt-4o": {"input": 1.0, "output": 2.0}}),  # overrides a bundled entry
    ],
)
def test_user_price_table(open_file: Callable[..., TraceFile], model: str, prices: dict[str, Any]) -> None:
    db = open_file(prices=prices)
    row = db.record(
        "chat my",
        attributes={
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 500,
        },
    )
    assert row["cost_usd"] == pytest.approx(1000 * 1.0 / 1e6 + 500 * 2.0 / 1e6)


# --- attribute values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (0, 0),
        (-7, -7),
        (2**62, 2**62),
        (1.5, 1.5),
        (-0.25, -0.25),
        ("", ""),
        ("héllo ✓ 日本", "héllo ✓ 日本"),
        (("a", "b"), ["a", "b"]),
        ((1, 2, 3), [1, 2, 3]),
        ((True, False), [True, False]),
        ((0.5, 1.5), [0.5, 1.5]),
        ((), []),
    ],
)
def test_attribute_values_round_trip(db: TraceFile, value: Any, expected: Any) -> None:
    row = db.record("values", attributes={"custom.value": value})
    stored = attrs_of(row)["custom.value"]
    assert stored == expected
    assert type(stored) is type(expected)


def test_structured_any_values_stored_as_json(db: TraceFile) -> None:
    row = db.record("any", attributes={"mixed": ("x", 1, None), "obj": {"k": (1, "v"), "n": {"deep": True}}})
    stored = attrs_of(row)
    assert stored["mixed"] == ["x", 1, None]
    assert stored["obj"] == {"k": [1, "v"], "n": {"deep": True}}


def test_nan_and_infinity_stored_as_null(db: TraceFile) -> None:
    row = db.record(
        "floats",
        attributes={
            "f.nan": math.nan,
            "f.inf": math.inf,
            "f.ninf": -math.inf,
            "f.seq": (1.0, math.nan, math.inf),
            "gen_ai.request.temperature": 0.7,
        },
    )
    stored = attrs_of(row)
    assert stored["f.nan"] is None and stored["f.inf"] is None and stored["f.ninf"] is None
    assert stored["f.seq"] == [1.0, None, None]
    assert stored["gen_ai.request.temperature"] == 0.7


@pytest.mark.parametrize("size", [1_000_000, 5_000_000])
def test_very_long_strings_do_not_break_the_writer(db: TraceFile, size: int) -> None:
    big = "x" * size
    row = db.record(
        "big",
        attributes={"big.value": big, "gen_ai.input.messages": genai_messages("user", big), "small": "ok"},
    )
    stored = attrs_of(row)
    assert stored["small"] == "ok"
    assert stored["big.value"].startswith("x" * 1000)
    assert row["input_text"] == ("user: " + big)[:4096]
    after = db.record("after", attributes={"small": "still ok"})
    assert attrs_of(after) == {"small": "still ok"}
    assert db.processor.stats["failed"] == 0


def test_lone_surrogates_do_not_break_the_writer(db: TraceFile) -> None:
    bad = "bad\ud800text"
    row = db.record(
        f"name-{bad}",
        attributes={
            "s.bad": bad,
            "s.seq": (bad, "fine"),
            "gen_ai.input.messages": genai_messages("user", bad),
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 3,
            "s.ok": "ok",
        },
    )
    # Read with the default strict UTF-8 decoding: whatever was stored is valid text.
    stored = attrs_of(row)
    assert stored["s.ok"] == "ok"
    assert stored["s.bad"].startswith("bad") and stored["s.bad"].endswith("text")
    assert stored["s.seq"][1] == "fine"
    assert row["name"].startswith("name-bad") and row["name"].endswith("text")
    assert "bad" in row["input_text"] and "text" in row["input_text"]
    assert (row["model"], row["input_tokens"]) == ("gpt-4o", 3)
    assert db.processor.stats["failed"] == 0


def test_bytes_and_huge_ints_do_not_break_the_writer(db: TraceFile) -> None:
    row = db.record("odd", attributes={"b": b"\xff\x00raw", "huge": 2**80, "ok": 1})
    stored = attrs_of(row)
    assert stored["ok"] == 1
    assert "b" in stored and "huge" in stored
    assert db.processor.stats["failed"] == 0


@pytest.mark.parametrize(
    "bad",
    [-5, "lots", math.nan, math.inf, -1.0, ("1", "2")],
    ids=["neg", "text", "nan", "inf", "negf", "seq"],
)
def test_invalid_token_counts_are_ignored(db: TraceFile, bad: Any) -> None:
    row = db.record(
        "chat bad",
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": bad,
            "gen_ai.usage.output_tokens": 7,
            "gen_ai.usage.cache_read.input_tokens": bad,
            "gen_ai.usage.reasoning.output_tokens": bad,
        },
    )
    assert row["input_tokens"] is None
    assert row["cache_read_tokens"] is None
    assert row["reasoning_tokens"] is None
    assert (row["type"], row["model"], row["output_tokens"]) == ("llm", "gpt-4o", 7)
    assert row["cost_usd"] == pytest.approx(expected_cost("gpt-4o", output_tokens=7))
    assert "gen_ai.usage.input_tokens" in attrs_of(row)


# --- dialect-less spans -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attributes",
    [
        {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 2},
        {"llm.model_name": "claude-3-haiku", "llm.token_count.prompt": 10},
    ],
    ids=["genai-keys", "openinference-keys"],
)
def test_unknown_dialect_with_model_and_usage_is_llm(db: TraceFile, attributes: dict[str, Any]) -> None:
    row = db.record("mystery.call", attributes=attributes)
    assert row["type"] == "llm"
    assert row["cost_usd"] is not None


def test_plain_span_is_span(db: TraceFile) -> None:
    row = db.record("GET /health", kind=SpanKind.SERVER, attributes={"http.request.method": "GET"})
    assert row["type"] == "span"
    assert row["kind"] == "server"
    for column in ("model", "provider", "operation", "input_tokens", "cost_usd", "input_text", "output_text"):
        assert row[column] is None, column


@pytest.mark.parametrize(
    ("model", "usage"),
    [
        ("gpt-4o-2024-08-06", (1000, 200, 400, 0, 0)),
        ("claude-sonnet-4-5-20250929", (5000, 700, 1200, 800, 0)),
        ("o3-mini", (300, 900, 0, 0, 650)),
        ("gemini-2.5-flash", (12, 3, None, None, None)),
        ("gpt-4o-mini", (0, 0, 0, 0, 0)),
    ],
)
def test_stored_cost_equals_price_table_cost(
    db: TraceFile, model: str, usage: tuple[int | None, ...]
) -> None:
    """The writer prices in SQL; it must agree with PriceTable.cost() to the last digit kept."""
    keys = (
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_write.input_tokens",
        "gen_ai.usage.reasoning.output_tokens",
    )
    attributes: dict[str, Any] = {"gen_ai.response.model": model}
    attributes.update({k: v for k, v in zip(keys, usage, strict=True) if v is not None})
    row = db.record("chat", attributes=attributes)
    names = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
    expected = PriceTable().cost(model, **dict(zip(names, usage, strict=True)))
    assert expected is not None
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-12, abs=1e-12)


# -- reasoning, stream chunks, one call recorded twice ---------------------------------------------


def test_reasoning_parts_leave_the_output_text(db: TraceFile) -> None:
    output = [
        {
            "role": "assistant",
            "parts": [
                {"type": "reasoning", "content": "The user wants a number."},
                {"type": "text", "content": "42"},
            ],
        }
    ]
    row = db.record("chat", {"gen_ai.operation.name": "chat", "gen_ai.output.messages": json.dumps(output)})
    assert row["output_text"] == "assistant: 42"
    assert row["reasoning_text"] == "The user wants a number."


def test_anthropic_thinking_and_openllmetry_responses_summary(db: TraceFile) -> None:
    # The anthropic client's own span names a thinking block "thinking" with a "thinking" field;
    # OpenLLMetry's Responses spans put the summary items in a JSON string.
    output = [
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Check the units."}]},
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "reasoning",
                    "content": json.dumps([{"type": "summary_text", "text": "Summarised thought."}]),
                },
                {"type": "text", "content": "Done."},
            ],
        },
    ]
    row = db.record("chat", {"gen_ai.output.messages": json.dumps(output)})
    assert row["reasoning_text"] == "Check the units.\nSummarised thought."
    assert row["output_text"] == "assistant: Done."


def test_openinference_reasoning_contents(db: TraceFile) -> None:
    prefix = "llm.output_messages.0.message."
    row = db.record(
        "response",
        {
            "openinference.span.kind": "LLM",
            f"{prefix}role": "assistant",
            f"{prefix}contents.0.message_content.type": "reasoning",
            f"{prefix}contents.0.message_content.text": "Compare both options.",
            f"{prefix}contents.1.message_content.type": "text",
            f"{prefix}contents.1.message_content.text": "Option B.",
            "llm.token_count.completion_details.reasoning": 64,
        },
    )
    assert row["reasoning_text"] == "Compare both options."
    assert row["output_text"] == "assistant: Option B."
    assert row["reasoning_tokens"] == 64


def test_openllmetry_thinking_role(db: TraceFile) -> None:
    row = db.record(
        "anthropic.chat",
        {
            "gen_ai.completion.0.role": "thinking",
            "gen_ai.completion.0.content": "Work through it.",
            "gen_ai.completion.1.role": "assistant",
            "gen_ai.completion.1.content": "It is 7.",
        },
    )
    assert row["reasoning_text"] == "Work through it."
    assert row["output_text"] == "assistant: It is 7."


def test_stream_chunk_events_become_one_event(db: TraceFile) -> None:
    chunks = [("gen_ai.content.completion.chunk", {}) for _ in range(100)]
    pieces = [("llm.content.completion.chunk", {"text": t}) for t in ("Hel", "lo", "!")]
    row = db.record(
        "chat", events=[("gen_ai.choice.start", {}), *chunks, ("done", {"n": 1}), *pieces, ("tail.chunk", {})]
    )
    events = json.loads(row["events"])
    assert [e["name"] for e in events] == [
        "gen_ai.choice.start",
        "gen_ai.content.completion.chunk",
        "done",
        "llm.content.completion.chunk",
        "tail.chunk",
    ]
    chunk = events[1]
    assert chunk["attributes"]["chunk_count"] == 100
    assert chunk["attributes"]["last_time_unix_nano"] >= chunk["time_unix_nano"]
    assert events[3]["attributes"] == {
        "text": "Hello!",
        "chunk_count": 3,
        "last_time_unix_nano": events[3]["attributes"]["last_time_unix_nano"],
    }
    assert events[4]["attributes"] == {}  # a single chunk event is kept as it is


@pytest.mark.parametrize("order", ["instrumentation first", "client library first", "same batch"])
def test_one_call_recorded_twice_is_counted_once(open_file: Callable[..., TraceFile], order: str) -> None:
    f = open_file()
    client = f.provider.get_tracer("com.anthropic.sdk.python", "2.12.0")
    usage = {
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.response.id": "msg_01",
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 20,
    }

    def instrumentation() -> Any:
        span = f.tracer.start_span("anthropic.chat", attributes={**usage, "session.id": "conv"})
        span.end()
        return span

    def library() -> Any:
        # Only the client library counts the thinking tokens: the span kept takes them over.
        attributes = {**usage, "gen_ai.usage.reasoning.output_tokens": 8, "session.id": "conv"}
        span = client.start_span("anthropic.messages.create", attributes=attributes)
        span.end()
        return span

    first, second = (
        (instrumentation, library) if order != "client library first" else (library, instrumentation)
    )
    first()
    if order != "same batch":
        f.flush()
    second()
    f.flush()
    rows = f.query("SELECT scope_name, has_usage, usage_below FROM spans ORDER BY scope_name")
    assert [(r["scope_name"], r["usage_below"]) for r in rows] == [
        ("com.anthropic.sdk.python", 1),
        ("tests.normalization", 0),
    ]
    (session,) = f.query("SELECT span_count, input_tokens, output_tokens, reasoning_tokens FROM sessions")
    assert tuple(session.values()) == (2, 100, 20, 8)
    traces = f.query("SELECT input_tokens, reasoning_tokens FROM traces ORDER BY input_tokens")
    assert [tuple(t.values()) for t in traces] == [(0, 0), (100, 8)]


def test_spans_of_one_scope_sharing_a_response_id_are_distinct_calls(db: TraceFile) -> None:
    # A local server that numbers its responses from 1 in every run repeats ids: both calls count.
    usage = {"gen_ai.response.id": "chatcmpl-1", "gen_ai.usage.input_tokens": 10, "session.id": "runs"}
    db.record("chat", usage)
    db.record("chat", usage)
    (session,) = db.query("SELECT input_tokens FROM sessions")
    assert session["input_tokens"] == 20


def test_an_id_on_many_spans_names_no_single_call(db: TraceFile) -> None:
    # Two instrumentations behind a server that answers every call with one id: every call counts.
    other = db.provider.get_tracer("com.anthropic.sdk.python")
    usage = {"gen_ai.response.id": "msg_constant", "gen_ai.usage.input_tokens": 10, "session.id": "many"}
    for tracer in (db.tracer, other) * 10:
        tracer.start_span("call", attributes=usage).end()
    db.flush()
    (session,) = db.query("SELECT span_count, input_tokens FROM sessions")
    assert (session["span_count"], session["input_tokens"]) == (20, 200)


def test_a_span_class_of_another_library_is_read_through_its_properties(tmp_path: Path) -> None:
    # SDK spans are read through their fields; a subclass may compute what its properties return.
    class Renamed(ReadableSpan):
        @property
        def name(self) -> str:
            return "renamed " + self._name

        @property
        def status(self) -> Status:
            return Status(StatusCode.ERROR, "computed")

    context = SpanContext(0x1234, 0x5678, is_remote=False)
    span = Renamed("original", context=context, start_time=1, end_time=2, attributes={"a": 1})
    exporter = SQLiteSpanExporter(tmp_path / "traces.db")
    exporter.export([span])
    exporter.shutdown()
    conn = sqlite3.connect(tmp_path / "traces.db")
    try:
        row = conn.execute("SELECT name, status_code, status_message, attributes FROM spans").fetchone()
    finally:
        conn.close()
    assert row == ("renamed original", "ERROR", "computed", '{"a":1}')
