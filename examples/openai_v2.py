"""openai-v2: OpenTelemetry's own instrumentation of the openai client, traced into a SQLite file.

    pip install -e ".[test]"
    python examples/openai_v2.py [traces.db]
    OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=EVENT_ONLY python examples/openai_v2.py

A packing assistant: it embeds the question and a few travel notes to pick the closest note, asks
the model (which calls a weather tool), runs the tool, and streams the final answer. Every step is
a span under one agent span: embeddings, chat, execute_tool, chat (streamed).

The "LLM" is a scripted fake OpenAI server on 127.0.0.1 (no API key, no network); the client is the
real ``openai`` package and the LLM spans come from the real opentelemetry-instrumentation-openai-v2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from opentelemetry import trace

from otel_sqlite_exporter import TraceStore, configure, session
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

try:
    import openai
    import opentelemetry.instrumentation.openai_v2  # noqa: F401
except ImportError as exc:
    sys.exit(f'openai_v2.py needs {exc.name}, from the test extra: pip install -e ".[test]"')

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
TASK = "What should I pack for Zanzibar tomorrow?"
NOTES = [
    "Zanzibar's marine parks ask visitors to use reef-safe sunscreen.",
    "Stone Town's streets are best walked in light clothing that covers shoulders and knees.",
    "The long rains fall from March to May; the dry season runs from June to October.",
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Tomorrow's weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
FINAL_ANSWER = (
    "Pack reef-safe sunscreen, a sun hat and light clothes that cover shoulders and knees: "
    "31°C and sunny in Zanzibar tomorrow."
)
# What the fake server answers, in order: the embeddings, a tool call, then the streamed answer.
SCRIPT = [
    ScriptedReply(prompt_tokens=46),
    ScriptedReply(
        tool_calls=[{"name": "get_weather", "arguments": {"city": "Zanzibar"}}],
        prompt_tokens=112,
        completion_tokens=18,
    ),
    ScriptedReply(content=FINAL_ANSWER, prompt_tokens=161, completion_tokens=29),
]


def get_weather(city: str) -> str:
    return json.dumps({"city": city, "temperature_c": 31, "conditions": "sunny"})


def content_on_spans() -> bool:
    """Tool arguments and results are opt-in content: record them on the tool span only when the
    GenAI content setting puts content on spans (as opentelemetry-util-genai's tool spans do)."""
    return os.environ.get(CAPTURE_ENV, "").strip().upper() in ("SPAN_ONLY", "SPAN_AND_EVENT")


def closest_note(client: openai.OpenAI, question: str) -> str:
    # One embeddings call for the question and the notes: one `embedding` span.
    reply = client.embeddings.create(model=EMBEDDING_MODEL, input=[question, *NOTES])
    vectors = [item.embedding for item in reply.data]

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b) or 1.0)

    scores = [cosine(vectors[0], vector) for vector in vectors[1:]]
    return NOTES[scores.index(max(scores))]


def run_agent(client: openai.OpenAI, task: str) -> str:
    tracer = trace.get_tracer("packing-assistant")
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "packing-assistant"}
    with tracer.start_as_current_span("invoke_agent packing-assistant", attributes=attributes):
        note = closest_note(client, task)
        messages: list[dict] = [
            {"role": "system", "content": f"You help travellers pack. A note that may help: {note}"},
            {"role": "user", "content": task},
        ]
        reply = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
        call = reply.choices[0].message.tool_calls[0]
        messages.append(reply.choices[0].message.model_dump(exclude_none=True))

        tool_attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.function.name,
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.type": "function",
        }
        with tracer.start_as_current_span(
            f"execute_tool {call.function.name}", attributes=tool_attributes
        ) as span:
            result = get_weather(**json.loads(call.function.arguments))
            if content_on_spans():
                span.set_attribute("gen_ai.tool.call.arguments", call.function.arguments)
                span.set_attribute("gen_ai.tool.call.result", result)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})

        # Streamed: still one `llm` span, ended when the stream is exhausted. include_usage makes
        # the server send the token counts in a last chunk, where the instrumentation reads them.
        stream = client.chat.completions.create(
            model=MODEL, messages=messages, tools=TOOLS, stream=True, stream_options={"include_usage": True}
        )
        print("assistant: ", end="", flush=True)
        answer = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                answer.append(chunk.choices[0].delta.content)
                print(answer[-1], end="", flush=True)
        print()
        return "".join(answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "db", nargs="?", default="traces.db", help="SQLite file to write (default: traces.db)"
    )
    path = parser.parse_args().db

    # configure() activates openai-v2 and, unless you chose a content mode, sets SPAN_ONLY.
    provider = configure(path, service_name="openai-v2-example")
    print(f"{CAPTURE_ENV}={os.environ.get(CAPTURE_ENV)}")

    with FakeLLMServer(SCRIPT) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-demo", max_retries=0)
        with session(task=TASK, user_id="demo-user"):
            run_agent(client, TASK)

    # Writes are asynchronous; shutting down flushes everything queued before we read the file.
    provider.shutdown()
    with TraceStore(path) as store:
        latest = store.get_sessions(limit=1)[0]
        print()
        print(store.format_tree(latest.id, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR")))
    print(f"\nstored in {os.path.abspath(path)}; try: otel-sqlite --db {path} show {latest.id}")


if __name__ == "__main__":
    main()
