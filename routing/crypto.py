"""Encryption of provider credentials at rest: a credential's fields as one JSON document,
encrypted by ``megarouter.crypto`` (the keys, their rotation and the development key are
described there)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from megarouter.crypto import CredentialDecryptError, decrypt_text, encrypt_text, rotate_ciphertext

__all__ = [
    "CredentialDecryptError",
    "CredentialSecret",
    "decrypt_secret",
    "encrypt_secret",
    "rotate_ciphertext",
]


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


def encrypt_secret(secret: CredentialSecret) -> str:
    plaintext = json.dumps(secret.to_payload(), separators=(",", ":"), sort_keys=True)
    return encrypt_text(plaintext)


def decrypt_secret(ciphertext: str) -> CredentialSecret:
    return CredentialSecret.from_payload(json.loads(decrypt_text(ciphertext)))
