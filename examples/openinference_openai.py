"""OpenInference: trace the openai client with openinference-instrumentation-openai into a SQLite file.

    pip install -e ".[test]"
    python examples/openinference_openai.py [traces.db]

``configure(instrument=["openinference-instrumentation-openai"])`` picks OpenInference's
instrumentation for the ``openai`` client (by default OpenTelemetry's own openai-v2 wins).
OpenInference's ``using_session()`` / ``using_user()`` put ``session.id`` and ``user.id`` on every
span it records, which makes the session. The app answers a support question with a tool call,
streams a reply and asks a reasoning model through the Responses API. The model is a scripted
fake OpenAI server on 127.0.0.1 (no API key, no network).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

from opentelemetry import trace

from otel_sqlite_exporter import TraceStore, configure
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

try:
    import openai
    from openinference.instrumentation import using_session, using_user
    from openinference.instrumentation.openai import OpenAIInstrumentor  # noqa: F401
except ImportError as exc:
    sys.exit(f'openinference_openai needs {exc.name}, from the test extra: pip install -e ".[test]"')

INSTRUMENTATION = "openinference-instrumentation-openai"
MODEL = "gpt-4o-mini"
REASONING_MODEL = "o4-mini"
USER_ID = "demo-user"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "order_status",
            "description": "Where an order is.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"],
            },
        },
    }
]
# What the fake model answers, in order.
SCRIPT = [
    ScriptedReply(
        tool_calls=[{"name": "order_status", "arguments": {"order_id": "A-1042"}}],
        prompt_tokens=58,
        completion_tokens=16,
    ),
    ScriptedReply(
        content="Your order A-1042 left the warehouse today and arrives Thursday.",
        prompt_tokens=90,
        completion_tokens=15,
        cached_tokens=32,
    ),
    ScriptedReply(content="Arrives Thursday.", prompt_tokens=30, completion_tokens=5),
    ScriptedReply(
        content="Offer a 10% voucher.",
        reasoning="The delay is two days; policy allows a voucher for delays over one day.",
        prompt_tokens=44,
        completion_tokens=60,
        reasoning_tokens=48,
    ),
]


def order_status(order_id: str) -> str:
    return json.dumps({"order_id": order_id, "status": "shipped", "eta": "Thursday"})


def answer(client: openai.OpenAI, question: str) -> str:
    tracer = trace.get_tracer("openinference-example")
    # A parent span in OpenInference's dialect, so the calls below form one trace.
    attributes = {"openinference.span.kind": "AGENT", "input.value": question}
    with tracer.start_as_current_span("support-agent", attributes=attributes) as agent:
        messages: list[dict] = [
            {"role": "system", "content": "You are a support agent. Look orders up before answering."},
            {"role": "user", "content": question},
        ]
        reply = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
        call = reply.choices[0].message.tool_calls[0]
        messages.append(reply.choices[0].message.model_dump(exclude_none=True))
        tool_attributes = {
            "openinference.span.kind": "TOOL",
            "tool.name": call.function.name,
            "input.value": call.function.arguments,
        }
        with tracer.start_as_current_span(call.function.name, attributes=tool_attributes) as tool:
            result = order_status(**json.loads(call.function.arguments))
            tool.set_attribute("output.value", result)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        text = client.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content or ""

        # Streaming: one span for the whole stream, with its text and usage.
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"In three words: {text}"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

        # A reasoning model through the Responses API: its reasoning summary is recorded too.
        client.responses.create(
            model=REASONING_MODEL,
            input="The order is two days late. What should we offer?",
            reasoning={"effort": "low", "summary": "auto"},
        )
        agent.set_attribute("output.value", text)
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", nargs="?", help="SQLite file to write (default: traces.db)")
    args = parser.parse_args()
    path = args.db or "traces.db"

    provider = configure(path, service_name="openinference-example", instrument=[INSTRUMENTATION])

    session_id = f"support-{uuid.uuid4().hex[:12]}"  # what the application calls this conversation
    with FakeLLMServer(SCRIPT) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-demo", max_retries=0)
        with using_session(session_id), using_user(USER_ID):
            text = answer(client, "Where is my order A-1042?")
    print(f"answer: {text}")

    provider.shutdown()  # flushes every queued span before we read the file
    with TraceStore(path) as store:
        print()
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        print(store.format_tree(session_id, color=color))
    print(f"\nstored in {os.path.abspath(path)}; try: otel-sqlite --db {path} show {session_id}")


if __name__ == "__main__":
    main()
