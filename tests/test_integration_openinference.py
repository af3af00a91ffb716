"""OpenInference's openai instrumentation (``openinference-instrumentation-openai``), chosen with
``configure(instrument=[...])``, with the real ``openai`` client against FakeLLMServer.

Instrumentation is process-global, so each scenario runs in a fresh interpreter of its own (all of
them started at once, see ``runs``) and the tests read the SQLite file it wrote.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scenarios import Run, Runs, cost, environment, load_example, start_example, start_openai_steps

from otel_sqlite_exporter.fake_llm_server import ScriptedReply

pytest.importorskip("openai")
pytest.importorskip("openinference.instrumentation.openai")

DIST = "openinference-instrumentation-openai"
SCOPE = "openinference.instrumentation.openai"
REQUEST_MODEL = "gpt-4o-mini"
RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"
REASONING_MODEL = "o4-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
SESSION = "conv-42"
USER = "alice"
REASONING_SUMMARY = "Six times seven is forty-two."
# The Responses API's reasoning summary needs FakeLLMServer's ScriptedReply.reasoning.
HAS_REASONING = "reasoning" in {f.name for f in dataclasses.fields(ScriptedReply)}

STEPS: list[dict[str, Any]] = [
    {
        "call": "chat",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
        "session": SESSION,
        "user": USER,
    },
    {
        "call": "stream",
        "messages": [{"role": "user", "content": "Count to five"}],
        "session": SESSION,
        "user": USER,
    },
    {"call": "tools", "messages": [{"role": "user", "content": "Weather in Paris?"}]},
    {"call": "embed", "model": EMBEDDING_MODEL, "input": "hello world"},
    {"call": "chat", "messages": [{"role": "user", "content": "Fail please"}]},
]
REPLIES: list[dict[str, Any]] = [
    {
        "content": "Hi there!",
        "prompt_tokens": 21,
        "completion_tokens": 5,
        "cached_tokens": 8,
        "model": RESPONSE_MODEL,
    },
    {
        "content": "One two three four five",
        "prompt_tokens": 11,
        "completion_tokens": 6,
        "cached_tokens": 3,
        "reasoning_tokens": 2,
    },
    {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
        "prompt_tokens": 30,
        "completion_tokens": 9,
    },
    {"prompt_tokens": 4},
    {"status": 500, "error_message": "the model is on fire"},
]
NAMES = ["chat", "stream", "tools", "embed", "error"]
if HAS_REASONING:
    STEPS.append({"call": "responses", "model": REASONING_MODEL, "input": "What is 6*7?"})
    REPLIES.append(
        {
            "content": "42.",
            "reasoning": REASONING_SUMMARY,
            "prompt_tokens": 20,
            "completion_tokens": 30,
            "reasoning_tokens": 18,
            "cached_tokens": 4,
        }
    )
    NAMES.append("responses")

Result = tuple[dict[str, Any], sqlite3.Connection]


def clean_env(**values: str) -> dict[str, str]:
    # OPENINFERENCE_* settings of the developer's would change what OpenInference records.
    return environment("OPENINFERENCE_", NO_COLOR="1", **values)


def start_app(
    tmp_path: Path,
    steps: list[dict[str, Any]],
    replies: list[dict[str, Any]],
    env: dict[str, str] | None = None,
) -> Run:
    """The steps played by one app, each call traced by OpenInference."""
    return start_openai_steps(
        tmp_path,
        clean_env(**(env or {})),
        dist=DIST,
        service_name="openinference-test",
        model=REQUEST_MODEL,
        steps=steps,
        replies=replies,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Every scenario of this module, each in its own interpreter, started at once."""
    with Runs() as started:
        started["full"] = start_app(tmp_path_factory.mktemp("full"), STEPS, REPLIES)
        started["hidden"] = start_app(
            tmp_path_factory.mktemp("hidden"),
            STEPS[:1],
            REPLIES[:1],
            {"OPENINFERENCE_HIDE_INPUTS": "true", "OPENINFERENCE_HIDE_OUTPUTS": "true"},
        )
        started["genai_semconv"] = start_app(
            tmp_path_factory.mktemp("genai_semconv"),
            STEPS[:1],
            REPLIES[:1],
            {"OPENINFERENCE_ENABLE_GENAI_SEMCONV": "true"},
        )
        if HAS_REASONING:
            db = tmp_path_factory.mktemp("example") / "example.db"
            started["example"] = start_example("openinference_openai", db, clean_env())
        yield started


@pytest.fixture(scope="module")
def run(runs: Runs) -> Result:
    return runs["full"].out, runs["full"].conn


@pytest.fixture(scope="module")
def spans(runs: Runs) -> dict[str, sqlite3.Row]:
    rows = runs["full"].spans()
    # One span per call: OpenInference alone traced the client (not openai-v2, not OpenLLMetry).
    assert len(rows) == len(STEPS), [(r["name"], r["scope_name"]) for r in rows]
    assert {r["scope_name"] for r in rows} == {SCOPE}
    return dict(zip(NAMES, rows, strict=True))


def attributes(span: sqlite3.Row) -> dict[str, Any]:
    return json.loads(span["attributes"])


def test_one_openinference_span_per_call(run: Result, spans: dict[str, sqlite3.Row]) -> None:
    out, _ = run
    chat, stream, tools = out["results"][:3]
    assert [chat, stream["text"], tools] == [
        "Hi there!",
        "One two three four five",
        [["call_1", "get_weather", '{"city": "Paris"}']],
    ]
    for span in spans.values():
        assert attributes(span)["llm.system"] == "openai"
        assert span["provider"] == "openai"
        assert span["end_time_unix_nano"] is not None


def test_chat_model_tokens_cost(spans: dict[str, sqlite3.Row]) -> None:
    span = spans["chat"]
    assert span["name"] == "ChatCompletion"
    assert attributes(span)["openinference.span.kind"] == "LLM"
    assert span["type"] == "llm"
    assert span["model"] == RESPONSE_MODEL  # llm.model_name is the response's model
    assert (span["input_tokens"], span["output_tokens"]) == (21, 5)
    # llm.token_count.prompt_details.cache_read -> cache_read_tokens, priced at the cache-read price.
    assert attributes(span)["llm.token_count.prompt_details.cache_read"] == 8
    assert span["cache_read_tokens"] == 8
    expected = cost(RESPONSE_MODEL, input_tokens=21, output_tokens=5, cache_read_tokens=8)
    assert span["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_chat_text_from_flattened_messages(spans: dict[str, sqlite3.Row]) -> None:
    span = spans["chat"]
    attrs = attributes(span)
    assert attrs["llm.input_messages.1.message.role"] == "user"
    assert attrs["llm.input_messages.1.message.content"] == "Say hi"
    assert attrs["llm.output_messages.0.message.content"] == "Hi there!"
    # The readable rendering of the flattened messages, not the raw request/response JSON that
    # OpenInference also records as input.value / output.value (kept in attributes).
    assert span["input_text"] == "system: Be brief.\nuser: Say hi"
    assert span["output_text"] == "assistant: Hi there!"
    assert json.loads(attrs["input.value"])["messages"][1]["content"] == "Say hi"


def test_session_and_user_from_using_session(run: Result, spans: dict[str, sqlite3.Row]) -> None:
    _, conn = run
    chat, stream = spans["chat"], spans["stream"]
    assert attributes(chat)["session.id"] == SESSION
    assert attributes(chat)["user.id"] == USER
    # Two calls, two traces, one session: the one named, not a trace id.
    assert chat["trace_id"] != stream["trace_id"]
    assert chat["session_id"] == stream["session_id"] == SESSION
    row = conn.execute("SELECT * FROM sessions WHERE session_id = ?", (SESSION,)).fetchone()
    assert row is not None
    assert row["user_id"] == USER
    assert row["span_count"] == 2
    assert row["status"] == "completed"
    assert (row["input_tokens"], row["output_tokens"]) == (21 + 11, 5 + 6)
    assert (row["cache_read_tokens"], row["reasoning_tokens"]) == (8 + 3, 2)
    assert conn.execute("SELECT count(*) FROM traces WHERE session_id = ?", (SESSION,)).fetchone()[0] == 2
    # A call outside using_session() is its own session.
    tools = spans["tools"]
    assert tools["session_id"] == tools["trace_id"]
    assert "session.id" not in attributes(tools)


def test_stream(run: Result, spans: dict[str, sqlite3.Row]) -> None:
    out, _ = run
    assert out["results"][1]["text"] == "One two three four five"
    span = spans["stream"]
    assert span["type"] == "llm"
    assert span["status_code"] != "ERROR"
    assert (span["input_tokens"], span["output_tokens"]) == (11, 6)
    # llm.token_count.completion_details.reasoning -> reasoning_tokens
    assert (span["cache_read_tokens"], span["reasoning_tokens"]) == (3, 2)
    expected = cost(REQUEST_MODEL, input_tokens=11, output_tokens=6, cache_read_tokens=3, reasoning_tokens=2)
    assert span["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert span["input_text"] == "user: Count to five"
    assert span["output_text"] == "assistant: One two three four five"


def test_tool_call(spans: dict[str, sqlite3.Row]) -> None:
    span = spans["tools"]
    attrs = attributes(span)
    prefix = "llm.output_messages.0.message.tool_calls.0.tool_call."
    assert attrs[prefix + "id"] == "call_1"
    assert attrs[prefix + "function.name"] == "get_weather"
    assert attrs[prefix + "function.arguments"] == '{"city": "Paris"}'
    assert (span["input_tokens"], span["output_tokens"]) == (30, 9)
    assert span["input_text"] == "user: Weather in Paris?"
    assert span["output_text"] == 'assistant: [tool call] get_weather({"city": "Paris"})'


def test_embeddings(run: Result, spans: dict[str, sqlite3.Row]) -> None:
    out, _ = run
    assert out["results"][3] == 8
    span = spans["embed"]
    assert span["name"] == "CreateEmbeddings"
    assert span["type"] == "embedding"
    assert attributes(span)["embedding.model_name"] == EMBEDDING_MODEL
    assert span["input_tokens"] == 4
    # OpenInference names an embedding's model embedding.model_name.
    assert span["model"] == EMBEDDING_MODEL
    assert span["cost_usd"] == pytest.approx(cost(EMBEDDING_MODEL, input_tokens=4), rel=1e-9)


def test_api_error(run: Result, spans: dict[str, sqlite3.Row]) -> None:
    out, _ = run
    assert out["results"][4] == "InternalServerError"
    span = spans["error"]
    assert span["type"] == "llm"
    assert span["status_code"] == "ERROR"
    assert "the model is on fire" in span["status_message"]
    assert any(e["name"] == "exception" for e in json.loads(span["events"]))
    assert span["input_tokens"] is None and span["cost_usd"] is None


@pytest.mark.skipif(not HAS_REASONING, reason="FakeLLMServer has no Responses API reasoning summary")
def test_responses_reasoning_summary(run: Result, spans: dict[str, sqlite3.Row]) -> None:
    out, _ = run
    assert out["results"][5] == {"text": "42.", "reasoning": [REASONING_SUMMARY]}
    span = spans["responses"]
    assert span["name"] == "Response"
    assert span["type"] == "llm"
    assert span["model"] == REASONING_MODEL
    assert (span["input_tokens"], span["output_tokens"]) == (20, 30)
    assert (span["cache_read_tokens"], span["reasoning_tokens"]) == (4, 18)
    expected = cost(
        REASONING_MODEL, input_tokens=20, output_tokens=30, cache_read_tokens=4, reasoning_tokens=18
    )
    assert span["cost_usd"] == pytest.approx(expected, rel=1e-9)
    # OpenInference records the summary as an output message content of type "reasoning".
    assert span["reasoning_text"] == REASONING_SUMMARY
    assert span["output_text"] == "assistant: 42."
    assert span["input_text"] == "user: What is 6*7?"


# -- OpenInference's own settings -----------------------------------------------------------------


def test_hide_inputs_and_outputs_keeps_content_out(runs: Runs) -> None:
    out, conn = runs["hidden"].out, runs["hidden"].conn
    assert out["results"] == ["Hi there!"]
    (span,) = conn.execute("SELECT * FROM spans").fetchall()
    for text in ("Be brief", "Say hi", "Hi there"):
        assert text not in span["attributes"]
        assert text not in (span["input_text"] or "") + (span["output_text"] or "")
    # OpenInference writes its placeholder in place of the hidden values.
    assert attributes(span)["input.value"] == "__REDACTED__"
    assert span["model"] == RESPONSE_MODEL
    assert (span["input_tokens"], span["output_tokens"], span["cache_read_tokens"]) == (21, 5, 8)
    assert span["session_id"] == SESSION


def test_genai_semconv_alongside_openinference_counts_once(runs: Runs) -> None:
    # OPENINFERENCE_ENABLE_GENAI_SEMCONV adds the OpenTelemetry GenAI attributes to the same span.
    out, conn = runs["genai_semconv"].out, runs["genai_semconv"].conn
    assert out["results"] == ["Hi there!"]
    (span,) = conn.execute("SELECT * FROM spans").fetchall()
    attrs = attributes(span)
    assert attrs["gen_ai.usage.input_tokens"] == attrs["llm.token_count.prompt"] == 21
    assert attrs["gen_ai.conversation.id"] == SESSION
    assert (span["type"], span["operation"], span["model"]) == ("llm", "chat", RESPONSE_MODEL)
    assert (span["input_tokens"], span["output_tokens"], span["cache_read_tokens"]) == (21, 5, 8)
    expected = cost(RESPONSE_MODEL, input_tokens=21, output_tokens=5, cache_read_tokens=8)
    assert span["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert span["input_text"] == "system: Be brief.\nuser: Say hi"
    assert span["output_text"] == "assistant: Hi there!"
    assert span["session_id"] == SESSION
    row = conn.execute("SELECT * FROM sessions WHERE session_id = ?", (SESSION,)).fetchone()
    assert (row["user_id"], row["span_count"], row["input_tokens"]) == (USER, 1, 21)


# -- examples/openinference_openai.py, run as a user runs it ----------------------------------------


@pytest.mark.skipif(not HAS_REASONING, reason="FakeLLMServer has no Responses API reasoning summary")
def test_example(runs: Runs) -> None:
    """examples/openinference_openai.py, run as a user runs it (started with the other scenarios)."""
    example = load_example("openinference_openai")
    run = runs["example"]
    conn = run.conn
    stdout = run.stdout
    assert "answer: Your order A-1042 left the warehouse today" in stdout
    assert "[agent] support-agent" in stdout
    assert "[llm] Response" in stdout
    assert str(run.db) in stdout
    assert not (run.db.parent / "traces.db").exists()  # the path argument was honoured
    (session,) = conn.execute("SELECT * FROM sessions").fetchall()
    # The session named with using_session(), not a trace id, and the user from using_user().
    assert session["session_id"].startswith("support-")
    assert session["session_id"] in stdout
    assert session["user_id"] == example.USER_ID
    assert session["status"] == "completed"
    spans = run.spans()
    assert [s["type"] for s in spans] == ["agent", "llm", "tool", "llm", "llm", "llm"]
    assert {s["session_id"] for s in spans} == {session["session_id"]}
    agent = spans[0]
    assert all(s["parent_span_id"] == agent["span_id"] for s in spans[1:])
    calls = [s for s in spans if s["type"] == "llm"]
    assert {s["scope_name"] for s in calls} == {SCOPE}
    script = example.SCRIPT
    assert [(s["input_tokens"], s["output_tokens"]) for s in calls] == [
        (r.prompt_tokens, r.completion_tokens) for r in script
    ]
    assert (calls[1]["cache_read_tokens"], calls[3]["reasoning_tokens"]) == (32, 48)
    assert calls[3]["model"] == example.REASONING_MODEL
    assert (session["input_tokens"], session["output_tokens"]) == (
        sum(r.prompt_tokens for r in script),
        sum(r.completion_tokens for r in script),
    )
    assert (session["cache_read_tokens"], session["reasoning_tokens"]) == (32, 48)
    expected = sum(
        cost(
            s["model"],
            input_tokens=s["input_tokens"],
            output_tokens=s["output_tokens"],
            cache_read_tokens=s["cache_read_tokens"],
            reasoning_tokens=s["reasoning_tokens"],
        )
        for s in calls
    )
    assert session["cost_usd"] == pytest.approx(expected, rel=1e-6)
    tool = spans[2]
    assert tool["name"] == "order_status"
    assert tool["input_text"] == '{"order_id": "A-1042"}'
    assert json.loads(tool["output_text"])["eta"] == "Thursday"
    assert agent["input_text"] == "Where is my order A-1042?"
