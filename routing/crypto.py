"""Encryption of provider credentials at rest.

Keys come from ``MEGAROUTER_ENCRYPTION_KEYS`` (comma-separated Fernet keys). The first key
encrypts; every key decrypts (``MultiFernet``), so rotation is: put a new key first, run
``manage.py credentials_rotate`` (re-encrypts every credential with it), then drop the old key.

Outside production, when the variable is unset, one key is derived from ``SECRET_KEY`` with
HKDF-SHA256, so a development checkout works with no setup. Credentials saved that way cannot
be read once SECRET_KEY changes; production refuses to start without explicit keys.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

from megarouter.env import ConfigError

ENV_NAME = "MEGAROUTER_ENCRYPTION_KEYS"


class CredentialDecryptError(Exception):
    """The ciphertext was not made by any configured key (or was tampered with)."""


@dataclass(frozen=True, slots=True)
class CredentialSecret:
    """A decrypted credential. Never log it: the secret fields are hidden from repr."""

    api_key: str = field(default="", repr=False)
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)

    def to_payload(self) -> dict[str, str]:
        payload = {
            "api_key": self.api_key,
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": self.aws_secret_access_key,
            "aws_session_token": self.aws_session_token,
        }
        return {k: v for k, v in payload.items() if v}

    @classmethod
    def from_payload(cls, payload: dict[str, str]) -> CredentialSecret:
        return cls(
            api_key=payload.get("api_key", ""),
            aws_access_key_id=payload.get("aws_access_key_id"),
            aws_secret_access_key=payload.get("aws_secret_access_key"),
            aws_session_token=payload.get("aws_session_token"),
        )


def derive_development_key(secret_key: str) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"megarouter", info=b"credential-encryption"
    )
    return base64.urlsafe_b64encode(hkdf.derive(secret_key.encode()))


@functools.lru_cache(maxsize=4)
def _fernet_for(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        return MultiFernet([Fernet(derive_development_key(secret_key))])
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key.encode()))
        except (ValueError, TypeError):
            raise ConfigError(
                ENV_NAME, f"key #{position} is not a Fernet key (32 url-safe base64 bytes)"
            ) from None
    return MultiFernet(fernets)


def fernet() -> MultiFernet:
    return _fernet_for(tuple(settings.MEGAROUTER_ENCRYPTION_KEYS), settings.SECRET_KEY)


def encrypt_secret(secret: CredentialSecret) -> str:
    plaintext = json.dumps(secret.to_payload(), separators=(",", ":"), sort_keys=True)
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt_secret(ciphertext: str) -> CredentialSecret:
    try:
        plaintext = fernet().decrypt(ciphertext.encode())
    except InvalidToken:
        raise CredentialDecryptError(
            f"credential cannot be decrypted with the keys in {ENV_NAME}"
        ) from None
    return CredentialSecret.from_payload(json.loads(plaintext))


def rotate_ciphertext(ciphertext: str) -> str:
    """Re-encrypt with the primary (first) key."""
    try:
        return fernet().rotate(ciphertext.encode()).decode()
    except InvalidToken:
        raise CredentialDecryptError(
            f"credential cannot be decrypted with the keys in {ENV_NAME}"
        ) from None
