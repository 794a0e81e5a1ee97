"""The platform section: for the people running this MegaRouter installation (Django staff
with ``billing.credit_balance``), never for a tenant role. Records enterprise transfers
against their bank reference, refunds and adjustments, through billing's services (which
check the same permission, so the section is not the only guard)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views import View

from billing import services as billing_services
from billing.models import LedgerEntry, LedgerKind
from console.forms import OperatorCreditForm, add_service_errors
from console.views.base import render_page
from orgs.audit import Actor
from orgs.errors import InvalidInput

OPERATOR_PERMISSION = "billing.credit_balance"


class PlatformBillingView(LoginRequiredMixin, View):
    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = request.user
        if user.is_authenticated and not (user.is_staff and user.has_perm(OPERATOR_PERMISSION)):
            raise PermissionDenied("The platform section is for the installation's operators.")
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        return self._page(OperatorCreditForm())

    def post(self, request: HttpRequest) -> HttpResponse:
        form = OperatorCreditForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                entry = self._apply(Actor.from_request(request), data)
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                messages.success(
                    request,
                    f"{entry.get_kind_display()} of {entry.amount} USD recorded for "
                    f"{data['organization'].name}; balance {entry.balance_after}.",
                )
                return redirect("console:platform-billing")
        return self._page(form, status=400)

    @staticmethod
    def _apply(actor: Actor, data: dict[str, Any]) -> LedgerEntry:
        common = {
            "actor": actor,
            "organization": data["organization"],
            "amount": str(data["amount"]),
        }
        if data["kind"] == "transfer":
            return billing_services.transfer_record(
                **common, reference=data["reference"], reason=data["reason"]
            )
        if data["kind"] == "refund":
            return billing_services.balance_refund(**common, reason=data["reason"])
        return billing_services.balance_adjust(**common, reason=data["reason"])

    def _page(self, form: OperatorCreditForm, status: int = 200) -> HttpResponse:
        entries = (
            LedgerEntry.objects.exclude(kind=LedgerKind.USAGE)
            .select_related("organization", "created_by")
            .order_by("-id")[:50]
        )
        return render_page(
            self.request,
            "console/platform_billing.html",
            {"form": form, "entries": entries},
            status,
        )
