"""Redaction: API keys, tokens and passwords never reach the trace file.

Each check reads what a user would find: the columns, and the raw bytes of the database file with
its -wal and -shm beside it, read after a flush while the writer still holds them open (keys are
also looked for lower-cased, as the full-text index stores its tokens).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import Tracing, query, sha256, start_tracing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags

from otel_sqlite_exporter import ConfigurationError, SQLiteSpanExporter, TraceFileError, session
from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._normalize import HEAD_NAME_AT, SpanMapper
from otel_sqlite_exporter._redact import (
    DEFAULT_RULES,
    REDACTED,
    REDACTION_FAILED,
    Redactor,
    redact_text,
    scrub_file,
)

LOGGER = "otel_sqlite_exporter"

OPENAI_KEY = "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"
PROJECT_KEY = "sk-proj-Zq8xVb3nKp0LmW7tRy2uEo5iAs9dFg4hJk6lQw1eRt3yUiT3BlbkFJ"
ANTHROPIC_KEY = "sk-ant-api03-Xy7_Wv6-Ut5Sr4Qp3On2Ml1Kj0Ih9Gf8Ed7Cb6Az5Yx4Wv3Ut2Sr1Qp0On9AA"
GOOGLE_KEY = "AIzaSyD4f8Kx2Lm9Qp7Rt3Vw6Yz1Bc5Nh0Jg8Ue"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_TEMPORARY_KEY = "ASIAY34FZKBOKMUTVV7A"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1x9Kp3LmQ2Rt7Vw0\nYz5Bc8Nh1Jg4Ue6Wq2Er4Ty6Ui8Op0=\n"
    "-----END RSA PRIVATE KEY-----"
)

# (id, text carrying a secret, the secret, the text as stored)
CASES = [
    ("openai", f"use {OPENAI_KEY} now", OPENAI_KEY, f"use {REDACTED} now"),
    ("openai-project", f"key={PROJECT_KEY}", PROJECT_KEY, f"key={REDACTED}"),
    (
        "anthropic",
        f"export ANTHROPIC_KEY='{ANTHROPIC_KEY}'",
        ANTHROPIC_KEY,
        f"export ANTHROPIC_KEY='{REDACTED}'",
    ),
    ("google", f"?key={GOOGLE_KEY}&q=paris", GOOGLE_KEY, f"?key={REDACTED}&q=paris"),
    ("aws-access-key", f"id {AWS_KEY}.", AWS_KEY, f"id {REDACTED}."),
    ("aws-temporary-key", f"[{AWS_TEMPORARY_KEY}]", AWS_TEMPORARY_KEY, f"[{REDACTED}]"),
    ("bearer", "Bearer ya29.a0AfH6SMBxQ8kLm3Np7Rt", "ya29.a0AfH6SMBxQ8kLm3Np7Rt", f"Bearer {REDACTED}"),
    (
        "authorization",
        "Authorization: Basic dXNlcjpzM2NyM3Q=\nAccept: */*",
        "dXNlcjpzM2NyM3Q=",
        f"Authorization: {REDACTED}\nAccept: */*",
    ),
    (
        "api-key-assignment",
        "OPENAI_API_KEY=opaque-9f8e7d6c5b4a",
        "opaque-9f8e7d6c5b4a",
        f"OPENAI_API_KEY={REDACTED}",
    ),
    (
        "api-key-json",
        '{"api_key": "opaque1a2b3c4d5e6f"}',
        "opaque1a2b3c4d5e6f",
        f'{{"api_key": "{REDACTED}"}}',
    ),
    ("x-api-key-header", "X-Api-Key: 7f3c9a1e5b2d", "7f3c9a1e5b2d", f"X-Api-Key: {REDACTED}"),
    ("jwt", f"session {JWT} ok", JWT, f"session {REDACTED} ok"),
    (
        "private-key",
        f"here:\n{PEM}\nthanks",
        "MIIEowIBAAKCAQEA1x9Kp3LmQ2Rt7Vw0",
        f"here:\n{REDACTED}\nthanks",
    ),
    ("password", "login with password: Tr0ub4dor-3", "Tr0ub4dor-3", f"login with password: {REDACTED}"),
    (
        "url-credentials",
        "postgres://admin:S3cr3tPw9@db:5432/app",
        "S3cr3tPw9",
        f"postgres://admin:{REDACTED}@db:5432/app",
    ),
    (
        "access-token",
        "access_token=gho_16C7e42F292c6912E7710c838347Ae178B4a",
        "gho_16C7e42F292c6912E7710c838347Ae178B4a",
        f"access_token={REDACTED}",
    ),
    (
        "client-secret",
        '{"client_secret": "cs-8d7c6b5a4f3e"}',
        "cs-8d7c6b5a4f3e",
        f'{{"client_secret": "{REDACTED}"}}',
    ),
]


def files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def fragments(secret: str) -> set[bytes]:
    """The secret, and its runs of letters and digits (what a full-text index keeps), in its own
    case and lower-cased."""
    parts = {secret, *re.findall(r"[A-Za-z0-9]{8,}", secret)}
    return {form.encode() for part in parts for form in (part, part.lower())}


def assert_nowhere(path: Path, *secrets: str) -> None:
    found = files(path)
    data = b"".join(p.read_bytes() for p in found)
    for secret in secrets:
        for fragment in fragments(secret):
            assert fragment not in data, f"{fragment!r} is in {[p.name for p in found]}"


def one(t: Tracing, sql: str, params: tuple[Any, ...] = ()) -> Any:
    rows = t.q(sql, params)
    assert len(rows) == 1, rows
    return rows[0][0] if len(rows[0]) == 1 else rows[0]


# -- every built-in rule, everywhere a string can be --------------------------------------------------


@pytest.fixture(scope="module")
def every_case(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracing]:
    """One span per case, carrying its text in every place a span has text."""
    t = start_tracing(
        tmp_path_factory.mktemp("cases") / "traces.db",
        resource={"service.name": "redaction", "deploy.note": CASES[0][1]},
    )
    other = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1))
    for case_id, text, _, _ in CASES:
        messages = json.dumps([{"role": "user", "content": text}])
        with t.tracer.start_as_current_span(
            f"{case_id} | {text}",
            attributes={
                "case": case_id,
                "note": text,
                "notes": ("plain", text),
                "gen_ai.input.messages": messages,
            },
            links=[Link(other, {"reason": text})],
        ) as span:
            span.add_event("exception", {"exception.message": text})
            span.set_status(Status(StatusCode.ERROR, text))
    t.flush()
    yield t
    t.close()


@pytest.mark.parametrize(("case_id", "text", "secret", "stored"), CASES, ids=[c[0] for c in CASES])
def test_every_rule_redacts_everywhere_and_nothing_else(
    every_case: Tracing, case_id: str, text: str, secret: str, stored: str
) -> None:
    t = every_case
    assert secret in text
    name, status, input_text, attributes, events, links = one(
        t,
        "SELECT name, status_message, input_text, attributes, events, links FROM spans "
        "WHERE attributes ->> '$.case' = ?",
        (case_id,),
    )
    attrs = json.loads(attributes)
    # Exactly the secret is replaced: the words around it stay readable.
    assert attrs["note"] == stored
    assert attrs["notes"] == ["plain", stored]
    assert json.loads(attrs["gen_ai.input.messages"]) == [{"role": "user", "content": stored}]
    assert input_text == f"user: {stored}"
    assert name == f"{case_id} | {stored}"
    assert status == stored
    assert json.loads(events)[0]["attributes"] == {"exception.message": stored}
    assert json.loads(links)[0]["attributes"] == {"reason": stored}
    # The WAL is still there: the bytes checked include everything written so far.
    assert len(files(t.path)) == 3
    assert_nowhere(t.path, secret)


def test_resource_attributes_are_redacted(every_case: Tracing) -> None:
    (attributes,) = every_case.q("SELECT attributes FROM resources")[0]
    assert json.loads(attributes)["deploy.note"] == CASES[0][3]
    assert_nowhere(every_case.path, CASES[0][2])


def test_full_text_search_finds_the_span_not_the_key(every_case: Tracing) -> None:
    t = every_case
    hits = t.q(
        "SELECT s.name FROM spans_fts JOIN spans AS s ON s.id = spans_fts.rowid WHERE spans_fts MATCH ?",
        ("thanks",),
    )
    assert hits == [(f"private-key | here:\n{REDACTED}\nthanks",)]
    assert (
        t.q("SELECT rowid FROM spans_fts WHERE spans_fts MATCH ?", ('"MIIEowIBAAKCAQEA1x9Kp3LmQ2Rt7Vw0"',))
        == []
    )


# -- JSON stays JSON -----------------------------------------------------------------------------------


def decoded_strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, and in JSON documents nested inside its strings."""
    if isinstance(value, dict):
        for item in value.values():
            yield from decoded_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from decoded_strings(item)
    elif isinstance(value, str):
        yield value
        try:
            inner = json.loads(value)
        except ValueError:
            return
        if isinstance(inner, (dict, list)):
            yield from decoded_strings(inner)


def shape(value: Any) -> Any:
    """The structure of a JSON value, nested JSON documents included, without its strings."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if isinstance(value, str):
        try:
            inner = json.loads(value)
        except ValueError:
            return "string"
        return ("json", shape(inner)) if isinstance(inner, (dict, list)) else "string"
    return type(value).__name__


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_json_attributes_stay_valid_with_the_same_structure(tmp_path: Path, depth: int) -> None:
    arguments = json.dumps({"api_key": "opaque7c6b5a4f3e", "pem": PEM, "password": "hunter2-x", "n": 5})
    messages: Any = [
        {"role": "system", "content": f"Your key is {OPENAI_KEY}.\nAuthorization: Bearer {JWT}"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "deploy", "arguments": arguments}}]},
        {"role": "user", "content": "password=None, 'secret': 'x-7f', \"token\": \"Hello\""},
    ]
    value = json.dumps(messages)
    for _ in range(depth - 1):  # JSON inside a JSON string inside ...
        value = json.dumps({"payload": value, "keep": "me"})
    t = start_tracing(tmp_path / "traces.db")
    with t.tracer.start_as_current_span("llm", attributes={"gen_ai.input.messages": value}):
        pass
    t.flush()
    stored = json.loads(one(t, "SELECT attributes FROM spans"))["gen_ai.input.messages"]
    original = json.loads(value)
    assert shape(json.loads(stored)) == shape(original)
    strings = list(decoded_strings(json.loads(stored)))
    for secret in (OPENAI_KEY, JWT, "opaque7c6b5a4f3e", "MIIEowIBAAKCAQEA1x9Kp3LmQ2Rt7Vw0", "hunter2-x"):
        assert not any(secret in s for s in strings), secret
    assert any(s == "me" for s in strings) or depth == 1
    # Text that only looks like a secret is kept: a JSON null, a message token ("Hello").
    assert any('"token": "Hello"' in s for s in strings)
    assert_nowhere(t.path, OPENAI_KEY, JWT, "opaque7c6b5a4f3e", "MIIEowIBAAKCAQEA1x9Kp3LmQ2Rt7Vw0")
    t.close()


# -- the attribute-name rule ---------------------------------------------------------------------------


def test_header_attributes_are_redacted_whole_and_usage_counts_are_kept(tmp_path: Path) -> None:
    t = start_tracing(tmp_path / "traces.db")
    other = SpanContext(0x99, 0x77, is_remote=False, trace_flags=TraceFlags(1))
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 345,
        "gen_ai.request.max_tokens": 512,
        "llm.token_count.prompt": 1200,
        "http.request.header.authorization": (f"Bearer {PROJECT_KEY}",),
        "http.request.header.x-api-key": ("k7f3c9a1e",),
        "http.request.header.cookie": ("session=3c9a1e5b2d7f; theme=dark",),
        "http.request.header.proxy-authorization": ("Basic cHJveHk6cHc=",),
        "http.response.header.set-cookie": ("sid=a1e5b2d7f3c9",),
        "db.password": "plain-pw-42",
        "openai.api_key": "opaque-k1e5b2",
        "auth.access_token": "tok-b2d7f3c9",
    }
    with t.tracer.start_as_current_span(
        "chat gpt-4o", attributes=attributes, links=[Link(other, {"x-auth-token": "lt-55e1"})]
    ) as span:
        span.add_event("request", {"http.request.header.authorization": "Basic ZXZlbnQ6cHc=", "attempt": 2})
    t.flush()
    row = t.q(
        "SELECT attributes, events, links, input_tokens, output_tokens, model FROM spans "
        "WHERE name = 'chat gpt-4o'"
    )[0]
    stored = json.loads(row[0])
    assert stored == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 345,
        "gen_ai.request.max_tokens": 512,
        "llm.token_count.prompt": 1200,
        "http.request.header.authorization": [REDACTED],
        "http.request.header.x-api-key": [REDACTED],
        "http.request.header.cookie": [REDACTED],
        "http.request.header.proxy-authorization": [REDACTED],
        "http.response.header.set-cookie": [REDACTED],
        "db.password": REDACTED,
        "openai.api_key": REDACTED,
        "auth.access_token": REDACTED,
    }
    assert json.loads(row[1])[0]["attributes"] == {
        "http.request.header.authorization": REDACTED,
        "attempt": 2,
    }
    assert json.loads(row[2])[0]["attributes"] == {"x-auth-token": REDACTED}
    assert row[3:] == (1200, 345, "gpt-4o")
    assert_nowhere(
        t.path,
        PROJECT_KEY,
        "k7f3c9a1e",
        "3c9a1e5b2d7f",
        "cHJveHk6cHc=",
        "a1e5b2d7f3c9",
        "plain-pw-42",
        "ZXZlbnQ6cHc=",
    )
    t.close()


# -- the real openai client ----------------------------------------------------------------------------

APP = r"""
import json, os, shutil, sys
import httpx, openai
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from otel_sqlite_exporter import configure
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

key, snapshot = sys.argv[1], sys.argv[2]
os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "SPAN_ONLY"
provider = configure("traces.db", service_name="redaction", instrument=True)
tracer = trace.get_tracer("app")


def capture_headers(request):
    # What an HTTP client instrumentation records with header capture turned on.
    trace.get_current_span().set_attribute(
        "http.request.header.authorization", (request.headers["authorization"],)
    )


replies = [
    ScriptedReply(tool_calls=[{"name": "deploy", "arguments": {"api_key": key, "region": "eu"}}]),
    # OpenAI's own answer to a wrong key quotes the key.
    ScriptedReply(status=401, error_message=f"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys."),
]
with FakeLLMServer(replies) as server:
    client = openai.OpenAI(
        base_url=server.openai_base_url, api_key=key, max_retries=0,
        http_client=httpx.Client(event_hooks={"request": [capture_headers]}),
    )
    with tracer.start_as_current_span("agent"):
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"Deploy, the key is {key}"}]
        )
        call = reply.choices[0].message.tool_calls[0]
        with tracer.start_as_current_span(
            "execute_tool deploy",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "deploy",
                        "gen_ai.tool.call.arguments": call.function.arguments},
        ):
            pass
        with tracer.start_as_current_span("retry") as span:
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}]
                )
            except openai.AuthenticationError as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
assert provider.force_flush(10_000)
os.makedirs(snapshot)
for suffix in ("", "-wal", "-shm"):
    shutil.copy("traces.db" + suffix, os.path.join(snapshot, "traces.db" + suffix))
provider.shutdown()
print(json.dumps({"arguments": call.function.arguments}))
"""


def test_openai_key_from_client_prompt_tool_call_and_401_never_reaches_the_file(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, "-c", APP, PROJECT_KEY, str(snapshot)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    # The application itself saw the key everywhere: only the file is clean.
    assert PROJECT_KEY in json.loads(proc.stdout.splitlines()[-1])["arguments"]
    db = snapshot / "traces.db"
    assert len(files(db)) == 3
    assert_nowhere(db, PROJECT_KEY)
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT name, status_message, input_text, attributes, events FROM spans "
            "ORDER BY start_time_unix_nano"
        ).fetchall()
    finally:
        conn.close()
    names = [row[0] for row in rows]
    assert names == ["agent", "chat gpt-4o-mini", "execute_tool deploy", "retry", "chat gpt-4o-mini"], names
    _, (_, _, prompt, first, _), (_, _, arguments, _, _), retry, (_, failed_status, _, failed, _) = rows
    assert prompt == f"user: Deploy, the key is {REDACTED}"
    assert json.loads(first)["http.request.header.authorization"] == [REDACTED]
    assert json.loads(failed)["http.request.header.authorization"] == [REDACTED]
    assert json.loads(arguments) == {"api_key": REDACTED, "region": "eu"}
    said = f"Incorrect API key provided: {REDACTED}."
    assert said in failed_status
    assert said in retry[1]
    assert said in json.loads(retry[4])[0]["attributes"]["exception.message"]


def test_exporter_behind_batch_span_processor_redacts_too(tmp_path: Path) -> None:
    path = tmp_path / "traces.db"
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(SQLiteSpanExporter(path)))
    with provider.get_tracer("t").start_as_current_span("call", attributes={"prompt": f"key {OPENAI_KEY}"}):
        pass
    assert provider.force_flush(10_000)
    assert json.loads(query(path, "SELECT attributes FROM spans")[0][0]) == {"prompt": f"key {REDACTED}"}
    assert_nowhere(path, OPENAI_KEY)
    provider.shutdown()


# -- where the text is cut -------------------------------------------------------------------------------


PREFIX = "x" * 29 + " "


def test_a_key_cut_by_max_content_length_leaves_no_part_behind(tmp_path: Path) -> None:
    t = start_tracing(tmp_path / "traces.db", max_content_length=40)
    prefix = PREFIX  # the key starts 10 characters before the cut
    with t.tracer.start_as_current_span(
        "tool", attributes={"input.value": prefix + PROJECT_KEY, "output.value": "y" * 33 + GOOGLE_KEY}
    ):
        pass
    t.flush()
    input_text, output_text = one(t, "SELECT input_text, output_text FROM spans")
    assert input_text == (prefix + REDACTED)[:40]
    assert output_text == ("y" * 33 + REDACTED)[:40]
    assert_nowhere(t.path, PROJECT_KEY, GOOGLE_KEY)
    assert b"sk-proj-Zq" not in b"".join(p.read_bytes() for p in files(t.path))
    t.close()


def test_a_key_that_starts_a_span_name_or_scope_name(tmp_path: Path) -> None:
    t = start_tracing(tmp_path / "traces.db", scope=(OPENAI_KEY, None))
    with t.tracer.start_as_current_span(PROJECT_KEY):
        pass
    t.flush()
    assert one(t, "SELECT name, scope_name FROM spans") == (REDACTED, REDACTED)
    assert_nowhere(t.path, OPENAI_KEY, PROJECT_KEY)
    t.close()


def test_span_name_redaction_keeps_the_rest_of_the_row(tmp_path: Path) -> None:
    t = start_tracing(tmp_path / "traces.db", scope=(f"lib {AWS_KEY}", "1.0"))
    span = t.tracer.start_span(f"GET /v1/models?key={GOOGLE_KEY}")
    span.set_status(Status(StatusCode.OK))
    span.end()
    t.flush()
    row = one(
        t,
        "SELECT name, scope_name, scope_version, kind, status_code, trace_id, span_id, start_time_unix_nano, "
        "end_time_unix_nano FROM spans",
    )
    ctx = span.get_span_context()
    assert row == (
        f"GET /v1/models?key={REDACTED}",
        f"lib {REDACTED}",
        "1.0",
        "internal",
        "OK",
        f"{ctx.trace_id:032x}",
        f"{ctx.span_id:016x}",
        span.start_time,
        span.end_time,
    )
    assert one(t, "SELECT root_span_name FROM traces") == f"GET /v1/models?key={REDACTED}"
    assert_nowhere(t.path, GOOGLE_KEY, AWS_KEY)
    t.close()


# -- batches without secrets -------------------------------------------------------------------------

GENAI_ATTRIBUTES = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.usage.input_tokens": 120,
    "gen_ai.usage.output_tokens": 45,
    "gen_ai.request.temperature": 0.2,
    "gen_ai.request.max_tokens": 512,
    "gen_ai.response.id": "chatcmpl-0123456789",
    "gen_ai.response.finish_reasons": ("stop",),
}


def test_one_secret_in_a_large_batch_changes_only_its_span(tmp_path: Path) -> None:
    t = start_tracing(tmp_path / "traces.db", schedule_delay_millis=60_000)
    for i in range(300):
        attributes = dict(GENAI_ATTRIBUTES, index=i)
        if i == 150:
            attributes["note"] = f"the key is {ANTHROPIC_KEY}"
        with t.tracer.start_as_current_span("chat gpt-4o", attributes=attributes):
            pass
    t.flush()
    rows = t.q("SELECT attributes FROM spans")
    assert len(rows) == 300
    expected = json.loads(orjson.dumps(GENAI_ATTRIBUTES))
    for (text,) in rows:
        attrs = json.loads(text)
        note = attrs.pop("note", None)
        index = attrs.pop("index")
        assert attrs == expected
        assert note == (f"the key is {REDACTED}" if index == 150 else None)
    assert_nowhere(t.path, ANTHROPIC_KEY)
    t.close()


def test_ordinary_genai_batch_is_left_alone_after_one_look(tmp_path: Path) -> None:
    """The shortcut the throughput depends on: a batch of ordinary GenAI spans is recognised as
    holding no secret from its encoded document alone."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    for _ in range(20):
        with tracer.start_as_current_span("agent", attributes={"gen_ai.operation.name": "invoke_agent"}):
            with tracer.start_as_current_span("chat gpt-4o", attributes=GENAI_ATTRIBUTES):
                pass
    mapper = SpanMapper(Options.resolve(tmp_path / "traces.db"), lambda *_: 1)
    rows = [mapper.row(span) for span in exporter.get_finished_spans()]
    document = orjson.dumps(rows).decode()
    assert Redactor().scan(document) == ()
    assert mapper.encode(rows) == document


# -- options ------------------------------------------------------------------------------------------


def test_redact_false_keeps_text_as_it_came(tmp_path: Path) -> None:
    t = start_tracing(tmp_path / "traces.db", redact=False)
    text = f"{OPENAI_KEY} {JWT} password: hunter2-x"
    with t.tracer.start_as_current_span(
        text, attributes={"note": text, "http.request.header.authorization": (f"Bearer {OPENAI_KEY}",)}
    ):
        pass
    t.flush()
    name, attributes = one(t, "SELECT name, attributes FROM spans")
    assert name == text
    assert json.loads(attributes) == {
        "note": text,
        "http.request.header.authorization": [f"Bearer {OPENAI_KEY}"],
    }
    t.close()


def test_a_callable_replaces_the_built_in_rules(tmp_path: Path) -> None:
    seen: list[str] = []

    def hide_emails(text: str) -> str:
        seen.append(text)
        return re.sub(r"[\w.]+@[\w.]+", "<email>", text)

    t = start_tracing(tmp_path / "traces.db", redact=hide_emails, resource={"owner": "ops@example.com"})
    with t.tracer.start_as_current_span(
        "mail bob@example.com",
        attributes={
            "to": "bob@example.com",
            "key": OPENAI_KEY,
            "input.value": "write to bob@example.com",
            "n": 3,
        },
    ) as span:
        span.add_event("sent", {"to": ("bob@example.com",)})
        span.set_status(Status(StatusCode.ERROR, "bounced: bob@example.com"))
    t.flush()
    name, status, input_text, attributes, events = one(
        t, "SELECT name, status_message, input_text, attributes, events FROM spans"
    )
    assert name == "mail <email>"
    assert status == "bounced: <email>"
    assert input_text == "write to <email>"
    # The built-in rules are gone: the key is the callable's business now.
    assert json.loads(attributes) == {
        "to": "<email>",
        "key": OPENAI_KEY,
        "input.value": "write to <email>",
        "n": 3,
    }
    assert json.loads(events)[0]["attributes"] == {"to": ["<email>"]}
    assert json.loads(t.q("SELECT attributes FROM resources")[0][0])["owner"] == "<email>"
    assert "bob@example.com" in seen
    t.close()


def test_a_failing_callable_never_stores_the_text_nor_stops_the_application(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def fragile(text: str) -> str:
        if "boom" in text:
            raise ValueError("cannot handle this")
        if "none" in text:
            return None  # type: ignore[return-value]
        return text.upper()

    caplog.set_level(logging.ERROR, logger=LOGGER)
    t = start_tracing(tmp_path / "traces.db", redact=fragile)
    for i in range(3):
        with t.tracer.start_as_current_span(
            f"step {i}", attributes={"a": f"boom {OPENAI_KEY}", "b": "fine", "c": "none"}
        ):
            pass
    t.flush()
    rows = t.q("SELECT name, attributes FROM spans ORDER BY name")
    assert [name for name, _ in rows] == ["STEP 0", "STEP 1", "STEP 2"]
    for _, attributes in rows:
        assert json.loads(attributes) == {"a": REDACTION_FAILED, "b": "FINE", "c": REDACTION_FAILED}
    assert_nowhere(t.path, OPENAI_KEY)
    failures = [r for r in caplog.records if "redact callable" in r.getMessage()]
    assert len(failures) == 1
    assert "ValueError" in failures[0].getMessage()
    t.close()


EXTRA_PATTERNS = [
    # (pattern, text, the part that must go, the text as stored)
    (r"ACME-[A-Z0-9]{8}", "order ACME-Q7X5K3M9 shipped", "ACME-Q7X5K3M9", f"order {REDACTED} shipped"),
    # The literal holds a line break, which JSON escapes: the batch is still recognised.
    (r"EMP\n[A-Z]{2}\d{4}", "badge EMP\nQX4242 ok", "QX4242", f"badge {REDACTED} ok"),
    # The literal holds quotes, escaped in the document, and again inside the JSON it is in.
    (r'"ssn": "\d{3}-\d{2}-\d{4}"', json.dumps({"ssn": "078-05-1120"}), "078-05-1120", f"{{{REDACTED}}}"),
    # No literal at all: every string is checked.
    (
        r"\b\d{4}(?:[ -]?\d{4}){3}\b",
        "card 4111 1111 1111 1111 on file",
        "4111 1111",
        f"card {REDACTED} on file",
    ),
    # Case-insensitive, in an ASCII text and in one that is not.
    (r"(?i)internal-[a-z0-9]{6}", "see INTERNAL-Qr12St", "Qr12St", f"see {REDACTED}"),
    (r"(?i)internal-[a-z0-9]{6}", "café INTERNAL-Zz98Yy", "Zz98Yy", f"café {REDACTED}"),
]


@pytest.mark.parametrize(("pattern", "text", "secret", "stored"), EXTRA_PATTERNS)
def test_redact_patterns_add_to_the_built_in_rules(
    tmp_path: Path, pattern: str, text: str, secret: str, stored: str
) -> None:
    t = start_tracing(tmp_path / "traces.db", redact_patterns=[pattern])
    for i in range(50):  # the batch around it holds nothing to redact
        with t.tracer.start_as_current_span("chat", attributes=GENAI_ATTRIBUTES):
            pass
        if i == 25:
            with t.tracer.start_as_current_span("tool", attributes={"note": text, "key": OPENAI_KEY}):
                pass
    t.flush()
    attrs = json.loads(one(t, "SELECT attributes FROM spans WHERE name = 'tool'"))
    assert attrs == {"note": stored, "key": REDACTED}
    assert_nowhere(t.path, secret, OPENAI_KEY)
    t.close()


def test_redact_false_with_patterns_applies_only_the_patterns(tmp_path: Path) -> None:
    t = start_tracing(tmp_path / "traces.db", redact=False, redact_patterns=[re.compile(r"ACME-\d+")])
    with t.tracer.start_as_current_span("x", attributes={"note": f"ACME-42 {OPENAI_KEY}"}):
        pass
    t.flush()
    assert json.loads(one(t, "SELECT attributes FROM spans")) == {"note": f"{REDACTED} {OPENAI_KEY}"}
    t.close()


def test_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = f"ACME-7 ZETA-9 {OPENAI_KEY}"
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_REDACT", "false")
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_REDACT_PATTERNS", r'["ACME-\\d", "ZETA-\\d"]')
    t = start_tracing(tmp_path / "off.db")
    with t.tracer.start_as_current_span("x", attributes={"note": text}):
        pass
    t.flush()
    assert json.loads(one(t, "SELECT attributes FROM spans")) == {
        "note": f"{REDACTED} {REDACTED} {OPENAI_KEY}"
    }
    t.close()

    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_REDACT", "on")
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_REDACT_PATTERNS", r"ZETA-\d")  # a single pattern
    t = start_tracing(tmp_path / "on.db")
    with t.tracer.start_as_current_span("x", attributes={"note": text}):
        pass
    t.flush()
    assert json.loads(one(t, "SELECT attributes FROM spans")) == {"note": f"ACME-7 {REDACTED} {REDACTED}"}
    t.close()

    # An explicit argument wins over the environment.
    t = start_tracing(tmp_path / "arg.db", redact=False, redact_patterns=[])
    with t.tracer.start_as_current_span("x", attributes={"note": text}):
        pass
    t.flush()
    assert json.loads(one(t, "SELECT attributes FROM spans")) == {"note": text}
    t.close()

    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_REDACT", "sometimes")
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_SQLITE_REDACT="):
        start_tracing(tmp_path / "bad.db")
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_REDACT", "true")
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_REDACT_PATTERNS", '["(unclosed"]')
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_SQLITE_REDACT_PATTERNS"):
        start_tracing(tmp_path / "bad.db")


# -- the shortcut is exact, and JSON stays JSON, whatever the text ------------------------------------

FRAGMENTS = [
    *(secret for _, _, secret, _ in CASES),
    OPENAI_KEY[:20],
    "sk-",
    "AIza",
    "AKIA",
    "eyJ",
    "Bearer",
    "BEARER",
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----",
    "api_key",
    "API-KEY",
    "password",
    "Authorization",
    "access_token",
    "client_secret",
    "token",
    "://",
    "user",
    "@",
    " ",
    "\t",
    "\n",
    "\\",
    '"',
    "'",
    ":",
    "=",
    ",",
    "{",
    "}",
    "[",
    "]",
    "risk",
    "é",
    "\x1f",  # escaped as \u001f
    "\x10",  # escaped as \u0010: a digit before what follows
    "\u212a",  # KELVIN SIGN, which folds to "k"
    REDACTED,
    "x",
    "9",
]
texts = st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(texts)
def test_a_rule_that_would_change_a_string_is_always_found_in_its_document(text: str) -> None:
    redactor = Redactor()
    value = text
    for _ in range(3):  # as it is, inside JSON, inside JSON inside JSON
        changing = [rule for rule in DEFAULT_RULES if rule.apply(value) != value]
        blank = "0" * (HEAD_NAME_AT - 1)
        # Each place a string can be in a row, alone: a span name and a scope name sit inside the
        # row's head, after their lengths.
        for row in (
            [f"{blank}{len(value):06d}{value}000002ok", None],
            [f"{blank}000004name{len(value):06d}{value}", None],
            [f"{blank}000004name000002ok", {"a": value, "b": ("x", value)}],
            [f"{blank}000004name000002ok", None, value, [{"name": "e", "attributes": {"m": value}}]],
        ):
            found = redactor.scan(orjson.dumps(row).decode())
            for rule in changing:
                assert rule in found, (rule, value, row)
        value = json.dumps({"content": value})


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(texts, st.integers(min_value=0, max_value=2))
def test_redacting_json_text_keeps_it_valid_and_idempotent(text: str, depth: int) -> None:
    value: Any = {"content": text, "arguments": json.dumps({"k": text, "n": 5}), "list": [text, 1, None]}
    for _ in range(depth):
        value = {"wrapped": json.dumps(value), "s": text}
    document = json.dumps(value)
    redacted = redact_text(document)
    assert shape(json.loads(redacted)) == shape(value)
    assert redact_text(redacted) == redacted


# -- scrubbing a file written without redaction -------------------------------------------------------


def write_unredacted(path: Path) -> None:
    """Spans written with redact=False the way an application writes them: a start row, then the
    completed row over it (leaving the start row's bytes in the page's free space)."""
    t = start_tracing(
        path, redact=False, resource={"service.name": "svc", "deploy.key": f"api_key={PROJECT_KEY}"}
    )
    for i in range(SCRUB_SPANS):
        with t.tracer.start_as_current_span(
            f"call {i} {GOOGLE_KEY}",
            attributes={
                "input.value": f"my key is {PROJECT_KEY}, please",
                "http.request.header.x-api-key": ("k7f3c9a1e",),
                "gen_ai.usage.input_tokens": 10,
            },
        ) as span:
            t.flush()  # the start row is committed first
            span.set_attribute("output.value", f"done with {JWT}")
            span.add_event("exception", {"exception.message": f"Incorrect API key provided: {PROJECT_KEY}"})
            span.set_status(Status(StatusCode.ERROR, f"401 {PROJECT_KEY}"))
    t.flush()
    t.close()


SCRUB_SPANS = 10
SCRUBBED = (PROJECT_KEY, GOOGLE_KEY, JWT, "k7f3c9a1e")
FTS = "SELECT count(*) FROM spans_fts WHERE spans_fts MATCH ?"
KEY_TOKEN = f'"{PROJECT_KEY[8:]}"'  # the full-text index's token for the key


def test_scrub_file_removes_every_copy_of_a_key_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "traces.db"
    n = SCRUB_SPANS
    write_unredacted(path)
    assert PROJECT_KEY.encode() in b"".join(p.read_bytes() for p in files(path))
    assert query(path, FTS, (KEY_TOKEN,))[0][0] == n

    before = sha256(path)
    dry = scrub_file(path, dry_run=True)
    assert (dry.spans_scanned, dry.spans_changed, dry.resources_changed, dry.traces_changed) == (n, n, 1, n)
    assert dry.dry_run and not dry.vacuumed
    assert sha256(path) == before

    result = scrub_file(path)
    assert (result.spans_changed, result.resources_changed, result.traces_changed) == (n, 1, n)
    assert result.checkpointed and result.vacuumed and not result.dry_run
    assert_nowhere(path, *SCRUBBED)
    rows = query(path, "SELECT name, input_text, output_text, status_message, attributes, events FROM spans")
    assert len(rows) == n
    name, input_text, output_text, status, attributes, events = rows[0]
    assert name == f"call 0 {REDACTED}"
    assert input_text == f"my key is {REDACTED}, please"
    assert output_text == f"done with {REDACTED}"
    assert status == f"401 {REDACTED}"
    assert json.loads(attributes)["http.request.header.x-api-key"] == [REDACTED]
    assert json.loads(attributes)["gen_ai.usage.input_tokens"] == 10
    said = json.loads(events)[0]["attributes"]["exception.message"]
    assert said == f"Incorrect API key provided: {REDACTED}"
    resource = json.loads(query(path, "SELECT attributes FROM resources")[0][0])
    assert resource["deploy.key"] == f"api_key={REDACTED}"
    assert query(path, "SELECT root_span_name FROM traces LIMIT 1")[0][0].endswith(REDACTED)
    # The full-text index follows the new text, and has forgotten the old.
    assert query(path, FTS, ("please",))[0][0] == n
    assert query(path, FTS, (KEY_TOKEN,))[0][0] == 0
    # The session rollups are untouched.
    assert query(path, "SELECT sum(input_tokens) FROM sessions")[0][0] == 10 * n

    assert scrub_file(path).changed == 0


def test_scrub_file_with_patterns_and_a_cut_text(tmp_path: Path) -> None:
    path = tmp_path / "traces.db"
    t = start_tracing(path, redact=False, max_content_length=40)
    with t.tracer.start_as_current_span(
        "x", attributes={"input.value": PREFIX + PROJECT_KEY, "note": "ACME-12"}
    ):
        pass
    t.flush()
    t.close()
    result = scrub_file(path, redact=False, patterns=[r"ACME-\d+"])
    assert result.spans_changed == 1
    assert json.loads(query(path, "SELECT attributes FROM spans")[0][0])["note"] == REDACTED
    # redact=False: the built-in rules stay off, the key stays.
    assert query(path, "SELECT input_text FROM spans")[0][0] == PREFIX + PROJECT_KEY[:10]

    assert scrub_file(path).spans_changed == 1
    # The text lost the key's end when it was cut: what is left of the key goes anyway.
    assert query(path, "SELECT input_text FROM spans")[0][0] == PREFIX + REDACTED
    assert_nowhere(path, PROJECT_KEY[:10])


def test_scrub_file_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceFileError, match="no such trace file"):
        scrub_file(tmp_path / "nothing.db")
    assert not (tmp_path / "nothing.db").exists()


def test_mapper_never_changes_the_span_it_reads(tmp_path: Path) -> None:
    """The attributes of an ended span are read in place: redaction builds new ones."""
    t = start_tracing(tmp_path / "traces.db")
    with t.tracer.start_as_current_span("x", attributes={"note": OPENAI_KEY, "db.password": "pw-1"}) as span:
        pass
    t.flush()
    assert dict(span.attributes or {}) == {"note": OPENAI_KEY, "db.password": "pw-1"}
    assert json.loads(one(t, "SELECT attributes FROM spans")) == {"note": REDACTED, "db.password": REDACTED}
    t.close()


def test_scrub_file_while_the_application_keeps_writing(tmp_path: Path) -> None:
    t = start_tracing(tmp_path / "traces.db", redact=False)
    with t.tracer.start_as_current_span("before", attributes={"note": f"key {OPENAI_KEY}"}):
        pass
    t.flush()
    result = scrub_file(t.path)
    assert result.spans_changed == 1
    with t.tracer.start_as_current_span("after", attributes={"gen_ai.usage.input_tokens": 7}):
        pass
    t.flush()
    assert t.q("SELECT name, attributes FROM spans ORDER BY start_time_unix_nano") == [
        ("before", json.dumps({"note": f"key {REDACTED}"}, separators=(",", ":"))),
        ("after", '{"gen_ai.usage.input_tokens":7}'),
    ]
    assert t.q("SELECT sum(input_tokens) FROM sessions") == [(7,)]
    t.close()
    assert_nowhere(t.path, OPENAI_KEY)


def test_mapper_redacts_text_written_beside_the_spans(tmp_path: Path) -> None:
    options = Options.resolve(tmp_path / "traces.db")
    assert (
        SpanMapper(options, lambda *_: 1).redact_text(f"deploy with {OPENAI_KEY}")
        == f"deploy with {REDACTED}"
    )
    off = Options.resolve(tmp_path / "traces.db", {"redact": False})
    assert SpanMapper(off, lambda *_: 1).redact_text(OPENAI_KEY) == OPENAI_KEY


def test_a_session_task_is_redacted_too(tmp_path: Path) -> None:
    path = tmp_path / "traces.db"
    tracing = start_tracing(path)
    with session("deploy", task=f"deploy with {OPENAI_KEY}"):
        with tracing.tracer.start_as_current_span("step"):
            pass
    tracing.close()
    assert query(path, "SELECT task FROM sessions") == [("deploy with [REDACTED]",)]
