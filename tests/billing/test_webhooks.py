"""The payment webhook receiver: Stripe-style signatures, tolerance window, idempotency; only a
completed checkout of the organization credits, once."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from billing import webhooks
from billing.errors import WebhookRejected
from billing.models import BillingAccount, Checkout, LedgerEntry, PaymentEvent
from orgs.models import AuditEvent
from tests.billing.factories import make_world

pytestmark = pytest.mark.django_db
SECRET = "whsec_test_secret"
URL = "/api/billing/webhooks/payments/"
FIXTURE = (Path(__file__).parent / "fixtures" / "checkout_completed.json").read_bytes()


@pytest.fixture(autouse=True)
def _secret(settings):
    settings.BILLING_PAYMENT_WEBHOOK_SECRET = SECRET
    settings.BILLING_PAYMENT_WEBHOOK_TOLERANCE = 300


def post(body: bytes, header: str | None):
    headers = {"HTTP_STRIPE_SIGNATURE": header} if header is not None else {}
    return APIClient().post(URL, data=body, content_type="application/json", **headers)


def checkout(world, public_id="co_fixture0000000000000000", amount="50"):
    """The open checkout the fixture's session pays (as a billing manager would start it)."""
    return Checkout.objects.create(public_id=public_id, organization=world.org, amount=amount)


def signed(event: dict) -> tuple[bytes, str]:
    body = json.dumps(event).encode()
    return body, webhooks.sign(payload=body, secret=SECRET)


def books(org):
    return (
        BillingAccount.objects.filter(organization=org).values_list("balance", flat=True).first(),
        LedgerEntry.objects.filter(organization=org).count(),
        PaymentEvent.objects.count(),
        AuditEvent.objects.filter(organization=org, action="billing.payment").count(),
    )


def test_a_paid_checkout_credits_once():
    w = make_world("acme", balance="10")
    co = checkout(w)
    response = post(FIXTURE, webhooks.sign(payload=FIXTURE, secret=SECRET))
    assert response.status_code == 200
    assert response.json() == {"status": "applied", "event": "evt_1QmegaRouterTopup0001"}
    assert books(w.org) == (Decimal("60"), 2, 1, 1)
    entry = LedgerEntry.objects.filter(organization=w.org).first()
    assert (entry.kind, entry.amount, entry.reference) == (
        "topup",
        Decimal("50"),
        "stripe:pi_3QmegaRouter0001",
    )
    co.refresh_from_db()
    assert (co.status, co.ledger_entry_id) == ("paid", entry.pk)
    # the provider retries the same event (fresh signature): applied once
    again = post(FIXTURE, webhooks.sign(payload=FIXTURE, secret=SECRET))
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    # another event for the same, already paid checkout credits nothing
    event = json.loads(FIXTURE)
    event["id"] = "evt_1QmegaRouterTopup0002"
    body, header = signed(event)
    assert post(body, header).json() == {"status": "ignored", "event": "evt_1QmegaRouterTopup0002"}
    assert books(w.org)[:2] == (Decimal("60"), 2)


def test_a_payment_without_a_checkout_of_that_organization_credits_nothing():
    w = make_world("acme", balance="10")
    other = make_world("beta", balance="10")
    checkout(other)  # the session names beta's checkout but acme as the organization
    before, other_before = books(w.org), books(other.org)
    response = post(FIXTURE, webhooks.sign(payload=FIXTURE, secret=SECRET))
    assert response.status_code == 400
    assert "client_reference_id" in response.json()["errors"]
    event = json.loads(FIXTURE)
    event["data"]["object"].pop("client_reference_id")
    body, header = signed(event)
    assert post(body, header).status_code == 400
    assert (books(w.org), books(other.org)) == (before, other_before)


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "signature_missing"),
        ("garbage", "signature_malformed"),
        ("t=123", "signature_malformed"),
        ("WRONG", "signature_malformed"),
    ],
)
def test_missing_or_malformed_signature_is_refused(header, code):
    w = make_world("acme", balance="10")
    before = books(w.org)
    response = post(FIXTURE, header)
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert books(w.org) == before


def test_bad_signature_is_refused_and_changes_nothing():
    w = make_world("acme", balance="10")
    before = books(w.org)
    forged = webhooks.sign(payload=FIXTURE, secret="whsec_someone_else")
    response = post(FIXTURE, forged)
    assert response.status_code == 400
    assert response.json() == {
        "detail": "The signature does not match.",
        "code": "signature_invalid",
    }
    tampered = FIXTURE.replace(b"5000", b"9000")
    response = post(tampered, webhooks.sign(payload=FIXTURE, secret=SECRET))
    assert response.json()["code"] == "signature_invalid"
    assert books(w.org) == before


def test_replayed_old_request_is_refused():
    w = make_world("acme", balance="10")
    before = books(w.org)
    old = webhooks.sign(payload=FIXTURE, secret=SECRET, timestamp=int(time.time()) - 301)
    response = post(FIXTURE, old)
    assert response.status_code == 400
    assert response.json()["code"] == "signature_expired"
    assert books(w.org) == before


def test_rotated_secrets_any_v1_matches():
    header = webhooks.sign(payload=b"{}", secret=SECRET)
    t, v1 = header.split(",")
    webhooks.verify(payload=b"{}", header=f"{t},v1=deadbeef,{v1}", secret=SECRET, tolerance=300)
    with pytest.raises(WebhookRejected):
        webhooks.verify(payload=b"{}", header=header, secret="", tolerance=300)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda e: e["data"]["object"].update(metadata={"organization": "nobody"}),
            "client_reference_id",
        ),
        (lambda e: e["data"]["object"].update(currency="eur"), "currency"),
        (lambda e: e["data"]["object"].update(amount_total=-5), "amount"),
    ],
)
def test_valid_signature_but_bad_event_changes_nothing(mutate, field):
    w = make_world("acme", balance="10")
    checkout(w)
    before = books(w.org)
    event = json.loads(FIXTURE)
    mutate(event)
    body = json.dumps(event).encode()
    response = post(body, webhooks.sign(payload=body, secret=SECRET))
    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert books(w.org) == before


def test_unhandled_event_types_are_acknowledged_and_ignored():
    w = make_world("acme", balance="10")
    body = json.dumps({"id": "evt_other", "type": "customer.created", "data": {"object": {}}})
    response = post(body.encode(), webhooks.sign(payload=body.encode(), secret=SECRET))
    assert response.json() == {"status": "ignored", "event": "evt_other"}
    assert books(w.org)[:2] == (Decimal("10"), 1)


def test_unconfigured_secret_refuses_everything(settings):
    settings.BILLING_PAYMENT_WEBHOOK_SECRET = ""
    w = make_world("acme", balance="10")
    response = post(FIXTURE, webhooks.sign(payload=FIXTURE, secret=""))
    assert response.status_code == 400
    assert response.json()["code"] == "not_configured"
    assert books(w.org)[:2] == (Decimal("10"), 1)
