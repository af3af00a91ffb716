"""The examples run as a user runs them: a fresh interpreter, from the command line."""

from __future__ import annotations

import importlib.util
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from otel_sqlite_exporter import PriceTable

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import an example as a module (its main() does not run) to read what it scripts."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    pytest.importorskip("opentelemetry.instrumentation.openai_v2")
    quickstart = load_example("quickstart")
    db = tmp_path / "demo.db"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
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
