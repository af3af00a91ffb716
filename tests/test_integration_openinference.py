"""OpenInference's openai instrumentation (``openinference-instrumentation-openai``), chosen with
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
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# The Responses API's reasoning summary needs FakeLLMServer's ScriptedReply.reasoning.
HAS_REASONING = "reasoning" in {f.name for f in dataclasses.fields(ScriptedReply)}

# The app side: runs cfg["steps"] against a FakeLLMServer scripted with cfg["replies"], each step
# inside OpenInference's using_session()/using_user() when it names a session, and prints one
# JSON line with what the application observed.
APP = r"""
import contextlib, json, sys
import openai
from openinference.instrumentation import using_session, using_user
from otel_sqlite_exporter import configure
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

cfg = json.loads(sys.argv[1])
provider = configure(cfg["db"], service_name="openinference-test", instrument=[cfg["dist"]])
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]

def run(client, step):
    kind, messages, model = step["call"], step.get("messages"), step.get("model", cfg["model"])
    try:
        if kind == "chat":
            reply = client.chat.completions.create(model=model, messages=messages)
            return reply.choices[0].message.content
        if kind == "tools":
            reply = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
            calls = reply.choices[0].message.tool_calls
            return [[c.id, c.function.name, c.function.arguments] for c in calls]
        if kind == "stream":
            stream = client.chat.completions.create(
                model=model, messages=messages, stream=True, stream_options={"include_usage": True}
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        if kind == "responses":
            reply = client.responses.create(
                model=model, input=step["input"], reasoning={"effort": "low", "summary": "auto"}
            )
            summaries = [s.text for item in reply.output if item.type == "reasoning" for s in item.summary]
            return {"text": reply.output_text, "reasoning": summaries}
        if kind == "embed":
            reply = client.embeddings.create(model=model, input=step["input"])
            return len(reply.data[0].embedding)
    except openai.APIError as exc:
        return type(exc).__name__
    raise ValueError(kind)

out = {"results": []}
with FakeLLMServer([ScriptedReply(**r) for r in cfg["replies"]]) as server:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
    for step in cfg["steps"]:
        with contextlib.ExitStack() as stack:
            if step.get("session"):
                stack.enter_context(using_session(step["session"]))
                stack.enter_context(using_user(step["user"]))
            out["results"].append(run(client, step))
provider.shutdown()
print(json.dumps(out))
"""

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


def cost(model: str, **tokens: int) -> float:
    value = PriceTable().cost(model, **tokens)
    assert value is not None, model
    return value


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
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OPENINFERENCE_"))}
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
    env: dict[str, str] | None = None,
) -> Run:
    db = tmp_path / "traces.db"
    cfg = {"db": str(db), "dist": DIST, "model": REQUEST_MODEL, "steps": steps, "replies": replies}
    # The anthropic instrumentation has nothing to trace here; skipping it spares importing anthropic.
    env = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "anthropic", **(env or {})}
    return start([sys.executable, "-c", APP, json.dumps(cfg)], db, env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Every scenario of this module, each in its own interpreter, started at once, then awaited."""
    started: dict[str, Run] = {}
    try:
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
            started["example"] = start(
                [sys.executable, str(EXAMPLES / "openinference_openai.py"), str(db)], db, {}
            )
        for run in started.values():
            run.finish()
        yield started
    finally:
        for run in started.values():
            run.close()


@pytest.fixture(scope="module")
def run(runs: dict[str, Run]) -> Result:
    return runs["full"].out, runs["full"].conn


@pytest.fixture(scope="module")
def spans(run: Result) -> dict[str, sqlite3.Row]:
    _, conn = run
    rows = conn.execute("SELECT * FROM spans ORDER BY start_time_unix_nano").fetchall()
    # One span per call: OpenInference alone traced the client (not openai-v2, not OpenLLMetry).
    assert len(rows) == len(STEPS), [(r["name"], r["scope_name"]) for r in rows]
    assert {r["scope_name"] for r in rows} == {SCOPE}
    return dict(zip(NAMES, rows, strict=True))


def attributes(span: sqlite3.Row) -> dict[str, Any]:
    return json.loads(span["attributes"])


def test_one_openinference_span_per_call(run: Result, spans: dict[str, sqlite3.Row]) -> None:
    out, _ = run
    assert out["results"][:3] == [
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
    assert out["results"][1] == "One two three four five"
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


def test_hide_inputs_and_outputs_keeps_content_out(runs: dict[str, Run]) -> None:
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


def test_genai_semconv_alongside_openinference_counts_once(runs: dict[str, Run]) -> None:
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


def load_example(name: str) -> ModuleType:
    """Import an example as a module (its main() does not run) to read what it scripts."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not HAS_REASONING, reason="FakeLLMServer has no Responses API reasoning summary")
def test_example(runs: dict[str, Run]) -> None:
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
    spans = conn.execute("SELECT * FROM spans ORDER BY start_time_unix_nano").fetchall()
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
