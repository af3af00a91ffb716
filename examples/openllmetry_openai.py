"""OpenLLMetry: trace the openai client with opentelemetry-instrumentation-openai into a SQLite file.

    pip install -e ".[test]"
    python examples/openllmetry_openai.py [traces.db]

``configure(instrument=["opentelemetry-instrumentation-openai"])`` picks OpenLLMetry's
instrumentation for the ``openai`` client (by default OpenTelemetry's own openai-v2 wins). The
app asks for the weather with a tool call, answers from a prompt-cached request, streams a
summary and embeds it: each call is one ``openai.chat`` / ``openai.embeddings`` span. The model
is a scripted fake OpenAI server on 127.0.0.1 (no API key, no network).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from opentelemetry import trace

from otel_sqlite_exporter import TraceStore, configure, session
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

try:
    import openai
    import opentelemetry.instrumentation.openai  # noqa: F401  (OpenLLMetry's package)
except ImportError as exc:
    sys.exit(f'openllmetry_openai needs {exc.name}, from the test extra: pip install -e ".[test]"')

INSTRUMENTATION = "opentelemetry-instrumentation-openai"
MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
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
# What the fake model answers, in order.
SCRIPT = [
    ScriptedReply(
        tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}],
        prompt_tokens=64,
        completion_tokens=18,
    ),
    # The long system prompt was cached by the first call: 48 of the 96 prompt tokens are cache reads.
    ScriptedReply(
        content="Yes: 22°C and sunny in Paris, a good afternoon for a picnic.",
        prompt_tokens=96,
        completion_tokens=16,
        cached_tokens=48,
    ),
    ScriptedReply(content="Picnic on: sunny and 22°C.", prompt_tokens=40, completion_tokens=9),
    ScriptedReply(prompt_tokens=12),  # the embedding
]


def get_weather(city: str) -> str:
    return json.dumps({"city": city, "temperature_c": 22, "conditions": "sunny"})


def run(client: openai.OpenAI, question: str) -> str:
    # One parent span makes the calls one trace. These are the attributes Traceloop's SDK
    # (`@workflow`) writes; plain OpenTelemetry spans work the same way.
    tracer = trace.get_tracer("openllmetry-example")
    attributes = {
        "traceloop.span.kind": "workflow",
        "traceloop.workflow.name": "plan_picnic",
        "traceloop.entity.name": "plan_picnic",
        "traceloop.entity.input": json.dumps({"question": question}),
    }
    with tracer.start_as_current_span("plan_picnic.workflow", attributes=attributes) as workflow:
        answer = plan(client, tracer, question)
        workflow.set_attribute("traceloop.entity.output", json.dumps({"answer": answer}))
    return answer


def plan(client: openai.OpenAI, tracer: trace.Tracer, question: str) -> str:
    messages: list[dict] = [
        {"role": "system", "content": "You are a picnic planner. Always check the weather first."},
        {"role": "user", "content": question},
    ]
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
    answer = client.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content or ""

    # Streaming: one span for the whole stream; its text and usage are put together when it ends.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Summarise in five words: {answer}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    summary = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    client.embeddings.create(model=EMBEDDING_MODEL, input=summary)
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", nargs="?", help="SQLite file to write (default: traces.db)")
    args = parser.parse_args()
    path = args.db or "traces.db"

    # OpenLLMetry records prompts and completions unless TRACELOOP_TRACE_CONTENT=false.
    provider = configure(path, service_name="openllmetry-example", instrument=[INSTRUMENTATION])

    question = "Is it picnic weather in Paris this afternoon?"
    with FakeLLMServer(SCRIPT) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-demo", max_retries=0)
        with session(task=question, user_id="demo-user") as current:
            answer = run(client, question)
    print(f"answer: {answer}")

    provider.shutdown()  # flushes every queued span before we read the file
    with TraceStore(path) as store:
        print()
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        print(store.format_tree(current.session_id, color=color))
    print(f"\nstored in {os.path.abspath(path)}; try: otel-sqlite --db {path} show {current.session_id}")


if __name__ == "__main__":
    main()
