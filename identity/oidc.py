"""The OpenID Connect relying party: discovery, the authorization request (state, nonce and
PKCE S256), the code exchange and the ID token's checks (JWKS signature, issuer, audience,
expiry, nonce).

Authlib's OAuth2 client builds the authorization URL and posts the code exchange (one short-
lived httpx client per exchange, explicit timeouts); joserfc, the JOSE library Authlib itself
signs and verifies with, decodes and checks the ID token. The discovery document and the key
set are cached for 5 minutes in the shared cache; a token signed by a key id the cached set
does not hold refetches the set once (key rotation at the provider).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import OAuth2Client
from django.core.cache import cache
from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import KeySet

from identity.errors import SsoRefused

try:  # Authlib's client is built on httpx2 when it is installed, else on httpx
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, httpx2.HTTPError)
except ImportError:  # pragma: no cover - httpx2 comes with the dev tools (openai, anthropic)
    _TRANSPORT_ERRORS = (httpx.HTTPError,)

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# Authlib's client is built on whichever httpx it finds (httpx2 when installed): a plain number.
CLIENT_TIMEOUT_SECONDS = 10.0
CACHE_SECONDS = 300
# Seconds of clock difference tolerated on exp / iat / nbf.
LEEWAY_SECONDS = 30
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
_REQUIRED_METADATA = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")


@dataclass(frozen=True)
class Metadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_auth_methods: tuple[str, ...]


def _get_json(url: str) -> Any:
    try:
        response = httpx.get(url, timeout=TIMEOUT, follow_redirects=False)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise SsoRefused("provider_unreachable", f"{url}: {type(exc).__name__}") from None


def _cache_key(kind: str, url: str) -> str:
    return f"identity:{kind}:{hashlib.sha256(url.encode()).hexdigest()}"


def metadata_for(discovery_url: str) -> Metadata:
    """The provider's OpenID configuration (raises ``SsoRefused("provider_unreachable")``)."""
    key = _cache_key("discovery", discovery_url)
    doc = cache.get(key)
    if doc is None:
        doc = _get_json(discovery_url)
        if not isinstance(doc, dict) or any(
            not isinstance(doc.get(name), str) for name in _REQUIRED_METADATA
        ):
            raise SsoRefused(
                "provider_unreachable",
                "The discovery document lacks issuer, authorization_endpoint, token_endpoint "
                "or jwks_uri.",
            )
        cache.set(key, doc, CACHE_SECONDS)
    methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    return Metadata(
        issuer=doc["issuer"],
        authorization_endpoint=doc["authorization_endpoint"],
        token_endpoint=doc["token_endpoint"],
        jwks_uri=doc["jwks_uri"],
        token_auth_methods=tuple(m for m in methods if isinstance(m, str)),
    )


def _key_set(jwks_uri: str, *, refresh: bool = False) -> KeySet:
    key = _cache_key("jwks", jwks_uri)
    doc = None if refresh else cache.get(key)
    if doc is None:
        doc = _get_json(jwks_uri)
        cache.set(key, doc, CACHE_SECONDS)
    try:
        return KeySet.import_key_set(doc)
    except (jose_errors.JoseError, ValueError, TypeError, KeyError):
        raise SsoRefused("provider_unreachable", "The provider's JWKS is not a key set.") from None


def _client(
    *, client_id: str, client_secret: str, scope: str, redirect_uri: str, methods: tuple[str, ...]
) -> OAuth2Client:
    auth_method = (
        "client_secret_post"
        if "client_secret_basic" not in methods and "client_secret_post" in methods
        else "client_secret_basic"
    )
    return OAuth2Client(
        client_id=client_id,
        client_secret=client_secret,
        scope=scope,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method=auth_method,
        timeout=CLIENT_TIMEOUT_SECONDS,
    )


def authorization_url(
    *,
    metadata: Metadata,
    client_id: str,
    scope: str,
    redirect_uri: str,
    state: str,
    nonce: str,
    code_verifier: str,
    login_hint: str = "",
) -> str:
    extra = {"login_hint": login_hint} if login_hint else {}
    with _client(
        client_id=client_id,
        client_secret="",
        scope=scope,
        redirect_uri=redirect_uri,
        methods=metadata.token_auth_methods,
    ) as client:
        url, _ = client.create_authorization_url(
            metadata.authorization_endpoint,
            state=state,
            nonce=nonce,
            code_verifier=code_verifier,
            **extra,
        )
    return url


def exchange_code(
    *,
    metadata: Metadata,
    client_id: str,
    client_secret: str,
    scope: str,
    redirect_uri: str,
    code: str,
    code_verifier: str,
) -> str:
    """The ID token the token endpoint returns for ``code`` (compact JWS)."""
    with _client(
        client_id=client_id,
        client_secret=client_secret,
        scope=scope,
        redirect_uri=redirect_uri,
        methods=metadata.token_auth_methods,
    ) as client:
        try:
            token = client.fetch_token(
                metadata.token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=code_verifier,
            )
        except AuthlibBaseError as exc:  # the token endpoint's error answer
            error = str(getattr(exc, "error", "") or "an error")[:80]
            raise SsoRefused(
                "token_exchange_failed", f"The token endpoint answered {error}."
            ) from None
        except (*_TRANSPORT_ERRORS, ValueError):
            raise SsoRefused("provider_unreachable") from None
    id_token = token.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise SsoRefused("invalid_token", "The token endpoint sent no ID token.")
    return id_token


def _decode(id_token: str, keys: KeySet) -> jwt.Token:
    return jwt.decode(id_token, keys, algorithms=ALGORITHMS)


def id_token_claims(
    *,
    id_token: str,
    metadata: Metadata,
    client_id: str,
    nonce: str,
    now: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """The ID token's claims once its signature (the provider's JWKS), ``iss``, ``aud`` (and
    ``azp`` when several audiences), ``exp`` / ``iat`` and ``nonce`` have been checked."""
    try:
        try:
            token = _decode(id_token, _key_set(metadata.jwks_uri))
        except (jose_errors.BadSignatureError, jose_errors.InvalidKeyIdError, ValueError):
            # A key id the cached set does not hold: the provider may have rotated its keys.
            token = _decode(id_token, _key_set(metadata.jwks_uri, refresh=True))
    except (jose_errors.BadSignatureError, jose_errors.InvalidKeyIdError, ValueError):
        raise SsoRefused("bad_signature") from None
    except jose_errors.JoseError:
        raise SsoRefused("invalid_token", "The ID token could not be decoded.") from None
    claims = token.claims
    registry = jwt.JWTClaimsRegistry(
        now=now or (lambda: int(time.time())),
        leeway=LEEWAY_SECONDS,
        iss={"essential": True, "value": metadata.issuer},
        sub={"essential": True},
        aud={"essential": True, "value": client_id},
        exp={"essential": True},
        iat={"essential": True},
    )
    try:
        registry.validate(claims)
    except jose_errors.ExpiredTokenError:
        raise SsoRefused("expired") from None
    except jose_errors.ClaimError as exc:
        code = {"iss": "wrong_issuer", "aud": "wrong_audience"}.get(exc.claim, "invalid_token")
        raise SsoRefused(code) from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise SsoRefused("wrong_audience")
    if not nonce or claims.get("nonce") != nonce:
        raise SsoRefused("wrong_nonce")
    return claims
