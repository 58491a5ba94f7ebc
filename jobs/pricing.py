"""What a model call costs: a small price table by model family, for the gateway's session budget.

Prices are USD per million tokens, from Anthropic's published pricing
(https://platform.claude.com/docs/en/about-claude/pricing, "Model pricing" and "Long context
pricing", and the model overview pages, e.g. https://platform.claude.com/docs/en/models/opus-5-5/overview;
read 2026). They are an estimate for enforcing a budget, not a bill, and they err high: each family
is priced at its dearest model on sale through the first-party API, so a budget runs out early
rather than late, and a model of no known family is priced above every model in the table.

    family   models (input / output per MTok)                        priced at
    opus     Opus 5.5 $4/$20, Opus 5 and 4.5-4.8 $5/$25              $5 / $25
    sonnet   Sonnet 5 and 5.5 $2/$10, Sonnet 4-4.6 $3/$15            $3 / $15, long prompts above
             (Sonnet 4/4.5 charge $6/$22.50 on prompts > 200K)        200K tokens $6 / $22.50
    haiku    Haiku 5.5 from $0.10/$0.50, Haiku 4.5 $1/$5              $1 / $5
    fable    Fable 5/5.1, Mythos 5/5.1 $10/$50                        $10 / $50
    other    (unknown)                                                $15 / $75 (retired Opus 4/4.1)

Cache writes cost 1.25x the input price for the 5-minute cache and 2x for the 1-hour cache,
cache reads 0.1x (the published multipliers; newer models read for less).  Server tools (web
search, code execution) are not priced: the gateway's CLI has no use for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MTOK = 1_000_000


@dataclass(frozen=True)
class Price:
    """USD per million tokens, and an optional dearer tier for long prompts."""

    input: float
    output: float
    long_prompt_over: int | None = None  # prompt tokens (input + cache) above which...
    long_input: float | None = None  # ...these prices apply to the whole request
    long_output: float | None = None

    def for_prompt(self, prompt_tokens: int) -> tuple[float, float]:
        if self.long_prompt_over is not None and prompt_tokens > self.long_prompt_over:
            return self.long_input or self.input, self.long_output or self.output
        return self.input, self.output


CACHE_WRITE_5M = 1.25
CACHE_WRITE_1H = 2.0
CACHE_READ = 0.1

FAMILIES: dict[str, Price] = {
    "opus": Price(5.0, 25.0),
    "sonnet": Price(3.0, 15.0, long_prompt_over=200_000, long_input=6.0, long_output=22.5),
    "haiku": Price(1.0, 5.0),
    "fable": Price(10.0, 50.0),
    "mythos": Price(10.0, 50.0),
}
UNKNOWN = Price(15.0, 75.0)


def family(model: str) -> str:
    """`claude-sonnet-5-5`, `sonnet`, `claude-3-5-sonnet-20241022` -> "sonnet"; else the name."""
    name = model.strip().lower()
    for known in FAMILIES:
        if known in name:
            return known
    return name


def price(model: str) -> Price:
    return FAMILIES.get(family(model), UNKNOWN)


def _count(usage: Mapping[str, object], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def cost_usd(model: str, usage: Mapping[str, object]) -> float:
    """The estimated cost of one message's `usage` (the Messages API's usage object)."""
    fresh = _count(usage, "input_tokens")
    output = _count(usage, "output_tokens")
    read = _count(usage, "cache_read_input_tokens")
    written = _count(usage, "cache_creation_input_tokens")
    split = usage.get("cache_creation")
    hour = _count(split, "ephemeral_1h_input_tokens") if isinstance(split, Mapping) else 0
    hour = min(hour, written)
    input_price, output_price = price(model).for_prompt(fresh + read + written)
    return (
        fresh * input_price
        + (written - hour) * input_price * CACHE_WRITE_5M
        + hour * input_price * CACHE_WRITE_1H
        + read * input_price * CACHE_READ
        + output * output_price
    ) / MTOK
