"""Agent spans: an agent written with plain OpenTelemetry spans, following the GenAI agent conventions.

    pip install -e ".[test]"
    python examples/agent_spans.py [traces.db]

This is the shape agent frameworks record: an ``invoke_agent {name}`` span per agent run, the model
calls beneath it (here real ``openai`` calls traced by the openai-v2 instrumentation), an
``execute_tool {tool}`` span per tool call, and a sub-agent with spans of its own. The conversation
spans two user turns, so two traces; ``gen_ai.conversation.id`` on their agent spans puts both in
one session. Like many frameworks, each agent span also reports the usage of every model call it
made, summed: the file counts those tokens once, at the model calls.

The model is a scripted fake OpenAI server on 127.0.0.1 (no API key, no network).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from otel_sqlite_exporter import TraceStore, configure
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

try:
    import openai
    import opentelemetry.instrumentation.openai_v2  # noqa: F401
except ImportError as exc:
    sys.exit(f'agent_spans needs {exc.name}, from the test extra: pip install -e ".[test]"')

MODEL = "gpt-4o-mini"
PLANNER = ("trip-planner", "agent-trip-planner-1")
HOTELS = ("hotel-finder", "agent-hotel-finder-1")
TURNS = ["Plan a weekend in Paris", "Book the hotel you found"]


def _tool(name: str, description: str, **properties: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {key: {"type": kind} for key, kind in properties.items()},
                "required": list(properties),
            },
        },
    }


PLANNER_TOOLS = [
    _tool("get_weather", "Current weather for a city.", city="string"),
    _tool("find_hotel", "Ask the hotel-finder agent for a hotel.", city="string"),
    _tool("book_hotel", "Book a hotel.", hotel="string"),
]
HOTEL_TOOLS = [_tool("search_hotels", "Hotels in a city under a price.", city="string", max_eur="integer")]

# What the fake model answers, in call order over both turns.
SCRIPT = [
    # turn 1: the planner checks the weather, hands the hotel search to the hotel-finder, answers
    ScriptedReply(
        tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}],
        prompt_tokens=52,
        completion_tokens=17,
    ),
    ScriptedReply(
        tool_calls=[{"name": "find_hotel", "arguments": {"city": "Paris"}}],
        prompt_tokens=88,
        completion_tokens=15,
    ),
    ScriptedReply(  # the hotel-finder's own calls
        tool_calls=[{"name": "search_hotels", "arguments": {"city": "Paris", "max_eur": 200}}],
        prompt_tokens=40,
        completion_tokens=12,
    ),
    ScriptedReply(content="Hotel du Nord, 180 EUR a night.", prompt_tokens=75, completion_tokens=20),
    ScriptedReply(
        content="Sunny, 21°C: stay at Hotel du Nord (180 EUR) and walk the canal.",
        prompt_tokens=120,
        completion_tokens=30,
    ),
    # turn 2: booking fails (the tool raises), the planner tells the user
    ScriptedReply(
        tool_calls=[{"name": "book_hotel", "arguments": {"hotel": "Hotel du Nord"}}],
        prompt_tokens=160,
        completion_tokens=14,
    ),
    ScriptedReply(
        content="Hotel du Nord is fully booked; shall I look for another?",
        prompt_tokens=190,
        completion_tokens=16,
    ),
]

tracer = trace.get_tracer("agent-spans-example")


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens


@dataclass
class Agent:
    name: str
    id: str
    instructions: str
    tools: list[dict[str, Any]]
    functions: dict[str, Any] = field(default_factory=dict)

    def run(
        self, client: openai.OpenAI, conversation_id: str, messages: list[dict[str, Any]]
    ) -> tuple[str, Usage]:
        """One agent run: model calls until it answers; tool calls run in between."""
        attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.provider.name": "openai",
            "gen_ai.agent.name": self.name,
            "gen_ai.agent.id": self.id,
            "gen_ai.conversation.id": conversation_id,
            "gen_ai.request.model": MODEL,
            # Opt-in content attributes: what the agent was asked (its answer is added at the end).
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": self.instructions}]),
            "gen_ai.input.messages": json.dumps([_message(m["role"], m["content"]) for m in messages]),
        }
        with tracer.start_as_current_span(f"invoke_agent {self.name}", attributes=attributes) as span:
            usage = Usage()
            messages = [{"role": "system", "content": self.instructions}, *messages]
            while True:
                # openai-v2 records this call as a `chat gpt-4o-mini` span beneath the agent span.
                reply = client.chat.completions.create(model=MODEL, messages=messages, tools=self.tools)
                usage.add(Usage(reply.usage.prompt_tokens, reply.usage.completion_tokens))
                message = reply.choices[0].message
                if not message.tool_calls:
                    break
                messages.append(message.model_dump(exclude_none=True))
                for call in message.tool_calls:
                    result, tool_usage = self.call_tool(client, conversation_id, call)
                    usage.add(tool_usage)
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
            # Frameworks report the agent's summed usage on its span: counted once, at the model calls.
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            answer = message.content or ""
            span.set_attribute("gen_ai.output.messages", json.dumps([_message("assistant", answer)]))
            return answer, usage

    def call_tool(self, client: openai.OpenAI, conversation_id: str, call: Any) -> tuple[str, Usage]:
        name, arguments = call.function.name, call.function.arguments
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.type": "function",
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.call.arguments": arguments,
        }
        with tracer.start_as_current_span(
            f"execute_tool {name}",
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            usage = Usage()
            try:
                function = self.functions[name]
                if isinstance(function, Agent):  # a sub-agent used as a tool
                    request = f"{name}: {arguments}"
                    result, usage = function.run(
                        client, conversation_id, [{"role": "user", "content": request}]
                    )
                else:
                    result = function(**json.loads(arguments))
            except Exception as exc:  # noqa: BLE001 - a failed tool is reported to the model
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                span.set_attribute("error.type", type(exc).__name__)
                result = json.dumps({"error": str(exc)})
            span.set_attribute("gen_ai.tool.call.result", result)
            return result, usage


def _message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "parts": [{"type": "text", "content": text}]}


def get_weather(city: str) -> str:
    return json.dumps({"city": city, "temperature_c": 21, "conditions": "sunny"})


def search_hotels(city: str, max_eur: int) -> str:
    return json.dumps([{"name": "Hotel du Nord", "city": city, "eur_per_night": 180}])


def book_hotel(hotel: str) -> str:
    raise RuntimeError(f"{hotel} is fully booked")


def build_agents() -> Agent:
    hotel_finder = Agent(
        *HOTELS, "You find hotels. Search, then recommend one.", HOTEL_TOOLS, {"search_hotels": search_hotels}
    )
    return Agent(
        *PLANNER,
        "You plan trips. Check the weather, then find a hotel.",
        PLANNER_TOOLS,
        {"get_weather": get_weather, "find_hotel": hotel_finder, "book_hotel": book_hotel},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", nargs="?", help="SQLite file to write (default: traces.db)")
    args = parser.parse_args()
    path = args.db or "traces.db"

    provider = configure(path, service_name="agent-spans-example")
    planner = build_agents()
    conversation_id = f"conv-{uuid.uuid4().hex[:12]}"  # what the application calls this conversation
    history: list[dict[str, Any]] = []
    with FakeLLMServer(SCRIPT) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-demo", max_retries=0)
        for turn in TURNS:  # each user turn is a trace of its own, in the same conversation
            history.append({"role": "user", "content": turn})
            answer, _ = planner.run(client, conversation_id, history)
            history.append({"role": "assistant", "content": answer})
            print(f"user: {turn}\nagent: {answer}")

    provider.shutdown()  # flushes every queued span before we read the file
    with TraceStore(path) as store:
        print()
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        print(store.format_tree(conversation_id, color=color))
    print(f"\nstored in {os.path.abspath(path)}; try: otel-sqlite --db {path} show {conversation_id}")


if __name__ == "__main__":
    main()
