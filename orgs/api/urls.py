"""Management API routes, mounted at /api/ by megarouter/urls.py."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from orgs.api import views

top = SimpleRouter()
top.register("orgs", views.OrganizationViewSet, basename="org")
top.register("tokens", views.AccessTokenViewSet, basename="access-token")

scoped = SimpleRouter()
scoped.register("nodes", views.NodeViewSet, basename="node")
scoped.register("members", views.MemberViewSet, basename="member")
scoped.register("invitations", views.InvitationViewSet, basename="invitation")
scoped.register("keys", views.ApiKeyViewSet, basename="api-key")
scoped.register("audit-events", views.AuditEventViewSet, basename="audit-event")
scoped.register("service-tokens", views.ServiceTokenViewSet, basename="service-token")

accept = views.InvitationAcceptView.as_view({"post": "create"})

urlpatterns = [
    path("invitations/accept/", accept, name="invitation-accept"),
    path("orgs/<slug:org_slug>/", include(scoped.urls)),
    *top.urls,
]
