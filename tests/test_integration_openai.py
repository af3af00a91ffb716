"""configure() + real GenAI instrumentations + the real openai client against FakeLLMServer.

configure() sets the global tracer provider and instruments the openai client globally, which can
happen only once per process, so every scenario runs in its own Python subprocess
(``run_scenario``); the test process then reads the SQLite file it wrote.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_sqlite_exporter import PriceTable
from otel_sqlite_exporter._configure import genai_instrumentors

REQUEST_MODEL = "gpt-4o-mini"
RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"

# The app side of every scenario. It prints one JSON line with what the application observed.
APP = r"""
import json, os, sys
import openai
from otel_sqlite_exporter import configure, session
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

cfg = json.loads(sys.argv[1])
os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "SPAN_ONLY"
provider = configure(cfg["db"], service_name="integration", instrument=cfg["instrument"])
again = configure(cfg["other_db"], instrument=cfg["instrument"])
out = {
    "same_provider": again is provider,
    "processors": [type(p).__name__ for p in provider._active_span_processor._span_processors],
    "results": [],
}

def call(client):
    try:
        reply = client.chat.completions.create(
            model=cfg["model"], messages=[{"role": "user", "content": "Say hi"}]
        )
        out["results"].append(reply.choices[0].message.content)
    except openai.APIError as exc:
        out["results"].append(type(exc).__name__)

with FakeLLMServer([ScriptedReply(**r) for r in cfg["replies"]]) as server:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
    with session(task="integration task", user_id="alice") as s:
        out["session_id"] = s.session_id
        for _ in range(cfg["calls_in_session"]):
            call(client)
    for _ in range(cfg["calls_outside"]):
        call(client)
provider.shutdown()
print(json.dumps(out))
"""


Result = tuple[dict[str, Any], sqlite3.Connection]


def run_scenario(
    tmp_path: Path,
    replies: list[dict[str, Any]],
    *,
    instrument: bool | list[str] = True,
    calls_in_session: int = 1,
    calls_outside: int = 0,
) -> Result:
    """Run APP in a fresh interpreter; returns what the app printed and a connection to its file."""
    db = tmp_path / "traces.db"
    cfg = {
        "db": str(db),
        "other_db": str(tmp_path / "other.db"),
        "instrument": instrument,
        "model": REQUEST_MODEL,
        "replies": replies,
        "calls_in_session": calls_in_session,
        "calls_outside": calls_outside,
    }
    # A clean OTel environment: the scenario decides what is captured and instrumented.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, "-c", APP, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    return out, conn


def llm_spans(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM spans WHERE type = 'llm' ORDER BY start_time_unix_nano").fetchall()


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Callable[..., Result]]:
    connections: list[sqlite3.Connection] = []

    def run(replies: list[dict[str, Any]], **kwargs: Any) -> Result:
        out, conn = run_scenario(tmp_path, replies, **kwargs)
        connections.append(conn)
        return out, conn

    yield run
    for conn in connections:
        conn.close()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Result]:
    """Default configure(): two calls inside a session, one outside."""
    replies = [
        {"content": "Hi there!", "prompt_tokens": 21, "completion_tokens": 5, "model": RESPONSE_MODEL},
        {"content": "Hello again.", "prompt_tokens": 33, "completion_tokens": 8, "model": RESPONSE_MODEL},
        {"content": "Outside.", "prompt_tokens": 10, "completion_tokens": 3, "model": RESPONSE_MODEL},
    ]
    out, conn = run_scenario(tmp_path_factory.mktemp("default"), replies, calls_in_session=2, calls_outside=1)
    yield out, conn
    conn.close()


def test_llm_span_has_model_provider_tokens_cost_duration(default_run: Result) -> None:
    out, conn = default_run
    assert out["results"] == ["Hi there!", "Hello again.", "Outside."]
    spans = llm_spans(conn)
    assert len(spans) == 3
    price = PriceTable().lookup(RESPONSE_MODEL)
    assert price is not None
    for span, (tokens_in, tokens_out) in zip(spans, [(21, 5), (33, 8), (10, 3)], strict=True):
        assert span["model"] == RESPONSE_MODEL
        assert span["provider"] == "openai"
        assert span["kind"] == "client"
        assert span["status_code"] != "ERROR"
        assert (span["input_tokens"], span["output_tokens"]) == (tokens_in, tokens_out)
        expected = (tokens_in * price.input + tokens_out * price.output) / 1_000_000
        assert span["cost_usd"] == pytest.approx(expected, rel=1e-6)
        assert span["end_time_unix_nano"] > span["start_time_unix_nano"]
        assert span["duration_ms"] > 0
    # SPAN_ONLY content capture puts the conversation on the span.
    assert "user: Say hi" in spans[0]["input_text"]
    assert "Hi there!" in spans[0]["output_text"]


def test_calls_inside_session_belong_to_it(default_run: Result) -> None:
    out, conn = default_run
    inside, _, outside = llm_spans(conn)
    assert inside["session_id"] == out["session_id"]
    assert json.loads(inside["attributes"])["user.id"] == "alice"
    row = conn.execute("SELECT * FROM sessions WHERE session_id = ?", (out["session_id"],)).fetchone()
    assert row["task"] == "integration task"
    assert row["user_id"] == "alice"
    assert row["status"] == "completed"
    assert row["service_name"] == "integration"
    assert row["span_count"] == 2
    assert (row["input_tokens"], row["output_tokens"]) == (21 + 33, 5 + 8)
    # Outside any session() the trace becomes its own session.
    assert outside["session_id"] == outside["trace_id"]


def test_configure_twice_same_provider_one_processor(default_run: Result) -> None:
    out, conn = default_run
    assert out["same_provider"] is True
    assert out["processors"].count("SQLiteSpanProcessor") == 1
    # Every span row exactly once, and the rollups count each span once.
    assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == 3
    assert conn.execute("SELECT sum(span_count) FROM sessions").fetchone()[0] == 3


def test_second_configure_with_other_path_writes_nothing_there(default_run: Result) -> None:
    _, conn = default_run
    db_path = Path(conn.execute("PRAGMA database_list").fetchone()["file"])
    assert not (db_path.parent / "other.db").exists()


def test_one_instrumentor_per_client_openai_v2_by_default(default_run: Result) -> None:
    # Meaningful only when the competing instrumentations are installed too.
    pytest.importorskip("opentelemetry.instrumentation.openai")
    pytest.importorskip("openinference.instrumentation.openai")
    _, conn = default_run
    # Three calls, three spans: no second or third instrumentation traced the same call.
    assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == 3
    for span in llm_spans(conn):
        # openai-v2 2.4 emits through the opentelemetry-util-genai handler; earlier versions used their own.
        assert span["scope_name"] in {
            "opentelemetry.util.genai.handler",
            "opentelemetry.instrumentation.openai_v2",
        }
        # Not OpenLLMetry (scope opentelemetry.instrumentation.openai.v1) nor OpenInference.
        assert "openinference.span.kind" not in json.loads(span["attributes"])


def test_instrument_list_prefers_openinference(scenario: Callable[..., Result]) -> None:
    pytest.importorskip("openinference.instrumentation.openai")
    replies = [{"content": "Hi!", "prompt_tokens": 17, "completion_tokens": 4, "model": RESPONSE_MODEL}]
    out, conn = scenario(replies, instrument=["openinference-instrumentation-openai"])
    assert out["results"] == ["Hi!"]
    spans = conn.execute("SELECT * FROM spans").fetchall()
    assert len(spans) == 1, [dict(s) for s in spans]
    (span,) = spans
    assert json.loads(span["attributes"])["openinference.span.kind"] == "LLM"
    assert span["type"] == "llm"
    assert span["model"] == RESPONSE_MODEL
    assert span["provider"] == "openai"
    assert (span["input_tokens"], span["output_tokens"]) == (17, 4)
    assert span["session_id"] == out["session_id"]


def test_instrument_false_records_no_llm_span(scenario: Callable[..., Result]) -> None:
    out, conn = scenario([{"content": "Hi!"}], instrument=False)
    assert out["results"] == ["Hi!"]
    assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == 0


def test_api_error_is_recorded_and_reaches_the_app(scenario: Callable[..., Result]) -> None:
    replies = [{"status": 500, "error_message": "the model is on fire"}]
    out, conn = scenario(replies)
    # Tracing does not swallow the exception: the application saw it.
    assert out["results"] == ["InternalServerError"]
    (span,) = llm_spans(conn)
    assert span["status_code"] == "ERROR"
    assert span["status_message"]
    assert span["end_time_unix_nano"] is not None
    assert span["session_id"] == out["session_id"]
    row = conn.execute("SELECT * FROM sessions WHERE session_id = ?", (out["session_id"],)).fetchone()
    assert row["error_count"] == 1
    # The errored LLM span is the session's root span: the session is failed (DESIGN.md, sessions).
    assert row["status"] == "failed"


def test_genai_instrumentors_picks_openai_v2_for_openai() -> None:
    chosen = genai_instrumentors()
    assert "openai" in chosen
    dist = chosen["openai"].dist
    assert dist is not None
    assert dist.name.lower().replace("_", "-") == "opentelemetry-instrumentation-openai-v2"
