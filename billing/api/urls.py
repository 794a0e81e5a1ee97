"""Billing routes, mounted at /api/ by megarouter/urls.py."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from billing.api import analytics_views, views

scoped = SimpleRouter()
scoped.register("billing/ledger", views.LedgerViewSet, basename="ledger-entry")
scoped.register("billing/checkouts", views.CheckoutViewSet, basename="checkout")
scoped.register("billing/notifications", views.NotificationViewSet, basename="notification")
scoped.register("budgets", views.BudgetViewSet, basename="budget")
scoped.register("usage", views.UsageViewSet, basename="usage-record")

analytics = analytics_views.AnalyticsViewSet
reports = analytics_views.ReportViewSet
balance = views.BalanceViewSet.as_view({"get": "balance"})

urlpatterns = [
    path("billing/webhooks/payments/", views.PaymentWebhookView.as_view(), name="payment-webhook"),
    path("orgs/<slug:org_slug>/billing/balance/", balance, name="billing-balance"),
    path("orgs/<slug:org_slug>/", include(scoped.urls)),
    path(
        "orgs/<slug:org_slug>/analytics/summary/",
        analytics.as_view({"get": "summary"}),
        name="analytics-summary",
    ),
    path(
        "orgs/<slug:org_slug>/analytics/breakdown/",
        analytics.as_view({"get": "breakdown"}),
        name="analytics-breakdown",
    ),
    path(
        "orgs/<slug:org_slug>/analytics/timeseries/",
        analytics.as_view({"get": "timeseries"}),
        name="analytics-timeseries",
    ),
    path(
        "orgs/<slug:org_slug>/analytics/failures/",
        analytics.as_view({"get": "failures"}),
        name="analytics-failures",
    ),
    path(
        "orgs/<slug:org_slug>/reports/",
        reports.as_view({"get": "list", "post": "create"}),
        name="report-list",
    ),
    path(
        "orgs/<slug:org_slug>/reports/<int:pk>/",
        reports.as_view({"get": "retrieve"}),
        name="report-detail",
    ),
    path(
        "orgs/<slug:org_slug>/reports/<int:pk>/download/",
        reports.as_view({"get": "download"}),
        name="report-download",
    ),
]
