"""The example's Celery app: ``celery -A example_project worker`` finds it as ``app``."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

app = Celery("example_project")
# Every CELERY_* Django setting configures Celery (CELERY_BROKER_URL -> broker_url, ...).
app.config_from_object("django.conf:settings", namespace="CELERY")
# tasks.py of every installed app: django_dyrygent's tick/sweep and the demo tasks.
app.autodiscover_tasks()
