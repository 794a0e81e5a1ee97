"""Single sign-on's management API routes, mounted at /api/ by megarouter/urls.py."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from identity.api import views

scoped = SimpleRouter()
scoped.register("identity-providers", views.IdentityProviderViewSet, basename="identity-provider")
scoped.register("group-mappings", views.GroupMappingViewSet, basename="group-mapping")

urlpatterns = [path("orgs/<slug:org_slug>/", include(scoped.urls))]
