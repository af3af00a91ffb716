from __future__ import annotations

import json
from pathlib import Path

import pytest

from otel_sqlite_exporter._pricing import DEFAULT_PRICES, ModelPrice, PriceTable


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable()


# --- lookup ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-pro", "o3"])
def test_exact_lookup(table: PriceTable, name: str) -> None:
    assert table.lookup(name) == DEFAULT_PRICES[name]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("GPT-4o", "gpt-4o"),
        ("  Claude-Sonnet-4-5  ", "claude-sonnet-4-5"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4-0613", "gpt-4"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("gemini-1.5-pro-002", "gemini-1.5-pro"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("gemini-1.5-flash-latest", "gemini-1.5-flash"),
        # provider prefixes and suffix forms
        ("openai/gpt-4o", "gpt-4o"),
        ("azure/gpt-4.1-nano", "gpt-4.1-nano"),
        ("anthropic/claude-3-7-sonnet-20250219", "claude-3-7-sonnet"),
        ("anthropic/claude-3.5-sonnet", "claude-3-5-sonnet"),
        ("google/gemini-2.5-flash", "gemini-2.5-flash"),
        ("models/gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
        ("projects/p/locations/us-central1/publishers/google/models/gemini-1.5-pro-002", "gemini-1.5-pro"),
        ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet"),
        ("gpt-4o:latest", "gpt-4o"),
        # Bedrock model ids, inference profiles and ARNs
        ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
        ("us.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4"),
        ("bedrock/eu.anthropic.claude-3-5-sonnet-20240620-v1:0", "claude-3-5-sonnet"),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/global.anthropic.claude-haiku-4-5-20251001-v1:0",
            "claude-haiku-4-5",
        ),
        # longest "-"-bounded prefix
        ("gpt-4o-mini-xyz", "gpt-4o-mini"),
        ("gpt-4o-search-preview", "gpt-4o"),
        ("gemini-2.5-flash-lite-preview-09-2025", "gemini-2.5-flash-lite"),
        ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
        ("o1-preview-2024-09-12", "o1"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
    ],
)
def test_normalised_lookup(table: PriceTable, name: str, expected: str) -> None:
    assert table.lookup(name) is DEFAULT_PRICES[expected]


def test_exact_entry_wins_over_normalisation(table: PriceTable) -> None:
    # Snapshot with its own price, and an embedding whose "-002" must not be stripped.
    assert table.lookup("gpt-4o-2024-05-13") == ModelPrice(5.0, 15.0)
    assert table.lookup("text-embedding-ada-002") is DEFAULT_PRICES["text-embedding-ada-002"]
    assert table.lookup("openai/text-embedding-ada-002") is DEFAULT_PRICES["text-embedding-ada-002"]


def test_prefix_match_needs_dash_boundary() -> None:
    only_gpt4 = PriceTable({"gpt-4": {"input": 30, "output": 60}}, include_defaults=False)
    assert only_gpt4.lookup("gpt-4o") is None
    assert only_gpt4.lookup("gpt-40") is None
    assert only_gpt4.lookup("gpt-4-32k") == ModelPrice(30.0, 60.0)


@pytest.mark.parametrize(
    "name",
    [None, "", "   ", "llama3:latest", "mistral-large", "gpt", "ft:gpt-4o-mini-2024-07-18:acme::abc123"],
)
def test_unknown_models(table: PriceTable, name: str | None) -> None:
    assert table.lookup(name) is None
    assert table.cost(name, input_tokens=1000, output_tokens=1000) is None


def test_fine_tune_priced_only_by_exact_entry() -> None:
    name = "ft:gpt-4o-mini-2024-07-18:acme::abc123"
    t = PriceTable({name: {"input": 0.3, "output": 1.2}})
    assert t.lookup(name) == ModelPrice(0.3, 1.2)
    assert t.lookup(name.upper()) == ModelPrice(0.3, 1.2)


def test_contains(table: PriceTable) -> None:
    assert "gpt-4o" in table
    assert "openai/gpt-4o-2024-08-06" in table
    assert "no-such-model" not in table
    assert 42 not in table


def test_lookup_is_cached(table: PriceTable) -> None:
    first = table.lookup("us.anthropic.claude-3-5-haiku-20241022-v1:0")
    assert first is DEFAULT_PRICES["claude-3-5-haiku"]
    assert table.lookup("us.anthropic.claude-3-5-haiku-20241022-v1:0") is first


# --- cost -----------------------------------------------------------------------------------------------


def test_no_token_counts_gives_none(table: PriceTable) -> None:
    assert table.cost("gpt-4o") is None


def test_zero_tokens_cost_zero(table: PriceTable) -> None:
    assert table.cost("gpt-4o", input_tokens=0, output_tokens=0) == 0.0


def test_plain_input_and_output(table: PriceTable) -> None:
    # gpt-4o: 2.50 in / 10.00 out per 1M.
    assert table.cost("gpt-4o", input_tokens=1000, output_tokens=500) == pytest.approx(
        (1000 * 2.50 + 500 * 10.00) / 1e6
    )


def test_missing_counts_are_zero(table: PriceTable) -> None:
    assert table.cost("gpt-4o", output_tokens=500) == pytest.approx(500 * 10.00 / 1e6)
    assert table.cost("gpt-4o", input_tokens=1000) == pytest.approx(1000 * 2.50 / 1e6)


def test_cached_input_priced_at_cache_rate(table: PriceTable) -> None:
    # gpt-4o: input 2.50, cached input 1.25, output 10.00. 1000 input of which 400 are cache hits.
    expected = (600 * 2.50 + 400 * 1.25 + 200 * 10.00) / 1e6
    got = table.cost("gpt-4o-2024-08-06", input_tokens=1000, cache_read_tokens=400, output_tokens=200)
    assert got == pytest.approx(expected)
    assert got == pytest.approx(0.0040)


def test_cache_read_without_cache_price_falls_back_to_input(table: PriceTable) -> None:
    # gpt-4-turbo has no cached-input price: 10.00 in / 30.00 out.
    got = table.cost("gpt-4-turbo", input_tokens=1000, cache_read_tokens=400)
    assert got == pytest.approx(1000 * 10.00 / 1e6)


def test_anthropic_cache_write_is_1_25x_input(table: PriceTable) -> None:
    # claude-sonnet-4-5: input 3.00, cache write 3.75 (1.25x), cache read 0.30 (0.1x), output 15.00.
    price = DEFAULT_PRICES["claude-sonnet-4-5"]
    assert price.cache_write == pytest.approx(price.input * 1.25)
    assert price.cache_read == pytest.approx(price.input * 0.1)
    got = table.cost(
        "claude-sonnet-4-5-20250929",
        input_tokens=10_000,
        cache_write_tokens=2_000,
        cache_read_tokens=5_000,
        output_tokens=1_000,
    )
    expected = (3_000 * 3.00 + 2_000 * 3.75 + 5_000 * 0.30 + 1_000 * 15.00) / 1e6
    assert got == pytest.approx(expected)


def test_reasoning_tokens_use_reasoning_rate_when_set() -> None:
    t = PriceTable({"thinker": {"input": 1.0, "output": 4.0, "reasoning": 2.0}}, include_defaults=False)
    got = t.cost("thinker", input_tokens=100, output_tokens=1_000, reasoning_tokens=600)
    assert got == pytest.approx((100 * 1.0 + 400 * 4.0 + 600 * 2.0) / 1e6)


def test_reasoning_tokens_default_to_output_rate(table: PriceTable) -> None:
    # o3: 2.00 in / 8.00 out; reasoning is billed as output, so splitting it out changes nothing.
    with_split = table.cost("o3", input_tokens=100, output_tokens=1_000, reasoning_tokens=600)
    without = table.cost("o3", input_tokens=100, output_tokens=1_000)
    assert with_split == without == pytest.approx((100 * 2.00 + 1_000 * 8.00) / 1e6)


def test_inconsistent_counts_never_go_negative() -> None:
    t = PriceTable(
        {"m": ModelPrice(input=1.0, output=2.0, cache_read=0.5, reasoning=3.0)}, include_defaults=False
    )
    # More cache reads than input (e.g. Anthropic's raw input_tokens, which exclude the cache).
    assert t.cost("m", input_tokens=10, cache_read_tokens=1_000) == pytest.approx(1_000 * 0.5 / 1e6)
    # More reasoning than output.
    assert t.cost("m", output_tokens=10, reasoning_tokens=1_000) == pytest.approx(1_000 * 3.0 / 1e6)
    # Negative counts are treated as zero.
    assert t.cost("m", input_tokens=-5, output_tokens=-5) == 0.0


def test_cost_is_rounded(table: PriceTable) -> None:
    got = table.cost("gpt-4o-mini", input_tokens=3, output_tokens=7)
    assert got is not None
    assert got == round(got, 10)


# --- overrides and validation ---------------------------------------------------------------------------


def test_override_one_entry_and_add_a_model() -> None:
    t = PriceTable(
        {
            "GPT-4o": {"input": 1.0, "output": 2.0, "cache_read": 0.1},
            "my-local-model": ModelPrice(input=0.0, output=0.0),
        }
    )
    assert t.lookup("gpt-4o") == ModelPrice(1.0, 2.0, cache_read=0.1)
    assert t.lookup("openai/gpt-4o-2024-08-06") == ModelPrice(1.0, 2.0, cache_read=0.1)
    # Other defaults are untouched, and a free model costs 0, not None.
    assert t.lookup("gpt-4o-mini") is DEFAULT_PRICES["gpt-4o-mini"]
    assert t.cost("my-local-model", input_tokens=1_000, output_tokens=1_000) == 0.0
    # The bundled table itself is not modified.
    assert DEFAULT_PRICES["gpt-4o"].input == 2.50


def test_integer_prices_are_stored_as_floats() -> None:
    price = PriceTable({"m": {"input": 1, "output": 2}}).lookup("m")
    assert price == ModelPrice(1.0, 2.0)
    assert price is not None and isinstance(price.input, float)


def test_include_defaults_false() -> None:
    t = PriceTable({"only-this": {"input": 1.0, "output": 1.0}}, include_defaults=False)
    assert len(t) == 1
    assert "gpt-4o" not in t
    assert t.cost("gpt-4o", input_tokens=10) is None
    assert "only-this" in t
    assert len(PriceTable(include_defaults=False)) == 0


def test_default_prices_is_read_only() -> None:
    with pytest.raises(TypeError):
        DEFAULT_PRICES["gpt-4o"] = ModelPrice(0.0, 0.0)  # type: ignore[index]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"input": -1.0, "output": 1.0}, "non-negative"),
        ({"input": 1.0, "output": float("nan")}, "non-negative"),
        ({"output": 1.0}, "missing"),
        ({"input": 1.0}, "missing"),
        ({"input": 1.0, "output": 1.0, "cached": 0.5}, "unknown keys"),
        ({"input": "1.0", "output": 1.0}, "number"),
        ({"input": True, "output": 1.0}, "number"),
        ({"input": 1.0, "output": 1.0, "cache_read": -0.1}, "cache_read"),
        (3.5, "mapping"),
    ],
)
def test_bad_entries_raise_value_error_naming_model(entry: object, problem: str) -> None:
    with pytest.raises(ValueError, match="bad-model") as info:
        PriceTable({"bad-model": entry})  # type: ignore[dict-item]
    assert problem in str(info.value)


def test_optional_prices_may_be_null() -> None:
    t = PriceTable({"m": {"input": 1.0, "output": 2.0, "cache_read": None}})
    assert t.lookup("m") == ModelPrice(1.0, 2.0)


def test_model_price_validates_itself() -> None:
    with pytest.raises(ValueError, match="output"):
        ModelPrice(input=1.0, output=-2.0)


def test_bad_model_names_raise() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        PriceTable({"": {"input": 1.0, "output": 1.0}})


# --- JSON files -----------------------------------------------------------------------------------------


def test_from_json_file_merges_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "gpt-4o": {"input": 2.0, "output": 8.0, "cache_read": 0.5},
                "acme-1": {"input": 0.5, "output": 1.5},
            }
        ),
        encoding="utf-8",
    )
    t = PriceTable.from_json_file(path)
    assert t.lookup("gpt-4o") == ModelPrice(2.0, 8.0, cache_read=0.5)
    assert t.cost("acme-1-20250101", input_tokens=1_000_000, output_tokens=1_000_000) == pytest.approx(2.0)
    assert t.lookup("claude-3-opus") is DEFAULT_PRICES["claude-3-opus"]
    # str paths work too.
    assert PriceTable.from_json_file(str(path)).lookup("acme-1") == ModelPrice(0.5, 1.5)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"acme-1": {"input": 1.0}}', "acme-1"),
        ('{"acme-1": {"input": 1.0, "output": -1}}', "acme-1"),
        ('{"acme-1": "cheap"}', "acme-1"),
    ],
)
def test_from_json_file_bad_content(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=problem) as info:
        PriceTable.from_json_file(path)
    assert "prices.json" in str(info.value)


def test_from_json_file_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        PriceTable.from_json_file(tmp_path / "nope.json")


# --- bundled table --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-4o",
        "gpt-4o-mini",
        "o1",
        "o1-mini",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-3.5-turbo",
        "gpt-4-turbo",
        "gpt-4",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
        "claude-opus-4-1",
        "claude-opus-4",
        "claude-sonnet-4-5",
        "claude-sonnet-4",
        "claude-3-7-sonnet",
        "claude-3-5-sonnet",
        "claude-3-5-haiku",
        "claude-haiku-4-5",
        "claude-3-opus",
        "claude-3-haiku",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-2.0-flash",
        "gemini-2.0-flash-lite",
        "gemini-1.5-pro",
        "gemini-1.5-flash",
    ],
)
def test_bundled_table_covers_model(name: str) -> None:
    assert name in DEFAULT_PRICES
    assert DEFAULT_PRICES[name].input > 0


def test_bundled_keys_are_normalised_and_anthropic_caches_follow_the_rule() -> None:
    for name, price in DEFAULT_PRICES.items():
        assert name == name.strip().lower()
        # Claude 3 Haiku's published cache prices (0.30 / 0.03) are rounded, not exactly 1.25x / 0.1x.
        if name.startswith("claude-") and name != "claude-3-haiku":
            assert price.cache_write == pytest.approx(price.input * 1.25), name
            assert price.cache_read == pytest.approx(price.input * 0.1), name
