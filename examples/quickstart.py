"""Quickstart: trace a tiny agent into a SQLite file, then print its session tree.

    pip install -e ".[test]"
    python examples/quickstart.py [traces.db]

The "LLM" is a scripted fake OpenAI server on 127.0.0.1 (no API key, no network), but the client
is the real ``openai`` package and the spans come from the real openai-v2 instrumentation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from opentelemetry import trace

from otel_sqlite_exporter import TraceStore, configure, session
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
    with TraceStore(path) as store:
        latest = store.get_sessions(limit=1)[0]
        print()
        print(store.format_tree(latest.id, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR")))
    print(f"\nstored in {os.path.abspath(path)}; try: otel-sqlite --db {path} show {latest.id}")


if __name__ == "__main__":
    main()
