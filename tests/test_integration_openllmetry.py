"""OpenLLMetry's openai instrumentation (``opentelemetry-instrumentation-openai``), chosen with
``configure(instrument=[...])``, with the real ``openai`` client against FakeLLMServer.

Instrumentation is process-global, so each scenario runs in a fresh interpreter of its own (all of
them started at once, see ``runs``) and the tests read the SQLite file it wrote.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from otel_sqlite_exporter import PriceTable
from otel_sqlite_exporter.fake_llm_server import ScriptedReply

pytest.importorskip("openai")
pytest.importorskip("opentelemetry.instrumentation.openai")

DIST = "opentelemetry-instrumentation-openai"
SCOPE = "opentelemetry.instrumentation.openai.v1"
REQUEST_MODEL = "gpt-4o-mini"
RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"
EMBEDDING_MODEL = "text-embedding-3-small"
CHUNK_EVENT = "gen_ai.content.completion.chunk"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REASONING_MODEL = "o4-mini"
REASONING_SUMMARY = "Six times seven is forty-two."
# The Responses API's reasoning summary needs FakeLLMServer's ScriptedReply.reasoning.
HAS_REASONING = "reasoning" in {f.name for f in dataclasses.fields(ScriptedReply)}

# The app side of every scenario: runs cfg["steps"] against a FakeLLMServer scripted with
# cfg["replies"] and prints one JSON line with what the application observed.
APP = r"""
import json, os, sys
import openai
from otel_sqlite_exporter import configure, session
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

cfg = json.loads(sys.argv[1])
provider = configure(cfg["db"], service_name="openllmetry-test", instrument=[cfg["dist"]], **cfg["options"])
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]

def run(client, step):
    kind, messages = step["call"], step.get("messages")
    try:
        if kind == "chat":
            reply = client.chat.completions.create(model=cfg["model"], messages=messages)
            return reply.choices[0].message.content
        if kind == "tools":
            reply = client.chat.completions.create(model=cfg["model"], messages=messages, tools=TOOLS)
            calls = reply.choices[0].message.tool_calls
            return [[c.id, c.function.name, c.function.arguments] for c in calls]
        if kind == "stream":
            stream = client.chat.completions.create(
                model=cfg["model"], messages=messages, stream=True, stream_options={"include_usage": True}
            )
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return {"text": text, "chunks": len(chunks)}
        if kind == "responses":
            reply = client.responses.create(
                model=step["model"], input=step["input"], reasoning={"effort": "low", "summary": "auto"}
            )
            return reply.output_text
        if kind == "embed":
            reply = client.embeddings.create(model=step["model"], input=step["input"])
            return len(reply.data[0].embedding)
    except openai.APIError as exc:
        return type(exc).__name__
    raise ValueError(kind)

out = {"results": []}
with FakeLLMServer([ScriptedReply(**r) for r in cfg["replies"]]) as server:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
    with session(task="openllmetry scenario", user_id="alice") as s:
        out["session_id"] = s.session_id
        for step in cfg["steps"]:
            out["results"].append(run(client, step))
provider.shutdown()
print(json.dumps(out))
"""

SAY_HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
COUNT = [{"role": "user", "content": "Count to five"}]
WEATHER = [{"role": "user", "content": "Weather in Paris?"}]
FAIL = [{"role": "user", "content": "Fail please"}]

Result = tuple[dict[str, Any], sqlite3.Connection]


@dataclass
class Run:
    """One scenario's interpreter, started in the background; ``finish()`` waits for it."""

    proc: subprocess.Popen[str]
    db: Path
    stdout: str = ""
    stderr: str = ""
    _conn: sqlite3.Connection | None = None

    def finish(self) -> None:
        try:
            self.stdout, self.stderr = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.stdout, self.stderr = self.proc.communicate()

    @property
    def out(self) -> dict[str, Any]:
        """The JSON line APP printed: what the application observed."""
        assert self.proc.returncode == 0, self.stderr
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def conn(self) -> sqlite3.Connection:
        assert self.proc.returncode == 0, self.stderr
        if self._conn is None:
            self._conn = sqlite3.connect(self.db)
            self._conn.row_factory = sqlite3.Row
        return self._conn

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._conn is not None:
            self._conn.close()


def start(command: list[str], db: Path, env: dict[str, str]) -> Run:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACELOOP_"))}
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean, "NO_COLOR": "1", **env},
        cwd=db.parent,
    )
    return Run(proc, db)


def start_app(
    tmp_path: Path,
    steps: list[dict[str, Any]],
    replies: list[dict[str, Any]],
    *,
    env: dict[str, str] | None = None,
    options: dict[str, Any] | None = None,
) -> Run:
    db = tmp_path / "traces.db"
    cfg = {
        "db": str(db),
        "dist": DIST,
        "model": REQUEST_MODEL,
        "steps": steps,
        "replies": replies,
        "options": options or {},
    }
    # The anthropic instrumentation has nothing to trace here; skipping it spares importing anthropic.
    env = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "anthropic", **(env or {})}
    return start([sys.executable, "-c", APP, json.dumps(cfg)], db, env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Every scenario of this module, each in its own interpreter, started at once, then awaited."""
    started: dict[str, Run] = {}
    try:
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
        started["example"] = start([sys.executable, str(EXAMPLES / "openllmetry_openai.py"), str(db)], db, {})
        for run in started.values():
            run.finish()
        yield started
    finally:
        for run in started.values():
            run.close()


def spans_in_order(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM spans ORDER BY start_time_unix_nano").fetchall()


def cost(model: str, **tokens: int) -> float:
    value = PriceTable().cost(model, **tokens)
    assert value is not None, model
    return value


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
def full_run(runs: dict[str, Run]) -> Result:
    return runs["full"].out, runs["full"].conn


@pytest.fixture(scope="module")
def full_spans(full_run: Result) -> dict[str, sqlite3.Row]:
    _, conn = full_run
    spans = spans_in_order(conn)
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
    assert out["results"][5] == "42."
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


def test_traceloop_trace_content_false_records_no_content(runs: dict[str, Run]) -> None:
    out, conn = runs["trace_content_off"].out, runs["trace_content_off"].conn
    assert out["results"][0] == "Hi there!"
    spans = spans_in_order(conn)
    assert_no_content(spans)
    # The stream's chunk events carry no content and are still stored as one.
    chunk_events = [e for e in json.loads(spans[1]["events"]) if e["name"] == CHUNK_EVENT]
    assert len(chunk_events) == 1
    assert chunk_events[0]["attributes"]["chunk_count"] == out["results"][1]["chunks"]


def test_capture_content_false_drops_what_openllmetry_records(runs: dict[str, Run]) -> None:
    # OpenLLMetry records content by default (TRACELOOP_TRACE_CONTENT=true here);
    # configure(capture_content=False) keeps it out of the file.
    out, conn = runs["capture_content_off"].out, runs["capture_content_off"].conn
    assert out["results"][1]["text"] == "One two three four five"
    assert_no_content(spans_in_order(conn))


# -- examples/openllmetry_openai.py, run as a user runs it ------------------------------------------


def load_example(name: str) -> ModuleType:
    """Import an example as a module (its main() does not run) to read what it scripts."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_example(runs: dict[str, Run]) -> None:
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
    spans = spans_in_order(conn)
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
