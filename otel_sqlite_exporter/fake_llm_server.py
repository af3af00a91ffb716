"""A tiny, dependency-free fake LLM HTTP server for demos and integration tests.

The server listens on ``127.0.0.1`` (ephemeral port by default) and speaks enough of the
OpenAI REST API and of Anthropic's Messages API for the real ``openai`` and ``anthropic`` Python
clients to work against it:

* ``POST /v1/chat/completions`` (plain and ``"stream": true`` Server-Sent Events, tool calls,
  ``stream_options.include_usage``, cached and reasoning token details),
* ``POST /v1/embeddings``,
* ``POST /v1/responses`` (plain and ``"stream": true``; reasoning summary items, function calls),
* ``POST /v1/messages`` (Anthropic; plain and ``"stream": true``; thinking, text and ``tool_use``
  blocks, cache read/write token counts, Anthropic's error body format).

What the server answers is scripted with :class:`ScriptedReply` objects, consumed in order; when
the queue is empty the default ``ScriptedReply()`` is used. Token usage is taken verbatim from the
scripted reply, so tests can assert exact token counts (see :class:`ScriptedReply` for which field
lands in which provider's usage field).

Example::

    import anthropic
    import openai
    from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

    with FakeLLMServer([ScriptedReply(content="Hi!", prompt_tokens=3, completion_tokens=2)]) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="test-key", max_retries=0)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[...])

        claude = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test", max_retries=0)
        message = claude.messages.create(model="claude-haiku-4-5", max_tokens=256, messages=[...])

Each provider API is implemented by a :class:`_ProviderAPI` subclass that maps request paths to
handler methods and knows its own error body format; further APIs can be added by writing another
subclass and listing it in ``FakeLLMServer._API_CLASSES``.

Only the Python standard library is used.
"""

from __future__ import annotations

import array
import base64
import contextlib
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar

__all__ = ["FakeLLMServer", "ScriptedReply"]

JSONDict = dict[str, Any]

_EMBEDDING_DIMENSIONS = 8
_MAX_STREAM_CONTENT_CHUNKS = 4
_MAX_STREAM_ARGUMENT_CHUNKS = 3
_SYSTEM_FINGERPRINT = "fp_fake"
# The real Messages API reports a small non-zero ``output_tokens`` in ``message_start`` before any
# text exists; the authoritative count comes later in ``message_delta``. Mimicked so consumers that
# add the two (instead of letting the later one win) show up in tests as off by this much.
_ANTHROPIC_START_OUTPUT_TOKENS = 1


@dataclass
class ScriptedReply:
    """What the fake server answers to the next request.

    ``tool_calls`` entries look like ``{"name": "get_weather", "arguments": {"city": "Paris"}}``
    (``arguments`` may also be a pre-encoded JSON string; Anthropic needs it to encode an object).
    They are returned as OpenAI tool calls with ids ``call_1``, ``call_2``, ... and
    ``finish_reason == "tool_calls"`` (``content`` is then ``None``), or as Anthropic ``tool_use``
    blocks with ids ``toolu_1``, ``toolu_2``, ... and ``stop_reason == "tool_use"`` (no text block).

    ``reasoning`` is the model's reasoning text: Anthropic returns it as a ``thinking`` block
    (before the text or tool use blocks, with a deterministic fake ``signature``), the Responses API
    as a leading ``reasoning`` output item whose ``summary`` holds one ``summary_text``. Chat
    completions and embeddings ignore it, as the real OpenAI API returns no reasoning text there.

    Token counts are copied verbatim into each provider's usage fields; nothing is derived or
    subtracted, so pick numbers that are consistent for the provider under test:

    * ``prompt_tokens``: OpenAI chat ``usage.prompt_tokens``, Responses ``usage.input_tokens``,
      embeddings ``usage.prompt_tokens`` and ``usage.total_tokens``; Anthropic ``usage.input_tokens``.
    * ``completion_tokens``: chat ``usage.completion_tokens``, Responses ``usage.output_tokens``;
      Anthropic ``usage.output_tokens`` (in ``message_delta`` when streaming).
    * ``cached_tokens``: chat ``usage.prompt_tokens_details.cached_tokens``, Responses
      ``usage.input_tokens_details.cached_tokens``; Anthropic ``usage.cache_read_input_tokens``.
    * ``cache_write_tokens``: chat ``usage.prompt_tokens_details.cache_write_tokens``, Responses
      ``usage.input_tokens_details.cache_write_tokens``; Anthropic
      ``usage.cache_creation_input_tokens`` and ``usage.cache_creation.ephemeral_5m_input_tokens``.
    * ``reasoning_tokens``: chat ``usage.completion_tokens_details.reasoning_tokens``, Responses
      ``usage.output_tokens_details.reasoning_tokens``; Anthropic
      ``usage.output_tokens_details.thinking_tokens`` (only present when non-zero).

    The two providers count the prompt differently. OpenAI's ``prompt_tokens`` / ``input_tokens``
    *includes* the cache reads and writes (so keep ``cached_tokens + cache_write_tokens <=
    prompt_tokens``), and the prompt's size is ``prompt_tokens``. Anthropic's ``input_tokens``
    *excludes* cache reads and writes, so the prompt's size there is ``prompt_tokens +
    cached_tokens + cache_write_tokens``. Reasoning tokens are part of the output count for both
    (keep ``reasoning_tokens <= completion_tokens``). ``total_tokens`` is OpenAI's total;
    Anthropic reports none. Embeddings report ``prompt_tokens`` as both their prompt and total.

    When streaming, Anthropic's ``message_start`` carries the input and cache counts with
    ``output_tokens`` set to a placeholder of 1 (as the real API does); the final
    ``output_tokens`` arrives in ``message_delta``.

    ``model`` is the model name reported in the response; ``None`` echoes the requested model.
    A ``status`` other than 200 makes the server answer with that status and an error body in the
    provider's format (OpenAI: ``{"error": {"message", "type", "param", "code"}}``; Anthropic:
    ``{"type": "error", "error": {"type", "message"}}``) carrying ``error_message``.
    """

    content: str = "Hello from the fake model."
    tool_calls: list[dict[str, Any]] | None = None
    prompt_tokens: int = 12
    completion_tokens: int = 7
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    model: str | None = None
    status: int = 200
    error_message: str = "The fake server was told to fail."
    cache_write_tokens: int = 0
    reasoning: str | None = None

    @property
    def total_tokens(self) -> int:
        """OpenAI's ``total_tokens``: ``prompt_tokens + completion_tokens``."""
        return self.prompt_tokens + self.completion_tokens


# --------------------------------------------------------------------------------------------------
# HTTP-level results produced by the provider APIs
# --------------------------------------------------------------------------------------------------


@dataclass
class _JSONResult:
    """A complete JSON response (sent with ``Content-Length``)."""

    status: int
    body: JSONDict
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _SSEResult:
    """A Server-Sent Events response (sent with chunked transfer encoding)."""

    events: Iterable[bytes]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


_Result = _JSONResult | _SSEResult


def _sse_data(payload: JSONDict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _sse_event(name: str, payload: JSONDict) -> bytes:
    """An event with an ``event:`` line; the anthropic client drops events that lack one."""
    return f"event: {name}\n".encode() + _sse_data(payload)


def _split_text(text: str, max_chunks: int) -> list[str]:
    """Split ``text`` into at most ``max_chunks`` non-empty pieces whose concatenation is ``text``."""
    if not text:
        return []
    words = [piece for piece in re.split(r"(?<=\s)(?=\S)", text) if piece]
    if len(words) < 2:
        # A single word: split by characters instead so streaming still yields several chunks.
        words = list(text)
    n_chunks = min(max_chunks, len(words))
    chunks: list[str] = []
    for i in range(n_chunks):
        start = i * len(words) // n_chunks
        end = (i + 1) * len(words) // n_chunks
        chunks.append("".join(words[start:end]))
    return chunks


def _arguments_json(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return json.dumps({} if arguments is None else arguments)


def _arguments_object(arguments: Any) -> JSONDict:
    """Tool arguments as a JSON object, which is what Anthropic's ``tool_use.input`` must be."""
    value = json.loads(arguments) if isinstance(arguments, str) else arguments
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"tool call arguments must encode a JSON object, not {type(value).__name__}")
    return value


def _fake_signature(text: str) -> str:
    """A deterministic stand-in for the opaque signature of an Anthropic thinking block."""
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _fake_embedding(text: str) -> list[float]:
    """A deterministic unit-ish vector derived from a hash of the input."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [round((digest[i] - 127.5) / 127.5, 6) for i in range(_EMBEDDING_DIMENSIONS)]


# --------------------------------------------------------------------------------------------------
# Provider APIs
# --------------------------------------------------------------------------------------------------

_Handler = Callable[[JSONDict, ScriptedReply], _Result]


class _ProviderAPI:
    """Base class for one provider's REST API (a set of routes plus an error format)."""

    #: Maps a request path (e.g. ``"/v1/chat/completions"``) to the name of a handler method.
    routes: ClassVar[dict[str, str]] = {}

    def __init__(self, server: FakeLLMServer) -> None:
        self.server = server

    def handler_for(self, path: str) -> _Handler | None:
        name = self.routes.get(path)
        return None if name is None else getattr(self, name)

    def error(self, status: int, message: str) -> _JSONResult:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _model(body: JSONDict, reply: ScriptedReply) -> str:
        if reply.model is not None:
            return reply.model
        return str(body.get("model") or "fake-model")


class _OpenAIAPI(_ProviderAPI):
    """The subset of the OpenAI REST API the fake server understands."""

    routes: ClassVar[dict[str, str]] = {
        "/v1/chat/completions": "chat_completions",
        "/v1/embeddings": "embeddings",
        "/v1/responses": "responses",
    }

    _ERROR_TYPES: ClassVar[dict[int, tuple[str, str | None]]] = {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        403: ("invalid_request_error", "unsupported_country_region_territory"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }

    def error(self, status: int, message: str) -> _JSONResult:
        err_type, code = self._ERROR_TYPES.get(
            status, ("server_error" if status >= 500 else "api_error", None)
        )
        body = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
        # ``x-should-retry: false`` keeps the openai client from retrying even with default settings.
        return _JSONResult(status, body, {"x-should-retry": "false"})

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _chat_usage(reply: ScriptedReply) -> JSONDict:
        return {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.total_tokens,
            "prompt_tokens_details": {
                "cached_tokens": reply.cached_tokens,
                "cache_write_tokens": reply.cache_write_tokens,
                "audio_tokens": 0,
            },
            "completion_tokens_details": {
                "reasoning_tokens": reply.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    @staticmethod
    def _tool_calls(reply: ScriptedReply) -> list[JSONDict]:
        return [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": str(call["name"]), "arguments": _arguments_json(call.get("arguments"))},
            }
            for i, call in enumerate(reply.tool_calls or [], start=1)
        ]

    # -- /v1/chat/completions --------------------------------------------------------------------

    def chat_completions(self, body: JSONDict, reply: ScriptedReply) -> _Result:
        completion_id = f"chatcmpl-fake-{self.server._next_id()}"
        created = int(time.time())
        model = self._model(body, reply)
        tool_calls = self._tool_calls(reply)
        finish_reason = "tool_calls" if tool_calls else "stop"

        if body.get("stream"):
            stream_options = body.get("stream_options") or {}
            include_usage = bool(stream_options.get("include_usage"))
            events = self._chat_stream(
                completion_id, created, model, reply, tool_calls, finish_reason, include_usage
            )
            return _SSEResult(events)

        message: JSONDict = {
            "role": "assistant",
            "content": None if tool_calls else reply.content,
            "refusal": None,
            "annotations": [],
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        response = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": self._chat_usage(reply),
            "service_tier": "default",
            "system_fingerprint": _SYSTEM_FINGERPRINT,
        }
        return _JSONResult(200, response)

    def _chat_stream(
        self,
        completion_id: str,
        created: int,
        model: str,
        reply: ScriptedReply,
        tool_calls: list[JSONDict],
        finish_reason: str,
        include_usage: bool,
    ) -> Iterator[bytes]:
        def chunk(delta: JSONDict, finish: str | None = None) -> bytes:
            payload: JSONDict = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": _SYSTEM_FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                payload["usage"] = None
            return _sse_data(payload)

        if tool_calls:
            yield chunk({"role": "assistant", "content": None, "refusal": None})
            for index, call in enumerate(tool_calls):
                head = {
                    "index": index,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                yield chunk({"tool_calls": [head]})
                for piece in _split_text(call["function"]["arguments"], _MAX_STREAM_ARGUMENT_CHUNKS):
                    yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        else:
            yield chunk({"role": "assistant", "content": "", "refusal": None})
            for piece in _split_text(reply.content, _MAX_STREAM_CONTENT_CHUNKS):
                yield chunk({"content": piece})
        yield chunk({}, finish_reason)

        if include_usage:
            yield _sse_data(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "service_tier": "default",
                    "system_fingerprint": _SYSTEM_FINGERPRINT,
                    "choices": [],
                    "usage": self._chat_usage(reply),
                }
            )
        yield _sse_data("[DONE]")

    # -- /v1/embeddings --------------------------------------------------------------------------

    def embeddings(self, body: JSONDict, reply: ScriptedReply) -> _Result:
        raw_input = body.get("input")
        if raw_input is None:
            return self.error(400, "Missing required parameter: 'input'.")
        inputs: list[Any]
        if isinstance(raw_input, str):
            inputs = [raw_input]
        elif isinstance(raw_input, list) and raw_input and all(isinstance(x, int) for x in raw_input):
            inputs = [raw_input]  # a single pre-tokenised input
        elif isinstance(raw_input, list):
            inputs = raw_input
        else:
            return self.error(400, "'input' must be a string or a list.")

        as_base64 = body.get("encoding_format") == "base64"
        data: list[JSONDict] = []
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else json.dumps(item)
            vector = _fake_embedding(text)
            embedding: list[float] | str = vector
            if as_base64:
                embedding = base64.b64encode(array.array("f", vector).tobytes()).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        response = {
            "object": "list",
            "data": data,
            "model": self._model(body, reply),
            "usage": {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens},
        }
        return _JSONResult(200, response)

    # -- /v1/responses --------------------------------------------------------------------------

    def responses(self, body: JSONDict, reply: ScriptedReply) -> _Result:
        number = self.server._next_id()
        response = {
            "id": f"resp_fake_{number}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": self._model(body, reply),
            "output": self._response_output(number, reply),
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "temperature": body.get("temperature", 1.0),
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "top_p": body.get("top_p", 1.0),
            "metadata": body.get("metadata") or {},
            "usage": {
                "input_tokens": reply.prompt_tokens,
                "input_tokens_details": {
                    "cached_tokens": reply.cached_tokens,
                    "cache_write_tokens": reply.cache_write_tokens,
                },
                "output_tokens": reply.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
                "total_tokens": reply.total_tokens,
            },
        }
        if body.get("stream"):
            return _SSEResult(self._responses_stream(response))
        return _JSONResult(200, response)

    def _response_output(self, number: int, reply: ScriptedReply) -> list[JSONDict]:
        output: list[JSONDict] = []
        if reply.reasoning is not None:
            output.append(
                {
                    "type": "reasoning",
                    "id": f"rs_fake_{number}",
                    "summary": [{"type": "summary_text", "text": reply.reasoning}],
                }
            )
        if reply.tool_calls:
            for i, call in enumerate(self._tool_calls(reply), start=1):
                output.append(
                    {
                        "type": "function_call",
                        "id": f"fc_fake_{number}_{i}",
                        "call_id": call["id"],
                        "name": call["function"]["name"],
                        "arguments": call["function"]["arguments"],
                        "status": "completed",
                    }
                )
        else:
            output.append(
                {
                    "type": "message",
                    "id": f"msg_fake_{number}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": reply.content, "annotations": []}],
                }
            )
        return output

    def _responses_stream(self, response: JSONDict) -> Iterator[bytes]:
        """Replay the finished ``response`` as the Responses API's typed stream events."""
        sequence = itertools.count()

        def event(event_type: str, **fields: Any) -> bytes:
            return _sse_event(event_type, {"type": event_type, **fields, "sequence_number": next(sequence)})

        pending = {**response, "status": "in_progress", "output": [], "usage": None}
        yield event("response.created", response=pending)
        yield event("response.in_progress", response=pending)
        for index, item in enumerate(response["output"]):
            where = {"item_id": item["id"], "output_index": index}
            if item["type"] == "reasoning":
                yield event("response.output_item.added", output_index=index, item={**item, "summary": []})
                for part_index, part in enumerate(item["summary"]):
                    at = {**where, "summary_index": part_index}
                    yield event("response.reasoning_summary_part.added", **at, part={**part, "text": ""})
                    for piece in _split_text(part["text"], _MAX_STREAM_CONTENT_CHUNKS):
                        yield event("response.reasoning_summary_text.delta", **at, delta=piece)
                    yield event("response.reasoning_summary_text.done", **at, text=part["text"])
                    yield event("response.reasoning_summary_part.done", **at, part=part)
            elif item["type"] == "function_call":
                added = {**item, "arguments": "", "status": "in_progress"}
                yield event("response.output_item.added", output_index=index, item=added)
                for piece in _split_text(item["arguments"], _MAX_STREAM_ARGUMENT_CHUNKS):
                    yield event("response.function_call_arguments.delta", **where, delta=piece)
                yield event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            else:
                added = {**item, "status": "in_progress", "content": []}
                yield event("response.output_item.added", output_index=index, item=added)
                for part_index, part in enumerate(item["content"]):
                    at = {**where, "content_index": part_index}
                    yield event("response.content_part.added", **at, part={**part, "text": ""})
                    for piece in _split_text(part["text"], _MAX_STREAM_CONTENT_CHUNKS):
                        yield event("response.output_text.delta", **at, delta=piece, logprobs=[])
                    yield event("response.output_text.done", **at, text=part["text"], logprobs=[])
                    yield event("response.content_part.done", **at, part=part)
            yield event("response.output_item.done", output_index=index, item=item)
        yield event("response.completed", response=response)


class _AnthropicAPI(_ProviderAPI):
    """The subset of Anthropic's Messages API the fake server understands."""

    routes: ClassVar[dict[str, str]] = {"/v1/messages": "messages"}

    _ERROR_TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        504: "timeout_error",
        529: "overloaded_error",
    }

    def error(self, status: int, message: str) -> _JSONResult:
        err_type = self._ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        request_id = f"req_fake_{self.server._next_id()}"
        body = {"type": "error", "error": {"type": err_type, "message": message}, "request_id": request_id}
        # Without ``x-should-retry: false`` the anthropic client retries 429/5xx with back-off.
        return _JSONResult(status, body, {"request-id": request_id, "x-should-retry": "false"})

    # -- /v1/messages ----------------------------------------------------------------------------

    def messages(self, body: JSONDict, reply: ScriptedReply) -> _Result:
        if not isinstance(body.get("max_tokens"), int):
            return self.error(400, "max_tokens: Field required")
        if not isinstance(body.get("messages"), list):
            return self.error(400, "messages: Field required")
        number = self.server._next_id()
        message: JSONDict = {
            "id": f"msg_fake_{number}",
            "type": "message",
            "role": "assistant",
            "model": self._model(body, reply),
            "content": self._content_blocks(reply),
            "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
            "stop_sequence": None,
            "usage": self._usage(reply),
        }
        headers = {"request-id": f"req_fake_{number}"}
        if body.get("stream"):
            return _SSEResult(self._stream(message), headers=headers)
        return _JSONResult(200, message, headers)

    @staticmethod
    def _content_blocks(reply: ScriptedReply) -> list[JSONDict]:
        blocks: list[JSONDict] = []
        if reply.reasoning is not None:
            signature = _fake_signature(reply.reasoning)
            blocks.append({"type": "thinking", "thinking": reply.reasoning, "signature": signature})
        if reply.tool_calls:
            for i, call in enumerate(reply.tool_calls, start=1):
                tool_input = _arguments_object(call.get("arguments"))
                blocks.append(
                    {"type": "tool_use", "id": f"toolu_{i}", "name": str(call["name"]), "input": tool_input}
                )
        else:
            blocks.append({"type": "text", "text": reply.content})
        return blocks

    @staticmethod
    def _usage(reply: ScriptedReply) -> JSONDict:
        usage: JSONDict = {
            "input_tokens": reply.prompt_tokens,
            "cache_creation_input_tokens": reply.cache_write_tokens,
            "cache_read_input_tokens": reply.cached_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": reply.cache_write_tokens,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": reply.completion_tokens,
            "service_tier": "standard",
        }
        if reply.reasoning_tokens:
            usage["output_tokens_details"] = {"thinking_tokens": reply.reasoning_tokens}
        return usage

    def _stream(self, message: JSONDict) -> Iterator[bytes]:
        """Replay the finished ``message`` as Anthropic's stream events."""
        usage = message["usage"]
        start_usage = {key: value for key, value in usage.items() if key != "output_tokens_details"}
        start_usage["output_tokens"] = _ANTHROPIC_START_OUTPUT_TOKENS
        started = {**message, "content": [], "stop_reason": None, "usage": start_usage}
        yield _sse_event("message_start", {"type": "message_start", "message": started})
        yield _sse_event("ping", {"type": "ping"})

        for index, block in enumerate(message["content"]):
            deltas: list[JSONDict]
            if block["type"] == "thinking":
                opening = {**block, "thinking": "", "signature": ""}
                deltas = [
                    {"type": "thinking_delta", "thinking": piece}
                    for piece in _split_text(block["thinking"], _MAX_STREAM_CONTENT_CHUNKS)
                ]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            elif block["type"] == "tool_use":
                opening = {**block, "input": {}}
                deltas = [
                    {"type": "input_json_delta", "partial_json": piece}
                    for piece in _split_text(json.dumps(block["input"]), _MAX_STREAM_ARGUMENT_CHUNKS)
                ]
            else:
                opening = {**block, "text": ""}
                deltas = [
                    {"type": "text_delta", "text": piece}
                    for piece in _split_text(block["text"], _MAX_STREAM_CONTENT_CHUNKS)
                ]
            start = {"type": "content_block_start", "index": index, "content_block": opening}
            yield _sse_event("content_block_start", start)
            for delta in deltas:
                yield _sse_event(
                    "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
                )
            yield _sse_event("content_block_stop", {"type": "content_block_stop", "index": index})

        # message_delta counts are cumulative totals, so repeating the input counts is harmless.
        final_usage = {
            key: value for key, value in usage.items() if key not in ("cache_creation", "service_tier")
        }
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        yield _sse_event("message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage})
        yield _sse_event("message_stop", {"type": "message_stop"})


# --------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: FakeLLMServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: client disconnects during tests are expected, not worth a traceback."""

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm on, the body of every
    # response on a kept-alive connection waits ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    server_version = "FakeLLMServer/1.0"
    sys_version = ""
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request logging to stderr."""

    def do_POST(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Consume optional trailers up to the terminating blank line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        raw = self._read_body()
        body: JSONDict = {}
        parse_error: str | None = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError as exc:
                parse_error = f"Request body is not valid JSON: {exc}"
            else:
                if isinstance(parsed, dict):
                    body = parsed
                else:
                    parse_error = "Request body must be a JSON object."
        owner._record(self.command, path, {k.lower(): v for k, v in self.headers.items()}, body)

        api, handler = owner._route(path)
        if api is None or handler is None:
            result: _Result = owner._default_api.error(404, f"Unknown path: {self.command} {path}")
        elif self.command != "POST":
            result = api.error(405, f"Method {self.command} not allowed for {path}")
        elif parse_error is not None:
            result = api.error(400, parse_error)
        else:
            reply = owner._next_reply()
            if reply.status != 200:
                result = api.error(reply.status, reply.error_message)
            else:
                try:
                    result = handler(body, reply)
                except Exception as exc:  # noqa: BLE001 - a bad script must not kill the connection
                    result = api.error(500, f"Fake server error: {type(exc).__name__}: {exc}")
        self._send(result)

    def _send(self, result: _Result) -> None:
        if isinstance(result, _JSONResult):
            payload = json.dumps(result.body).encode("utf-8")
            self.send_response(result.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in result.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            return

        self.send_response(result.status)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in result.headers.items():
            self.send_header(name, value)
        self.end_headers()
        for event in result.events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.write(b"0\r\n\r\n")


# --------------------------------------------------------------------------------------------------
# Public server object
# --------------------------------------------------------------------------------------------------


class FakeLLMServer:
    """A scripted fake LLM server running in a background daemon thread.

    ``requests`` records every request received, in order, as
    ``{"method": ..., "path": ..., "headers": {lowercased: value}, "body": <parsed JSON dict>}``.
    """

    # The first API also answers unknown paths.
    _API_CLASSES: tuple[type[_ProviderAPI], ...] = (_OpenAIAPI, _AnthropicAPI)

    def __init__(
        self,
        replies: Sequence[ScriptedReply] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.requests: list[dict[str, Any]] = []
        self._replies: deque[ScriptedReply] = deque(replies or ())
        self._lock = threading.Lock()
        self._counter = 0
        self._apis: list[_ProviderAPI] = [cls(self) for cls in self._API_CLASSES]
        self._default_api = self._apis[0]
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeLLMServer:
        """Bind the socket and serve in a background daemon thread; returns ``self``."""
        if self._httpd is not None:
            raise RuntimeError("FakeLLMServer is already running")
        httpd = _HTTPServer((self.host, self.port), self)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            # stop() waits up to one poll interval; a short one keeps per-test servers cheap.
            kwargs={"poll_interval": 0.01},
            name=f"FakeLLMServer:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open client connections and release the port. Idempotent."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = None
        self._thread = None
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeLLMServer:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    # -- addresses -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (only valid once started)."""
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not running; call start() first")
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The ``base_url`` to pass to ``openai.OpenAI``."""
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The ``base_url`` to pass to ``anthropic.Anthropic``.

        It is the bare origin (same as :attr:`url`): that client appends ``/v1/messages`` itself.
        """
        return self.url

    # -- scripting -------------------------------------------------------------------------------

    def queue(self, *replies: ScriptedReply) -> None:
        """Append replies; they are consumed in order, then the default ``ScriptedReply()`` is used."""
        with self._lock:
            self._replies.extend(replies)

    # -- internals used by the request handler and the provider APIs ------------------------------

    def _next_reply(self) -> ScriptedReply:
        with self._lock:
            return self._replies.popleft() if self._replies else ScriptedReply()

    def _next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _record(self, method: str, path: str, headers: dict[str, str], body: JSONDict) -> None:
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})

    def _route(self, path: str) -> tuple[_ProviderAPI | None, _Handler | None]:
        for api in self._apis:
            handler = api.handler_for(path)
            if handler is not None:
                return api, handler
        return None, None
