"""The suite's Celery app with a beat schedule of the catalogue: ``celery -A tests.beat_app beat``.

Every second beat asks for a run of ``tests.hold-skip`` (overlap "skip"), so
test_catalogue_schedule.py can watch a real beat process and the policy at work.
"""

from tests.celery_app import app

app.conf.beat_schedule = {
    "catalogue-hold-skip": {
        "task": "django_dyrygent.start_definition",
        "schedule": 1.0,
        "kwargs": {"name": "tests.hold-skip", "params": {"flag": "beat"}},
    },
}
