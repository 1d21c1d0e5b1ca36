"""schemas/pricing.py: integer nano-USD per call equal to genai-prices' own Decimal price, overrides, unknown models."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.pricing import PricesFileError, PriceTable, clamp_usage, load_overrides, parse_overrides, price_table

T0 = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
# flat, tiered (claude-sonnet-4-5, gemini-2.5-pro: cliff at 200k prompt tokens), date- and time-of-day-conditional
MODELS = ["gpt-4o", "gpt-4o-mini", "o3-mini", "claude-sonnet-4-5", "claude-3-5-haiku", "gemini-2.5-pro",
          "gemini-2.5-flash", "deepseek-chat", "deepseek-reasoner", "gpt-5"]


def reference_nusd(model: str, t_us: int, p: int, c: int, cr: int, cw: int, rs: int) -> int:
    """genai-prices' Decimal price of the same (clamped) usage, rounded half up to nano-USD."""
    p, c, cr, cw, rs = clamp_usage(p, c, cr, cw, rs)
    usage = Usage(input_tokens=p, output_tokens=c, cache_read_tokens=cr, cache_write_tokens=cw,
                  output_reasoning_tokens=rs)
    when = datetime.fromtimestamp(t_us / 1_000_000, tz=UTC)
    price = calc_price(usage, model, genai_request_timestamp=when).total_price
    return int((price * 10**9).quantize(Decimal(1), rounding=ROUND_HALF_UP))


TABLE = PriceTable()
tokens = st.integers(min_value=0, max_value=2_000_000)


@settings(max_examples=400, deadline=None)
@given(model=st.sampled_from(MODELS), dt=st.integers(min_value=0, max_value=3 * 365 * 86_400_000_000),
       p=tokens, c=tokens, cr=tokens, cw=tokens, rs=tokens)
def test_cost_equals_genai_prices_to_the_nano_dollar(model: str, dt: int, p: int, c: int, cr: int, cw: int,
                                                    rs: int) -> None:
    t = T0 + dt
    assert TABLE.cost_nusd(model, t, p, c, cr, cw, rs) == reference_nusd(model, t, p, c, cr, cw, rs)


def test_tier_boundary_and_cache_and_reasoning_are_priced_like_the_provider() -> None:
    for p in (199_999, 200_000, 200_001):
        assert TABLE.cost_nusd("claude-sonnet-4-5", T0, p, 10) == reference_nusd("claude-sonnet-4-5", T0, p, 10, 0,
                                                                                  0, 0)
    # cached input is cheaper than fresh input; a cache write dearer (Anthropic)
    fresh = TABLE.cost_nusd("claude-sonnet-4-5", T0, 1000, 0)
    assert TABLE.cost_nusd("claude-sonnet-4-5", T0, 1000, 0, cache_read=1000) < fresh
    assert TABLE.cost_nusd("claude-sonnet-4-5", T0, 1000, 0, cache_write=1000) > fresh
    assert fresh == 3000 * 1000  # $3 / MTok = 3000 nano-USD per token


def test_deepseek_time_of_day_prices_follow_the_event_time() -> None:
    costs = {TABLE.cost_nusd("deepseek-reasoner", T0 + h * 3_600_000_000, 10_000, 10_000) for h in range(24)}
    assert len(costs) == 2  # off-peak and peak
    for h in range(24):
        t = T0 + h * 3_600_000_000 + 29 * 60_000_000
        assert TABLE.cost_nusd("deepseek-reasoner", t, 10_000, 10_000) == reference_nusd(
            "deepseek-reasoner", t, 10_000, 10_000, 0, 0, 0)


def test_unknown_model_is_none_not_zero_and_null_usage_costs_zero() -> None:
    assert TABLE.cost_nusd("no-such-model-xyz", T0, 10, 10) is None
    assert TABLE.cost_nusd(None, T0, 10, 10) is None
    assert not TABLE.is_priced("no-such-model-xyz") and TABLE.is_priced("gpt-4o")
    assert TABLE.cost_nusd("gpt-4o", T0, None, None) == 0


def test_hostile_counts_are_clamped_never_negative() -> None:
    assert clamp_usage(10, 5, 50, 50, 99) == (10, 5, 10, 0, 5)
    assert clamp_usage(-5, -1, -1, None, None) == (0, 0, 0, 0, 0)
    assert TABLE.cost_nusd("gpt-4o", T0, -100, -100, -1, -1, -1) == 0
    assert TABLE.cost_nusd("gpt-4o", T0, 10, 0, cache_read=10**9) == TABLE.cost_nusd("gpt-4o", T0, 10, 0,
                                                                                        cache_read=10)


def test_overrides_win_and_default_cache_and_reasoning_prices(tmp_path: Path) -> None:
    f = tmp_path / "prices.yaml"
    f.write_text("models:\n  my-llama:\n    input_mtok: 0.5\n    output_mtok: 1.5\n"
                 "  GPT-4o:\n    input_mtok: 1\n    output_mtok: 2\n    cache_read_mtok: 0.25\n")
    table = price_table(f)
    assert table.cost_nusd("my-llama", T0, 1_000_000, 1_000_000) == 2 * 10**9
    assert table.cost_nusd("MY-LLAMA", T0, 1_000_000, 0, cache_read=1_000_000) == 5 * 10**8
    assert table.cost_nusd("gpt-4o", T0, 1_000_000, 1_000_000, cache_read=1_000_000) == 25 * 10**7 + 2 * 10**9
    assert table.cost_nusd("gpt-4o-mini", T0, 1000, 0) == TABLE.cost_nusd("gpt-4o-mini", T0, 1000, 0)
    assert PriceTable(load_overrides(f), use_genai_prices=False).cost_nusd("gpt-4o-mini", T0, 1, 1) is None


@pytest.mark.parametrize(("text", "message"), [
    ("models: [1]", "'models' must map"),
    ("other: {}", "single key 'models'"),
    ("models:\n  m:\n    input_mtok: 1\n", "output_mtok is required"),
    ("models:\n  m:\n    input_mtok: -1\n    output_mtok: 1\n", ">= 0"),
    ("models:\n  m:\n    input_mtok: x\n    output_mtok: 1\n", "not a number"),
    ("models:\n  m:\n    input_mtok: 1\n    output_mtok: 1\n    extra_mtok: 1\n", "unknown key(s) extra_mtok"),
    ("models:\n  m:\n    input_mtok: .nan\n    output_mtok: 1\n", "finite"),
    ("models: {a: {input_mtok: 1, output_mtok: 1}, A: {input_mtok: 1, output_mtok: 1}}", "listed twice"),
    ("models: [", "not valid YAML"),
])
def test_malformed_prices_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(PricesFileError, match="p.yaml") as info:
        load_overrides(f)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_prices_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(PricesFileError, match="cannot read prices file"):
        load_overrides(tmp_path / "absent.yaml")
    assert parse_overrides(None) == {}


@settings(max_examples=300, deadline=None)
@given(model=st.text(max_size=200), p=st.integers(-10**12, 10**12), c=st.integers(-10**12, 10**12))
def test_any_model_name_and_count_prices_or_is_unpriced_never_raises(model: str, p: int, c: int) -> None:
    cost = PriceTable().cost_nusd(model, T0, p, c, p // 3, p // 5, c // 2)
    assert cost is None or cost >= 0
