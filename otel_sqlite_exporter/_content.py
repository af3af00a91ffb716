"""Prompt, completion and reasoning text, found wherever an instrumentation dialect put it.

Every dialect ends up as the same readable rendering, one message per line::

    system: You are a weather bot.
    user: Weather in Paris?
    assistant: [tool call] get_weather({"city": "Paris"})

The model's reasoning (GenAI ``reasoning``/``thinking`` parts, OpenAI reasoning summaries,
Anthropic thinking blocks) is taken out of the output into a text of its own. The raw attributes
are stored untouched beside them; these texts are what people read and what the full-text index
searches.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson

# Keys that carry prompt or completion content. When content capture is off they are not stored at all.
CONTENT_KEYS = frozenset(
    {
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.prompt",
        "gen_ai.completion",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "input.value",
        "output.value",
        "traceloop.entity.input",
        "traceloop.entity.output",
    }
)
CONTENT_PREFIXES = (
    "llm.input_messages.",
    "llm.output_messages.",
    "gen_ai.prompt.",
    "gen_ai.completion.",
    "gen_ai.input.messages.",
    "gen_ai.output.messages.",
)
# Event names whose attributes are message content (older GenAI conventions and the current details event).
_INPUT_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_DETAILS_EVENT = "gen_ai.client.inference.operation.details"
# Names of the events (span events or log records) whose attributes carry messages.
CONTENT_EVENTS = frozenset(
    {*_INPUT_EVENTS, _DETAILS_EVENT, "gen_ai.choice", "gen_ai.content.prompt", "gen_ai.content.completion"}
)
# Part types, message roles and content types that hold the model's reasoning.
_REASONING_KINDS = frozenset({"reasoning", "thinking"})
_FLAT_INDEX = re.compile(r"^(\d+)\.(.+)$")
# Values are rendered as JSON, never through repr(), which recurses and exhausts the stack a thousand
# levels down. What orjson refuses (nested past its limit, say) is rendered this deep.
_MAX_DEPTH = 64


def is_content_key(key: str) -> bool:
    return key in CONTENT_KEYS or key.startswith(CONTENT_PREFIXES)


def without_content(event_attributes: Mapping[str, Any]) -> dict[str, Any]:
    """An event's attributes without the messages it carries (content capture off): the content
    keys, and the per-message events' ``content`` and ``message``."""
    return {
        k: v for k, v in event_attributes.items() if not is_content_key(k) and k not in ("content", "message")
    }


# Keys present on every span that carries flattened messages (they start at index 0), and on every
# span that carries content: checking them spares the full scan on the spans that carry none.
_FLAT_MARKERS = frozenset(
    {
        "llm.input_messages.0.message.role",
        "llm.input_messages.0.message.content",
        "llm.output_messages.0.message.role",
        "llm.output_messages.0.message.content",
        "gen_ai.prompt.0.role",
        "gen_ai.prompt.0.content",
        "gen_ai.completion.0.role",
        "gen_ai.completion.0.content",
    }
)
_CONTENT_MARKERS = CONTENT_KEYS | _FLAT_MARKERS


class Texts(NamedTuple):
    """A span's readable content; None where it has none."""

    input: str | None
    output: str | None
    reasoning: str | None


NO_TEXT = Texts(None, None, None)


def extract_text(attrs: Mapping[str, Any], events: Sequence[Any], limit: int) -> Texts:
    """The span's input, output and reasoning text, each cut to ``limit`` characters."""
    if not events and _CONTENT_MARKERS.isdisjoint(attrs):
        return NO_TEXT
    reasoning: list[str] = []
    flat: dict[str, dict[int, dict[str, Any]]] | None = None
    # Messages before whole payloads: OpenInference puts the request and response JSON in
    # input.value / output.value beside the messages it flattened out of them.
    text_in = _messages_text(attrs.get("gen_ai.input.messages"), attrs.get("gen_ai.system_instructions"))
    if text_in is None:
        flat = _flattened(attrs) if not _FLAT_MARKERS.isdisjoint(attrs) else {}
        text_in = _flat_messages(flat.get("llm.input_messages.")) or _flat_messages(
            flat.get("gen_ai.prompt.")
        )
    if text_in is None:
        text_in = (
            _plain(attrs.get("input.value"))
            or _plain(attrs.get("traceloop.entity.input"))
            or _plain(attrs.get("gen_ai.prompt"))
            or _plain(attrs.get("gen_ai.tool.call.arguments"))
        )
    text_out = _messages_text(attrs.get("gen_ai.output.messages"), None, reasoning)
    if text_out is None and not reasoning:
        if flat is None:
            flat = _flattened(attrs) if not _FLAT_MARKERS.isdisjoint(attrs) else {}
        text_out = _flat_messages(flat.get("llm.output_messages."), reasoning=reasoning) or _flat_messages(
            flat.get("gen_ai.completion."), default_role="assistant", reasoning=reasoning
        )
    if text_out is None and not reasoning:
        text_out = (
            _plain(attrs.get("output.value"))
            or _plain(attrs.get("traceloop.entity.output"))
            or _plain(attrs.get("gen_ai.completion"))
            or _plain(attrs.get("gen_ai.tool.call.result"))
        )
    if (text_in is None or (text_out is None and not reasoning)) and events:
        ev = events_text(events)
        text_in = text_in if text_in is not None else ev.input
        if text_out is None and not reasoning:
            text_out = ev.output
            if ev.reasoning:
                reasoning.append(ev.reasoning)
    return Texts(_cut(text_in, limit), _cut(text_out, limit), _cut("\n".join(reasoning) or None, limit))


def render_messages(messages: Any, reasoning: list[str] | None = None) -> str | None:
    """Render messages in any of the common shapes (GenAI parts, OpenAI chat, plain strings).

    With a ``reasoning`` list, reasoning parts go there instead of into the rendering, and a
    message of nothing but reasoning is left out of it.
    """
    if isinstance(messages, Mapping):
        messages = [messages]
    if not isinstance(messages, (list, tuple)):
        return _plain(messages)
    lines = []
    for message in messages:
        if isinstance(message, Mapping):
            role = message.get("role") or message.get("type") or "message"
            if not isinstance(role, str):  # a list, say: rendered as JSON, and no reasoning kind
                role = _label(role)
            if reasoning is not None and role in _REASONING_KINDS:  # an OpenAI Responses reasoning item
                _add(reasoning, _reasoning_content(message))
                continue
            before = len(reasoning) if reasoning is not None else 0
            body = _message_body(message, reasoning)
            if body or reasoning is None or len(reasoning) == before:
                lines.append(f"{role}: {body}" if body else f"{role}:")
        elif message is not None:
            lines.append(_label(message))
    return "\n".join(lines) if lines else None


def _messages_text(messages: Any, system: Any, reasoning: list[str] | None = None) -> str | None:
    if messages is None and system is None:
        return None
    parts = []
    if system is not None:
        instructions = _parse(system)
        rendered = (
            _parts_text(instructions) if isinstance(instructions, (list, tuple)) else _plain(instructions)
        )
        if rendered:
            parts.append(f"system: {rendered}")
    if messages is not None:
        rendered = render_messages(_parse(messages), reasoning)
        if rendered:
            parts.append(rendered)
    return "\n".join(parts) if parts else None


def _message_body(message: Mapping[str, Any], reasoning: list[str] | None = None) -> str:
    pieces: list[str] = []
    if "parts" in message:
        pieces.append(_parts_text(message["parts"], reasoning))
    content = message.get("content")
    if content is not None:
        pieces.append(
            _parts_text(content, reasoning) if isinstance(content, (list, tuple)) else _plain(content) or ""
        )
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, (list, tuple)) else ():
        if isinstance(call, Mapping):
            function = call.get("function") if isinstance(call.get("function"), Mapping) else call
            pieces.append(_tool_call(function.get("name"), function.get("arguments")))
    return " ".join(p for p in pieces if p)


def _parts_text(parts: Any, reasoning: list[str] | None = None) -> str:
    if not isinstance(parts, (list, tuple)):
        return _plain(parts) or ""
    out = []
    for part in parts:
        if not isinstance(part, Mapping):
            out.append(_plain(part) or "")
            continue
        kind = part.get("type", "text")
        if not isinstance(kind, str):
            kind = _label(kind)
        if kind == "tool_call":
            out.append(_tool_call(part.get("name"), part.get("arguments")))
        elif kind == "tool_call_response":
            out.append(f"[tool result] {_plain(part.get('response', part.get('result'))) or ''}")
        elif kind in _REASONING_KINDS:
            if reasoning is None:
                out.append(f"[reasoning] {_reasoning_content(part) or ''}")
            else:
                _add(reasoning, _reasoning_content(part))
        else:
            text = part.get("content", part.get("text"))
            out.append(_plain(text) or "" if text is not None else f"[{kind}]")
    return " ".join(p for p in out if p)


def _tool_call(name: Any, arguments: Any) -> str:
    if isinstance(arguments, str):
        args = arguments
    elif arguments is None:
        args = ""
    else:
        args = _dumps(arguments)
    return f"[tool call] {_label(name)}({args})"


def _reasoning_content(part: Mapping[str, Any]) -> str | None:
    """The text of a reasoning part: GenAI ``content``, Anthropic ``thinking``, or an OpenAI
    reasoning summary (a list of ``summary_text`` items, possibly as a JSON string)."""
    for key in ("content", "thinking", "summary", "text"):
        value = part.get(key)
        if value is None or value == [] or value == "":
            continue
        value = _parse(value)
        if isinstance(value, (list, tuple)):
            texts = [
                item.get("text") if isinstance(item, Mapping) else item
                for item in value
                if not isinstance(item, Mapping) or item.get("text")
            ]
            return "\n".join(_label(t) for t in texts if t) or None
        return _plain(value)
    return None


def _add(texts: list[str], text: str | None) -> None:
    if text:
        texts.append(text)


def _flattened(attrs: Mapping[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """Group ``llm.input_messages.0.message.role``-style keys by prefix, then by message index."""
    groups: dict[str, dict[str, Any]] = {}
    for key, value in attrs.items():
        for prefix in ("llm.input_messages.", "llm.output_messages.", "gen_ai.prompt.", "gen_ai.completion."):
            if key.startswith(prefix):
                match = _FLAT_INDEX.match(key[len(prefix) :])
                if match:
                    index, field = int(match.group(1)), match.group(2)
                    groups.setdefault(prefix, {}).setdefault(index, {})[field] = value
                break
    return groups


def _flat_messages(
    indexed: Mapping[int, Mapping[str, Any]] | None,
    default_role: str = "user",
    reasoning: list[str] | None = None,
) -> str | None:
    """Flattened messages as lines; with a ``reasoning`` list, reasoning goes there: OpenInference
    contents of type ``reasoning``, and OpenLLMetry's ``thinking`` role."""
    if not indexed:
        return None
    lines = []
    for index in sorted(indexed):
        fields = indexed[index]
        role = fields.get("message.role") or fields.get("role") or default_role
        content = fields.get("message.content") or fields.get("content")
        if reasoning is not None and _is_reasoning(role):
            _add(reasoning, _plain(content))
            continue
        texts = [content]
        # OpenInference multi-part contents and tool calls, in index order.
        for key in sorted(
            (k for k in fields if k.startswith("message.contents.") and k.endswith(".text")), key=_numeric
        ):
            kind = fields.get(key[: -len("text")] + "type")
            if reasoning is not None and _is_reasoning(kind):
                _add(reasoning, _plain(fields[key]))
            else:
                texts.append(fields[key])
        for key in sorted((k for k in fields if k.endswith("function.name")), key=_numeric):
            args = fields.get(key.replace("function.name", "function.arguments"))
            texts.append(_tool_call(fields[key], args))
        for key in sorted(
            (k for k in fields if k.startswith("tool_calls.") and k.endswith(".name")), key=_numeric
        ):
            texts.append(_tool_call(fields[key], fields.get(key[: -len("name")] + "arguments")))
        body = " ".join(_label(t) for t in texts if t)
        if body or not any(_is_reasoning(fields.get(k)) for k in fields if k.endswith(".type")):
            lines.append(f"{_label(role)}: {body}" if body else f"{_label(role)}:")
    return "\n".join(lines) or None


def _numeric(key: str) -> list[int | str]:
    """Sort key under which "contents.10" follows "contents.9", not "contents.1"."""
    return [int(part) if part.isdigit() else part for part in key.split(".")]


def events_text(events: Iterable[Any]) -> Texts:
    """The texts of GenAI content events (span events, or log records read as events: objects
    with ``name`` and ``attributes``), in their order; None where they have none."""
    inputs: list[str] = []
    outputs: list[str] = []
    reasoning: list[str] = []
    for event in events:
        name = event.name
        attrs = event.attributes or {}
        if name == _DETAILS_EVENT:
            text = _messages_text(attrs.get("gen_ai.input.messages"), attrs.get("gen_ai.system_instructions"))
            if text:
                inputs.append(text)
            text = _messages_text(attrs.get("gen_ai.output.messages"), None, reasoning)
            if text:
                outputs.append(text)
        elif name in _INPUT_EVENTS:
            body = _plain(attrs.get("content")) or _plain(attrs.get("gen_ai.event.content"))
            if body:
                inputs.append(f"{_INPUT_EVENTS[name]}: {body}")
        elif name == "gen_ai.choice":
            message = _parse(attrs.get("message"))
            body = (
                _message_body(message, reasoning)
                if isinstance(message, Mapping)
                else _plain(attrs.get("content"))
            )
            if body:
                outputs.append(f"assistant: {body}")
        elif name == "gen_ai.content.prompt":
            body = _plain(attrs.get("gen_ai.prompt"))
            if body:
                inputs.append(body)
        elif name == "gen_ai.content.completion":
            body = _plain(attrs.get("gen_ai.completion"))
            if body:
                outputs.append(body)
    return Texts("\n".join(inputs) or None, "\n".join(outputs) or None, "\n".join(reasoning) or None)


def _parse(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
        # Some SDKs store a message list as a tuple of JSON strings.
        return [_parse(v) for v in value]
    return value


def _plain(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, (list, tuple, dict)):
        return _dumps(value)
    return str(value)


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:  # orjson.JSONEncodeError too: nested too deep, keys that are not text, surrogates
        return json.dumps(_bounded(value, _MAX_DEPTH), ensure_ascii=False, default=str, separators=(",", ":"))


def _label(value: Any) -> str:
    """Any value as text in a rendering: containers as JSON, never their repr (which recurses)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, Mapping)):
        return _dumps(value)
    return str(value)


def _is_reasoning(kind: Any) -> bool:
    return isinstance(kind, str) and kind in _REASONING_KINDS


def _bounded(value: Any, depth: int) -> Any:
    """A copy of value that json.dumps takes: containers at most ``depth`` deep, keys as text."""
    if isinstance(value, Mapping):
        if depth <= 0:
            return "..."
        return {k if isinstance(k, str) else _label(k): _bounded(v, depth - 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if depth <= 0:
            return "..."
        return [_bounded(v, depth - 1) for v in value]
    return value


def _cut(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text[:limit] if len(text) > limit else text
