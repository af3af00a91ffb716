"""The ``anthropic`` client traced by OpenLLMetry's ``opentelemetry-instrumentation-anthropic`` (chosen
with ``configure(instrument=[...])``), beside the span the anthropic client (2.x) records itself for
the same call, against FakeLLMServer's Messages API.

Instrumentation is process-global, so each scenario runs in a fresh interpreter of its own (all of
them started at once, see ``runs``) and the tests read the SQLite file it wrote.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scenarios import Run, Runs, cost, environment, load_example, start_example, start_script

from otel_sqlite_exporter import TraceStore

pytest.importorskip("anthropic")
pytest.importorskip("opentelemetry.instrumentation.anthropic")

DIST = "opentelemetry-instrumentation-anthropic"
SCOPE = "opentelemetry.instrumentation.anthropic"  # OpenLLMetry's spans: anthropic.chat
CLIENT_SCOPE = "com.anthropic.sdk.python"  # the anthropic client's own: anthropic.messages.create
# A model the price table knows and the anthropic client does not warn about as deprecated.
MODEL = "claude-haiku-4-5"
RESPONSE_MODEL = "claude-haiku-4-5-20251001"
# The real Messages API (and the fake server) put a placeholder output_tokens of 1 in message_start;
# OpenLLMetry 0.62.4 adds it to the final count of message_delta.
STREAM_EXTRA_OUTPUT_TOKENS = 1

# The app side of every scenario: runs each of cfg["sessions"] (a task and its steps) against a
# FakeLLMServer scripted with cfg["replies"] and prints one JSON line with what the application saw.
APP = r"""
import json, sys
import anthropic
from opentelemetry import trace
from otel_sqlite_exporter import configure, session
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

cfg = json.loads(sys.argv[1])
provider = configure(cfg["db"], service_name="anthropic-test", instrument=cfg["instrument"])
tracer = trace.get_tracer("anthropic-test-app")
TOOLS = [{
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]

def text_of(message):
    return "".join(block.text for block in message.content if block.type == "text")

def run(client, step):
    kind, model = step["call"], cfg["model"]
    kwargs = {"model": model, "max_tokens": 2048, "messages": step.get("messages", [])}
    if "system" in step:
        kwargs["system"] = step["system"]
    if step.get("thinking"):
        kwargs["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    try:
        if kind == "create":
            message = client.messages.create(**kwargs)
            thinking = [block.thinking for block in message.content if block.type == "thinking"]
            return {"text": text_of(message), "thinking": thinking, "id": message.id}
        if kind == "stream":
            events = list(client.messages.create(**kwargs, stream=True))
            deltas = [e.delta for e in events if e.type == "content_block_delta"]
            text = "".join(d.text for d in deltas if d.type == "text_delta")
            (delta,) = [e for e in events if e.type == "message_delta"]
            return {"text": text, "output_tokens": delta.usage.output_tokens, "events": len(events)}
        if kind == "helper":
            with client.messages.stream(**kwargs) as stream:
                text = "".join(stream.text_stream)
                final = stream.get_final_message()
            return {"text": text, "output_tokens": final.usage.output_tokens, "id": final.id}
        if kind == "agent":
            return agent(client, kwargs)
    except anthropic.APIError as exc:
        return {"error": type(exc).__name__, "status": getattr(exc, "status_code", None)}
    raise ValueError(kind)

def agent(client, kwargs):
    # A hand-written agent loop: the model asks for a tool, the tool runs, the model answers.
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "weather-agent"}
    with tracer.start_as_current_span("invoke_agent weather-agent", attributes=attributes):
        messages = list(kwargs.pop("messages"))
        reply = client.messages.create(**kwargs, messages=messages, tools=TOOLS)
        (call,) = [block for block in reply.content if block.type == "tool_use"]
        messages.append({"role": "assistant", "content": reply.content})
        tool_attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.name,
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.call.arguments": json.dumps(call.input),
        }
        with tracer.start_as_current_span(f"execute_tool {call.name}", attributes=tool_attributes) as span:
            result = json.dumps({"city": call.input["city"], "conditions": "sunny", "temperature_c": 22})
            span.set_attribute("gen_ai.tool.call.result", result)
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}]}
        )
        final = client.messages.create(**kwargs, messages=messages, tools=TOOLS)
        return {"tool_call": [call.id, call.name, call.input], "text": text_of(final)}

out = {"sessions": []}
with FakeLLMServer([ScriptedReply(**r) for r in cfg["replies"]]) as server:
    client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test", max_retries=0)
    for spec in cfg["sessions"]:
        with session(task=spec["task"], user_id="alice") as s:
            results = [run(client, step) for step in spec["steps"]]
        out["sessions"].append({"id": s.session_id, "results": results})
provider.shutdown()
print(json.dumps(out))
"""

SAY_HI = {"system": "Be brief.", "messages": [{"role": "user", "content": "Say hi"}]}
SIX_SEVENS = {"messages": [{"role": "user", "content": "What is 6*7?"}], "thinking": True}
COUNT = {"messages": [{"role": "user", "content": "Count to five"}]}
HAIKU = {"messages": [{"role": "user", "content": "A haiku about rain"}], "thinking": True}
WEATHER = {"messages": [{"role": "user", "content": "Weather in Paris?"}]}
FAIL = {"messages": [{"role": "user", "content": "Fail please"}]}

THINKING = "Six sevens: seven, fourteen, twenty-one, ... forty-two. Carefully multiplied."
HAIKU_THINKING = "Five, seven, five syllables; rain on a tin roof."
# A prompt-cached call: Anthropic's input_tokens (20) leaves out the 1000 tokens read from the
# cache and the 300 written to it; the instrumentations report the whole prompt, 1320.
SAY_HI_REPLY = {
    "content": "Hi there!",
    "prompt_tokens": 20,
    "completion_tokens": 5,
    "cached_tokens": 1000,
    "cache_write_tokens": 300,
    "model": RESPONSE_MODEL,
}
SAY_HI_TOKENS = {
    "input_tokens": 1320,
    "output_tokens": 5,
    "cache_read_tokens": 1000,
    "cache_write_tokens": 300,
}
THINKING_REPLY = {
    "content": "42.",
    "reasoning": THINKING,
    "prompt_tokens": 15,
    "completion_tokens": 30,
    "reasoning_tokens": 20,
}


def clean_env(**values: str) -> dict[str, str]:
    # TRACELOOP_* and ANTHROPIC_* settings of the developer's would change what either records.
    return environment("TRACELOOP_", "ANTHROPIC_", NO_COLOR="1", **values)


def start_app(
    folder: Path,
    sessions: list[dict[str, Any]],
    replies: list[dict[str, Any]],
    *,
    instrument: bool | list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Run:
    """APP in a fresh interpreter; ``instrument`` goes to configure() (default: OpenLLMetry's)."""
    instrument = [DIST] if instrument is None else instrument
    cfg = {"instrument": instrument, "model": MODEL, "sessions": sessions, "replies": replies}
    # The openai instrumentations have nothing to trace here; skipping them spares importing openai.
    env = clean_env(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="openai", **(env or {}))
    return start_script(APP, folder / "traces.db", cfg, env)


def cli(db: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "otel_sqlite_exporter", "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def totals(row: sqlite3.Row) -> tuple[Any, ...]:
    """A session's or trace's rolled-up usage."""
    return tuple(
        row[c]
        for c in (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "cost_usd",
        )
    )


def pairs(spans: list[sqlite3.Row]) -> list[tuple[sqlite3.Row, sqlite3.Row]]:
    """(OpenLLMetry's span, the client's span) of each model call, in call order, by response id."""
    ours = [s for s in spans if s["scope_name"] == SCOPE]
    theirs = {s["response_id"]: s for s in spans if s["scope_name"] == CLIENT_SCOPE and s["response_id"]}
    return [(s, theirs[s["response_id"]]) for s in ours if s["response_id"] in theirs]


# -- the scenarios -----------------------------------------------------------------------------------

FULL_STEPS = [
    {"call": "create", **SAY_HI},
    {"call": "create", **SIX_SEVENS},
    {"call": "stream", **COUNT},
    {"call": "helper", **HAIKU},
    {"call": "agent", **WEATHER},
    {"call": "create", **FAIL},
]
FULL_REPLIES = [
    SAY_HI_REPLY,
    THINKING_REPLY,
    {"content": "One two three four five", "prompt_tokens": 11, "completion_tokens": 6, "cached_tokens": 3},
    {
        "content": "Soft rain on the roof",
        "reasoning": HAIKU_THINKING,
        "prompt_tokens": 9,
        "completion_tokens": 12,
    },
    {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
        "prompt_tokens": 30,
        "completion_tokens": 9,
    },
    {"content": "Sunny and 22°C in Paris.", "prompt_tokens": 50, "completion_tokens": 6},
    {"status": 500, "error_message": "the model is on fire"},
]
ONE_CALL = [{"task": "one call", "steps": [{"call": "create", **SAY_HI}]}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Every scenario of this module, each in its own interpreter, started at once."""
    with Runs() as started:
        # OpenLLMetry, and the anthropic client's own spans (on by default).
        started["full"] = start_app(
            tmp_path_factory.mktemp("full"),
            [{"task": "anthropic scenario", "steps": FULL_STEPS}],
            FULL_REPLIES,
        )
        started["one_call"] = start_app(tmp_path_factory.mktemp("one_call"), ONE_CALL, [SAY_HI_REPLY])
        # OpenLLMetry alone: the client's spans turned off.
        started["client_off"] = start_app(
            tmp_path_factory.mktemp("client_off"),
            ONE_CALL,
            [SAY_HI_REPLY],
            env={"ANTHROPIC_OPEN_TELEMETRY": "false"},
        )
        # The client's own spans alone, with their content recorded.
        started["client_only"] = start_app(
            tmp_path_factory.mktemp("client_only"),
            [*ONE_CALL, {"task": "thinking", "steps": [{"call": "create", **SIX_SEVENS}]}],
            [SAY_HI_REPLY, THINKING_REPLY],
            instrument=False,
            env={"ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE": "content"},
        )
        db = tmp_path_factory.mktemp("example") / "example.db"
        started["example"] = start_example("openllmetry_anthropic", db, clean_env())
        yield started


@dataclass(frozen=True)
class Full:
    """The "full" scenario: what the app saw, its session, and each call's two spans."""

    run: Run
    results: list[dict[str, Any]]
    session_id: str
    calls: dict[str, tuple[sqlite3.Row, sqlite3.Row]]
    spans: list[sqlite3.Row]


@pytest.fixture(scope="module")
def full(runs: Runs) -> Full:
    run = runs["full"]
    (session,) = run.out["sessions"]
    spans = run.spans()
    names = ["say_hi", "thinking", "stream", "helper", "tool_call", "tool_answer"]
    calls = pairs(spans)
    assert len(calls) == len(names), [(s["name"], s["scope_name"], s["response_id"]) for s in spans]
    return Full(run, session["results"], session["id"], dict(zip(names, calls, strict=True)), spans)


# -- 1. a plain message call ------------------------------------------------------------------------


def test_plain_call_model_tokens_cache_and_cost(full: Full) -> None:
    assert full.results[0]["text"] == "Hi there!"
    span, client_span = full.calls["say_hi"]
    assert span["name"] == "anthropic.chat"
    assert span["kind"] == "client"
    assert (span["type"], span["provider"], span["operation"]) == ("llm", "anthropic", "chat")
    assert span["model"] == RESPONSE_MODEL  # gen_ai.response.model wins over the requested model
    attributes = json.loads(span["attributes"])
    assert attributes["gen_ai.request.model"] == MODEL
    # Anthropic's usage.input_tokens (20) excludes the cache; both recordings report the whole
    # prompt as gen_ai.usage.input_tokens, cache reads and writes included.
    assert attributes["gen_ai.usage.input_tokens"] == 1320
    assert json.loads(client_span["attributes"])["gen_ai.usage.input_tokens"] == 1320
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 1000
    assert attributes["gen_ai.usage.cache_creation.input_tokens"] == 300
    for row in (span, client_span):
        assert (
            row["input_tokens"],
            row["output_tokens"],
            row["cache_read_tokens"],
            row["cache_write_tokens"],
        ) == tuple(SAY_HI_TOKENS.values())
        assert row["cost_usd"] == pytest.approx(cost(RESPONSE_MODEL, **SAY_HI_TOKENS), rel=1e-9)
    # The cache is priced as such: reads below the input price, writes above it.
    assert span["cost_usd"] < cost(RESPONSE_MODEL, input_tokens=1320, output_tokens=5)
    assert span["status_code"] != "ERROR"
    assert span["input_text"] == "system: Be brief.\nuser: Say hi"
    assert span["output_text"] == "assistant: Hi there!"
    assert span["reasoning_text"] is None
    assert span["response_id"] == full.results[0]["id"]


# -- 2. thinking blocks -----------------------------------------------------------------------------


def test_thinking_goes_to_reasoning_text_not_output(full: Full) -> None:
    result = full.results[1]
    assert (result["text"], result["thinking"]) == ("42.", [THINKING])
    span, _ = full.calls["thinking"]
    assert span["type"] == "llm"
    assert (span["input_tokens"], span["output_tokens"]) == (15, 30)
    assert span["cost_usd"] == pytest.approx(cost(MODEL, input_tokens=15, output_tokens=30), rel=1e-9)
    assert span["input_text"] == "user: What is 6*7?"
    assert span["output_text"] == "assistant: 42."
    assert span["reasoning_text"] == THINKING
    # OpenLLMetry records the thinking block as a "reasoning" part of gen_ai.output.messages.
    (message,) = json.loads(json.loads(span["attributes"])["gen_ai.output.messages"])
    assert [part["type"] for part in message["parts"]] == ["reasoning", "text"]


def test_thinking_is_searchable_and_shown_by_the_cli(full: Full) -> None:
    span, _ = full.calls["thinking"]
    with TraceStore(full.run.db) as store:
        hits = store.search("multiplied", session_id=full.session_id)
    assert [hit.entry.id for hit in hits] == [span["span_id"]]
    assert hits[0].entry.reasoning_text == THINKING
    shown = cli(full.run.db, "span", span["span_id"])
    reasoning = shown.index("\nReasoning\n")
    assert THINKING in shown[reasoning:]
    assert "assistant: 42." in shown[shown.index("\nOutput\n") :]


def test_thinking_tokens_count_once_in_the_session(full: Full) -> None:
    """The call's thinking tokens (usage.output_tokens_details.thinking_tokens) are reported by the
    anthropic client's span only; OpenLLMetry 0.62.4 records none. Both spans share the response id,
    and the session should still count them, once."""
    span, client_span = full.calls["thinking"]
    assert json.loads(client_span["attributes"])["gen_ai.usage.reasoning.output_tokens"] == 20
    assert client_span["reasoning_tokens"] == 20
    assert "gen_ai.usage.reasoning_tokens" not in json.loads(span["attributes"])
    assert full.run.session(full.session_id)["reasoning_tokens"] == 20


# -- 3. streaming -----------------------------------------------------------------------------------


def test_stream_one_span_per_call_with_the_whole_text_and_usage(full: Full) -> None:
    result = full.results[2]
    assert result["text"] == "One two three four five"
    assert result["output_tokens"] == 6  # what the stream's message_delta reported
    span, client_span = full.calls["stream"]
    assert [s["name"] for s in full.spans if s["response_id"] == span["response_id"]] == [
        "anthropic.chat",
        "anthropic.messages.create",
    ]
    attributes = json.loads(span["attributes"])
    assert attributes["gen_ai.is_streaming"] is True
    assert json.loads(client_span["attributes"])["gen_ai.request.stream"] is True
    assert span["type"] == "llm"
    assert span["end_time_unix_nano"] is not None
    assert span["input_text"] == "user: Count to five"
    assert span["output_text"] == "assistant: One two three four five"
    # Input: 11 + 3 read from the cache. Output: OpenLLMetry 0.62.4 adds message_start's placeholder
    # (1) to message_delta's count (6); the client's own span has the count the stream reported.
    tokens = {"input_tokens": 14, "output_tokens": 6 + STREAM_EXTRA_OUTPUT_TOKENS, "cache_read_tokens": 3}
    assert (span["input_tokens"], span["output_tokens"], span["cache_read_tokens"]) == tuple(tokens.values())
    assert span["cost_usd"] == pytest.approx(cost(MODEL, **tokens), rel=1e-9)
    assert (client_span["input_tokens"], client_span["output_tokens"]) == (14, 6)
    # OpenLLMetry's anthropic instrumentation adds no per-chunk events.
    assert span["events"] is None


def test_messages_stream_helper_with_thinking(full: Full) -> None:
    result = full.results[3]
    assert result["text"] == "Soft rain on the roof"
    assert result["output_tokens"] == 12
    span, client_span = full.calls["helper"]
    assert span["response_id"] == result["id"]
    assert span["output_text"] == "assistant: Soft rain on the roof"
    assert span["reasoning_text"] == HAIKU_THINKING
    assert span["input_text"] == "user: A haiku about rain"
    assert (span["input_tokens"], span["output_tokens"]) == (9, 12 + STREAM_EXTRA_OUTPUT_TOKENS)
    assert span["cost_usd"] == pytest.approx(
        cost(MODEL, input_tokens=9, output_tokens=12 + STREAM_EXTRA_OUTPUT_TOKENS), rel=1e-9
    )
    assert (client_span["input_tokens"], client_span["output_tokens"]) == (9, 12)


# -- 4. tool use: an agent loop ---------------------------------------------------------------------


def test_agent_loop_with_a_tool(full: Full) -> None:
    result = full.results[4]
    assert result == {
        "tool_call": ["toolu_1", "get_weather", {"city": "Paris"}],
        "text": "Sunny and 22°C in Paris.",
    }
    (agent,) = [s for s in full.spans if s["type"] == "agent"]
    (tool,) = [s for s in full.spans if s["type"] == "tool"]
    asking, asking_client = full.calls["tool_call"]
    answering, answering_client = full.calls["tool_answer"]
    assert agent["name"] == "invoke_agent weather-agent"
    # Under a parent span both recordings of each call are its children, in the parent's trace.
    for child in (asking, asking_client, tool, answering, answering_client):
        assert (child["trace_id"], child["parent_span_id"]) == (agent["trace_id"], agent["span_id"])
    assert asking["start_time_unix_nano"] < tool["start_time_unix_nano"] < answering["start_time_unix_nano"]
    assert tool["name"] == "execute_tool get_weather"
    assert tool["input_text"] == '{"city": "Paris"}'
    assert json.loads(tool["output_text"])["conditions"] == "sunny"
    assert asking["input_text"] == "user: Weather in Paris?"
    assert asking["output_text"] == 'assistant: [tool call] get_weather({"city":"Paris"})'
    assert "get_weather" in json.loads(asking["attributes"])["gen_ai.tool.definitions"]
    assert answering["input_text"].startswith(
        "user: Weather in Paris?\n"
        'assistant: [tool call] get_weather({"city":"Paris"})\n'
        'user: [tool result] {"city": "Paris"'
    )
    assert answering["output_text"] == "assistant: Sunny and 22°C in Paris."
    assert [(s["input_tokens"], s["output_tokens"]) for s in (asking, answering)] == [(30, 9), (50, 6)]
    # The agent's trace counts each call once, though each was recorded twice.
    trace = full.run.conn.execute("SELECT * FROM traces WHERE trace_id = ?", (agent["trace_id"],)).fetchone()
    assert trace["span_count"] == 6
    expected = cost(MODEL, input_tokens=30, output_tokens=9) + cost(MODEL, input_tokens=50, output_tokens=6)
    assert totals(trace)[:5] == (80, 15, 0, 0, 0)
    assert trace["cost_usd"] == pytest.approx(expected, rel=1e-9)


# -- 5. an API error --------------------------------------------------------------------------------


def test_api_error_recorded_and_raised_to_the_app(full: Full) -> None:
    assert full.results[5] == {"error": "InternalServerError", "status": 500}  # the app still sees it
    failed = [s for s in full.spans if s["status_code"] == "ERROR"]
    assert [(s["name"], s["scope_name"]) for s in failed] == [
        ("anthropic.chat", SCOPE),
        ("anthropic.messages.create", CLIENT_SCOPE),
    ]
    span, client_span = failed
    assert span["type"] == "llm"
    assert "the model is on fire" in span["status_message"]
    assert json.loads(span["attributes"])["error.type"] == "InternalServerError"
    assert [e["name"] for e in json.loads(span["events"])] == ["exception"]
    assert span["input_text"] == "user: Fail please"
    assert span["input_tokens"] is None and span["cost_usd"] is None and span["response_id"] is None
    # The client's span: the error body's type and the HTTP status, no message, no response id.
    client_attributes = json.loads(client_span["attributes"])
    assert (client_attributes["error.type"], client_attributes["http.response.status_code"]) == (
        "api_error",
        500,
    )
    assert client_span["status_message"] is None and client_span["response_id"] is None
    # Nothing links the two recordings of a failed call, so the session counts two error spans.
    assert full.run.session(full.session_id)["error_count"] == 2


# -- 6. the anthropic client's own span -------------------------------------------------------------


def test_both_recordings_of_each_call_share_the_response_id(full: Full) -> None:
    for span, client_span in full.calls.values():
        assert span["response_id"].startswith("msg_fake_")
        assert (span["scope_name"], client_span["scope_name"]) == (SCOPE, CLIENT_SCOPE)
        assert (span["name"], client_span["name"]) == ("anthropic.chat", "anthropic.messages.create")
        assert span["session_id"] == client_span["session_id"] == full.session_id
        # OpenLLMetry's span keeps the usage; the client's is the repeat.
        assert (span["usage_below"], client_span["usage_below"]) == (0, 1)
        assert (span["type"], client_span["type"]) == ("llm", "llm")
        assert client_span["provider"] == "anthropic"
        assert client_span["input_text"] is None  # the client records no content by default
    # Every span of the scenario: two per call (the failed one too), the agent and the tool.
    assert len(full.spans) == 2 * 7 + 2


def test_session_counts_each_call_once(full: Full) -> None:
    session = full.run.session(full.session_id)
    assert session["task"] == "anthropic scenario"
    assert session["user_id"] == "alice"
    assert session["service_name"] == "anthropic-test"
    assert session["span_count"] == len(full.spans)
    counted = [span for span, _ in full.calls.values()]
    expected = sum(
        cost(
            s["model"],
            input_tokens=s["input_tokens"],
            output_tokens=s["output_tokens"],
            cache_read_tokens=s["cache_read_tokens"] or 0,
            cache_write_tokens=s["cache_write_tokens"] or 0,
        )
        for s in counted
    )
    x = STREAM_EXTRA_OUTPUT_TOKENS
    assert (
        session["input_tokens"],
        session["output_tokens"],
        session["cache_read_tokens"],
        session["cache_write_tokens"],
    ) == (1320 + 15 + 14 + 9 + 30 + 50, 5 + 30 + (6 + x) + (12 + x) + 9 + 6, 1000 + 3, 300)
    assert session["cost_usd"] == pytest.approx(expected, rel=1e-9)
    # Each trace's totals are those of the spans it counts; the traces add up to the session.
    traces = full.run.conn.execute("SELECT * FROM traces WHERE session_id = ?", (full.session_id,)).fetchall()
    assert sum(t["input_tokens"] for t in traces) == session["input_tokens"]
    assert sum(t["output_tokens"] for t in traces) == session["output_tokens"]
    assert sum(t["cost_usd"] or 0 for t in traces) == pytest.approx(session["cost_usd"], rel=1e-9)


def test_one_call_counted_once(runs: Runs) -> None:
    run = runs["one_call"]
    (session,) = run.out["sessions"]
    assert session["results"][0]["text"] == "Hi there!"
    spans = run.spans()
    # Both recordings are in the file, in the session, each in a root trace of its own: OpenLLMetry
    # does not make its span current, so the client's span is not its child.
    assert sorted((s["scope_name"], s["name"]) for s in spans) == [
        (CLIENT_SCOPE, "anthropic.messages.create"),
        (SCOPE, "anthropic.chat"),
    ]
    assert {s["response_id"] for s in spans} == {session["results"][0]["id"]}
    assert {s["session_id"] for s in spans} == {session["id"]}
    assert [s["parent_span_id"] for s in spans] == [None, None]
    assert len({s["trace_id"] for s in spans}) == 2
    one_call = (*SAY_HI_TOKENS.values(), 0)
    one_cost = cost(RESPONSE_MODEL, **SAY_HI_TOKENS)
    row = run.session(session["id"])
    assert totals(row)[:5] == one_call
    assert row["cost_usd"] == pytest.approx(one_cost, rel=1e-9)
    traces = {t["root_span_name"]: t for t in run.conn.execute("SELECT * FROM traces").fetchall()}
    assert totals(traces["anthropic.chat"])[:5] == one_call
    assert traces["anthropic.chat"]["cost_usd"] == pytest.approx(one_cost, rel=1e-9)
    assert totals(traces["anthropic.messages.create"]) == (0, 0, 0, 0, 0, None)
    assert [t["span_count"] for t in traces.values()] == [1, 1]
    with TraceStore(run.db) as store:
        entries = store.session_timeline(session["id"])
        tree = store.session_tree(session["id"])
    assert {e.scope_name: e.counted for e in entries} == {SCOPE: True, CLIENT_SCOPE: False}
    assert {e.scope_name: e.input_tokens for e in entries} == {SCOPE: 1320, CLIENT_SCOPE: 1320}
    assert (
        sum(node.entry.input_tokens or 0 for t in tree.traces for _, node in t.walk() if node.entry.counted)
        == 1320
    )
    shown = cli(run.db, "show", "latest")
    assert "anthropic.chat" in shown
    assert "anthropic.messages.create" in shown
    response_id = session["results"][0]["id"]
    assert f"repeated: response {response_id} is counted once" in shown
    (header,) = [line for line in shown.splitlines() if line.lstrip().startswith("started")]
    assert "2 spans · 1,320 in / 5 out" in header


def test_client_spans_off_leaves_openllmetry_alone(runs: Runs) -> None:
    run = runs["client_off"]
    (session,) = run.out["sessions"]
    (span,) = run.spans()
    assert (span["scope_name"], span["name"], span["usage_below"]) == (SCOPE, "anthropic.chat", 0)
    row = run.session(session["id"])
    assert row["span_count"] == 1
    # The same totals as with both recordings.
    assert totals(row) == totals(runs["one_call"].session(runs["one_call"].out["sessions"][0]["id"]))


def test_client_span_alone_counts(runs: Runs) -> None:
    run = runs["client_only"]
    say_hi, thinking = run.out["sessions"]
    spans = run.spans()
    assert {(s["scope_name"], s["name"]) for s in spans} == {(CLIENT_SCOPE, "anthropic.messages.create")}
    assert len(spans) == 2
    first, second = spans
    # The only recording of its call: its usage counts.
    assert first["usage_below"] == 0
    assert (first["type"], first["provider"], first["operation"], first["model"]) == (
        "llm",
        "anthropic",
        "chat",
        RESPONSE_MODEL,
    )
    row = run.session(say_hi["id"])
    assert totals(row)[:5] == (*SAY_HI_TOKENS.values(), 0)
    assert row["cost_usd"] == pytest.approx(cost(RESPONSE_MODEL, **SAY_HI_TOKENS), rel=1e-9)
    # ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE=content: the client records the messages too.
    assert first["input_text"] == "system: Be brief.\nuser: Say hi"
    assert first["output_text"] == "assistant: Hi there!"
    # Its thinking tokens and thinking text.
    assert (second["input_tokens"], second["output_tokens"], second["reasoning_tokens"]) == (15, 30, 20)
    assert second["output_text"] == "assistant: 42."
    assert second["reasoning_text"] == THINKING
    assert totals(run.session(thinking["id"]))[:5] == (15, 30, 0, 0, 20)
    with TraceStore(run.db) as store:
        assert all(entry.counted for entry in store.session_timeline(say_hi["id"]))


# -- examples/openllmetry_anthropic.py, run as a user runs it ----------------------------------------


def test_example(runs: Runs) -> None:
    example = load_example("openllmetry_anthropic")
    run = runs["example"]
    conn = run.conn
    stdout = run.stdout
    assert "answer: Yes: 22°C and sunny in Paris" in stdout
    assert "[agent] invoke_agent picnic-planner" in stdout
    assert "repeated: response msg_fake_1 is counted once" in stdout
    assert str(run.db) in stdout
    assert not (run.db.parent / "traces.db").exists()  # the path argument was honoured
    (session,) = conn.execute("SELECT * FROM sessions").fetchall()
    assert session["task"] == "Is it picnic weather in Paris this afternoon?"
    assert (session["user_id"], session["status"]) == ("demo-user", "completed")
    spans = conn.execute("SELECT * FROM spans ORDER BY start_time_unix_nano, id").fetchall()
    (agent,) = [s for s in spans if s["type"] == "agent"]
    assert all(s["parent_span_id"] == agent["span_id"] for s in spans if s is not agent)
    calls = pairs(spans)
    script = example.SCRIPT
    assert len(calls) == len(script) == 3
    assert [s["type"] for s in spans].count("tool") == 1
    # Usage as the model reported it: the whole prompt (cache included); the streamed summary's
    # output one token over (OpenLLMetry 0.62.4).
    counted = [span for span, _ in calls]
    assert [(s["input_tokens"], s["cache_read_tokens"], s["cache_write_tokens"]) for s in counted] == [
        (r.prompt_tokens + r.cached_tokens + r.cache_write_tokens, r.cached_tokens, r.cache_write_tokens)
        for r in script
    ]
    assert [s["output_tokens"] for s in counted] == [
        script[0].completion_tokens,
        script[1].completion_tokens,
        script[2].completion_tokens + STREAM_EXTRA_OUTPUT_TOKENS,
    ]
    assert [client["usage_below"] for _, client in calls] == [1, 1, 1]
    assert counted[0]["reasoning_text"] == script[0].reasoning
    assert counted[1]["output_text"] == f"assistant: {script[1].content}"
    assert counted[2]["output_text"] == f"assistant: {script[2].content}"
    assert session["input_tokens"] == sum(s["input_tokens"] for s in counted)
    assert session["output_tokens"] == sum(r.completion_tokens for r in script) + STREAM_EXTRA_OUTPUT_TOKENS
    assert session["cache_read_tokens"] == sum(r.cached_tokens for r in script)
    assert session["cache_write_tokens"] == sum(r.cache_write_tokens for r in script)
    expected = sum(
        cost(
            s["model"],
            input_tokens=s["input_tokens"],
            output_tokens=s["output_tokens"],
            cache_read_tokens=s["cache_read_tokens"],
            cache_write_tokens=s["cache_write_tokens"],
        )
        for s in counted
    )
    assert session["cost_usd"] == pytest.approx(expected, rel=1e-9)
