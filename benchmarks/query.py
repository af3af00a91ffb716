"""Read-side latency: TraceStore queries on a large trace file, and the plan SQLite picks for each.

    python benchmarks/query.py [--sessions 10000] [--spans-per-session 100] [--repeat 20]
                               [--db PATH] [--regenerate] [--with-writer [--writer-rate 2000]]

The file holds ``sessions x spans-per-session`` spans (1,000,000 by default), written through the
package's own write path (``TraceWriter.write`` in batches): each session is a few traces of nested
agent -> llm -> tool spans with GenAI attributes, prompt and completion text, token counts, six
models and a few errors, started over the last 30 days. It is cached in the system temp folder,
keyed by its size and the schema (a schema change regenerates it); ``--db`` names the file
instead, ``--regenerate`` rebuilds it.

Each query runs once to warm up, then ``--repeat`` times (a fresh random session, span or time
window each time); the median and the best are quoted against the target. Then the plan of every
statement each query issues (EXPLAIN QUERY PLAN), with any full scan of the spans table and any
sort of an unbounded row set flagged.

``--with-writer`` measures again on a scratch copy of the file while another process appends
spans to it through ``SQLiteSpanProcessor`` (``--writer-rate`` spans/s, 0 for as fast as it can).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from otel_sqlite_exporter import TraceStore
from otel_sqlite_exporter._config import Options
from otel_sqlite_exporter._records import from_ns
from otel_sqlite_exporter._schema import MIGRATIONS
from otel_sqlite_exporter._writer import TraceWriter

# Bumped whenever the generated data changes shape, so a cached file is never stale.
GENERATOR_VERSION = 2
DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9
MS_NS = 10**6

MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "gemini-2.5-flash",
    "gemini-2.5-pro",
)
PROVIDERS = {"gpt": "openai", "cla": "anthropic", "gem": "gcp.gemini"}
TOOLS = ("search_orders", "lookup_customer", "issue_refund", "send_email", "query_inventory", "web_search")
AGENTS = ("support-agent", "billing-agent", "research-agent")
ERRORS = ("TimeoutError: upstream did not answer", "RateLimitError: 429 too many requests", "KeyError: 'sku'")

# Words in falling frequency (Zipf): word k turns up about 1/k as often as the first.
VOCABULARY = """
the to and a of you I is for it that on your with can be this have please order my what we not
are do will if account me so at help from an customer was but as need get there our refund they
all would like how when just know one or about time any has up more payment out should which
check their by shipping thanks then some been also email delivery could into date new
product item no see use invoice other price back make support return only them here update
number let store days find now address card first want information week change cancel service
plan today still issue team sure receive subscription may request status well after through
next make sure these two last system because where report details code thank error again very
billing charge process day month different between already working problem look best
package tracking note quick right message confirm system's fee discount free month's premium
basic upgrade downgrade warranty replace damaged missing wrong size colour color exchange label
courier warehouse stock backorder preorder estimate arrival late early weekend holiday morning
evening region country europe canada mexico japan brazil india australia germany france spain
italy currency euro dollar tax receipt vat statement balance credit debit transfer bank wallet
voucher coupon promo gift loyalty points tier gold silver bronze member login password reset
verify phone sms link expired token session browser mobile app crash slow screen button page
form field upload download attachment photo video manual guide setup install configure connect
bluetooth wifi battery charger cable adapter firmware version release beta feature request
feedback survey rating review complaint escalate manager supervisor callback ticket priority
urgent resolved pending closed reopened assigned transferred queue chat agent bot human
translate language english spanish german french summary analysis quarterly revenue forecast
churn retention cohort segment funnel conversion campaign newsletter unsubscribe consent privacy
gdpr delete export archive audit compliance contract renewal overdue reminder penalty
""".split()
VOCABULARY = list(dict.fromkeys(VOCABULARY))
SEARCH_TEXT = f"{VOCABULARY[180]} {VOCABULARY[240]}"


def _cumulative(n: int) -> list[float]:
    total, out = 0.0, []
    for rank in range(1, n + 1):
        total += 1.0 / rank
        out.append(total)
    return out


_CUM_WEIGHTS = _cumulative(len(VOCABULARY))


# -- generation -------------------------------------------------------------------------------------


class _Generator:
    """Synthetic sessions as the SDK would hand them to a processor: ended ReadableSpans."""

    def __init__(self, seed: int, spans_per_session: int, now_ns: int) -> None:
        self.rng = random.Random(seed)
        self.per_session = spans_per_session
        self.now_ns = now_ns
        self.resources = [
            Resource({"service.name": name, "service.version": "1.4.2", "deployment.environment": "prod"})
            for name in ("support-service", "billing-service", "research-service")
        ]
        self.scope = InstrumentationScope("benchmark.genai", "1.0.0")

    def words(self, low: int, high: int) -> str:
        rng = self.rng
        return " ".join(rng.choices(VOCABULARY, cum_weights=_CUM_WEIGHTS, k=rng.randint(low, high)))

    def session(self) -> list[ReadableSpan]:
        rng = self.rng
        session_id = f"sess-{rng.getrandbits(64):016x}"
        user_id = f"user-{rng.randrange(500):04d}"
        resource = rng.choice(self.resources)
        agent = AGENTS[self.resources.index(resource)]
        traces = max(1, round(self.per_session / 25))
        sizes = [self.per_session // traces + (i < self.per_session % traces) for i in range(traces)]
        cursor = self.now_ns - 2 * HOUR_NS - rng.randrange(30 * DAY_NS - 2 * HOUR_NS)
        spans: list[ReadableSpan] = []
        for size in sizes:
            cursor = self.trace(spans, size, cursor, session_id, user_id, resource, agent)
            cursor += rng.randint(5_000, 120_000) * MS_NS
        return spans

    def trace(
        self,
        out: list[ReadableSpan],
        size: int,
        start: int,
        session_id: str,
        user_id: str,
        resource: Resource,
        agent: str,
    ) -> int:
        """Append one trace of ``size`` spans (children before their parents, as they end); returns
        its end time."""
        rng = self.rng
        trace_id = rng.getrandbits(128)
        root = SpanContext(trace_id, rng.getrandbits(64), False, TraceFlags(1))
        common = {"session.id": session_id, "user.id": user_id}
        cursor = start + rng.randint(1, 20) * MS_NS
        left = size - 1
        while left > 0:
            tools = min(2, left - 1)
            left -= 1 + tools
            cursor = self.llm_call(out, root, tools, cursor, common, resource) + rng.randint(1, 30) * MS_NS
        failed = rng.random() < 0.02
        self.append(
            out,
            f"invoke_agent {agent}",
            root,
            None,
            resource,
            SpanKind.INTERNAL,
            start,
            cursor,
            {**common, "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent},
            failed,
        )
        return cursor

    def llm_call(
        self,
        out: list[ReadableSpan],
        parent: SpanContext,
        tools: int,
        start: int,
        common: dict[str, Any],
        resource: Resource,
    ) -> int:
        rng = self.rng
        ctx = SpanContext(parent.trace_id, rng.getrandbits(64), False, TraceFlags(1))
        model = rng.choice(MODELS)
        cursor = start + rng.randint(300, 3_000) * MS_NS
        for _ in range(tools):
            tool = rng.choice(TOOLS)
            end = cursor + rng.randint(20, 800) * MS_NS
            failed = rng.random() < 0.03
            self.append(
                out,
                f"execute_tool {tool}",
                SpanContext(parent.trace_id, rng.getrandbits(64), False, TraceFlags(1)),
                ctx,
                resource,
                SpanKind.INTERNAL,
                cursor,
                end,
                self.tool_attributes(tool, common),
                failed,
            )
            cursor = end + rng.randint(1, 10) * MS_NS
        end = cursor + rng.randint(200, 2_000) * MS_NS
        self.append(
            out,
            f"chat {model}",
            ctx,
            parent,
            resource,
            SpanKind.CLIENT,
            start,
            end,
            self.llm_attributes(model, common),
            False,
        )
        return end

    def llm_attributes(self, model: str, common: dict[str, Any]) -> dict[str, Any]:
        rng = self.rng
        question = [{"role": "user", "parts": [{"type": "text", "content": self.words(20, 60)}]}]
        answer = [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": self.words(15, 50)}],
                "finish_reason": "stop",
            }
        ]
        return {
            **common,
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": PROVIDERS[model[:3]],
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "gen_ai.request.temperature": 0.2,
            "gen_ai.request.max_tokens": 1024,
            "gen_ai.response.id": f"resp_{rng.getrandbits(64):016x}",
            "gen_ai.response.finish_reasons": ("stop",),
            "gen_ai.usage.input_tokens": rng.randint(200, 4_000),
            "gen_ai.usage.output_tokens": rng.randint(20, 800),
            "gen_ai.input.messages": orjson.dumps(question).decode(),
            "gen_ai.output.messages": orjson.dumps(answer).decode(),
        }

    def tool_attributes(self, tool: str, common: dict[str, Any]) -> dict[str, Any]:
        return {
            **common,
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": f"call_{self.rng.getrandbits(48):012x}",
            "gen_ai.tool.call.arguments": orjson.dumps({"query": self.words(2, 6)}).decode(),
            "gen_ai.tool.call.result": self.words(5, 25),
        }

    def append(
        self,
        out: list[ReadableSpan],
        name: str,
        ctx: SpanContext,
        parent: SpanContext | None,
        resource: Resource,
        kind: SpanKind,
        start: int,
        end: int,
        attributes: dict[str, Any],
        failed: bool,
    ) -> None:
        events: tuple[Event, ...] = ()
        status = Status(StatusCode.UNSET)
        if failed:
            message = self.rng.choice(ERRORS)
            status = Status(StatusCode.ERROR, message)
            kind_, _, text = message.partition(": ")
            events = (
                Event("exception", {"exception.type": kind_, "exception.message": text}, timestamp=end),
            )
        out.append(
            ReadableSpan(
                name=name,
                context=ctx,
                parent=parent,
                resource=resource,
                attributes=attributes,
                events=events,
                kind=kind,
                status=status,
                start_time=start,
                end_time=end,
                instrumentation_scope=self.scope,
            )
        )


def generate(path: str, sessions: int, spans_per_session: int, batch: int, seed: int) -> float:
    """Write the file through ``TraceWriter.write``; returns the seconds it took. The batches are
    made on this thread and written on another, so making and writing overlap."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    gen = _Generator(seed, spans_per_session, time.time_ns())
    writer = TraceWriter(Options.resolve(path, {}))
    pending: list[list[ReadableSpan] | None] = []
    ready = threading.Condition()
    failure: list[BaseException] = []

    def write_loop() -> None:
        while True:
            with ready:
                while not pending:
                    ready.wait()
                spans = pending.pop(0)
                ready.notify_all()
            if spans is None:
                return
            try:
                writer.write(spans)
            except BaseException as exc:  # noqa: BLE001 - reported on the main thread
                failure.append(exc)
                return

    thread = threading.Thread(target=write_loop, name="bench-writer", daemon=True)
    start = time.perf_counter()
    thread.start()
    buffer: list[ReadableSpan] = []
    total = sessions * spans_per_session
    next_report = start + 10
    written = 0

    def hand_over(spans: list[ReadableSpan] | None) -> None:
        with ready:
            while len(pending) >= 2 and not failure:
                ready.wait(1)
            pending.append(spans)
            ready.notify_all()

    for _ in range(sessions):
        buffer.extend(gen.session())
        if len(buffer) >= batch:
            written += len(buffer)
            hand_over(buffer)
            buffer = []
            if failure:
                break
            if time.perf_counter() > next_report:
                elapsed = time.perf_counter() - start
                print(f"  ... {written:,} of {total:,} spans, {elapsed:.0f} s", file=sys.stderr, flush=True)
                next_report += 10
    if buffer and not failure:
        hand_over(buffer)
    hand_over(None)
    thread.join()
    writer.checkpoint(idle=True)
    writer.close()
    if failure:
        raise failure[0]
    return time.perf_counter() - start


def _fingerprint() -> str:
    text = repr([(m.version, m.statements) for m in MIGRATIONS]) + str(GENERATOR_VERSION)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def cached_path(sessions: int, spans_per_session: int, seed: int) -> str:
    name = f"otel-sqlite-query-bench-{sessions}x{spans_per_session}-s{seed}-{_fingerprint()}.db"
    return os.path.join(tempfile.gettempdir(), name)


# -- measuring --------------------------------------------------------------------------------------


@dataclass
class Sample:
    """What the queries draw their arguments from (read once, outside the timings)."""

    sessions: list[str]
    span_ids: list[str]
    oldest: int
    newest: int
    failed_sessions: int
    search_hits: int


def sample(path: str, rng: random.Random) -> Sample:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        ids = [row[0] for row in conn.execute("SELECT session_id FROM sessions")]
        # The sessions of the usual size (all the generated ones; not those a live writer adds).
        usual = conn.execute(
            "SELECT span_count FROM sessions GROUP BY span_count ORDER BY count(*) DESC, 1 DESC LIMIT 1"
        ).fetchone()
        full = [
            row[0]
            for row in conn.execute(
                "SELECT session_id FROM sessions WHERE span_count = ?", (usual[0] if usual else 0,)
            )
        ]
        max_id, oldest, newest = conn.execute(
            "SELECT max(id), min(start_time_unix_nano), max(start_time_unix_nano) FROM spans"
        ).fetchone()
        wanted = [rng.randint(1, max_id or 1) for _ in range(500)]
        marks = ",".join("?" * len(wanted))
        span_ids = [
            row[0] for row in conn.execute(f"SELECT span_id FROM spans WHERE id IN ({marks})", wanted)
        ]
        failed = conn.execute("SELECT count(*) FROM sessions WHERE status = 'failed'").fetchone()[0]
        words = " ".join('"' + w + '"' for w in SEARCH_TEXT.split())
        hits = conn.execute("SELECT count(*) FROM spans_fts WHERE spans_fts MATCH ?", (words,)).fetchone()[0]
    finally:
        conn.close()
    rng.shuffle(full or ids)
    return Sample(full or ids, span_ids, oldest or 0, newest or 0, failed, hits)


@dataclass
class Query:
    label: str
    target_ms: float | None
    run: Callable[[TraceStore, random.Random], Any]


def queries(info: Sample) -> list[Query]:
    def session(rng: random.Random) -> str:
        return rng.choice(info.sessions)

    def window(rng: random.Random) -> tuple[int, int]:
        start = rng.randint(info.oldest, max(info.oldest, info.newest - HOUR_NS))
        return start, start + HOUR_NS

    def by_model(store: TraceStore, rng: random.Random) -> Callable[[], Any]:
        start, end = window(rng)
        model = rng.choice(MODELS)
        return lambda: store.get_traces(model=model, start_time=from_ns(start), end_time=from_ns(end))

    def get_span(store: TraceStore, rng: random.Random) -> Callable[[], Any]:
        wanted = rng.choice(info.span_ids)
        return lambda: store.get_span(wanted)

    def with_session(call: Callable[[TraceStore, str], Any]) -> Callable[..., Callable[[], Any]]:
        def prepare(store: TraceStore, rng: random.Random) -> Callable[[], Any]:
            sid = session(rng)
            return lambda: call(store, sid)

        return prepare

    def fixed(call: Callable[[TraceStore], Any]) -> Callable[[TraceStore, random.Random], Callable[[], Any]]:
        return lambda store, rng: lambda: call(store)

    return [
        Query("get_sessions(limit=50)", 5, fixed(lambda s: s.get_sessions(limit=50))),
        Query("session_tree(session)", 2, with_session(lambda s, sid: s.session_tree(sid))),
        Query("get_traces(model, 1h window)", 20, by_model),
        Query(f"search({SEARCH_TEXT!r})", 50, fixed(lambda s: s.search(SEARCH_TEXT))),
        Query("stats()", 1000, fixed(lambda s: s.stats())),
        Query("get_span(span_id)", None, get_span),
        Query("get_traces(session_id)", None, with_session(lambda s, sid: s.get_traces(session_id=sid))),
        Query("session_summary(session)", None, with_session(lambda s, sid: s.session_summary(sid))),
        Query('get_sessions(status="failed")', None, fixed(lambda s: s.get_sessions(status="failed"))),
    ]


def measure(store: TraceStore, qs: list[Query], repeat: int, seed: int) -> list[tuple[Query, list[float]]]:
    rng = random.Random(seed)
    results = []
    for q in qs:
        q.run(store, rng)()  # warm: the first run reads its pages into the cache
        times = []
        for _ in range(repeat):
            call = q.run(store, rng)  # arguments drawn outside the timing
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1000)
        results.append((q, times))
    return results


def print_table(results: list[tuple[Query, list[float]]]) -> None:
    print(f"{'query':40} {'median ms':>10} {'best ms':>10} {'target ms':>10} {'met':>4}")
    for q, times in results:
        median = statistics.median(times)
        target = f"< {q.target_ms:g}" if q.target_ms is not None else "-"
        met = "-" if q.target_ms is None else ("yes" if median < q.target_ms else "no")
        print(f"{q.label:40} {median:10.2f} {min(times):10.2f} {target:>10} {met:>4}")


# -- plans ------------------------------------------------------------------------------------------

_SPANS_SCAN = re.compile(r"^SCAN (?:spans|s)\b(?: USING (COVERING )?INDEX (\w+))?")
_READS_SPANS = re.compile(r"^(?:SCAN|SEARCH) (?:spans|s)\b")
# Searches that find a handful of spans (by session, trace id, rowid): sorting those is cheap.
_SELECTIVE = re.compile(
    r"^SEARCH (?:spans|s) USING (?:(?:COVERING )?INDEX (?:spans_by_session|sqlite_autoindex_spans_1) "
    r"|INTEGER PRIMARY KEY \(rowid=\?\))"
)


def captured_sql(store: TraceStore, call: Callable[[], Any]) -> list[str]:
    """The statements ``call`` runs on the store's connection, with their values filled in."""
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    try:
        call()
    finally:
        store._conn.set_trace_callback(None)
    queries = [sql for sql in seen if sql.lstrip().upper().startswith(("SELECT", "WITH"))]
    # FTS5 reads its own shadow tables (configuration, segments) with statements of its own.
    return [sql for sql in queries if "'spans_fts_" not in sql]


def plan(conn: sqlite3.Connection, sql: str) -> list[tuple[int, str]]:
    """(depth, detail) of each line of the statement's query plan."""
    depth: dict[int, int] = {0: -1}
    out = []
    for node, parent, _, detail in conn.execute("EXPLAIN QUERY PLAN " + sql):
        depth[node] = depth.get(parent, -1) + 1
        out.append((depth[node], detail))
    return out


def flags(sql: str, lines: list[tuple[int, str]], partial: set[str]) -> dict[int, str]:
    """Line index -> why it is flagged: a scan of spans that reads every row (a table scan, an index
    scan to count or sum, or an ordered walk that a filter may keep going to the end), or a sort of
    rows that did not come from a search by session, trace id or rowid, a full-text match or a
    GROUP BY (sorting every span of a type, name or model)."""
    out = {}
    for i, (_, detail) in enumerate(lines):
        scan = _SPANS_SCAN.match(detail)
        if scan is None:
            continue
        covering, index = scan.groups()
        if index is None:
            out[i] = "FULL TABLE SCAN of spans"
        elif index in partial:
            continue  # reads only the rows of a partial index (open spans, errors)
        elif covering:
            out[i] = "reads every span (covering index scan)"
        elif " WHERE " in sql:
            out[i] = "walks spans in index order until LIMIT rows pass the filter: may read them all"
    bounded = (
        any(_SELECTIVE.match(d) or d.startswith("SCAN spans_fts") for _, d in lines) or " GROUP BY " in sql
    )
    reads_spans = any(_READS_SPANS.match(d) for _, d in lines)
    for i, (_, detail) in enumerate(lines):
        if "USE TEMP B-TREE" in detail and "RIGHT PART" not in detail and reads_spans and not bounded:
            out[i] = "sorts every row found"
    return out


def print_plans(store: TraceStore, qs: list[Query], seed: int) -> int:
    """Prints each query's statements and plans; returns how many lines were flagged."""
    rng = random.Random(seed)
    conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    flagged = 0
    try:
        partial = {
            name
            for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
            if sql and re.search(r"\)\s*WHERE\s", sql)
        }
        for q in qs:
            call = q.run(store, rng)
            print(f"\n{q.label}")
            seen: set[str] = set()
            for sql in captured_sql(store, call):
                short = " ".join(sql.split())
                if short in seen:
                    continue
                seen.add(short)
                lines = plan(conn, sql)
                marks = flags(short, lines, partial)
                flagged += len(marks)
                print(f"  sql: {_abbreviate(short)}")
                for i, (depth, detail) in enumerate(lines):
                    mark = f"   <-- {marks[i]}" if i in marks else ""
                    print(f"    {'  ' * depth}{detail}{mark}")
    finally:
        conn.close()
    return flagged


def _abbreviate(sql: str, width: int = 160) -> str:
    # The long column lists say nothing about the plan.
    sql = re.sub(r"^SELECT s\.span_id, .*? FROM", "SELECT <entry columns> FROM", sql)
    sql = re.sub(r"^SELECT se\.session_id, .*? FROM", "SELECT <session columns> FROM", sql)
    sql = re.sub(r"LEFT JOIN sessions AS se .*? = s\.resource_id", "<entry joins>", sql)
    return sql if len(sql) <= width else sql[: width - 3] + "..."


# -- a concurrent writer ----------------------------------------------------------------------------


def append_forever(path: str, rate: float) -> None:
    """Append spans through SQLiteSpanProcessor until SIGTERM; prints what it made as JSON."""
    from opentelemetry.sdk.trace import TracerProvider

    from otel_sqlite_exporter import SQLiteSpanProcessor

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SQLiteSpanProcessor(path))
    tracer = provider.get_tracer("benchmark.writer")
    gen = _Generator(int(time.time()), 25, time.time_ns())
    rng = gen.rng
    made = 0
    start = time.perf_counter()
    while not stop.is_set():
        common = {
            "session.id": f"live-{rng.getrandbits(64):016x}",
            "user.id": f"user-{rng.randrange(500):04d}",
        }
        agent = rng.choice(AGENTS)
        root = {**common, "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent}
        with tracer.start_as_current_span(f"invoke_agent {agent}", attributes=root):
            for _ in range(8):  # 25 spans a trace, as in the file
                model = rng.choice(MODELS)
                attrs = gen.llm_attributes(model, common)
                with tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attrs):
                    for _ in range(2):
                        tool = rng.choice(TOOLS)
                        attrs = gen.tool_attributes(tool, common)
                        with tracer.start_as_current_span(f"execute_tool {tool}", attributes=attrs):
                            pass
        made += 25
        if made == 25:
            provider.force_flush()
            print("ready", flush=True)
        if rate > 0:
            ahead = made / rate - (time.perf_counter() - start)
            if ahead > 0:
                stop.wait(ahead)
    provider.shutdown()
    print(json.dumps({"spans": made, "seconds": time.perf_counter() - start}), flush=True)


@dataclass
class _Appender:
    process: subprocess.Popen[str]

    def stop(self) -> dict[str, float]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=120)
        return json.loads(out.strip().splitlines()[-1])


def start_appender(path: str, rate: float) -> _Appender:
    process = subprocess.Popen(
        [sys.executable, __file__, "--append", path, "--writer-rate", str(rate)],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline() if process.stdout else ""
    if line.strip() != "ready":
        process.kill()
        raise RuntimeError("the appending process did not start")
    return _Appender(process)


# -- the run ----------------------------------------------------------------------------------------


def scratch_copy(path: str) -> str:
    """A copy of the file for a run that writes to it (the cached file stays as generated)."""
    folder, name = os.path.split(path)
    fd, copy = tempfile.mkstemp(suffix=".db", prefix=f"{name}.live-", dir=folder)
    os.close(fd)
    if os.path.exists(path + "-wal") and os.path.getsize(path + "-wal"):
        src, dst = sqlite3.connect(f"file:{path}?mode=ro", uri=True), sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
    else:
        shutil.copyfile(path, copy)
    return copy


def run_queries(path: str, args: argparse.Namespace, *, plans: bool) -> None:
    info = sample(path, random.Random(args.seed))
    with TraceStore(path) as store:
        stats = store.stats()
        print(
            f"file {path}: {stats.file_bytes / 2**20:,.0f} MiB, {stats.spans:,} spans, "
            f"{stats.traces:,} traces, {stats.sessions:,} sessions ({info.failed_sessions:,} failed); "
            f"search {SEARCH_TEXT!r} matches {info.search_hits:,} spans"
        )
        qs = queries(info)
        print_table(measure(store, qs, args.repeat, args.seed))
        if plans:
            print("\nquery plans (EXPLAIN QUERY PLAN of each statement, values filled in):")
            flagged = print_plans(store, qs, args.seed)
            print(f"\n{flagged} plan line(s) flagged")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--spans-per-session", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--db", help="the trace file to read (generated there when missing)")
    parser.add_argument("--regenerate", action="store_true", help="rebuild the file even if it exists")
    parser.add_argument("--batch", type=int, default=5_000, help="spans per TraceWriter.write()")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--with-writer", action="store_true", help="measure again while a process appends")
    parser.add_argument(
        "--writer-rate", type=float, default=2_000, help="spans/s the appending process makes"
    )
    parser.add_argument("--no-plans", action="store_true", help="skip the EXPLAIN QUERY PLAN listing")
    parser.add_argument("--append", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.append:
        append_forever(args.append, args.writer_rate)
        return
    if args.sessions < 1 or args.spans_per_session < 1 or args.repeat < 1:
        parser.error("--sessions, --spans-per-session and --repeat must be at least 1")

    path = os.path.abspath(args.db or cached_path(args.sessions, args.spans_per_session, args.seed))
    print(f"python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
    if args.regenerate or not os.path.exists(path):
        total = args.sessions * args.spans_per_session
        print(
            f"generating {total:,} spans ({args.sessions:,} sessions x {args.spans_per_session}) ...",
            flush=True,
        )
        seconds = generate(path, args.sessions, args.spans_per_session, args.batch, args.seed)
        print(f"generated {total:,} spans in {seconds:.1f} s ({total / seconds:,.0f} spans/s)")
    else:
        print("reusing the file (--regenerate rebuilds it)")

    print(f"\nidle file, {args.repeat} repetitions each (after one warm-up run)")
    run_queries(path, args, plans=not args.no_plans)

    if args.with_writer:
        copy = scratch_copy(path)
        try:
            rate = "as fast as it can" if args.writer_rate <= 0 else f"{args.writer_rate:,.0f} spans/s"
            appender = start_appender(copy, args.writer_rate)
            try:
                print(f"\nwhile another process appends through SQLiteSpanProcessor ({rate}), on a copy")
                run_queries(copy, args, plans=False)
            finally:
                made = appender.stop()
            print(f"the appending process made {made['spans']:,.0f} spans in {made['seconds']:.1f} s")
        finally:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(copy + suffix):
                    os.remove(copy + suffix)


if __name__ == "__main__":
    main()
