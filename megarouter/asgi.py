import os

from django.core.asgi import get_asgi_application

from megarouter.bootstrap import exit_on_config_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "megarouter.settings")

django_application = exit_on_config_error(get_asgi_application)

# /v1/ goes through the gateway's ASGI front door; everything else to Django (docs/api.md).
from gateway.api.asgi import GatewayASGI  # noqa: E402  (needs Django set up first)

application = GatewayASGI(django_application)
