"""Writes of single sign-on: providers, domains, group mappings, the password-login policy,
and the sign-in itself (``sso_start`` / ``sso_complete``). docs/identity.md states the rules.

Configuration changes are an owner's (``_require_owner``) and each writes its audit event in
the same transaction. A sign-in writes memberships through the orgs services (so their audit
events, permission rows and key-cache invalidations are the usual ones) plus ``sso.login``.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from identity import oidc
from identity.errors import SsoRefused
from identity.models import (
    ExternalIdentity,
    GroupMapping,
    IdentityProvider,
    Protocol,
    SsoDomain,
    SsoGrant,
    SsoPolicy,
)
from identity.selectors import mappings_of
from megarouter.crypto import decrypt_text, encrypt_text, rotate_ciphertext
from orgs import services as orgs_services
from orgs.audit import Actor, audit_event_record, diff
from orgs.errors import InvalidInput, NotAllowed
from orgs.models import Membership, Node, Organization, Role
from orgs.selectors import is_owner_over, root_node

# A sign-in started more than this long ago is refused at the callback.
PENDING_SECONDS = 600
# Mapped roles, strongest first: when two mapped groups give one node a role, the first wins.
MAPPABLE_ROLES = (Role.ADMIN, Role.BILLING_MANAGER, Role.DEVELOPER, Role.VIEWER)
# Addresses at these domains belong to people, not to an organization: never claimable.
PUBLIC_EMAIL_DOMAINS = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "outlook.com",
        "hotmail.com",
        "live.com",
        "yahoo.com",
        "icloud.com",
        "me.com",
        "aol.com",
        "proton.me",
        "protonmail.com",
        "gmx.com",
        "gmx.de",
        "yandex.ru",
        "mail.ru",
        "qq.com",
        "163.com",
    }
)
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_CLAIM = re.compile(r"^[A-Za-z0-9_:./-]{1,100}$")
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


def _require_owner(actor: Actor, organization: Organization) -> None:
    if actor.user is None:
        return
    if not is_owner_over(user_id=actor.user.pk, node=root_node(organization)):
        raise NotAllowed("Only an owner of the organization can configure single sign-on.")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- providers


def _clean_domains(value: Any, errors: dict[str, list[str]]) -> list[str]:
    items = value if isinstance(value, list | tuple) else []
    out: list[str] = []
    for raw in items:
        domain = str(raw).strip().lower().lstrip("@")
        if not _DOMAIN.match(domain):
            errors.setdefault("domains", []).append(f"{raw} is not a domain name.")
        elif domain in PUBLIC_EMAIL_DOMAINS:
            errors.setdefault("domains", []).append(
                f"{domain} is a public email service; declare your organization's own domain."
            )
        elif domain not in out:
            out.append(domain)
    if not out and "domains" not in errors:
        errors["domains"] = ["Declare at least one email domain (e.g. example.com)."]
    return out


def _clean_provider(
    values: dict[str, Any], *, organization: Organization, provider: IdentityProvider | None
) -> dict[str, Any]:
    errors: dict[str, list[str]] = {}
    out: dict[str, Any] = {}
    if "name" in values:
        name = str(values["name"] or "").strip()
        if not name or len(name) > 100:
            errors["name"] = ["Enter 1 to 100 characters."]
        elif (
            IdentityProvider.objects.filter(organization=organization, name=name)
            .exclude(pk=provider.pk if provider else None)
            .exists()
        ):
            errors["name"] = ["Another identity provider of this organization has this name."]
        out["name"] = name
    if "discovery_url" in values:
        url = str(values["discovery_url"] or "").strip()
        parts = urlsplit(url)
        host = parts.hostname or ""
        secure = parts.scheme == "https" or (parts.scheme == "http" and _loopback(host))
        if not host or not secure:
            errors["discovery_url"] = [
                "Enter the provider's https URL (http only on this machine's loopback)."
            ]
        if len(url) > 500:
            errors["discovery_url"] = ["Ensure this URL has no more than 500 characters."]
        out["discovery_url"] = url
    if "client_id" in values:
        client_id = str(values["client_id"] or "").strip()
        if not client_id or len(client_id) > 255:
            errors["client_id"] = ["Enter the client id the provider issued (1 to 255 characters)."]
        out["client_id"] = client_id
    if "client_secret" in values:
        secret = str(values["client_secret"] or "")
        if not secret and provider is None:
            errors["client_secret"] = ["Enter the client secret the provider issued."]
        elif len(secret) > 1000:
            errors["client_secret"] = ["Ensure this field has no more than 1000 characters."]
        if secret:
            out["client_secret"] = secret
    if "scopes" in values:
        scopes = " ".join(str(values["scopes"] or "").split())
        words = scopes.split(" ") if scopes else []
        if "openid" not in words or not all(_SCOPE.match(w) for w in words) or len(scopes) > 200:
            errors["scopes"] = ["Space-separated scopes that include openid."]
        out["scopes"] = scopes
    if "groups_claim" in values:
        claim = str(values["groups_claim"] or "").strip()
        if not _CLAIM.match(claim):
            errors["groups_claim"] = ["A claim name: letters, digits and _ : . / - (e.g. groups)."]
        out["groups_claim"] = claim
    if "enabled" in values:
        out["enabled"] = bool(values["enabled"])
    if "domains" in values:
        domains = _clean_domains(values["domains"], errors)
        taken = SsoDomain.objects.filter(domain__in=domains)
        if provider is not None:
            taken = taken.exclude(identity_provider=provider)
        for row in taken.select_related("identity_provider"):
            if row.organization_id == organization.pk:
                errors.setdefault("domains", []).append(
                    f"{row.domain} is already declared for {row.identity_provider.name}."
                )
            else:
                errors.setdefault("domains", []).append(
                    f"{row.domain} is already used for single sign-on by another organization."
                )
        out["domains"] = domains
    if errors:
        raise InvalidInput(errors)
    return out


def _check_discovery(url: str) -> None:
    try:
        oidc.metadata_for(url)
    except SsoRefused as exc:
        raise InvalidInput(
            {"discovery_url": [f"Could not read an OpenID configuration there ({exc.detail})."]}
        ) from None


def _set_domains(provider: IdentityProvider, domains: list[str]) -> None:
    SsoDomain.objects.filter(identity_provider=provider).exclude(domain__in=domains).delete()
    have = set(provider.domains.values_list("domain", flat=True))
    try:
        with transaction.atomic():
            SsoDomain.objects.bulk_create(
                [
                    SsoDomain(
                        organization_id=provider.organization_id,
                        identity_provider=provider,
                        domain=d,
                    )
                    for d in domains
                    if d not in have
                ]
            )
    except IntegrityError:  # claimed by another organization since the check
        raise InvalidInput(
            {"domains": ["One of these domains was just declared by another organization."]}
        ) from None


@transaction.atomic
def identity_provider_create(
    *,
    actor: Actor,
    organization: Organization,
    name: str,
    discovery_url: str,
    client_id: str,
    client_secret: str,
    domains: list[str],
    scopes: str = "openid email profile",
    groups_claim: str = "groups",
    enabled: bool = True,
) -> IdentityProvider:
    _require_owner(actor, organization)
    clean = _clean_provider(
        {
            "name": name,
            "discovery_url": discovery_url,
            "client_id": client_id,
            "client_secret": client_secret,
            "domains": domains,
            "scopes": scopes,
            "groups_claim": groups_claim,
            "enabled": enabled,
        },
        organization=organization,
        provider=None,
    )
    _check_discovery(clean["discovery_url"])
    provider = IdentityProvider.objects.create(
        organization=organization,
        protocol=Protocol.OIDC,
        name=clean["name"],
        discovery_url=clean["discovery_url"],
        client_id=clean["client_id"],
        client_secret_encrypted=encrypt_text(clean["client_secret"]),
        scopes=clean["scopes"],
        groups_claim=clean["groups_claim"],
        enabled=clean["enabled"],
    )
    _set_domains(provider, clean["domains"])
    audit_event_record(
        organization=organization,
        actor=actor,
        action="identity_provider.create",
        target=provider,
        changes={
            "name": provider.name,
            "discovery_url": provider.discovery_url,
            "client_id": provider.client_id,
            "domains": clean["domains"],
            "enabled": provider.enabled,
        },
    )
    return provider


@transaction.atomic
def identity_provider_update(
    *, actor: Actor, provider: IdentityProvider, **values: Any
) -> IdentityProvider:
    """Change any of the create fields; an empty ``client_secret`` keeps the stored one."""
    provider = IdentityProvider.objects.select_for_update().get(pk=provider.pk)
    organization = provider.organization
    _require_owner(actor, organization)
    unknown = set(values) - {
        "name",
        "discovery_url",
        "client_id",
        "client_secret",
        "domains",
        "scopes",
        "groups_claim",
        "enabled",
    }
    if unknown:
        raise InvalidInput({name: ["Unknown field."] for name in sorted(unknown)})
    clean = _clean_provider(values, organization=organization, provider=provider)
    if "discovery_url" in clean and clean["discovery_url"] != provider.discovery_url:
        _check_discovery(clean["discovery_url"])
    domains = clean.pop("domains", None)
    secret = clean.pop("client_secret", None)
    changes: dict[str, Any] = diff(provider, clean)
    for name, (_, new) in changes.items():
        setattr(provider, name, new)
    if secret is not None:
        provider.client_secret_encrypted = encrypt_text(secret)
        changes["client_secret"] = "changed"  # noqa: S105 (a marker, not a secret)
    if domains is not None:
        old = sorted(provider.domains.values_list("domain", flat=True))
        if old != sorted(domains):
            _set_domains(provider, domains)
            changes["domains"] = [old, sorted(domains)]
    if not changes:
        return provider
    provider.save()
    audit_event_record(
        organization=organization,
        actor=actor,
        action="identity_provider.update",
        target=provider,
        changes=changes,
    )
    return provider


@transaction.atomic
def sso_policy_update(
    *, actor: Actor, organization: Organization, password_login_allowed: bool
) -> SsoPolicy:
    _require_owner(actor, organization)
    policy, _ = SsoPolicy.objects.select_for_update().get_or_create(organization=organization)
    if policy.password_login_allowed == bool(password_login_allowed):
        return policy
    policy.password_login_allowed = bool(password_login_allowed)
    policy.save(update_fields=["password_login_allowed"])
    audit_event_record(
        organization=organization,
        actor=actor,
        action="sso_policy.update",
        target=policy,
        target_repr=organization.name,
        # "sso_required", not the field's name: audit scrubbing hides names with "password"
        changes={
            "sso_required": [policy.password_login_allowed, not policy.password_login_allowed]
        },
    )
    return policy


def client_secrets_rotate() -> int:
    """Re-encrypt every provider's client secret with the primary key (``credentials_rotate``)."""
    count = 0
    with transaction.atomic():
        for provider in IdentityProvider.objects.select_for_update().exclude(
            client_secret_encrypted=""
        ):
            provider.client_secret_encrypted = rotate_ciphertext(provider.client_secret_encrypted)
            provider.save(update_fields=["client_secret_encrypted"])
            count += 1
    return count


# ---------------------------------------------------------------- group mappings


@transaction.atomic
def group_mapping_create(
    *, actor: Actor, provider: IdentityProvider, group: str, node: Node, role: str
) -> GroupMapping:
    _require_owner(actor, provider.organization)
    errors: dict[str, list[str]] = {}
    group = str(group or "").strip()
    if not group or len(group) > 255:
        errors["group"] = [
            "Enter the group's value as the provider sends it (1 to 255 characters)."
        ]
    if node.organization_id != provider.organization_id:
        errors["node"] = ["Choose a node of this organization."]
    elif node.archived_at is not None:
        errors["node"] = ["The node is archived."]
    if role not in MAPPABLE_ROLES:
        errors["role"] = [
            "Choose admin, billing manager, developer or viewer (owners are never granted by a "
            "group)."
        ]
    if (
        not errors
        and GroupMapping.objects.filter(identity_provider=provider, group=group, node=node).exists()
    ):
        errors["group"] = ["This group already maps to a role on this node."]
    if errors:
        raise InvalidInput(errors)
    mapping = GroupMapping.objects.create(
        organization_id=provider.organization_id,
        identity_provider=provider,
        group=group,
        node=node,
        role=role,
    )
    audit_event_record(
        organization=provider.organization_id,
        actor=actor,
        action="group_mapping.create",
        target=mapping,
        changes={"provider": provider.pk, "group": group, "node": node.pk, "role": role},
    )
    return mapping


@transaction.atomic
def group_mapping_delete(*, actor: Actor, mapping: GroupMapping) -> None:
    """Removing a mapping takes effect at each user's next sign-in (the memberships it made
    are removed then, unless another mapped group still gives them)."""
    provider = mapping.identity_provider
    _require_owner(actor, provider.organization)
    audit_event_record(
        organization=provider.organization_id,
        actor=actor,
        action="group_mapping.delete",
        target=mapping,
        changes={
            "provider": provider.pk,
            "group": mapping.group,
            "node": mapping.node_id,
            "role": mapping.role,
        },
    )
    mapping.delete()


# ---------------------------------------------------------------- sign-in


@dataclass(frozen=True)
class SsoStart:
    url: str
    state: str
    pending: dict[str, Any]  # kept in the browser's session under ``state``


def _usable(provider: IdentityProvider) -> None:
    if not provider.enabled or provider.organization.archived_at is not None:
        raise SsoRefused("provider_disabled")


def sso_start(
    *, provider: IdentityProvider, redirect_uri: str, login_hint: str = "", next_url: str = ""
) -> SsoStart:
    """The authorization request: fresh state, nonce and PKCE verifier, remembered by the
    caller in the session (they never leave this server but in the URL's hashes)."""
    _usable(provider)
    metadata = oidc.metadata_for(provider.discovery_url)
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    url = oidc.authorization_url(
        metadata=metadata,
        client_id=provider.client_id,
        scope=provider.scopes,
        redirect_uri=redirect_uri,
        state=state,
        nonce=nonce,
        code_verifier=verifier,
        login_hint=login_hint,
    )
    pending = {
        "provider": provider.pk,
        "nonce": nonce,
        "verifier": verifier,
        "next": next_url,
        "started": int(time.time()),
    }
    return SsoStart(url=url, state=state, pending=pending)


@dataclass
class SsoOutcome:
    user: Any
    provider: IdentityProvider
    added: list[int]
    removed: list[int]


def _groups(claims: dict[str, Any], claim: str) -> set[str]:
    value = claims.get(claim)
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {str(v) for v in value if isinstance(v, str | int)}
    return set()


def _desired(provider: IdentityProvider, groups: set[str]) -> tuple[dict[int, str], list[str]]:
    """``{node id: role}`` the user's groups give, and the groups that matched."""
    desired: dict[int, str] = {}
    matched: set[str] = set()
    rank = {role: i for i, role in enumerate(MAPPABLE_ROLES)}
    for mapping in mappings_of(provider):
        if mapping.node.archived_at is not None:
            continue
        if mapping.group != "*" and mapping.group not in groups:
            continue
        matched.add(mapping.group)
        have = desired.get(mapping.node_id)
        if have is None or rank.get(mapping.role, 99) < rank.get(have, 99):
            desired[mapping.node_id] = mapping.role
    return desired, sorted(matched)


def _email_verified(claims: dict[str, Any]) -> bool:
    """The provider vouches for the address: ``email_verified`` true, or, from a token with
    no ``email_verified`` at all, Microsoft Entra ID's optional ``xms_edov`` (the email's
    domain is verified by the tenant) true."""
    if "email_verified" in claims:
        return claims["email_verified"] is True
    return claims.get("xms_edov") is True


def _find_account(email: str) -> Any:
    return (
        get_user_model()
        .objects.filter(Q(email__iexact=email) | Q(username__iexact=email))
        .order_by("pk")
        .first()
    )


def _resolve_user(
    *,
    provider: IdentityProvider,
    claims: dict[str, Any],
    desired: dict[int, str],
    actor: Actor,
) -> tuple[Any, ExternalIdentity]:
    """The user of the subject: known, else a linked or a new account under the rules of
    docs/identity.md ("Accounts")."""
    organization = provider.organization
    subject = str(claims["sub"])
    identity = (
        ExternalIdentity.objects.select_related("user")
        .filter(identity_provider=provider, subject=subject)
        .first()
    )
    if identity is not None:
        if not identity.user.is_active:
            raise SsoRefused("user_disabled")
        return identity.user, identity
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise SsoRefused("email_missing")
    email = email.strip().lower()
    if not _email_verified(claims):
        raise SsoRefused("email_unverified")
    domain = email.rpartition("@")[2]
    if not provider.domains.filter(domain=domain).exists():
        raise SsoRefused("domain_not_allowed")
    user = _find_account(email)
    if user is not None:
        if not user.is_active:
            raise SsoRefused("user_disabled")
        if not Membership.objects.filter(
            user=user, organization=organization, removed_at__isnull=True
        ).exists():
            raise SsoRefused("account_exists")
        linked = True
    else:
        if not desired:
            raise SsoRefused("no_access")
        name = claims.get("name") if isinstance(claims.get("name"), str) else ""
        user = orgs_services.user_create_external(email=email, name=name[:150])
        linked = False
    identity = ExternalIdentity.objects.create(
        organization=organization,
        identity_provider=provider,
        subject=subject,
        user=user,
        email=email,
    )
    as_user = Actor(user=user, ip=actor.ip, request_id=actor.request_id)
    changes = {"provider": provider.pk, "email": email}
    if linked:
        audit_event_record(
            organization=organization,
            actor=as_user,
            action="sso.account_link",
            target=user,
            target_repr=user.get_username(),
            changes=changes,
        )
    else:
        audit_event_record(
            organization=organization,
            actor=as_user,
            action="sso.account_create",
            target=user,
            target_repr=user.get_username(),
            changes=changes,
        )
    return user, identity


def _apply_mapping(
    *, provider: IdentityProvider, user: Any, desired: dict[int, str], actor: Actor
) -> tuple[list[int], list[int]]:
    """Add and remove the memberships this provider's mapping manages so they match
    ``desired``; memberships granted otherwise are left as they are."""
    system = Actor(user=None, ip=actor.ip, request_id=actor.request_id)
    added: list[int] = []
    removed: list[int] = []
    grants = SsoGrant.objects.filter(
        identity_provider=provider, membership__user=user, membership__removed_at__isnull=True
    ).select_related("membership__node")
    kept: set[int] = set()
    for grant in grants:
        membership = grant.membership
        role = desired.get(membership.node_id)
        if role is None:
            orgs_services.membership_remove(actor=system, membership=membership)
            grant.delete()
            removed.append(membership.pk)
            continue
        if role != membership.role:
            orgs_services.membership_update(actor=system, membership=membership, role=role)
        kept.add(membership.node_id)
    unmanaged = set(
        Membership.objects.filter(
            user=user, organization_id=provider.organization_id, removed_at__isnull=True
        )
        .exclude(node_id__in=kept)
        .values_list("node_id", flat=True)
    )
    nodes = Node.objects.in_bulk([n for n in desired if n not in kept and n not in unmanaged])
    for node_id, node in sorted(nodes.items()):
        if node.organization_id != provider.organization_id:  # mapping validation guarantees
            continue
        membership = orgs_services.membership_create(
            actor=system, node=node, user=user, role=desired[node_id]
        )
        SsoGrant.objects.create(
            organization_id=provider.organization_id,
            identity_provider=provider,
            membership=membership,
        )
        added.append(membership.pk)
    return added, removed


def sso_complete(
    *,
    organization: Organization,
    pending: dict[str, Any] | None,
    params: dict[str, str],
    redirect_uri: str,
    actor: Actor,
) -> SsoOutcome:
    """The callback: check the pending sign-in, exchange the code, check the ID token, then
    find or create the user and apply the group mapping (one transaction, ``sso.login``).

    ``pending`` is what ``sso_start`` returned for the callback's ``state`` (the caller has
    already removed it from the session, so a replayed state finds nothing)."""
    if not pending or int(time.time()) - int(pending.get("started", 0)) > PENDING_SECONDS:
        raise SsoRefused("state_unknown")
    provider = (
        IdentityProvider.objects.select_related("organization")
        .filter(pk=pending.get("provider"), organization=organization)
        .first()
    )
    if provider is None:  # a sign-in started for another organization
        raise SsoRefused("state_unknown")
    if params.get("error"):
        error = re.sub(r"[^A-Za-z0-9_ .-]", "", params["error"])[:80]
        raise SsoRefused("provider_error", f"The identity provider answered: {error}.")
    _usable(provider)
    code = params.get("code") or ""
    if not code:
        raise SsoRefused("provider_error", "The identity provider sent no authorization code.")
    metadata = oidc.metadata_for(provider.discovery_url)
    id_token = oidc.exchange_code(
        metadata=metadata,
        client_id=provider.client_id,
        client_secret=decrypt_text(provider.client_secret_encrypted),
        scope=provider.scopes,
        redirect_uri=redirect_uri,
        code=code,
        code_verifier=pending["verifier"],
    )
    claims = oidc.id_token_claims(
        id_token=id_token, metadata=metadata, client_id=provider.client_id, nonce=pending["nonce"]
    )
    desired, matched = _desired(provider, _groups(claims, provider.groups_claim))
    with transaction.atomic():
        user, identity = _resolve_user(
            provider=provider, claims=claims, desired=desired, actor=actor
        )
        added, removed = _apply_mapping(provider=provider, user=user, desired=desired, actor=actor)
        identity.last_login_at = timezone.now()
        identity.save(update_fields=["last_login_at"])
        audit_event_record(
            organization=organization,
            actor=Actor(user=user, ip=actor.ip, request_id=actor.request_id),
            action="sso.login",
            target=provider,
            changes={"user": user.pk, "groups": matched, "added": added, "removed": removed},
        )
    if not Membership.objects.filter(
        user=user, organization=organization, removed_at__isnull=True
    ).exists():
        raise SsoRefused("no_access")
    return SsoOutcome(user=user, provider=provider, added=added, removed=removed)
