from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from console.views.login import admin_login
from gateway.metrics import metrics_view
from megarouter import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("", include("gateway.api.urls")),
    path("admin/login/", admin_login, name="admin-login"),  # the console's login (docs/identity.md)
    path("admin/", admin.site.urls),
    path("api/", include("orgs.api.urls")),
    path("api/", include("identity.api.urls")),
    path("api/", include("routing.api.urls")),
    path("api/", include("billing.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("console.urls")),
]
