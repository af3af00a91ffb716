"""OpenLLMetry: trace the anthropic client with opentelemetry-instrumentation-anthropic into a SQLite file.

    pip install -e ".[test]"
    python examples/openllmetry_anthropic.py [traces.db]

``configure(instrument=["opentelemetry-instrumentation-anthropic"])`` activates OpenLLMetry's
instrumentation for the ``anthropic`` client. A small agent thinks, asks for the weather with a
tool call (its long system prompt is written to the prompt cache), answers from the cache, then
streams a summary. Each call is an ``anthropic.chat`` span; the anthropic client (2.x) records its
own ``anthropic.messages.create`` span for the same call, which the file keeps and marks as a
repeat, so every call counts once. The model is a scripted fake Anthropic server on 127.0.0.1 (no
API key, no network).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from opentelemetry import trace

from otel_sqlite_exporter import TraceStore, configure, session
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

try:
    import anthropic
    import opentelemetry.instrumentation.anthropic  # noqa: F401  (OpenLLMetry's package)
except ImportError as exc:
    sys.exit(f'openllmetry_anthropic needs {exc.name}, from the test extra: pip install -e ".[test]"')

INSTRUMENTATION = "opentelemetry-instrumentation-anthropic"
MODEL = "claude-haiku-4-5"
# A long, stable system prompt marked for Anthropic's prompt cache.
SYSTEM: list[Any] = [
    {
        "type": "text",
        "text": "You are a picnic planner. Always check the weather first. (Pages of house rules follow"
        " here: a long prompt that stays the same from call to call is what the cache is for.)",
        "cache_control": {"type": "ephemeral"},
    }
]
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
# What the fake model answers, in order. Anthropic's input_tokens leaves out the prompt's cached
# part: the first call writes 1,800 tokens to the cache, the second reads them back.
SCRIPT = [
    ScriptedReply(
        reasoning="The question is about this afternoon in Paris: check the weather before answering.",
        tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}],
        prompt_tokens=58,
        completion_tokens=64,
        reasoning_tokens=30,
        cache_write_tokens=1800,
    ),
    ScriptedReply(
        content="Yes: 22°C and sunny in Paris, a good afternoon for a picnic.",
        prompt_tokens=142,
        completion_tokens=17,
        cached_tokens=1800,
    ),
    ScriptedReply(content="Picnic on: sunny and 22°C.", prompt_tokens=31, completion_tokens=9),
]


def get_weather(city: str) -> str:
    return json.dumps({"city": city, "temperature_c": 22, "conditions": "sunny"})


def run_agent(client: anthropic.Anthropic, question: str) -> str:
    tracer = trace.get_tracer("openllmetry-anthropic-example")
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "picnic-planner"}
    with tracer.start_as_current_span("invoke_agent picnic-planner", attributes=attributes):
        messages: list[Any] = [{"role": "user", "content": question}]
        # Extended thinking: the thinking block lands in the span's reasoning_text.
        reply = client.messages.create(
            model=MODEL,
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 1024},
            system=SYSTEM,
            tools=TOOLS,
            messages=messages,
        )
        call = next(block for block in reply.content if block.type == "tool_use")
        messages.append({"role": "assistant", "content": reply.content})
        tool_attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.name,
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.call.arguments": json.dumps(call.input),
        }
        with tracer.start_as_current_span(f"execute_tool {call.name}", attributes=tool_attributes) as span:
            result = get_weather(**call.input)
            span.set_attribute("gen_ai.tool.call.result", result)
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}]}
        )
        final = client.messages.create(
            model=MODEL, max_tokens=2048, system=SYSTEM, tools=TOOLS, messages=messages
        )
        answer = "".join(block.text for block in final.content if block.type == "text")

        # Streaming: one span for the whole stream, with its text and usage once it is consumed.
        with client.messages.stream(
            model=MODEL,
            max_tokens=256,
            messages=[{"role": "user", "content": f"Summarise in five words: {answer}"}],
        ) as stream:
            "".join(stream.text_stream)
        return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", nargs="?", help="SQLite file to write (default: traces.db)")
    args = parser.parse_args()
    path = args.db or "traces.db"

    # OpenLLMetry records prompts and completions unless TRACELOOP_TRACE_CONTENT=false; the
    # client's own span records none unless ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE=content.
    provider = configure(path, service_name="openllmetry-anthropic-example", instrument=[INSTRUMENTATION])

    question = "Is it picnic weather in Paris this afternoon?"
    with FakeLLMServer(SCRIPT) as server:
        client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="sk-ant-demo", max_retries=0)
        with session(task=question, user_id="demo-user") as current:
            answer = run_agent(client, question)
    print(f"answer: {answer}")

    provider.shutdown()  # flushes every queued span before we read the file
    with TraceStore(path) as store:
        print()
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        print(store.format_tree(current.session_id, color=color))
    print(f"\nstored in {os.path.abspath(path)}; try: otel-sqlite --db {path} show {current.session_id}")


if __name__ == "__main__":
    main()
