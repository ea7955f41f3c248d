"""The one Celery app of the benchmark: the worker consumes all three systems' tasks."""

import os

from celery import Celery
from celery_dyrygent.tasks import register_workflow_processor as register_celery_dyrygent

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

app = Celery("bench")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["django_dyrygent", "bench"])
app.set_current()
app.set_default()

# celery-dyrygent's orchestrator, task name "workflow-processor".
workflow_processor = register_celery_dyrygent(app)

if os.environ.get("BENCH_WORKER_MEMORY_CAP"):
    # bench/run.py sets it for the worker: its pool processes inherit the cap,
    # so a native canvas that explodes fails inside the worker, not the machine.
    from bench.harness import limit_memory

    limit_memory()
