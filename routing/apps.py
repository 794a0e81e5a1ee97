from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The operator file's [[policies]] section (routing engine).
        import routing.policy_config  # noqa: F401
