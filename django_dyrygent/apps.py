from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DyrygentConfig(AppConfig):
    """Default configuration for the django_dyrygent app."""

    name = "django_dyrygent"
    label = "django_dyrygent"
    verbose_name = _("Workflows")
    # Pinned so a host project's DEFAULT_AUTO_FIELD never creates migrations here.
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import catalogue, checks, launch, metrics  # noqa: F401  (registers checks and receivers)
        from .worker import handlers

        handlers.connect_worker_signals()
        metrics.connect()
        launch.connect_receivers()
        # Like admin.autodiscover(): every app's workflows.py registers its definitions.
        catalogue.autodiscover()
