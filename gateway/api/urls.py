from django.urls import re_path

from gateway.api.views import v1_view

# Every path under /v1 reaches the gateway's dispatcher, so unknown paths and wrong methods get
# the OpenAI error object too, never Django's HTML pages.
urlpatterns = [re_path(r"^v1(?:/.*)?$", v1_view, name="gateway-v1")]
