"""Multi-factor authentication of console users (docs/identity.md, "Multi-factor
authentication"): one TOTP device per user (django-otp's ``TOTPDevice``) and ten single-use
recovery codes (a django-otp ``StaticDevice``), plus which organizations require it.

1. ``mfa_enrolment_start`` gives the user an unconfirmed TOTP device (the same one until it is
   confirmed, so reloading the page keeps the QR code).
2. ``mfa_enrolment_confirm`` checks a code from the app, confirms the device and returns ten
   fresh recovery codes (shown once; stored as HMAC digests, never as typed).
3. ``mfa_verify`` checks a code at login: the TOTP device first (a code already used, or an
   older one, is refused: django-otp keeps the last accepted time step), then the recovery
   codes (each is deleted when used). Wrong codes also back off (django-otp's throttle: 1 s,
   2 s, 4 s ... after successive failures), beside the login rate limit (``orgs.login_limits``).
4. ``mfa_recovery_codes_regenerate`` replaces the ten codes (needs a current code);
   ``mfa_disable`` removes both devices (needs the password and a current code, and is refused
   while an organization of the user requires MFA).

User-level changes are not organization events, so they are not in any organization's audit
log; turning an organization's requirement on or off is
(``orgs.services.organization_mfa_require``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from base64 import b32encode
from dataclasses import dataclass
from typing import Any

import segno
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from orgs.errors import InvalidInput
from orgs.models import Organization
from orgs.selectors import organizations_for_user

RECOVERY_CODES = 10
DEVICE_NAME = "console"
WRONG_CODE = "That code is not valid. Enter the current code from your app."


# ---------------------------------------------------------------- selectors


def mfa_device(user: Any) -> TOTPDevice | None:
    """The user's confirmed TOTP device, if MFA is on."""
    return TOTPDevice.objects.filter(user_id=user.pk, confirmed=True).first()


def mfa_enabled(user: Any) -> bool:
    return TOTPDevice.objects.filter(user_id=user.pk, confirmed=True).exists()


def recovery_codes_left(user: Any) -> int:
    return StaticToken.objects.filter(device__user_id=user.pk, device__confirmed=True).count()


def organizations_requiring_mfa(user: Any) -> QuerySet[Organization]:
    """The user's live organizations that require MFA."""
    return organizations_for_user(user=user).filter(require_mfa=True)


# The session key where a single sign-on login keeps the id of the organization whose
# identity provider signed the user in (console.views.sso).
SSO_SESSION_ORG = "sso_organization_id"


def session_passes_mfa(request: Any, organization: Organization) -> bool:
    """An organization's MFA requirement is about password logins: a session passes it once it
    passed MFA, or when it was signed in by that organization's own identity provider (which
    applies the organization's own second-factor policy). A session signed in by another
    organization's provider does not pass (docs/identity.md)."""
    if session_verified(request.user):
        return True
    session = getattr(request, "session", None)
    return session is not None and session.get(SSO_SESSION_ORG) == organization.pk


def session_verified(user: Any) -> bool:
    """Whether this request's session passed MFA (``django_otp.middleware.OTPMiddleware`` sets
    ``is_verified`` on session users; a user authenticated by a token has none: False)."""
    is_verified = getattr(user, "is_verified", None)
    return bool(is_verified and is_verified())


@dataclass(frozen=True)
class Enrolment:
    device: TOTPDevice
    secret: str  # base32, grouped by four, for typing into an app
    otpauth_url: str
    qr_svg: str  # an inline <svg> element


def enrolment_details(device: TOTPDevice) -> Enrolment:
    raw = b32encode(device.bin_key).decode()
    url = device.config_url
    qr = segno.make(url, error="m")
    return Enrolment(
        device=device,
        secret=" ".join(raw[i : i + 4] for i in range(0, len(raw), 4)),
        otpauth_url=url,
        qr_svg=qr.svg_inline(scale=5, border=2, title="MFA setup QR code"),
    )


# ---------------------------------------------------------------- services


def mfa_enrolment_start(*, user: Any) -> Enrolment:
    """The user's unconfirmed TOTP device (created on first call). Refused when MFA is on."""
    if mfa_enabled(user):
        raise InvalidInput({"code": ["Multi-factor authentication is already on."]})
    device = TOTPDevice.objects.filter(user_id=user.pk, confirmed=False).first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)
    return enrolment_details(device)


def pending_enrolment(user: Any) -> Enrolment | None:
    device = TOTPDevice.objects.filter(user_id=user.pk, confirmed=False).first()
    return None if device is None else enrolment_details(device)


def mfa_enrolment_confirm(*, user: Any, code: str) -> tuple[TOTPDevice, list[str]]:
    """Confirm the pending device with a code from the app; returns it and the recovery codes.

    A wrong code is refused after its transaction commits, so django-otp's back-off counts it."""
    with transaction.atomic():
        device = (
            TOTPDevice.objects.select_for_update().filter(user_id=user.pk, confirmed=False).first()
        )
        if device is None:
            raise InvalidInput({"code": ["Start the setup again: there is nothing to confirm."]})
        verified = device.verify_token(_digits(code))
        if verified:
            TOTPDevice.objects.filter(user_id=user.pk).exclude(pk=device.pk).delete()
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            codes = _new_recovery_codes(user)
    if not verified:
        raise InvalidInput({"code": [WRONG_CODE]})
    return device, codes


@transaction.atomic
def mfa_verify(*, user: Any, code: str) -> TOTPDevice | StaticDevice | None:
    """The device that accepts ``code`` (TOTP, else a recovery code, which is used up), or None.

    The device rows are locked first, so two requests with one code cannot both pass."""
    totp = TOTPDevice.objects.select_for_update().filter(user_id=user.pk, confirmed=True).first()
    if totp is None:
        return None
    digits = _digits(code)
    if digits.isdigit() and len(digits) == totp.digits:
        return totp if totp.verify_token(digits) else None
    static = (
        StaticDevice.objects.select_for_update().filter(user_id=user.pk, confirmed=True).first()
    )
    if static is not None and static.verify_token(_recovery_digest(code)):
        return static
    return None


def throttled_for(user: Any) -> int:
    """Seconds until django-otp's back-off lets the user try a code again (0: now)."""
    waits = [0]
    for device in (
        TOTPDevice.objects.filter(user_id=user.pk, confirmed=True).first(),
        StaticDevice.objects.filter(user_id=user.pk, confirmed=True).first(),
    ):
        if device is None:
            continue
        allowed, info = device.verify_is_allowed()
        if not allowed and info and info.get("locked_until"):
            waits.append(math.ceil((info["locked_until"] - timezone.now()).total_seconds()))
    return max(waits)


def mfa_recovery_codes_regenerate(*, user: Any, code: str) -> list[str]:
    """Ten new recovery codes in place of the old ones (needs a current code). The code is
    checked in a transaction of its own, so a wrong one counts toward django-otp's back-off."""
    if mfa_verify(user=user, code=code) is None:
        raise InvalidInput({"code": [WRONG_CODE]})
    with transaction.atomic():
        return _new_recovery_codes(user)


def mfa_disable(*, user: Any, password: str, code: str) -> None:
    """Remove the user's MFA devices (needs the password and a current or recovery code; the
    code is checked in a transaction of its own, as above)."""
    errors: dict[str, list[str]] = {}
    required = list(organizations_requiring_mfa(user).values_list("name", flat=True))
    if required:
        raise InvalidInput(
            {
                "__all__": [
                    f"{', '.join(required)} require multi-factor authentication: it stays on "
                    "while you are a member."
                ]
            }
        )
    if not user.check_password(password):
        errors["password"] = ["The password is not correct."]
    if not errors and mfa_verify(user=user, code=code) is None:
        errors["code"] = [WRONG_CODE]
    if errors:
        raise InvalidInput(errors)
    with transaction.atomic():
        TOTPDevice.objects.filter(user_id=user.pk).delete()
        StaticDevice.objects.filter(user_id=user.pk).delete()


# ---------------------------------------------------------------- helpers


def _digits(code: str) -> str:
    return "".join(code.split())


def normalize_recovery_code(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())


def _recovery_digest(code: str) -> str:
    """What is stored for a recovery code: an HMAC-SHA256 of its normalized form, in the 16
    characters ``StaticToken.token`` holds (64 bits of a keyed digest of a 50-bit code)."""
    key = settings.KEY_HMAC_SECRET.encode()
    message = b"mfa-recovery:" + normalize_recovery_code(code).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:16]


def _new_recovery_codes(user: Any) -> list[str]:
    device, _ = StaticDevice.objects.get_or_create(
        user=user, name=DEVICE_NAME, defaults={"confirmed": True}
    )
    device.token_set.all().delete()
    device.throttle_reset(commit=True)
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = b32encode(secrets.token_bytes(10)).decode().lower()[:10]
        codes.append(f"{raw[:5]}-{raw[5:]}")
    StaticToken.objects.bulk_create(
        [StaticToken(device=device, token=_recovery_digest(code)) for code in codes]
    )
    return codes
