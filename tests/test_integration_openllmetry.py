"""OpenLLMetry's openai instrumentation (``opentelemetry-instrumentation-openai``), chosen with
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
pytest.importorskip("opentelemetry.instrumentation.openai")

DIST = "opentelemetry-instrumentation-openai"
SCOPE = "opentelemetry.instrumentation.openai.v1"
REQUEST_MODEL = "gpt-4o-mini"
RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"
EMBEDDING_MODEL = "text-embedding-3-small"
CHUNK_EVENT = "gen_ai.content.completion.chunk"
REASONING_MODEL = "o4-mini"
REASONING_SUMMARY = "Six times seven is forty-two."
# The Responses API's reasoning summary needs FakeLLMServer's ScriptedReply.reasoning.
HAS_REASONING = "reasoning" in {f.name for f in dataclasses.fields(ScriptedReply)}

SAY_HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
COUNT = [{"role": "user", "content": "Count to five"}]
WEATHER = [{"role": "user", "content": "Weather in Paris?"}]
FAIL = [{"role": "user", "content": "Fail please"}]

Result = tuple[dict[str, Any], sqlite3.Connection]


def clean_env(**values: str) -> dict[str, str]:
    # TRACELOOP_* settings of the developer's would change what OpenLLMetry records.
    return environment("TRACELOOP_", NO_COLOR="1", **values)


def start_app(
    tmp_path: Path,
    steps: list[dict[str, Any]],
    replies: list[dict[str, Any]],
    *,
    env: dict[str, str] | None = None,
    options: dict[str, Any] | None = None,
) -> Run:
    """The steps played by one app, all in one session, each call traced by OpenLLMetry."""
    return start_openai_steps(
        tmp_path,
        clean_env(**(env or {})),
        dist=DIST,
        service_name="openllmetry-test",
        model=REQUEST_MODEL,
        steps=steps,
        replies=replies,
        session={"task": "openllmetry scenario", "user_id": "alice"},
        options=options,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Every scenario of this module, each in its own interpreter, started at once."""
    with Runs() as started:
        started["full"] = start_app(tmp_path_factory.mktemp("full"), FULL_STEPS, FULL_REPLIES)
        started["trace_content_off"] = start_app(
            tmp_path_factory.mktemp("trace_content_off"),
            OFF_STEPS,
            OFF_REPLIES,
            env={"TRACELOOP_TRACE_CONTENT": "false"},
        )
        started["capture_content_off"] = start_app(
            tmp_path_factory.mktemp("capture_content_off"),
            OFF_STEPS,
            OFF_REPLIES,
            env={"TRACELOOP_TRACE_CONTENT": "true"},
            options={"capture_content": False},
        )
        db = tmp_path_factory.mktemp("example") / "example.db"
        started["example"] = start_example("openllmetry_openai", db, clean_env())
        yield started


# -- content captured (TRACELOOP_TRACE_CONTENT unset: OpenLLMetry's default is on) -----------------

FULL_STEPS = [
    {"call": "chat", "messages": SAY_HI},
    {"call": "stream", "messages": COUNT},
    {"call": "tools", "messages": WEATHER},
    {"call": "embed", "model": EMBEDDING_MODEL, "input": "hello world"},
    {"call": "chat", "messages": FAIL},
]
FULL_REPLIES = [
    {
        "content": "Hi there!",
        "prompt_tokens": 21,
        "completion_tokens": 5,
        "cached_tokens": 8,
        "model": RESPONSE_MODEL,
    },
    {"content": "One two three four five", "prompt_tokens": 11, "completion_tokens": 6, "cached_tokens": 3},
    {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
        "prompt_tokens": 30,
        "completion_tokens": 9,
    },
    {"prompt_tokens": 4},
    {"status": 500, "error_message": "the model is on fire"},
]
FULL_NAMES = ["chat", "stream", "tools", "embed", "error"]
if HAS_REASONING:
    FULL_STEPS.append({"call": "responses", "model": REASONING_MODEL, "input": "What is 6*7?"})
    FULL_REPLIES.append(
        {
            "content": "42.",
            "reasoning": REASONING_SUMMARY,
            "prompt_tokens": 20,
            "completion_tokens": 30,
            "reasoning_tokens": 18,
            "cached_tokens": 4,
        }
    )
    FULL_NAMES.append("responses")


@pytest.fixture(scope="module")
def full_run(runs: Runs) -> Result:
    return runs["full"].out, runs["full"].conn


@pytest.fixture(scope="module")
def full_spans(runs: Runs) -> dict[str, sqlite3.Row]:
    spans = runs["full"].spans()
    # One span per call: OpenLLMetry alone traced the client (not openai-v2, not OpenInference).
    assert len(spans) == len(FULL_STEPS), [(s["name"], s["scope_name"]) for s in spans]
    assert {s["scope_name"] for s in spans} == {SCOPE}
    return dict(zip(FULL_NAMES, spans, strict=True))


def test_one_openllmetry_span_per_call(full_run: Result, full_spans: dict[str, sqlite3.Row]) -> None:
    out, _ = full_run
    assert out["results"][0] == "Hi there!"
    for span in full_spans.values():
        attributes = json.loads(span["attributes"])
        assert "openinference.span.kind" not in attributes
        assert span["kind"] == "client"
        assert span["provider"] == "openai"
        assert span["end_time_unix_nano"] is not None


def test_chat_model_tokens_cost_and_text(full_spans: dict[str, sqlite3.Row]) -> None:
    span = full_spans["chat"]
    assert span["name"] == "openai.chat"
    assert span["type"] == "llm"
    assert span["operation"] == "chat"
    assert span["model"] == RESPONSE_MODEL  # gen_ai.response.model wins over the requested model
    assert json.loads(span["attributes"])["gen_ai.request.model"] == REQUEST_MODEL
    assert (span["input_tokens"], span["output_tokens"]) == (21, 5)
    assert span["status_code"] != "ERROR"
    # OpenLLMetry 0.62 writes the current GenAI message attributes (gen_ai.input/output.messages).
    assert span["input_text"] == "system: Be brief.\nuser: Say hi"
    assert span["output_text"] == "assistant: Hi there!"


def test_prompt_cache_read_tokens_and_their_price(full_spans: dict[str, sqlite3.Row]) -> None:
    span = full_spans["chat"]
    # OpenLLMetry reports prompt_tokens_details.cached_tokens as gen_ai.usage.cache_read.input_tokens.
    assert json.loads(span["attributes"])["gen_ai.usage.cache_read.input_tokens"] == 8
    assert span["cache_read_tokens"] == 8
    expected = cost(RESPONSE_MODEL, input_tokens=21, output_tokens=5, cache_read_tokens=8)
    assert span["cost_usd"] == pytest.approx(expected, rel=1e-9)
    # The cached tokens are priced at the cache-read price, not the full input price.
    assert expected < cost(RESPONSE_MODEL, input_tokens=21, output_tokens=5)


def test_stream_one_span_consolidated_text_usage_and_chunk_event(
    full_run: Result, full_spans: dict[str, sqlite3.Row]
) -> None:
    out, _ = full_run
    streamed = out["results"][1]
    assert streamed["text"] == "One two three four five"
    span = full_spans["stream"]
    assert span["type"] == "llm"
    assert span["status_code"] != "ERROR"
    assert json.loads(span["attributes"])["gen_ai.is_streaming"] is True
    assert span["output_text"] == "assistant: One two three four five"
    assert span["input_text"] == "user: Count to five"
    assert (span["input_tokens"], span["output_tokens"], span["cache_read_tokens"]) == (11, 6, 3)
    expected = cost(REQUEST_MODEL, input_tokens=11, output_tokens=6, cache_read_tokens=3)
    assert span["cost_usd"] == pytest.approx(expected, rel=1e-9)
    # OpenLLMetry adds one gen_ai.content.completion.chunk event per chunk; they are stored as one.
    events = json.loads(span["events"])
    chunk_events = [e for e in events if e["name"] == CHUNK_EVENT]
    assert len(chunk_events) == 1, events
    assert chunk_events[0]["attributes"]["chunk_count"] == streamed["chunks"]


def test_tool_call(full_run: Result, full_spans: dict[str, sqlite3.Row]) -> None:
    out, _ = full_run
    assert out["results"][2] == [["call_1", "get_weather", '{"city": "Paris"}']]
    span = full_spans["tools"]
    assert span["type"] == "llm"
    assert (span["input_tokens"], span["output_tokens"]) == (30, 9)
    assert span["input_text"] == "user: Weather in Paris?"
    assert span["output_text"].startswith("assistant: [tool call] get_weather(")
    assert "Paris" in span["output_text"]
    attributes = json.loads(span["attributes"])
    (message,) = json.loads(attributes["gen_ai.output.messages"])
    (part,) = message["parts"]
    assert (part["type"], part["id"], part["name"], part["arguments"]) == (
        "tool_call",
        "call_1",
        "get_weather",
        {"city": "Paris"},
    )
    assert "get_weather" in attributes["gen_ai.tool.definitions"]


def test_embeddings(full_run: Result, full_spans: dict[str, sqlite3.Row]) -> None:
    out, _ = full_run
    assert out["results"][3] == 8  # the fake server's vector size
    span = full_spans["embed"]
    assert span["name"] == "openai.embeddings"
    assert span["type"] == "embedding"
    assert span["operation"] == "embeddings"
    assert span["model"] == EMBEDDING_MODEL
    assert span["input_tokens"] == 4
    assert span["cost_usd"] == pytest.approx(cost(EMBEDDING_MODEL, input_tokens=4), rel=1e-9)
    assert "hello world" in span["input_text"]


def test_api_error_recorded_and_raised_to_the_app(
    full_run: Result, full_spans: dict[str, sqlite3.Row]
) -> None:
    out, conn = full_run
    assert out["results"][4] == "InternalServerError"  # the application still sees its exception
    span = full_spans["error"]
    assert span["type"] == "llm"
    assert span["status_code"] == "ERROR"
    assert "the model is on fire" in span["status_message"]
    assert json.loads(span["attributes"])["error.type"] == "InternalServerError"
    assert span["input_tokens"] is None and span["cost_usd"] is None
    assert span["input_text"] == "user: Fail please"
    assert any(e["name"] == "exception" for e in json.loads(span["events"]))
    row = conn.execute("SELECT * FROM sessions WHERE session_id = ?", (out["session_id"],)).fetchone()
    assert row["error_count"] == 1


def test_session_rollup(full_run: Result, full_spans: dict[str, sqlite3.Row]) -> None:
    out, conn = full_run
    assert {span["session_id"] for span in full_spans.values()} == {out["session_id"]}
    row = conn.execute("SELECT * FROM sessions WHERE session_id = ?", (out["session_id"],)).fetchone()
    assert row["task"] == "openllmetry scenario"
    assert row["user_id"] == "alice"
    assert row["service_name"] == "openllmetry-test"
    assert row["span_count"] == len(FULL_STEPS)
    expected = (
        cost(RESPONSE_MODEL, input_tokens=21, output_tokens=5, cache_read_tokens=8)
        + cost(REQUEST_MODEL, input_tokens=11, output_tokens=6, cache_read_tokens=3)
        + cost(REQUEST_MODEL, input_tokens=30, output_tokens=9)
        + cost(EMBEDDING_MODEL, input_tokens=4)
    )
    totals = (21 + 11 + 30 + 4, 5 + 6 + 9, 8 + 3, 0)
    if HAS_REASONING:
        totals = (totals[0] + 20, totals[1] + 30, totals[2] + 4, 18)
        expected += cost(
            REASONING_MODEL, input_tokens=20, output_tokens=30, cache_read_tokens=4, reasoning_tokens=18
        )
    assert (
        row["input_tokens"],
        row["output_tokens"],
        row["cache_read_tokens"],
        row["reasoning_tokens"],
    ) == totals
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.skipif(not HAS_REASONING, reason="FakeLLMServer has no Responses API reasoning summary")
def test_responses_reasoning_summary(full_run: Result, full_spans: dict[str, sqlite3.Row]) -> None:
    out, _ = full_run
    assert out["results"][5]["text"] == "42."
    span = full_spans["responses"]
    assert span["name"] == "openai.response"
    assert span["type"] == "llm"
    assert span["model"] == REASONING_MODEL
    assert (span["input_tokens"], span["output_tokens"]) == (20, 30)
    assert (span["cache_read_tokens"], span["reasoning_tokens"]) == (4, 18)
    expected = cost(
        REASONING_MODEL, input_tokens=20, output_tokens=30, cache_read_tokens=4, reasoning_tokens=18
    )
    assert span["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert span["input_text"] == "user: What is 6*7?"
    # OpenLLMetry records the summary as a "reasoning" part (the summary list as JSON text); it is
    # taken out of the output into reasoning_text.
    assert span["output_text"] == "assistant: 42."
    assert span["reasoning_text"] == REASONING_SUMMARY


# -- content capture off --------------------------------------------------------------------------

OFF_STEPS = [{"call": "chat", "messages": SAY_HI}, {"call": "stream", "messages": COUNT}]
OFF_REPLIES = [
    {"content": "Hi there!", "prompt_tokens": 21, "completion_tokens": 5},
    {"content": "One two three four five", "prompt_tokens": 11, "completion_tokens": 6},
]


def assert_no_content(spans: list[sqlite3.Row]) -> None:
    assert len(spans) == 2
    for span, (tokens_in, tokens_out) in zip(spans, [(21, 5), (11, 6)], strict=True):
        attributes = json.loads(span["attributes"])
        assert not [
            k for k in attributes if k.startswith(("gen_ai.input.", "gen_ai.output.", "gen_ai.prompt"))
        ]
        assert span["input_text"] is None and span["output_text"] is None
        # Everything else is still recorded.
        assert span["type"] == "llm"
        assert span["model"] == REQUEST_MODEL
        assert (span["input_tokens"], span["output_tokens"]) == (tokens_in, tokens_out)
        assert span["cost_usd"] == pytest.approx(
            cost(REQUEST_MODEL, input_tokens=tokens_in, output_tokens=tokens_out), rel=1e-9
        )
        for token in ("Say hi", "Hi there", "Count to five", "One two"):
            assert token not in (span["attributes"] + (span["events"] or ""))


def test_traceloop_trace_content_false_records_no_content(runs: Runs) -> None:
    out, spans = runs["trace_content_off"].out, runs["trace_content_off"].spans()
    assert out["results"][0] == "Hi there!"
    assert_no_content(spans)
    # The stream's chunk events carry no content and are still stored as one.
    chunk_events = [e for e in json.loads(spans[1]["events"]) if e["name"] == CHUNK_EVENT]
    assert len(chunk_events) == 1
    assert chunk_events[0]["attributes"]["chunk_count"] == out["results"][1]["chunks"]


def test_capture_content_false_drops_what_openllmetry_records(runs: Runs) -> None:
    # OpenLLMetry records content by default (TRACELOOP_TRACE_CONTENT=true here);
    # configure(capture_content=False) keeps it out of the file.
    out = runs["capture_content_off"].out
    assert out["results"][1]["text"] == "One two three four five"
    assert_no_content(runs["capture_content_off"].spans())


# -- examples/openllmetry_openai.py, run as a user runs it ------------------------------------------


def test_example(runs: Runs) -> None:
    """examples/openllmetry_openai.py, run as a user runs it (started with the other scenarios)."""
    example = load_example("openllmetry_openai")
    run = runs["example"]
    conn = run.conn
    stdout = run.stdout
    assert "answer: Yes: 22°C and sunny in Paris" in stdout
    assert "[workflow] plan_picnic.workflow" in stdout
    assert "[embedding] openai.embeddings" in stdout
    assert str(run.db) in stdout
    assert not (run.db.parent / "traces.db").exists()  # the path argument was honoured
    (session,) = conn.execute("SELECT * FROM sessions").fetchall()
    assert session["task"] == "Is it picnic weather in Paris this afternoon?"
    assert session["user_id"] == "demo-user"
    assert session["status"] == "completed"
    spans = run.spans()
    assert [s["type"] for s in spans] == ["workflow", "llm", "tool", "llm", "llm", "embedding"]
    workflow = spans[0]
    assert all(s["parent_span_id"] == workflow["span_id"] for s in spans[1:])
    calls = [s for s in spans if s["type"] in ("llm", "embedding")]
    assert {s["scope_name"] for s in calls} == {SCOPE}
    script = example.SCRIPT
    assert [(s["input_tokens"], s["output_tokens"] or 0) for s in calls] == [
        (r.prompt_tokens, r.completion_tokens if s["type"] == "llm" else 0)
        for r, s in zip(script, calls, strict=True)
    ]
    assert session["input_tokens"] == sum(r.prompt_tokens for r in script)
    assert session["output_tokens"] == sum(r.completion_tokens for r in script[:3])
    assert session["cache_read_tokens"] == 48
    expected = sum(
        cost(
            s["model"],
            input_tokens=s["input_tokens"],
            output_tokens=s["output_tokens"] or 0,
            cache_read_tokens=s["cache_read_tokens"] or 0,
        )
        for s in calls
    )
    assert session["cost_usd"] == pytest.approx(expected, rel=1e-6)
    tool = spans[2]
    assert tool["input_text"] == '{"city": "Paris"}'
    assert json.loads(tool["output_text"])["conditions"] == "sunny"
    assert json.loads(workflow["attributes"])["traceloop.span.kind"] == "workflow"
    stream = calls[2]
    assert stream["output_text"] == "assistant: Picnic on: sunny and 22°C."
    assert [e["name"] for e in json.loads(stream["events"])] == [CHUNK_EVENT]
