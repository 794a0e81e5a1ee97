"""Routing policies: the per-level merge, the in-process policy table and the writes.

The document and its fields are declared once in ``orgs.policy`` (``PolicySpec``: types, bounds,
messages, how each field combines). Levels, farthest first: organization (its root node),
department, team, project (each a ``RoutingPolicy`` row on the node), key
(``ApiKey.routing_policy``, plus its ``allowed_models``), request (the gateway's ``megarouter``
body object).

How levels combine (docs/routing.md, "Policies"):

- preferences, nearest wins: ``strategy``, ``fallbacks``, ``quality_floor``, ``reference_model``,
  ``preferred_models``, ``cost_quality``;
- restrictions accumulate, so a lower level can narrow but never widen what a higher level
  allows: every level's ``allowed_models`` / ``allowed_providers`` / ``allowed_regions`` must
  match (intersection); ``blocked_*`` lists add up (union); caps take the smallest value
  (``max_price_per_million``, ``max_latency_ms``, ``max_cost_per_request_usd``);
  ``zero_data_retention_only`` holds if any level sets it.

Hot path: :func:`apolicy_for_key` reads an in-process table of every policy row, reloaded when
the policy version changed (checked at most once a second through the cache, the database when
the cache is not shared). A warm resolve does no I/O.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
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
from orgs.policy import (
    ALL_OF,
    ANY,
    NEAREST,
    RULES,
    SMALLEST,
    STRATEGIES,
    UNION,
    PolicyError,
    PolicySpec,
)
from routing.policy_models import RoutingPolicy, RoutingPolicyVersion

__all__ = ["STRATEGIES", "EffectivePolicy", "PolicyError", "PolicySpec", "policy_merge"]

POLICY_VERSION_CACHE_KEY = "routing:policy-version"
CHECK_INTERVAL = 1.0
DEFAULT_STRATEGY = "balanced"


# ---------------------------------------------------------------- the merge


@lru_cache(maxsize=4096)
def _matcher(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def matches(patterns: tuple[str, ...], value: str) -> bool:
    """Whether ``value`` equals one of the ids or matches one of the glob patterns."""
    return _matcher(patterns).match(value) is not None


# The merged form of the fields every level must match: one group per level that sets them.
GROUPS = {
    "allowed_models": "allowed_model_groups",
    "allowed_providers": "allowed_provider_groups",
    "allowed_regions": "region_groups",
}


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """What the engine applies. ``*_groups``: every group must match (one group per level).
    ``sources`` are the levels that set something, for saying which one refused."""

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
    max_cost_per_request_usd: Decimal | None = None
    zero_data_retention_only: bool = False
    quality_floor: int | None = None
    reference_model: str | None = None
    cost_quality: Decimal | None = None  # balanced's willingness to pay; None: the default
    levels: tuple[str, ...] = field(default=(), compare=False)  # levels that set something
    sources: tuple[tuple[str, PolicySpec], ...] = field(default=(), compare=False)

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

    def denied_by(self, model_id: str) -> str | None:
        """The farthest level whose allowed / blocked models refuse ``model_id``."""
        for level, spec in self.sources:
            if spec.blocked_models and matches(spec.blocked_models, model_id):
                return level
            if spec.allowed_models and not matches(spec.allowed_models, model_id):
                return level
        return None

    def set_by(self, name: str) -> str | None:
        """The level whose value of ``name`` is in force (for a cap: the smallest one)."""
        found: tuple[str, Any] | None = None
        for level, spec in self.sources:
            value = getattr(spec, name)
            if value is not None and (
                found is None or RULES[name].merge != SMALLEST or value < found[1]
            ):
                found = (level, value)
        return found[0] if found else None

    def summary(self) -> dict[str, Any]:
        """For the decision's explanation (no content, small)."""
        out: dict[str, Any] = {"strategy": self.strategy, "levels": list(self.levels)}
        if self.quality_floor is not None:
            out["quality_floor"] = self.quality_floor
        if self.zero_data_retention_only:
            out["zero_data_retention_only"] = True
        for name in ("max_price_per_million", "max_cost_per_request_usd", "cost_quality"):
            value = getattr(self, name)
            if value is not None:
                out[name] = format(value.normalize(), "f")
        if self.max_latency_ms is not None:
            out["max_latency_ms"] = self.max_latency_ms
        return out

    def document(self) -> dict[str, Any]:
        """The merged policy in the document's field names (the API's ``effective``): a field
        every level must match is a list of lists (one per level)."""
        out: dict[str, Any] = {}
        for name, rule in RULES.items():
            value = getattr(self, GROUPS.get(name, name))
            if value in (None, (), False):
                continue
            if rule.merge == ALL_OF:
                value = [list(group) for group in value]
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Decimal):
                value = format(value.normalize(), "f")
            out[name] = value
        out.setdefault("strategy", self.strategy)
        return out


def policy_merge(levels: Iterable[tuple[str, PolicySpec | None]]) -> EffectivePolicy:
    """Combine levels given farthest first (organization ... request), each field by its
    declared rule (``orgs.policy``)."""
    merged: dict[str, Any] = {}
    sources: list[tuple[str, PolicySpec]] = []
    for level, spec in levels:
        if spec is None or spec.is_empty():
            continue
        sources.append((level, spec))
        for name, rule in RULES.items():
            value = getattr(spec, name)
            if value is None:
                continue
            target = GROUPS.get(name, name)
            current = merged.get(target)
            if rule.merge == NEAREST:
                merged[target] = value
            elif rule.merge == ALL_OF:
                merged[target] = (*(current or ()), value)
            elif rule.merge == UNION:
                merged[target] = (*(current or ()), *value)
            elif rule.merge == SMALLEST:
                merged[target] = value if current is None else min(current, value)
            elif rule.merge == ANY and value:
                merged[target] = True
    levels_named = tuple(dict.fromkeys(level for level, _ in sources))
    return EffectivePolicy(**merged, levels=levels_named, sources=tuple(sources))


# ---------------------------------------------------------------- the in-process table


@dataclass(frozen=True)
class PolicyTable:
    version: int
    by_node: Mapping[int, PolicySpec]


def _policy_version() -> int:
    return RoutingPolicyVersion.objects.filter(pk=1).values_list("version", flat=True).first() or 0


def policy_table_build() -> PolicyTable:
    """Every policy row, in two queries (version, rows)."""
    version = _policy_version()
    rows = RoutingPolicy.objects.values_list("node_id", "document")
    return PolicyTable(
        version=version,
        by_node=MappingProxyType({node_id: PolicySpec.from_document(doc) for node_id, doc in rows}),
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


_holder: refresh.Versioned[PolicyTable] = refresh.Versioned(
    "policies", lambda: policy_table_build(), lambda table: _current_version() != table.version
)


def policy_table(*, max_age: float = CHECK_INTERVAL) -> PolicyTable:
    """Every policy row, re-checked against the version at most every ``max_age`` seconds."""
    return _holder.get(max_age)


async def apolicy_table(*, max_age: float = CHECK_INTERVAL) -> PolicyTable:
    """``policy_table`` for async code: once loaded, the version check runs in the background
    after ``max_age`` (stale-while-revalidate); a request never waits for it."""
    return await _holder.aget(max_age)


def policy_table_reset() -> None:
    """Forget the table, the cached version and the organizations' root ids (tests; after
    restoring a database)."""
    _holder.reset()
    _roots.clear()
    cache.delete(POLICY_VERSION_CACHE_KEY)


LEVEL_NAMES = ("organization", "department", "team", "project")


def _resolve(
    table: PolicyTable,
    node_ids: Sequence[int | None],
    key_policy: Mapping[str, Any] | None,
    override: PolicySpec | None,
    key_allowed: Sequence[str] = (),
) -> EffectivePolicy:
    levels: list[tuple[str, PolicySpec | None]] = [
        (name, table.by_node.get(node_id) if node_id is not None else None)
        for name, node_id in zip(LEVEL_NAMES, node_ids, strict=False)
    ]
    levels.append(("key", _key_spec(key_policy)))
    if key_allowed:  # the key's two documents are one level
        levels.append(("key", PolicySpec(allowed_models=tuple(key_allowed))))
    levels.append(("request", override))
    return policy_merge(levels)


@lru_cache(maxsize=4096)
def _key_spec_cached(document: tuple[tuple[str, Any], ...]) -> PolicySpec:
    return PolicySpec.from_document(
        {k: list(v) if isinstance(v, tuple) else v for k, v in document}
    )


def _key_spec(document: Mapping[str, Any] | None) -> PolicySpec | None:
    """The key level: ``ApiKey.routing_policy`` (stored as validated by ``orgs``), parsed
    once per distinct document."""
    if not document:
        return None
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in document.items()))
    return _key_spec_cached(frozen)


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
    override: PolicySpec | None = None,
) -> EffectivePolicy:
    """The effective policy for a request made at ``node_ids`` = (organization root,
    department, team, project) with the key's policy and the request's override."""
    return _resolve(policy_table(), node_ids, key_policy, override)


def policy_for_key(key: Any, override: PolicySpec | None = None) -> EffectivePolicy:
    """``policy_resolve`` for an orgs KeyContext (sync; the root id is cached per process).
    The key level is its ``routing_policy`` plus its ``allowed_models`` list."""
    return _resolve(
        policy_table(),
        node_ids_for_key(key),
        key.routing_policy,
        override,
        getattr(key, "allowed_models", ()),
    )


async def apolicy_for_key(key: Any, override: PolicySpec | None = None) -> EffectivePolicy:
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


def routing_policy_set(*, actor: Actor, node: Node, data: Mapping[str, Any]) -> RoutingPolicy:
    """Create or replace the policy of ``node`` from a policy document (PolicyError if bad).
    Audited as ``routing_policy.set`` with the changed fields."""
    after = PolicySpec.from_document(data).to_document()
    with transaction.atomic():
        policy = RoutingPolicy.objects.select_for_update().filter(node=node).first()
        if policy is None:
            policy = RoutingPolicy(organization_id=node.organization_id, node=node)
            before: dict[str, Any] = {}
            created = True
        else:
            before = dict(policy.document)
            created = False
        policy.document = after
        policy.save()
        changes = {
            name: [before.get(name), after.get(name)]
            for name in RULES
            if before.get(name) != after.get(name)
        }
        if changes or created:
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


def _is_glob(entry: str) -> bool:
    return any(c in entry for c in "*?[")


def catalog_choices(snapshot: Any) -> dict[str, list[str]]:
    """What policy entries can name today, per ``Rule.names``: the catalog's model ids, its
    provider slugs and the regions its deployments are in (sorted)."""
    regions = {d.region for d in snapshot.deployments_by_id.values() if d.region}
    return {
        "models": sorted(snapshot.models),
        "providers": sorted(snapshot.providers),
        "regions": sorted(regions),
    }


def policy_catalog_warnings(document: Mapping[str, Any], snapshot: Any) -> dict[str, str]:
    """The entries of a valid policy document that name nothing in the catalog ``snapshot``
    today, one message per field: a typo (``gpt-4.1-mnii``) or a model not yet imported. A
    warning, not an error: the catalog changes after a policy is written (a model is retired,
    another is added) and the policy stays as written (docs/routing.md, "Policies")."""
    choices = catalog_choices(snapshot)
    warnings: dict[str, str] = {}
    for name, rule in RULES.items():
        value = document.get(name)
        if not rule.names or value in (None, "", []):
            continue
        entries = [value] if isinstance(value, str) else list(value)
        missing = [e for e in entries if not _names_something(e, rule.names, snapshot, choices)]
        if missing:
            what = {"models": "model", "providers": "provider", "regions": "region"}[rule.names]
            listed = ", ".join(f"'{e}'" for e in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            verb = "matches" if len(missing) == 1 else "match"
            warnings[name] = f"{listed}{more} {verb} no {what} in the catalog today"
    return warnings


def _names_something(entry: str, names: str, snapshot: Any, choices: dict[str, list[str]]) -> bool:
    if _is_glob(entry):
        return any(matches((entry,), known) for known in choices[names])
    if names == "models":
        try:
            snapshot.resolve(entry)
        except LookupError:  # unknown, or a bare name several providers use
            return False
        return True
    return entry in choices[names]


def routing_policy_delete(*, actor: Actor, policy: RoutingPolicy) -> None:
    with transaction.atomic():
        node = policy.node
        before = dict(policy.document)
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
