"""Reads of single sign-on configuration. Every read of a tenant's providers is scoped by
organization here."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from identity.models import GroupMapping, IdentityProvider, SsoDomain, SsoPolicy
from orgs.models import Membership, Organization


def providers_of(organization: Organization) -> QuerySet[IdentityProvider]:
    return IdentityProvider.objects.filter(organization=organization).prefetch_related("domains")


def provider_of(organization: Organization, pk: Any) -> IdentityProvider | None:
    """The organization's provider ``pk`` (None for another organization's or no row)."""
    if not str(pk).isdigit():
        return None
    return providers_of(organization).filter(pk=int(pk)).first()


def mappings_of(provider: IdentityProvider) -> QuerySet[GroupMapping]:
    return GroupMapping.objects.filter(
        organization_id=provider.organization_id, identity_provider=provider
    ).select_related("node")


def provider_for_email(email: str) -> IdentityProvider | None:
    """The enabled provider whose organization declared the email's domain."""
    domain = email.rpartition("@")[2].strip().lower()
    if not domain:
        return None
    row = (
        SsoDomain.objects.filter(
            domain=domain,
            identity_provider__enabled=True,
            organization__archived_at__isnull=True,
        )
        .select_related("identity_provider__organization")
        .first()
    )
    return row.identity_provider if row else None


def password_login_allowed(organization: Organization) -> bool:
    policy = SsoPolicy.objects.filter(organization=organization).first()
    return policy is None or policy.password_login_allowed


def password_login_refusal(user: Any) -> str | None:
    """Why ``user`` may not log in with a password, or None: a live organization they belong
    to, or whose declared domain their email is, requires single sign-on."""
    email = (user.email or user.get_username() or "").strip().lower()
    domain = email.rpartition("@")[2]
    member_of = Membership.objects.filter(user=user, removed_at__isnull=True).values(
        "organization_id"
    )
    by_domain = SsoDomain.objects.filter(domain=domain).values("organization_id")
    scope = Q(organization_id__in=member_of)
    if domain:
        scope |= Q(organization_id__in=by_domain)
    strict = (
        SsoPolicy.objects.filter(password_login_allowed=False, organization__archived_at=None)
        .filter(scope)
        .select_related("organization")
        .first()
    )
    if strict is None:
        return None
    return (
        f"{strict.organization.name} requires single sign-on: use \u201cSign in with single "
        "sign-on\u201d below."
    )
