"""Analytics and report routes, included by billing/api/urls.py under /api/."""

from django.urls import path

from billing.analytics.api import views

analytics = views.AnalyticsViewSet
reports = views.ReportViewSet

urlpatterns = [
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
