"""configure() + OpenTelemetry's own openai-v2 instrumentation + the real openai client against
FakeLLMServer.

configure() sets the global tracer provider and instruments the openai client globally, which can
happen only once per process, so every run is a Python subprocess (``APP``) that plays every
scenario (chat, streaming, a tool-calling agent, embeddings, cached/reasoning usage, the Responses
API, an API error), each in a session of its own; the test process then reads the SQLite file it
wrote. One run per content capture mode (``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``);
the runs start together, in parallel, the first time a test needs one.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from scenarios import OPENAI_TOOLS, Run, Runs, cost, environment, load_example, run_example, start_script

from otel_sqlite_exporter import PriceTable
from otel_sqlite_exporter._configure import _client_modules, genai_instrumentors

pytest.importorskip("openai")
pytest.importorskip("opentelemetry.instrumentation.openai_v2")

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
DETAILS_EVENT = "gen_ai.client.inference.operation.details"
HANDLER_SCOPE = "opentelemetry.util.genai.handler"  # openai-v2 2.4 chat spans come from util-genai
EMBEDDINGS_SCOPE = "opentelemetry.instrumentation.openai_v2"  # embeddings still use its own tracer
MESSAGE_KEYS = ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions")

REQUEST_MODEL = "gpt-4o-mini"
RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"
EMBEDDING_MODEL = "text-embedding-3-small"
REASONING_MODEL = "o4-mini"
REASONING_RESPONSE_MODEL = "o4-mini-2025-04-16"

# What the application sends. Every string is distinctive, so "no prompt anywhere in the file" can
# be checked by searching the whole file for it.
SYSTEM = "You are terse and cheerful."
CHAT_PROMPT = "Say hi to the integration suite"
STREAM_PROMPT = "Tell a two-line story about a fox"
AGENT_PROMPT = "What should I pack for Zanzibar tomorrow?"
CITY = "Zanzibar"
TOOL_RESULT = json.dumps({"city": CITY, "temperature_c": 31, "conditions": "sunny"})
EMBED_INPUTS = ["reef-safe sunscreen rules", "dry season months"]
CACHED_PROMPT = "Summarise the attached employee handbook"
RESPONSES_PROMPT = "Name a colour of the Responses API"
ERROR_PROMPT = "Please fail loudly now"
ERROR_MESSAGE = "the model is on fire"

# What the fake server answers, per scenario, in the order the application calls it.
CHAT_REPLIES = [
    {"content": "Hi there, suite!", "prompt_tokens": 21, "completion_tokens": 5, "model": RESPONSE_MODEL},
    {"content": "Hello again, suite.", "prompt_tokens": 33, "completion_tokens": 8, "model": RESPONSE_MODEL},
    {"content": "Outside any session.", "prompt_tokens": 10, "completion_tokens": 3, "model": RESPONSE_MODEL},
]
STREAM_REPLY = {
    "content": "A fox found a lantern in the snow. It glowed all winter long.",
    "prompt_tokens": 14,
    "completion_tokens": 16,
    "model": RESPONSE_MODEL,
}
AGENT_REPLIES = [
    {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": CITY}}],
        "prompt_tokens": 52,
        "completion_tokens": 17,
        "model": RESPONSE_MODEL,
    },
    {
        "content": "Pack reef-safe sunscreen: 31°C and sunny in Zanzibar.",
        "prompt_tokens": 81,
        "completion_tokens": 14,
        "model": RESPONSE_MODEL,
    },
]
EMBED_REPLY = {"prompt_tokens": 8}
CACHED_REPLY = {
    "content": "The handbook asks for kindness and punctuality.",
    "prompt_tokens": 2048,
    "completion_tokens": 300,
    "cached_tokens": 1024,
    "reasoning_tokens": 256,
    "model": REASONING_RESPONSE_MODEL,
}
RESPONSES_REPLY = {
    "content": "Teal, from the responses endpoint.",
    "prompt_tokens": 9,
    "completion_tokens": 6,
}
ERROR_REPLY = {"status": 500, "error_message": ERROR_MESSAGE}
REPLIES = [
    *CHAT_REPLIES,
    STREAM_REPLY,
    *AGENT_REPLIES,
    EMBED_REPLY,
    CACHED_REPLY,
    RESPONSES_REPLY,
    ERROR_REPLY,
]
# Text of the application's own that must never reach the file when nothing is to be captured.
CONTENT_MARKERS = [
    SYSTEM,
    CHAT_PROMPT,
    STREAM_PROMPT,
    AGENT_PROMPT,
    CITY,
    TOOL_RESULT,
    *EMBED_INPUTS,
    CACHED_PROMPT,
    ERROR_PROMPT,
    *(reply["content"] for reply in CHAT_REPLIES),
    STREAM_REPLY["content"],
    AGENT_REPLIES[1]["content"],
    CACHED_REPLY["content"],
]

# The application: every scenario in a session of its own; prints one JSON line of what it saw.
APP = r"""
import json, os, sys

cfg = json.loads(sys.argv[1])
if cfg["capture"] is not None:
    os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = cfg["capture"]

import openai
from opentelemetry import trace

from otel_sqlite_exporter import configure, session
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

p = cfg["prompts"]
provider = configure(cfg["db"], service_name="integration", instrument=cfg["instrument"])
again = configure(cfg["other_db"], instrument=cfg["instrument"])
mode = os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
out = {
    "same_provider": again is provider,
    "processors": [type(x).__name__ for x in provider._active_span_processor._span_processors],
    "capture": mode,
    "sessions": {},
}
# Tool arguments and results are opt-in content: on the span only when content goes on spans,
# as opentelemetry-util-genai's own ToolInvocation decides.
content_on_spans = (mode or "").upper() in ("SPAN_ONLY", "SPAN_AND_EVENT")
tracer = trace.get_tracer("integration-app")
TOOLS = cfg["tools"]


def chat(client, user, **kwargs):
    messages = [{"role": "system", "content": p["system"]}, {"role": "user", "content": user}]
    try:
        reply = client.chat.completions.create(model=cfg["model"], messages=messages, **kwargs)
    except openai.APIError as exc:
        return type(exc).__name__
    return reply.choices[0].message.content


def run_agent(client):
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "weather-agent"}
    with tracer.start_as_current_span("invoke_agent weather-agent", attributes=attributes):
        messages = [{"role": "system", "content": p["system"]}, {"role": "user", "content": p["agent"]}]
        first = client.chat.completions.create(model=cfg["model"], messages=messages, tools=TOOLS)
        call = first.choices[0].message.tool_calls[0]
        messages.append(first.choices[0].message.model_dump(exclude_none=True))
        tool_attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.function.name,
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.type": "function",
        }
        name = f"execute_tool {call.function.name}"
        with tracer.start_as_current_span(name, attributes=tool_attributes) as span:
            if content_on_spans:
                span.set_attribute("gen_ai.tool.call.arguments", call.function.arguments)
            result = p["tool_result"]
            if content_on_spans:
                span.set_attribute("gen_ai.tool.call.result", result)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        final = client.chat.completions.create(model=cfg["model"], messages=messages, tools=TOOLS)
        return {"tool_call": [call.id, call.function.name, call.function.arguments],
                "answer": final.choices[0].message.content}


with FakeLLMServer([ScriptedReply(**r) for r in cfg["replies"]]) as server:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)

    with session(task="chat", user_id="alice") as s:
        out["sessions"]["chat"] = s.session_id
        out["chat"] = [chat(client, p["chat"]), chat(client, p["chat"])]
    out["chat"].append(chat(client, p["chat"]))  # outside any session

    with session(task="stream", user_id="alice") as s:
        out["sessions"]["stream"] = s.session_id
        stream = client.chat.completions.create(
            model=cfg["model"],
            messages=[{"role": "user", "content": p["stream"]}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage, chunks = [], None, 0
        for chunk in stream:
            chunks += 1
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
        out["stream"] = {"text": "".join(text), "usage": usage, "chunks": chunks}

    with session(task="weather agent", user_id="alice") as s:
        out["sessions"]["agent"] = s.session_id
        out["agent"] = run_agent(client)

    with session(task="embeddings", user_id="alice") as s:
        out["sessions"]["embeddings"] = s.session_id
        reply = client.embeddings.create(model=cfg["embedding_model"], input=p["embed"])
        out["embeddings"] = {"vectors": len(reply.data), "prompt_tokens": reply.usage.prompt_tokens}

    with session(task="cached", user_id="alice") as s:
        out["sessions"]["cached"] = s.session_id
        reply = client.chat.completions.create(
            model=cfg["reasoning_model"], messages=[{"role": "user", "content": p["cached"]}]
        )
        out["cached"] = {
            "prompt_tokens": reply.usage.prompt_tokens,
            "completion_tokens": reply.usage.completion_tokens,
            "cached_tokens": reply.usage.prompt_tokens_details.cached_tokens,
            "reasoning_tokens": reply.usage.completion_tokens_details.reasoning_tokens,
        }

    with session(task="responses", user_id="alice") as s:
        out["sessions"]["responses"] = s.session_id
        out["responses"] = client.responses.create(model=cfg["model"], input=p["responses"]).output_text

    with session(task="error", user_id="alice") as s:
        out["sessions"]["error"] = s.session_id
        out["error"] = chat(client, p["error"])

provider.shutdown()
# What a reader of the file sees once shutdown() has returned, in this process (not at exit).
import sqlite3
with sqlite3.connect(cfg["db"]) as conn:
    out["texts_after_shutdown"] = conn.execute(
        "SELECT count(*) FROM spans WHERE type = 'llm' AND input_text IS NOT NULL"
    ).fetchone()[0]
print(json.dumps(out))
"""

PROMPTS = {
    "system": SYSTEM,
    "chat": CHAT_PROMPT,
    "stream": STREAM_PROMPT,
    "agent": AGENT_PROMPT,
    "tool_result": TOOL_RESULT,
    "embed": EMBED_INPUTS,
    "cached": CACHED_PROMPT,
    "responses": RESPONSES_PROMPT,
    "error": ERROR_PROMPT,
}


def clean_env() -> dict[str, str]:
    """The environment without OTEL_ settings: each run decides what is captured and instrumented.
    The anthropic instrumentation is skipped: importing anthropic would double each run's start-up."""
    return environment(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="anthropic")


def start_app(tmp: Path, capture: str | None, instrument: bool | list[str] = True) -> Run:
    """APP in the background, writing ``tmp/traces.db``."""
    cfg = {
        "other_db": str(tmp / "other.db"),
        "capture": capture,
        "instrument": instrument,
        "model": REQUEST_MODEL,
        "embedding_model": EMBEDDING_MODEL,
        "reasoning_model": REASONING_MODEL,
        "replies": REPLIES,
        "prompts": PROMPTS,
        "tools": OPENAI_TOOLS,
    }
    return start_script(APP, tmp / "traces.db", cfg, clean_env())


def spans_of(run: Run, scenario: str, type_: str | None = None) -> list[sqlite3.Row]:
    """The spans of one of the scenarios APP plays, each in a session of its own."""
    sql = "SELECT * FROM spans WHERE session_id = ?" + (" AND type = ?" if type_ else "")
    params = (run.out["sessions"][scenario], *((type_,) if type_ else ()))
    return run.conn.execute(sql + " ORDER BY start_time_unix_nano", params).fetchall()


def session_of(run: Run, scenario: str) -> sqlite3.Row:
    return run.session(run.out["sessions"][scenario])


def llm_spans(run: Run) -> list[sqlite3.Row]:
    return run.conn.execute("SELECT * FROM spans WHERE type = 'llm' ORDER BY start_time_unix_nano").fetchall()


# None: leave the variable unset, so configure() picks its default (SPAN_ONLY).
MODES: dict[str, str | None] = {
    "default": None,
    "NO_CONTENT": "NO_CONTENT",
    "EVENT_ONLY": "EVENT_ONLY",
    "SPAN_AND_EVENT": "SPAN_AND_EVENT",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    with Runs() as started:
        for name, capture in MODES.items():
            started[name] = start_app(tmp_path_factory.mktemp(name.lower()), capture)
        yield started


@pytest.fixture(scope="module")
def main(runs: Runs) -> Run:
    """configure() with no content setting of the user's: content goes on the spans (SPAN_ONLY)."""
    return runs["default"]


# -- helpers ---------------------------------------------------------------------------------------


def attrs(span: sqlite3.Row) -> dict[str, Any]:
    return json.loads(span["attributes"] or "{}")


def events(span: sqlite3.Row) -> list[dict[str, Any]]:
    return json.loads(span["events"] or "[]")


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def tool_call_arguments(output_text: str) -> Any:
    """The arguments of the one ``assistant: [tool call] get_weather(...)`` line, parsed."""
    prefix = "assistant: [tool call] get_weather("
    (line,) = [line for line in output_text.splitlines() if line.startswith(prefix)]
    assert line.endswith(")"), line
    return json.loads(line[len(prefix) : -1])


# -- 1. chat completions ---------------------------------------------------------------------------


def test_chat_span_has_model_provider_tokens_cost_duration(main: Run) -> None:
    assert main.out["chat"] == [reply["content"] for reply in CHAT_REPLIES]
    chat_spans = spans_of(main, "chat") + [
        span for span in llm_spans(main) if span["session_id"] not in main.out["sessions"].values()
    ]
    assert len(chat_spans) == 3
    for span, reply in zip(chat_spans, CHAT_REPLIES, strict=True):
        assert span["name"] == f"chat {REQUEST_MODEL}"
        assert span["type"] == "llm"
        assert span["operation"] == "chat"
        assert span["model"] == RESPONSE_MODEL
        assert span["provider"] == "openai"
        assert span["kind"] == "client"
        assert span["status_code"] == "UNSET"
        assert span["scope_name"] == HANDLER_SCOPE
        assert (span["input_tokens"], span["output_tokens"]) == (
            reply["prompt_tokens"],
            reply["completion_tokens"],
        )
        assert span["cache_read_tokens"] is None and span["reasoning_tokens"] is None
        assert span["cost_usd"] == pytest.approx(
            cost(
                RESPONSE_MODEL, input_tokens=reply["prompt_tokens"], output_tokens=reply["completion_tokens"]
            ),
            rel=1e-9,
        )
        assert span["end_time_unix_nano"] > span["start_time_unix_nano"]
        assert span["duration_ms"] == pytest.approx(
            (span["end_time_unix_nano"] - span["start_time_unix_nano"]) / 1e6
        )
        assert span["duration_ms"] > 0
        assert attrs(span)["gen_ai.request.model"] == REQUEST_MODEL
        # Content on the span: configure() asked for SPAN_ONLY when the user set nothing.
        assert span["input_text"] == f"system: {SYSTEM}\nuser: {CHAT_PROMPT}"
        assert span["output_text"] == f"assistant: {reply['content']}"


def test_chat_calls_inside_session_belong_to_it(main: Run) -> None:
    assert main.out["capture"] == "SPAN_ONLY"
    inside = spans_of(main, "chat")
    assert len(inside) == 2
    assert all(attrs(span)["user.id"] == "alice" for span in inside)
    row = session_of(main, "chat")
    assert row["task"] == "chat"
    assert row["user_id"] == "alice"
    assert row["status"] == "completed"
    assert row["service_name"] == "integration"
    assert row["span_count"] == 2
    assert row["error_count"] == 0
    first, second = CHAT_REPLIES[:2]
    assert (row["input_tokens"], row["output_tokens"]) == (
        first["prompt_tokens"] + second["prompt_tokens"],
        first["completion_tokens"] + second["completion_tokens"],
    )
    assert row["cost_usd"] == pytest.approx(sum(span["cost_usd"] for span in inside), rel=1e-9)
    # Outside any session() the trace becomes its own session.
    (outside,) = [span for span in llm_spans(main) if span["session_id"] not in main.out["sessions"].values()]
    assert outside["session_id"] == outside["trace_id"]
    assert outside["input_tokens"] == CHAT_REPLIES[2]["prompt_tokens"]


def test_configure_twice_same_provider_one_processor(main: Run) -> None:
    assert main.out["same_provider"] is True
    assert main.out["processors"].count("SQLiteSpanProcessor") == 1
    # Every span row exactly once (3 chat, 1 stream, 4 agent, 1 embeddings, 1 cached, 1 error),
    # and the rollups count each span once.
    assert main.conn.execute("SELECT count(*) FROM spans").fetchone()[0] == 11
    assert main.conn.execute("SELECT sum(span_count) FROM sessions").fetchone()[0] == 11


def test_second_configure_with_other_path_writes_nothing_there(main: Run) -> None:
    assert not (main.db.parent / "other.db").exists()


def test_one_instrumentor_per_client_openai_v2_by_default(main: Run) -> None:
    # Meaningful only when the competing instrumentations are installed too.
    pytest.importorskip("opentelemetry.instrumentation.openai")
    pytest.importorskip("openinference.instrumentation.openai")
    scopes = {
        row[0] for row in main.conn.execute("SELECT DISTINCT scope_name FROM spans WHERE type != 'agent'")
    }
    # Not OpenLLMetry (opentelemetry.instrumentation.openai.v1) nor OpenInference: one span per call.
    assert scopes == {HANDLER_SCOPE, EMBEDDINGS_SCOPE, "integration-app"}
    for span in llm_spans(main):
        assert "openinference.span.kind" not in attrs(span)


# -- 2. streaming ----------------------------------------------------------------------------------


def test_stream_is_one_span_with_whole_text_and_reported_usage(main: Run) -> None:
    seen = main.out["stream"]
    # What the application received: the scripted text, in several chunks, and the usage chunk.
    assert seen["text"] == STREAM_REPLY["content"]
    assert seen["chunks"] > 2
    assert seen["usage"] == [STREAM_REPLY["prompt_tokens"], STREAM_REPLY["completion_tokens"]]
    (span,) = spans_of(main, "stream")
    assert span["type"] == "llm"
    assert span["name"] == f"chat {REQUEST_MODEL}"
    assert span["model"] == RESPONSE_MODEL
    assert (span["input_tokens"], span["output_tokens"]) == tuple(seen["usage"])
    assert span["cost_usd"] == pytest.approx(
        cost(RESPONSE_MODEL, input_tokens=seen["usage"][0], output_tokens=seen["usage"][1]), rel=1e-9
    )
    assert span["input_text"] == f"user: {STREAM_PROMPT}"
    assert span["output_text"] == f"assistant: {STREAM_REPLY['content']}"
    # No per-chunk span events: the stream is one span, its text consolidated.
    assert events(span) == []
    row = session_of(main, "stream")
    assert (row["span_count"], row["input_tokens"], row["output_tokens"]) == (1, *seen["usage"])


# -- 3. a tool-calling agent -----------------------------------------------------------------------


def agent_spans(run: Run) -> tuple[sqlite3.Row, sqlite3.Row, sqlite3.Row, sqlite3.Row]:
    spans = spans_of(run, "agent")
    assert [span["type"] for span in spans] == ["agent", "llm", "tool", "llm"], [dict(s) for s in spans]
    agent, first, tool, second = spans
    return agent, first, tool, second


def test_agent_tree_types_and_structure(main: Run) -> None:
    agent, first, tool, second = agent_spans(main)
    assert agent["name"] == "invoke_agent weather-agent"
    assert agent["parent_span_id"] is None and agent["is_root"] == 1
    assert agent["operation"] == "invoke_agent"
    for child in (first, tool, second):
        assert child["parent_span_id"] == agent["span_id"]
        assert child["trace_id"] == agent["trace_id"]
        assert child["end_time_unix_nano"] is not None
    # The steps ran in order, inside the agent span.
    assert agent["start_time_unix_nano"] <= first["start_time_unix_nano"]
    assert first["end_time_unix_nano"] <= tool["start_time_unix_nano"]
    assert tool["end_time_unix_nano"] <= second["start_time_unix_nano"]
    assert second["end_time_unix_nano"] <= agent["end_time_unix_nano"]
    assert (agent["input_tokens"], agent["cost_usd"]) == (None, None)


def test_agent_tool_span_follows_genai_conventions(main: Run) -> None:
    _, _, tool, _ = agent_spans(main)
    call_id, name, arguments = main.out["agent"]["tool_call"]
    assert (call_id, name, json.loads(arguments)) == ("call_1", "get_weather", {"city": CITY})
    assert tool["name"] == "execute_tool get_weather"
    assert tool["operation"] == "execute_tool"
    assert tool["kind"] == "internal"
    tool_attrs = attrs(tool)
    assert tool_attrs["gen_ai.tool.name"] == "get_weather"
    assert tool_attrs["gen_ai.tool.call.id"] == call_id
    assert json.loads(tool_attrs["gen_ai.tool.call.arguments"]) == {"city": CITY}
    assert tool_attrs["gen_ai.tool.call.result"] == TOOL_RESULT
    assert json.loads(tool["input_text"]) == {"city": CITY}
    assert tool["output_text"] == TOOL_RESULT
    assert (tool["model"], tool["input_tokens"], tool["cost_usd"]) == (None, None, None)


def test_agent_llm_spans_carry_the_tool_call_and_result(main: Run) -> None:
    _, first, _, second = agent_spans(main)
    assert main.out["agent"]["answer"] == AGENT_REPLIES[1]["content"]
    for span, reply in zip((first, second), AGENT_REPLIES, strict=True):
        assert span["model"] == RESPONSE_MODEL
        assert (span["input_tokens"], span["output_tokens"]) == (
            reply["prompt_tokens"],
            reply["completion_tokens"],
        )
    assert first["input_text"] == f"system: {SYSTEM}\nuser: {AGENT_PROMPT}"
    assert tool_call_arguments(first["output_text"]) == {"city": CITY}
    assert attrs(first)["gen_ai.response.finish_reasons"] == ["tool_calls"]
    # The second call sends the whole conversation back, the tool result included.
    lines = second["input_text"].splitlines()
    assert lines[:2] == [f"system: {SYSTEM}", f"user: {AGENT_PROMPT}"]
    assert tool_call_arguments(lines[2]) == {"city": CITY}
    assert lines[3] == f"tool: [tool result] {TOOL_RESULT}"
    assert second["output_text"] == f"assistant: {AGENT_REPLIES[1]['content']}"


def test_agent_session_totals_are_the_two_calls(main: Run) -> None:
    _, first, _, second = agent_spans(main)
    row = session_of(main, "agent")
    assert row["task"] == "weather agent"
    assert row["status"] == "completed"
    assert row["span_count"] == 4
    assert row["input_tokens"] == sum(reply["prompt_tokens"] for reply in AGENT_REPLIES)
    assert row["output_tokens"] == sum(reply["completion_tokens"] for reply in AGENT_REPLIES)
    expected = sum(
        cost(RESPONSE_MODEL, input_tokens=r["prompt_tokens"], output_tokens=r["completion_tokens"])
        for r in AGENT_REPLIES
    )
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert first["cost_usd"] + second["cost_usd"] == pytest.approx(expected, rel=1e-9)
    trace = main.conn.execute("SELECT * FROM traces WHERE trace_id = ?", (first["trace_id"],)).fetchone()
    assert trace["root_span_name"] == "invoke_agent weather-agent"
    assert (trace["input_tokens"], trace["output_tokens"]) == (row["input_tokens"], row["output_tokens"])


# -- 4. embeddings ---------------------------------------------------------------------------------


def test_embeddings_span(main: Run) -> None:
    assert main.out["embeddings"] == {
        "vectors": len(EMBED_INPUTS),
        "prompt_tokens": EMBED_REPLY["prompt_tokens"],
    }
    (span,) = spans_of(main, "embeddings")
    assert span["name"] == f"embeddings {EMBEDDING_MODEL}"
    assert span["type"] == "embedding"
    assert span["operation"] == "embeddings"
    assert span["scope_name"] == EMBEDDINGS_SCOPE
    assert (span["model"], span["provider"]) == (EMBEDDING_MODEL, "openai")
    assert (span["input_tokens"], span["output_tokens"]) == (EMBED_REPLY["prompt_tokens"], None)
    assert PriceTable().lookup(EMBEDDING_MODEL) is not None
    assert span["cost_usd"] == pytest.approx(
        cost(EMBEDDING_MODEL, input_tokens=EMBED_REPLY["prompt_tokens"]), rel=1e-9
    )
    assert attrs(span)["gen_ai.embeddings.dimension.count"] == 8
    # openai-v2 2.4 records no embedding input, in any content mode.
    assert span["input_text"] is None and span["output_text"] is None
    row = session_of(main, "embeddings")
    assert (row["input_tokens"], row["cost_usd"]) == (
        EMBED_REPLY["prompt_tokens"],
        pytest.approx(span["cost_usd"]),
    )


# -- 5. an API error -------------------------------------------------------------------------------


def test_api_error_is_recorded_and_reaches_the_app(main: Run) -> None:
    # Tracing does not swallow the exception: the application saw openai's own class.
    assert main.out["error"] == "InternalServerError"
    (span,) = spans_of(main, "error")
    assert span["type"] == "llm"
    assert span["status_code"] == "ERROR"
    assert ERROR_MESSAGE in span["status_message"]
    assert span["end_time_unix_nano"] is not None
    assert (span["input_tokens"], span["output_tokens"], span["cost_usd"]) == (None, None, None)
    # openai-v2 2.4b0 passes the exception class where a string belongs (error.type is then
    # "<class 'openai.InternalServerError'>"; the conventions want "openai.InternalServerError").
    assert "openai.InternalServerError" in attrs(span)["error.type"]
    assert span["input_text"] == f"system: {SYSTEM}\nuser: {ERROR_PROMPT}"
    assert span["output_text"] is None
    row = session_of(main, "error")
    assert row["error_count"] == 1
    # The errored LLM span is the root of its trace: the session is failed.
    assert row["status"] == "failed"


# -- 7. cached and reasoning tokens, the Responses API ---------------------------------------------


def test_cached_and_reasoning_tokens_are_not_reported(main: Run) -> None:
    # The response carried them...
    assert main.out["cached"] == {
        key: CACHED_REPLY[key]
        for key in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")
    }
    (span,) = spans_of(main, "cached")
    # ...openai-v2 2.4b0 drops them for chat completions: no usage detail attribute at all.
    assert not [key for key in attrs(span) if "cache" in key or "reasoning" in key]
    assert (span["cache_read_tokens"], span["cache_write_tokens"], span["reasoning_tokens"]) == (
        None,
        None,
        None,
    )
    assert (span["input_tokens"], span["output_tokens"]) == (
        CACHED_REPLY["prompt_tokens"],
        CACHED_REPLY["completion_tokens"],
    )
    # So the cost bills every prompt token at the full input price (an overestimate here).
    full = cost(
        REASONING_RESPONSE_MODEL,
        input_tokens=CACHED_REPLY["prompt_tokens"],
        output_tokens=CACHED_REPLY["completion_tokens"],
    )
    assert span["cost_usd"] == pytest.approx(full, rel=1e-9)
    with_cache = PriceTable().cost(
        REASONING_RESPONSE_MODEL,
        input_tokens=CACHED_REPLY["prompt_tokens"],
        output_tokens=CACHED_REPLY["completion_tokens"],
        cache_read_tokens=CACHED_REPLY["cached_tokens"],
        reasoning_tokens=CACHED_REPLY["reasoning_tokens"],
    )
    assert with_cache is not None and with_cache < full


def test_responses_api_is_not_traced(main: Run) -> None:
    # openai-v2 2.4b0 wraps chat completions and embeddings only.
    assert main.out["responses"] == RESPONSES_REPLY["content"]
    assert spans_of(main, "responses") == []
    assert session_of(main, "responses")["span_count"] == 0


# -- 6. content capture modes ----------------------------------------------------------------------


def whole_file_text(conn: sqlite3.Connection) -> str:
    return "\n".join(conn.iterdump())


def test_span_only_puts_messages_on_spans_only(main: Run) -> None:
    for span in llm_spans(main):
        span_attrs = attrs(span)
        assert isinstance(span_attrs["gen_ai.input.messages"], str)  # a JSON string, per the conventions
        assert span["input_text"]
        assert DETAILS_EVENT not in [event["name"] for event in events(span)]
    if has_table(main.conn, "logs"):
        assert main.conn.execute("SELECT count(*) FROM logs").fetchone()[0] == 0


def test_no_content_stores_no_prompt_anywhere(runs: Runs) -> None:
    run = runs["NO_CONTENT"]
    assert run.out["capture"] == "NO_CONTENT"
    # The calls are traced all the same: types, models and tokens.
    assert [span["type"] for span in spans_of(run, "agent")] == ["agent", "llm", "tool", "llm"]
    assert [span["input_tokens"] for span in spans_of(run, "agent", "llm")] == [
        r["prompt_tokens"] for r in AGENT_REPLIES
    ]
    for span in llm_spans(run):
        assert span["input_text"] is None and span["output_text"] is None
        assert not set(MESSAGE_KEYS) & set(attrs(span))
        assert DETAILS_EVENT not in [event["name"] for event in events(span)]
    # Nowhere in the file: no table, no column, no attribute or event JSON, no log record.
    dump = whole_file_text(run.conn)
    assert [marker for marker in CONTENT_MARKERS if marker in dump] == []
    if has_table(run.conn, "logs"):
        assert run.conn.execute("SELECT count(*) FROM logs").fetchone()[0] == 0


def check_event_content(run: Run, *, on_spans: bool) -> None:
    """Every chat span has its messages in input_text/output_text (from the log record) and the
    details event in its events, whatever else the mode puts on the span."""
    chat_spans = [span for span in llm_spans(run) if span["session_id"] != run.out["sessions"]["error"]]
    assert len(chat_spans) == 7
    for span in chat_spans:
        span_attrs = attrs(span)
        details = [event for event in events(span) if event["name"] == DETAILS_EVENT]
        assert len(details) == 1, (span["name"], events(span))
        # The event is this call's: same response id, same usage.
        assert details[0]["attributes"]["gen_ai.response.id"] == span_attrs["gen_ai.response.id"]
        assert details[0]["attributes"]["gen_ai.usage.input_tokens"] == span["input_tokens"]
        if on_spans:
            assert isinstance(span_attrs["gen_ai.input.messages"], str)
            assert isinstance(span_attrs["gen_ai.output.messages"], str)
        else:
            assert not set(MESSAGE_KEYS) & set(span_attrs), span_attrs

    (stream,) = spans_of(run, "stream")
    assert stream["input_text"] == f"user: {STREAM_PROMPT}"
    assert stream["output_text"] == f"assistant: {STREAM_REPLY['content']}"
    for span, reply in zip(spans_of(run, "chat"), CHAT_REPLIES, strict=False):
        assert span["input_text"] == f"system: {SYSTEM}\nuser: {CHAT_PROMPT}"
        assert span["output_text"] == f"assistant: {reply['content']}"
    _, first, tool, second = agent_spans(run)
    assert first["input_text"] == f"system: {SYSTEM}\nuser: {AGENT_PROMPT}"
    assert tool_call_arguments(first["output_text"]) == {"city": CITY}
    lines = second["input_text"].splitlines()
    assert lines[:2] == [f"system: {SYSTEM}", f"user: {AGENT_PROMPT}"]
    assert tool_call_arguments(lines[2]) == {"city": CITY}
    assert lines[3] == f"tool: [tool result] {TOOL_RESULT}"
    assert second["output_text"] == f"assistant: {AGENT_REPLIES[1]['content']}"
    # Tool arguments and results are on the tool span only when content goes on spans.
    assert ("gen_ai.tool.call.result" in attrs(tool)) is on_spans
    # A failed call's record carries its prompt, and no answer.
    (error,) = spans_of(run, "error")
    assert error["status_code"] == "ERROR"
    assert error["input_text"] == f"system: {SYSTEM}\nuser: {ERROR_PROMPT}"
    assert error["output_text"] is None
    assert [event["name"] for event in events(error)].count(DETAILS_EVENT) == 1
    # Nothing said twice: each message once in the text, however many places it arrived from.
    for span in (first, second):
        assert span["input_text"].count(AGENT_PROMPT) == 1
    assert second["output_text"].count(AGENT_REPLIES[1]["content"]) == 1
    # The details records were attached to their spans, not kept as loose log records.
    if has_table(run.conn, "logs"):
        loose = run.conn.execute(
            "SELECT count(*) FROM logs WHERE event_name = ?", (DETAILS_EVENT,)
        ).fetchone()[0]
        assert loose == 0
    # Usage still comes from the spans and is counted once.
    row = session_of(run, "agent")
    assert row["input_tokens"] == sum(reply["prompt_tokens"] for reply in AGENT_REPLIES)


def test_event_only_messages_reach_the_span_from_log_records(runs: Runs) -> None:
    run = runs["EVENT_ONLY"]
    assert run.out["capture"] == "EVENT_ONLY"
    check_event_content(run, on_spans=False)


def test_event_only_content_is_in_the_file_when_shutdown_returns(runs: Runs) -> None:
    # provider.shutdown() is how an application flushes before it reads the file (or exits):
    # the messages sent as log records must be there by then too, not only once the interpreter exits.
    run = runs["EVENT_ONLY"]
    spans = llm_spans(run)
    assert len(spans) == 8 and all(span["input_text"] for span in spans)
    assert run.out["texts_after_shutdown"] == len(spans)


def test_span_and_event_does_not_duplicate_text(runs: Runs) -> None:
    run = runs["SPAN_AND_EVENT"]
    assert run.out["capture"] == "SPAN_AND_EVENT"
    check_event_content(run, on_spans=True)


# -- 6b. the same through opentelemetry-instrument and the sqlite exporters ------------------------

PLUGIN_APP = r"""
import json, sys
import openai
from opentelemetry import trace
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

cfg = json.loads(sys.argv[1])
tracer = trace.get_tracer("plugin-app")
with FakeLLMServer([ScriptedReply(**r) for r in cfg["replies"]]) as server:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
    agent = {"gen_ai.operation.name": "invoke_agent"}
    with tracer.start_as_current_span("invoke_agent plugin-agent", attributes=agent):
        system = {"role": "system", "content": cfg["system"]}
        user = {"role": "user", "content": cfg["prompt"]}
        reply = client.chat.completions.create(model=cfg["model"], messages=[system, user])
        stream = client.chat.completions.create(
            model=cfg["model"],
            messages=[{"role": "user", "content": cfg["stream_prompt"]}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
print(json.dumps({"answer": reply.choices[0].message.content, "stream": text}))
"""


def test_opentelemetry_instrument_with_sqlite_exporters_event_only(tmp_path: Path) -> None:
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    if not instrument.exists():
        found = shutil.which("opentelemetry-instrument")
        if found is None:
            pytest.skip("opentelemetry-instrument is not installed (opentelemetry-instrumentation)")
        instrument = Path(found)
    if importlib.util.find_spec("opentelemetry.distro") is None:
        pytest.skip("opentelemetry-distro is not installed")
    assert "sqlite" in {ep.name for ep in entry_points(group="opentelemetry_logs_exporter")}, (
        "no 'sqlite' entry point in opentelemetry_logs_exporter: is the package installed (pip install -e .)?"
    )
    db = tmp_path / "plugin.db"
    (tmp_path / "app.py").write_text(PLUGIN_APP)
    replies = [
        {
            "content": "Hello from the plugin.",
            "prompt_tokens": 19,
            "completion_tokens": 6,
            "model": RESPONSE_MODEL,
        },
        {"content": "Streamed through the plugin.", "prompt_tokens": 7, "completion_tokens": 5},
    ]
    cfg = {
        "replies": replies,
        "model": REQUEST_MODEL,
        "system": SYSTEM,
        "prompt": CHAT_PROMPT,
        "stream_prompt": STREAM_PROMPT,
    }
    env = {
        **clean_env(),
        "OTEL_TRACES_EXPORTER": "sqlite",
        "OTEL_LOGS_EXPORTER": "sqlite",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_EXPORTER_SQLITE_PATH": str(db),
        "OTEL_SERVICE_NAME": "plugin-app",
        CAPTURE_ENV: "EVENT_ONLY",
    }
    proc = subprocess.run(
        [str(instrument), sys.executable, "app.py", json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"answer": replies[0]["content"], "stream": replies[1]["content"]}
    assert db.exists(), proc.stderr
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        # opentelemetry-instrument activates every installed openai instrumentation (they share the
        # entry point name "openai"): look at openai-v2's spans.
        spans = conn.execute(
            "SELECT * FROM spans WHERE scope_name = ? ORDER BY start_time_unix_nano", (HANDLER_SCOPE,)
        ).fetchall()
        assert len(spans) == 2, proc.stderr
        (agent,) = conn.execute("SELECT * FROM spans WHERE name = 'invoke_agent plugin-agent'").fetchall()
        for span, reply in zip(spans, replies, strict=True):
            assert span["trace_id"] == agent["trace_id"]
            assert span["session_id"] == agent["trace_id"]  # no session(): the trace is the session
            assert span["type"] == "llm"
            assert (span["input_tokens"], span["output_tokens"]) == (
                reply["prompt_tokens"],
                reply["completion_tokens"],
            )
            assert not set(MESSAGE_KEYS) & set(attrs(span))
            assert [event["name"] for event in events(span)].count(DETAILS_EVENT) == 1
        chat, stream = spans
        assert chat["input_text"] == f"system: {SYSTEM}\nuser: {CHAT_PROMPT}"
        assert chat["output_text"] == f"assistant: {replies[0]['content']}"
        assert stream["input_text"] == f"user: {STREAM_PROMPT}"
        assert stream["output_text"] == f"assistant: {replies[1]['content']}"
        (service,) = {row[0] for row in conn.execute("SELECT service_name FROM sessions")}
        assert service == "plugin-app"
        if has_table(conn, "logs"):
            loose = conn.execute(
                "SELECT count(*) FROM logs WHERE event_name = ?", (DETAILS_EVENT,)
            ).fetchone()[0]
            assert loose == 0
    finally:
        conn.close()


# -- configure()'s choice of instrumentation -------------------------------------------------------


def run_single(tmp_path: Path, instrument: bool | list[str]) -> tuple[dict[str, Any], list[sqlite3.Row]]:
    with start_app(tmp_path, "SPAN_ONLY", instrument) as run:
        return run.out, run.conn.execute(
            "SELECT * FROM spans WHERE session_id = ?", (run.out["sessions"]["chat"],)
        ).fetchall()


def test_instrument_list_prefers_openinference(tmp_path: Path) -> None:
    pytest.importorskip("openinference.instrumentation.openai")
    out, spans = run_single(tmp_path, ["openinference-instrumentation-openai"])
    assert out["chat"][:2] == [reply["content"] for reply in CHAT_REPLIES[:2]]
    assert len(spans) == 2, [dict(s) for s in spans]
    for span, reply in zip(spans, CHAT_REPLIES, strict=False):
        assert attrs(span)["openinference.span.kind"] == "LLM"
        assert span["type"] == "llm"
        assert span["model"] == RESPONSE_MODEL
        assert span["provider"] == "openai"
        assert (span["input_tokens"], span["output_tokens"]) == (
            reply["prompt_tokens"],
            reply["completion_tokens"],
        )
        assert span["session_id"] == out["sessions"]["chat"]


def test_instrument_false_records_no_llm_span(tmp_path: Path) -> None:
    out, spans = run_single(tmp_path, False)
    assert out["chat"][:2] == [reply["content"] for reply in CHAT_REPLIES[:2]]
    assert spans == []


LAZY_APP = r"""
import json, sys

from otel_sqlite_exporter import configure

cfg = json.loads(sys.argv[1])
provider = configure(cfg["db"])
imported_by_configure = sorted(m for m in ("openai", "anthropic") if m in sys.modules)

import openai  # after configure(): instrumented as it is imported
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

with FakeLLMServer([ScriptedReply(**r) for r in cfg["replies"]]) as server:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
    reply = client.chat.completions.create(model=cfg["model"], messages=[{"role": "user", "content": "hi"}])
provider.shutdown()
answer = reply.choices[0].message.content
print(json.dumps({"imported_by_configure": imported_by_configure, "answer": answer}))
"""


def test_configure_imports_no_client_library_and_instruments_one_imported_later(tmp_path: Path) -> None:
    # Importing every installed client library took configure() seconds; each is instrumented when
    # the application imports it instead, and its calls are traced the same.
    cfg = {"replies": REPLIES[:1], "model": REQUEST_MODEL}
    with start_script(LAZY_APP, tmp_path / "traces.db", cfg, clean_env()) as run:
        assert run.out == {"imported_by_configure": [], "answer": CHAT_REPLIES[0]["content"]}
        (span,) = run.conn.execute("SELECT * FROM spans WHERE type = 'llm'").fetchall()
        assert (span["model"], span["provider"]) == (RESPONSE_MODEL, "openai")
        assert (span["input_tokens"], span["output_tokens"]) == (
            CHAT_REPLIES[0]["prompt_tokens"],
            CHAT_REPLIES[0]["completion_tokens"],
        )


def test_each_installed_instrumentation_waits_for_an_importable_client_package() -> None:
    # The packages configure() watches come from each instrumentation's own requirements.
    chosen = genai_instrumentors()
    assert {"openai", "anthropic"} <= set(chosen)
    for ep in chosen.values():
        assert ep.dist is not None
        modules = _client_modules(ep.dist)
        assert modules, ep.dist.name
        assert all(importlib.util.find_spec(module) is not None for module in modules), modules
    assert _client_modules(chosen["openai"].dist) == ["openai"]  # type: ignore[arg-type]


def test_genai_instrumentors_picks_openai_v2_for_openai() -> None:
    chosen = genai_instrumentors()
    assert "openai" in chosen
    dist = chosen["openai"].dist
    assert dist is not None
    assert dist.name.lower().replace("_", "-") == "opentelemetry-instrumentation-openai-v2"


# -- the example -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``python examples/openai_v2.py example.db``, run once: its folder and what it printed."""
    folder = tmp_path_factory.mktemp("example")
    return folder, run_example("openai_v2", folder / "example.db", clean_env())


def test_example_openai_v2(example_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    example = load_example("openai_v2")
    folder, proc = example_run
    db = folder / "example.db"
    assert example.FINAL_ANSWER in proc.stdout  # streamed to the terminal as it arrived
    for line in (
        "[agent] invoke_agent packing-assistant",
        "[embedding] embeddings",
        "[tool] execute_tool get_weather",
    ):
        assert line in proc.stdout, proc.stdout
    assert not (folder / "traces.db").exists()

    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        (session,) = conn.execute("SELECT * FROM sessions").fetchall()
        assert (session["task"], session["user_id"], session["status"]) == (
            example.TASK,
            "demo-user",
            "completed",
        )
        spans = conn.execute("SELECT * FROM spans ORDER BY start_time_unix_nano").fetchall()
        assert [span["type"] for span in spans] == ["agent", "embedding", "llm", "tool", "llm"]
        agent, embedding, first, tool, second = spans
        assert all(span["parent_span_id"] == agent["span_id"] for span in spans[1:])
        assert all(span["session_id"] == session["session_id"] for span in spans)

        script = example.SCRIPT
        assert embedding["input_tokens"] == script[0].prompt_tokens
        assert [(s["input_tokens"], s["output_tokens"]) for s in (first, second)] == [
            (reply.prompt_tokens, reply.completion_tokens) for reply in script[1:]
        ]
        assert session["input_tokens"] == sum(reply.prompt_tokens for reply in script)
        assert session["output_tokens"] == sum(reply.completion_tokens for reply in script[1:])
        expected = cost(embedding["model"], input_tokens=script[0].prompt_tokens) + sum(
            cost(s["model"], input_tokens=s["input_tokens"], output_tokens=s["output_tokens"])
            for s in (first, second)
        )
        assert session["cost_usd"] == pytest.approx(expected, rel=1e-9)
        # SPAN_ONLY (configure()'s default): the conversation, the tool call and the streamed answer.
        assert f"user: {example.TASK}" in first["input_text"]
        assert tool_call_arguments(first["output_text"]) == script[1].tool_calls[0]["arguments"]
        assert attrs(tool)["gen_ai.tool.name"] == "get_weather"
        assert json.loads(tool["input_text"]) == script[1].tool_calls[0]["arguments"]
        assert f"tool: [tool result] {tool['output_text']}" in second["input_text"]
        assert second["output_text"] == f"assistant: {example.FINAL_ANSWER}"
    finally:
        conn.close()


def test_example_run_again_into_the_same_file_counts_its_own_usage(
    example_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    # Each run of the example starts its own fake server, whose response ids (chatcmpl-fake-1, ...)
    # are the same every time; a second session in the same file is still a different model call.
    folder, _ = example_run
    db = tmp_path / "twice.db"
    source = sqlite3.connect(folder / "example.db")
    try:
        with sqlite3.connect(db) as copy:
            source.backup(copy)
    finally:
        source.close()
    copy.close()
    run_example("openai_v2", db, clean_env())
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT input_tokens, output_tokens, cost_usd FROM sessions ORDER BY start_time_unix_nano"
        ).fetchall()
    finally:
        conn.close()
    assert len(rows) == 2
    assert rows[0] == rows[1]
