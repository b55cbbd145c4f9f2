"""Cost: token usage times a price table per model, in USD.

The defaults ship as data (`prices.json`); a user's `prices_file` (TOML or JSON of the same
shape) overrides or extends them. A model that is not in the table, not even as a dated
snapshot of a listed model (`gpt-4o-mini-2024-07-18`), gets no cost: never a wrong one.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

PriceTable = dict[str, dict[str, float]]
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def default_prices() -> PriceTable:
    text = resources.files("llmtap.recorder").joinpath("prices.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def load_prices(path: str | None) -> PriceTable:
    """The defaults, with a user's file laid over them (per model, whole entries)."""
    table = default_prices()
    if path:
        raw = Path(path).read_bytes()
        extra = tomllib.loads(raw.decode()) if path.endswith(".toml") else json.loads(raw)
        for model, entry in extra.items():
            if not isinstance(entry, dict) or not {"input", "output"} <= set(entry):
                raise ValueError(f"{path}: {model} needs input and output prices per 1M tokens")
            table[model] = {k: float(v) for k, v in entry.items()}
    return table


def price_for(table: PriceTable, model: Any) -> dict[str, float] | None:
    if not model or not isinstance(model, str):  # a request's `model` may be anything
        return None
    return table.get(model) or table.get(_SNAPSHOT.sub("", model))


def _cached_tokens(usage: Mapping[str, Any]) -> int:
    for name in ("prompt_tokens_details", "input_tokens_details"):
        details = usage.get(name)
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            return int(details["cached_tokens"])
    return 0


def cost_of(
    table: PriceTable,
    models: tuple[str | None, ...],
    usage: Mapping[str, Any] | None,
    input_tokens: int,
    output_tokens: int,
) -> dict[str, float] | None:
    """{"input_cost", "output_cost", "total_cost"} in USD, or None when the price is unknown."""
    price = next((p for p in (price_for(table, m) for m in models) if p), None)
    if price is None or usage is None:
        return None
    cached = min(_cached_tokens(usage), input_tokens)
    input_cost = (
        (input_tokens - cached) * price["input"]
        + cached * price.get("cached_input", price["input"])
    ) / 1e6
    output_cost = output_tokens * price["output"] / 1e6
    return {
        "input_cost": round(input_cost, 10),
        "output_cost": round(output_cost, 10),
        "total_cost": round(input_cost + output_cost, 10),
    }
