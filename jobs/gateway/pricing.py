"""What a model call costs: a small price table by model family, for the gateway's session budget.

Prices are USD per million tokens, from Anthropic's published pricing
(https://platform.claude.com/docs/en/about-claude/pricing, "Model pricing" and "Long context
pricing", and the model overview pages under https://platform.claude.com/docs/en/models/, read
in 2026). Claude Code 2.1.332 charges the same $4/$20 for claude-opus-5-5 in its own
`total_cost_usd` (tests/test_gateway.py checks the two agree). They are an estimate for enforcing a
budget, not a bill, and they err high: the current models are priced as published, any other model
of a family at the dearest of that family still on sale through the first-party API, and a model
of no known family above every model in the table.

    model / family        input  output  cache read  notes (per MTok)
    opus-5-5 (Opus 5.5)   $4     $20     $0.20
    sonnet-5 (5, 5.5)     $2     $10     $0.20       as published when read (a later cut errs high)
    haiku-5-5             $0.10  $0.50   $0.01       prompts over 100K tokens: 5x, every token
    opus (other)          $5     $25     $0.50       Opus 5 and 4.5-4.8
    sonnet (other)        $3     $15     $0.30       Sonnet 4-4.6; prompts > 200K: 2x in, 1.5x out
    haiku (other)         $1     $5      $0.10       Haiku 4.5
    fable, mythos         $10    $50     $1.00       Fable/Mythos 5 and 5.1
    anything else         $15    $75     $1.50       as the retired Opus 4/4.1

Cache writes cost 1.25x the input price for the 5-minute cache and 2x for the 1-hour cache (the
published multipliers, the same for all of these). Server tools (web search, code execution) are
not priced: the CLI in the sandbox has no network tools the gateway would pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MTOK = 1_000_000
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
CACHE_WRITE_5M = 1.25
CACHE_WRITE_1H = 2.0


@dataclass(frozen=True)
class Price:
    """USD per million tokens; past `long_prompt_over` prompt tokens, dearer by the factors."""

    input: float
    output: float
    cache_read: float
    long_prompt_over: int | None = None
    long_input_factor: float = 1.0
    long_output_factor: float = 1.0


# Checked in order: the first name found in the model id prices it.
MODELS: tuple[tuple[str, Price], ...] = (
    ("opus-5-5", Price(4.0, 20.0, 0.20)),
    ("sonnet-5", Price(2.0, 10.0, 0.20)),
    (
        "haiku-5-5",
        Price(
            0.10, 0.50, 0.01, long_prompt_over=100_000, long_input_factor=5, long_output_factor=5
        ),
    ),
)
FAMILIES: dict[str, Price] = {
    "opus": Price(5.0, 25.0, 0.50),
    "sonnet": Price(
        3.0, 15.0, 0.30, long_prompt_over=200_000, long_input_factor=2, long_output_factor=1.5
    ),
    "haiku": Price(1.0, 5.0, 0.10),
    "fable": Price(10.0, 50.0, 1.00),
    "mythos": Price(10.0, 50.0, 1.00),
}
UNKNOWN = Price(15.0, 75.0, 1.50)


def family(model: str) -> str:
    """`claude-sonnet-5-5`, `sonnet`, `claude-3-5-sonnet-20241022` -> "sonnet"; else the name."""
    name = model.strip().lower()
    for known in FAMILIES:
        if known in name:
            return known
    return name


def price(model: str) -> Price:
    name = model.lower()
    for known, listed in MODELS:
        if known in name:
            return listed
    return FAMILIES.get(family(model), UNKNOWN)


def count(usage: Mapping[str, object], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def cost_usd(model: str, usage: Mapping[str, object]) -> float:
    """The estimated cost of one message's `usage` (the Messages API's usage object)."""
    fresh = count(usage, "input_tokens")
    output = count(usage, "output_tokens")
    read = count(usage, "cache_read_input_tokens")
    written = count(usage, "cache_creation_input_tokens")
    split = usage.get("cache_creation")
    hour = count(split, "ephemeral_1h_input_tokens") if isinstance(split, Mapping) else 0
    hour = min(hour, written)
    rates = price(model)
    input_price, output_price, read_price = rates.input, rates.output, rates.cache_read
    if rates.long_prompt_over is not None and fresh + read + written > rates.long_prompt_over:
        input_price *= rates.long_input_factor
        read_price *= rates.long_input_factor
        output_price *= rates.long_output_factor
    return (
        fresh * input_price
        + (written - hour) * input_price * CACHE_WRITE_5M
        + hour * input_price * CACHE_WRITE_1H
        + read * read_price
        + output * output_price
    ) / MTOK
