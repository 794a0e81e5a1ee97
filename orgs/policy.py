"""The routing policy document, declared once: every field with its type, bounds, message, how
levels combine and how the console shows it.

One document shape at every level: a node's policy (organization root, department, team,
project; ``routing.policy_models.RoutingPolicy.document``), a key's (``ApiKey.routing_policy``),
a request's (the ``megarouter`` body object on ``/v1``) and the operator file's
``[[policies]]``. The management API, the console form and the gateway all validate with
:meth:`PolicySpec.from_document`, which names every bad field; ``routing.policies`` merges the
levels with each field's ``merge`` rule and the routing engine gives them meaning.

    {"strategy": "cost", "allowed_models": ["openai/*"], "max_cost_per_request_usd": "0.05"}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Any

STRATEGIES = ("balanced", "cost", "latency", "availability")
STRATEGY_LABELS = {
    "balanced": "Balanced (cost, latency and quality)",
    "cost": "Cost first",
    "latency": "Latency first",
    "availability": "Availability first",
}
TIERS = {1: "Economy", 2: "Standard", 3: "Strong", 4: "Frontier"}
MAX_LIST = 200
MAX_ENTRY = 255
MAX_LATENCY_MS = 600_000

# How a field combines across levels (farthest first: organization ... key, request).
NEAREST = "nearest"  # the nearest level that sets it wins
ALL_OF = "all_of"  # every level's list must match (a lower level narrows, never widens)
UNION = "union"  # the lists add up
SMALLEST = "smallest"  # the smallest cap
ANY = "any"  # true if any level sets it


@dataclass(frozen=True, slots=True)
class Rule:
    """One field's declaration."""

    kind: str  # strategy | patterns | names | decimal | integer | flag | model
    merge: str
    label: str
    help: str = ""
    minimum: Decimal | int | None = None
    maximum: int | None = None
    positive: bool = False  # decimals: above zero (else zero or more)
    message: str = ""  # the bound's message, when the kind's default does not say enough
    choices: tuple[tuple[int, str], ...] = ()  # integers with names (quality tiers)
    # What the entries name in the catalog (models | providers | regions): the console offers
    # them to pick from, and entries that match nothing there today are pointed out (a
    # warning, not an error: the catalog changes after a policy is written).
    names: str = ""


def _rule(**kwargs: Any) -> Any:
    return field(default=None, metadata={"rule": Rule(**kwargs)})


class PolicyError(ValueError):
    """A policy document is invalid: ``errors`` maps field names to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """One level's settings; None means "not set here" (inherit)."""

    strategy: str | None = _rule(
        kind="strategy", merge=NEAREST, label="Strategy",
        help="How auto chooses: balanced, cost, latency or availability first.",
    )  # fmt: skip
    allowed_models: tuple[str, ...] | None = _rule(
        names="models", kind="patterns", merge=ALL_OF, label="Allowed models",
        help="Model ids or glob patterns (openai/*); empty: every model.",
    )  # fmt: skip
    blocked_models: tuple[str, ...] | None = _rule(
        names="models", kind="patterns", merge=UNION, label="Blocked models",
        help="Model ids or glob patterns.",
    )  # fmt: skip
    preferred_models: tuple[str, ...] | None = _rule(
        names="models", kind="patterns", merge=NEAREST, label="Preferred models",
        help="Tried first by auto when they fit the request.",
    )  # fmt: skip
    fallbacks: tuple[str, ...] | None = _rule(
        names="models", kind="names", merge=NEAREST, label="Fallbacks",
        help="Models tried, in this order, after the chosen ones failed.",
    )  # fmt: skip
    allowed_providers: tuple[str, ...] | None = _rule(
        names="providers", kind="names", merge=ALL_OF, label="Allowed providers",
        help="Provider slugs.",
    )  # fmt: skip
    blocked_providers: tuple[str, ...] | None = _rule(
        names="providers", kind="names", merge=UNION, label="Blocked providers",
        help="Provider slugs.",
    )  # fmt: skip
    allowed_regions: tuple[str, ...] | None = _rule(
        names="regions", kind="names", merge=ALL_OF, label="Allowed regions",
        help="Only deployments in these regions (data residency).",
    )  # fmt: skip
    max_price_per_million: Decimal | None = _rule(
        kind="decimal", merge=SMALLEST, label="Max price per million tokens (USD)",
        help="Input and output price caps.",
    )  # fmt: skip
    max_cost_per_request_usd: Decimal | None = _rule(
        kind="decimal", merge=SMALLEST, label="Max cost per request (USD)", positive=True,
        help="The request's worst case (prompt and max output at list price).",
    )  # fmt: skip
    max_latency_ms: int | None = _rule(
        kind="integer", merge=SMALLEST, label="Max latency (ms)", minimum=1,
        maximum=MAX_LATENCY_MS, message="must be a positive integer (milliseconds)",
    )  # fmt: skip
    quality_floor: int | None = _rule(
        kind="integer", merge=NEAREST, label="Quality floor", minimum=1, maximum=4,
        message="must be a quality tier from 1 (economy) to 4 (frontier)",
        choices=tuple(TIERS.items()), help="Only models of at least this quality tier.",
    )  # fmt: skip
    zero_data_retention_only: bool | None = _rule(
        kind="flag", merge=ANY, label="Only providers with zero data retention"
    )
    reference_model: str | None = _rule(
        names="models", kind="model", merge=NEAREST, label="Reference model",
        help="Savings are reported against this model.",
    )  # fmt: skip
    cost_quality: Decimal | None = _rule(
        kind="decimal", merge=NEAREST, label="Cost / quality trade-off (balanced)",
        minimum=Decimal(0), maximum=1, message="must be a number from 0 (cheapest) to 1 (best)",
        help="How much predicted quality balanced buys: 0 cheapest, 1 best quality, 0.5 default.",
    )  # fmt: skip

    @classmethod
    def from_document(cls, data: Any) -> PolicySpec:
        """Validate a policy document; raises PolicyError naming every bad field. Empty lists,
        empty strings and nulls mean "not set"."""
        if not isinstance(data, Mapping):
            raise PolicyError({"": "must be an object"})
        errors: dict[str, str] = {}
        unknown = sorted(str(k) for k in data if k not in RULES)
        for name in unknown:
            errors[name] = f"unknown field; known: {', '.join(RULES)}"
        values: dict[str, Any] = {}
        for name, rule in RULES.items():
            raw = data.get(name)
            if raw is None or raw == "" or raw == []:
                continue
            try:
                values[name] = _clean(rule, raw)
            except ValueError as exc:
                errors[name] = str(exc)
        if errors:
            raise PolicyError(errors)
        return cls(**values)

    def to_document(self) -> dict[str, Any]:
        """The JSON form, only the fields that are set (decimals as strings, "15", "3.5": the
        same from any database)."""
        out: dict[str, Any] = {}
        for name in RULES:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Decimal):
                value = format(value.normalize(), "f")
            out[name] = value
        return out

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in RULES)


RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in fields(PolicySpec)}


def _clean(rule: Rule, raw: Any) -> Any:
    if rule.kind == "strategy":
        if raw not in STRATEGIES:
            raise ValueError(f"must be one of {', '.join(STRATEGIES)}")
        return raw
    if rule.kind in ("patterns", "names"):
        return _names(raw)
    if rule.kind == "decimal":
        amount = _decimal(raw, positive=rule.positive, message=rule.message)
        if rule.maximum is not None and amount > rule.maximum:
            raise ValueError(rule.message or f"must be at most {rule.maximum}")
        return amount
    if rule.kind == "integer":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(rule.message or "must be a whole number")
        if (rule.minimum is not None and raw < rule.minimum) or (
            rule.maximum is not None and raw > rule.maximum
        ):
            raise ValueError(rule.message or f"must be {rule.minimum} to {rule.maximum}")
        return raw
    if rule.kind == "flag":
        if not isinstance(raw, bool):
            raise ValueError("must be true or false")
        return raw
    if not isinstance(raw, str) or not raw.strip() or len(raw.strip()) > MAX_ENTRY:
        raise ValueError(f"must be a model id (1 to {MAX_ENTRY} characters)")
    return raw.strip()


def _names(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list | tuple) or not all(isinstance(v, str) for v in raw):
        raise ValueError("must be a list of strings")
    cleaned = tuple(v.strip() for v in raw)
    if any(not v or len(v) > MAX_ENTRY for v in cleaned):
        raise ValueError(f"entries must be 1 to {MAX_ENTRY} characters")
    if len(cleaned) > MAX_LIST:
        raise ValueError(f"takes at most {MAX_LIST} entries")
    return cleaned


def _decimal(raw: Any, *, positive: bool, message: str = "") -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float | Decimal):
        raise ValueError(message or "must be a decimal number")
    try:
        amount = Decimal(str(raw))  # str() first: a float's repr is the decimal written
    except InvalidOperation:
        raise ValueError(message or "must be a decimal number") from None
    if not amount.is_finite() or amount < 0 or (positive and amount == 0):
        raise ValueError(
            message or ("must be a positive number" if positive else "must be zero or more")
        )
    return amount


def routing_policy_clean(value: Any) -> dict[str, Any] | None:
    """A key's ``routing_policy``: the stored document (None: no policy). Raises PolicyError."""
    if value is None:
        return None
    return PolicySpec.from_document(value).to_document()


def validate_model_patterns(value: Any, *, field: str = "allowed_models") -> list[str]:
    """A key's ``allowed_models`` list, with the policy's rules for model patterns."""
    try:
        return list(_names(value))
    except ValueError as exc:
        raise ValueError(f"{field} {exc}") from None
