from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Billing's admission and settlement in the pipeline (gateway -> billing, never back).
        from gateway import admission

        admission.install()
