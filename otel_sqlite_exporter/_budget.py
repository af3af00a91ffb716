"""Budgets: per-session token and cost limits, tracked as LLM spans end (skeleton; see TokenBudget)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        self.warn_ratio = warn_ratio
        self.on_warning = on_warning
        self.on_exceeded = on_exceeded
        self.count = count
