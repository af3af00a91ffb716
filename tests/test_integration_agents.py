"""Agent frameworks' spans, following the GenAI agent conventions: ``invoke_agent {name}`` spans,
``chat {model}`` calls and ``execute_tool {tool}`` spans beneath them, a nested sub-agent, and one
conversation (``gen_ai.conversation.id``) over two traces.

The first part runs examples/agent_spans.py as a user does (real openai client traced by openai-v2
against FakeLLMServer, in a fresh interpreter); the second builds the same shape from plain spans
whose model calls carry ``gen_ai.usage.*`` themselves, as a framework that calls the model without
an instrumented client library does.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import start_tracing
from scenarios import environment, load_example, run_example

from otel_sqlite_exporter import PriceTable, TraceStore

Run = tuple[ModuleType, subprocess.CompletedProcess[str], Path]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    pytest.importorskip("openai")
    pytest.importorskip("opentelemetry.instrumentation.openai_v2")
    example = load_example("agent_spans")
    tmp_path = tmp_path_factory.mktemp("agents")
    db = tmp_path / "agents.db"
    proc = run_example("agent_spans", db, environment(NO_COLOR="1"))
    return example, proc, db


@pytest.fixture(scope="module")
def conn(example_run: Run) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(example_run[2])
    connection.row_factory = sqlite3.Row
    yield connection
    connection.close()


def spans_by_type(conn: sqlite3.Connection, span_type: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM spans WHERE type = ? ORDER BY start_time_unix_nano", (span_type,)
    ).fetchall()


def test_example_prints_the_conversation_and_its_tree(example_run: Run) -> None:
    example, proc, db = example_run
    for turn in example.TURNS:
        assert f"user: {turn}" in proc.stdout
    assert "agent: Sunny, 21°C: stay at Hotel du Nord" in proc.stdout
    assert "Session conv-" in proc.stdout
    for line in ("invoke_agent trip-planner", "invoke_agent hotel-finder", "execute_tool book_hotel"):
        assert line in proc.stdout
    assert "ERROR: Hotel du Nord is fully booked" in proc.stdout
    assert str(db) in proc.stdout
    assert not (db.parent / "traces.db").exists()


def test_span_types(conn: sqlite3.Connection) -> None:
    agents = spans_by_type(conn, "agent")
    assert [a["name"] for a in agents] == [
        "invoke_agent trip-planner",
        "invoke_agent hotel-finder",
        "invoke_agent trip-planner",
    ]
    for agent in agents:
        attributes = json.loads(agent["attributes"])
        assert agent["operation"] == "invoke_agent"
        assert attributes["gen_ai.agent.name"] == agent["name"].removeprefix("invoke_agent ")
        assert attributes["gen_ai.agent.id"].startswith("agent-")
    tools = spans_by_type(conn, "tool")
    assert [t["name"] for t in tools] == [
        "execute_tool get_weather",
        "execute_tool find_hotel",
        "execute_tool search_hotels",
        "execute_tool book_hotel",
    ]
    assert all(t["operation"] == "execute_tool" for t in tools)
    llms = spans_by_type(conn, "llm")
    assert len(llms) == 7
    assert all(s["name"] == "chat gpt-4o-mini" and s["operation"] == "chat" for s in llms)
    assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == 3 + 4 + 7


def conversation_id(conn: sqlite3.Connection) -> str:
    """The conversation id the example's agent spans carry (new on each run)."""
    ids = {json.loads(a["attributes"])["gen_ai.conversation.id"] for a in spans_by_type(conn, "agent")}
    assert len(ids) == 1, ids
    return ids.pop()


def test_conversation_is_one_session_over_two_traces(conn: sqlite3.Connection) -> None:
    conversation = conversation_id(conn)
    assert conversation.startswith("conv-")
    assert {row[0] for row in conn.execute("SELECT DISTINCT session_id FROM spans")} == {conversation}
    traces = conn.execute(
        "SELECT * FROM traces WHERE session_id = ? ORDER BY start_time_unix_nano", (conversation,)
    ).fetchall()
    assert len(traces) == 2
    assert [t["root_span_name"] for t in traces] == ["invoke_agent trip-planner"] * 2
    (session,) = conn.execute("SELECT * FROM sessions").fetchall()
    assert session["session_id"] == conversation
    assert session["span_count"] == 14
    assert session["status"] == "completed"  # the failed tool was handled; both root spans ended fine
    assert session["error_count"] == 1
    assert session["service_name"] == "agent-spans-example"


def test_tree(example_run: Run, conn: sqlite3.Connection) -> None:
    with TraceStore(example_run[2]) as store:
        tree = store.session_tree(conversation_id(conn))
    first, second = tree.traces

    def shape(node: Any) -> list[Any]:
        return [(child.entry.name, shape(child)) for child in node.children]

    (root,) = first.roots
    assert root.entry.name == "invoke_agent trip-planner"
    hotel_finder = [
        ("chat gpt-4o-mini", []),
        ("execute_tool search_hotels", []),
        ("chat gpt-4o-mini", []),
    ]
    assert shape(root) == [
        ("chat gpt-4o-mini", []),
        ("execute_tool get_weather", []),
        ("chat gpt-4o-mini", []),
        ("execute_tool find_hotel", [("invoke_agent hotel-finder", hotel_finder)]),
        ("chat gpt-4o-mini", []),
    ]
    (root2,) = second.roots
    assert root2.entry.name == "invoke_agent trip-planner"
    assert shape(root2) == [
        ("chat gpt-4o-mini", []),
        ("execute_tool book_hotel", []),
        ("chat gpt-4o-mini", []),
    ]
    assert not any(node.entry.is_root for _, node in root.walk() if node is not root)


def test_tokens_counted_once_with_agent_spans_repeating_usage(
    example_run: Run, conn: sqlite3.Connection
) -> None:
    example, _, db = example_run
    script = example.SCRIPT
    llms = spans_by_type(conn, "llm")
    assert [(s["input_tokens"], s["output_tokens"]) for s in llms] == [
        (r.prompt_tokens, r.completion_tokens) for r in script
    ]
    # Every agent span reports the summed usage of the model calls beneath it (sub-agent included)...
    planner1, hotel_finder, planner2 = spans_by_type(conn, "agent")
    assert (hotel_finder["input_tokens"], hotel_finder["output_tokens"]) == (40 + 75, 12 + 20)
    assert (planner1["input_tokens"], planner1["output_tokens"]) == (
        sum(r.prompt_tokens for r in script[:5]),
        sum(r.completion_tokens for r in script[:5]),
    )
    assert (planner2["input_tokens"], planner2["output_tokens"]) == (160 + 190, 14 + 16)
    # ...and is left out of the rollups: the innermost usage (the model calls) counts, once.
    total_in = sum(r.prompt_tokens for r in script)
    total_out = sum(r.completion_tokens for r in script)
    session = conn.execute("SELECT * FROM sessions").fetchone()
    assert (session["input_tokens"], session["output_tokens"]) == (total_in, total_out)
    price = PriceTable()
    expected_cost = sum(
        price.cost(s["model"], input_tokens=s["input_tokens"], output_tokens=s["output_tokens"]) for s in llms
    )
    assert session["cost_usd"] == pytest.approx(expected_cost, rel=1e-6)
    traces = conn.execute("SELECT * FROM traces ORDER BY start_time_unix_nano").fetchall()
    assert [(t["input_tokens"], t["output_tokens"]) for t in traces] == [
        (planner1["input_tokens"], planner1["output_tokens"]),
        (planner2["input_tokens"], planner2["output_tokens"]),
    ]
    with TraceStore(db) as store:
        entries = store.session_timeline(conversation_id(conn))
        tree = store.session_tree(conversation_id(conn))
    assert {e.name for e in entries if e.type == "agent" and not e.counted} == {
        "invoke_agent trip-planner",
        "invoke_agent hotel-finder",
    }
    assert all(e.counted for e in entries if e.type == "llm")
    assert (tree.input_tokens, tree.output_tokens) == (total_in, total_out)
    assert tree.cost_usd == pytest.approx(expected_cost, rel=1e-6)
    (root,) = tree.traces[0].roots
    assert (root.input_tokens, root.output_tokens) == (planner1["input_tokens"], planner1["output_tokens"])


def test_tool_spans_input_output_and_error(example_run: Run, conn: sqlite3.Connection) -> None:
    example, _, _ = example_run
    weather, find_hotel, search, book = spans_by_type(conn, "tool")
    attributes = json.loads(weather["attributes"])
    assert attributes["gen_ai.tool.name"] == "get_weather"
    assert attributes["gen_ai.tool.call.id"] == "call_1"
    assert weather["input_text"] == '{"city": "Paris"}'
    assert weather["output_text"] == example.get_weather("Paris")
    assert search["input_text"] == '{"city": "Paris", "max_eur": 200}'
    assert search["output_text"] == example.search_hotels("Paris", 200)
    assert find_hotel["output_text"] == "Hotel du Nord, 180 EUR a night."  # the sub-agent's answer
    assert book["input_text"] == '{"hotel": "Hotel du Nord"}'
    assert book["status_code"] == "ERROR"
    assert book["status_message"] == "Hotel du Nord is fully booked"
    assert json.loads(book["output_text"]) == {"error": "Hotel du Nord is fully booked"}
    (event,) = json.loads(book["events"])
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "RuntimeError"
    for tool in (weather, find_hotel, search, book):
        assert tool["input_tokens"] is None and tool["cost_usd"] is None


def test_agent_and_model_call_text(conn: sqlite3.Connection) -> None:
    planner1, hotel_finder, planner2 = spans_by_type(conn, "agent")
    assert planner1["input_text"].endswith("user: Plan a weekend in Paris")
    assert planner1["output_text"].startswith("assistant: Sunny, 21°C")
    assert hotel_finder["input_text"] == (
        'system: You find hotels. Search, then recommend one.\nuser: find_hotel: {"city": "Paris"}'
    )
    assert planner2["output_text"] == "assistant: Hotel du Nord is fully booked; shall I look for another?"
    first_call = spans_by_type(conn, "llm")[0]
    assert "user: Plan a weekend in Paris" in first_call["input_text"]
    assert first_call["output_text"].startswith("assistant: [tool call] get_weather(")


# -- the same shape from plain spans, model calls carrying their own gen_ai.usage.* ------------------


def test_plain_agent_spans_count_innermost_usage_once(tmp_path: Path) -> None:
    model = "gpt-4o"
    calls = [(1200, 80, 1000), (300, 40, 0), (900, 60, 512)]  # input, output, cache read per model call
    tracing = start_tracing(tmp_path / "plain.db")
    tracer = tracing.tracer

    def usage(spans: list[tuple[int, int, int]]) -> dict[str, int]:
        return {
            "gen_ai.usage.input_tokens": sum(c[0] for c in spans),
            "gen_ai.usage.output_tokens": sum(c[1] for c in spans),
            "gen_ai.usage.cache_read.input_tokens": sum(c[2] for c in spans),
        }

    def chat(tokens: tuple[int, int, int]) -> None:
        attributes = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model}
        with tracer.start_as_current_span(f"chat {model}", attributes=attributes) as span:
            span.set_attributes(usage([tokens]))

    def agent(name: str) -> dict[str, Any]:
        return {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": name,
            "gen_ai.agent.id": f"{name}-1",
            "gen_ai.conversation.id": "conv-plain",
            "gen_ai.request.model": model,
        }

    try:
        with tracer.start_as_current_span("invoke_agent researcher", attributes=agent("researcher")) as outer:
            chat(calls[0])
            tool = {"gen_ai.tool.name": "ask_writer", "gen_ai.tool.call.id": "call_9"}
            with tracer.start_as_current_span("execute_tool ask_writer", attributes=tool) as tool_span:
                tool_span.set_attribute("gen_ai.tool.call.arguments", '{"topic": "tides"}')
                with tracer.start_as_current_span("invoke_agent writer", attributes=agent("writer")) as inner:
                    chat(calls[1])
                    chat(calls[2])
                    inner.set_attributes(usage(calls[1:]))
                tool_span.set_attribute("gen_ai.tool.call.result", "Tides follow the moon.")
            outer.set_attributes(usage(calls))
        tracing.flush()
        rows = tracing.q(
            "SELECT name, type, input_tokens, cache_read_tokens, session_id"
            " FROM spans ORDER BY start_time_unix_nano"
        )
        session = tracing.q(
            "SELECT session_id, span_count, input_tokens, output_tokens, cache_read_tokens, cost_usd"
            " FROM sessions"
        )
    finally:
        tracing.close()

    assert [(name, span_type) for name, span_type, *_ in rows] == [
        ("invoke_agent researcher", "agent"),
        (f"chat {model}", "llm"),
        ("execute_tool ask_writer", "tool"),  # gen_ai.tool.name alone makes a tool span
        ("invoke_agent writer", "agent"),
        (f"chat {model}", "llm"),
        (f"chat {model}", "llm"),
    ]
    assert {row[4] for row in rows} == {"conv-plain"}
    assert rows[0][2:4] == (2400, 1512) and rows[3][2:4] == (1200, 512)  # the agents' own, summed
    expected_cost = sum(
        PriceTable().cost(model, input_tokens=i, output_tokens=o, cache_read_tokens=c) for i, o, c in calls
    )
    ((session_id, span_count, tokens_in, tokens_out, cache_read, cost_usd),) = session
    assert (session_id, span_count) == ("conv-plain", 6)
    assert (tokens_in, tokens_out, cache_read) == (2400, 180, 1512)  # not 2x or 3x
    assert cost_usd == pytest.approx(expected_cost, rel=1e-6)
