"""Tests for the fake LLM server, driven through the real ``openai`` and ``anthropic`` clients."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import MessageParam, RawMessageStreamEvent, TextBlock, ThinkingBlock, ToolUseBlock
from openai.types.chat import ChatCompletionMessageFunctionToolCall, ChatCompletionMessageParam
from openai.types.responses import ResponseReasoningItem, ResponseStreamEvent

from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

MODEL = "gpt-4o-mini"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
# Not a real model: the anthropic client warns about real models once they are deprecated.
CLAUDE = "claude-fake-1"
CLAUDE_MESSAGES: list[MessageParam] = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture
def client(server: FakeLLMServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.openai_base_url, api_key="test-key", max_retries=0, timeout=10) as c:
        yield c


def test_urls(server: FakeLLMServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    assert server.port > 0
    assert server.openai_base_url == server.url + "/v1"
    # The anthropic client appends ``/v1/messages`` to its base URL itself.
    assert server.anthropic_base_url == server.url


def test_chat_completion_default_reply(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.id == "chatcmpl-fake-1"
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.system_fingerprint
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello from the fake model."
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 12
    assert completion.usage.completion_tokens == 7
    assert completion.usage.total_tokens == 19


def test_chat_completion_scripted_usage(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(
        ScriptedReply(
            content="Bonjour!",
            prompt_tokens=100,
            completion_tokens=40,
            cached_tokens=64,
            reasoning_tokens=16,
            model="gpt-4o-mini-2024-07-18",
        )
    )
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.choices[0].message.content == "Bonjour!"
    assert completion.model == "gpt-4o-mini-2024-07-18"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (100, 40, 140)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 64
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 16


def test_replies_consumed_in_order_then_default(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(content="first"), ScriptedReply(content="second"))
    contents = [
        client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content
        for _ in range(3)
    ]
    assert contents == ["first", "second", "Hello from the fake model."]


def test_replies_given_to_constructor() -> None:
    with FakeLLMServer([ScriptedReply(content="from ctor", prompt_tokens=1, completion_tokens=2)]) as srv:
        c = openai.OpenAI(base_url=srv.openai_base_url, api_key="test-key", max_retries=0)
        completion = c.chat.completions.create(model=MODEL, messages=MESSAGES)
        c.close()
    assert completion.choices[0].message.content == "from ctor"
    assert completion.usage is not None and completion.usage.total_tokens == 3


def test_streaming_with_usage(server: FakeLLMServer, client: openai.OpenAI) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    server.queue(ScriptedReply(content=text, prompt_tokens=21, completion_tokens=9, cached_tokens=5))
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    content_chunks = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 1
    assert "".join(content_chunks) == text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]

    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (21, 9, 30)
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_without_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the fake model."
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_connection_reused_after_stream(client: openai.OpenAI) -> None:
    # Chunked streaming keeps the HTTP/1.1 connection usable for the next request.
    for _ in range(3):
        list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content == "Hello from the fake model."


TOOL_CALLS = [
    {"name": "get_weather", "arguments": {"city": "Paris"}},
    {"name": "get_time", "arguments": {"timezone": "Europe/Paris", "format": "24h"}},
]


def _function_calls(calls: Sequence[object] | None) -> list[ChatCompletionMessageFunctionToolCall]:
    assert calls is not None
    assert all(isinstance(c, ChatCompletionMessageFunctionToolCall) for c in calls)
    return [c for c in calls if isinstance(c, ChatCompletionMessageFunctionToolCall)]


def test_tool_calls(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(tool_calls=TOOL_CALLS))
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = _function_calls(choice.message.tool_calls)
    assert [c.id for c in calls] == ["call_1", "call_2"]
    assert [c.type for c in calls] == ["function", "function"]
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert json.loads(calls[1].function.arguments) == {"timezone": "Europe/Paris", "format": "24h"}


def test_tool_calls_streaming(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(tool_calls=TOOL_CALLS, prompt_tokens=30, completion_tokens=11))
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict[str, str]] = {}
    finish_reason = None
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            finish_reason = choice.finish_reason or finish_reason
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                if delta.function is not None:
                    entry["name"] += delta.function.name or ""
                    entry["arguments"] += delta.function.arguments or ""
    assert finish_reason == "tool_calls"
    assert [calls[i]["id"] for i in sorted(calls)] == ["call_1", "call_2"]
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert json.loads(calls[1]["arguments"]) == {"timezone": "Europe/Paris", "format": "24h"}
    assert usage is not None and usage.total_tokens == 41


def test_stream_helper_accumulates(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(tool_calls=[{"name": "lookup", "arguments": '{"q": "x"}'}]))
    with client.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
        final = stream.get_final_completion()
    calls = _function_calls(final.choices[0].message.tool_calls)
    assert [c.function.name for c in calls] == ["lookup"]
    assert json.loads(calls[0].function.arguments) == {"q": "x"}


def test_embeddings_string_input(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(prompt_tokens=5))
    result = client.embeddings.create(model="text-embedding-3-small", input="hello world")
    assert result.object == "list"
    assert result.model == "text-embedding-3-small"
    assert len(result.data) == 1
    assert result.data[0].index == 0
    assert len(result.data[0].embedding) == 8
    assert all(isinstance(x, float) for x in result.data[0].embedding)
    assert result.usage.prompt_tokens == 5
    assert result.usage.total_tokens == 5


def test_embeddings_list_input_float_format(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(prompt_tokens=9))
    result = client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b", "a"], encoding_format="float"
    )
    assert [d.index for d in result.data] == [0, 1, 2]
    assert all(len(d.embedding) == 8 for d in result.data)
    assert result.data[0].embedding == result.data[2].embedding  # deterministic
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == 9


def test_embeddings_base64_matches_float(client: openai.OpenAI) -> None:
    as_float = client.embeddings.create(model="e", input="same", encoding_format="float").data[0].embedding
    default = client.embeddings.create(model="e", input="same").data[0].embedding  # client asks for base64
    assert default == pytest.approx(as_float, abs=1e-6)


@pytest.mark.parametrize(
    ("status", "exc_type"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_error_status(
    server: FakeLLMServer, client: openai.OpenAI, status: int, exc_type: type[openai.APIStatusError]
) -> None:
    server.queue(ScriptedReply(status=status, error_message=f"boom {status}"))
    with pytest.raises(exc_type) as excinfo:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    err = excinfo.value
    assert isinstance(err, openai.APIStatusError)
    assert err.status_code == status
    assert f"boom {status}" in err.message
    assert isinstance(err.body, dict) and err.body["message"] == f"boom {status}"
    assert err.type
    # The failed reply was consumed; the next request gets the default reply.
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content


def test_error_not_retried_even_with_default_client(server: FakeLLMServer) -> None:
    server.queue(ScriptedReply(status=500), ScriptedReply(content="would be the retry"))
    c = openai.OpenAI(base_url=server.openai_base_url, api_key="test-key")  # default max_retries=2
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model=MODEL, messages=MESSAGES)
    c.close()
    assert len(server.requests) == 1


def test_error_on_stream_request(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(status=429, error_message="slow down"))
    with pytest.raises(openai.RateLimitError, match="slow down"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)


def test_error_on_embeddings(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(status=400, error_message="bad input"))
    with pytest.raises(openai.BadRequestError, match="bad input"):
        client.embeddings.create(model="e", input="x")


def test_responses_api(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(content="Responses hi", prompt_tokens=8, completion_tokens=3, cached_tokens=2))
    response = client.responses.create(model=MODEL, input="hi")
    assert response.output_text == "Responses hi"
    assert response.model == MODEL
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        8,
        3,
        11,
    )
    assert response.usage.input_tokens_details.cached_tokens == 2


def test_responses_api_tool_call(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]))
    response = client.responses.create(model=MODEL, input="weather?")
    item = response.output[0]
    assert item.type == "function_call"
    assert item.name == "get_weather" and item.call_id == "call_1"
    assert json.loads(item.arguments) == {"city": "Paris"}


def test_requests_recorded(server: FakeLLMServer, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0.5)
    client.embeddings.create(model="text-embedding-3-small", input=["x", "y"])
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions", "/v1/embeddings"]
    first = server.requests[0]
    assert first["method"] == "POST"
    assert first["body"]["model"] == MODEL
    assert first["body"]["messages"] == MESSAGES
    assert first["body"]["temperature"] == 0.5
    assert first["headers"]["authorization"] == "Bearer test-key"
    assert server.requests[1]["body"]["input"] == ["x", "y"]


def test_unknown_path_returns_404_json(server: FakeLLMServer) -> None:
    req = urllib.request.Request(
        server.url + "/v1/nope", data=b"{}", headers={"Content-Type": "application/json"}, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(req, timeout=5)
    assert excinfo.value.code == 404
    body = json.loads(excinfo.value.read())
    assert "message" in body["error"] and "/v1/nope" in body["error"]["message"]


def test_unknown_path_via_client_does_not_consume_reply(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(content="kept"))
    with pytest.raises(openai.NotFoundError):
        client.models.list()
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.choices[0].message.content == "kept"


def test_invalid_json_returns_400(server: FakeLLMServer) -> None:
    req = urllib.request.Request(server.url + "/v1/chat/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(req, timeout=5)
    assert excinfo.value.code == 400
    assert "error" in json.loads(excinfo.value.read())


def test_concurrent_requests(server: FakeLLMServer) -> None:
    n = 16
    server.queue(*(ScriptedReply(content=f"reply {i}") for i in range(n)))

    def call(_: int) -> str:
        with openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0) as c:
            content = c.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content
            return content or ""

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(n)))
    assert sorted(results) == sorted(f"reply {i}" for i in range(n))
    assert len(server.requests) == n


def test_stop_is_prompt_and_idempotent() -> None:
    srv = FakeLLMServer().start()
    c = openai.OpenAI(base_url=srv.openai_base_url, api_key="k", max_retries=0)
    c.chat.completions.create(model=MODEL, messages=MESSAGES)  # leaves a keep-alive conn
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2
    assert not srv.running
    srv.stop()
    with pytest.raises(openai.APIConnectionError):
        c.chat.completions.create(model=MODEL, messages=MESSAGES)
    c.close()
    with pytest.raises(RuntimeError):
        _ = srv.url


def test_start_twice_raises() -> None:
    with FakeLLMServer() as srv, pytest.raises(RuntimeError):
        srv.start()


def test_quiet(server: FakeLLMServer, client: openai.OpenAI, capfd: pytest.CaptureFixture[str]) -> None:
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out == ""


# --------------------------------------------------------------------------------------------------
# OpenAI: reasoning, cache and Responses API details
# --------------------------------------------------------------------------------------------------


def test_chat_usage_details_streamed(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(
        ScriptedReply(
            content="ok",
            prompt_tokens=200,
            completion_tokens=50,
            cached_tokens=120,
            cache_write_tokens=30,
            reasoning_tokens=40,
            reasoning="ignored by chat completions",
        )
    )
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (200, 50, 250)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 120
    assert usage.prompt_tokens_details.cache_write_tokens == 30
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 40


def test_responses_reasoning_summary_and_usage(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(
        ScriptedReply(
            content="42",
            reasoning="The user wants the answer; it is 42.",
            prompt_tokens=90,
            completion_tokens=60,
            cached_tokens=64,
            cache_write_tokens=10,
            reasoning_tokens=48,
            model="o4-mini-2025-04-16",
        )
    )
    response = client.responses.create(model="o4-mini", input="What is the answer?")
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning = response.output[0]
    assert isinstance(reasoning, ResponseReasoningItem)
    assert reasoning.id.startswith("rs_")
    assert [(s.type, s.text) for s in reasoning.summary] == [
        ("summary_text", "The user wants the answer; it is 42.")
    ]
    assert response.output_text == "42"
    assert response.model == "o4-mini-2025-04-16"
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (90, 60, 150)
    assert usage.input_tokens_details.cached_tokens == 64
    assert usage.input_tokens_details.cache_write_tokens == 10
    assert usage.output_tokens_details.reasoning_tokens == 48


def test_responses_without_reasoning_has_no_reasoning_item(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="hi")
    assert [item.type for item in response.output] == ["message"]
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def _responses_events(client: openai.OpenAI, **kwargs: Any) -> list[ResponseStreamEvent]:
    return list(client.responses.create(model="o4-mini", input="q", stream=True, **kwargs))


def test_responses_streaming_text_and_reasoning(server: FakeLLMServer, client: openai.OpenAI) -> None:
    text = "The answer is forty two, as computed."
    thought = "First add six and seven, then think again."
    server.queue(
        ScriptedReply(
            content=text, reasoning=thought, prompt_tokens=30, completion_tokens=25, reasoning_tokens=9
        )
    )
    events = _responses_events(client)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types.count("response.output_item.added") == types.count("response.output_item.done") == 2

    created = events[0]
    assert created.type == "response.created"
    assert created.response.status == "in_progress" and created.response.output == []

    summary_deltas = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    text_deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(summary_deltas) > 1 and "".join(summary_deltas) == thought
    assert len(text_deltas) > 1 and "".join(text_deltas) == text
    done = [e.text for e in events if e.type == "response.output_text.done"]
    assert done == [text]

    completed = events[-1]
    assert completed.type == "response.completed"
    final = completed.response
    assert final.status == "completed"
    assert final.output_text == text
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 25)
    assert final.usage.output_tokens_details.reasoning_tokens == 9


def test_responses_streaming_function_call(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]))
    events = _responses_events(client)
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(arguments) == {"city": "Paris"}
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(e.name, json.loads(e.arguments)) for e in done] == [("get_weather", {"city": "Paris"})]
    completed = events[-1]
    assert completed.type == "response.completed"
    item = completed.response.output[0]
    assert item.type == "function_call" and item.call_id == "call_1"


def test_responses_stream_manager(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(
        ScriptedReply(content="Streamed via the manager", reasoning="short thought", cached_tokens=4)
    )
    with client.responses.stream(model="o4-mini", input="q") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Streamed via the manager"
    assert final.output_text == "Streamed via the manager"
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 4


def test_responses_stream_error_status(server: FakeLLMServer, client: openai.OpenAI) -> None:
    server.queue(ScriptedReply(status=429, error_message="too many"))
    with pytest.raises(openai.RateLimitError, match="too many"):
        client.responses.create(model=MODEL, input="q", stream=True)


# --------------------------------------------------------------------------------------------------
# Anthropic Messages API
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def claude(server: FakeLLMServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=server.anthropic_base_url, api_key="test", max_retries=0, timeout=10
    ) as c:
        yield c


def _create(claude: anthropic.Anthropic, **kwargs: Any) -> anthropic.types.Message:
    return claude.messages.create(model=CLAUDE, max_tokens=256, messages=CLAUDE_MESSAGES, **kwargs)


def _stream_events(claude: anthropic.Anthropic) -> list[RawMessageStreamEvent]:
    stream = claude.messages.create(model=CLAUDE, max_tokens=256, messages=CLAUDE_MESSAGES, stream=True)
    return list(stream)


def test_anthropic_text(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    message = _create(claude)
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant"
    assert message.model == CLAUDE
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert len(message.content) == 1
    block = message.content[0]
    assert isinstance(block, TextBlock) and block.text == "Hello from the fake model."
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (12, 7)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (0, 0)
    request = server.requests[0]
    assert request["path"] == "/v1/messages"
    # Older anthropic clients send ``x-api-key``; newer ones send the key as a bearer token.
    headers = request["headers"]
    assert headers.get("x-api-key") == "test" or headers.get("authorization") == "Bearer test"
    assert "anthropic-version" in request["headers"]
    assert request["body"]["max_tokens"] == 256 and request["body"]["messages"] == CLAUDE_MESSAGES


def test_anthropic_thinking_then_text(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    server.queue(
        ScriptedReply(content="Paris.", reasoning="The capital of France is Paris.", model="claude-x")
    )
    message = _create(claude, thinking={"type": "enabled", "budget_tokens": 1024})
    assert message.model == "claude-x"
    thinking, text = message.content
    assert isinstance(thinking, ThinkingBlock)
    assert thinking.thinking == "The capital of France is Paris."
    assert thinking.signature
    assert isinstance(text, TextBlock) and text.text == "Paris."
    assert message.stop_reason == "end_turn"


def test_anthropic_tool_use(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    calls = [*TOOL_CALLS, {"name": "lookup", "arguments": '{"q": "x"}'}]
    server.queue(ScriptedReply(tool_calls=calls, reasoning="I need tools."))
    message = _create(claude)
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["thinking", "tool_use", "tool_use", "tool_use"]
    tools = [block for block in message.content if isinstance(block, ToolUseBlock)]
    assert [t.id for t in tools] == ["toolu_1", "toolu_2", "toolu_3"]
    assert [t.name for t in tools] == ["get_weather", "get_time", "lookup"]
    assert [t.input for t in tools] == [
        {"city": "Paris"},
        {"timezone": "Europe/Paris", "format": "24h"},
        {"q": "x"},
    ]


def test_anthropic_cache_and_thinking_usage(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    server.queue(
        ScriptedReply(
            prompt_tokens=15,
            completion_tokens=80,
            cached_tokens=2000,
            cache_write_tokens=300,
            reasoning_tokens=50,
            reasoning="thinking",
        )
    )
    usage = _create(claude).usage
    # Anthropic's input_tokens excludes the cache reads and writes; each is reported on its own.
    assert usage.input_tokens == 15
    assert usage.cache_read_input_tokens == 2000
    assert usage.cache_creation_input_tokens == 300
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == 300
    assert usage.output_tokens == 80
    assert usage.output_tokens_details is not None
    assert usage.output_tokens_details.thinking_tokens == 50


def test_anthropic_streaming_text(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    server.queue(
        ScriptedReply(
            content=text, prompt_tokens=21, completion_tokens=9, cached_tokens=40, cache_write_tokens=3
        )
    )
    events = _stream_events(claude)
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]
    assert start.type == "message_start"
    assert start.message.content == [] and start.message.stop_reason is None
    start_usage = start.message.usage
    assert (start_usage.input_tokens, start_usage.output_tokens) == (21, 1)
    assert (start_usage.cache_read_input_tokens, start_usage.cache_creation_input_tokens) == (40, 3)

    block_start = events[1]
    assert block_start.type == "content_block_start"
    assert block_start.index == 0 and block_start.content_block.type == "text"
    pieces = [
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    ]
    assert "".join(pieces) == text

    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == 9


def test_anthropic_streaming_thinking(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    thought = "Think step by step about the greeting."
    reply = ScriptedReply(content="Hi there, friend!", reasoning=thought)
    server.queue(reply, reply)
    signature = _create(claude).content[0]
    assert isinstance(signature, ThinkingBlock)

    events = _stream_events(claude)
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == ["thinking", "text"]
    thinking: list[str] = []
    text: list[str] = []
    signatures: list[str] = []
    for event in events:
        if event.type != "content_block_delta":
            continue
        if event.delta.type == "thinking_delta":
            assert event.index == 0
            thinking.append(event.delta.thinking)
        elif event.delta.type == "signature_delta":
            signatures.append(event.delta.signature)
        elif event.delta.type == "text_delta":
            assert event.index == 1
            text.append(event.delta.text)
    assert len(thinking) > 1 and "".join(thinking) == thought
    assert "".join(text) == "Hi there, friend!"
    assert signatures == [signature.signature]  # the same signature as the non-streamed block


def test_anthropic_streaming_tool_use(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    server.queue(ScriptedReply(tool_calls=TOOL_CALLS))
    events = _stream_events(claude)
    arguments: dict[int, str] = {}
    for event in events:
        if event.type == "content_block_start":
            assert event.content_block.type == "tool_use"
            arguments[event.index] = ""
        elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
            arguments[event.index] += event.delta.partial_json
    assert [json.loads(arguments[i]) for i in sorted(arguments)] == [call["arguments"] for call in TOOL_CALLS]
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_reason == "tool_use"


def test_anthropic_messages_stream(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    server.queue(
        ScriptedReply(
            content="Streaming with messages.stream works.",
            reasoning="Use messages.stream.",
            prompt_tokens=8,
            completion_tokens=33,
            cached_tokens=16,
        )
    )
    with claude.messages.stream(model=CLAUDE, max_tokens=256, messages=CLAUDE_MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Streaming with messages.stream works."
    thinking, block = final.content
    assert isinstance(thinking, ThinkingBlock) and thinking.thinking == "Use messages.stream."
    assert thinking.signature
    assert isinstance(block, TextBlock) and block.text == text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (8, 33)
    assert final.usage.cache_read_input_tokens == 16


def test_anthropic_messages_stream_tool_use(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    server.queue(ScriptedReply(tool_calls=[{"name": "lookup", "arguments": {"q": "x", "n": [1, 2]}}]))
    with claude.messages.stream(model=CLAUDE, max_tokens=256, messages=CLAUDE_MESSAGES) as stream:
        final = stream.get_final_message()
    (tool,) = final.content
    assert isinstance(tool, ToolUseBlock)
    assert (tool.id, tool.name, tool.input) == ("toolu_1", "lookup", {"q": "x", "n": [1, 2]})


def test_anthropic_async_client(server: FakeLLMServer) -> None:
    server.queue(ScriptedReply(content="async hello"), ScriptedReply(content="async streamed"))

    async def run() -> tuple[str, str]:
        async with anthropic.AsyncAnthropic(
            base_url=server.anthropic_base_url, api_key="test", max_retries=0, timeout=10
        ) as c:
            message = await c.messages.create(model=CLAUDE, max_tokens=64, messages=CLAUDE_MESSAGES)
            assert isinstance(message.content[0], TextBlock)
            async with c.messages.stream(model=CLAUDE, max_tokens=64, messages=CLAUDE_MESSAGES) as stream:
                streamed = await stream.get_final_text()
            return message.content[0].text, streamed

    assert asyncio.run(run()) == ("async hello", "async streamed")


@pytest.mark.parametrize(
    ("status", "exc_type", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.InternalServerError, "overloaded_error"),
    ],
)
def test_anthropic_error_status(
    server: FakeLLMServer,
    claude: anthropic.Anthropic,
    status: int,
    exc_type: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    server.queue(ScriptedReply(status=status, error_message=f"boom {status}"))
    with pytest.raises(exc_type) as excinfo:
        _create(claude)
    err = excinfo.value
    assert err.status_code == status
    assert f"boom {status}" in err.message
    assert isinstance(err.body, dict)
    assert err.body["type"] == "error"
    assert err.body["error"] == {"type": error_type, "message": f"boom {status}"}
    assert err.request_id is not None and err.request_id.startswith("req_")
    # The failed reply was consumed; the next request gets the default reply.
    assert _create(claude).stop_reason == "end_turn"


def test_anthropic_error_on_stream_request(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    server.queue(ScriptedReply(status=429, error_message="slow down"))
    with (
        pytest.raises(anthropic.RateLimitError, match="slow down"),
        claude.messages.stream(model=CLAUDE, max_tokens=256, messages=CLAUDE_MESSAGES) as stream,
    ):
        stream.get_final_message()


def test_anthropic_error_not_retried_even_with_default_client(server: FakeLLMServer) -> None:
    server.queue(ScriptedReply(status=529), ScriptedReply(content="would be the retry"))
    with anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test") as c:  # max_retries=2
        with pytest.raises(anthropic.InternalServerError):
            _create(c)
    assert len(server.requests) == 1


def test_anthropic_missing_max_tokens_is_rejected(server: FakeLLMServer) -> None:
    req = urllib.request.Request(
        server.url + "/v1/messages",
        data=json.dumps({"model": CLAUDE, "messages": []}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(req, timeout=5)
    assert excinfo.value.code == 400
    body = json.loads(excinfo.value.read())
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


def test_one_server_serves_both_providers(
    server: FakeLLMServer, client: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    server.queue(ScriptedReply(content="from openai"), ScriptedReply(content="from anthropic"))
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content == (
        "from openai"
    )
    block = _create(claude).content[0]
    assert isinstance(block, TextBlock) and block.text == "from anthropic"
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions", "/v1/messages"]
