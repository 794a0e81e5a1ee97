"""The audit log as sentences: "Ada Lovelace (ada@example.com) gave Bob (bob@x.com) the
developer role on Engineering > Platform", each object named and linked to its console page.

One renderer for every place that shows events (the audit log, the overview's recent activity):
``audit_lines(organization, events)`` resolves the names a page of events refers to in a few
queries (one per kind of object, through ``orgs.selectors.tenant_rows`` / ``node_trails``, so a
name only ever comes from the events' own organization) and builds one ``AuditLine`` per event.

``SENTENCES`` maps every action ``audit_event_record`` is called with to the function that
words it (tests/console/test_audit_text.py fails on an action without one). An object that no
longer exists (or never belonged to the organization) reads as the name the event recorded, or
"a deleted key (id 2)". The recorded ids stay on each line (``AuditLine.raw``), as the API and
the CSV export give them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import prefetch_related_objects
from django.urls import reverse
from django.utils.html import conditional_escape, format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe

from billing.models import Budget, BudgetPeriod, BudgetScope, Report, ReportKind
from billing.money import usd_text
from identity.models import IdentityProvider
from orgs.audit import SERVICE_TOKEN_LABEL
from orgs.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    NodeKind,
    Organization,
    Role,
    ServiceToken,
)
from orgs.selectors import node_trails, tenant_rows
from routing.policy_models import RoutingPolicy


@dataclass(frozen=True)
class Ref:
    """An object a sentence names: its name, and its console page when it has one."""

    text: str
    url: str = ""


Part = str | Ref


@dataclass(frozen=True)
class AuditLine:
    event: AuditEvent
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        return "".join(p.text if isinstance(p, Ref) else p for p in self.parts)

    @property
    def html(self) -> SafeString:
        out = []
        for part in self.parts:
            if isinstance(part, Ref) and part.url:
                out.append(format_html('<a href="{}">{}</a>', part.url, part.text))
            else:
                out.append(conditional_escape(part.text if isinstance(part, Ref) else part))
        return mark_safe("".join(out))  # every part escaped above

    @property
    def raw_target(self) -> str:
        """The target as recorded: ``membership #7 · 3@5:developer``."""
        e = self.event
        bits = [f"{e.target_type} #{e.target_id}"] if e.target_type or e.target_id else []
        if e.target_repr:
            bits.append(e.target_repr)
        return " · ".join(bits)

    @property
    def raw(self) -> str:
        """The recorded action and target: ``membership.create · membership #7 · 3@5:developer``."""
        return " · ".join(bit for bit in (self.event.action, self.raw_target) if bit)


# ---------------------------------------------------------------- recorded values

# Membership.__str__ ("user@node:role") and Budget.__str__ ("scope:scope_id period limit"): what
# an event recorded as target_repr, read back when the row is gone.
_MEMBERSHIP_REPR = re.compile(r"^(\d+)@(\d+):(\w+)$")
_BUDGET_REPR = re.compile(r"^(\w+):(\d+) (\w+) ")
_KEY_REPR = re.compile(r"^(.*) \([^()]*\)$")  # ApiKey.__str__: "name (prefix)"
_NODE_REPR = re.compile(r"^(\w+):(.+)$")  # Node.__str__ / the policy events: "kind:slug"

_TARGET_KINDS = {
    "node": "node",
    "membership": "membership",
    "apikey": "key",
    "invitation": "invitation",
    "budget": "budget",
    "report": "report",
    "routingpolicy": "policy",
    "servicetoken": "service_token",
    "identityprovider": "provider",
}
# Changes that name another object by id (a plain id or [old, new]).
_CHANGE_KINDS = {
    "node": "node",
    "parent": "node",
    "project": "node",
    "membership": "membership",
    "invitation": "invitation",
    "provider": "provider",
    "added": "membership",  # sso.login: the memberships a sign-in's group mapping changed
    "removed": "membership",
}
_SCOPE_KINDS: dict[str, str] = {
    BudgetScope.ORGANIZATION: "node",
    BudgetScope.DEPARTMENT: "node",
    BudgetScope.TEAM: "node",
    BudgetScope.PROJECT: "node",
    BudgetScope.MEMBER: "membership",
    BudgetScope.KEY: "key",
}
_FIELD_NAMES = {
    "limit_usd": "limit",
    "rpm_limit": "requests per minute",
    "tpm_limit": "tokens per minute",
    "allowed_models": "allowed models",
    "ip_allowlist": "IP allowlist",
    "expires_at": "expiry",
    "time_zone": "time zone",
    "notify_emails": "notification emails",
    "webhook_url": "webhook URL",
    "routing_policy": "routing policy",
}
_MONEY_FIELDS = {"limit_usd", "amount", "balance_after"}


def _changes(event: AuditEvent) -> dict[str, Any]:
    return event.changes if isinstance(event.changes, dict) else {}


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _ids(value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [i for i in (_int(v) for v in values) if i is not None]


def _old_new(value: Any) -> tuple[Any, Any]:
    if isinstance(value, list) and len(value) == 2:
        return value[0], value[1]
    return None, value


def _value_text(name: str, value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name in _MONEY_FIELDS:
        return usd_text(value) or str(value)
    if isinstance(value, list):
        return ", ".join(_value_text("", v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value_text(str(k), v)}" for k, v in value.items())
    return str(value)


def _field(name: str) -> str:
    return _FIELD_NAMES.get(name, name.replace("_", " "))


def changes_text(changes: dict[str, Any]) -> str:
    """``{"name": ["A", "B"], "rpm_limit": [None, 60]}`` as "name from A to B, requests per
    minute from none to 60"."""
    out = []
    for name, value in changes.items():
        old, new = _old_new(value)
        out.append(f"{_field(name)} from {_value_text(name, old)} to {_value_text(name, new)}")
    return ", ".join(out)


def _date(value: Any, *, end: bool = False) -> str:
    """An ISO datetime as its day; an exclusive end at midnight is the day before."""
    try:
        moment = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if end and moment.time() == dt.time(0, 0):
        moment -= dt.timedelta(days=1)
    return moment.date().isoformat()


def _duration(seconds: int) -> str:
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


TRAIL = " \u203a "  # Engineering > Platform, with the single guillemet


def _quoted(name: Any) -> str:
    return f"\u2018{name}\u2019"


def _plural(n: Any, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def user_label(user: Any) -> str:
    """ "Ada Lovelace (ada@example.com)", or the username with the email."""
    name = user.get_full_name().strip() or user.get_username()
    if user.email and user.email.lower() != name.lower():
        return f"{name} ({user.email})"
    return name


def _label(choices: Any, value: Any) -> str:
    try:
        return str(choices(value).label).lower()
    except ValueError:
        return str(value)


# ---------------------------------------------------------------- names of a page of events


class AuditNames:
    """The objects a page of one organization's events refers to, fetched in bulk (one query
    per kind, none for a kind no event names), and the words and links for them."""

    def __init__(self, organization: Organization, events: list[AuditEvent]) -> None:
        self.organization = organization
        org_id = organization.pk
        wanted: dict[str, set[int]] = defaultdict(set)
        for e in events:
            kind = _TARGET_KINDS.get(e.target_type)
            if kind and _int(e.target_id) is not None:
                wanted[kind].add(int(e.target_id))
            for name, kind in _CHANGE_KINDS.items():
                wanted[kind].update(_ids(_changes(e).get(name)))
            if e.target_type == "membership" and (m := _MEMBERSHIP_REPR.match(e.target_repr)):
                wanted["node"].add(int(m.group(2)))

        def rows(queryset: Any, kind: str) -> dict[int, Any]:
            return tenant_rows(queryset, organization_id=org_id, ids=wanted[kind])

        # Rows of the other apps and invitations first: they name nodes, members and keys.
        self.budgets: dict[int, Budget] = rows(Budget.objects.all(), "budget")
        self.reports: dict[int, Report] = rows(Report.objects.all(), "report")
        self.policies: dict[int, RoutingPolicy] = rows(RoutingPolicy.objects.all(), "policy")
        self.invitations: dict[int, Invitation] = rows(Invitation.objects.all(), "invitation")
        self.service_tokens: dict[int, ServiceToken] = rows(
            ServiceToken.objects.all(), "service_token"
        )
        self.providers: dict[int, IdentityProvider] = rows(
            IdentityProvider.objects.all(), "provider"
        )
        for e in events:
            if e.target_type == "budget":
                scope, scope_id, _period = self._budget_recorded(e)
                if scope in _SCOPE_KINDS and scope_id is not None:
                    wanted[_SCOPE_KINDS[scope]].add(scope_id)
        wanted["node"].update(r.node_id for r in self.reports.values())
        wanted["node"].update(p.node_id for p in self.policies.values())
        wanted["node"].update(i.node_id for i in self.invitations.values())
        wanted["node"].update(t.node_id for t in self.service_tokens.values())
        self.memberships: dict[int, Membership] = rows(
            Membership.objects.select_related("user"), "membership"
        )
        self.keys: dict[int, ApiKey] = rows(ApiKey.objects.all(), "key")
        wanted["node"].update(m.node_id for m in self.memberships.values())
        wanted["node"].update(k.project_id for k in self.keys.values())
        self.trails = node_trails(organization_id=org_id, ids=wanted["node"])
        prefetch_related_objects(events, "actor")  # skipped when the caller selected them

    # -- links

    def url(self, name: str, *args: Any, query: dict[str, Any] | None = None) -> str:
        path = reverse(f"console:{name}", args=[self.organization.slug, *args])
        return f"{path}?{urlencode(query)}" if query else path

    # -- who

    def actor(self, e: AuditEvent) -> str:
        if e.actor is not None:
            return user_label(e.actor)
        if e.actor_label == "system":
            return "System"
        if e.actor_label.startswith(SERVICE_TOKEN_LABEL):  # "service token ci (mrs_...)"
            return "The " + e.actor_label
        return f"{e.actor_label} (a deleted user)" if e.actor_label else "Someone"

    # -- objects

    def organization_ref(self) -> Ref:
        return Ref(self.organization.name, self.url("overview"))

    def node(self, node_id: Any, *, kind: bool = False, recorded: str = "") -> list[Part]:
        trail = self.trails.get(_int(node_id) or 0)
        if not trail:
            if recorded:
                return [recorded]
            return [f"a deleted node (id {node_id})"] if node_id else ["an unknown node"]
        node = trail[-1]
        text = TRAIL.join(n.name for n in trail[1:]) or node.name
        ref = Ref(text, self.url("node", node.pk))
        return [f"the {_label(NodeKind, node.kind)} ", ref] if kind else [ref]

    def node_kind(self, e: AuditEvent) -> str:
        trail = self.trails.get(_int(e.target_id) or 0)
        if trail:
            return _label(NodeKind, trail[-1].kind)
        if kind := _changes(e).get("kind"):
            return _label(NodeKind, kind)
        m = _NODE_REPR.match(e.target_repr)
        return _label(NodeKind, m.group(1)) if m else "node"

    def node_recorded(self, e: AuditEvent) -> str:
        """The name (or else the slug) a node event recorded."""
        _old, name = _old_new(_changes(e).get("name"))
        if name:
            return str(name)
        m = _NODE_REPR.match(e.target_repr)
        return _quoted(m.group(2)) if m else ""

    def member(self, membership_id: Any) -> list[Part]:
        m = self.memberships.get(_int(membership_id) or 0)
        if m is None:
            return [f"a deleted member (id {membership_id})"]
        url = self.url("members", query={"q": m.user.get_username()}) if not m.removed_at else ""
        return [Ref(user_label(m.user), url)]

    def membership_node(self, e: AuditEvent) -> Any:
        m = self.memberships.get(_int(e.target_id) or 0)
        if m is not None:
            return m.node_id
        if node := _changes(e).get("node"):
            return node
        r = _MEMBERSHIP_REPR.match(e.target_repr)
        return int(r.group(2)) if r else None

    def key(self, key_id: Any, *, recorded: str = "") -> list[Part]:
        key = self.keys.get(_int(key_id) or 0)
        if key is not None:
            return ["the key ", Ref(_quoted(key.name), self.url("key", key.pk))]
        if recorded:
            return [f"the key {_quoted(recorded)}"]
        return [f"a deleted key (id {key_id})"]

    def key_of(self, e: AuditEvent) -> list[Part]:
        name = _old_new(_changes(e).get("name"))[1] or ""
        if not name and (m := _KEY_REPR.match(e.target_repr)):
            name = m.group(1)
        return self.key(e.target_id, recorded=str(name))

    def invitation(self, e: AuditEvent) -> tuple[Part, Invitation | None]:
        """The invited address (linked to the invitations page) and the row, if it exists."""
        inv = self.invitations.get(_int(e.target_id) or 0)
        email = inv.email if inv else _changes(e).get("email") or ""
        if not email and e.target_repr.startswith("invitation for "):
            email = e.target_repr.removeprefix("invitation for ")
        if not email:
            return f"a deleted invitation (id {e.target_id})", None
        return Ref(str(email), self.url("invitations") if inv else ""), inv

    def service_token(self, e: AuditEvent) -> list[Part]:
        """``the service token 'ci'`` (linked to the service tokens page while it exists)."""
        token = self.service_tokens.get(_int(e.target_id) or 0)
        name = token.name if token is not None else _changes(e).get("name") or ""
        if not name and (m := _KEY_REPR.match(e.target_repr)):
            name = m.group(1)
        if not name:
            return [f"a deleted service token (id {e.target_id})"]
        url = self.url("service-tokens") if token is not None else ""
        return ["the service token ", Ref(_quoted(name), url)]

    def _budget_recorded(self, e: AuditEvent) -> tuple[str, int | None, str]:
        """(scope, scope id, period) from the budget row, else from what the event recorded."""
        budget = self.budgets.get(_int(e.target_id) or 0)
        if budget is not None:
            return budget.scope, budget.scope_id, budget.period
        changes = _changes(e)
        scope, scope_id, period = changes.get("scope"), _int(changes.get("scope_id")), ""
        m = _BUDGET_REPR.match(e.target_repr)
        if m:
            scope = scope or m.group(1)
            scope_id = scope_id if scope_id is not None else int(m.group(2))
            period = m.group(3)
        return str(scope or ""), scope_id, str(changes.get("period") or period)

    def budget(self, e: AuditEvent, *, link: bool = True) -> list[Part]:
        """``the monthly budget of key 'ci-bot'`` (the budget linked while it exists)."""
        scope, scope_id, period = self._budget_recorded(e)
        if not scope:
            return [f"a deleted budget (id {e.target_id})"]
        budget = self.budgets.get(_int(e.target_id) or 0)
        name = budget.name if budget is not None else _changes(e).get("name") or ""
        words = f"{_label(BudgetPeriod, period)} budget" if period else "budget"
        if name:
            words += f" {_quoted(name)}"
        ref = Ref(words, self.url("budget", budget.pk) if budget is not None and link else "")
        if scope == BudgetScope.TAG:
            tag = budget.tag if budget is not None else _changes(e).get("tag") or ""
            return ["the ", ref, " of requests tagged ", f"{tag}" if tag else "(a tag)"]
        return ["the ", ref, " of ", *self.scope(scope, scope_id)]

    def scope(self, scope: str, scope_id: int | None) -> list[Part]:
        if scope == BudgetScope.MEMBER:
            return ["member ", *self.member(scope_id)]
        if scope == BudgetScope.KEY:
            return self.key(scope_id)
        if scope == BudgetScope.ORGANIZATION:
            return ["the organization ", self.organization_ref()]
        return self.node(scope_id, kind=True)

    def provider(self, provider_id: Any, *, recorded: str = "") -> list[Part]:
        provider = self.providers.get(_int(provider_id) or 0)
        if provider is not None:
            ref = Ref(_quoted(provider.name), self.url("sso-provider", provider.pk))
            return ["the identity provider ", ref]
        if recorded:
            return [f"the identity provider {_quoted(recorded)}"]
        return [f"a deleted identity provider (id {provider_id})"]

    def provider_of(self, e: AuditEvent) -> list[Part]:
        if e.target_type == "identityprovider":
            name = _old_new(_changes(e).get("name"))[1] or e.target_repr
            return self.provider(e.target_id, recorded=str(name or ""))
        return self.provider(_changes(e).get("provider"))

    def memberships_text(self, ids: Any) -> list[Part]:
        """ "Engineering > Platform as developer, ..." for membership ids."""
        out: list[Part] = []
        for membership_id in _ids(ids):
            m = self.memberships.get(membership_id)
            if out:
                out.append(", ")
            if m is None:
                out.append(f"a deleted membership (id {membership_id})")
            else:
                out.extend([*self.node(m.node_id), f" as {_label(Role, m.role)}"])
        return out

    def money(self, value: Any, *, sign: bool = False) -> Ref:
        return Ref(usd_text(value, sign=sign) or str(value), self.url("billing"))


# ---------------------------------------------------------------- the sentences

Sentence = Callable[[AuditEvent, AuditNames], list[Part]]
SENTENCES: dict[str, Sentence] = {}


def sentence(action: str) -> Callable[[Sentence], Sentence]:
    def register(fn: Sentence) -> Sentence:
        SENTENCES[action] = fn
        return fn

    return register


@sentence("organization.create")
def _organization_create(e: AuditEvent, n: AuditNames) -> list[Part]:
    return ["created the organization ", n.organization_ref()]


@sentence("organization.update")
def _organization_update(e: AuditEvent, n: AuditNames) -> list[Part]:
    return ["changed the settings of ", n.organization_ref(), f": {changes_text(_changes(e))}"]


@sentence("organization.mfa_require")
def _organization_mfa_require(e: AuditEvent, n: AuditNames) -> list[Part]:
    _old, new = _changes(e).get("require_mfa") or [None, None]
    if new:
        return ["required multi-factor authentication of every member of ", n.organization_ref()]
    return ["stopped requiring multi-factor authentication in ", n.organization_ref()]


@sentence("organization.archive")
def _organization_archive(e: AuditEvent, n: AuditNames) -> list[Part]:
    revoked = _changes(e).get("revoked_keys") or 0
    tail = f" and revoked {_plural(revoked, 'key')}" if revoked else ""
    return ["archived the organization ", n.organization_ref(), tail]


@sentence("organization.seed_scale")
def _organization_seed_scale(e: AuditEvent, n: AuditNames) -> list[Part]:
    c = _changes(e)
    counts = ", ".join(
        _plural(c.get(name, 0), noun)
        for name, noun in (
            ("members", "member"),
            ("departments", "department"),
            ("teams", "team"),
            ("projects", "project"),
        )
    )
    return [
        "seeded ",
        n.organization_ref(),
        f" with {counts} and {_plural(c.get('keys', 0), 'key')}",
    ]


@sentence("node.create")
def _node_create(e: AuditEvent, n: AuditNames) -> list[Part]:
    return [f"created the {n.node_kind(e)} ", *n.node(e.target_id, recorded=n.node_recorded(e))]


@sentence("node.update")
def _node_update(e: AuditEvent, n: AuditNames) -> list[Part]:
    node = n.node(e.target_id, recorded=n.node_recorded(e))
    return [f"changed the {n.node_kind(e)} ", *node, f": {changes_text(_changes(e))}"]


@sentence("node.move")
def _node_move(e: AuditEvent, n: AuditNames) -> list[Part]:
    old, new = _old_new(_changes(e).get("parent"))
    node = n.node(e.target_id, recorded=n.node_recorded(e))
    return [f"moved the {n.node_kind(e)} ", *node, " from ", *n.node(old), " to ", *n.node(new)]


@sentence("node.archive")
def _node_archive(e: AuditEvent, n: AuditNames) -> list[Part]:
    c = _changes(e)
    below = (c.get("archived_nodes") or 1) - 1
    tail = f" and {_plural(below, 'node')} below it" if below > 0 else ""
    if revoked := c.get("revoked_keys"):
        tail += f", revoking {_plural(revoked, 'key')}"
    node = n.node(e.target_id, recorded=n.node_recorded(e))
    return [f"archived the {n.node_kind(e)} ", *node, tail]


@sentence("membership.create")
def _membership_create(e: AuditEvent, n: AuditNames) -> list[Part]:
    role = _label(Role, _changes(e).get("role"))
    node = n.node(n.membership_node(e))
    if e.actor_id is not None and e.actor_id == _int(_changes(e).get("user")):
        return ["joined ", *node, f" as {role}"]  # an accepted invitation
    return ["gave ", *n.member(e.target_id), f" the {role} role on ", *node]


@sentence("membership.update")
def _membership_update(e: AuditEvent, n: AuditNames) -> list[Part]:
    old, new = _old_new(_changes(e).get("role"))
    return [
        "changed the role of ",
        *n.member(e.target_id),
        " on ",
        *n.node(n.membership_node(e)),
        f" from {_label(Role, old)} to {_label(Role, new)}",
    ]


@sentence("membership.remove")
def _membership_remove(e: AuditEvent, n: AuditNames) -> list[Part]:
    role = _label(Role, _changes(e).get("role"))
    return [
        "removed ",
        *n.member(e.target_id),
        " from ",
        *n.node(n.membership_node(e)),
        f" (was {role})",
    ]


@sentence("invitation.create")
def _invitation_create(e: AuditEvent, n: AuditNames) -> list[Part]:
    email, row = n.invitation(e)
    c = _changes(e)
    node = row.node_id if row else c.get("node")
    role = _label(Role, row.role if row else c.get("role"))
    return ["invited ", email, " to ", *n.node(node), f" as {role}"]


@sentence("invitation.accept")
def _invitation_accept(e: AuditEvent, n: AuditNames) -> list[Part]:
    email, row = n.invitation(e)
    joined: list[Part] = []
    if row is not None:
        joined = [" and joined ", *n.node(row.node_id), f" as {_label(Role, row.role)}"]
    return ["accepted the invitation for ", email, *joined]


@sentence("invitation.revoke")
def _invitation_revoke(e: AuditEvent, n: AuditNames) -> list[Part]:
    email, row = n.invitation(e)
    return ["revoked the invitation for ", email, *([" to ", *n.node(row.node_id)] if row else [])]


@sentence("user.create")
def _user_create(e: AuditEvent, n: AuditNames) -> list[Part]:
    """An invited person's new account (the actor is that account)."""
    c = _changes(e)
    invitation = n.invitations.get(_int(c.get("invitation")) or 0)
    source: list[Part] = []
    if invitation is not None:
        source = [" from the invitation to ", *n.node(invitation.node_id)]
    if e.actor_id is not None and str(e.actor_id) == e.target_id:
        return ["created their account", *source]
    who = " ".join(str(v) for v in (c.get("name"), c.get("email")) if v) or e.target_repr
    return [f"created the account of {who or 'a deleted user'}", *source]


@sentence("api_key.create")
def _api_key_create(e: AuditEvent, n: AuditNames) -> list[Part]:
    project = _changes(e).get("project")
    return ["created ", *n.key_of(e), " in ", *n.node(project, kind=True)]


@sentence("api_key.update")
def _api_key_update(e: AuditEvent, n: AuditNames) -> list[Part]:
    return ["changed ", *n.key_of(e), f": {changes_text(_changes(e))}"]


@sentence("api_key.revoke")
def _api_key_revoke(e: AuditEvent, n: AuditNames) -> list[Part]:
    reason = _changes(e).get("reason") or ""
    return ["revoked ", *n.key_of(e), f" ({reason})" if reason and reason != "revoked" else ""]


@sentence("api_key.rotate")
def _api_key_rotate(e: AuditEvent, n: AuditNames) -> list[Part]:
    grace = _int(_changes(e).get("grace_seconds")) or 0
    tail = f"works for {_duration(grace)} more" if grace else "stopped working at once"
    return ["rotated ", *n.key_of(e), f"; the old secret {tail}"]


@sentence("service_token.create")
def _service_token_create(e: AuditEvent, n: AuditNames) -> list[Part]:
    c = _changes(e)
    token = n.service_tokens.get(_int(e.target_id) or 0)
    node = token.node_id if token is not None else c.get("node")
    trail = n.trails.get(_int(node) or 0)
    where: list[Part] = (
        [" for the whole organization"]
        if trail and len(trail) == 1
        else [" limited to ", *n.node(node, kind=True)]
    )
    scopes = ", ".join(str(s) for s in c.get("scopes") or []) or "no scopes"
    expiry = f", expiring {_date(c['expires_at'])}" if c.get("expires_at") else ""
    return ["created ", *n.service_token(e), *where, f" with {scopes}{expiry}"]


@sentence("service_token.update")
def _service_token_update(e: AuditEvent, n: AuditNames) -> list[Part]:
    old, new = _old_new(_changes(e).get("expires_at"))
    was = _date(old) if old else "never"
    now = f"to expire {_date(new)}" if new else "to never expire"
    return ["set ", *n.service_token(e), f" {now} (was {was})"]


@sentence("service_token.revoke")
def _service_token_revoke(e: AuditEvent, n: AuditNames) -> list[Part]:
    return ["revoked ", *n.service_token(e)]


@sentence("billing.transfer")
def _billing_transfer(e: AuditEvent, n: AuditNames) -> list[Part]:
    c = _changes(e)
    tail = f" (reference {c['reference']})" if c.get("reference") else ""
    return ["recorded a bank transfer of ", n.money(c.get("amount")), tail]


@sentence("billing.refund")
def _billing_refund(e: AuditEvent, n: AuditNames) -> list[Part]:
    c = _changes(e)
    amount = str(c.get("amount") or "").lstrip("-")
    return ["refunded ", n.money(amount), f" ({c['reason']})" if c.get("reason") else ""]


@sentence("billing.adjust")
def _billing_adjust(e: AuditEvent, n: AuditNames) -> list[Part]:
    c = _changes(e)
    reason = f" ({c['reason']})" if c.get("reason") else ""
    return ["adjusted the balance by ", n.money(c.get("amount"), sign=True), reason]


@sentence("billing.checkout")
def _billing_checkout(e: AuditEvent, n: AuditNames) -> list[Part]:
    return ["started a card checkout of ", n.money(_changes(e).get("amount"))]


@sentence("billing.payment")
def _billing_payment(e: AuditEvent, n: AuditNames) -> list[Part]:
    c = _changes(e)
    source = f" from {c['provider']}" if c.get("provider") else ""
    return ["credited a card payment of ", n.money(c.get("amount")), source]


@sentence("budget.create")
def _budget_create(e: AuditEvent, n: AuditNames) -> list[Part]:
    limit = usd_text(_changes(e).get("limit_usd"))
    return ["created ", *n.budget(e), f" with a limit of {limit}" if limit else ""]


@sentence("budget.update")
def _budget_update(e: AuditEvent, n: AuditNames) -> list[Part]:
    changes = _changes(e)
    if set(changes) == {"limit_usd"}:
        old, new = _old_new(changes["limit_usd"])
        was = f" (was {usd_text(old)})" if old is not None else ""
        return ["set ", *n.budget(e), f" to {usd_text(new)}{was}"]
    return ["changed ", *n.budget(e), f": {changes_text(changes)}"]


@sentence("budget.delete")
def _budget_delete(e: AuditEvent, n: AuditNames) -> list[Part]:
    return ["deleted ", *n.budget(e, link=False)]


@sentence("report.create")
def _report_create(e: AuditEvent, n: AuditNames) -> list[Part]:
    c = _changes(e)
    report = n.reports.get(_int(e.target_id) or 0)
    label = str(ReportKind(c["kind"]).label) if c.get("kind") in ReportKind.values else "report"
    if label[1:2].islower():  # "Monthly statement (PDF)", not "PDF spend report"
        label = label[0].lower() + label[1:]
    status = f" ({report.get_status_display().lower()})" if report is not None else ""
    period = ""
    if c.get("from") and c.get("to"):
        period = f" for {_date(c['from'])} to {_date(c['to'], end=True)}"
    node = report.node_id if report is not None else c.get("node")
    report_ref = Ref(label, n.url("reports"))
    return ["requested a ", report_ref, " of ", *n.node(node), period, status]


@sentence("routing_policy.set")
def _routing_policy_set(e: AuditEvent, n: AuditNames) -> list[Part]:
    policy = n.policies.get(_int(e.target_id) or 0)
    changes = _changes(e)
    ref = Ref("routing policy", n.url("policies", query={"node": policy.node_id}) if policy else "")
    tail = f": {changes_text(changes)}" if changes else " (empty: it inherits everything)"
    return ["set the ", ref, " of ", *_policy_node(e, n, policy), tail]


@sentence("routing_policy.delete")
def _routing_policy_delete(e: AuditEvent, n: AuditNames) -> list[Part]:
    return ["removed the routing policy of ", *_policy_node(e, n, None)]


def _policy_node(e: AuditEvent, n: AuditNames, policy: RoutingPolicy | None) -> list[Part]:
    if policy is not None:
        return n.node(policy.node_id, kind=True)
    m = _NODE_REPR.match(e.target_repr)
    return [f"the {_label(NodeKind, m.group(1))} {_quoted(m.group(2))}"] if m else ["a node"]


@sentence("identity_provider.create")
def _identity_provider_create(e: AuditEvent, n: AuditNames) -> list[Part]:
    domains = _changes(e).get("domains") or []
    tail = f" for {', '.join(str(d) for d in domains)}" if domains else ""
    return ["added ", *n.provider_of(e), tail]


@sentence("identity_provider.update")
def _identity_provider_update(e: AuditEvent, n: AuditNames) -> list[Part]:
    changes = dict(_changes(e))
    secret = changes.pop("client_secret", None)
    words = [changes_text(changes)] if changes else []
    if secret is not None:
        words.append("a new client secret")
    return ["changed ", *n.provider_of(e), f": {', '.join(words)}" if words else ""]


def _mapping_words(e: AuditEvent, n: AuditNames) -> list[Part]:
    c = _changes(e)
    return [
        f"the group {c.get('group') or '(unknown)'} of ",
        *n.provider_of(e),
        f" to {_label(Role, c.get('role'))} on ",
        *n.node(c.get("node")),
    ]


@sentence("group_mapping.create")
def _group_mapping_create(e: AuditEvent, n: AuditNames) -> list[Part]:
    return ["mapped ", *_mapping_words(e, n)]


@sentence("group_mapping.delete")
def _group_mapping_delete(e: AuditEvent, n: AuditNames) -> list[Part]:
    return ["stopped mapping ", *_mapping_words(e, n)]


@sentence("sso_policy.update")
def _sso_policy_update(e: AuditEvent, n: AuditNames) -> list[Part]:
    _old, required = _old_new(_changes(e).get("sso_required"))
    if required is False:
        return ["allowed password login again for the members of ", n.organization_ref()]
    return ["required single sign-on (no password login) for the members of ", n.organization_ref()]


@sentence("sso.login")
def _sso_login(e: AuditEvent, n: AuditNames) -> list[Part]:
    c = _changes(e)
    groups = [str(g) for g in c.get("groups") or []]
    out: list[Part] = ["signed in with single sign-on through ", *n.provider_of(e)]
    out.append(f" (mapped groups: {', '.join(groups)})" if groups else " (no mapped group)")
    if _ids(c.get("added")):
        out.extend(["; joined ", *n.memberships_text(c.get("added"))])
    if _ids(c.get("removed")):
        out.extend(["; left ", *n.memberships_text(c.get("removed"))])
    return out


@sentence("sso.account_create")
def _sso_account_create(e: AuditEvent, n: AuditNames) -> list[Part]:
    return ["created their account by single sign-on through ", *n.provider_of(e)]


@sentence("sso.account_link")
def _sso_account_link(e: AuditEvent, n: AuditNames) -> list[Part]:
    return ["linked their existing account to ", *n.provider_of(e)]


def _unknown(e: AuditEvent, n: AuditNames) -> list[Part]:
    """An action no sentence words (an event written by older code)."""
    what = e.target_repr or (f"{e.target_type} {e.target_id}" if e.target_type else "")
    return [f"recorded {e.action}" + (f" on {what}" if what else "")]


def audit_lines(organization: Organization, events: Iterable[AuditEvent]) -> list[AuditLine]:
    """A sentence for each of ``organization``'s ``events``, names fetched in bulk."""
    events = list(events)
    names = AuditNames(organization, events)
    out = []
    for e in events:
        parts = SENTENCES.get(e.action, _unknown)(e, names)
        out.append(AuditLine(e, (names.actor(e), " ", *(p for p in parts if p))))
    return out
