"""Budgets: per-session token and cost limits, tracked as LLM spans end.

``TokenBudget`` is what the application configures. Each processor or exporter given one keeps its
own ``BudgetTracker``, which counts usage per session on the thread that ends the spans, calls the
budget's callbacks when a session crosses its warning ratio or its limit, and hands the writer
``BudgetMark`` records so the crossing is stored beside the spans.

Usage is read the way the writer reads it (the same keys, the same parsing, the same pricing) and
counted once the way the rollups count it: a span's own usage counts only when no span beneath it
carries usage. The tracker only sees spans as they end, so it learns "beneath" from the children,
which end first; see docs/budgets.md for the cases where a live count can differ from the stored one.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from otel_sqlite_exporter._exceptions import ConfigurationError
from otel_sqlite_exporter._normalize import (
    CACHE_READ_KEYS,
    CACHE_WRITE_KEYS,
    COST_KEYS,
    INPUT_TOKEN_KEYS,
    MODEL_KEYS,
    OUTPUT_TOKEN_KEYS,
    REASONING_KEYS,
    SESSION_KEYS,
)
from otel_sqlite_exporter._pricing import PriceTable

logger = logging.getLogger("otel_sqlite_exporter")

#: What ``TokenBudget(count=...)`` may count, and the token columns each one adds up.
COUNTS: Mapping[str, tuple[str, ...]] = {
    "total": ("input_tokens", "output_tokens"),
    "input": ("input_tokens",),
    "output": ("output_tokens",),
    "reasoning": ("reasoning_tokens",),
    "cache_read": ("cache_read_tokens",),
    "cache_write": ("cache_write_tokens",),
}
#: The values of ``sessions.budget_status`` (and of ``TraceSession.budget_status``), lowest first.
BUDGET_STATUSES = ("ok", "warning", "exceeded")

# The token columns and their keys (best first), in the order PriceTable.cost() lists them.
_TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
_TOKEN_KEYS = (INPUT_TOKEN_KEYS, OUTPUT_TOKEN_KEYS, CACHE_READ_KEYS, CACHE_WRITE_KEYS, REASONING_KEYS)
# A span with none of these keys has no usage: most spans are dismissed by this one set operation.
_USAGE_KEYS = frozenset(key for keys in _TOKEN_KEYS for key in keys) | frozenset(COST_KEYS)

# Memory stays bounded however long the process runs: the least recently used sessions, and the
# oldest traces and marks, are forgotten first. A forgotten session starts again from zero.
MAX_SESSIONS = 10_000
MAX_TRACES = 65_536
MAX_MARKS = 65_536
# Spans counted recently, kept so that a child with usage ending after its parent can take the
# parent's usage back out (the parent only repeated it).
MAX_COUNTED = 4_096

_INT_LIMIT = 10**18  # the writer's bound for a token count
_REAL_PREFIX = re.compile(r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?")
_REAL_TEXT = re.compile(r"\d[0-9.eE+-]*")


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """What a budget callback receives: a session crossed its warning ratio or its limit."""

    session_id: str
    status: str  # "warning" or "exceeded"
    used: float
    limit: float
    ratio: float
    measure: str  # "tokens" or "cost_usd"


class TokenBudget:
    """Per-session limits on tokens and/or cost, with a warning before the limit.

    >>> def stop(alert: BudgetAlert) -> None:
    ...     print(f"session {alert.session_id} used {alert.used} of {alert.limit}")
    >>> budget = TokenBudget(50_000, max_cost_usd=0.50, on_exceeded=stop)
    >>> # SQLiteSpanProcessor("traces.db", budget=budget) or configure("traces.db", budget=budget)

    ``max_tokens`` limits the tokens ``count`` names ("total" is input plus output; "input",
    "output", "reasoning", "cache_read" and "cache_write" count one kind). ``max_cost_usd`` limits
    the cost: a span's explicit cost attribute, else its tokens priced with the processor's
    ``prices``. With both, the session's status is the worse of the two.

    A session reaches "warning" when its usage is at least ``warn_ratio`` of a limit and
    "exceeded" when it is over the limit. Each callback is called at most once per session, on the
    thread that ended the span that crossed, with a :class:`BudgetAlert`; a session that crosses
    both thresholds with one span gets ``on_exceeded`` only. A callback that raises is logged and
    the application goes on; with no callback for a status, a warning is logged instead.
    """

    __slots__ = ("count", "max_cost_usd", "max_tokens", "on_exceeded", "on_warning", "warn_ratio")

    def __init__(
        self,
        max_tokens: int | None = None,
        *,
        max_cost_usd: float | None = None,
        warn_ratio: float = 0.8,
        on_warning: Callable[[BudgetAlert], Any] | None = None,
        on_exceeded: Callable[[BudgetAlert], Any] | None = None,
        count: str = "total",
    ) -> None:
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise ConfigurationError(f"TokenBudget max_tokens={max_tokens!r}: expected a whole number >= 1")
        if max_cost_usd is not None and (
            isinstance(max_cost_usd, bool)
            or not isinstance(max_cost_usd, (int, float))
            or not math.isfinite(max_cost_usd)
            or max_cost_usd <= 0
        ):
            raise ConfigurationError(
                f"TokenBudget max_cost_usd={max_cost_usd!r}: expected a finite number of US dollars > 0"
            )
        if max_tokens is None and max_cost_usd is None:
            raise ConfigurationError("TokenBudget needs max_tokens, max_cost_usd or both")
        if (
            isinstance(warn_ratio, bool)
            or not isinstance(warn_ratio, (int, float))
            or not 0 < warn_ratio <= 1
        ):
            raise ConfigurationError(
                f"TokenBudget warn_ratio={warn_ratio!r}: expected a number above 0 and at most 1"
            )
        for name, callback in (("on_warning", on_warning), ("on_exceeded", on_exceeded)):
            if callback is not None and not callable(callback):
                raise ConfigurationError(
                    f"TokenBudget {name}={callback!r}: expected a callable taking a BudgetAlert, or None"
                )
        if count not in COUNTS:
            raise ConfigurationError(f"TokenBudget count={count!r}: expected one of {', '.join(COUNTS)}")
        self.max_tokens = max_tokens
        self.max_cost_usd = None if max_cost_usd is None else float(max_cost_usd)
        self.warn_ratio = float(warn_ratio)
        self.on_warning = on_warning
        self.on_exceeded = on_exceeded
        self.count = count

    def __repr__(self) -> str:
        limits = [f"max_tokens={self.max_tokens!r}"] if self.max_tokens is not None else []
        if self.max_cost_usd is not None:
            limits.append(f"max_cost_usd={self.max_cost_usd!r}")
        return f"TokenBudget({', '.join(limits)}, warn_ratio={self.warn_ratio!r}, count={self.count!r})"


@dataclass(frozen=True, slots=True)
class BudgetMark:
    """For the writer: raise a session's ``budget_status`` and, for a crossing, add a span event.

    It travels in the write queue behind the span that crossed, and is applied after that batch's
    spans are stored.
    """

    session_id: str
    status: str  # ok, warning or exceeded
    trace_id: str | None = None  # the crossing span (hex), None for "ok"
    span_id: str | None = None
    event: str | None = None  # the span event, as JSON in the layout of the events column


class _SessionUsage:
    __slots__ = ("cost", "rank", "tokens")

    def __init__(self) -> None:
        self.tokens = 0
        self.cost = 0.0
        self.rank = 0


class BudgetTracker:
    """One processor's (or exporter's) live count of a budget, per session. Thread-safe.

    ``learn`` and ``observe`` run on application threads, so they read the span with a few
    dictionary look-ups, hold the lock only to update counters, and never raise: a failure is
    logged once and the span is skipped.
    """

    def __init__(self, budget: TokenBudget, prices: PriceTable) -> None:
        self.budget = budget
        self._prices = prices
        self._measured = tuple(_TOKEN_COLUMNS.index(column) for column in COUNTS[budget.count])
        self._lock = threading.Lock()
        self._sessions: collections.OrderedDict[str, _SessionUsage] = collections.OrderedDict()
        # Ordered, so the oldest entries are dropped first, in constant time (a plain dict would scan
        # the slots its earlier deletions left empty).
        self._trace_sessions: collections.OrderedDict[int, str] = collections.OrderedDict()
        # (trace id, span id) of spans not ended yet with usage beneath them.
        self._marked: collections.OrderedDict[tuple[int, int], bool] = collections.OrderedDict()
        self._counted: collections.OrderedDict[tuple[int, int], tuple[str, int, float]] = (
            collections.OrderedDict()
        )
        self._reported: set[str] = set()

    # -- the application threads -----------------------------------------------------------------

    def track(self, session_id: str) -> BudgetMark | None:
        """A session() block opened: the session is tracked from now on ("ok" in the store)."""
        with self._lock:
            if session_id in self._sessions:
                return None
            self._session(session_id)
        return BudgetMark(session_id, "ok")

    def learn(self, span: Any) -> None:
        """A span started: the first session key seen in a trace names the trace's session."""
        try:
            trace_id = span.context.trace_id
            if trace_id in self._trace_sessions:
                return
            found = _text_at(_attribute_dict(span).get, SESSION_KEYS)
            if found is not None:
                with self._lock:
                    self._remember_trace(trace_id, found)
        except Exception:  # noqa: BLE001 - tracking must never break the traced application
            self._report("learn", "could not read a starting span for the budget")

    def observe(self, span: Any) -> tuple[list[BudgetMark], list[BudgetAlert]] | None:
        """A span ended: count its usage. Returns the marks to write and the alerts to deliver
        (see :meth:`notify`), or None when nothing changed for the store or the callbacks."""
        try:
            return self._observe(span)
        except Exception:  # noqa: BLE001 - tracking must never break the traced application
            self._report("observe", "could not count an ended span against the budget")
            return None

    def notify(self, alerts: Iterable[BudgetAlert]) -> None:
        """Call the budget's callbacks; one that raises is logged (once) and never propagates."""
        for alert in alerts:
            name = "on_warning" if alert.status == "warning" else "on_exceeded"
            callback = getattr(self.budget, name)
            if callback is None:
                logger.warning(
                    "otel-sqlite-exporter: session %s %s its budget: %s of %s %s (%.0f%%)",
                    alert.session_id,
                    "exceeded" if alert.status == "exceeded" else "is near",
                    _amount(alert.used, alert.measure),
                    _amount(alert.limit, alert.measure),
                    "tokens" if alert.measure == "tokens" else "USD",
                    alert.ratio * 100,
                )
                continue
            try:
                callback(alert)
            except Exception:  # a callback's failure is not the application's
                if name not in self._reported:
                    self._reported.add(name)
                    logger.exception(
                        "otel-sqlite-exporter: the budget's %s callback raised (the application goes "
                        "on; later failures of it are logged at debug level)",
                        name,
                    )
                else:
                    logger.debug("otel-sqlite-exporter: the budget's %s callback raised", name, exc_info=True)

    def after_fork(self) -> None:
        """In a forked child: another thread may have held the lock at the fork."""
        self._lock = threading.Lock()

    # -- counting --------------------------------------------------------------------------------

    def _observe(self, span: Any) -> tuple[list[BudgetMark], list[BudgetAlert]] | None:
        ctx = span.context
        attrs = _attribute_dict(span)
        key = (ctx.trace_id, ctx.span_id)
        parent = span.parent
        # A parent in another process is not in this process's tree (the store treats the span as
        # a root too).
        parent_key = None if parent is None or parent.is_remote else (ctx.trace_id, parent.span_id)
        usage = None if _USAGE_KEYS.isdisjoint(attrs) else self._usage(attrs)
        if usage is None:
            if key in self._marked:
                with self._lock:
                    if self._marked.pop(key, False):
                        self._mark(parent_key)
            return None
        tokens, cost = usage
        session_id = self._trace_sessions.get(ctx.trace_id)
        named = None if session_id is not None else _text_at(attrs.get, SESSION_KEYS)
        with self._lock:
            self._mark(parent_key)
            if self._marked.pop(key, False):
                return None  # a span beneath it carried this usage already
            if named is not None:
                session_id = named
                self._remember_trace(ctx.trace_id, named)
            elif session_id is None:
                # Not remembered: a span of the trace may still name its session, as in the store.
                session_id = f"{ctx.trace_id:032x}"
            new = session_id not in self._sessions
            state = self._session(session_id)
            state.tokens += tokens
            state.cost += cost
            self._counted[key] = (session_id, tokens, cost)
            if len(self._counted) > MAX_COUNTED:
                self._counted.popitem(last=False)
            rank, measure, used, limit = self._status(state)
            if rank <= state.rank:
                return ([BudgetMark(session_id, "ok")], []) if new else None
            state.rank = rank
        status = BUDGET_STATUSES[rank]
        ratio = used / limit
        alert = BudgetAlert(session_id, status, used, limit, ratio, measure)
        event = {
            "name": f"budget.{status}",
            "time_unix_nano": span.end_time,
            "attributes": {
                "budget.used": used,
                "budget.limit": limit,
                "budget.ratio": round(ratio, 6),
                "budget.measure": measure,
            },
        }
        mark = BudgetMark(
            session_id, status, f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", orjson.dumps(event).decode()
        )
        return [mark], [alert]

    def _status(self, state: _SessionUsage) -> tuple[int, str, float, float]:
        """The session's rank and the measure behind it: of two, the worse (on a tie, the fuller)."""
        budget = self.budget
        warn = budget.warn_ratio
        rank, ratio = -1, -1.0
        measure, used, limit = "tokens", 0.0, 1.0
        if budget.max_tokens is not None:
            used, limit = state.tokens, budget.max_tokens
            ratio = used / limit
            rank = 2 if used > limit else 1 if ratio >= warn else 0
        if budget.max_cost_usd is not None:
            cost_ratio = state.cost / budget.max_cost_usd
            cost_rank = 2 if state.cost > budget.max_cost_usd else 1 if cost_ratio >= warn else 0
            if (cost_rank, cost_ratio) > (rank, ratio):
                rank, ratio = cost_rank, cost_ratio
                measure, used, limit = "cost_usd", state.cost, budget.max_cost_usd
        return rank, measure, used, limit

    def _usage(self, attrs: Mapping[str, Any]) -> tuple[int, float] | None:
        """The span's (tokens, cost) as the budget counts them; None when it carries no usage.

        Runs for every LLM span on the application thread: it reads only what the budget needs,
        and the rest only to tell whether the span has usage at all (as the store's has_usage).
        """
        get = attrs.get
        if self.budget.max_cost_usd is None:
            tokens, found = 0, False
            for slot in self._measured:
                value = _count_at(get, _TOKEN_KEYS[slot])
                if value is not None:
                    tokens += value
                    found = True
            if not found and not self._other_usage(get):
                return None
            return tokens, 0.0  # cost is not budgeted: not priced
        every = [_count_at(get, keys) for keys in _TOKEN_KEYS]
        cost = _cost_at(get)
        if cost is None:
            if every.count(None) == len(every):
                return None
            model = _text_at(get, MODEL_KEYS)
            input_tokens, output_tokens, cache_read, cache_write, reasoning = every
            cost = (
                self._prices.cost(
                    model,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    cache_read_tokens=cache_read,
                    cache_write_tokens=cache_write,
                    reasoning_tokens=reasoning,
                )
                or 0.0  # an unknown model adds no known cost
            )
        tokens = 0
        for slot in self._measured:
            tokens += every[slot] or 0
        return tokens, cost

    def _other_usage(self, get: Callable[[str], Any]) -> bool:
        return _cost_at(get) is not None or any(
            _count_at(get, keys) is not None
            for slot, keys in enumerate(_TOKEN_KEYS)
            if slot not in self._measured
        )

    # -- bounded state (callers hold the lock) ---------------------------------------------------

    def _session(self, session_id: str) -> _SessionUsage:
        state = self._sessions.get(session_id)
        if state is None:
            state = self._sessions[session_id] = _SessionUsage()
            if len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(session_id)
        return state

    def _remember_trace(self, trace_id: int, session_id: str) -> None:
        if trace_id not in self._trace_sessions:
            self._trace_sessions[trace_id] = session_id
            if len(self._trace_sessions) > MAX_TRACES:
                self._trace_sessions.popitem(last=False)

    def _mark(self, parent_key: tuple[int, int] | None) -> None:
        """The parent has usage beneath it: its own usage (if any) is a repeat."""
        if parent_key is None:
            return
        counted = self._counted.pop(parent_key, None)
        if counted is not None:
            # The parent ended first and was counted: take its repeated usage back out.
            session_id, tokens, cost = counted
            state = self._sessions.get(session_id)
            if state is not None:
                state.tokens -= tokens
                state.cost -= cost
            return
        self._marked[parent_key] = True
        if len(self._marked) > MAX_MARKS:
            self._marked.popitem(last=False)

    def _report(self, what: str, message: str) -> None:
        if what not in self._reported:
            self._reported.add(what)
            logger.exception("otel-sqlite-exporter: %s (reported once; tracing goes on)", message)


# -- reading attributes as the writer does (see _count and _cost in _writer) ---------------------------


def _attribute_dict(span: Any) -> Mapping[str, Any]:
    # The SDK's spans keep a plain dict inside BoundedAttributes; the public property wraps it in a
    # proxy. Only look-ups are made on a running span's dict, which are atomic.
    inner = getattr(getattr(span, "_attributes", None), "_dict", None)
    if type(inner) is dict:
        return inner
    return span.attributes or {}


def _count_at(get: Callable[[str], Any], keys: tuple[str, ...]) -> int | None:
    """The first key holding a usable value wins, parsed (None when it does not parse), as in SQL."""
    for key in keys:
        value = get(key)
        if value is None:
            continue
        if type(value) is int:  # nearly always
            return value if 0 <= value < _INT_LIMIT else None
        if not _skipped(value):
            return _count(value)
    return None


def _cost_at(get: Callable[[str], Any]) -> float | None:
    for key in COST_KEYS:
        value = get(key)
        if value is not None and not _skipped(value):
            return _cost(value)
    return None


def _text_at(get: Callable[[str], Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = get(key)
        if value is not None and not _skipped(value):
            return str(value)
    return None


def _skipped(value: Any) -> bool:
    # Passed over as SQL passes them (the next key is tried): empty text, sequences, and the
    # floats JSON stores as null.
    if isinstance(value, float):
        return not math.isfinite(value)
    return value == "" or isinstance(value, (tuple, list))


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < _INT_LIMIT else None
    if isinstance(value, float):  # a whole number only: 2.5 tokens is no count
        return int(value) if 0 <= value < _INT_LIMIT and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip(" ")
        if text.isascii() and text.isdigit() and len(text) < 19:
            return int(text)
    return None


def _cost(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        # Text of digits and number signs only; SQLite then reads the longest number it starts with.
        text = value.strip(" ")
        if _REAL_TEXT.fullmatch(text):
            return float(_REAL_PREFIX.match(text).group())  # type: ignore[union-attr]
    return None


def _amount(value: float, measure: str) -> str:
    return f"{value:,.0f}" if measure == "tokens" else f"{value:.4f}"
