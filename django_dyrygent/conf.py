"""Settings of django_dyrygent: flat ``DYRYGENT_*`` names, read lazily.

Values are looked up on every use, not cached: a cache would go stale when a
setting is deleted (pytest-django's ``del settings.X`` sends no
``setting_changed``), and a lookup costs a dictionary access.
"""

from django.conf import settings as django_settings

DEFAULTS = {
    # Seconds between two safety-net ticks of a running workflow. Progress is
    # event driven; the tick only reconciles what events missed.
    "TICK_INTERVAL": 10.0,
    # Seconds a workflow may run before the engine gives up (ERROR).
    # Same default as celery-dyrygent's max processing time: 7 days.
    "MAX_PROCESSING_TIME": 7 * 24 * 3600,
    # Seconds a QUEUED node may wait for a worker to report it before the tick
    # checks the result backend and, if the task is unknown, publishes it again.
    "REQUEUE_AFTER": 300.0,
    # Largest JSON-encoded task result stored in a node row, in bytes.
    "MAX_RESULT_BYTES": 1024 * 1024,
    # Most stale nodes one tick reconciles (keeps a tick's cost bounded).
    "RECONCILE_BATCH": 500,
    # Dotted path to the Celery app; None means celery.current_app.
    "CELERY_APP": None,
    # A running workflow whose scheduled tick is this many seconds overdue is
    # picked up by the sweeper (``dyrygent_tick`` / ``django_dyrygent.sweep``).
    "STALE_AFTER": 60.0,
    # Consecutive failed ticks after which the engine gives up: workflow ERROR.
    "MAX_ENGINE_ERRORS": 10,
    # Whether every transition writes a WorkflowEvent row.
    "EVENT_LOG": True,
}

TYPES = {
    "TICK_INTERVAL": (int, float),
    "MAX_PROCESSING_TIME": (int, float),
    "REQUEUE_AFTER": (int, float),
    "MAX_RESULT_BYTES": (int,),
    "RECONCILE_BATCH": (int,),
    "CELERY_APP": (str, type(None)),
    "STALE_AFTER": (int, float),
    "MAX_ENGINE_ERRORS": (int,),
    "EVENT_LOG": (bool,),
}

PREFIX = "DYRYGENT_"


class Settings:
    """Lazy accessor: ``conf.settings.TICK_INTERVAL`` reads ``DYRYGENT_TICK_INTERVAL``."""

    def __getattr__(self, name):
        if name not in DEFAULTS:
            raise AttributeError(f"Invalid django_dyrygent setting: {name!r}")
        return getattr(django_settings, PREFIX + name, DEFAULTS[name])


settings = Settings()


def get_celery_app():
    """The Celery app that publishes nodes and ticks."""
    path = settings.CELERY_APP
    if path:
        from django.utils.module_loading import import_string

        return import_string(path)
    from celery import current_app

    return current_app._get_current_object()
