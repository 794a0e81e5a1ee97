"""Console routes, mounted at / by megarouter/urls.py (after /v1/, /api/ and /admin/)."""

from django.contrib.auth import views as auth_views
from django.urls import include, path, reverse_lazy

from console.forms import PasswordLoginForm
from console.views import (
    account,
    analytics,
    audit,
    billing,
    catalog,
    keys,
    login,
    members,
    mfa,
    org,
    platform,
    routing,
    service_tokens,
    sso,
)

app_name = "console"

_reset_done = reverse_lazy("console:password-reset-done")
_reset_complete = reverse_lazy("console:password-reset-complete")

org_urls = [
    path("", org.OverviewView.as_view(), name="overview"),
    path("settings/", org.SettingsView.as_view(), name="settings"),
    path("settings/<slug:action>/", org.SettingsView.as_view(), name="settings-action"),
    path("tree/", org.TreeView.as_view(), name="tree"),
    path("nodes/<int:pk>/", org.NodeDetailView.as_view(), name="node"),
    path("nodes/<int:pk>/<slug:action>/", org.NodeDetailView.as_view(), name="node-action"),
    path("members/", members.MembersView.as_view(), name="members"),
    path(
        "members/<int:pk>/<slug:action>/",
        members.MemberActionView.as_view(),
        name="member-action",
    ),
    path("invitations/", members.InvitationsView.as_view(), name="invitations"),
    path(
        "invitations/<int:pk>/revoke/",
        members.InvitationRevokeView.as_view(),
        name="invitation-revoke",
    ),
    path("service-tokens/", service_tokens.ServiceTokensView.as_view(), name="service-tokens"),
    path(
        "service-tokens/<int:pk>/<slug:action>/",
        service_tokens.ServiceTokenActionView.as_view(),
        name="service-token-action",
    ),
    path("keys/", keys.KeysView.as_view(), name="keys"),
    path("keys/new/", keys.KeyCreateView.as_view(), name="key-new"),
    path("keys/<int:pk>/", keys.KeyDetailView.as_view(), name="key"),
    path("keys/<int:pk>/<slug:action>/", keys.KeyDetailView.as_view(), name="key-action"),
    path("models/", catalog.ModelsView.as_view(), name="models"),
    path("models/<int:pk>/", catalog.ModelDetailView.as_view(), name="model"),
    path("deployments/", catalog.DeploymentsView.as_view(), name="deployments"),
    path("deployments/<int:pk>/", catalog.DeploymentView.as_view(), name="deployment"),
    path("policies/", routing.PoliciesView.as_view(), name="policies"),
    path("policies/<int:pk>/delete/", routing.PolicyDeleteView.as_view(), name="policy-delete"),
    path("audit/", audit.AuditView.as_view(), name="audit"),
    path("sso/", sso.SsoView.as_view(), name="sso"),
    path("sso/<slug:action>/", sso.SsoView.as_view(), name="sso-action"),
    path("sso/providers/<int:pk>/", sso.SsoProviderView.as_view(), name="sso-provider"),
    path(
        "sso/providers/<int:pk>/<slug:action>/",
        sso.SsoProviderView.as_view(),
        name="sso-provider-action",
    ),
    path("budgets/", billing.BudgetsView.as_view(), name="budgets"),
    path("budgets/<int:pk>/", billing.BudgetDetailView.as_view(), name="budget"),
    path(
        "budgets/<int:pk>/<slug:action>/",
        billing.BudgetDetailView.as_view(),
        name="budget-action",
    ),
    path("billing/", billing.BillingView.as_view(), name="billing"),
    path("usage/", billing.UsageView.as_view(), name="usage"),
    path("spend/", analytics.SpendView.as_view(), name="spend"),
    path("reports/", analytics.ReportsView.as_view(), name="reports"),
    path("reports/status/", analytics.ReportStatusView.as_view(), name="report-status"),
    path("notifications/", billing.NotificationsView.as_view(), name="notifications"),
]

urlpatterns = [
    path("", account.home, name="home"),
    path(
        "login/",
        login.LoginView.as_view(authentication_form=PasswordLoginForm),
        name="login",
    ),
    path("login/mfa/", login.login_mfa, name="login-mfa"),
    path("account/mfa/", mfa.mfa_page, name="mfa"),
    path("account/mfa/<slug:action>/", mfa.mfa_action, name="mfa-action"),
    path("account/sessions/", mfa.sessions_page, name="sessions"),
    path("account/sessions/end-others/", mfa.sessions_end_others, name="sessions-end-others"),
    # single sign-on (docs/identity.md): by email from the login page, an organization's
    # login URL, and the redirect URI registered at the identity provider
    path("sso/", sso.sso_by_email, name="sso-email"),
    path("sso/<slug:org_slug>/", sso.sso_org, name="sso-org"),
    path("sso/<slug:org_slug>/callback/", sso.sso_callback, name="sso-callback"),
    path("logout/", login.LogoutView.as_view(), name="logout"),
    path(
        "password-reset/",
        auth_views.PasswordResetView.as_view(
            success_url=_reset_done,
            email_template_name="registration/password_reset_email.txt",
            subject_template_name="registration/password_reset_subject.txt",
        ),
        name="password-reset",
    ),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password-reset-done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(success_url=_reset_complete),
        name="password-reset-confirm",
    ),
    path(
        "password-reset/complete/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password-reset-complete",
    ),
    path("orgs/", account.org_list, name="org-list"),
    path("platform/billing/", platform.PlatformBillingView.as_view(), name="platform-billing"),
    path("invitations/accept/", account.invitation_accept, name="invitation-accept"),
    # the link in invitation emails (orgs.selectors.INVITATION_PATH)
    path("invitations/<str:token>/", account.invitation, name="invitation"),
    path("static/<path:path>", account.static, name="static"),
    path("o/<slug:org_slug>/", include(org_urls)),
]
