"""Fork safety: no writer thread may be inside SQLite when the process forks.

A thread that is inside SQLite holds SQLite's own mutexes; a child forked at that moment inherits
them locked and hangs at its first open. So fork waits (``before``) until the writer is between
calls, and the child (``after_in_child``) starts with fresh threads and its own connection.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_fork(
    owner: T,
    *,
    before: Callable[[T], None],
    after_in_parent: Callable[[T], None],
    after_in_child: Callable[[T], None],
) -> None:
    """Run the hooks for ``owner`` around every fork, for as long as ``owner`` is alive."""
    if not hasattr(os, "register_at_fork"):
        return
    ref = weakref.ref(owner)

    def call(hook: Callable[[T], None]) -> Callable[[], None]:
        def run() -> None:
            alive = ref()
            if alive is not None:
                hook(alive)

        return run

    os.register_at_fork(
        before=call(before), after_in_parent=call(after_in_parent), after_in_child=call(after_in_child)
    )
