"""The audit log: ``audit_event_record`` writes one event in the caller's transaction.

Other apps (budgets, policies, credentials) call it from their services too. ``changes`` maps a
field to ``[old, new]`` (or to the new value on create); values under names that look like
secrets are replaced with ``"[redacted]"`` and values are made JSON-safe.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import models, transaction

from orgs.models import AuditEvent, Organization

_SECRET_NAME = re.compile(r"(secret|token|password|digest|credential|api_key_raw|raw)", re.I)
REDACTED = "[redacted]"
# How an event written by a service token names its actor (``AuditEvent.actor_label``).
SERVICE_TOKEN_LABEL = "service token "  # noqa: S105 (words, not a secret)


@dataclass(frozen=True)
class Actor:
    """Who is acting, and from where: passed by views to every writing service."""

    user: Any = None  # a User, or None for the system (and for a service token)
    ip: str | None = None
    request_id: str = ""
    service_token: Any = None  # an orgs.models.ServiceToken when one authenticated the request

    @classmethod
    def system(cls) -> Actor:
        return cls()

    @classmethod
    def from_request(cls, request: Any) -> Actor:
        token = getattr(request.user, "service_token", None)
        return cls(
            user=request.user if request.user.is_authenticated and token is None else None,
            ip=request.META.get("REMOTE_ADDR") or None,
            request_id=getattr(request, "request_id", ""),
            service_token=token,
        )

    @property
    def is_system(self) -> bool:
        """Migrations, seeds, management commands, webhooks: trusted, unlike a token."""
        return self.user is None and self.service_token is None

    @property
    def label(self) -> str:
        if self.service_token is not None:
            return f"{SERVICE_TOKEN_LABEL}{self.service_token.name} ({self.service_token.prefix})"
        return self.user.get_username() if self.user is not None else "system"


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, models.Model):
        return value.pk
    return value


def scrub(changes: dict[str, Any]) -> dict[str, Any]:
    return {
        name: (REDACTED if _SECRET_NAME.search(name) else _json_safe(value))
        for name, value in changes.items()
    }


def audit_event_record(
    *,
    organization: Organization | int,
    actor: Actor,
    action: str,
    target: models.Model | None = None,
    target_type: str | None = None,
    target_id: str | int | None = None,
    target_repr: str | None = None,
    changes: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record ``action`` (``"<entity>.<verb>"``) on ``target``. Must run inside the change's
    transaction, so the event and the change commit or roll back together."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_event_record must run inside the change's transaction")
    org_id = organization.pk if isinstance(organization, Organization) else organization
    if target is not None:
        target_type = target_type or target._meta.model_name
        target_id = target.pk if target_id is None else target_id
        target_repr = str(target) if target_repr is None else target_repr
    return AuditEvent.objects.create(
        organization_id=org_id,
        actor=actor.user,
        actor_label=actor.label,
        action=action,
        target_type=target_type or "",
        target_id=str(target_id or ""),
        target_repr=(target_repr or "")[:200],
        changes=scrub(changes or {}),
        ip=actor.ip,
        request_id=actor.request_id[:128],
    )


def diff(instance: models.Model, new_values: dict[str, Any]) -> dict[str, list[Any]]:
    """``{field: [old, new]}`` for the fields whose value changes."""
    out: dict[str, list[Any]] = {}
    for name, new in new_values.items():
        old = getattr(instance, name)
        if old != new:
            out[name] = [old, new]
    return out
