"""Quickstart: trace a tiny agent into a SQLite file, then print what was stored.

    pip install -e ".[test]"
    python examples/quickstart.py [traces.db]

The "LLM" is a scripted fake OpenAI server on 127.0.0.1 (no API key, no network), but the client
is the real ``openai`` package and the spans come from the real openai-v2 instrumentation.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys

from opentelemetry import trace

from otel_sqlite_exporter import configure, session
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

# Without the instrumentation the demo would still run but record no LLM spans: say so up front.
try:
    import openai
    import opentelemetry.instrumentation.openai_v2  # noqa: F401
except ImportError as exc:
    sys.exit(f'quickstart needs {exc.name}, from the test extra: pip install -e ".[test]"')

MODEL = "gpt-4o-mini"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
# What the fake model answers, in order: first it asks for the tool, then it gives the final answer.
SCRIPT = [
    ScriptedReply(
        tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}],
        prompt_tokens=52,
        completion_tokens=17,
    ),
    ScriptedReply(
        content="Pack an umbrella: 14°C and light rain in Paris.", prompt_tokens=81, completion_tokens=14
    ),
]


def get_weather(city: str) -> str:
    return json.dumps({"city": city, "temperature_c": 14, "conditions": "light rain"})


def run_agent(client: openai.OpenAI, task: str) -> str:
    tracer = trace.get_tracer("quickstart")
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "trip-planner"}
    with tracer.start_as_current_span("invoke_agent trip-planner", attributes=attributes):
        messages: list[dict] = [
            {"role": "system", "content": "You plan trips. Check the weather first."},
            {"role": "user", "content": task},
        ]
        # The instrumentation turns each of these calls into an `llm` span under the agent span.
        reply = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
        call = reply.choices[0].message.tool_calls[0]
        messages.append(reply.choices[0].message.model_dump(exclude_none=True))

        tool_attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.function.name,
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.call.arguments": call.function.arguments,
        }
        with tracer.start_as_current_span(
            f"execute_tool {call.function.name}", attributes=tool_attributes
        ) as span:
            result = get_weather(**json.loads(call.function.arguments))
            span.set_attribute("gen_ai.tool.call.result", result)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})

        final = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
        return final.choices[0].message.content or ""


def print_stored(path: str) -> None:
    """A small, local rendering of what landed in the file (plain sqlite3, no library code)."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    s = db.execute("SELECT * FROM sessions ORDER BY start_time_unix_nano DESC LIMIT 1").fetchone()
    cost = "n/a" if s["cost_usd"] is None else f"${s['cost_usd']:.6f}"
    print(f"\nsession {s['session_id']}  task={s['task']!r}  status={s['status']}")
    tokens = f"{s['input_tokens']} input + {s['output_tokens']} output tokens"
    print(f"  {s['span_count']} spans, {tokens}, cost {cost}")
    spans = db.execute(
        "SELECT * FROM spans WHERE session_id = ? ORDER BY start_time_unix_nano", (s["session_id"],)
    ).fetchall()
    children: dict[str | None, list[sqlite3.Row]] = {}
    ids = {span["span_id"] for span in spans}
    for span in spans:
        parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
        children.setdefault(parent, []).append(span)

    def show(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            details = [
                span["model"],
                span["input_tokens"] and f"{span['input_tokens']}+{span['output_tokens']} tok",
            ]
            details.append(f"{span['duration_ms']:.1f} ms" if span["duration_ms"] is not None else "running")
            print(f"  {'  ' * depth}[{span['type']}] {span['name']}  " + "  ".join(d for d in details if d))
            show(span["span_id"], depth + 1)

    show(None, 0)
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", nargs="?", help="SQLite file to write (default: traces.db)")
    parser.add_argument("--db", dest="db_option", help="same as the positional argument")
    args = parser.parse_args()
    path = args.db_option or args.db or "traces.db"

    # configure() also asks the GenAI instrumentations to record prompts and answers on the spans.
    provider = configure(path, service_name="quickstart-agent")

    task = "Plan a trip to Paris"
    with FakeLLMServer(SCRIPT) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-demo", max_retries=0)
        with session(task=task, user_id="demo-user"):
            answer = run_agent(client, task)
    print(f"agent: {answer}")

    # Writes are asynchronous; shutting down flushes every queued span before we read the file.
    provider.shutdown()
    print_stored(path)
    print(f'\nstored in {os.path.abspath(path)}; try: sqlite3 {path} "select * from agent_traces"')


if __name__ == "__main__":
    main()
