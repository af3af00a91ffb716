"""USD cost of one LLM call from its token counts.

Token counts follow the OpenTelemetry GenAI semantic conventions:

* ``input_tokens`` (``gen_ai.usage.input_tokens``) INCLUDES cache-read and cache-write tokens.
* ``output_tokens`` (``gen_ai.usage.output_tokens``) INCLUDES reasoning tokens.

So the cost is::

    (input - cache_read - cache_write) * input_price
    + cache_read * cache_read_price + cache_write * cache_write_price
    + (output - reasoning) * output_price + reasoning * reasoning_price

with prices in USD per one million tokens. The uncached input and the non-reasoning output are clamped at
zero, so an instrumentation that reports Anthropic's raw ``input_tokens`` (which exclude cache tokens)
under-counts the uncached part instead of producing a negative cost.

Missing counts are treated as 0; if no count at all is given, or the model is unknown, the cost is ``None``
(never 0, so "free" and "unknown" stay distinguishable).

Model names are matched case-insensitively, first exactly, then after removing provider prefixes
(``openai/``, ``models/``, Bedrock's ``us.anthropic.``), ``@``/``:`` suffixes and date/version suffixes,
and finally by the longest bundled name that is a ``-``-separated prefix of the name. That last step can
misprice specialised variants (audio, realtime, image output); add an explicit entry for those. Fine-tuned
models (``ft:...``) only match an exact entry, since they bill differently from their base model.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType

__all__ = ["DEFAULT_PRICES", "ModelPrice", "PriceTable"]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per one million tokens."""

    input: float
    output: float
    cache_read: float | None = None  # None -> priced as input
    cache_write: float | None = None  # None -> priced as input
    reasoning: float | None = None  # None -> priced as output

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in _OPTIONAL_FIELDS:
                continue
            # bool is an int subclass; True as a price is certainly a mistake. ValueError (not TypeError) so
            # callers validating user configuration catch every bad price with one exception type.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be a finite non-negative number, got {value!r}")


_REQUIRED_FIELDS = frozenset({"input", "output"})
_OPTIONAL_FIELDS = frozenset({"cache_read", "cache_write", "reasoning"})
_ALL_FIELDS = _REQUIRED_FIELDS | _OPTIONAL_FIELDS


def _anthropic(input_price: float, output_price: float) -> ModelPrice:
    # 5-minute cache writes cost 1.25x input, cache hits 0.1x; rounding hides float noise
    # like 0.08000000000000002.
    return ModelPrice(
        input=input_price,
        output=output_price,
        cache_read=round(input_price * 0.1, 6),
        cache_write=round(input_price * 1.25, 6),
    )


# List prices in USD per 1M tokens, taken from the public price pages of OpenAI
# (openai.com/api/pricing), Anthropic (anthropic.com/pricing) and Google
# (ai.google.dev/gemini-api/docs/pricing)
# as of 2025-11. Only the standard (non-batch, non-priority) tier for short prompts is modelled: Gemini's
# >200k-token tier, Anthropic's 1-hour cache writes (2x input) and long-context Sonnet pricing are not.
# Prices change; override or extend them with PriceTable({"model": {"input": ..., "output": ...}}).
_DEFAULTS: dict[str, ModelPrice] = {
    # OpenAI. Reasoning tokens are billed as output, so `reasoning` stays None.
    "gpt-5.1": ModelPrice(1.25, 10.0, cache_read=0.125),
    "gpt-5.1-codex-mini": ModelPrice(0.25, 2.0, cache_read=0.025),
    "gpt-5": ModelPrice(1.25, 10.0, cache_read=0.125),
    "gpt-5-mini": ModelPrice(0.25, 2.0, cache_read=0.025),
    "gpt-5-nano": ModelPrice(0.05, 0.40, cache_read=0.005),
    "gpt-5-pro": ModelPrice(15.0, 120.0),
    "gpt-4.1": ModelPrice(2.0, 8.0, cache_read=0.50),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60, cache_read=0.10),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40, cache_read=0.025),
    "gpt-4o": ModelPrice(2.50, 10.0, cache_read=1.25),
    # The first gpt-4o snapshot kept its launch price; without this it would normalise to "gpt-4o".
    "gpt-4o-2024-05-13": ModelPrice(5.0, 15.0),
    "gpt-4o-mini": ModelPrice(0.15, 0.60, cache_read=0.075),
    "o1": ModelPrice(15.0, 60.0, cache_read=7.50),
    "o1-pro": ModelPrice(150.0, 600.0),
    "o1-mini": ModelPrice(1.10, 4.40, cache_read=0.55),
    "o3": ModelPrice(2.0, 8.0, cache_read=0.50),
    "o3-pro": ModelPrice(20.0, 80.0),
    "o3-mini": ModelPrice(1.10, 4.40, cache_read=0.55),
    "o3-deep-research": ModelPrice(10.0, 40.0, cache_read=2.50),
    "o4-mini": ModelPrice(1.10, 4.40, cache_read=0.275),
    "o4-mini-deep-research": ModelPrice(2.0, 8.0, cache_read=0.50),
    "gpt-4-turbo": ModelPrice(10.0, 30.0),
    # Preview snapshots of gpt-4-turbo would otherwise prefix-match the 3x dearer "gpt-4".
    "gpt-4-1106-preview": ModelPrice(10.0, 30.0),
    "gpt-4-0125-preview": ModelPrice(10.0, 30.0),
    "gpt-4-vision-preview": ModelPrice(10.0, 30.0),
    "gpt-4": ModelPrice(30.0, 60.0),
    "gpt-4-32k": ModelPrice(60.0, 120.0),
    "gpt-3.5-turbo": ModelPrice(0.50, 1.50),
    "gpt-3.5-turbo-instruct": ModelPrice(1.50, 2.0),
    "text-embedding-3-small": ModelPrice(0.02, 0.0),
    "text-embedding-3-large": ModelPrice(0.13, 0.0),
    "text-embedding-ada-002": ModelPrice(0.10, 0.0),
    # Anthropic.
    "claude-opus-4-5": _anthropic(5.0, 25.0),
    "claude-opus-4-1": _anthropic(15.0, 75.0),
    "claude-opus-4": _anthropic(15.0, 75.0),
    "claude-sonnet-4-5": _anthropic(3.0, 15.0),
    "claude-sonnet-4": _anthropic(3.0, 15.0),
    "claude-haiku-4-5": _anthropic(1.0, 5.0),
    "claude-3-7-sonnet": _anthropic(3.0, 15.0),
    "claude-3-5-sonnet": _anthropic(3.0, 15.0),
    "claude-3-5-haiku": _anthropic(0.80, 4.0),
    "claude-3-opus": _anthropic(15.0, 75.0),
    "claude-3-sonnet": _anthropic(3.0, 15.0),
    # Published as 0.30 / 0.03 rather than the exact 1.25x / 0.1x of 0.25.
    "claude-3-haiku": ModelPrice(0.25, 1.25, cache_read=0.03, cache_write=0.30),
    # Google Gemini (prompts <= 200k tokens, 128k for 1.5; text/image/video input). Cache reads as
    # published; cache storage is billed per hour, not per token, so cache_write stays None.
    "gemini-3-pro": ModelPrice(2.0, 12.0, cache_read=0.20),
    "gemini-2.5-pro": ModelPrice(1.25, 10.0, cache_read=0.125),
    "gemini-2.5-flash": ModelPrice(0.30, 2.50, cache_read=0.03),
    "gemini-2.5-flash-lite": ModelPrice(0.10, 0.40, cache_read=0.01),
    "gemini-2.0-flash": ModelPrice(0.10, 0.40, cache_read=0.025),
    "gemini-2.0-flash-lite": ModelPrice(0.075, 0.30),
    "gemini-1.5-pro": ModelPrice(1.25, 5.0, cache_read=0.3125),
    "gemini-1.5-flash": ModelPrice(0.075, 0.30, cache_read=0.01875),
    "gemini-1.5-flash-8b": ModelPrice(0.0375, 0.15, cache_read=0.01),
}

DEFAULT_PRICES: Mapping[str, ModelPrice] = MappingProxyType(_DEFAULTS)

# "bedrock/us.anthropic.claude-..." keeps only the text after the last "/", then drops dotted
# all-letter vendor/region prefixes ("us.", "anthropic.") but not versions like "gpt-4.1".
_DOTTED_PREFIX = re.compile(r"^(?:[a-z]+(?:-[a-z]+)*\.)+(?=.)")
_VERSION_SUFFIXES = (
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # OpenAI: gpt-4o-2024-08-06
    re.compile(r"-\d{8}$"),  # Anthropic: claude-sonnet-4-5-20250929
    re.compile(r"-v\d+(?:\.\d+)?$"),  # Bedrock/Vertex: -v1, -v2
    re.compile(r"-latest$"),
    re.compile(r"-\d{3,4}$"),  # Gemini -001/-002, OpenAI -0613/-0125
)
# Model names are low-cardinality in practice; the cap only guards against unbounded garbage input.
_CACHE_LIMIT = 4096


def _strip_provider(name: str) -> str | None:
    name = name.rsplit("/", 1)[-1]
    # A fine-tune bills differently from its base model; only an exact entry in the table prices it.
    if name.startswith("ft:"):
        return None
    name = _DOTTED_PREFIX.sub("", name)
    # Vertex "claude-3-5-sonnet@20240620", Bedrock "...-v1:0", Ollama "llama3:latest".
    for sep in ("@", ":"):
        head = name.split(sep, 1)[0]
        if head:
            name = head
    if name.startswith("claude-"):
        # OpenRouter-style "claude-3.5-sonnet" / "claude-sonnet-4.5" use dots where Anthropic uses dashes.
        name = name.replace(".", "-")
    return name


def _strip_version(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for pattern in _VERSION_SUFFIXES:
            stripped = pattern.sub("", name)
            if stripped and stripped != name:
                name, changed = stripped, True
    return name


def _coerce_price(model: str, value: object) -> ModelPrice:
    if isinstance(value, ModelPrice):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(
            f"price for model {model!r} must be a ModelPrice or a mapping, got {type(value).__name__}"
        )
    unknown = sorted(str(k) for k in value if k not in _ALL_FIELDS)
    if unknown:
        raise ValueError(
            f"price for model {model!r} has unknown keys {unknown}; allowed: {sorted(_ALL_FIELDS)}"
        )
    missing = sorted(_REQUIRED_FIELDS - set(value))
    if missing:
        raise ValueError(f"price for model {model!r} is missing required keys {missing}")
    try:
        price = ModelPrice(**value)
    except ValueError as exc:
        raise ValueError(f"price for model {model!r}: {exc}") from None
    # Store floats so JSON integers and floats compare and print the same way.
    return ModelPrice(
        **{
            f.name: None if getattr(price, f.name) is None else float(getattr(price, f.name))
            for f in fields(price)
        }
    )


def _count(value: int | None) -> int:
    return 0 if value is None else max(0, value)


class PriceTable:
    """Per-model prices plus the lookup and cost computation."""

    __slots__ = ("_cache", "_keys_longest_first", "_prices")

    def __init__(
        self,
        prices: Mapping[str, ModelPrice | Mapping[str, float]] | None = None,
        *,
        include_defaults: bool = True,
    ) -> None:
        table: dict[str, ModelPrice] = dict(_DEFAULTS) if include_defaults else {}
        if prices is not None:
            if not isinstance(prices, Mapping):
                raise ValueError(
                    f"prices must be a mapping of model name to price, got {type(prices).__name__}"
                )
            for model, value in prices.items():
                if not isinstance(model, str) or not model.strip():
                    raise ValueError(f"model names must be non-empty strings, got {model!r}")
                table[model.strip().lower()] = _coerce_price(model, value)
        self._prices: dict[str, ModelPrice] = table
        self._keys_longest_first: tuple[str, ...] = tuple(sorted(table, key=len, reverse=True))
        self._cache: dict[str, ModelPrice | None] = {}

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str], *, include_defaults: bool = True) -> PriceTable:
        """Load ``{"model": {"input": .., "output": ..}, ...}`` merged over the defaults.

        Raises ``ValueError`` for malformed content; ``OSError`` if the file cannot be read.
        """
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"price file {os.fspath(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"price file {os.fspath(path)!r} must contain a JSON object mapping model names to prices, "
                f"got {type(data).__name__}"
            )
        try:
            return cls(data, include_defaults=include_defaults)
        except ValueError as exc:
            raise ValueError(f"price file {os.fspath(path)!r}: {exc}") from None

    def lookup(self, model: str | None) -> ModelPrice | None:
        """Price for ``model`` after name normalisation, or ``None`` if unknown."""
        if not model or not isinstance(model, str):
            return None
        try:
            return self._cache[model]
        except KeyError:
            pass
        price = self._resolve(model)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[model] = price
        return price

    def _resolve(self, model: str) -> ModelPrice | None:
        name = model.strip().lower()
        if not name:
            return None
        prices = self._prices
        if name in prices:
            return prices[name]
        bare = _strip_provider(name)
        if bare is None:
            return None
        if bare in prices:
            return prices[bare]
        name = _strip_version(bare)
        if name in prices:
            return prices[name]
        for key in self._keys_longest_first:
            if name.startswith(key + "-"):
                return prices[key]
        return None

    def cost(
        self,
        model: str | None,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_read_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        reasoning_tokens: int | None = None,
    ) -> float | None:
        """USD cost of one call, or ``None`` if the model is unknown or no token count is given."""
        if (
            input_tokens is None
            and output_tokens is None
            and cache_read_tokens is None
            and cache_write_tokens is None
            and reasoning_tokens is None
        ):
            return None
        price = self.lookup(model)
        if price is None:
            return None
        cache_read = _count(cache_read_tokens)
        cache_write = _count(cache_write_tokens)
        reasoning = _count(reasoning_tokens)
        uncached_input = max(0, _count(input_tokens) - cache_read - cache_write)
        plain_output = max(0, _count(output_tokens) - reasoning)
        total = (
            uncached_input * price.input
            + cache_read * (price.input if price.cache_read is None else price.cache_read)
            + cache_write * (price.input if price.cache_write is None else price.cache_write)
            + plain_output * price.output
            + reasoning * (price.output if price.reasoning is None else price.reasoning)
        )
        return round(total / 1_000_000, 10)

    def __contains__(self, model: object) -> bool:
        """True if ``lookup(model)`` finds a price (normalised match, not only exact keys)."""
        return isinstance(model, str) and self.lookup(model) is not None

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self._prices)} models>)"
