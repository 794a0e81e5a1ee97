"""Encryption of secrets at rest: provider credentials (``routing.crypto``) and identity
provider client secrets (``identity.services``).

Keys come from ``MEGAROUTER_ENCRYPTION_KEYS`` (comma-separated Fernet keys). The first key
encrypts; every key decrypts (``MultiFernet``), so rotation is: put a new key first, run
``manage.py credentials_rotate`` (re-encrypts every stored secret with it), then drop the old
key.

Outside production, when the variable is unset, one key is derived from ``SECRET_KEY`` with
HKDF-SHA256, so a development checkout works with no setup. Secrets saved that way cannot be
read once SECRET_KEY changes; production refuses to start without explicit keys.
"""

from __future__ import annotations

import base64
import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

from megarouter.env import ConfigError

ENV_NAME = "MEGAROUTER_ENCRYPTION_KEYS"


class CredentialDecryptError(Exception):
    """The ciphertext was not made by any configured key (or was tampered with)."""


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


def encrypt_text(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt_text(ciphertext: str) -> str:
    try:
        return fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise CredentialDecryptError(
            f"credential cannot be decrypted with the keys in {ENV_NAME}"
        ) from None


def rotate_ciphertext(ciphertext: str) -> str:
    """Re-encrypt with the primary (first) key."""
    try:
        return fernet().rotate(ciphertext.encode()).decode()
    except InvalidToken:
        raise CredentialDecryptError(
            f"credential cannot be decrypted with the keys in {ENV_NAME}"
        ) from None
