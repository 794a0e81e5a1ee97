from django.apps import AppConfig


class OrgsConfig(AppConfig):
    name = "orgs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_save

        from orgs.cache_hooks import user_saved

        # Cache coherence only (no domain logic): a user deactivated anywhere (the admin, a
        # shell) must stop their keys within a second, like a removed membership does.
        post_save.connect(user_saved, sender=get_user_model(), dispatch_uid="orgs-user-saved")
