"""Per-session token budgets: live counts on the application thread, callbacks, and the crossing
recorded in the trace file (the session's budget_status and a span event on the crossing span).

The live count must agree with what the store rolls up ("innermost wins", the same keys, the same
parsing and pricing), so most tests compare the alert against the stored session.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import query
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_sqlite_exporter import (
    BudgetAlert,
    ConfigurationError,
    SQLiteSpanExporter,
    SQLiteSpanProcessor,
    TokenBudget,
    TraceStore,
    session,
)
from otel_sqlite_exporter import _budget as budget_module

CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}


def usage(input_tokens: int | str = 0, output_tokens: int | str = 0, **extra: Any) -> dict[str, Any]:
    return {
        **CHAT,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
        **extra,
    }


class Alerts:
    """Callbacks that record what they receive, and on which thread."""

    def __init__(self) -> None:
        self.received: list[BudgetAlert] = []
        self.threads: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, alert: BudgetAlert) -> None:
        with self._lock:
            self.received.append(alert)
            self.threads.append(threading.get_ident())

    def budget(self, max_tokens: int | None = 1000, **kwargs: Any) -> TokenBudget:
        return TokenBudget(max_tokens, on_warning=self, on_exceeded=self, **kwargs)

    def of(self, session_id: str) -> list[tuple[str, float]]:
        return [(a.status, a.used) for a in self.received if a.session_id == session_id]


@pytest.fixture
def alerts() -> Alerts:
    return Alerts()


@pytest.fixture
def tracing_with(tmp_path: Path) -> Iterator[Any]:
    opened: list[helpers.Tracing] = []

    def start(budget: TokenBudget | None, **options: Any) -> helpers.Tracing:
        tracing = helpers.start_tracing(tmp_path / "traces.db", budget=budget, **options)
        opened.append(tracing)
        return tracing

    yield start
    for tracing in opened:
        tracing.close()


def llm_call(tracer: trace.Tracer, name: str = "chat gpt-4o", **attributes: Any) -> None:
    with tracer.start_as_current_span(name, attributes=attributes):
        pass


def stored_session(path: Path, session_id: str) -> Any:
    with TraceStore(path) as store:
        found = store.get_session(session_id)
    assert found is not None, f"no session {session_id}"
    return found


def budget_events(path: Path, session_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(span name, event name, event attributes) of the budget events, in span start order."""
    with TraceStore(path) as store:
        entries = store.get_traces(session_id=session_id, limit=1000)
    return [
        (entry.name, event["name"], event["attributes"])
        for entry in sorted(entries, key=lambda e: e.start_time_unix_nano)
        for event in entry.events
        if event["name"].startswith("budget.")
    ]


# --- the basic promise ---------------------------------------------------------------------------------


def test_warning_then_exceeded_once_each_synchronously_and_recorded(
    tracing_with: Any, alerts: Alerts
) -> None:
    tracing = tracing_with(alerts.budget(1000))
    with session(task="agent loop") as s:
        tracing.flush()
        assert stored_session(tracing.path, s.session_id).budget_status == "ok"
        seen_after_each_call = []
        for i in range(6):
            llm_call(tracing.tracer, f"call {i}", **usage(200, 100))
            # The callback ran inside span.end(), on this thread: the loop can stop right here.
            seen_after_each_call.append([a.status for a in alerts.received])
            if i == 2:
                tracing.flush()
                assert stored_session(tracing.path, s.session_id).budget_status == "warning"
    tracing.flush()

    assert (
        seen_after_each_call == [[], [], ["warning"], ["warning", "exceeded"]] + [["warning", "exceeded"]] * 2
    )
    assert alerts.received == [
        BudgetAlert(s.session_id, "warning", 900, 1000, 0.9, "tokens"),
        BudgetAlert(s.session_id, "exceeded", 1200, 1000, 1.2, "tokens"),
    ]
    assert set(alerts.threads) == {threading.get_ident()}

    stored = stored_session(tracing.path, s.session_id)
    assert stored.budget_status == "exceeded"
    assert stored.to_dict()["budget_status"] == "exceeded"
    assert stored.total_tokens == 1800  # the store keeps counting; the budget does not stop tracing
    assert budget_events(tracing.path, s.session_id) == [
        (
            "call 2",
            "budget.warning",
            {"budget.used": 900, "budget.limit": 1000, "budget.ratio": 0.9, "budget.measure": "tokens"},
        ),
        (
            "call 3",
            "budget.exceeded",
            {"budget.used": 1200, "budget.limit": 1000, "budget.ratio": 1.2, "budget.measure": "tokens"},
        ),
    ]


def test_without_a_budget_sessions_have_no_budget_status(tracing_with: Any) -> None:
    tracing = tracing_with(None)
    with session() as s:
        llm_call(tracing.tracer, **usage(10**6, 10**6))
    tracing.flush()
    stored = stored_session(tracing.path, s.session_id)
    assert stored.budget_status is None
    assert stored.to_dict()["budget_status"] is None
    assert tracing.q("SELECT count(*) FROM spans WHERE events IS NOT NULL") == [(0,)]


def test_a_single_call_past_the_limit_reports_exceeded_only(tracing_with: Any, alerts: Alerts) -> None:
    tracing = tracing_with(alerts.budget(100))
    with session() as s:
        llm_call(tracing.tracer, **usage(50, 10))  # 60: ok
        llm_call(tracing.tracer, **usage(500, 0))  # 560: past 80 and past 100 at once
    tracing.flush()
    assert alerts.of(s.session_id) == [("exceeded", 560)]
    assert [e[1] for e in budget_events(tracing.path, s.session_id)] == ["budget.exceeded"]


def test_reaching_the_limit_exactly_is_a_warning_not_exceeded(tracing_with: Any, alerts: Alerts) -> None:
    tracing = tracing_with(alerts.budget(100, warn_ratio=1.0))
    with session() as s:
        llm_call(tracing.tracer, **usage(99, 0))
        assert alerts.of(s.session_id) == []
        llm_call(tracing.tracer, **usage(1, 0))
        assert alerts.of(s.session_id) == [("warning", 100)]
        llm_call(tracing.tracer, **usage(1, 0))
    assert alerts.of(s.session_id) == [("warning", 100), ("exceeded", 101)]


# --- counted once, as the store counts -----------------------------------------------------------------


def test_innermost_usage_wins_through_wrappers_and_plain_spans(tracing_with: Any, alerts: Alerts) -> None:
    tracing = tracing_with(alerts.budget(1000))
    tracer = tracing.tracer
    with session() as s:
        # An agent span reporting the total of its calls, through a chain span without usage, each
        # call an LLM framework span repeating the SDK span beneath it: 2 x 300 counted, not 1800.
        with tracer.start_as_current_span("agent", attributes=usage(400, 200)):
            with tracer.start_as_current_span("chain"):
                for i in range(2):
                    with tracer.start_as_current_span(f"framework llm {i}", attributes=usage(200, 100)):
                        llm_call(tracer, f"sdk chat {i}", **usage(200, 100))
        assert alerts.of(s.session_id) == []
        llm_call(tracer, "one more", **usage(150, 50))  # 800: warning
    tracing.flush()
    assert alerts.of(s.session_id) == [("warning", 800)]
    assert stored_session(tracing.path, s.session_id).total_tokens == 800


def test_a_child_ending_after_its_parent_takes_the_repeated_usage_back(
    tracing_with: Any, alerts: Alerts
) -> None:
    tracing = tracing_with(alerts.budget(1000))
    tracer = tracing.tracer
    with session() as s:
        parent = tracer.start_span("framework llm", attributes=usage(400, 200))
        child = tracer.start_span(
            "sdk chat", context=trace.set_span_in_context(parent), attributes=usage(400, 200)
        )
        parent.end()  # 600 so far
        child.end()  # the parent only repeated it: still 600, not 1200
        llm_call(tracer, "next", **usage(150, 50))  # 800: warning, not a second crossing
    tracing.flush()
    assert alerts.of(s.session_id) == [("warning", 800)]
    assert stored_session(tracing.path, s.session_id).total_tokens == 800


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param({"gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 5}, id="ints"),
        pytest.param(
            {"gen_ai.usage.input_tokens": "7", "gen_ai.usage.output_tokens": " 5 "}, id="numeric-text"
        ),
        pytest.param({"gen_ai.usage.input_tokens": 7.9, "gen_ai.usage.output_tokens": 5.2}, id="floats"),
        pytest.param({"gen_ai.usage.input_tokens": "\t7", "gen_ai.usage.output_tokens": "5"}, id="tab"),
        pytest.param({"llm.token_count.prompt": 7, "llm.token_count.completion": 5}, id="openinference"),
        pytest.param({"gen_ai.usage.prompt_tokens": 7, "gen_ai.usage.completion_tokens": 5}, id="old-genai"),
        pytest.param(
            {
                "gen_ai.usage.input_tokens": 7,
                "gen_ai.usage.prompt_tokens": 1000,
                "gen_ai.usage.output_tokens": 5,
            },
            id="first-key-wins",
        ),
        pytest.param(
            {"gen_ai.usage.input_tokens": "", "llm.token_count.prompt": 7}, id="empty-falls-through"
        ),
        pytest.param({"gen_ai.usage.input_tokens": "seven", "llm.token_count.prompt": 7}, id="bad-text-wins"),
        pytest.param({"gen_ai.usage.input_tokens": True, "gen_ai.usage.output_tokens": 5}, id="bool"),
        pytest.param({"gen_ai.usage.input_tokens": -3, "gen_ai.usage.output_tokens": 5}, id="negative"),
        pytest.param(
            {"gen_ai.usage.input_tokens": (1, 2), "llm.token_count.prompt": 7}, id="sequence-skipped"
        ),
        pytest.param({"gen_ai.usage.input_tokens": 10**19}, id="too-large"),
        pytest.param({"gen_ai.usage.cache_read.input_tokens": 40}, id="no-input-or-output"),
        pytest.param(
            {"gen_ai.usage.reasoning_tokens": "12", "gen_ai.usage.output_tokens": 30}, id="reasoning"
        ),
        pytest.param({"llm.cost.total": 0.25}, id="cost-only"),
    ],
)
@pytest.mark.parametrize("count", ["total", "input", "output", "reasoning", "cache_read", "cache_write"])
def test_the_live_count_reads_usage_exactly_as_the_store(
    tmp_path: Path, attributes: dict[str, Any], count: str
) -> None:
    # A limit of one token: the single call's count is then visible in the alert (or its absence).
    alerts = Alerts()
    tracing = helpers.start_tracing(tmp_path / "t.db", budget=alerts.budget(1, count=count))
    try:
        with session() as s:
            llm_call(tracing.tracer, **{**CHAT, **attributes})
        tracing.flush()
        stored = stored_session(tracing.path, s.session_id)
    finally:
        tracing.close()
    columns = {
        "total": ("input_tokens", "output_tokens"),
        "input": ("input_tokens",),
        "output": ("output_tokens",),
        "reasoning": ("reasoning_tokens",),
        "cache_read": ("cache_read_tokens",),
        "cache_write": ("cache_write_tokens",),
    }[count]
    expected = sum(getattr(stored, column) for column in columns)
    got = alerts.of(s.session_id)
    if expected == 0:
        assert got == []
        assert stored.budget_status == "ok"
    else:
        assert got == [("warning" if expected == 1 else "exceeded", expected)]
        assert stored.budget_status == got[0][0]


def test_cost_budget_uses_the_explicit_cost_else_the_price_table(tracing_with: Any, alerts: Alerts) -> None:
    prices = {"house-model": {"input": 10.0, "output": 30.0}}  # USD per million tokens
    tracing = tracing_with(
        TokenBudget(max_cost_usd=0.05, on_warning=alerts, on_exceeded=alerts), prices=prices
    )
    with session() as s:
        # 1000 * 10 / 1e6 + 500 * 30 / 1e6 = 0.025
        llm_call(tracing.tracer, **{**usage(1000, 500), "gen_ai.request.model": "house-model"})
        assert alerts.received == []
        llm_call(tracing.tracer, **{**usage(10, 10), "llm.cost.total": 0.02})  # explicit: 0.045 -> warning
        llm_call(tracing.tracer, **{**usage(10, 10), "gen_ai.request.model": "unknown-model"})  # no price
        llm_call(tracing.tracer, **{**usage(0, 0), "llm.cost.total": "0.01"})  # 0.055 -> exceeded
    tracing.flush()
    stored = stored_session(tracing.path, s.session_id)
    assert [(a.status, a.measure) for a in alerts.received] == [
        ("warning", "cost_usd"),
        ("exceeded", "cost_usd"),
    ]
    assert alerts.received[0].used == pytest.approx(0.045)
    assert alerts.received[1].used == pytest.approx(stored.cost_usd)
    assert alerts.received[1].limit == 0.05
    assert stored.budget_status == "exceeded"


def test_with_both_limits_the_worse_measure_decides_and_each_callback_runs_once(
    tracing_with: Any, alerts: Alerts
) -> None:
    tracing = tracing_with(
        TokenBudget(1000, max_cost_usd=1.0, on_warning=alerts, on_exceeded=alerts),
    )
    with session():
        llm_call(tracing.tracer, **usage(850, 0, **{"llm.cost.total": 0.1}))  # tokens 85%: warning
        llm_call(tracing.tracer, **usage(0, 0, **{"llm.cost.total": 0.75}))  # cost 85%: no new status
        llm_call(tracing.tracer, **usage(0, 0, **{"llm.cost.total": 0.5}))  # cost 135%: exceeded
        llm_call(tracing.tracer, **usage(500, 0))  # tokens past too: nothing new
    assert [(a.status, a.measure, a.used) for a in alerts.received] == [
        ("warning", "tokens", 850),
        ("exceeded", "cost_usd", pytest.approx(1.35)),
    ]


# --- which session --------------------------------------------------------------------------------------


def test_sessions_come_from_the_span_the_trace_or_the_trace_id(tracing_with: Any, alerts: Alerts) -> None:
    tracing = tracing_with(alerts.budget(10))
    tracer = tracing.tracer
    # The LLM span carries the conversation id itself.
    llm_call(tracer, **usage(20, 0, **{"gen_ai.conversation.id": "conv-1"}))
    # Only the root names the session; the LLM span beneath it ends first.
    with tracer.start_as_current_span("agent", attributes={"langfuse.session.id": "lf-7"}):
        llm_call(tracer, **usage(20, 0))
    # No session anywhere: the trace is its own session, as in the store.
    with tracer.start_as_current_span("bare") as bare:
        llm_call(tracer, **usage(20, 0))
    tracing.flush()
    own = trace.format_trace_id(bare.get_span_context().trace_id)
    assert [a.session_id for a in alerts.received] == ["conv-1", "lf-7", own]
    with TraceStore(tracing.path) as store:
        statuses = {x.id: x.budget_status for x in store.get_sessions()}
    assert statuses == {"conv-1": "exceeded", "lf-7": "exceeded", own: "exceeded"}


def test_a_session_that_only_starts_counting_later_is_ok_from_its_first_call(
    tracing_with: Any, alerts: Alerts
) -> None:
    tracing = tracing_with(alerts.budget(1000))
    llm_call(tracing.tracer, **usage(10, 10, **{"session.id": "s-1"}))
    with tracing.tracer.start_as_current_span("no usage", attributes={"session.id": "s-2"}):
        pass
    tracing.flush()
    assert stored_session(tracing.path, "s-1").budget_status == "ok"
    assert stored_session(tracing.path, "s-2").budget_status is None  # nothing was counted in it


# --- threads ----------------------------------------------------------------------------------------------


def test_concurrent_sessions_in_threads_each_get_their_own_alerts_on_their_own_thread(
    tracing_with: Any, alerts: Alerts
) -> None:
    tracing = tracing_with(alerts.budget(500))
    workers = 8
    start = threading.Barrier(workers)
    sessions: dict[int, str] = {}
    failures: list[BaseException] = []

    def agent() -> None:
        try:
            with session(task="worker") as s:
                sessions[threading.get_ident()] = s.session_id
                start.wait()
                for i in range(8):
                    with tracing.tracer.start_as_current_span("agent step"):
                        llm_call(tracing.tracer, f"call {i}", **usage(60, 40))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=agent) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    tracing.flush()

    assert len(set(sessions.values())) == workers
    for ident, session_id in sessions.items():
        assert alerts.of(session_id) == [("warning", 400), ("exceeded", 600)]
        assert {
            t for a, t in zip(alerts.received, alerts.threads, strict=True) if a.session_id == session_id
        } == {ident}
        assert stored_session(tracing.path, session_id).budget_status == "exceeded"
        assert [e[:2] for e in budget_events(tracing.path, session_id)] == [
            ("call 3", "budget.warning"),
            ("call 5", "budget.exceeded"),
        ]


def test_sessions_fed_from_many_threads_at_once_cross_exactly_once(tracing_with: Any, alerts: Alerts) -> None:
    workers, rounds, sessions = 8, 4, 100
    # Every thread adds to every session in turn, so the threads reach each threshold together.
    tracing = tracing_with(alerts.budget(workers * rounds * 50, warn_ratio=0.5))
    start = threading.Barrier(workers)

    def feed() -> None:
        start.wait()
        for _ in range(rounds):
            for i in range(sessions):
                llm_call(tracing.tracer, **usage(30, 20, **{"session.id": f"shared-{i}"}))

    threads = [threading.Thread(target=feed) for _ in range(workers)]
    # Threads switch as often as the interpreter allows: a lost update or a double crossing shows.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    limit = workers * rounds * 50  # every session is exactly at its limit: warned, not exceeded
    for i in range(sessions):
        assert alerts.of(f"shared-{i}") == [("warning", limit // 2)]
        llm_call(tracing.tracer, **usage(1, 0, **{"session.id": f"shared-{i}"}))
        assert alerts.of(f"shared-{i}") == [("warning", limit // 2), ("exceeded", limit + 1)]
    tracing.flush()
    stored = stored_session(tracing.path, "shared-0")
    assert (stored.total_tokens, stored.budget_status) == (limit + 1, "exceeded")


# --- callbacks never hurt the application ------------------------------------------------------------------


def test_a_raising_callback_is_logged_once_and_the_application_goes_on(
    tracing_with: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(alert: BudgetAlert) -> None:
        calls.append(alert.session_id)
        raise RuntimeError("callback bug")

    tracing = tracing_with(TokenBudget(10, on_exceeded=broken))
    with caplog.at_level(logging.DEBUG, logger="otel_sqlite_exporter"):
        for name in ("a", "b", "c"):
            with session(name) as s:
                llm_call(tracing.tracer, **usage(20, 0))
    tracing.flush()
    assert calls == ["a", "b", "c"]
    failures = [r for r in caplog.records if "on_exceeded callback raised" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.ERROR, logging.DEBUG, logging.DEBUG]
    assert "callback bug" in (failures[0].exc_text or "")
    assert stored_session(tracing.path, s.session_id).budget_status == "exceeded"
    assert tracing.processor.stats["failed"] == 0


def test_without_callbacks_a_warning_is_logged(tracing_with: Any, caplog: pytest.LogCaptureFixture) -> None:
    tracing = tracing_with(TokenBudget(100))
    with caplog.at_level(logging.WARNING, logger="otel_sqlite_exporter"), session("quiet"):
        llm_call(tracing.tracer, **usage(90, 0))
        llm_call(tracing.tracer, **usage(20, 0))
    messages = [r.getMessage() for r in caplog.records if r.name == "otel_sqlite_exporter"]
    assert messages == [
        "otel-sqlite-exporter: session quiet is near its budget: 90 of 100 tokens (90%)",
        "otel-sqlite-exporter: session quiet exceeded its budget: 110 of 100 tokens (110%)",
    ]


# --- the recorded crossing survives, and the exporter records it too --------------------------------------


def test_a_recorded_budget_event_survives_the_span_being_written_again(
    tmp_path: Path, alerts: Alerts
) -> None:
    path = tmp_path / "traces.db"
    memory = InMemorySpanExporter()
    processor = SQLiteSpanProcessor(path, budget=alerts.budget(100))
    provider = TracerProvider()
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    with session() as s:
        with tracer.start_as_current_span("chat", attributes=usage(200, 0)) as span:
            span.add_event("gen_ai.choice", {"index": 0})
    provider.shutdown()
    before = budget_events(path, s.session_id)
    assert [e[1] for e in before] == ["budget.exceeded"]

    # The same spans written again, by a writer without a budget (a re-export).
    again = SQLiteSpanExporter(path)
    again.export(memory.get_finished_spans())
    again.export(memory.get_finished_spans())
    again.shutdown()
    assert budget_events(path, s.session_id) == before
    with TraceStore(path) as store:
        (entry,) = store.get_traces(session_id=s.session_id)
    assert [e["name"] for e in entry.events] == ["gen_ai.choice", "budget.exceeded"]


def test_exporter_behind_batch_span_processor_honours_the_budget(tmp_path: Path, alerts: Alerts) -> None:
    path = tmp_path / "traces.db"
    exporter = SQLiteSpanExporter(path, budget=alerts.budget(1000))
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("agent", attributes={"session.id": "batched"}):
        for i in range(5):
            with tracer.start_as_current_span(f"framework {i}", attributes=usage(150, 50)):
                llm_call(tracer, f"call {i}", **usage(150, 50))
    assert provider.force_flush(10_000)
    provider.shutdown()
    stored = stored_session(path, "batched")
    assert stored.total_tokens == 1000
    # 1000 of 1000 is at the limit, not over it.
    assert alerts.of("batched") == [("warning", 800)]
    assert stored.budget_status == "warning"
    assert [e[:2] for e in budget_events(path, "batched")] == [("call 3", "budget.warning")]


# --- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_cost_usd": 0}, "max_cost_usd"),
        ({"max_cost_usd": float("nan")}, "max_cost_usd"),
        ({"max_cost_usd": "1"}, "max_cost_usd"),
        ({"max_tokens": 10, "warn_ratio": 0}, "warn_ratio"),
        ({"max_tokens": 10, "warn_ratio": 1.5}, "warn_ratio"),
        ({"max_tokens": 10, "on_warning": "print"}, "on_warning"),
        ({"max_tokens": 10, "on_exceeded": 3}, "on_exceeded"),
        ({"max_tokens": 10, "count": "everything"}, "count"),
        ({}, "max_tokens"),
    ],
)
def test_bad_budget_arguments_raise_configuration_error_naming_them(
    kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        TokenBudget(**kwargs)


def test_budget_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_SQLITE_BUDGET_MAX_TOKENS", "100")
    tracing = helpers.start_tracing(tmp_path / "env.db")
    try:
        with caplog.at_level(logging.WARNING, logger="otel_sqlite_exporter"), session("from-env"):
            llm_call(tracing.tracer, **usage(150, 0))
        tracing.flush()
        assert stored_session(tracing.path, "from-env").budget_status == "exceeded"
        assert any("from-env exceeded its budget" in r.getMessage() for r in caplog.records)
    finally:
        tracing.close()


def test_memory_stays_bounded_over_many_sessions(
    tracing_with: Any, alerts: Alerts, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, cap in (("MAX_SESSIONS", 16), ("MAX_TRACES", 32), ("MAX_MARKS", 32), ("MAX_COUNTED", 8)):
        monkeypatch.setattr(budget_module, name, cap)
    tracing = tracing_with(alerts.budget(10))
    tracer = tracing.tracer
    for i in range(200):
        with session(f"s{i}"):
            parent = tracer.start_span("never ends")  # leaves a mark behind
            with tracer.start_as_current_span("agent", context=trace.set_span_in_context(parent)):
                llm_call(tracer, **usage(20, 0))
    tracker = tracing.processor._budget
    assert tracker is not None
    assert len(tracker._sessions) <= 16
    assert len(tracker._trace_sessions) <= 32
    assert len(tracker._marked) <= 32
    assert len(tracker._counted) <= 8
    assert len(alerts.received) == 200  # every session still alerted once


# --- the real openai client, instrumented by configure() --------------------------------------------------

APP = r"""
import json, sys, threading
import openai
from otel_sqlite_exporter import TokenBudget, configure, session
from otel_sqlite_exporter.fake_llm_server import FakeLLMServer, ScriptedReply

db = sys.argv[1]
stop = threading.Event()
alerts = []

def record(alert):
    alerts.append([alert.status, alert.used, alert.limit, alert.session_id])
    if alert.status == "exceeded":
        stop.set()

provider = configure(db, budget=TokenBudget(100, on_warning=record, on_exceeded=record))
replies = [ScriptedReply(content=f"step {i}", prompt_tokens=20, completion_tokens=10) for i in range(10)]
calls = 0
with FakeLLMServer(replies) as server:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
    with session(task="budgeted agent") as s:
        while not stop.is_set() and calls < 10:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "next"}]
            )
            calls += 1
provider.shutdown()
print(json.dumps({"calls": calls, "alerts": alerts, "session_id": s.session_id}))
"""


def test_an_instrumented_openai_agent_loop_stops_when_the_budget_is_exceeded(tmp_path: Path) -> None:
    db = tmp_path / "traces.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, "-c", APP, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    sid = out["session_id"]
    # 30 tokens a call: 90 is past 80% on the third call, 120 past the limit on the fourth.
    assert out["alerts"] == [["warning", 90, 100, sid], ["exceeded", 120, 100, sid]]
    assert out["calls"] == 4
    stored = stored_session(db, sid)
    assert (stored.total_tokens, stored.budget_status) == (120, "exceeded")
    events = budget_events(db, sid)
    assert [e[1] for e in events] == ["budget.warning", "budget.exceeded"]
    llm_rows = query(db, "SELECT count(*) FROM spans WHERE session_id = ? AND type = 'llm'", (sid,))
    assert llm_rows == [(4,)]


def test_budget_status_filters_sessions_and_shows_in_the_cli(
    tracing_with: Any, alerts: Alerts, capsys: pytest.CaptureFixture[str]
) -> None:
    from otel_sqlite_exporter._cli import main

    tracing = tracing_with(alerts.budget(1000))
    for session_id, tokens in (("calm", 100), ("close", 850), ("over", 1500)):
        llm_call(tracing.tracer, **usage(tokens, 0, **{"session.id": session_id}))
    llm_call(tracing.tracer, name="no usage", **{"session.id": "untracked"})
    tracing.flush()
    with TraceStore(tracing.path) as store:
        by_status = {
            s: [x.id for x in store.get_sessions(budget_status=s)] for s in ("ok", "warning", "exceeded")
        }
        with pytest.raises(ValueError, match="budget_status"):
            store.get_sessions(budget_status="bankrupt")
    assert by_status == {"ok": ["calm"], "warning": ["close"], "exceeded": ["over"]}

    def cli(*args: str) -> str:
        capsys.readouterr()
        assert main(["--db", str(tracing.path), "--color", "never", *args]) == 0
        return capsys.readouterr().out

    listing = cli("sessions")
    assert "BUDGET" in listing.splitlines()[0]
    rows = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert "exceeded" in rows["over"].split() and "warning" in rows["close"].split()
    assert "ok" in rows["calm"].split() and "-" in rows["untracked"].split()
    assert cli("sessions", "--budget-status", "exceeded").splitlines()[1].split()[0] == "over"
    assert "budget exceeded" in cli("show", "over")
    assert "budget" not in cli("show", "untracked")
