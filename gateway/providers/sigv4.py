"""AWS Signature Version 4, written from the AWS General Reference ("Create a signed AWS API
request") and checked against AWS's published SigV4 test suite (tests/gateway/fixtures/sigv4/).

Only what Bedrock needs: header-based signing of one request. The canonical URI is the URL path
as it goes on the wire, URI-encoded once more (non-S3 services sign the encoded path, so a
Bedrock model id ``a:0`` sent as ``/model/a%3A0/converse`` is signed as
``/model/a%253A0/converse``, as the AWS SDKs do).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
_UNRESERVED = "-_.~"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k_date = _hmac(("AWS4" + secret).encode("utf-8"), date)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    return _hmac(k_service, "aws4_request")


def canonical_uri(path: str) -> str:
    if not path:
        return "/"
    return quote(path, safe="/" + _UNRESERVED)


def canonical_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    encoded = sorted(
        (quote(key, safe=_UNRESERVED), quote(value, safe=_UNRESERVED)) for key, value in pairs
    )
    return "&".join(f"{key}={value}" for key, value in encoded)


def _canonical_headers(headers: dict[str, str]) -> tuple[str, str]:
    normalized: dict[str, str] = {}
    for name, value in headers.items():
        key = name.strip().lower()
        # Trim and collapse runs of spaces; repeated headers join with commas.
        clean = " ".join(str(value).split())
        normalized[key] = f"{normalized[key]},{clean}" if key in normalized else clean
    names = sorted(normalized)
    block = "".join(f"{name}:{normalized[name]}\n" for name in names)
    return block, ";".join(names)


def canonical_request(
    method: str, url: str, headers: dict[str, str], payload_hash: str
) -> tuple[str, str]:
    """(canonical request, signed headers) for headers that are all signed."""
    parts = urlsplit(url)
    header_block, signed = _canonical_headers(headers)
    text = "\n".join(
        [
            method.upper(),
            canonical_uri(parts.path),
            canonical_query(parts.query),
            header_block,
            signed,
            payload_hash,
        ]
    )
    return text, signed


def sign(
    *,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    region: str,
    service: str,
    session_token: str | None = None,
    now: datetime | None = None,
) -> dict[str, str]:
    """Return ``headers`` plus ``host``, ``x-amz-date`` (+ ``x-amz-security-token``) and
    ``authorization``. Every header passed in is signed."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    signed_headers = {k.lower(): v for k, v in headers.items() if k.lower() != "authorization"}
    if "host" not in signed_headers:
        signed_headers["host"] = urlsplit(url).netloc
    signed_headers["x-amz-date"] = amz_date
    if session_token:
        signed_headers["x-amz-security-token"] = session_token
    payload_hash = hashlib.sha256(body).hexdigest()
    creq, signed = canonical_request(method, url, signed_headers, payload_hash)
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode("utf-8")).hexdigest()]
    )
    signature = hmac.new(
        signing_key(secret_key, date, region, service),
        string_to_sign.encode("utf-8"),
        hashlib.sha256,
    ).hexdigest()
    signed_headers["authorization"] = (
        f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, "
        f"Signature={signature}"
    )
    return signed_headers
