"""session(): group every span started inside a block (any thread or task that inherits the
OpenTelemetry context) into one session, and record the block's task, user and outcome."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, TypeVar

from opentelemetry import context as otel_context

from otel_sqlite_exporter._exceptions import ConfigurationError
from otel_sqlite_exporter._writer import SessionEvent

SESSION_ATTRIBUTE = "session.id"
USER_ATTRIBUTE = "user.id"
_CONTEXT_KEY = otel_context.create_key("otel_sqlite_exporter.session")

F = TypeVar("F", bound=Callable[..., Any])


class SessionListener(Protocol):
    def session_event(self, event: SessionEvent) -> None: ...


# Processors that record session blocks; weak so an abandoned processor is not kept alive.
_listeners: weakref.WeakSet[Any] = weakref.WeakSet()
# Blocks open in any thread or task: while there are none, span starts skip the context lookup.
_open_blocks = 0
_open_lock = threading.Lock()


def _new_lock_in_child() -> None:
    # A block may have been entering or leaving in another thread at the moment of fork.
    global _open_lock
    _open_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def any_open() -> bool:
    return _open_blocks > 0


def add_listener(listener: SessionListener) -> None:
    _listeners.add(listener)


def remove_listener(listener: SessionListener) -> None:
    _listeners.discard(listener)


def current_session(parent_context: otel_context.Context | None = None) -> session | None:
    """The innermost session() block active in the given (or current) context."""
    return otel_context.get_value(_CONTEXT_KEY, parent_context)  # type: ignore[return-value]


class session:  # noqa: N801 - a context manager used like a function, as contextlib's are
    """Group every span started inside into one session.

    >>> with session(task="answer a question", user_id="alice") as s:
    ...     ...  # spans started here carry s.session_id

    Usable as ``with``, ``async with`` and as a decorator (a new session per call unless
    ``session_id`` is given). The session row is completed when the block exits, failed when it
    raised, cancelled when it was cancelled or interrupted.
    """

    def __init__(self, session_id: str | None = None, *, task: str | None = None, user_id: str | None = None):
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise ConfigurationError(f"session_id must be a non-empty string, got {session_id!r}")
        self._fixed_id = session_id is not None
        self.session_id: str = session_id or uuid.uuid4().hex
        self.task = task
        self.user_id = user_id
        self._tokens: list[object] = []

    def __repr__(self) -> str:
        return f"session({self.session_id!r}, task={self.task!r}, user_id={self.user_id!r})"

    def __enter__(self) -> session:
        global _open_blocks
        with _open_lock:
            _open_blocks += 1
        self._tokens.append(otel_context.attach(otel_context.set_value(_CONTEXT_KEY, self)))
        self._emit(
            SessionEvent("open", self.session_id, time.time_ns(), task=self.task, user_id=self.user_id)
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            outcome = "completed"
        elif issubclass(exc_type, (asyncio.CancelledError, KeyboardInterrupt)):
            outcome = "cancelled"
        else:
            outcome = "failed"
        self._emit(SessionEvent("close", self.session_id, time.time_ns(), task=self.task, outcome=outcome))
        otel_context.detach(self._tokens.pop())  # type: ignore[arg-type]
        global _open_blocks
        with _open_lock:
            _open_blocks -= 1

    async def __aenter__(self) -> session:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        def fresh() -> session:
            return session(self.session_id if self._fixed_id else None, task=self.task, user_id=self.user_id)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async with fresh():
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with fresh():
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]

    @staticmethod
    def _emit(event: SessionEvent) -> None:
        for listener in list(_listeners):
            listener.session_event(event)
