"""Sessions (session() in every form, across threads and tasks) and the trace / session rollups.

Rollups must count every token once ("innermost wins": a span's own usage counts only when no span
beneath it carries usage) and stay exact whatever order and batching the spans arrive in.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import random
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import query
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from otel_sqlite_exporter import ModelPrice, SQLiteSpanExporter, SQLiteSpanProcessor, session

TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
ROLLUP = ("span_count", "error_count", *TOKENS, "cost_usd")
USAGE_KEYS = {
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "cache_read_tokens": "gen_ai.usage.cache_read.input_tokens",
    "cache_write_tokens": "gen_ai.usage.cache_write.input_tokens",
    "reasoning_tokens": "gen_ai.usage.reasoning.output_tokens",
    "cost_usd": "llm.cost.total",
}


def usage(
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
    cost: float | None = None,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        USAGE_KEYS["input_tokens"]: input_tokens,
        USAGE_KEYS["output_tokens"]: output_tokens,
        USAGE_KEYS["cache_read_tokens"]: cache_read,
        USAGE_KEYS["cache_write_tokens"]: cache_write,
        USAGE_KEYS["reasoning_tokens"]: reasoning,
    }
    if cost is not None:
        attrs[USAGE_KEYS["cost_usd"]] = cost
    return attrs


def rollup(path: Path, table: str, key: str) -> dict[str, Any]:
    id_column = "trace_id" if table == "traces" else "session_id"
    rows = query(path, f"SELECT {', '.join(ROLLUP)} FROM {table} WHERE {id_column} = ?", (key,))
    assert len(rows) == 1, f"no {table} row {key}"
    return dict(zip(ROLLUP, rows[0], strict=True))


def assert_rollup(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    cost = expected["cost_usd"]
    assert {k: v for k, v in actual.items() if k != "cost_usd"} == {
        k: v for k, v in expected.items() if k != "cost_usd"
    }
    if cost is None:
        assert actual["cost_usd"] is None
    else:
        assert actual["cost_usd"] == pytest.approx(cost, rel=1e-9, abs=1e-12)


def tid(span: trace.Span | ReadableSpan) -> str:
    return trace.format_trace_id(span.get_span_context().trace_id)


def sid(span: trace.Span | ReadableSpan) -> str:
    return trace.format_span_id(span.get_span_context().span_id)


# --- the reference: innermost-wins sums over the spans stored so far ---------------------------------


def expected_rollup(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """What the trace row must say for exactly these spans (deduplicated by span id)."""
    by_id = {s.context.span_id: s for s in spans}

    def has_usage(span: ReadableSpan) -> bool:
        return any(key in (span.attributes or {}) for key in USAGE_KEYS.values())

    shadowed: set[int] = set()
    for span in by_id.values():
        if not has_usage(span):
            continue
        parent = span.parent
        # Only ancestry that is known from stored spans can shadow a span.
        while parent is not None and not parent.is_remote and parent.span_id in by_id:
            shadowed.add(parent.span_id)
            parent = by_id[parent.span_id].parent
    counted = [s for s in by_id.values() if has_usage(s) and s.context.span_id not in shadowed]
    out: dict[str, Any] = {
        "span_count": len(by_id),
        "error_count": sum(1 for s in by_id.values() if s.status.status_code is StatusCode.ERROR),
    }
    for column in TOKENS:
        out[column] = sum(int((s.attributes or {}).get(USAGE_KEYS[column], 0)) for s in counted)
    costs = [s.attributes[USAGE_KEYS["cost_usd"]] for s in counted if USAGE_KEYS["cost_usd"] in s.attributes]
    out["cost_usd"] = sum(costs) if costs else None
    return out


# --- fixtures ---------------------------------------------------------------------------------------------


class Tracing(helpers.Tracing):
    def session_row(self, session_id: str) -> dict[str, Any]:
        cols = ("task", "status", "user_id", "start_time_unix_nano", "end_time_unix_nano", "span_count")
        rows = self.q(f"SELECT {', '.join(cols)} FROM sessions WHERE session_id = ?", (session_id,))
        assert len(rows) == 1, f"no session row {session_id}"
        return dict(zip(cols, rows[0], strict=True))

    def span_sessions(self, name_like: str = "%") -> dict[str, str]:
        return dict(self.q("SELECT name, session_id FROM spans WHERE name LIKE ?", (name_like,)))


@pytest.fixture
def tracing(tmp_path: Path) -> Iterator[Tracing]:
    base = helpers.start_tracing(tmp_path / "traces.db", scope=("test_sessions", None))
    yield Tracing(base.path, base.processor, base.provider, base.tracer)
    base.close()


def finished_spans(build: Any) -> list[ReadableSpan]:
    """Run ``build(tracer)`` on a provider that only keeps the finished spans in memory."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    build(provider.get_tracer("builder"))
    provider.shutdown()
    return list(memory.get_finished_spans())


# --- session(): every form ----------------------------------------------------------------------------


def test_context_manager_groups_spans_and_records_task_user_and_times(tracing: Tracing) -> None:
    with session(task="answer a question", user_id="alice") as s:
        with tracing.tracer.start_as_current_span("agent"), tracing.tracer.start_as_current_span("llm"):
            pass
        with tracing.tracer.start_as_current_span("second trace"):
            pass
    with tracing.tracer.start_as_current_span("outside"):
        pass
    tracing.flush()
    row = tracing.session_row(s.session_id)
    assert row["task"] == "answer a question"
    assert row["user_id"] == "alice"
    assert row["status"] == "completed"
    assert row["span_count"] == 3
    sessions = tracing.span_sessions()
    assert sessions["agent"] == sessions["llm"] == sessions["second trace"] == s.session_id
    assert sessions["outside"] != s.session_id
    first, last = tracing.q(
        "SELECT min(start_time_unix_nano), max(end_time_unix_nano) FROM spans WHERE session_id = ?",
        (s.session_id,),
    )[0]
    assert row["start_time_unix_nano"] <= first
    assert row["end_time_unix_nano"] >= last
    assert tracing.q("SELECT count(*) FROM traces WHERE session_id = ?", (s.session_id,)) == [(2,)]
    # the user is stamped on the spans too
    assert tracing.q(
        "SELECT count(*) FROM spans WHERE session_id = ? AND attributes ->> '$.\"user.id\"' = 'alice'",
        (s.session_id,),
    ) == [(3,)]


def test_session_row_is_running_while_the_block_runs(tracing: Tracing) -> None:
    with session(task="long") as s:
        with tracing.tracer.start_as_current_span("step"):
            pass
        tracing.flush()
        assert tracing.session_row(s.session_id)["status"] == "running"
        assert tracing.session_row(s.session_id)["end_time_unix_nano"] is None
    tracing.flush()
    assert tracing.session_row(s.session_id)["status"] == "completed"


def test_decorator_opens_a_new_session_per_call(tracing: Tracing) -> None:
    @session(task="per call", user_id="bob")
    def run(i: int) -> int:
        with tracing.tracer.start_as_current_span(f"call-{i}"):
            return i * 2

    assert run(1) == 2
    assert run(2) == 4
    tracing.flush()
    sessions = tracing.span_sessions("call-%")
    assert len(set(sessions.values())) == 2
    for session_id in sessions.values():
        row = tracing.session_row(session_id)
        assert (row["task"], row["user_id"], row["status"], row["span_count"]) == (
            "per call",
            "bob",
            "completed",
            1,
        )


def test_decorator_with_fixed_id_reuses_the_session(tracing: Tracing) -> None:
    @session("conversation-42", task="chat")
    def turn(i: int) -> None:
        with tracing.tracer.start_as_current_span(f"turn-{i}"):
            pass

    turn(1)
    turn(2)
    tracing.flush()
    assert set(tracing.span_sessions("turn-%").values()) == {"conversation-42"}
    row = tracing.session_row("conversation-42")
    assert (row["task"], row["status"], row["span_count"]) == ("chat", "completed", 2)


def test_async_with_and_async_decorator(tracing: Tracing) -> None:
    @session(task="async decorated")
    async def decorated(i: int) -> str:
        with tracing.tracer.start_as_current_span(f"decorated-{i}"):
            await asyncio.sleep(0)
            return "done"

    async def main() -> str:
        async with session(task="async block", user_id="carol") as s:
            with tracing.tracer.start_as_current_span("async-block"):
                await asyncio.sleep(0)
        assert await decorated(1) == "done"
        assert await decorated(2) == "done"
        return s.session_id

    block_id = asyncio.run(main())
    tracing.flush()
    row = tracing.session_row(block_id)
    assert (row["task"], row["user_id"], row["status"], row["span_count"]) == (
        "async block",
        "carol",
        "completed",
        1,
    )
    sessions = tracing.span_sessions("decorated-%")
    assert len(set(sessions.values())) == 2
    assert block_id not in sessions.values()
    for session_id in sessions.values():
        assert tracing.session_row(session_id)["task"] == "async decorated"
        assert tracing.session_row(session_id)["status"] == "completed"


def test_nested_spans_across_threads_inherit_the_session(tracing: Tracing) -> None:
    tracer = tracing.tracer

    def work(label: str) -> None:
        with tracer.start_as_current_span(f"worker-{label}"), tracer.start_as_current_span(f"inner-{label}"):
            pass

    def attached(ctx: otel_context.Context, label: str) -> None:
        token = otel_context.attach(ctx)
        try:
            work(label)
        finally:
            otel_context.detach(token)

    with session(task="threads") as s, tracer.start_as_current_span("parent") as parent:
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(work, f"copied-{i}"))
            for i in range(3)
        ]
        threads += [
            threading.Thread(target=attached, args=(otel_context.get_current(), f"attached-{i}"))
            for i in range(3)
        ]
        threads.append(threading.Thread(target=work, args=("bare",)))  # inherits nothing
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    tracing.flush()
    rows = {
        name: (session_id, parent_id, trace_id)
        for name, session_id, parent_id, trace_id in tracing.q(
            "SELECT name, session_id, parent_span_id, trace_id FROM spans"
        )
    }
    assert len(rows) == 1 + 7 * 2
    for kind in ("copied", "attached"):
        for i in range(3):
            worker = rows[f"worker-{kind}-{i}"]
            inner = rows[f"inner-{kind}-{i}"]
            assert worker[0] == inner[0] == s.session_id
            assert worker[1] == sid(parent)
            assert worker[2] == inner[2] == tid(parent)
    # A thread that did not inherit the context is not part of the session.
    assert rows["worker-bare"][0] != s.session_id
    assert rows["worker-bare"][1] is None
    assert tracing.session_row(s.session_id)["span_count"] == 13


def test_nested_spans_across_asyncio_tasks_inherit_the_session(tracing: Tracing) -> None:
    tracer = tracing.tracer

    async def worker(i: int) -> None:
        with tracer.start_as_current_span(f"task-{i}"):
            await asyncio.sleep(0.001 * (5 - i))
            with tracer.start_as_current_span(f"task-{i}-llm"):
                await asyncio.sleep(0)

    async def main() -> tuple[str, str]:
        async with session(task="fan out") as s:
            with tracer.start_as_current_span("orchestrator") as root:
                await asyncio.gather(*(asyncio.create_task(worker(i)) for i in range(5)))
        return s.session_id, sid(root)

    session_id, root_id = asyncio.run(main())
    tracing.flush()
    rows = {
        name: (sess, parent)
        for name, sess, parent in tracing.q("SELECT name, session_id, parent_span_id FROM spans")
    }
    assert len(rows) == 11
    assert all(sess == session_id for sess, _ in rows.values())
    for i in range(5):
        assert rows[f"task-{i}"][1] == root_id
    assert tracing.q("SELECT count(DISTINCT trace_id) FROM spans") == [(1,)]
    assert tracing.session_row(session_id)["span_count"] == 11


# --- session status ------------------------------------------------------------------------------------


def test_exception_in_block_fails_the_session_and_propagates(tracing: Tracing) -> None:
    class BoomError(Exception):
        pass

    with pytest.raises(BoomError), session(task="fails") as s:
        with tracing.tracer.start_as_current_span("before the error"):
            pass
        raise BoomError("no")
    tracing.flush()
    row = tracing.session_row(s.session_id)
    assert (row["status"], row["span_count"]) == ("failed", 1)
    assert row["end_time_unix_nano"] is not None


def test_exception_in_decorated_function_propagates(tracing: Tracing) -> None:
    @session(task="decorated failure")
    def broken() -> None:
        with tracing.tracer.start_as_current_span("broken-step"):
            raise KeyError("missing")

    with pytest.raises(KeyError):
        broken()
    tracing.flush()
    [session_id] = tracing.span_sessions("broken-step").values()
    assert tracing.session_row(session_id)["status"] == "failed"
    assert tracing.q("SELECT status_code FROM spans WHERE name = 'broken-step'") == [("ERROR",)]


def test_keyboard_interrupt_cancels_the_session(tracing: Tracing) -> None:
    with pytest.raises(KeyboardInterrupt), session(task="interrupted by user") as s:
        raise KeyboardInterrupt
    tracing.flush()
    assert tracing.session_row(s.session_id)["status"] == "cancelled"


def test_cancelled_task_cancels_the_session(tracing: Tracing) -> None:
    ids: list[str] = []

    async def main() -> None:
        started = asyncio.Event()

        async def job() -> None:
            async with session(task="cancel me") as s:
                ids.append(s.session_id)
                with tracing.tracer.start_as_current_span("waiting"):
                    started.set()
                    await asyncio.sleep(30)

        task = asyncio.create_task(job())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    tracing.flush()
    row = tracing.session_row(ids[0])
    assert (row["status"], row["span_count"]) == ("cancelled", 1)


def test_root_span_ending_with_error_fails_the_session(tracing: Tracing) -> None:
    with session(task="root error") as s:
        with tracing.tracer.start_as_current_span("root") as root:
            root.set_status(Status(StatusCode.ERROR, "the agent gave up"))
    tracing.flush()
    assert tracing.session_row(s.session_id)["status"] == "failed"
    [(status, errors)] = tracing.q("SELECT status, error_count FROM traces WHERE trace_id = ?", (tid(root),))
    assert (status, errors) == ("failed", 1)


def test_handled_error_in_a_child_does_not_fail_the_session(tracing: Tracing) -> None:
    with session(task="child error") as s, tracing.tracer.start_as_current_span("root"):
        with tracing.tracer.start_as_current_span("retry") as child:
            child.set_status(Status(StatusCode.ERROR, "transient"))
        with tracing.tracer.start_as_current_span("retry again"):
            pass
    tracing.flush()
    row = tracing.session_row(s.session_id)
    assert row["status"] == "completed"
    assert rollup(tracing.path, "sessions", s.session_id)["error_count"] == 1


# --- session assignment without session() --------------------------------------------------------------


def test_trace_without_any_session_is_its_own_session(tracing: Tracing) -> None:
    with (
        tracing.tracer.start_as_current_span("lonely") as root,
        tracing.tracer.start_as_current_span("child"),
    ):
        pass
    tracing.flush()
    trace_id = tid(root)
    assert set(tracing.span_sessions().values()) == {trace_id}
    assert tracing.q("SELECT session_id FROM traces") == [(trace_id,)]
    row = tracing.session_row(trace_id)
    assert (row["status"], row["span_count"]) == ("completed", 2)


def _conversation_trace(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("conversation turn", attributes={"gen_ai.conversation.id": "conv-7"}):
        with tracer.start_as_current_span("llm", attributes=usage(10, 4, cost=0.5)):
            pass
        with tracer.start_as_current_span("tool"), tracer.start_as_current_span("tool detail"):
            pass


def _assert_in_conversation(path: Path, spans: Sequence[ReadableSpan]) -> None:
    trace_id = tid(spans[0])
    assert query(path, "SELECT DISTINCT session_id FROM spans") == [("conv-7",)]
    assert query(path, "SELECT trace_id, session_id FROM traces") == [(trace_id, "conv-7")]
    # The placeholder session the children got first is gone.
    assert query(path, "SELECT session_id FROM sessions") == [("conv-7",)]
    expected = expected_rollup(spans)
    assert_rollup(rollup(path, "traces", trace_id), expected)
    assert_rollup(rollup(path, "sessions", "conv-7"), expected)


def test_root_conversation_id_claims_children_written_first(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    exporter = SQLiteSpanExporter(path)
    provider = TracerProvider()
    # Each span is exported as it ends: the children before the root.
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _conversation_trace(provider.get_tracer("t"))
    provider.shutdown()
    spans = finished_spans(_conversation_trace)  # same shape, for the expected values
    assert query(path, "SELECT count(*) FROM spans") == [(4,)]
    assert query(path, "SELECT DISTINCT session_id FROM spans") == [("conv-7",)]
    assert query(path, "SELECT session_id FROM sessions") == [("conv-7",)]
    [(trace_id,)] = query(path, "SELECT trace_id FROM traces")
    expected = expected_rollup(spans)
    assert_rollup(rollup(path, "traces", trace_id), expected)
    assert_rollup(rollup(path, "sessions", "conv-7"), expected)


@pytest.mark.parametrize("batches", ["children then root", "one batch children first", "root in the middle"])
def test_root_conversation_id_claims_children_in_any_batching(tmp_path: Path, batches: str) -> None:
    spans = finished_spans(_conversation_trace)
    root = next(s for s in spans if s.parent is None)
    children = [s for s in spans if s is not root]
    if batches == "children then root":
        calls = [children[:2], children[2:], [root]]
    elif batches == "one batch children first":
        calls = [[*children, root]]
    else:
        calls = [children[:1], [root], children[1:]]
    path = tmp_path / "t.db"
    exporter = SQLiteSpanExporter(path)
    for call in calls:
        assert exporter.export(call) is SpanExportResult.SUCCESS
    exporter.shutdown()
    _assert_in_conversation(path, spans)


def test_session_on_a_child_only_still_groups_the_whole_trace(tmp_path: Path) -> None:
    def build(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("root"):
            with tracer.start_as_current_span("plain"):
                pass
            with tracer.start_as_current_span("tagged", attributes={"langfuse.session.id": "lf-1"}):
                pass

    spans = finished_spans(build)
    path = tmp_path / "t.db"
    exporter = SQLiteSpanExporter(path)
    for span in spans:
        assert exporter.export([span]) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert query(path, "SELECT DISTINCT session_id FROM spans") == [("lf-1",)]
    assert query(path, "SELECT session_id, span_count FROM sessions") == [("lf-1", 3)]


def _competing_sessions(root_session: bool) -> dict[str, ReadableSpan]:
    """root (session ROOT, or none) -> early (session EARLY) then late (session LATE)."""

    def build(tracer: trace.Tracer) -> None:
        attrs = {"gen_ai.conversation.id": "ROOT"} if root_session else {}
        with tracer.start_as_current_span("root", attributes=attrs):
            with tracer.start_as_current_span("early", attributes={"session.id": "EARLY"}):
                pass
            with tracer.start_as_current_span("late", attributes={"session.id": "LATE"}):
                pass

    return {s.name: s for s in finished_spans(build)}


def _export_in_order(path: Path, spans: dict[str, ReadableSpan], order: Sequence[str]) -> None:
    exporter = SQLiteSpanExporter(path)
    for name in order:
        assert exporter.export([spans[name]]) is SpanExportResult.SUCCESS
    exporter.shutdown()


@pytest.mark.parametrize(
    "order",
    [
        pytest.param(["root", "early", "late"], id="root first"),
        pytest.param(["early", "late", "root"], id="children first"),
    ],
)
def test_the_roots_explicit_session_wins_in_any_arrival_order(tmp_path: Path, order: list[str]) -> None:
    """DESIGN: a trace's session is the explicit session of its root span (children end first)."""
    path = tmp_path / "t.db"
    _export_in_order(path, _competing_sessions(root_session=True), order)
    assert query(path, "SELECT DISTINCT session_id FROM spans") == [("ROOT",)]
    assert query(path, "SELECT session_id, span_count FROM sessions WHERE span_count > 0") == [("ROOT", 3)]


@pytest.mark.parametrize(
    "order",
    [
        pytest.param(["early", "late", "root"], id="earliest first"),
        pytest.param(["late", "early", "root"], id="latest first"),
    ],
)
def test_without_a_root_session_the_earliest_explicit_session_wins(tmp_path: Path, order: list[str]) -> None:
    """DESIGN: else the earliest explicit session on any of the trace's spans (by start time)."""
    path = tmp_path / "t.db"
    _export_in_order(path, _competing_sessions(root_session=False), order)
    assert query(path, "SELECT DISTINCT session_id FROM spans") == [("EARLY",)]
    assert query(path, "SELECT session_id, span_count FROM sessions WHERE span_count > 0") == [("EARLY", 3)]


# --- rollups --------------------------------------------------------------------------------------------


def test_agent_reporting_its_childrens_total_counts_once(tracing: Tracing) -> None:
    tracer = tracing.tracer
    with session(task="agent") as s:
        with tracer.start_as_current_span(
            "invoke_agent", attributes={"gen_ai.operation.name": "invoke_agent"}
        ) as agent:
            with tracer.start_as_current_span("chat 1", attributes=usage(100, 20, cache_read=40, cost=0.01)):
                pass
            with tracer.start_as_current_span("chat 2", attributes=usage(50, 10, reasoning=4, cost=0.02)):
                pass
            agent.set_attributes(usage(150, 30, cache_read=40, reasoning=4, cost=0.03))
    tracing.flush()
    expected = {
        "span_count": 3,
        "error_count": 0,
        "input_tokens": 150,
        "output_tokens": 30,
        "cache_read_tokens": 40,
        "cache_write_tokens": 0,
        "reasoning_tokens": 4,
        "cost_usd": 0.03,
    }
    assert_rollup(rollup(tracing.path, "traces", tid(agent)), expected)
    assert_rollup(rollup(tracing.path, "sessions", s.session_id), expected)
    # The agent's own numbers stay on its row.
    assert tracing.q("SELECT input_tokens FROM spans WHERE name = 'invoke_agent'") == [(150,)]


def test_llm_span_wrapping_the_sdk_llm_span_counts_once(tracing: Tracing) -> None:
    tracer = tracing.tracer
    with tracer.start_as_current_span(
        "framework llm", attributes=usage(70, 7, cache_write=3, cost=0.7)
    ) as outer:
        with tracer.start_as_current_span("openai chat", attributes=usage(70, 7, cache_write=3, cost=0.7)):
            pass
    tracing.flush()
    assert_rollup(
        rollup(tracing.path, "traces", tid(outer)),
        {
            "span_count": 2,
            "error_count": 0,
            "input_tokens": 70,
            "output_tokens": 7,
            "cache_read_tokens": 0,
            "cache_write_tokens": 3,
            "reasoning_tokens": 0,
            "cost_usd": 0.7,
        },
    )


def test_priced_cost_rolls_up_and_unknown_models_cost_null(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    processor = SQLiteSpanProcessor(path, prices={"house-model": ModelPrice(input=1.0, output=2.0)})
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    try:
        with tracer.start_as_current_span("priced") as priced:
            for _ in range(2):
                attrs = {"gen_ai.request.model": "house-model", **usage(1000, 500)}
                with tracer.start_as_current_span("chat", attributes=attrs):
                    pass
        with tracer.start_as_current_span("unpriced") as unpriced:
            attrs = {"gen_ai.request.model": "some-unknown-model-xyz", **usage(1000, 500)}
            with tracer.start_as_current_span("chat", attributes=attrs):
                pass
        assert processor.force_flush(10_000)
    finally:
        provider.shutdown()
    priced_row = rollup(path, "traces", tid(priced))
    assert priced_row["cost_usd"] == pytest.approx(2 * (1000 * 1.0 + 500 * 2.0) / 1e6)
    assert priced_row["input_tokens"] == 2000
    unpriced_row = rollup(path, "traces", tid(unpriced))
    assert unpriced_row["input_tokens"] == 1000
    assert unpriced_row["cost_usd"] is None
    assert rollup(path, "sessions", tid(unpriced))["cost_usd"] is None


def _agent_tree(tracer: trace.Tracer) -> None:
    """root -> agent(total) -> {llm1, step -> llm2}; root -> tool(ERROR); root -> wrapper -> sdk llm."""
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("agent", attributes=usage(30, 13, 2, 0, 3, cost=0.3)):
            with tracer.start_as_current_span("llm1", attributes=usage(10, 5, cache_read=2, cost=0.1)):
                pass
            with (
                tracer.start_as_current_span("step"),
                tracer.start_as_current_span("llm2", attributes=usage(20, 8, reasoning=3, cost=0.2)),
            ):
                pass
        with tracer.start_as_current_span("tool") as tool:
            tool.set_status(Status(StatusCode.ERROR, "tool failed"))
        with (
            tracer.start_as_current_span("wrapper", attributes=usage(7, 1, cache_write=5, cost=0.07)),
            tracer.start_as_current_span("sdk llm", attributes=usage(7, 1, cache_write=5, cost=0.07)),
        ):
            pass


@pytest.fixture(scope="module")
def agent_tree() -> dict[str, ReadableSpan]:
    return {s.name: s for s in finished_spans(_agent_tree)}


FULL_TREE = {
    "span_count": 8,
    "error_count": 1,
    "input_tokens": 37,
    "output_tokens": 14,
    "cache_read_tokens": 2,
    "cache_write_tokens": 5,
    "reasoning_tokens": 3,
    "cost_usd": 0.37,
}


def test_reference_rollup_of_the_agent_tree(agent_tree: dict[str, ReadableSpan]) -> None:
    assert_rollup(expected_rollup(list(agent_tree.values())), FULL_TREE)


def _orders(names: list[str]) -> list[list[list[str]]]:
    """Batchings of the tree's spans: named adversarial orders plus seeded random orders and splits."""
    end_order = names
    plans = [
        [[n] for n in end_order],  # children before parents, one per batch
        [[n] for n in reversed(end_order)],  # parents before children
        [end_order],  # one batch
        [list(reversed(end_order))],
        # grandchild before its missing parent, which arrives last
        [["sdk llm"], ["root"], ["llm1", "llm2", "step", "tool"], ["agent"], ["wrapper"]],
        [["llm2"], ["agent", "root"], ["llm1"], ["sdk llm", "tool", "wrapper"], ["step"]],
        # re-export of the same spans
        [["llm1", "llm2"], ["llm1"], end_order, ["agent", "agent", "sdk llm"], ["llm2"]],
    ]
    rng = random.Random(20261122)
    for _ in range(25):
        shuffled = list(end_order)
        rng.shuffle(shuffled)
        cuts = sorted(rng.sample(range(1, len(shuffled)), rng.randint(0, 4)))
        plans.append([shuffled[a:b] for a, b in itertools.pairwise([0, *cuts, len(shuffled)])])
    return plans


@pytest.mark.parametrize("plan_index", range(32))
def test_rollups_are_exact_in_any_arrival_order(
    tmp_path: Path, agent_tree: dict[str, ReadableSpan], plan_index: int
) -> None:
    plan = _orders(list(agent_tree))[plan_index]
    path = tmp_path / "t.db"
    exporter = SQLiteSpanExporter(path)
    trace_id = tid(agent_tree["root"])
    seen: list[ReadableSpan] = []
    try:
        for batch in plan:
            spans = [agent_tree[name] for name in batch]
            assert exporter.export(spans) is SpanExportResult.SUCCESS
            seen.extend(spans)
            expected = expected_rollup(seen)
            assert_rollup(rollup(path, "traces", trace_id), expected)
            assert_rollup(rollup(path, "sessions", trace_id), expected)
    finally:
        exporter.shutdown()
    assert_rollup(rollup(path, "traces", trace_id), FULL_TREE)
    assert query(path, "SELECT count(*) FROM spans") == [(8,)]
    assert query(path, "SELECT status, root_span_name FROM traces") == [("completed", "root")]


def _chain(tracer: trace.Tracer, depth: int = 40) -> None:
    """The top reports the usage of the one call at the bottom, with many steps in between."""
    spans = [tracer.start_span("level 0", attributes=usage(11, 4))]
    for n in range(1, depth):
        parent = trace.set_span_in_context(spans[-1])
        spans.append(
            tracer.start_span(f"level {n}", context=parent, attributes=usage(11, 4) if n == depth - 1 else {})
        )
    for span in reversed(spans):
        span.end()


@pytest.mark.parametrize("batches", ["one", "leaf first", "root first", "split"])
def test_a_chain_deeper_than_agents_nest_counts_its_usage_once(tmp_path: Path, batches: str) -> None:
    spans = finished_spans(_chain)  # the order they ended: the bottom first
    plan = {
        "one": [spans],
        "leaf first": [spans[:1], spans[1:]],
        "root first": [spans[::-1][:25], spans[::-1][25:]],
        "split": [spans[10:30], spans[:10], spans[30:]],
    }[batches]
    path = tmp_path / "chain.db"
    exporter = SQLiteSpanExporter(path)
    try:
        for batch in plan:
            assert exporter.export(batch) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    trace_id = tid(spans[0])
    assert_rollup(rollup(path, "traces", trace_id), expected_rollup(spans))
    assert rollup(path, "traces", trace_id)["input_tokens"] == 11
    assert query(path, "SELECT name FROM spans WHERE usage_below = 0 AND has_usage = 1") == [("level 39",)]


def test_len_of_orders_matches_parametrisation(agent_tree: dict[str, ReadableSpan]) -> None:
    assert len(_orders(list(agent_tree))) == 32


def test_start_row_completed_with_usage_updates_rollups(tracing: Tracing) -> None:
    tracer = tracing.tracer
    with session(task="live") as s:
        root = tracer.start_span("agent")
        llm = tracer.start_span("llm", context=trace.set_span_in_context(root))
        tracing.flush()
        rows = tracing.q("SELECT name, end_time_unix_nano, input_tokens FROM spans ORDER BY name")
        assert rows == [("agent", None, None), ("llm", None, None)]
        running = rollup(tracing.path, "traces", tid(root))
        assert (running["span_count"], running["input_tokens"], running["cost_usd"]) == (2, 0, None)
        assert tracing.q("SELECT status FROM traces") == [("running",)]
        assert tracing.session_row(s.session_id)["status"] == "running"

        llm.set_attributes(usage(12, 3, cache_read=1, cost=0.012))
        llm.end()
        tracing.flush()
        after_llm = {
            "span_count": 2,
            "error_count": 0,
            "input_tokens": 12,
            "output_tokens": 3,
            "cache_read_tokens": 1,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "cost_usd": 0.012,
        }
        assert_rollup(rollup(tracing.path, "traces", tid(root)), after_llm)
        assert_rollup(rollup(tracing.path, "sessions", s.session_id), after_llm)
        assert tracing.q("SELECT status FROM traces") == [("running",)]

        # The agent then reports the same total: still counted once.
        root.set_attributes(usage(12, 3, cache_read=1, cost=0.012))
        root.set_status(Status(StatusCode.ERROR))
        root.end()
        tracing.flush()
    tracing.flush()
    final = {**after_llm, "error_count": 1}
    assert_rollup(rollup(tracing.path, "traces", tid(root)), final)
    assert_rollup(rollup(tracing.path, "sessions", s.session_id), final)
    assert tracing.q("SELECT status FROM traces") == [("failed",)]
    assert tracing.session_row(s.session_id)["status"] == "failed"
    assert tracing.q("SELECT count(*) FROM spans WHERE end_time_unix_nano IS NULL") == [(0,)]


def test_session_rollups_sum_their_traces(tracing: Tracing) -> None:
    tracer = tracing.tracer
    with session(task="two traces") as s:
        with tracer.start_as_current_span("first") as first:
            with tracer.start_as_current_span("a", attributes=usage(10, 1, cost=0.1)):
                pass
            with tracer.start_as_current_span("b") as b:
                b.set_status(Status(StatusCode.ERROR))
        with tracer.start_as_current_span("second") as second:
            with tracer.start_as_current_span("c", attributes=usage(5, 2, reasoning=1, cost=0.05)) as c:
                c.set_status(Status(StatusCode.ERROR))
    tracing.flush()
    one = rollup(tracing.path, "traces", tid(first))
    two = rollup(tracing.path, "traces", tid(second))
    assert (one["span_count"], one["error_count"], one["input_tokens"]) == (3, 1, 10)
    assert (two["span_count"], two["error_count"], two["input_tokens"]) == (2, 1, 5)
    assert_rollup(
        rollup(tracing.path, "sessions", s.session_id),
        {
            "span_count": 5,
            "error_count": 2,
            "input_tokens": 15,
            "output_tokens": 3,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 1,
            "cost_usd": 0.15,
        },
    )
    [(events, total_tokens)] = tracing.q(
        "SELECT total_events, total_tokens FROM agent_trace_sessions WHERE id = ?", (s.session_id,)
    )
    assert (events, total_tokens) == (5, 18)


def test_reexported_spans_are_not_counted_twice(tmp_path: Path) -> None:
    spans = finished_spans(_conversation_trace)
    path = tmp_path / "t.db"
    exporter = SQLiteSpanExporter(path)
    for _ in range(3):
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert query(path, "SELECT count(*) FROM spans") == [(4,)]
    assert_rollup(rollup(path, "sessions", "conv-7"), expected_rollup(spans))
