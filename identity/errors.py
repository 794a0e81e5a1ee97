"""Why a single sign-on was refused. The console renders each as an error page with its
``title`` and ``detail`` (written for the person signing in, never with a secret or a token)
and ``status``; ``code`` is stable and lands in the request log."""

from __future__ import annotations

REFUSALS: dict[str, tuple[int, str, str]] = {
    "no_provider": (
        404,
        "Single sign-on is not set up",
        "This organization has no identity provider enabled. Sign in with your password, or "
        "ask the organization's owner.",
    ),
    "provider_disabled": (
        403,
        "Single sign-on is switched off",
        "The organization's owner has disabled this identity provider. Ask them, or sign in "
        "another way if your organization allows it.",
    ),
    "provider_unreachable": (
        502,
        "The identity provider did not answer",
        "The identity provider could not be reached or sent something that is not an OpenID "
        "Connect answer. Try again in a moment; if it persists, tell the organization's owner.",
    ),
    "state_unknown": (
        400,
        "This sign-in has expired or was already used",
        "Each sign-in link works once, in the browser that started it, for 10 minutes. Start "
        "again from the login page.",
    ),
    "provider_error": (
        403,
        "The identity provider refused the sign-in",
        "The identity provider answered with an error instead of signing you in.",
    ),
    "token_exchange_failed": (
        502,
        "The sign-in could not be completed",
        "The identity provider did not accept the sign-in code. Start again from the login page.",
    ),
    "bad_signature": (
        403,
        "The identity provider's answer is not signed correctly",
        "The ID token's signature does not match the provider's published keys, so it was "
        "not trusted. Nothing was changed.",
    ),
    "wrong_issuer": (
        403,
        "The answer came from another issuer",
        "The ID token was issued by someone other than the configured provider.",
    ),
    "wrong_audience": (
        403,
        "The answer was meant for another application",
        "The ID token was issued to a different client, so it cannot sign you in here.",
    ),
    "expired": (
        403,
        "The answer has expired",
        "The ID token is past its expiry time. Start again from the login page; if it keeps "
        "happening, check the clock of the identity provider.",
    ),
    "wrong_nonce": (
        403,
        "The answer does not belong to this sign-in",
        "The ID token was made for another sign-in attempt (its nonce does not match), so it "
        "may be a replay. Start again from the login page.",
    ),
    "invalid_token": (
        403,
        "The identity provider's answer is incomplete",
        "The ID token is missing a required claim or is malformed.",
    ),
    "email_missing": (
        403,
        "No email address",
        "The identity provider did not send an email address. Ask your administrator to "
        "release the email claim to this application.",
    ),
    "email_unverified": (
        403,
        "Your email address is not verified",
        "The identity provider does not vouch for this email address (email_verified is not "
        "true), so no account is created or linked with it.",
    ),
    "domain_not_allowed": (
        403,
        "This email domain is not set up for this organization",
        "Only addresses of the domains the organization declared can sign in with this "
        "identity provider for the first time.",
    ),
    "account_exists": (
        403,
        "An account with this email already exists",
        "It is not a member of this organization, so single sign-on does not take it over. "
        "Ask the organization for an invitation, accept it with your password, then sign in "
        "with single sign-on.",
    ),
    "user_disabled": (
        403,
        "Your account is disabled",
        "This account has been deactivated. Ask the organization's owner.",
    ),
    "no_access": (
        403,
        "None of your groups gives access",
        "You signed in, but none of your identity provider groups maps to a role in this "
        "organization. Ask your administrator to add you to a mapped group.",
    ),
}


class SsoRefused(Exception):
    def __init__(self, code: str, detail: str | None = None) -> None:
        status, title, text = REFUSALS[code]
        super().__init__(f"{code}: {detail or text}")
        self.code = code
        self.status = status
        self.title = title
        self.detail = detail or text
