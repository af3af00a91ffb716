"""The ``otel-sqlite`` command, run as a real program against trace files the processor wrote.

Commands run in a subprocess (``python -m otel_sqlite_exporter`` and the installed console script),
so exit codes, stderr, colour detection, pipes and signals are those a shell sees. Where one test
tries many values of the same options, each goes through ``main()`` in this process and a sample
also through the program, which must print exactly the same: starting Python is most of the cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from helpers import Tracing, query, start_tracing
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode

from otel_sqlite_exporter import SQLiteSpanProcessor, session
from otel_sqlite_exporter._cli import main

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TIMEOUT = 20
LONG_MARKER = "zebracrossing"
LONG_TEXT = "lorem ipsum " * 9_000 + LONG_MARKER  # ~108 KB: more than a pipe buffer holds
LONG_TASK = "plan " + "x" * 200
UNICODE_TASK = "résumé 日本 🚀"
EVIL_NAME = "evil\x1b[31m\nname"
INJECTIONS = ("x' OR 1=1 --", '"; DROP TABLE spans; --', "%", "*", "' UNION SELECT * FROM sessions --")


# -- running the program -------------------------------------------------------------------------


def cli_env(**overrides: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # PYTHONUNBUFFERED would hide whether the program flushes its own output when piped.
    for key in ("NO_COLOR", "OTEL_EXPORTER_SQLITE_PATH", "PYTHONIOENCODING", "PYTHONUNBUFFERED"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass
class Result:
    code: int
    out: str
    err: str
    raw: bytes

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


def run(
    *args: str,
    db: Path | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    program: Sequence[str] = (sys.executable, "-m", "otel_sqlite_exporter"),
) -> Result:
    argv = [*program, *(["--db", str(db)] if db is not None else []), *args]
    done = subprocess.run(argv, capture_output=True, cwd=cwd, env=env or cli_env(), timeout=TIMEOUT)
    return Result(done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8"), done.stdout)


def in_process(capsys: pytest.CaptureFixture[str], *args: str, db: Path) -> Result:
    """``main()`` called directly, for the many-cases tests (the others run the program itself)."""
    capsys.readouterr()
    code = main(["--db", str(db), *args])
    out, err = capsys.readouterr()
    return Result(code, out, err, out.encode())


def run_many(db: Path, commands: Sequence[Sequence[str]]) -> list[Result]:
    """Several commands at once: each is a separate process, and starting one is most of its cost."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: run(*args, db=db), commands))


def run_cases(
    capsys: pytest.CaptureFixture[str], db: Path, commands: Sequence[Sequence[str]], every: int = 3
) -> list[Result]:
    """Many cases of one command: each through ``main()``, and every ``every``-th also through the
    program, which must print exactly the same (so the two are the same thing, and the cases stay fast)."""
    results = [in_process(capsys, *args, db=db) for args in commands]
    sample = list(range(0, len(commands), every)) if every else []
    for i, result in zip(sample, run_many(db, [commands[i] for i in sample]), strict=True):
        assert (result.code, result.out, result.err) == (results[i].code, results[i].out, results[i].err)
    return results


def assert_usage_error(result: Result, fragment: str) -> None:
    assert result.code == 2, result
    assert result.out == ""
    assert "otel-sqlite: error:" in result.err
    assert fragment in result.err
    assert "Traceback" not in result.err


def assert_not_found(result: Result, fragment: str) -> None:
    assert result.code == 1, result
    assert result.out == ""
    assert result.err.startswith("otel-sqlite: error: ")
    assert fragment in result.err
    assert "Traceback" not in result.err


# -- the trace file ------------------------------------------------------------------------------


@dataclass
class Traces:
    path: Path
    ask: str  # "answer a question": agent -> llm gpt-4o, tool (error), llm with prompt and events
    intl: str  # unicode task, gpt-4o-mini call with a long prompt, a name with control characters
    crash: str  # failed session: a 2.5 s span and a long task
    ask_trace: str
    tool_span: str
    prompt_span: str
    long_span: str
    span_count: int


def _llm(model: str, inp: int, out: int, **extra: Any) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": inp,
        "gen_ai.usage.output_tokens": out,
        **extra,
    }


def span_id(span: trace.Span) -> str:
    return trace.format_span_id(span.get_span_context().span_id)


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Traces:
    path = tmp_path_factory.mktemp("cli") / "traces.db"
    processor = SQLiteSpanProcessor(path, max_content_length=200_000)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("cli-test", "1.0")
    with session(task="answer a question", user_id="alice") as ask:
        with tracer.start_as_current_span(
            "invoke_agent planner", attributes={"gen_ai.operation.name": "invoke_agent"}
        ) as agent:
            with tracer.start_as_current_span("chat gpt-4o", attributes=_llm("gpt-4o", 1000, 200)):
                pass
            with tracer.start_as_current_span(
                "execute_tool lookup", attributes={"gen_ai.operation.name": "execute_tool"}
            ) as tool:
                tool.set_status(Status(StatusCode.ERROR, "tool exploded"))
            with tracer.start_as_current_span(
                "chat answer",
                attributes=_llm(
                    "gpt-4o",
                    0,
                    0,
                    **{
                        "gen_ai.prompt": "What is the refund policy?",
                        "gen_ai.completion": "Refunds within 30 days.",
                    },
                ),
            ) as prompt:
                prompt.add_event("retry", {"attempt": 2})
        ask_trace = trace.format_trace_id(agent.get_span_context().trace_id)
    time.sleep(0.002)  # distinct session start times, so "newest first" is a fixed order
    with session(task=UNICODE_TASK, user_id="bob") as intl:
        with tracer.start_as_current_span(
            "chat café ☕", attributes=_llm("gpt-4o-mini", 10, 5, **{"gen_ai.prompt": LONG_TEXT})
        ) as long_span:
            pass
        with tracer.start_as_current_span(EVIL_NAME):
            pass
    time.sleep(0.002)
    with pytest.raises(RuntimeError), session(task=LONG_TASK, user_id="carol") as crash:
        start = time.time_ns()
        slow = tracer.start_span("slow step", start_time=start)
        slow.end(end_time=start + 2_500_000_000)
        raise RuntimeError("boom")
    provider.shutdown()
    return Traces(
        path=path,
        ask=ask.session_id,
        intl=intl.session_id,
        crash=crash.session_id,
        ask_trace=ask_trace,
        tool_span=span_id(tool),
        prompt_span=span_id(prompt),
        long_span=span_id(long_span),
        span_count=7,
    )


def fingerprint(path: Path) -> tuple[str, list[tuple]]:
    """The file's bytes (and its WAL's) and its row counts: what a read must never change."""
    digest = hashlib.sha256()
    for part in (path, Path(f"{path}-wal")):
        if part.exists():
            digest.update(part.read_bytes())
    counts = query(
        path,
        "SELECT (SELECT count(*) FROM spans), (SELECT count(*) FROM sessions), (SELECT count(*) FROM traces)",
    )
    return digest.hexdigest(), counts


# -- sessions ------------------------------------------------------------------------------------


def test_sessions_table_lists_newest_first_with_aligned_columns(traces: Traces) -> None:
    result = run("sessions", db=traces.path)
    assert result.code == 0, result.err
    header, *rows = result.out.splitlines()
    assert header.split() == ["SESSION", "STARTED", "STATUS", "SPANS", "TOKENS", "COST", "TASK"]
    assert [row.split()[0] for row in rows] == [traces.crash, traces.intl, traces.ask]
    crash, intl, ask = rows
    assert ask.split()[3:] == ["completed", "4", "1,200", "$0.004500", "answer", "a", "question"]
    assert intl.split()[3:] == ["completed", "2", "15", "$0.000005", *UNICODE_TASK.split()]
    assert crash.split()[3:6] == ["failed", "1", "0"]
    # a long task is cut to fit, ending in an ellipsis; --json keeps it whole
    assert crash.endswith("…") and LONG_TASK not in crash and "plan xxx" in crash
    status_at, task_at = header.index("STATUS"), header.index("TASK")
    assert [row[status_at:].split()[0] for row in rows] == ["failed", "completed", "completed"]
    assert {row[status_at - 1] for row in rows} == {" "}
    assert [row[task_at:] for row in (intl, ask)] == [UNICODE_TASK, "answer a question"]
    # right-aligned numbers end where their header ends
    cost_end = header.index("COST") + len("COST")
    assert {row.index("$") + len("$0.000005") for row in (ask, intl)} == {cost_end}


def test_sessions_json_and_filters(traces: Traces, capsys: pytest.CaptureFixture[str]) -> None:
    results = run_cases(
        capsys,
        traces.path,
        [
            ["sessions", "--json"],
            ["sessions", "--json", "--status", "failed"],
            ["sessions", "--json", "--status", "COMPLETED"],
            ["sessions", "--json", "--user", "alice"],
            ["sessions", "--json", "--limit", "1", "--offset", "1"],
            ["sessions", "--json", "--since", "0.5h"],
            ["sessions", "--json", "--until", "1m"],
            ["sessions", "--json", "--since", "2200-01-01T00:00:00Z"],
            ["sessions", "--json", "--until", "2200-01-01"],
            ["sessions", "--user", "nobody"],
        ],
    )
    everything = results[0].json()
    assert [s["id"] for s in everything] == [traces.crash, traces.intl, traces.ask]
    ask = everything[2]
    assert ask["task"] == "answer a question"
    assert ask["user_id"] == "alice"
    assert (ask["input_tokens"], ask["output_tokens"], ask["total_tokens"]) == (1000, 200, 1200)
    assert ask["cost_usd"] == pytest.approx(0.0045)
    assert ask["error_count"] == 1
    assert ask["total_events"] == 4
    assert everything[1]["task"] == UNICODE_TASK
    assert everything[1]["cost_usd"] == pytest.approx(4.5e-6)
    assert everything[0]["task"] == LONG_TASK
    assert everything[0]["status"] == "failed"

    def ids(result: Result) -> list[str]:
        return [s["id"] for s in result.json()]

    assert ids(results[1]) == [traces.crash]
    assert ids(results[2]) == [traces.intl, traces.ask]
    assert ids(results[3]) == [traces.ask]
    assert ids(results[4]) == [traces.intl]
    assert ids(results[5]) == [traces.crash, traces.intl, traces.ask]
    assert ids(results[6]) == []
    assert ids(results[7]) == []
    assert ids(results[8]) == [traces.crash, traces.intl, traces.ask]
    assert results[9].code == 0 and results[9].out == "no sessions match\n"


# -- one session: tree, timeline, summary --------------------------------------------------------


def test_show_prints_the_tree_with_rollups_and_the_error(traces: Traces) -> None:
    result = run("show", traces.ask, db=traces.path)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == f"Session {traces.ask}  'answer a question'  completed"
    assert "4 spans · 1,000 in / 200 out · $0.004500 · 1 error · user alice" in lines[1]
    assert lines[2].startswith(f"Trace {traces.ask_trace} · 4 spans")
    assert lines[3].startswith("└─ [agent] invoke_agent planner · ")
    assert lines[3].endswith("1,000 in / 200 out · $0.004500")
    assert lines[4].startswith("   ├─ [llm] chat gpt-4o · ")
    assert lines[4].endswith("gpt-4o · 1,000 in / 200 out · $0.004500")
    assert lines[5].startswith("   ├─ [tool] execute_tool lookup · ")
    assert lines[5].endswith("ERROR: tool exploded")
    assert lines[6].startswith("   └─ [llm] chat answer · ")
    assert len(lines) == 7
    assert not ANSI.search(result.out)


def test_show_highlights_errors_in_red_when_coloured(traces: Traces) -> None:
    result = run("--color", "always", "show", traces.ask, db=traces.path)
    assert result.code == 0, result.err
    assert "\x1b[31mERROR: tool exploded\x1b[0m" in result.out
    assert "\x1b[31;1mexecute_tool lookup\x1b[0m" in result.out  # the failed span's name, red and bold
    assert "\x1b[32mcompleted\x1b[0m" in result.out
    # without the escapes it is the plain rendering
    assert ANSI.sub("", result.out) == run("show", traces.ask, db=traces.path).out


def test_show_json_is_the_export_document(traces: Traces) -> None:
    doc = run("show", traces.ask, "--json", db=traces.path).json()
    assert doc["format_version"] == 1
    assert doc["session"]["id"] == traces.ask
    [tr] = doc["traces"]
    assert tr["trace_id"] == traces.ask_trace
    assert (tr["input_tokens"], tr["output_tokens"], tr["error_count"]) == (1000, 200, 1)
    assert tr["cost_usd"] == pytest.approx(0.0045)
    assert [(s["name"], s["depth"]) for s in tr["spans"]] == [
        ("invoke_agent planner", 0),
        ("chat gpt-4o", 1),
        ("execute_tool lookup", 1),
        ("chat answer", 1),
    ]
    assert tr["spans"][2]["status_message"] == "tool exploded"


def test_timeline_text_and_json(traces: Traces) -> None:
    text, as_json = run_many(traces.path, [["timeline", traces.ask], ["timeline", traces.ask, "--json"]])
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0] == f"Session {traces.ask}  'answer a question'  completed"
    body = lines[2:]
    assert [re.sub(r"^\+\s*[\d.]+ s  ", "", line).split(" · ")[0] for line in body] == [
        "[agent] invoke_agent planner",
        "  [llm] chat gpt-4o",
        "  [tool] execute_tool lookup",
        "  [llm] chat answer",
    ]
    offsets = [float(re.match(r"^\+\s*([\d.]+) s", line).group(1)) for line in body]  # type: ignore[union-attr]
    assert offsets == sorted(offsets) and offsets[0] < 1
    spans = as_json.json()
    assert [s["name"] for s in spans] == [
        "invoke_agent planner",
        "chat gpt-4o",
        "execute_tool lookup",
        "chat answer",
    ]
    assert [s["type"] for s in spans] == ["agent", "llm", "tool", "llm"]
    assert spans[1]["input_tokens"] == 1000 and spans[1]["model"] == "gpt-4o"


def test_summary_text_and_json(traces: Traces) -> None:
    text, as_json = run_many(traces.path, [["summary", traces.ask], ["summary", traces.ask, "--json"]])
    assert text.code == 0, text.err
    out = text.out
    assert "Traces  1 · spans by type: llm 2, agent 1, tool 1" in out
    model_line = next(line for line in out.splitlines() if line.startswith("gpt-4o "))
    assert model_line.split() == ["gpt-4o", "2", "1,000", "200", "1,200", "$0.004500"]
    errors = out.split("Errors (1)\n")[1].splitlines()[0]
    assert "[tool] execute_tool lookup" in errors and "ERROR: tool exploded" in errors
    assert f"span {traces.tool_span}" in errors
    assert "Slowest (4)" in out
    doc = as_json.json()
    assert doc["session"]["id"] == traces.ask
    assert doc["trace_count"] == 1
    assert doc["spans_by_type"] == {"llm": 2, "agent": 1, "tool": 1}
    assert [(m["model"], m["calls"], m["input_tokens"], m["output_tokens"]) for m in doc["models"]] == [
        ("gpt-4o", 2, 1000, 200)
    ]
    assert [e["id"] for e in doc["errors"]] == [traces.tool_span]
    assert doc["slowest"][0]["name"] == "invoke_agent planner"  # the parent outlasts each child


def test_session_commands_report_a_missing_session(
    traces: Traces, capsys: pytest.CaptureFixture[str]
) -> None:
    for result in run_cases(
        capsys,
        traces.path,
        [["show", "nope"], ["timeline", "nope"], ["summary", "nope", "--json"], ["export", "nope"]],
    ):
        assert_not_found(result, f"no session 'nope' in {traces.path}")


# -- spans ---------------------------------------------------------------------------------------


def test_spans_filters(traces: Traces, capsys: pytest.CaptureFixture[str]) -> None:
    results = run_cases(
        capsys,
        traces.path,
        [
            ["spans", "--json", "--session", traces.ask],
            ["spans", "--json", "--type", "llm"],
            ["spans", "--json", "--status", "error"],
            ["spans", "--json", "--model", "gpt-4o-mini"],
            ["spans", "--json", "--name", "chat gpt-4o"],
            ["spans", "--json", "--search", "refund policy"],
            ["spans", "--json", "--trace", traces.ask_trace],
            ["spans", "--json", "--min-duration", "2000"],
            ["spans", "--json", "--session", traces.ask, "--limit", "2", "--offset", "1"],
            ["spans", "--json", "--since", "1h", "--until", "2200-01-01T00:00:00+00:00"],
            ["spans", "--json", "--since", "7d", "--until", "1m"],
            ["spans", "--json", "--type", "llm", "--model", "gpt-4o", "--session", traces.ask],
        ],
    )
    names = [[s["name"] for s in r.json()] for r in results]
    ask = ["invoke_agent planner", "chat gpt-4o", "execute_tool lookup", "chat answer"]
    assert names[0] == ask
    assert names[1] == ["chat gpt-4o", "chat answer", "chat café ☕"]
    assert names[2] == ["execute_tool lookup"]
    assert names[3] == ["chat café ☕"]
    assert names[4] == ["chat gpt-4o"]
    assert names[5] == ["chat answer"]
    assert names[6] == ask
    assert names[7] == ["slow step"]
    assert results[7].json()[0]["duration_ms"] == pytest.approx(2500)
    assert names[8] == ask[1:3]
    assert len(names[9]) == traces.span_count
    assert names[10] == []
    assert names[11] == ["chat gpt-4o", "chat answer"]


def test_spans_table(traces: Traces) -> None:
    everything, one_session, none = run_many(
        traces.path, [["spans"], ["spans", "--session", traces.ask], ["spans", "--name", "missing"]]
    )
    header, *rows = everything.out.splitlines()
    assert header.split() == [
        "STARTED", "SPAN", "SESSION", "TYPE", "STATUS", "DURATION", "MODEL", "TOKENS", "COST", "NAME"
    ]  # fmt: skip
    assert len(rows) == traces.span_count
    tool = next(row for row in rows if traces.tool_span in row)
    assert traces.ask in tool
    assert tool.endswith("execute_tool lookup · tool exploded")
    assert tool[header.index("STATUS") :].startswith("error")
    header, *rows = one_session.out.splitlines()
    assert "SESSION" not in header and len(rows) == 4
    chat = next(row for row in rows if row.endswith("chat gpt-4o"))
    assert "1,000 in / 200 out" in chat and "$0.004500" in chat and " gpt-4o " in chat
    assert none.out == "no spans match\n"


def test_span_detail_shows_everything(traces: Traces, capsys: pytest.CaptureFixture[str]) -> None:
    text, as_json, wrong_trace, right_trace, missing = run_cases(
        capsys,
        traces.path,
        [
            ["span", traces.prompt_span],
            ["span", traces.prompt_span, "--json"],
            ["span", traces.prompt_span, "--trace", "0" * 32],
            ["span", traces.prompt_span, "--trace", traces.ask_trace, "--json"],
            ["span", "feedfacefeedface"],
        ],
    )
    assert text.code == 0, text.err
    out = text.out
    assert out.startswith("[llm] chat answer · ")
    for line in (
        f"  span           {traces.prompt_span}",
        f"  trace          {traces.ask_trace}",
        f"  session        {traces.ask}",
        "  model          gpt-4o",
        "  operation      chat",
        "  input tokens   0",
        "  scope          cli-test 1.0",
        "  gen_ai.request.model = gpt-4o",
        "  user.id = alice",
        "    attempt = 2",
        "Input",
        "    What is the refund policy?",
        "Output",
        "    Refunds within 30 days.",
    ):
        assert line in out.splitlines(), line
    assert re.search(r"^  \d{4}-\d\d-\d\dT[\d:.]+Z  retry$", out, re.M)
    doc = as_json.json()
    assert doc["id"] == traces.prompt_span
    assert doc["input_text"] == "What is the refund policy?"
    assert doc["output_text"] == "Refunds within 30 days."
    assert doc["attributes"]["gen_ai.prompt"] == "What is the refund policy?"
    assert [e["name"] for e in doc["events"]] == ["retry"]
    assert doc["events"][0]["attributes"] == {"attempt": 2}
    assert right_trace.json() == doc
    assert_not_found(wrong_trace, f"no span '{traces.prompt_span}' of trace '{'0' * 32}'")
    assert_not_found(missing, "no span 'feedfacefeedface'")


def test_span_detail_shows_the_error_message(traces: Traces) -> None:
    result = run("--color", "always", "span", traces.tool_span, db=traces.path)
    assert result.code == 0, result.err
    assert "\x1b[31m: tool exploded\x1b[0m" in result.out
    assert re.search(r"^  status +error: tool exploded$", ANSI.sub("", result.out), re.M)


# -- search --------------------------------------------------------------------------------------


def test_search_text_json_and_options(traces: Traces, capsys: pytest.CaptureFixture[str]) -> None:
    results = run_cases(
        capsys,
        traces.path,
        [
            ["search", "refund"],
            ["search", "refund", "--json"],
            ["search", "refund", "--session", traces.intl, "--json"],
            ["search", "--raw", '"refund policy" OR zebracrossing', "--json"],
            ["search", "--raw", "refund AND (", "--json"],
            ["search", "policy refund", "--json", "--limit", "0"],
            ["search", "nothing-like-this"],
        ],
    )
    text = results[0]
    assert text.code == 0, text.err
    first, where, snippet = text.out.splitlines()
    assert traces.prompt_span in first and "[llm] chat answer" in first
    assert where.split() == ["session", traces.ask]
    assert "[refund]" in snippet.lower()
    hits = results[1].json()
    assert [h["entry"]["id"] for h in hits] == [traces.prompt_span]
    assert hits[0]["score"] < 0 and "[" in hits[0]["snippet"]
    assert results[2].json() == []
    assert {h["entry"]["id"] for h in results[3].json()} == {traces.prompt_span, traces.long_span}
    assert_usage_error(results[4], "invalid full-text query")
    assert results[5].json() == []
    assert results[6].out == "no spans match\n"


# -- export --------------------------------------------------------------------------------------


def test_export_formats_parse_back(
    traces: Traces, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, every, lines, otlp, one_otlp = run_cases(
        capsys,
        traces.path,
        [
            ["export", traces.ask],
            ["export", "--format", "json"],
            ["export", "--format", "jsonl"],
            ["export", "--format", "otlp"],
            ["export", traces.ask, "--format", "otlp"],
        ],
    )
    assert one.json()["session"]["id"] == traces.ask
    docs = every.json()
    assert [d["session"]["id"] for d in docs] == [traces.ask, traces.intl, traces.crash]  # oldest first
    assert docs[0] == one.json()
    assert sum(t["span_count"] for d in docs for t in d["traces"]) == traces.span_count

    records = [json.loads(line) for line in lines.out.splitlines()]
    assert len(records) == traces.span_count
    assert [r["session_id"] for r in records] == [traces.ask] * 4 + [traces.intl] * 2 + [traces.crash]
    assert records[1]["name"] == "chat gpt-4o" and records[1]["input_tokens"] == 1000
    assert records[4]["input_text"].endswith(LONG_MARKER)

    def otlp_spans(doc: dict[str, Any]) -> list[dict[str, Any]]:
        return [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]

    merged = otlp.json()
    assert set(merged) == {"resourceSpans"}
    assert len(merged["resourceSpans"]) == 3  # one per session, concatenated
    spans = otlp_spans(merged)
    assert len(spans) == traces.span_count
    tool = next(s for s in spans if s["spanId"] == traces.tool_span)
    assert tool["traceId"] == traces.ask_trace
    assert tool["status"] == {"code": 2, "message": "tool exploded"}
    assert int(tool["endTimeUnixNano"]) > int(tool["startTimeUnixNano"])
    assert [s["name"] for s in otlp_spans(one_otlp.json())] == [r["name"] for r in records[:4]]

    out = tmp_path / "export.jsonl"
    written = run("export", "--format", "jsonl", "-o", str(out), db=traces.path)
    assert written.code == 0 and written.out == "" and written.err == ""
    assert out.read_text(encoding="utf-8") == lines.out
    assert os.listdir(tmp_path) == ["export.jsonl"]


def test_export_refuses_what_it_cannot_do(traces: Traces, tmp_path: Path) -> None:
    target = tmp_path / "kept.json"
    target.write_text("earlier", encoding="utf-8")
    before = fingerprint(traces.path)
    missing, onto_db, no_folder = run_many(
        traces.path,
        [
            ["export", "nope", "-o", str(target)],
            ["export", "--format", "json", "-o", str(traces.path)],
            ["export", "-o", str(tmp_path / "no" / "such" / "dir.json")],
        ],
    )
    assert_not_found(missing, "no session 'nope'")
    assert target.read_text(encoding="utf-8") == "earlier"
    assert_usage_error(onto_db, "is the trace file itself")
    assert no_folder.code == 1 and "cannot write" in no_folder.err and "Traceback" not in no_folder.err
    assert fingerprint(traces.path) == before
    assert os.listdir(tmp_path) == ["kept.json"]  # no temporary file left behind


# -- stats ---------------------------------------------------------------------------------------


def test_stats_text_and_json(traces: Traces) -> None:
    text, as_json = run_many(traces.path, [["stats"], ["stats", "--json"]])
    assert text.code == 0, text.err
    fields = dict(
        line.strip().split("  ", 1) for line in text.out.split("\n\n")[0].splitlines() if line.strip()
    )
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["file"] == str(traces.path)
    assert re.fullmatch(r"\d+\.\d (KiB|MiB) \([\d,]+ bytes\), schema v\d+", fields["size"])
    assert fields["sessions"] == "3 (0 running)"
    assert fields["traces"] == "4"
    assert fields["spans"] == str(traces.span_count)
    assert fields["tokens"] == "1,010 in / 205 out"
    assert fields["cost"] == f"${as_json.json()['cost_usd']:.6f}"
    models = text.out.split("\n\n")[1].splitlines()
    assert models[0].split() == ["MODEL", "CALLS", "INPUT", "OUTPUT", "TOTAL", "COST"]
    assert models[1].split() == ["gpt-4o", "2", "1,000", "200", "1,200", "$0.004500"]
    assert models[2].split() == ["gpt-4o-mini", "1", "10", "5", "15", "$0.000005"]
    stats = as_json.json()
    assert (stats["sessions"], stats["traces"], stats["spans"]) == (3, 4, traces.span_count)
    assert stats["running_sessions"] == 0
    assert (stats["input_tokens"], stats["output_tokens"]) == (1010, 205)
    assert stats["cost_usd"] == pytest.approx(0.0045045)
    assert [m["model"] for m in stats["models"]] == ["gpt-4o", "gpt-4o-mini"]
    assert stats["file_bytes"] >= traces.path.stat().st_size
    assert stats["oldest"] <= stats["newest"]


# -- the file, options and exit codes ------------------------------------------------------------


def test_database_location_precedence(traces: Traces, tmp_path: Path) -> None:
    expected = [traces.crash, traces.intl, traces.ask]
    args = ("sessions", "--json")
    in_cwd = run(*args, cwd=traces.path.parent)
    from_env = run(*args, cwd=tmp_path, env=cli_env(OTEL_EXPORTER_SQLITE_PATH=str(traces.path)))
    flag_wins = run(*args, "--db", str(traces.path), env=cli_env(OTEL_EXPORTER_SQLITE_PATH="/nonexistent.db"))
    flag_loses = run(
        *args, db=tmp_path / "absent.db", env=cli_env(OTEL_EXPORTER_SQLITE_PATH=str(traces.path))
    )
    default_missing = run(*args, cwd=tmp_path)
    for result in (in_cwd, from_env, flag_wins):
        assert [s["id"] for s in result.json()] == expected
    assert_not_found(flag_loses, f"{tmp_path / 'absent.db'}: no such trace file")
    assert_not_found(default_missing, f"{tmp_path / 'traces.db'}: no such trace file")
    assert not (tmp_path / "traces.db").exists()  # reading never creates the file


def test_unusable_files_exit_1_with_the_path(traces: Traces, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a database\n")
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.close()
    newer = tmp_path / "newer.db"
    with sqlite3.connect(traces.path) as src, sqlite3.connect(newer) as dst:
        src.backup(dst)
        dst.execute("PRAGMA user_version = 999")
    src.close()
    dst.close()
    empty = tmp_path / "empty.db"
    empty.touch()
    cases = [
        (text_file, "is not a SQLite database"),
        (foreign, str(foreign)),
        (newer, "newer than this package supports"),
        (empty, "is empty"),
        (tmp_path, "is a directory"),
    ]
    for path, fragment in cases:
        result = run("stats", db=path)
        assert_not_found(result, fragment)
        assert str(path) in result.err
    assert text_file.read_text() == "not a database\n"


def test_usage_errors_exit_2(traces: Traces, capsys: pytest.CaptureFixture[str]) -> None:
    commands: list[list[str]] = [
        [],
        ["frobnicate"],
        ["show"],
        ["sessions", "--status", "bogus"],
        ["spans", "--status", "done"],
        ["spans", "--type", "robot"],
        ["sessions", "--since", "yesterday"],
        ["spans", "--until", "2026-13-45"],
        ["spans", "--since", "5x"],
        ["spans", "--limit", "-1"],
        ["sessions", "--offset", str(2**63)],
        ["sessions", "--since", "2999-01-01"],
        ["spans", "--until", "1000-01-01T00:00:00Z"],
        ["sessions", "--since", "999999d"],
        ["spans", "--min-duration", "fast"],
        ["spans", "--min-duration", "nan"],
        ["tail", "--interval", "0"],
        ["export", "--format", "xml"],
        ["--color", "sometimes", "stats"],
    ]
    fragments = [
        "the following arguments are required: COMMAND",
        "invalid choice: 'frobnicate'",
        "the following arguments are required: SESSION_ID",
        "argument --status: invalid choice: 'bogus'",
        "argument --status: invalid choice: 'done'",
        "argument --type: invalid choice: 'robot'",
        "argument --since: 'yesterday' is not an ISO-8601 time",
        "argument --until: '2026-13-45' is not an ISO-8601 time",
        "argument --since: '5x' is not an ISO-8601 time",
        "argument --limit: expected a whole number from 0 to 9223372036854775807, got '-1'",
        f"argument --offset: expected a whole number from 0 to 9223372036854775807, got '{2**63}'",
        "argument --since: '2999-01-01' is outside the times a trace file holds (1677-09-21 to 2262-04-11)",
        "argument --until: '1000-01-01T00:00:00Z' is outside the times a trace file holds",
        "argument --since: '999999d' is outside the times a trace file holds",
        "argument --min-duration: expected a number of milliseconds >= 0, got 'fast'",
        "argument --min-duration: expected a number of milliseconds >= 0, got 'nan'",
        "argument --interval: expected a number of seconds > 0, got '0'",
        "argument --format: invalid choice: 'xml'",
        "argument --color: invalid choice: 'sometimes'",
    ]
    results = run_cases(capsys, traces.path, commands, every=4)
    for result, fragment in zip(results, fragments, strict=True):
        assert_usage_error(result, fragment)
        assert result.err.startswith("usage: otel-sqlite")


def test_help_and_version() -> None:
    help_text = run("--help")
    assert help_text.code == 0
    for command in (
        "sessions",
        "show",
        "timeline",
        "summary",
        "spans",
        "span",
        "search",
        "export",
        "stats",
        "tail",
    ):
        assert command in help_text.out
    assert "OTEL_EXPORTER_SQLITE_PATH" in help_text.out
    version = run("--version")
    assert version.code == 0 and re.fullmatch(r"otel-sqlite \d+\.\d+\.\d+\S*\n", version.out)


def test_installed_console_script(traces: Traces) -> None:
    script = Path(sys.executable).parent / ("otel-sqlite.exe" if os.name == "nt" else "otel-sqlite")
    if not script.exists():
        pytest.skip("the package is not installed with its console script (pip install -e .)")
    listed = run("sessions", "--json", db=traces.path, program=[str(script)])
    assert [s["id"] for s in listed.json()] == [traces.crash, traces.intl, traces.ask]
    missing = run("show", "nope", db=traces.path, program=[str(script)])
    assert_not_found(missing, "no session 'nope'")
    usage = run("sessions", "--status", "x", db=traces.path, program=[str(script)])
    assert_usage_error(usage, "invalid choice: 'x'")


# -- colour --------------------------------------------------------------------------------------


def test_colour_only_on_a_terminal_without_no_color(traces: Traces) -> None:
    piped = run("show", traces.ask, db=traces.path)
    no_color = run("--color", "auto", "sessions", db=traces.path, env=cli_env(NO_COLOR="1"))
    forced = run("--color", "always", "sessions", db=traces.path, env=cli_env(NO_COLOR="1"))
    never = run("timeline", traces.ask, "--color", "never", db=traces.path)
    assert piped.code == no_color.code == forced.code == never.code == 0
    assert not ANSI.search(piped.out) and "\x1b" not in piped.out
    assert "\x1b" not in no_color.out and "\x1b" not in never.out
    assert "\x1b[1mSESSION\x1b[0m" in forced.out and "\x1b[32mcompleted\x1b[0m" in forced.out
    assert "\x1b[31mfailed\x1b[0m" in forced.out


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_colour_on_a_real_terminal(traces: Traces) -> None:
    import pty

    def on_tty(env: dict[str, str]) -> str:
        leader, follower = pty.openpty()
        try:
            argv = [
                sys.executable,
                "-m",
                "otel_sqlite_exporter",
                "--db",
                str(traces.path),
                "show",
                traces.ask,
            ]
            proc = subprocess.run(argv, stdout=follower, stderr=subprocess.PIPE, env=env, timeout=TIMEOUT)
            assert proc.returncode == 0, proc.stderr
            os.close(follower)
            follower = -1
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's other end is closed and drained
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks).decode("utf-8")
        finally:
            os.close(leader)
            if follower >= 0:
                os.close(follower)

    assert "\x1b[31mERROR: tool exploded\x1b[0m" in on_tty(cli_env())
    assert "\x1b" not in on_tty(cli_env(NO_COLOR="1"))
    assert "\x1b[31mERROR" in on_tty(cli_env(NO_COLOR=""))  # empty means unset


# -- hostile input -------------------------------------------------------------------------------


def injection_cases(bad: str, span: str) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """(listings that must come back empty, lookups that must find nothing, values that are refused)."""
    listings = [
        ["sessions", "--json", "--user", bad],
        ["spans", "--json", "--session", bad],
        ["spans", "--json", "--name", bad],
        ["spans", "--json", "--model", bad],
        ["spans", "--json", "--trace", bad],
        ["spans", "--json", "--search", bad],
        ["search", bad, "--json"],
        ["search", "refund", "--session", bad, "--json"],
    ]
    lookups = [
        ["show", bad],
        ["timeline", bad],
        ["summary", bad],
        ["export", bad, "--format", "jsonl"],
        ["span", bad],
        ["span", span, "--trace", bad],
    ]
    refused = [
        ["sessions", "--status", bad],
        ["spans", "--type", bad],
        ["spans", "--status", bad],
        ["sessions", "--since", bad],
        ["spans", "--until", bad],
    ]
    return listings, lookups, refused


def check_injection_results(
    listings: list[Result], lookups: list[Result], refused: list[Result], label: str
) -> None:
    for result in listings:
        assert result.json() == [], label
    for result in lookups:
        assert result.code == 1 and result.out == "", label
        assert result.err.startswith("otel-sqlite: error: no "), result.err
    for result in refused:
        assert result.code == 2 and result.out == "", label
        assert "otel-sqlite: error: argument" in result.err and "Traceback" not in result.err


def test_sql_injection_shaped_arguments_match_nothing_and_change_nothing(
    traces: Traces, capsys: pytest.CaptureFixture[str]
) -> None:
    before = fingerprint(traces.path)
    # Every argument slot with every payload, through main() (fast: no process start per case) ...
    # ... and a sample of them through the program itself.
    for bad in INJECTIONS:
        listings, lookups, refused = injection_cases(bad, traces.tool_span)
        every = 2 if bad == INJECTIONS[0] else 0
        results = run_cases(capsys, traces.path, listings + lookups + refused, every=every)
        a, b = len(listings), len(listings) + len(lookups)
        check_injection_results(results[:a], results[a:b], results[b:], label=bad)
    # raw FTS5 text is FTS5 syntax, never SQL: malformed, it is a usage error
    for bad in INJECTIONS[:2]:
        assert_usage_error(
            in_process(capsys, "search", "--raw", bad, db=traces.path), "invalid full-text query"
        )
    assert fingerprint(traces.path) == before
    assert [s["id"] for s in in_process(capsys, "sessions", "--json", db=traces.path).json()] == [
        traces.crash,
        traces.intl,
        traces.ask,
    ]


def test_unicode_long_text_and_control_characters(traces: Traces, capsys: pytest.CaptureFixture[str]) -> None:
    shown, detail, as_json, spans = run_cases(
        capsys,
        traces.path,
        [
            ["show", traces.intl],
            ["span", traces.long_span],
            ["span", traces.long_span, "--json"],
            ["spans", "--session", traces.intl],
        ],
        every=2,
    )
    assert f"'{UNICODE_TASK}'" in shown.out.splitlines()[0]
    assert "[llm] chat café ☕" in shown.out
    # a name with an escape sequence and a newline stays on its line, escapes visible, inert
    assert "\x1b" not in shown.out
    assert "evil\\x1b[31m\\nname" in shown.out
    assert len(shown.out.splitlines()) == 6  # header (2), then two traces of one span each
    assert "evil\\x1b[31m\\nname" in spans.out and "\x1b" not in spans.out
    assert detail.out.rstrip("\n").endswith(LONG_MARKER)
    assert detail.out.split("\nInput\n")[1] == f"    {LONG_TEXT}\n"
    doc = as_json.json()
    assert doc["input_text"] == LONG_TEXT
    assert doc["name"] == "chat café ☕"
    # JSON is UTF-8 text, not \u escapes, whatever encoding the environment asks of Python
    plain = run("sessions", "--json", "--user", "bob", db=traces.path)
    forced_ascii = run(
        "sessions", "--json", "--user", "bob", db=traces.path, env=cli_env(PYTHONIOENCODING="ascii")
    )
    assert "日本 🚀".encode() in plain.raw
    assert b"\\u" not in plain.raw
    assert forced_ascii.raw == plain.raw


def test_piped_into_a_reader_that_stops_early(traces: Traces) -> None:
    # Both print far more than a pipe holds (the long prompt), so they are still writing when the
    # reader goes away, as with `| head -c 64`.
    cases = [(["export", "--format", "jsonl"], b'{"id": '), (["span", traces.long_span], b"[llm] chat caf")]
    for args, start in cases:
        argv = [sys.executable, "-m", "otel_sqlite_exporter", "--db", str(traces.path), *args]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.read(64)
        proc.stdout.close()
        code = proc.wait(timeout=TIMEOUT)
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert first.startswith(start)
        assert (code, err) == (0, "")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_that_cannot_be_written_exits_1(traces: Traces) -> None:
    argv = [sys.executable, "-m", "otel_sqlite_exporter", "--db", str(traces.path), "sessions"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, env=cli_env(), timeout=TIMEOUT)
    assert done.returncode == 1
    assert done.stderr.decode() == "otel-sqlite: error: cannot write the output: No space left on device\n"


# -- tail ----------------------------------------------------------------------------------------


class LineReader:
    """A subprocess's stdout, line by line, with a timeout on each line."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.lines.put(raw.decode("utf-8").rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float = 10) -> str | None:
        return self.lines.get(timeout=timeout)

    def until(self, needle: str, timeout: float = 10) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in seen):
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            assert line is not None, f"output ended before {needle!r}: {seen}"
            seen.append(line)
        return seen


TAIL_LINE = re.compile(r"\d\d:\d\d:\d\d\.\d{3}  (start|end)  +(\w+)  \[")


def _default_sigint() -> None:
    # A shell running a job in the background may have set SIGINT to be ignored, which a child
    # inherits; a person at a terminal pressing Ctrl-C is what is simulated here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Tracing]:
    tracing = start_tracing(tmp_path / "live.db", scope=("live", None))
    yield tracing
    tracing.close()


def start_tail(path: Path, *args: str) -> tuple[subprocess.Popen[bytes], LineReader]:
    argv = [
        sys.executable,
        "-m",
        "otel_sqlite_exporter",
        "--db",
        str(path),
        "tail",
        "--interval",
        "0.05",
        *args,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        preexec_fn=_default_sigint if os.name == "posix" else None,
    )
    assert proc.stdout is not None
    return proc, LineReader(proc.stdout)


def stop_with_ctrl_c(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    return code, err


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_tail_follows_new_spans_until_ctrl_c(writer: Tracing) -> None:
    with session(task="earlier") as earlier:
        with writer.tracer.start_as_current_span("old one"):
            pass
        with writer.tracer.start_as_current_span("old two"):
            pass
    writer.flush()
    proc, out = start_tail(writer.path, "-n", "1")
    try:
        backlog = out.until("old two")
        assert len(backlog) == 1  # only the last span of the backlog
        assert re.fullmatch(
            rf"\d\d:\d\d:\d\d\.\d{{3}}  end    {earlier.session_id}  \[span\] old two · .+", backlog[0]
        )
        with session(task="live") as live:
            step = writer.tracer.start_span("live step", attributes=_llm("gpt-4o", 1000, 200))
            writer.flush()
            started = out.until("live step")
            assert TAIL_LINE.match(started[-1]).groups() == ("start", live.session_id)  # type: ignore[union-attr]
            assert "[llm] live step · running · gpt-4o" in started[-1]
            step.set_status(Status(StatusCode.ERROR, "live failure"))
            step.end()
            writer.flush()
            ended = out.until("live step")
            assert TAIL_LINE.match(ended[-1]).groups() == ("end", live.session_id)  # type: ignore[union-attr]
            assert "1,000 in / 200 out · $0.004500 · ERROR: live failure" in ended[-1]
        assert "\x1b" not in "".join(backlog + started + ended)
    finally:
        code, err = stop_with_ctrl_c(proc)
    assert code == 0, err
    assert err == ""  # no traceback, no message
    assert out.next() is None  # and nothing more after the interrupt


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_tail_json_lines_for_one_session(writer: Tracing) -> None:
    with session(task="other") as other:
        with writer.tracer.start_as_current_span("elsewhere"):
            pass
    with session(task="watched") as watched:
        with writer.tracer.start_as_current_span("seen before"):
            pass
    writer.flush()
    proc, out = start_tail(writer.path, "--json", "--session", watched.session_id, "--lines", "5")
    try:
        first = json.loads(out.next() or "null")
        assert (first["event"], first["name"], first["session_id"]) == (
            "end",
            "seen before",
            watched.session_id,
        )
        # written first, so it would be the first line if the filter let it through
        with session(other.session_id), writer.tracer.start_as_current_span("not watched"):
            pass
        with session(watched.session_id), writer.tracer.start_as_current_span("seen live"):
            pass
        writer.flush()
        record = json.loads(out.next() or "null")
        assert (record["event"], record["name"]) == ("end", "seen live")
        assert record["end_time"] is not None
    finally:
        code, err = stop_with_ctrl_c(proc)
    assert code == 0, err
    assert out.next() is None  # "not watched" never appeared


def test_tail_on_a_missing_file_exits_1(tmp_path: Path) -> None:
    assert_not_found(run("tail", db=tmp_path / "none.db"), "no such trace file")
