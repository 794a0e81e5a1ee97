"""The balance always equals the ledger sum; the ledger is append-only; every change is
audited; bad input is refused and changes nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services
from billing.errors import BillingError, InvalidInput
from billing.models import BillingAccount, ImmutableRow, LedgerEntry
from orgs.models import AuditEvent
from tests.billing.factories import SYSTEM, make_world

pytestmark = pytest.mark.django_db
D = Decimal


def state(org):
    return (
        list(BillingAccount.objects.filter(organization=org).values_list("balance", "held")),
        list(LedgerEntry.objects.filter(organization=org).values_list("id", "amount")),
        AuditEvent.objects.filter(organization=org, action__startswith="billing.").count(),
    )


def test_topup_refund_adjust_move_balance_with_ledger_and_audit():
    w = make_world("acme", balance=None)
    org = w.org
    e1 = services.transfer_record(actor=SYSTEM, organization=org, amount="250.00", reference="W-1")
    e2 = services.balance_refund(actor=SYSTEM, organization=org, amount="100.5", reason="unused")
    e3 = services.balance_adjust(
        actor=SYSTEM, organization=org, amount="-0.000000000001", reason="rounding"
    )
    e4 = services.balance_adjust(actor=SYSTEM, organization=org, amount=3, reason="goodwill")
    assert [e.kind for e in (e1, e2, e3, e4)] == ["topup", "refund", "adjustment", "adjustment"]
    assert [e.amount for e in (e1, e2, e3, e4)] == [
        D("250"),
        D("-100.5"),
        D("-0.000000000001"),
        D("3"),
    ]
    assert e4.balance_after == D("152.499999999999")
    account = BillingAccount.objects.get(organization=org)
    assert account.balance == D("152.499999999999")
    assert services.account_check() == []
    actions = list(
        AuditEvent.objects.filter(organization=org, action__startswith="billing.")
        .order_by("id")
        .values_list("action", "changes")
    )
    assert [a for a, _ in actions] == [
        "billing.transfer",
        "billing.refund",
        "billing.adjust",
        "billing.adjust",
    ]
    assert actions[0][1] == {
        "amount": "250.00",
        "reference": "W-1",
        "reason": "",
        "balance_after": "250.000000000000",
    }
    assert actions[1][1]["reason"] == "unused"


def test_only_platform_operators_move_a_balance_and_a_reference_is_credited_once():
    from django.contrib.auth.models import Permission

    from orgs.audit import Actor
    from orgs.errors import NotAllowed
    from tests.orgs.factories import UserFactory

    w = make_world("acme")
    owner = Actor(user=w.tree.owner)
    staff_without_permission = Actor(user=UserFactory(username="ops-new", is_staff=True))
    operator_user = UserFactory(username="ops", is_staff=True)
    operator_user.user_permissions.add(Permission.objects.get(codename="credit_balance"))
    operator = Actor(user=operator_user)
    before = state(w.org)
    for actor in (owner, staff_without_permission):
        with pytest.raises(NotAllowed):
            services.transfer_record(actor=actor, organization=w.org, amount="5", reference="R")
        with pytest.raises(NotAllowed):
            services.balance_adjust(actor=actor, organization=w.org, amount="5", reason="x")
        with pytest.raises(NotAllowed):
            services.balance_refund(actor=actor, organization=w.org, amount="5", reason="x")
    assert state(w.org) == before
    entry = services.transfer_record(
        actor=operator, organization=w.org, amount="500", reference="BANK-2026-77", reason="PO 9"
    )
    assert (entry.created_by, entry.reference, entry.reason) == (
        operator_user,
        "BANK-2026-77",
        "PO 9",
    )
    after = state(w.org)
    with pytest.raises(InvalidInput) as err:  # the same bank reference, any case
        services.transfer_record(
            actor=operator, organization=w.org, amount="500", reference="bank-2026-77"
        )
    assert err.value.errors == {"reference": ["This bank reference was already credited."]}
    assert state(w.org) == after
    event = AuditEvent.objects.filter(action="billing.transfer", organization=w.org).latest("id")
    assert (event.actor, event.changes["reference"]) == (operator_user, "BANK-2026-77")


@pytest.mark.parametrize(
    ("amount", "field_message"),
    [
        ("-5", "Must be greater than zero."),
        ("0", "Must be greater than zero."),
        (12.5, 'Give the amount as a decimal string, e.g. "25.00".'),
        ("abc", "Not a decimal number."),
        ("NaN", "Not a finite number."),
        ("1.0000000000001", "At most 12 decimal places."),
        ("10000000.01", "At most 10000000 per operation."),
    ],
)
def test_bad_topups_are_refused_and_change_nothing(amount, field_message):
    w = make_world("acme")
    before = state(w.org)
    with pytest.raises(InvalidInput) as err:
        services.transfer_record(actor=SYSTEM, organization=w.org, amount=amount, reference="X")
    assert err.value.errors == {"amount": [field_message]}
    assert state(w.org) == before


def test_topup_needs_a_reference_and_refund_a_reason():
    w = make_world("acme")
    before = state(w.org)
    with pytest.raises(InvalidInput) as err:
        services.transfer_record(actor=SYSTEM, organization=w.org, amount="5", reference="  ")
    assert err.value.errors == {"reference": ["This field is required."]}
    with pytest.raises(InvalidInput) as err:
        services.balance_refund(actor=SYSTEM, organization=w.org, amount="5", reason="")
    assert err.value.errors == {"reason": ["This field is required."]}
    assert state(w.org) == before


def test_refund_and_debit_cannot_exceed_the_available_balance():
    w = make_world("acme", balance="10.00")
    BillingAccount.objects.filter(organization=w.org).update(held=D("4"))
    before = state(w.org)
    with pytest.raises(BillingError) as err:
        services.balance_refund(actor=SYSTEM, organization=w.org, amount="6.01", reason="r")
    assert err.value.code == "insufficient_balance"
    with pytest.raises(BillingError):
        services.balance_adjust(actor=SYSTEM, organization=w.org, amount="-6.01", reason="r")
    assert state(w.org) == before
    services.balance_refund(actor=SYSTEM, organization=w.org, amount="6", reason="r")
    assert BillingAccount.objects.get(organization=w.org).balance == D("4")


def test_ledger_rows_cannot_be_changed_or_deleted():
    w = make_world("acme")
    entry = LedgerEntry.objects.get(organization=w.org)
    entry.amount = D("1000000")
    with pytest.raises(ImmutableRow):
        entry.save()
    with pytest.raises(ImmutableRow):
        entry.delete()
    with pytest.raises(ImmutableRow):
        LedgerEntry.objects.filter(pk=entry.pk).update(amount=D("1"))
    with pytest.raises(ImmutableRow):
        LedgerEntry.objects.filter(pk=entry.pk).delete()
    assert LedgerEntry.objects.get(pk=entry.pk).amount == D("100.00")


def test_account_check_finds_a_balance_moved_outside_the_ledger():
    w = make_world("acme", balance="10")
    assert services.account_check() == []
    BillingAccount.objects.filter(organization=w.org).update(balance=D("11"))
    assert services.account_check() == [(w.org.pk, D("11"), D("10"))]


def test_billing_check_command():
    from django.core.management import CommandError, call_command

    w = make_world("acme", balance="10")
    call_command("billing_check")
    BillingAccount.objects.filter(organization=w.org).update(balance=D("12"))
    with pytest.raises(CommandError, match="balance 12"):
        call_command("billing_check")


def test_billing_seed_demo_is_idempotent():
    from django.core.management import call_command

    from billing.models import Budget

    w = make_world("demo", balance=None)
    call_command("billing_seed_demo")
    call_command("billing_seed_demo")
    assert BillingAccount.objects.get(organization=w.org).balance == D("100")
    assert list(Budget.objects.filter(organization=w.org).values_list("scope", "limit_usd")) == [
        ("organization", D("50"))
    ]
