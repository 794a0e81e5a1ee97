"""A real OpenID Connect provider for the tests, on 127.0.0.1 in a thread.

Built from Authlib's server components (``AuthorizationServer``, ``AuthorizationCodeGrant``
with ``CodeChallenge`` (PKCE, S256 required) and ``OpenIDCode``): discovery, the authorization
endpoint, the token endpoint (client_secret_basic / client_secret_post) and the JWKS, over a
standard-library HTTP server. ID tokens are RS256-signed with a generated key.

The browser's session at the provider is ``op.login_as`` (who is signed in there). The
``misbehave`` knobs make the provider send what a broken or hostile one would: a token signed
with a key it does not publish, for another audience, already expired, or with another nonce.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode
from joserfc.jwk import KeySet, RSAKey

_KEYS: dict[str, RSAKey] = {}


def rsa_key(name: str) -> RSAKey:
    """One generated key per name for the whole test session (generating costs ~0.1 s)."""
    if name not in _KEYS:
        _KEYS[name] = RSAKey.generate_key(
            2048, parameters={"kid": f"{name}-{secrets.token_hex(4)}"}
        )
    return _KEYS[name]


@dataclass
class IdpUser:
    sub: str
    email: str
    email_verified: bool | None = True  # None: the claim is left out
    name: str = ""
    groups: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. Entra ID's xms_edov


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        allowed = {"openid", "email", "profile", "groups"}
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: IdpUser
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


class _Request(OAuth2Request):
    def __init__(self, method: str, uri: str, headers: Any, data: dict[str, str]) -> None:
        super().__init__(method=method, uri=uri, headers=headers)
        self.payload = BasicOAuth2Payload(data)
        self._data = data

    @property
    def args(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.uri).query))

    @property
    def form(self) -> dict[str, str]:
        return self._data


@dataclass
class Misbehave:
    signing_key: str = ""  # sign with this key name instead of the published one
    audience: str = ""  # put this audience in the token instead of the client id
    lifetime: int = 300  # seconds until exp (negative: expired when issued)
    nonce: str = ""  # put this nonce instead of the one the client sent
    issuer: str = ""


class TestOP:
    """``with TestOP() as op:`` starts it; ``op.issuer``, ``op.discovery_url``."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "op") -> None:
        self.name = name
        self.key = rsa_key(name)
        self.clients: dict[str, Client] = {}
        self.users: dict[str, IdpUser] = {}
        self.codes: dict[str, Code] = {}
        self.login_as: str | None = None
        self.misbehave = Misbehave()
        self.token_requests: list[dict[str, str]] = []
        self.authorize_requests: list[dict[str, str]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.issuer = f"http://127.0.0.1:{self._httpd.server_port}"
        self.discovery_url = f"{self.issuer}/.well-known/openid-configuration"
        self.server = self._authorization_server()
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # -- setup

    def add_client(self, client_id: str, client_secret: str, redirect_uri: str) -> Client:
        client = Client(client_id, client_secret, [redirect_uri])
        self.clients[client_id] = client
        return client

    def add_user(self, username: str, **claims: Any) -> IdpUser:
        user = IdpUser(sub=claims.pop("sub", f"{self.name}-{username}"), **claims)
        self.users[username] = user
        return user

    def __enter__(self) -> TestOP:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    # -- authlib server

    def _authorization_server(self) -> AuthorizationServer:
        op = self

        class Grant(AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code: str, request: Any) -> None:
                data = request.payload.data
                op.codes[code] = Code(
                    code=code,
                    client_id=request.client.client_id,
                    redirect_uri=data.get("redirect_uri", ""),
                    scope=request.client.get_allowed_scope(data.get("scope", "")),
                    user=request.user,
                    nonce=data.get("nonce"),
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                    auth_time=int(time.time()),
                )

            def query_authorization_code(self, code: str, client: Client) -> Code | None:
                found = op.codes.get(code)
                return found if found and found.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code: Code) -> None:
                op.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: Code) -> IdpUser:
                return authorization_code.user

        class OpenID(OpenIDCode):
            def exists_nonce(self, nonce: str, request: Any) -> bool:
                return any(c.nonce == nonce for c in op.codes.values())

            def resolve_client_private_key(self, client: Client) -> RSAKey:
                return rsa_key(op.misbehave.signing_key) if op.misbehave.signing_key else op.key

            def get_client_algorithm(self, client: Client) -> str:
                return "RS256"

            def get_encode_header(self, client: Client) -> dict[str, str]:
                return {"alg": "RS256", "kid": self.resolve_client_private_key(client).kid}

            def get_client_claims(self, client: Client) -> dict[str, Any]:
                now = int(time.time())
                return {
                    "iss": op.misbehave.issuer or op.issuer,
                    "aud": [op.misbehave.audience or client.client_id],
                    "iat": now,
                    "exp": now + op.misbehave.lifetime,
                }

            def get_authorization_code_claims(self, authorization_code: Code) -> dict[str, Any]:
                claims = super().get_authorization_code_claims(authorization_code)
                if op.misbehave.nonce:
                    claims["nonce"] = op.misbehave.nonce
                return claims

            def generate_user_info(self, user: IdpUser, scope: str) -> dict[str, Any]:
                info: dict[str, Any] = {"sub": user.sub}
                if "email" in scope.split():
                    info["email"] = user.email
                    if user.email_verified is not None:
                        info["email_verified"] = user.email_verified
                if "profile" in scope.split():
                    info["name"] = user.name
                info["groups"] = list(user.groups)
                return {**info, **user.extra}

        class Server(AuthorizationServer):
            def query_client(self, client_id: str) -> Client | None:
                return op.clients.get(client_id)

            def save_token(self, token: dict[str, Any], request: Any) -> None:
                return None

            def create_oauth2_request(self, request: Any) -> OAuth2Request:
                return request  # the handler below builds the OAuth2Request

            def handle_response(self, status: int, body: Any, headers: Any) -> Any:
                if isinstance(body, dict):
                    body = json.dumps(body)
                return status, body, list(headers)

            def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
                return None

        server = Server(scopes_supported=["openid", "email", "profile", "groups"])
        server.register_token_generator(
            "default",
            BearerTokenGenerator(lambda *a, **k: secrets.token_urlsafe(32)),
        )
        server.register_grant(Grant, [CodeChallenge(required=True), OpenID(require_nonce=True)])
        return server

    # -- HTTP

    def _discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "email", "profile", "groups"],
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        op = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _send(self, status: int, body: str, headers: list[tuple[str, str]]) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                data = body.encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _json(self, doc: Any) -> None:
                self._send(200, json.dumps(doc), [("Content-Type", "application/json")])

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/.well-known/openid-configuration":
                    return self._json(op._discovery())
                if path == "/jwks":
                    return self._json(KeySet([op.key]).as_dict(private=False))
                if path == "/authorize":
                    data = dict(parse_qsl(urlsplit(self.path).query))
                    op.authorize_requests.append(data)
                    request = _Request("GET", op.issuer + self.path, self.headers, data)
                    user = op.users.get(op.login_as or "")
                    try:
                        grant = op.server.get_consent_grant(request, end_user=user)
                    except OAuth2Error as error:
                        body = json.dumps({"error": error.error})
                        return self._send(400, body, [("Content-Type", "application/json")])
                    status, body, headers = op.server.create_authorization_response(
                        grant.request, grant_user=user, grant=grant
                    )
                    return self._send(status, body, headers)
                return self._send(404, "not found", [])

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = dict(parse_qsl(self.rfile.read(length).decode()))
                if urlsplit(self.path).path != "/token":
                    return self._send(404, "not found", [])
                op.token_requests.append(data)
                request = _Request("POST", op.issuer + self.path, self.headers, data)
                status, body, headers = op.server.create_token_response(request)
                return self._send(status, body, headers)

        return Handler


def authorize(op: TestOP, url: str, username: str | None) -> str:
    """The browser at the provider: ``username`` signed in there opens the authorization
    URL; the provider's redirect back (the callback URL with code and state) is returned."""
    op.login_as = username
    response = httpx.get(url, follow_redirects=False, timeout=10)
    assert response.status_code == 302, (response.status_code, response.text)
    return response.headers["location"]
