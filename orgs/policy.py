"""The per-key routing policy override: a small JSON document validated here.

Shape (every field optional, unknown fields refused)::

    {"strategy": "balanced" | "cost" | "latency" | "availability",
     "allowed_models": ["openai/*", "anthropic/claude-3-5-haiku"],
     "blocked_models": ["*/preview-*"],
     "preferred_models": ["openai/gpt-4o-mini"],
     "allowed_regions": ["eu-west-1"],
     "max_cost_per_request_usd": "0.05",
     "reference_model": "openai/gpt-4o"}

``reference_model`` is what this key's savings are measured against (nearer than any node's
policy, farther than the request's own ``megarouter.reference_model``).

The routing engine gives it meaning; orgs only stores well-formed documents.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

STRATEGIES = ("balanced", "cost", "latency", "availability")
_LIST_FIELDS = ("allowed_models", "blocked_models", "preferred_models", "allowed_regions")
FIELDS = ("strategy", *_LIST_FIELDS, "max_cost_per_request_usd", "reference_model")


def validate_model_patterns(value: Any, *, field: str = "allowed_models") -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{field} must be a list of model ids or glob patterns")
    cleaned = [v.strip() for v in value]
    if any(not v or len(v) > 200 for v in cleaned):
        raise ValueError(f"{field} entries must be 1 to 200 characters")
    if len(cleaned) > 200:
        raise ValueError(f"{field} takes at most 200 entries")
    return cleaned


def validate_routing_policy(value: Any) -> dict[str, Any] | None:
    """Return the normalized policy, or raise ValueError naming the problem."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("routing_policy must be an object")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown routing_policy fields: {', '.join(unknown)}")
    out: dict[str, Any] = {}
    if "strategy" in value:
        if value["strategy"] not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        out["strategy"] = value["strategy"]
    for name in _LIST_FIELDS:
        if name in value:
            out[name] = validate_model_patterns(value[name], field=name)
    if "max_cost_per_request_usd" in value:
        raw = value["max_cost_per_request_usd"]
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise ValueError("max_cost_per_request_usd must be a decimal string")
        try:
            amount = Decimal(str(raw))
        except InvalidOperation:
            raise ValueError("max_cost_per_request_usd must be a decimal string") from None
        if not amount.is_finite() or amount <= 0:
            raise ValueError("max_cost_per_request_usd must be positive")
        out["max_cost_per_request_usd"] = str(amount)
    if "reference_model" in value:
        reference = value["reference_model"]
        if not isinstance(reference, str) or not reference.strip() or len(reference) > 255:
            raise ValueError("reference_model must be a model id (1 to 255 characters)")
        out["reference_model"] = reference.strip()
    return out
