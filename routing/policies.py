"""Routing policies: validation, the per-level merge, the in-process policy table and the writes.

Levels, farthest first: organization (its root node), department, team, project (each a
``RoutingPolicy`` row on the node), key (``ApiKey.routing_policy``, validated by orgs), request
(the gateway's ``megarouter`` body object, passed in as a :class:`RequestOverride`).

How levels combine (docs/routing.md, "Policies"):

- preferences, nearest wins: ``strategy``, ``fallbacks``, ``quality_floor``, ``reference_model``,
  ``preferred_models``;
- restrictions accumulate, so a lower level can narrow but never widen what a higher level
  allows: every level's ``allowed_models`` / ``allowed_providers`` / ``allowed_regions`` must
  match (intersection); ``blocked_*`` lists add up (union); caps take the smallest value
  (``max_price_per_million``, ``max_latency_ms``, ``max_cost_usd``); ``zero_data_retention_only``
  holds if any level sets it.

Hot path: :func:`policy_resolve` / :func:`apolicy_resolve` read an in-process table of every
policy row, reloaded when the policy version changed (checked at most once a second through the
cache, the database when the cache is not shared). A warm resolve does no I/O.
"""

from __future__ import annotations

import fnmatch
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import F

from megarouter import refresh, shared_cache
from orgs.audit import Actor, audit_event_record
from orgs.models import Node
from routing.policy_models import RoutingPolicy, RoutingPolicyVersion, Strategy

POLICY_VERSION_CACHE_KEY = "routing:policy-version"
CHECK_INTERVAL = 1.0
STRATEGIES: tuple[str, ...] = tuple(Strategy.values)
DEFAULT_STRATEGY = "balanced"
LIST_FIELDS = (
    "allowed_models",
    "blocked_models",
    "allowed_providers",
    "blocked_providers",
    "fallbacks",
    "allowed_regions",
)
FIELDS = (
    "strategy",
    *LIST_FIELDS,
    "max_price_per_million",
    "max_latency_ms",
    "zero_data_retention_only",
    "quality_floor",
    "reference_model",
)
MAX_LIST = 200


class PolicyError(ValueError):
    """A policy document is invalid: ``errors`` maps field names to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


# ---------------------------------------------------------------- one level


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """One level's settings; None means "not set here" (inherit)."""

    strategy: str | None = None
    allowed_models: tuple[str, ...] | None = None
    blocked_models: tuple[str, ...] | None = None
    allowed_providers: tuple[str, ...] | None = None
    blocked_providers: tuple[str, ...] | None = None
    fallbacks: tuple[str, ...] | None = None
    allowed_regions: tuple[str, ...] | None = None
    max_price_per_million: Decimal | None = None
    max_latency_ms: int | None = None
    zero_data_retention_only: bool | None = None
    quality_floor: int | None = None
    reference_model: str | None = None
    preferred_models: tuple[str, ...] | None = None
    max_cost_usd: Decimal | None = None


def _str_list(value: Any, name: str, errors: dict[str, str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        errors[name] = "must be a list of strings"
        return None
    cleaned = tuple(v.strip() for v in value)
    if any(not v or len(v) > 255 for v in cleaned):
        errors[name] = "entries must be 1 to 255 characters"
        return None
    if len(cleaned) > MAX_LIST:
        errors[name] = f"takes at most {MAX_LIST} entries"
        return None
    return cleaned


def _decimal(value: Any, name: str, errors: dict[str, str]) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        errors[name] = "must be a decimal number"
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        errors[name] = "must be a decimal number"
        return None
    if not amount.is_finite() or amount < 0:
        errors[name] = "must be zero or more"
        return None
    return amount


def policy_spec_from_dict(data: Mapping[str, Any]) -> PolicySpec:
    """Validate a policy document (the API's and the operator file's shape). Raises
    PolicyError naming every bad field. Empty lists and empty strings mean "not set"."""
    errors: dict[str, str] = {}
    unknown = sorted(set(data) - set(FIELDS))
    for name in unknown:
        errors[name] = f"unknown field; known: {', '.join(FIELDS)}"
    values: dict[str, Any] = {}
    strategy = data.get("strategy")
    if strategy not in (None, ""):
        if strategy not in STRATEGIES:
            errors["strategy"] = f"must be one of {', '.join(STRATEGIES)}"
        else:
            values["strategy"] = strategy
    for name in LIST_FIELDS:
        items = _str_list(data.get(name), name, errors)
        if items:
            values[name] = items
    price = _decimal(data.get("max_price_per_million"), "max_price_per_million", errors)
    if price is not None:
        values["max_price_per_million"] = price
    latency = data.get("max_latency_ms")
    if latency is not None:
        if isinstance(latency, bool) or not isinstance(latency, int) or latency < 1:
            errors["max_latency_ms"] = "must be a positive integer (milliseconds)"
        else:
            values["max_latency_ms"] = latency
    zdr = data.get("zero_data_retention_only")
    if zdr is not None:
        if not isinstance(zdr, bool):
            errors["zero_data_retention_only"] = "must be true or false"
        else:
            values["zero_data_retention_only"] = zdr
    floor = data.get("quality_floor")
    if floor is not None:
        if isinstance(floor, bool) or not isinstance(floor, int) or not 1 <= floor <= 4:
            errors["quality_floor"] = "must be a quality tier from 1 (economy) to 4 (frontier)"
        else:
            values["quality_floor"] = floor
    reference = data.get("reference_model")
    if reference not in (None, ""):
        if not isinstance(reference, str) or len(reference) > 255:
            errors["reference_model"] = "must be a model id"
        else:
            values["reference_model"] = reference.strip()
    if errors:
        raise PolicyError(errors)
    return PolicySpec(**values)


def policy_spec_to_dict(spec: PolicySpec) -> dict[str, Any]:
    """The document form (JSON-safe: decimals as strings), only the fields that are set."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(spec, name)
        if value is None:
            continue
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Decimal):
            value = format(value.normalize(), "f")  # "15", "3.5": the same from any database
        out[name] = value
    return out


def _spec_from_row(row: RoutingPolicy) -> PolicySpec:
    def items(value: Any) -> tuple[str, ...] | None:
        return tuple(value) if value else None

    return PolicySpec(
        strategy=row.strategy or None,
        allowed_models=items(row.allowed_models),
        blocked_models=items(row.blocked_models),
        allowed_providers=items(row.allowed_providers),
        blocked_providers=items(row.blocked_providers),
        fallbacks=items(row.fallbacks),
        allowed_regions=items(row.allowed_regions),
        max_price_per_million=row.max_price_per_million,
        max_latency_ms=row.max_latency_ms,
        zero_data_retention_only=row.zero_data_retention_only,
        quality_floor=row.quality_floor,
        reference_model=row.reference_model or None,
    )


def key_policy_spec(policy: Mapping[str, Any] | None) -> PolicySpec | None:
    """The key level: ``ApiKey.routing_policy`` as validated by ``orgs.policy`` (strategy,
    allowed / blocked / preferred models, allowed regions, max cost per request)."""
    if not policy:
        return None

    def items(name: str) -> tuple[str, ...] | None:
        value = policy.get(name)
        return tuple(value) if value else None

    cost = policy.get("max_cost_per_request_usd")
    return PolicySpec(
        strategy=policy.get("strategy") or None,
        allowed_models=items("allowed_models"),
        blocked_models=items("blocked_models"),
        preferred_models=items("preferred_models"),
        allowed_regions=items("allowed_regions"),
        max_cost_usd=Decimal(str(cost)) if cost is not None else None,
        reference_model=policy.get("reference_model") or None,
    )


@dataclass(frozen=True, slots=True)
class RequestOverride:
    """The per-request ``megarouter`` object, already parsed by the gateway."""

    strategy: str | None = None
    allowed_models: tuple[str, ...] | None = None
    fallbacks: tuple[str, ...] | None = None
    max_cost_usd: Decimal | None = None
    max_latency_ms: int | None = None
    region: str | None = None
    reference_model: str | None = None

    def spec(self) -> PolicySpec:
        return PolicySpec(
            strategy=self.strategy or None,
            allowed_models=tuple(self.allowed_models) if self.allowed_models else None,
            fallbacks=tuple(self.fallbacks) if self.fallbacks else None,
            max_cost_usd=self.max_cost_usd,
            max_latency_ms=self.max_latency_ms,
            allowed_regions=(self.region,) if self.region else None,
            reference_model=self.reference_model or None,
        )


# ---------------------------------------------------------------- the merge


@lru_cache(maxsize=4096)
def _matcher(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def matches(patterns: tuple[str, ...], value: str) -> bool:
    """Whether ``value`` equals one of the ids or matches one of the glob patterns."""
    return _matcher(patterns).match(value) is not None


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """What the engine applies. ``*_groups``: every group must match (one group per level)."""

    strategy: str = DEFAULT_STRATEGY
    allowed_model_groups: tuple[tuple[str, ...], ...] = ()
    blocked_models: tuple[str, ...] = ()
    allowed_provider_groups: tuple[tuple[str, ...], ...] = ()
    blocked_providers: tuple[str, ...] = ()
    region_groups: tuple[tuple[str, ...], ...] = ()
    fallbacks: tuple[str, ...] = ()
    preferred_models: tuple[str, ...] = ()
    max_price_per_million: Decimal | None = None
    max_latency_ms: int | None = None
    max_cost_usd: Decimal | None = None
    zero_data_retention_only: bool = False
    quality_floor: int | None = None
    reference_model: str | None = None
    levels: tuple[str, ...] = field(default=(), compare=False)  # levels that set something

    def model_allowed(self, model_id: str) -> bool:
        if self.blocked_models and matches(self.blocked_models, model_id):
            return False
        return all(matches(group, model_id) for group in self.allowed_model_groups)

    def provider_allowed(self, provider: str) -> bool:
        if self.blocked_providers and provider in self.blocked_providers:
            return False
        return all(provider in group for group in self.allowed_provider_groups)

    def region_allowed(self, region: str | None) -> bool:
        return all(region in group for group in self.region_groups)

    def summary(self) -> dict[str, Any]:
        """For the decision's explanation (no content, small)."""
        out: dict[str, Any] = {"strategy": self.strategy, "levels": list(self.levels)}
        if self.quality_floor is not None:
            out["quality_floor"] = self.quality_floor
        if self.zero_data_retention_only:
            out["zero_data_retention_only"] = True
        if self.max_price_per_million is not None:
            out["max_price_per_million"] = format(self.max_price_per_million.normalize(), "f")
        if self.max_latency_ms is not None:
            out["max_latency_ms"] = self.max_latency_ms
        if self.max_cost_usd is not None:
            out["max_cost_usd"] = format(self.max_cost_usd.normalize(), "f")
        return out


def _smallest(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def policy_merge(levels: Iterable[tuple[str, PolicySpec | None]]) -> EffectivePolicy:
    """Combine levels given farthest first (organization ... request)."""
    out = EffectivePolicy()
    names: list[str] = []
    for name, spec in levels:
        if spec is None or spec == PolicySpec():
            continue
        names.append(name)
        changes: dict[str, Any] = {}
        if spec.strategy:
            changes["strategy"] = spec.strategy
        if spec.fallbacks is not None:
            changes["fallbacks"] = spec.fallbacks
        if spec.preferred_models is not None:
            changes["preferred_models"] = spec.preferred_models
        if spec.quality_floor is not None:
            changes["quality_floor"] = spec.quality_floor
        if spec.reference_model:
            changes["reference_model"] = spec.reference_model
        if spec.allowed_models:
            changes["allowed_model_groups"] = (*out.allowed_model_groups, spec.allowed_models)
        if spec.allowed_providers:
            changes["allowed_provider_groups"] = (
                *out.allowed_provider_groups,
                spec.allowed_providers,
            )
        if spec.allowed_regions:
            changes["region_groups"] = (*out.region_groups, spec.allowed_regions)
        if spec.blocked_models:
            changes["blocked_models"] = (*out.blocked_models, *spec.blocked_models)
        if spec.blocked_providers:
            changes["blocked_providers"] = (*out.blocked_providers, *spec.blocked_providers)
        changes["max_price_per_million"] = _smallest(
            out.max_price_per_million, spec.max_price_per_million
        )
        changes["max_latency_ms"] = _smallest(out.max_latency_ms, spec.max_latency_ms)
        changes["max_cost_usd"] = _smallest(out.max_cost_usd, spec.max_cost_usd)
        if spec.zero_data_retention_only:
            changes["zero_data_retention_only"] = True
        out = replace(out, **changes)
    return replace(out, levels=tuple(names))


# ---------------------------------------------------------------- the in-process table


@dataclass(frozen=True)
class PolicyTable:
    version: int
    by_node: Mapping[int, PolicySpec]


class _Holder:
    def __init__(self) -> None:
        self.table: PolicyTable | None = None
        self.checked_at = 0.0
        self.lock = threading.Lock()


_holder = _Holder()


def _policy_version() -> int:
    return RoutingPolicyVersion.objects.filter(pk=1).values_list("version", flat=True).first() or 0


def policy_table_build() -> PolicyTable:
    """Every policy row, in two queries (version, rows)."""
    version = _policy_version()
    rows = RoutingPolicy.objects.all()
    return PolicyTable(
        version=version, by_node=MappingProxyType({r.node_id: _spec_from_row(r) for r in rows})
    )


def _cache_is_shared() -> bool:
    backend = settings.CACHES["default"]["BACKEND"]
    return not backend.endswith(("LocMemCache", "DummyCache"))


def _current_version() -> int:
    if _cache_is_shared():
        cached = shared_cache.get(POLICY_VERSION_CACHE_KEY)
        if cached is not None:
            return int(cached)
        version = _policy_version()
        # add, not set: never overwrite a newer version a writer stored meanwhile
        shared_cache.add(POLICY_VERSION_CACHE_KEY, version, timeout=None)
        return version
    return _policy_version()


def policy_table(*, max_age: float = CHECK_INTERVAL) -> PolicyTable:
    table = _holder.table
    if table is not None and time.monotonic() - _holder.checked_at < max_age:
        return table
    with _holder.lock:
        table = _holder.table
        if table is not None and time.monotonic() - _holder.checked_at < max_age:
            return table
        if table is None or _current_version() != table.version:
            table = policy_table_build()
            _holder.table = table
        _holder.checked_at = time.monotonic()
        return table


async def apolicy_table(*, max_age: float = CHECK_INTERVAL) -> PolicyTable:
    """``policy_table`` for async code: once loaded, the version check runs in the background
    after ``max_age`` (stale-while-revalidate); a request never waits for it."""
    table = _holder.table
    if table is None:
        return await sync_to_async(policy_table)(max_age=max_age)
    if time.monotonic() - _holder.checked_at >= max_age:
        refresh.in_background("policies", lambda: policy_table(max_age=max_age))
    return table


def policy_table_reset() -> None:
    """Forget the table, the cached version and the organizations' root ids (tests; after
    restoring a database)."""
    with _holder.lock:
        _holder.table = None
        _holder.checked_at = 0.0
        _roots.clear()
    cache.delete(POLICY_VERSION_CACHE_KEY)


LEVEL_NAMES = ("organization", "department", "team", "project")


def _resolve(
    table: PolicyTable,
    node_ids: Sequence[int | None],
    key_policy: Mapping[str, Any] | None,
    override: RequestOverride | None,
    key_allowed: Sequence[str] = (),
) -> EffectivePolicy:
    levels: list[tuple[str, PolicySpec | None]] = [
        (name, table.by_node.get(node_id) if node_id is not None else None)
        for name, node_id in zip(LEVEL_NAMES, node_ids, strict=False)
    ]
    levels.append(("key", key_policy_spec(key_policy)))
    if key_allowed:
        levels.append(("key", PolicySpec(allowed_models=tuple(key_allowed))))
    levels.append(("request", override.spec() if override else None))
    merged = policy_merge(levels)
    # the key's two documents are one level
    return replace(merged, levels=tuple(dict.fromkeys(merged.levels)))


def node_ids_for_key(key: Any) -> tuple[int | None, ...]:
    """(root, department, team, project) node ids of an orgs KeyContext. The root node id is
    the department's parent; KeyContext carries the organization id, so the root is looked up
    in the table by organization (``root_nodes``)."""
    return (
        _root_node(key.organization_id),
        key.department_id,
        key.team_id,
        key.project_id,
    )


_roots: dict[int, int] = {}


def _root_node(organization_id: int) -> int | None:
    root = _roots.get(organization_id)
    if root is None:
        root = (
            Node.objects.filter(organization_id=organization_id, parent__isnull=True)
            .values_list("pk", flat=True)
            .first()
        )
        if root is not None:
            _roots[organization_id] = root  # a root node never changes
    return root


def policy_resolve(
    *,
    node_ids: Sequence[int | None],
    key_policy: Mapping[str, Any] | None = None,
    override: RequestOverride | None = None,
) -> EffectivePolicy:
    """The effective policy for a request made at ``node_ids`` = (organization root,
    department, team, project) with the key's policy and the request's override."""
    return _resolve(policy_table(), node_ids, key_policy, override)


def policy_for_key(key: Any, override: RequestOverride | None = None) -> EffectivePolicy:
    """``policy_resolve`` for an orgs KeyContext (sync; the root id is cached per process).
    The key level is its ``routing_policy`` plus its ``allowed_models`` list."""
    return _resolve(
        policy_table(),
        node_ids_for_key(key),
        key.routing_policy,
        override,
        getattr(key, "allowed_models", ()),
    )


async def apolicy_for_key(key: Any, override: RequestOverride | None = None) -> EffectivePolicy:
    """The async form: no I/O once the table is fresh and the organization's root is known."""
    root = _roots.get(key.organization_id)
    if root is None:
        root = await sync_to_async(_root_node)(key.organization_id)
    table = await apolicy_table()
    return _resolve(
        table,
        (root, key.department_id, key.team_id, key.project_id),
        key.routing_policy,
        override,
        getattr(key, "allowed_models", ()),
    )


# ---------------------------------------------------------------- writes


def policy_version_bump() -> int:
    """Must run in the writer's transaction; the shared cache learns the version on commit."""
    updated = RoutingPolicyVersion.objects.filter(pk=1).update(version=F("version") + 1)
    if not updated:
        RoutingPolicyVersion.objects.create(pk=1, version=1)
    version = _policy_version()
    # Now and again on commit: a process that reloads before the commit reads the committed
    # (older) version from the database, so it keeps checking until the commit lands.
    cache.set(POLICY_VERSION_CACHE_KEY, version, timeout=None)
    transaction.on_commit(lambda: cache.set(POLICY_VERSION_CACHE_KEY, version, timeout=None))
    return version


def _row_values(spec: PolicySpec) -> dict[str, Any]:
    return {
        "strategy": spec.strategy or "",
        **{name: list(getattr(spec, name) or ()) for name in LIST_FIELDS},
        "max_price_per_million": spec.max_price_per_million,
        "max_latency_ms": spec.max_latency_ms,
        "zero_data_retention_only": spec.zero_data_retention_only,
        "quality_floor": spec.quality_floor,
        "reference_model": spec.reference_model or "",
    }


def routing_policy_set(*, actor: Actor, node: Node, data: Mapping[str, Any]) -> RoutingPolicy:
    """Create or replace the policy of ``node`` from a policy document (PolicyError if bad).
    Audited as ``routing_policy.set`` with the changed fields."""
    spec = policy_spec_from_dict(data)
    values = _row_values(spec)
    with transaction.atomic():
        policy = RoutingPolicy.objects.select_for_update().filter(node=node).first()
        if policy is None:
            policy = RoutingPolicy(organization_id=node.organization_id, node=node)
            before = {}
        else:
            before = policy_spec_to_dict(_spec_from_row(policy))
        for name, value in values.items():
            setattr(policy, name, value)
        policy.save()
        after = policy_spec_to_dict(spec)
        changes = {
            name: [before.get(name), after.get(name)]
            for name in FIELDS
            if before.get(name) != after.get(name)
        }
        if changes or before == {}:
            policy_version_bump()
            audit_event_record(
                organization=node.organization_id,
                actor=actor,
                action="routing_policy.set",
                target=policy,
                target_repr=f"{node.kind}:{node.slug}",
                changes=changes,
            )
    return policy


def routing_policy_delete(*, actor: Actor, policy: RoutingPolicy) -> None:
    with transaction.atomic():
        node = policy.node
        before = policy_spec_to_dict(_spec_from_row(policy))
        policy_id = policy.pk
        policy.delete()
        policy_version_bump()
        audit_event_record(
            organization=node.organization_id,
            actor=actor,
            action="routing_policy.delete",
            target_type="routingpolicy",
            target_id=policy_id,
            target_repr=f"{node.kind}:{node.slug}",
            changes={name: [value, None] for name, value in before.items()},
        )
