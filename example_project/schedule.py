"""The example's Celery beat schedule (plain data: settings.py imports it before Django is set up)."""

from celery.schedules import crontab

BEAT_SCHEDULE = {
    # Optional with DYRYGENT_LIVENESS (the default: the workers sweep
    # themselves); kept as the documented way for deployments that turn it off.
    "dyrygent-sweep": {"task": "django_dyrygent.sweep", "schedule": 60.0},
    # The catalogue's fourth door: start the "nightly-audit" definition every
    # night at 03:00; its parameters go through the definition's form, and a
    # night whose previous run still goes is skipped (its overlap policy).
    "nightly-audit": {
        "task": "django_dyrygent.start_definition",
        "schedule": crontab(hour=3, minute=0),
        "kwargs": {"name": "nightly-audit", "params": {"channel": "ops"}},
    },
}
