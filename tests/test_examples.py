"""The examples run as a user runs them: a fresh interpreter, from the command line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from scenarios import load_example, run_example

from otel_sqlite_exporter import PriceTable


def test_quickstart(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    pytest.importorskip("opentelemetry.instrumentation.openai_v2")
    quickstart = load_example("quickstart")
    db = tmp_path / "demo.db"
    proc = run_example("quickstart", db)
    assert "Plan a trip to Paris" in proc.stdout
    assert "execute_tool get_weather" in proc.stdout
    assert str(db) in proc.stdout
    assert not (tmp_path / "traces.db").exists()  # the path argument was honoured

    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        (session,) = conn.execute("SELECT * FROM sessions").fetchall()
        assert session["task"] == "Plan a trip to Paris"
        assert session["user_id"] == "demo-user"
        assert session["status"] == "completed"
        assert session["service_name"] == "quickstart-agent"
        spans = conn.execute(
            "SELECT * FROM spans WHERE session_id = ? ORDER BY start_time_unix_nano", (session["session_id"],)
        ).fetchall()
        assert session["span_count"] == len(spans) >= 4
        types = [span["type"] for span in spans]
        assert types.count("agent") == 1 and types.count("llm") == 2 and types.count("tool") == 1
        (agent,) = (span for span in spans if span["type"] == "agent")
        assert all(span["parent_span_id"] == agent["span_id"] for span in spans if span is not agent)
        assert all(span["end_time_unix_nano"] is not None for span in spans)

        script = quickstart.SCRIPT
        assert session["input_tokens"] == sum(reply.prompt_tokens for reply in script)
        assert session["output_tokens"] == sum(reply.completion_tokens for reply in script)
        llms = [span for span in spans if span["type"] == "llm"]
        assert [(s["input_tokens"], s["output_tokens"]) for s in llms] == [
            (reply.prompt_tokens, reply.completion_tokens) for reply in script
        ]
        expected_cost = sum(
            PriceTable().cost(s["model"], input_tokens=s["input_tokens"], output_tokens=s["output_tokens"])
            for s in llms
        )
        assert session["cost_usd"] == pytest.approx(expected_cost, rel=1e-6)
        # SPAN_ONLY capture: the first call's prompt and the tool call it answered are stored.
        assert "user: Plan a trip to Paris" in llms[0]["input_text"]
        assert "get_weather" in llms[0]["output_text"]
    finally:
        conn.close()
