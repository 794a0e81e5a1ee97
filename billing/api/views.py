"""Billing management API: balance, checkouts, ledger, budgets,
notifications and usage, all behind the orgs tenancy choke point (``OrgScopedViewSet``); and the
payment provider webhook receiver."""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import selectors, services, webhooks
from billing.api import serializers as s
from billing.errors import BillingError, InvalidInput
from billing.models import (
    Budget,
    Checkout,
    LedgerEntry,
    Notification,
    PaymentEvent,
    UsageRecord,
)
from orgs.api.base import OrgScopedViewSet
from orgs.roles import MANAGE_BILLING, VIEW_BILLING


def _valid(serializer_class: type[Any], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


@extend_schema(tags=["billing"])
class BalanceViewSet(OrgScopedViewSet):
    """The organization's prepaid balance. Only real money raises it: a card payment through a
    checkout (``checkouts``), or an enterprise transfer a platform operator records; no tenant
    role can credit, refund or adjust (docs/billing.md, "Credit")."""

    view_permission = VIEW_BILLING
    scope_resource = "billing"
    action_permissions = {"balance": VIEW_BILLING}
    node_field = None
    serializer_class = s.BalanceOut

    def get_base_queryset(self) -> QuerySet[LedgerEntry]:
        return selectors.ledger_entries()

    @extend_schema(responses={200: s.BalanceOut})
    def balance(self, request: Request, org_slug: str) -> Response:
        return Response(
            s.BalanceOut(selectors.balance_summary(organization=self.organization)).data
        )


@extend_schema(tags=["billing"])
class CheckoutViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Card purchases of credit: anyone who manages billing starts one (``pay_url`` is the
    payment provider's page); the provider's signed webhook credits it when paid."""

    serializer_class = s.CheckoutOut
    view_permission = VIEW_BILLING
    scope_resource = "billing"
    action_permissions = {"create": MANAGE_BILLING}
    node_field = None
    lookup_value_regex = r"\d+"

    def get_base_queryset(self) -> QuerySet[Checkout]:
        return Checkout.objects.select_related("organization")

    @extend_schema(request=s.CheckoutIn, responses={201: s.CheckoutOut})
    def create(self, request: Request, org_slug: str) -> Response:
        data = _valid(s.CheckoutIn, request.data)
        checkout = services.checkout_create(
            actor=self.actor, organization=self.organization, amount=data["amount"]
        )
        return Response(s.CheckoutOut(checkout).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["billing"])
class LedgerViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """The append-only ledger, newest first."""

    serializer_class = s.LedgerEntryOut
    view_permission = VIEW_BILLING
    scope_resource = "billing"
    node_field = None
    lookup_value_regex = r"\d+"
    list_filters = selectors.LEDGER_FILTERS

    def get_base_queryset(self) -> QuerySet[LedgerEntry]:
        return selectors.ledger_entries()


@extend_schema(tags=["billing"])
class BudgetViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Budgets on the organization, a department / team / project, a member or an API key.
    Each shows its spend in the current period."""

    serializer_class = s.BudgetOut
    view_permission = VIEW_BILLING
    scope_resource = "budgets"
    action_permissions = {
        "create": MANAGE_BILLING,
        "partial_update": MANAGE_BILLING,
        "destroy": MANAGE_BILLING,
    }
    node_field = "node"
    lookup_value_regex = r"\d+"
    list_filters = selectors.BUDGET_FILTERS

    def get_base_queryset(self) -> QuerySet[Budget]:
        return selectors.budgets()

    def _render(self, budgets: list[Budget], *, many: bool) -> Any:
        current = selectors.budgets_current_spend(budgets)
        context = {**self.get_serializer_context(), "current": current}
        if many:
            return s.BudgetOut(budgets, many=True, context=context).data
        return s.BudgetOut(budgets[0], context=context).data

    def list(self, request: Request, org_slug: str) -> Response:
        qs = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(qs)
        rows = list(page if page is not None else qs)
        data = self._render(rows, many=True)
        return self.get_paginated_response(data) if page is not None else Response(data)

    def retrieve(self, request: Request, org_slug: str, pk: str) -> Response:
        return Response(self._render([self.get_object()], many=False))

    @extend_schema(request=s.BudgetCreateIn, responses={201: s.BudgetOut})
    def create(self, request: Request, org_slug: str) -> Response:
        data = _valid(s.BudgetCreateIn, request.data)
        _, node = services.budget_scope_node(
            organization=self.organization, scope=data["scope"], scope_id=data.get("scope_id")
        )
        self.require(node, MANAGE_BILLING)
        budget = services.budget_create(actor=self.actor, organization=self.organization, **data)
        budget = selectors.budgets().get(pk=budget.pk)
        return Response(self._render([budget], many=False), status=status.HTTP_201_CREATED)

    @extend_schema(request=s.BudgetUpdateIn, responses={200: s.BudgetOut})
    def partial_update(self, request: Request, org_slug: str, pk: str) -> Response:
        budget = self.get_object()
        data = _valid(s.BudgetUpdateIn, request.data)
        services.budget_update(actor=self.actor, budget=budget, **data)
        budget = selectors.budgets().get(pk=budget.pk)
        return Response(self._render([budget], many=False))

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, org_slug: str, pk: str) -> Response:
        budget = self.get_object()
        services.budget_delete(actor=self.actor, budget=budget)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["billing"])
class NotificationViewSet(OrgScopedViewSet, mixins.ListModelMixin):
    """Console notifications (budget thresholds)."""

    serializer_class = s.NotificationOut
    view_permission = VIEW_BILLING
    scope_resource = "billing"
    node_field = None
    list_filters = selectors.NOTIFICATION_FILTERS

    def get_base_queryset(self) -> QuerySet[Notification]:
        return Notification.objects.all()


@extend_schema(tags=["billing"])
class UsageViewSet(OrgScopedViewSet, mixins.ListModelMixin):
    """Usage records (metadata only), newest first."""

    serializer_class = s.UsageRecordOut
    view_permission = VIEW_BILLING
    scope_resource = "usage"
    node_field = None
    list_filters = {
        "since": ("created_at__gte", "datetime"),
        "until": ("created_at__lt", "datetime"),
        "key": ("key_id", int),
        "project": ("project_id", int),
        "member": ("member_id", int),
        "model": ("model", str),
        "status": ("status", str),
    }

    def get_base_queryset(self) -> QuerySet[UsageRecord]:
        return selectors.usage_records()


class PaymentWebhookView(APIView):
    """POST /api/billing/webhooks/payments/: a payment provider's signed event (Stripe-style
    ``Stripe-Signature`` header). Applied once per event id."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(request=None, responses={200: None, 400: None})
    def post(self, request: Request) -> Response:
        payload = request.body
        header = request.headers.get("Stripe-Signature") or request.headers.get(
            "X-Payment-Signature"
        )
        try:
            webhooks.verify(
                payload=payload,
                header=header,
                secret=settings.BILLING_PAYMENT_WEBHOOK_SECRET,
                tolerance=settings.BILLING_PAYMENT_WEBHOOK_TOLERANCE,
            )
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise BillingError("The body is not JSON.", code="invalid_json") from None
            if not isinstance(event, dict):
                raise BillingError("The body is not a JSON object.", code="invalid_json")
            before = PaymentEvent.objects.filter(event_id=str(event.get("id") or "")).exists()
            payment = services.payment_event_apply(provider="stripe", event=event)
        except InvalidInput as exc:
            return Response({"detail": exc.detail, "code": exc.code, "errors": exc.errors}, 400)
        except BillingError as exc:
            return Response({"detail": exc.detail, "code": exc.code}, 400)
        outcome = "duplicate" if before else payment.status
        return Response({"status": outcome, "event": payment.event_id})
