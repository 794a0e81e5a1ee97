"""Writes for the orgs app. Every service is keyword-only, atomic, and records its audit event in
the same transaction. Bad input raises ``InvalidInput`` (field errors) before anything changes;
a role that does not allow the change raises ``NotAllowed``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import zoneinfo
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email, validate_slug
from django.db import IntegrityError, transaction
from django.db.models import Value
from django.db.models.functions import Concat, Substr
from django.utils import timezone

from orgs import keys as key_cache
from orgs import secrets
from orgs.audit import Actor, audit_event_record, diff
from orgs.errors import InvalidInput, NotAllowed
from orgs.mfa import mfa_enabled
from orgs.models import (
    PARENT_KIND,
    ApiKey,
    ApiKeySecret,
    Invitation,
    Membership,
    Node,
    NodeKind,
    NodeUserPermission,
    Organization,
    PersonalAccessToken,
    Role,
    ServiceToken,
)
from orgs.policy import PolicyError, routing_policy_clean, validate_model_patterns
from orgs.roles import (
    CREATE_KEYS,
    MANAGE_KEYS,
    MANAGE_MEMBERS,
    OWNER_ONLY_ROLES,
    SCOPE_PERMISSIONS,
    SCOPES,
    permissions_for,
    scope_permissions,
)
from orgs.selectors import (
    INVITATION_REFUSALS,
    has_perm_on_node,
    invitation_for_token,
    invitation_url,
    is_owner_over,
    memberships_covering,
    service_token_may,
    subtree,
    user_with_email_exists,
)

INVITATION_TTL = dt.timedelta(days=7)
MAX_ROTATION_GRACE = dt.timedelta(days=30)
CHILD_KIND = {parent: child for child, parent in PARENT_KIND.items()}


# --- validation helpers -------------------------------------------------------------------


def _clean_name(name: Any, errors: dict[str, list[str]]) -> str:
    if not isinstance(name, str) or not name.strip():
        errors.setdefault("name", []).append("This field may not be blank.")
        return ""
    if len(name.strip()) > 200:
        errors.setdefault("name", []).append("Ensure this field has no more than 200 characters.")
    return name.strip()


def _clean_slug(slug: Any, errors: dict[str, list[str]]) -> str:
    try:
        if not isinstance(slug, str) or not slug or len(slug) > 80:
            raise ValidationError("bad")
        validate_slug(slug)
    except ValidationError:
        errors.setdefault("slug", []).append(
            "Enter 1 to 80 letters, numbers, underscores or hyphens."
        )
        return ""
    return slug


def _check_time_zone(name: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidInput({"time_zone": [f"Unknown time zone {name!r}."]}) from None


def _raise(errors: dict[str, list[str]]) -> None:
    if errors:
        raise InvalidInput(errors)


def _sibling_slug_taken(*, parent: Node, slug: str, exclude_pk: int | None = None) -> bool:
    qs = Node.objects.filter(parent=parent, slug=slug)
    if exclude_pk is not None:
        qs = qs.exclude(pk=exclude_pk)
    return qs.exists()


def _on_commit_invalidate(prefixes: list[str]) -> None:
    if prefixes:
        transaction.on_commit(lambda: key_cache.invalidate_prefixes(prefixes))


def _prefixes_of_keys(key_qs: Any) -> list[str]:
    return list(ApiKeySecret.objects.filter(api_key__in=key_qs).values_list("prefix", flat=True))


# --- users --------------------------------------------------------------------------------


def _user_insert(
    *, email: str, password: str | None, name: str = "", operator: bool = False
) -> Any:
    """A new active user whose username is ``email`` (lowercased). Field errors on ``email``,
    ``name`` and ``password`` (Django's ``AUTH_PASSWORD_VALIDATORS``) before anything is
    written; an address already in use (as an email or a username) is refused. ``password``
    None: an account with no usable password (single sign-on only)."""
    errors: dict[str, list[str]] = {}
    email = (email or "").strip().lower() if isinstance(email, str) else ""
    try:
        if len(email) > 150:
            raise ValidationError("too long")
        validate_email(email)
    except ValidationError:
        errors["email"] = ["Enter a valid email address (at most 150 characters)."]
    else:
        if user_with_email_exists(email):
            errors["email"] = ["An account with this email address already exists."]
    name = name.strip() if isinstance(name, str) else ""
    if len(name) > 150:
        errors["name"] = ["Ensure this field has no more than 150 characters."]
    user_model = get_user_model()
    user = user_model(username=email, email=email, first_name=name)
    if password is None:
        pass
    elif not isinstance(password, str) or not password:
        errors["password"] = ["This field may not be blank."]
    else:
        try:
            validate_password(password, user=user)
        except ValidationError as exc:
            errors["password"] = list(exc.messages)
    _raise(errors)
    if operator:
        user.is_staff = user.is_superuser = True
    if password is None:
        user.set_unusable_password()
    else:
        user.set_password(password)
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:
        raise InvalidInput(
            {"email": ["An account with this email address already exists."]}
        ) from None
    return user


@transaction.atomic
def user_create(*, email: str, password: str, name: str = "", operator: bool = False) -> Any:
    """An account outside any organization (``manage.py bootstrap``): no audit row, as the
    audit log is per organization; the membership that follows is audited there.
    ``operator`` makes it a platform operator (Django staff and superuser: the admin site,
    crediting balances)."""
    return _user_insert(email=email, password=password, name=name, operator=operator)


def user_create_external(*, email: str, name: str = "") -> Any:
    """An account that signs in through an identity provider only (no usable password),
    created by ``identity.services`` on a first single sign-on, which audits it in the
    provider's organization. Must run inside the caller's transaction."""
    return _user_insert(email=email, password=None, name=name)


# --- organizations and nodes --------------------------------------------------------------


@transaction.atomic
def organization_create(
    *, actor: Actor, name: str, slug: str, owner: Any, time_zone: str = "UTC"
) -> Organization:
    """A new tenant with its root node, and ``owner`` as owner at the root."""
    errors: dict[str, list[str]] = {}
    name = _clean_name(name, errors)
    slug = _clean_slug(slug, errors)
    _raise(errors)
    _check_time_zone(time_zone)
    if Organization.objects.filter(slug=slug).exists():
        raise InvalidInput({"slug": ["An organization with this slug already exists."]})
    org = Organization.objects.create(name=name, slug=slug, time_zone=time_zone)
    root = Node.objects.create(
        organization=org, kind=NodeKind.ORGANIZATION, parent=None, name=name, slug=slug, depth=0
    )
    root.path = f"/{root.pk}/"
    root.save(update_fields=["path"])
    audit_event_record(
        organization=org,
        actor=actor,
        action="organization.create",
        target=org,
        changes={"name": name, "slug": slug, "time_zone": time_zone},
    )
    _membership_insert(actor=actor, node=root, user=owner, role=Role.OWNER)
    return org


@transaction.atomic
def organization_update(
    *, actor: Actor, organization: Organization, name: str | None = None, time_zone: str | None
) -> Organization:
    values: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    if name is not None:
        values["name"] = _clean_name(name, errors)
    _raise(errors)
    if time_zone is not None:
        _check_time_zone(time_zone)
        values["time_zone"] = time_zone
    changes = diff(organization, values)
    if not changes:
        return organization
    for field, value in values.items():
        setattr(organization, field, value)
    organization.save(update_fields=list(values))
    if "time_zone" in changes:
        _on_commit_invalidate(_prefixes_of_keys(ApiKey.objects.filter(organization=organization)))
    audit_event_record(
        organization=organization,
        actor=actor,
        action="organization.update",
        target=organization,
        changes=changes,
    )
    return organization


@transaction.atomic
def organization_mfa_require(
    *, actor: Actor, organization: Organization, required: bool
) -> Organization:
    """Turn the organization's MFA requirement on or off. Owners only (at the root); an owner
    turning it on must have MFA on their own account first (docs/identity.md)."""
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    root = Node.objects.get(organization=organization, parent__isnull=True)
    if actor.user is not None and not is_owner_over(user_id=actor.user.pk, node=root):
        raise NotAllowed("Only an owner can change whether the organization requires MFA.")
    if required and actor.user is not None and not mfa_enabled(actor.user):
        raise InvalidInput(
            {"require_mfa": ["Turn on multi-factor authentication for your own account first."]}
        )
    if organization.require_mfa == required:
        return organization
    organization.require_mfa = required
    organization.save(update_fields=["require_mfa"])
    audit_event_record(
        organization=organization,
        actor=actor,
        action="organization.mfa_require",
        target=organization,
        changes={"require_mfa": [not required, required]},
    )
    return organization


@transaction.atomic
def organization_archive(
    *, actor: Actor, organization: Organization, revoke_keys: bool = False
) -> int:
    """Close the tenant: it disappears from its members' lists and its keys stop working.
    Owners only (at the root). Live keys must be revoked explicitly (``revoke_keys=True``).
    Returns the number of keys revoked."""
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    if organization.archived_at is not None:
        raise InvalidInput({"organization": ["The organization is already archived."]})
    root = Node.objects.get(organization=organization, parent__isnull=True)
    if actor.service_token is not None or (
        actor.user is not None and not is_owner_over(user_id=actor.user.pk, node=root)
    ):
        raise NotAllowed("Only an owner can archive the organization.")
    live_keys = ApiKey.objects.filter(organization=organization, revoked_at__isnull=True)
    live_count = live_keys.count()
    if live_count and not revoke_keys:
        raise InvalidInput(
            {
                "revoke_keys": [
                    f"{live_count} active API key(s) belong to this organization; "
                    "pass revoke_keys=true to revoke them with it."
                ]
            }
        )
    now = timezone.now()
    prefixes = _prefixes_of_keys(ApiKey.objects.filter(organization=organization))
    revoked = live_keys.update(revoked_at=now, revoked_reason="organization_archived")
    organization.archived_at = now
    organization.save(update_fields=["archived_at"])
    _on_commit_invalidate(prefixes)
    audit_event_record(
        organization=organization,
        actor=actor,
        action="organization.archive",
        target=organization,
        changes={"revoked_keys": revoked},
    )
    return revoked


@transaction.atomic
def node_create(*, actor: Actor, parent: Node, name: str, slug: str) -> Node:
    """A child of ``parent``: its kind is the level below the parent's."""
    errors: dict[str, list[str]] = {}
    name = _clean_name(name, errors)
    slug = _clean_slug(slug, errors)
    kind = CHILD_KIND.get(parent.kind)
    if kind is None:
        errors.setdefault("parent", []).append("A project cannot have children.")
    elif parent.archived_at is not None:
        errors.setdefault("parent", []).append("The parent is archived.")
    if slug and kind and _sibling_slug_taken(parent=parent, slug=slug):
        errors.setdefault("slug", []).append("A sibling with this slug already exists.")
    _raise(errors)
    assert kind is not None
    try:
        with transaction.atomic():
            node = Node.objects.create(
                organization_id=parent.organization_id,
                kind=kind,
                parent=parent,
                name=name,
                slug=slug,
                depth=parent.depth + 1,
            )
    except IntegrityError:
        raise InvalidInput({"slug": ["A sibling with this slug already exists."]}) from None
    node.path = f"{parent.path}{node.pk}/"
    node.save(update_fields=["path"])
    audit_event_record(
        organization=parent.organization_id,
        actor=actor,
        action="node.create",
        target=node,
        changes={"kind": kind, "name": name, "slug": slug, "parent": parent.pk},
    )
    return node


@transaction.atomic
def node_update(
    *, actor: Actor, node: Node, name: str | None = None, slug: str | None = None
) -> Node:
    errors: dict[str, list[str]] = {}
    values: dict[str, Any] = {}
    if name is not None:
        values["name"] = _clean_name(name, errors)
    if slug is not None:
        values["slug"] = _clean_slug(slug, errors)
        if node.parent_id is None and values["slug"] and values["slug"] != node.slug:
            errors.setdefault("slug", []).append("The root node keeps the organization's slug.")
        elif (
            values["slug"]
            and node.parent_id is not None
            and _sibling_slug_taken(parent=node.parent, slug=values["slug"], exclude_pk=node.pk)
        ):
            errors.setdefault("slug", []).append("A sibling with this slug already exists.")
    if node.archived_at is not None:
        errors.setdefault("non_field_errors", []).append("An archived node cannot be changed.")
    _raise(errors)
    changes = diff(node, values)
    if not changes:
        return node
    for field, value in values.items():
        setattr(node, field, value)
    try:
        with transaction.atomic():
            node.save(update_fields=list(values))
    except IntegrityError:
        raise InvalidInput({"slug": ["A sibling with this slug already exists."]}) from None
    audit_event_record(
        organization=node.organization_id,
        actor=actor,
        action="node.update",
        target=node,
        changes=changes,
    )
    return node


@transaction.atomic
def node_move(*, actor: Actor, node: Node, new_parent: Node) -> Node:
    """Re-parent ``node`` (and its subtree). The tree stays valid: same organization, the right
    level, never under itself or a descendant, slug unique among the new siblings."""
    errors: dict[str, list[str]] = {}
    if node.parent_id is None:
        errors["parent"] = ["The root node cannot be moved."]
    elif new_parent.organization_id != node.organization_id:
        errors["parent"] = ["The new parent must be in the same organization."]
    elif new_parent.path.startswith(node.path):
        errors["parent"] = ["A node cannot be moved under itself or one of its descendants."]
    elif new_parent.kind != PARENT_KIND.get(NodeKind(node.kind)):
        errors["parent"] = [
            f"A {node.kind} must be placed under a {PARENT_KIND[NodeKind(node.kind)]}."
        ]
    elif new_parent.archived_at is not None or node.archived_at is not None:
        errors["parent"] = ["Archived nodes cannot be moved or receive children."]
    elif _sibling_slug_taken(parent=new_parent, slug=node.slug, exclude_pk=node.pk):
        errors["slug"] = ["The new parent already has a child with this slug."]
    _raise(errors)
    if new_parent.pk == node.parent_id:
        return node
    old_path, old_parent_id = node.path, node.parent_id
    new_path = f"{new_parent.path}{node.pk}/"
    Node.objects.filter(organization_id=node.organization_id, path__startswith=old_path).update(
        path=Concat(Value(new_path), Substr("path", len(old_path) + 1))
    )
    Node.objects.filter(pk=node.pk).update(parent=new_parent)
    node.refresh_from_db()
    # Key contexts carry department and team ids: drop the cached ones in the subtree.
    _on_commit_invalidate(_prefixes_of_keys(ApiKey.objects.filter(project__in=subtree(node))))
    audit_event_record(
        organization=node.organization_id,
        actor=actor,
        action="node.move",
        target=node,
        changes={"parent": [old_parent_id, new_parent.pk]},
    )
    return node


@transaction.atomic
def node_archive(*, actor: Actor, node: Node, revoke_keys: bool = False) -> int:
    """Archive ``node`` and its subtree. Live keys in it must be revoked explicitly
    (``revoke_keys=True``), else InvalidInput. Returns the number of keys revoked."""
    if node.parent_id is None:
        raise InvalidInput({"node": ["The root node cannot be archived."]})
    if node.archived_at is not None:
        raise InvalidInput({"node": ["The node is already archived."]})
    nodes = subtree(node)
    live_keys = ApiKey.objects.filter(project__in=nodes, revoked_at__isnull=True)
    live_count = live_keys.count()
    if live_count and not revoke_keys:
        raise InvalidInput(
            {
                "revoke_keys": [
                    f"{live_count} active API key(s) belong to this subtree; "
                    "pass revoke_keys=true to revoke them with it."
                ]
            }
        )
    now = timezone.now()
    prefixes = _prefixes_of_keys(ApiKey.objects.filter(project__in=nodes))
    revoked = live_keys.update(revoked_at=now, revoked_reason="node_archived")
    archived = nodes.filter(archived_at__isnull=True).update(archived_at=now)
    _on_commit_invalidate(prefixes)
    audit_event_record(
        organization=node.organization_id,
        actor=actor,
        action="node.archive",
        target=node,
        changes={"archived_nodes": archived, "revoked_keys": revoked},
    )
    return revoked


# --- memberships --------------------------------------------------------------------------


def _sync_permissions(*, membership: Membership) -> None:
    NodeUserPermission.objects.filter(
        user_id=membership.user_id, content_object_id=membership.node_id
    ).delete()
    if membership.removed_at is not None:
        return
    perms = Permission.objects.filter(
        content_type__app_label="orgs",
        content_type__model="node",
        codename__in=permissions_for(membership.role),
    )
    NodeUserPermission.objects.bulk_create(
        [
            NodeUserPermission(
                user_id=membership.user_id, permission=perm, content_object_id=membership.node_id
            )
            for perm in perms
        ]
    )


def _check_role(role: Any) -> str:
    if role not in Role.values:
        raise InvalidInput({"role": [f"Choose one of {', '.join(Role.values)}."]})
    return str(role)


def _check_may_grant(*, actor: Actor, node: Node, role: str) -> None:
    if actor.service_token is not None:
        # A token grants no more than it holds: never the owner role, nor a role with a
        # permission outside its scopes, nor outside its subtree.
        missing = permissions_for(role) - scope_permissions(actor.service_token.scopes)
        if role in OWNER_ONLY_ROLES or missing:
            raise NotAllowed(
                f"A service token cannot grant the {role} role: it needs "
                f"{', '.join(sorted(missing)) or 'an owner'}, which the token does not hold."
            )
        if actor.service_token.node_id not in node.ancestor_ids:
            raise NotAllowed("This node is outside the service token's subtree.")
        return
    if actor.is_system:  # the system (seeding, management commands) is trusted
        return
    if role in OWNER_ONLY_ROLES and not is_owner_over(user_id=actor.user.pk, node=node):
        raise NotAllowed("Only an owner can grant, change or remove the owner role.")


def _membership_insert(*, actor: Actor, node: Node, user: Any, role: str) -> Membership:
    if Membership.objects.filter(user=user, node=node, removed_at__isnull=True).exists():
        raise InvalidInput({"user": ["This user is already a member of this node."]})
    membership = Membership.objects.create(
        organization_id=node.organization_id, user=user, node=node, role=role
    )
    _sync_permissions(membership=membership)
    audit_event_record(
        organization=node.organization_id,
        actor=actor,
        action="membership.create",
        target=membership,
        changes={"user": user.pk, "node": node.pk, "role": role},
    )
    return membership


@transaction.atomic
def membership_create(*, actor: Actor, node: Node, user: Any, role: str) -> Membership:
    role = _check_role(role)
    if node.archived_at is not None:
        raise InvalidInput({"node": ["The node is archived."]})
    _check_may_grant(actor=actor, node=node, role=role)
    return _membership_insert(actor=actor, node=node, user=user, role=role)


def _is_last_root_owner(membership: Membership) -> bool:
    if membership.role != Role.OWNER or membership.node.parent_id is not None:
        return False
    others = Membership.objects.filter(
        node_id=membership.node_id, role=Role.OWNER, removed_at__isnull=True
    ).exclude(pk=membership.pk)
    return not others.exists()


@transaction.atomic
def membership_update(*, actor: Actor, membership: Membership, role: str) -> Membership:
    role = _check_role(role)
    membership = Membership.objects.select_for_update().select_related("node").get(pk=membership.pk)
    if membership.removed_at is not None:
        raise InvalidInput({"membership": ["This membership has ended."]})
    if role == membership.role:
        return membership
    _check_may_grant(actor=actor, node=membership.node, role=role)
    _check_may_grant(actor=actor, node=membership.node, role=membership.role)
    if _is_last_root_owner(membership):
        raise InvalidInput({"role": ["The organization's last owner cannot be demoted."]})
    old = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    _sync_permissions(membership=membership)
    audit_event_record(
        organization=membership.organization_id,
        actor=actor,
        action="membership.update",
        target=membership,
        changes={"role": [old, role]},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor: Actor, membership: Membership) -> Membership:
    """End the membership: its permissions go, and keys created under it stop working."""
    membership = Membership.objects.select_for_update().select_related("node").get(pk=membership.pk)
    if membership.removed_at is not None:
        raise InvalidInput({"membership": ["This membership has already ended."]})
    _check_may_grant(actor=actor, node=membership.node, role=membership.role)
    if _is_last_root_owner(membership):
        raise InvalidInput({"membership": ["The organization's last owner cannot be removed."]})
    membership.removed_at = timezone.now()
    membership.save(update_fields=["removed_at"])
    _sync_permissions(membership=membership)
    _on_commit_invalidate(_prefixes_of_keys(ApiKey.objects.filter(membership=membership)))
    audit_event_record(
        organization=membership.organization_id,
        actor=actor,
        action="membership.remove",
        target=membership,
        changes={"user": membership.user_id, "role": membership.role},
    )
    return membership


# --- invitations --------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatedInvitation:
    invitation: Invitation
    token: str  # shown once (emailed, inside the link)


@transaction.atomic
def invitation_create(
    *,
    actor: Actor,
    node: Node,
    email: str,
    role: str,
    ttl: dt.timedelta = INVITATION_TTL,
) -> CreatedInvitation:
    """A single-use, expiring invitation, emailed after commit as one absolute link
    (``invitation_url``: ``MEGAROUTER_PUBLIC_URL`` + the console's invitation page)."""
    role = _check_role(role)
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise InvalidInput({"email": ["Enter a valid email address."]}) from None
    if node.archived_at is not None:
        raise InvalidInput({"node": ["The node is archived."]})
    _check_may_grant(actor=actor, node=node, role=role)
    new = secrets.new_secret(secrets.INVITATION)
    invitation = Invitation.objects.create(
        organization_id=node.organization_id,
        node=node,
        email=email,
        role=role,
        token_prefix=new.prefix,
        token_digest=new.digest,
        invited_by=actor.user,
        expires_at=timezone.now() + ttl,
    )
    audit_event_record(
        organization=node.organization_id,
        actor=actor,
        action="invitation.create",
        target=invitation,
        target_repr=f"invitation for {email}",
        changes={"email": email, "node": node.pk, "role": role},
    )
    org_name = node.organization.name
    inviter = f" by {actor.user.get_username()}" if actor.user is not None else ""
    body = (
        f"You have been invited{inviter} to join {org_name} on MegaRouter as "
        f"{Role(role).label.lower()} of {node.name}.\n\n"
        f"Open this link to accept (single use, valid until "
        f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC):\n\n"
        f"    {invitation_url(new.raw)}\n\n"
        f"If you have no MegaRouter account yet, the page lets you create one for {email}.\n"
    )
    transaction.on_commit(
        lambda: send_mail(
            f"Invitation to {org_name} on MegaRouter",
            body,
            settings.DEFAULT_FROM_EMAIL,
            [email],
            fail_silently=False,
        )
    )
    return CreatedInvitation(invitation=invitation, token=new.raw)


def _invitation_usable(token: str) -> Invitation:
    """The pending invitation of ``token``, locked; else InvalidInput on ``token``."""
    found = invitation_for_token(token=token, lock=True)
    if found.state != "pending" or found.invitation is None:
        raise InvalidInput({"token": [INVITATION_REFUSALS[found.state]]})
    return found.invitation


def _invitation_use(*, actor: Actor, invitation: Invitation, user: Any) -> Membership:
    membership = _membership_insert(
        actor=actor, node=invitation.node, user=user, role=invitation.role
    )
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.membership = membership
    invitation.save(update_fields=["accepted_at", "accepted_by", "membership"])
    audit_event_record(
        organization=invitation.organization_id,
        actor=actor,
        action="invitation.accept",
        target=invitation,
        target_repr=f"invitation for {invitation.email}",
        changes={"membership": membership.pk},
    )
    return membership


@transaction.atomic
def invitation_accept(*, actor: Actor, token: str) -> Membership:
    """Use the token: the logged-in user (whose email must match) becomes a member."""
    invitation = _invitation_usable(token)
    user = actor.user
    if user is None or (user.email or "").strip().lower() != invitation.email:
        raise InvalidInput({"token": ["This invitation was sent to another email address."]})
    return _invitation_use(actor=actor, invitation=invitation, user=user)


@transaction.atomic
def invitation_accept_new_user(*, actor: Actor, token: str, name: str, password: str) -> Membership:
    """Use the token as a new person: an account for the invitation's email (its username too)
    with ``name`` and ``password`` (Django's password validators), then the membership.

    No account takeover: when an account already uses that email the token is refused, and its
    owner logs in and accepts with ``invitation_accept``. The new account is audited
    (``user.create``) in the inviting organization, acting as itself."""
    invitation = _invitation_usable(token)
    if user_with_email_exists(invitation.email):
        raise InvalidInput(
            {
                "token": [
                    "An account with this email address already exists: log in, then open "
                    "the invitation link again."
                ]
            }
        )
    user = _user_insert(email=invitation.email, password=password, name=name)
    actor = Actor(user=user, ip=actor.ip, request_id=actor.request_id)
    audit_event_record(
        organization=invitation.organization_id,
        actor=actor,
        action="user.create",
        target=user,
        target_repr=user.get_username(),
        changes={"email": user.email, "name": user.first_name, "invitation": invitation.pk},
    )
    return _invitation_use(actor=actor, invitation=invitation, user=user)


@transaction.atomic
def invitation_revoke(*, actor: Actor, invitation: Invitation) -> Invitation:
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if invitation.accepted_at is not None or invitation.revoked_at is not None:
        raise InvalidInput({"invitation": ["This invitation is no longer pending."]})
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    audit_event_record(
        organization=invitation.organization_id,
        actor=actor,
        action="invitation.revoke",
        target=invitation,
        target_repr=f"invitation for {invitation.email}",
    )
    return invitation


# --- API keys -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatedKey:
    api_key: ApiKey
    raw_key: str  # shown once


def _clean_key_fields(values: dict[str, Any]) -> dict[str, Any]:
    errors: dict[str, list[str]] = {}
    out: dict[str, Any] = {}
    if "name" in values:
        out["name"] = _clean_name(values["name"], errors)
    if "allowed_models" in values:
        try:
            out["allowed_models"] = validate_model_patterns(values["allowed_models"] or [])
        except ValueError as exc:
            errors["allowed_models"] = [str(exc)]
    if "ip_allowlist" in values:
        cidrs = values["ip_allowlist"] or []
        try:
            if not isinstance(cidrs, list):
                raise ValueError
            out["ip_allowlist"] = [str(ipaddress.ip_network(c, strict=False)) for c in cidrs]
        except (ValueError, TypeError):
            errors["ip_allowlist"] = ["Enter a list of IP addresses or CIDR networks."]
    for field in ("rpm_limit", "tpm_limit"):
        if field in values:
            limit = values[field]
            if limit is not None and (
                isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
            ):
                errors[field] = ["Enter a positive whole number or null."]
            out[field] = limit
    if "routing_policy" in values:
        try:
            out["routing_policy"] = routing_policy_clean(values["routing_policy"])
        except PolicyError as exc:  # named like the policies API's fields: routing_policy.<field>
            for name, message in exc.errors.items():
                errors[f"routing_policy.{name}" if name else "routing_policy"] = [message]
    if "expires_at" in values:
        expires = values["expires_at"]
        if expires is not None and expires <= timezone.now():
            errors["expires_at"] = ["The expiry must be in the future."]
        out["expires_at"] = expires
    _raise(errors)
    return out


def _actor_may_manage_key(*, actor: Actor, api_key: ApiKey) -> bool:
    if actor.service_token is not None:
        return service_token_may(token=actor.service_token, node=api_key.project, perm=MANAGE_KEYS)
    if actor.is_system:
        return True
    project = api_key.project
    if has_perm_on_node(user_id=actor.user.pk, node=project, perm=MANAGE_KEYS):
        return True
    # Developers manage the keys they created, while they still may create keys there.
    return api_key.membership.user_id == actor.user.pk and has_perm_on_node(
        user_id=actor.user.pk, node=project, perm=CREATE_KEYS
    )


@transaction.atomic
def api_key_create(
    *,
    actor: Actor,
    project: Node,
    name: str,
    membership: Membership | None = None,
    allowed_models: list[str] | None = None,
    ip_allowlist: list[str] | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    routing_policy: dict[str, Any] | None = None,
    expires_at: dt.datetime | None = None,
) -> CreatedKey:
    """A key for ``project`` owned by the actor's membership that allows creating keys there
    (the nearest one), or by ``membership`` when the system acts (seeding)."""
    if project.kind != NodeKind.PROJECT:
        raise InvalidInput({"project": ["API keys belong to a project."]})
    if project.archived_at is not None:
        raise InvalidInput({"project": ["The project is archived."]})
    if membership is None:
        if actor.service_token is not None:
            raise NotAllowed(
                "A service token cannot create API keys: a key belongs to a member (its "
                "spend, budgets and lifetime follow the membership). Rotate, change or revoke "
                "keys with keys:write."
            )
        if actor.user is None:
            raise InvalidInput({"membership": ["A system-created key needs a membership."]})
        membership = memberships_covering(
            user_id=actor.user.pk, node=project, perm=CREATE_KEYS
        ).first()
        if membership is None:
            raise NotAllowed("Your role does not allow creating API keys in this project.")
    elif membership.removed_at is not None or membership.organization_id != (
        project.organization_id
    ):
        raise InvalidInput({"membership": ["Not an active membership of this organization."]})
    fields = _clean_key_fields(
        {
            "name": name,
            "allowed_models": allowed_models or [],
            "ip_allowlist": ip_allowlist or [],
            "rpm_limit": rpm_limit,
            "tpm_limit": tpm_limit,
            "routing_policy": routing_policy,
            "expires_at": expires_at,
        }
    )
    new = secrets.new_secret(secrets.GATEWAY_KEY)
    api_key = ApiKey.objects.create(
        organization_id=project.organization_id,
        project=project,
        membership=membership,
        prefix=new.prefix,
        **fields,
    )
    ApiKeySecret.objects.create(api_key=api_key, prefix=new.prefix, digest=new.digest)
    audit_event_record(
        organization=project.organization_id,
        actor=actor,
        action="api_key.create",
        target=api_key,
        changes={"project": project.pk, "membership": membership.pk, **fields},
    )
    return CreatedKey(api_key=api_key, raw_key=new.raw)


def _lock_key(api_key: ApiKey) -> ApiKey:
    return (
        ApiKey.objects.select_for_update(of=("self",))
        .select_related("project", "membership")
        .get(pk=api_key.pk)
    )


@transaction.atomic
def api_key_update(*, actor: Actor, api_key: ApiKey, **values: Any) -> ApiKey:
    """Change name, allowed_models, ip_allowlist, rpm_limit, tpm_limit, routing_policy or
    expires_at."""
    allowed = {
        "name",
        "allowed_models",
        "ip_allowlist",
        "rpm_limit",
        "tpm_limit",
        "routing_policy",
        "expires_at",
    }
    unknown = set(values) - allowed
    if unknown:
        raise InvalidInput({name: ["This field cannot be changed."] for name in sorted(unknown)})
    api_key = _lock_key(api_key)
    if not _actor_may_manage_key(actor=actor, api_key=api_key):
        raise NotAllowed("Your role does not allow changing this key.")
    if api_key.revoked_at is not None:
        raise InvalidInput({"non_field_errors": ["A revoked key cannot be changed."]})
    fields = _clean_key_fields(values)
    changes = diff(api_key, fields)
    if not changes:
        return api_key
    for field, value in fields.items():
        setattr(api_key, field, value)
    api_key.save(update_fields=list(fields))
    _on_commit_invalidate(_prefixes_of_keys(ApiKey.objects.filter(pk=api_key.pk)))
    audit_event_record(
        organization=api_key.organization_id,
        actor=actor,
        action="api_key.update",
        target=api_key,
        changes=changes,
    )
    return api_key


@transaction.atomic
def api_key_revoke(*, actor: Actor, api_key: ApiKey, reason: str = "revoked") -> ApiKey:
    api_key = _lock_key(api_key)
    if not _actor_may_manage_key(actor=actor, api_key=api_key):
        raise NotAllowed("Your role does not allow revoking this key.")
    if api_key.revoked_at is not None:
        raise InvalidInput({"non_field_errors": ["This key is already revoked."]})
    api_key.revoked_at = timezone.now()
    api_key.revoked_reason = reason[:64]
    api_key.save(update_fields=["revoked_at", "revoked_reason"])
    _on_commit_invalidate(_prefixes_of_keys(ApiKey.objects.filter(pk=api_key.pk)))
    audit_event_record(
        organization=api_key.organization_id,
        actor=actor,
        action="api_key.revoke",
        target=api_key,
        changes={"reason": api_key.revoked_reason},
    )
    return api_key


@transaction.atomic
def api_key_rotate(
    *, actor: Actor, api_key: ApiKey, grace: dt.timedelta = dt.timedelta(0)
) -> CreatedKey:
    """A new secret for the same key. Older secrets keep working for ``grace`` (0 = end now)."""
    if grace < dt.timedelta(0) or grace > MAX_ROTATION_GRACE:
        raise InvalidInput({"grace_seconds": ["Choose between 0 and 2592000 seconds (30 days)."]})
    api_key = _lock_key(api_key)
    if not _actor_may_manage_key(actor=actor, api_key=api_key):
        raise NotAllowed("Your role does not allow rotating this key.")
    if api_key.revoked_at is not None:
        raise InvalidInput({"non_field_errors": ["A revoked key cannot be rotated."]})
    now = timezone.now()
    old_prefixes = _prefixes_of_keys(ApiKey.objects.filter(pk=api_key.pk))
    ApiKeySecret.objects.filter(api_key=api_key, valid_until__isnull=True).update(
        valid_until=now + grace
    )
    ApiKeySecret.objects.filter(api_key=api_key, valid_until__gt=now + grace).update(
        valid_until=now + grace
    )
    new = secrets.new_secret(secrets.GATEWAY_KEY)
    ApiKeySecret.objects.create(api_key=api_key, prefix=new.prefix, digest=new.digest)
    api_key.prefix = new.prefix
    api_key.save(update_fields=["prefix"])
    _on_commit_invalidate(old_prefixes)
    audit_event_record(
        organization=api_key.organization_id,
        actor=actor,
        action="api_key.rotate",
        target=api_key,
        changes={
            "prefix": [old_prefixes[0] if old_prefixes else "", new.prefix],
            "grace_seconds": int(grace.total_seconds()),
        },
    )
    return CreatedKey(api_key=api_key, raw_key=new.raw)


# --- personal access tokens ---------------------------------------------------------------


@dataclass(frozen=True)
class CreatedToken:
    token: PersonalAccessToken
    raw_token: str  # shown once


@transaction.atomic
def access_token_create(
    *, user: Any, name: str, expires_at: dt.datetime | None = None
) -> CreatedToken:
    errors: dict[str, list[str]] = {}
    name = _clean_name(name, errors)
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = ["The expiry must be in the future."]
    _raise(errors)
    new = secrets.new_secret(secrets.ACCESS_TOKEN)
    token = PersonalAccessToken.objects.create(
        user=user, name=name, prefix=new.prefix, digest=new.digest, expires_at=expires_at
    )
    return CreatedToken(token=token, raw_token=new.raw)


@transaction.atomic
def access_token_revoke(*, token: PersonalAccessToken) -> PersonalAccessToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


# ---------------------------------------------------------------- service tokens


@dataclass(frozen=True)
class CreatedServiceToken:
    token: ServiceToken
    raw_token: str  # shown once


def _clean_scopes(scopes: Any, errors: dict[str, list[str]]) -> list[str]:
    if not isinstance(scopes, list | tuple) or not scopes:
        errors["scopes"] = ["Choose at least one scope."]
        return []
    unknown = sorted({str(s) for s in scopes} - set(SCOPES))
    if unknown:
        errors["scopes"] = [f"Unknown scope(s): {', '.join(unknown)}."]
        return []
    return [scope for scope in SCOPES if scope in scopes]  # the documented order, no repeats


def _check_future(expires_at: dt.datetime | None, errors: dict[str, list[str]]) -> None:
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = ["The expiry must be in the future."]


def _check_may_hand_out(*, actor: Actor, node: Node, scopes: list[str]) -> None:
    """No privilege escalation: a person hands out only scopes whose permissions they hold on
    the token's node, and needs ``manage_members`` there; tokens never mint tokens."""
    if actor.service_token is not None:
        raise NotAllowed("A service token cannot create or change service tokens.")
    if actor.is_system:  # the system (seeding, management commands) is trusted
        return
    if not has_perm_on_node(user_id=actor.user.pk, node=node, perm=MANAGE_MEMBERS):
        raise NotAllowed("Your role does not allow managing service tokens here.")
    held = {
        perm
        for perm in scope_permissions(scopes)
        if has_perm_on_node(user_id=actor.user.pk, node=node, perm=perm)
    }
    beyond = [s for s in scopes if not SCOPE_PERMISSIONS[s] <= held]
    if beyond:
        raise NotAllowed(
            f"Your role on this node does not cover the scope(s) {', '.join(beyond)}; a token "
            "can hold only what its creator may do."
        )


@transaction.atomic
def service_token_create(
    *,
    actor: Actor,
    node: Node,
    name: str,
    scopes: list[str],
    expires_at: dt.datetime | None = None,
) -> CreatedServiceToken:
    """A token of ``node``'s organization, limited to ``node``'s subtree (the root node: the
    whole organization) and to ``scopes``. The raw token is returned once."""
    errors: dict[str, list[str]] = {}
    name = _clean_name(name, errors)
    scopes = _clean_scopes(scopes, errors)
    _check_future(expires_at, errors)
    if node.archived_at is not None:
        errors["node"] = ["The node is archived."]
    _raise(errors)
    _check_may_hand_out(actor=actor, node=node, scopes=scopes)
    new = secrets.new_secret(secrets.SERVICE_TOKEN)
    token = ServiceToken.objects.create(
        organization_id=node.organization_id,
        node=node,
        name=name,
        prefix=new.prefix,
        digest=new.digest,
        scopes=scopes,
        created_by=actor.user,
        expires_at=expires_at,
    )
    audit_event_record(
        organization=node.organization_id,
        actor=actor,
        action="service_token.create",
        target=token,
        changes={"name": name, "node": node.pk, "scopes": scopes, "expires_at": expires_at},
    )
    return CreatedServiceToken(token=token, raw_token=new.raw)


def _lock_service_token(token: ServiceToken) -> ServiceToken:
    return ServiceToken.objects.select_for_update().select_related("node").get(pk=token.pk)


@transaction.atomic
def service_token_update(
    *, actor: Actor, token: ServiceToken, expires_at: dt.datetime | None
) -> ServiceToken:
    """Change when the token expires (None: never). Extending a token's life hands its scopes
    out again, so the same rule as creating it applies."""
    token = _lock_service_token(token)
    errors: dict[str, list[str]] = {}
    if token.revoked_at is not None:
        errors["expires_at"] = ["The token is revoked."]
    _check_future(expires_at, errors)
    _raise(errors)
    _check_may_hand_out(actor=actor, node=token.node, scopes=list(token.scopes))
    changes = diff(token, {"expires_at": expires_at})
    if changes:
        token.expires_at = expires_at
        token.save(update_fields=["expires_at"])
        audit_event_record(
            organization=token.organization_id,
            actor=actor,
            action="service_token.update",
            target=token,
            changes=changes,
        )
    return token


@transaction.atomic
def service_token_revoke(*, actor: Actor, token: ServiceToken) -> ServiceToken:
    """The token stops working at once (it is looked up on every request). Idempotent."""
    token = _lock_service_token(token)
    if actor.service_token is not None:
        raise NotAllowed("A service token cannot create or change service tokens.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_event_record(
            organization=token.organization_id,
            actor=actor,
            action="service_token.revoke",
            target=token,
            changes={"name": token.name},
        )
    return token
