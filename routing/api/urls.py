"""Routing management API routes, mounted at /api/ by megarouter/urls.py."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from routing.api import views

scoped = SimpleRouter()
scoped.register("routing-policies", views.RoutingPolicyViewSet, basename="routing-policy")

urlpatterns = [path("orgs/<slug:org_slug>/", include(scoped.urls))]
