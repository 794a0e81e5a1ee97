from __future__ import annotations

import base64

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import call_command
from django.urls import reverse

from megarouter.env import ConfigError
from routing.crypto import CredentialDecryptError, CredentialSecret, decrypt_secret
from routing.models import Credential
from routing.services import credential_upsert, credentials_rotate

pytestmark = pytest.mark.django_db
SECRET = "sk-live-0123456789abcdefSECRET"


def _assert_not_in(secret: str, text: str) -> None:
    assert secret not in text
    assert base64.b64encode(secret.encode()).decode() not in text
    assert base64.urlsafe_b64encode(secret.encode()).decode().rstrip("=") not in text


def test_ciphertext_does_not_contain_the_secret_and_round_trips():
    _, changed = credential_upsert(
        name="openai-main", kind="api_key", secret=CredentialSecret(api_key=SECRET)
    )
    assert changed == ["created"]
    stored = Credential.objects.values_list("ciphertext", flat=True).get()
    _assert_not_in(SECRET, stored)
    assert decrypt_secret(stored) == CredentialSecret(api_key=SECRET)
    assert SECRET not in repr(decrypt_secret(stored))


def test_unchanged_secret_writes_nothing_and_a_new_one_is_re_encrypted():
    credential, _ = credential_upsert(
        name="c", kind="api_key", secret=CredentialSecret(api_key=SECRET)
    )
    ciphertext = credential.ciphertext
    _, changed = credential_upsert(
        name="c", kind="api_key", secret=CredentialSecret(api_key=SECRET)
    )
    assert changed == []
    assert Credential.objects.get().ciphertext == ciphertext
    _, changed = credential_upsert(name="c", kind="api_key", secret=CredentialSecret(api_key="new"))
    assert changed == ["secret"]
    assert decrypt_secret(Credential.objects.get().ciphertext).api_key == "new"


def test_aws_credentials():
    secret = CredentialSecret(
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="wJalrSECRET",
        aws_session_token="tok",
    )
    credential, _ = credential_upsert(name="aws", kind="aws", secret=secret)
    for value in ("AKIAEXAMPLE", "wJalrSECRET"):
        _assert_not_in(value, credential.ciphertext)
    assert decrypt_secret(Credential.objects.get().ciphertext) == secret


def test_rotation_re_encrypts_with_the_new_primary_key(settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.MEGAROUTER_ENCRYPTION_KEYS = [old]
    credential_upsert(name="c", kind="api_key", secret=CredentialSecret(api_key=SECRET))
    settings.MEGAROUTER_ENCRYPTION_KEYS = [new, old]
    call_command("credentials_rotate", stdout=__import__("io").StringIO())
    stored = Credential.objects.get().ciphertext.encode()
    assert Fernet(new.encode()).decrypt(stored).decode() == f'{{"api_key":"{SECRET}"}}'
    with pytest.raises(InvalidToken):
        Fernet(old.encode()).decrypt(stored)
    settings.MEGAROUTER_ENCRYPTION_KEYS = [new]
    assert decrypt_secret(stored.decode()).api_key == SECRET


def test_rotation_without_the_old_key_fails_and_changes_nothing(settings):
    settings.MEGAROUTER_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    credential, _ = credential_upsert(
        name="c", kind="api_key", secret=CredentialSecret(api_key=SECRET)
    )
    settings.MEGAROUTER_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(CredentialDecryptError):
        credentials_rotate()
    assert Credential.objects.get().ciphertext == credential.ciphertext


def test_a_malformed_key_names_the_variable(settings):
    settings.MEGAROUTER_ENCRYPTION_KEYS = ["not-a-key"]
    with pytest.raises(ConfigError, match=r"^MEGAROUTER_ENCRYPTION_KEYS: key #1 is not a Fernet"):
        credential_upsert(name="c", kind="api_key", secret=CredentialSecret(api_key=SECRET))
    assert Credential.objects.count() == 0


def test_admin_never_renders_the_secret_or_ciphertext(admin_client):
    credential, _ = credential_upsert(
        name="c", kind="api_key", secret=CredentialSecret(api_key=SECRET)
    )
    pages = [
        admin_client.get(reverse("admin:routing_credential_changelist")),
        admin_client.get(reverse("admin:routing_credential_change", args=[credential.pk])),
    ]
    for page in pages:
        assert page.status_code == 200
        html = page.content.decode()
        _assert_not_in(SECRET, html)
        assert credential.ciphertext not in html
        assert credential.ciphertext[:40] not in html


def test_admin_form_encrypts_and_keeps_the_secret_when_left_empty(admin_client):
    response = admin_client.post(
        reverse("admin:routing_credential_add"),
        {"name": "via-admin", "kind": "api_key", "api_key": SECRET},
    )
    assert response.status_code == 302
    credential = Credential.objects.get(name="via-admin")
    _assert_not_in(SECRET, credential.ciphertext)
    assert decrypt_secret(credential.ciphertext).api_key == SECRET
    response = admin_client.post(
        reverse("admin:routing_credential_change", args=[credential.pk]),
        {"name": "via-admin", "kind": "api_key", "api_key": ""},
    )
    assert response.status_code == 302
    assert decrypt_secret(Credential.objects.get().ciphertext).api_key == SECRET


def test_admin_refuses_a_new_credential_without_a_secret(admin_client):
    response = admin_client.post(
        reverse("admin:routing_credential_add"), {"name": "empty", "kind": "api_key"}
    )
    assert response.status_code == 200
    assert "Enter the secret." in response.content.decode()
    assert Credential.objects.count() == 0


def test_production_refuses_to_start_without_encryption_keys():
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "MEGAROUTER_ENCRYPTION_KEYS"}
    env.update(
        {
            "MEGAROUTER_ENV": "production",
            "SECRET_KEY": "x" * 40,
            "DEBUG": "false",
            "ALLOWED_HOSTS": "gateway.example",
            "DATABASE_URL": "postgres://u@127.0.0.1:5432/x",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
        }
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "megarouter: configuration error: MEGAROUTER_ENCRYPTION_KEYS: production needs at least "
        "one Fernet key"
    )
