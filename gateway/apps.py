from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Billing's admission and settlement in the pipeline (gateway -> billing, never back).
        # The routing engine replaces the interim route step (gateway/routing_interim.py).
        from gateway import admission, routing_step

        admission.install()
        routing_step.install()
