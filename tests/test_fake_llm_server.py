"""Tests for the fake OpenAI-compatible server, driven through the real ``openai`` client."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall, ChatCompletionMessageParam

from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

MODEL = "gpt-4o-mini"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


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
