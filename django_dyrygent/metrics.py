"""Prometheus metrics, with the optional ``[prometheus]`` extra and ``DYRYGENT_METRICS = True``.

Two kinds, because the truth is split between moments and rows:

* **Events, counted where they happen.** Workflows started and ended (by
  definition and final state) and their durations, from the engine's own
  ``workflow_state_changed`` signal in whichever process made the change;
  node run times (by task name and outcome) and queue waits (published to
  started, from a header the publisher adds) in the worker that ran the task,
  from Celery's ``task_prerun``/``task_postrun``. A Celery prefork worker and
  a multi-process web server need prometheus_client's multiprocess mode
  (``PROMETHEUS_MULTIPROC_DIR``, the same folder for the processes of one
  host); ``metrics_view`` then serves every process's numbers.
* **Levels, read from the rows when scraped.** Live workflows by state and
  definition, queued nodes waiting for a worker, workers alive and stale: three
  aggregate queries per scrape, the same answer from any process.

Nothing here runs on the engine's hot path: the receivers only observe
numbers Celery and the engine already have.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from .conf import settings
from .engine.messaging import PUBLISHED_AT_HEADER
from .signals import workflow_state_changed
from .states import WORKFLOW_ACTIVE, WORKFLOW_FINAL, NodeState, WorkflowState

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # the [prometheus] extra is not installed
    prometheus_client = None  # type: ignore[assignment]

logger = logging.getLogger("django_dyrygent.metrics")

#: Seconds: tasks are short or long; buckets from 5 ms to an hour.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

_lock = threading.Lock()
_metrics: dict[str, Any] = {}
_local = threading.local()


def available() -> bool:
    return prometheus_client is not None


def enabled() -> bool:
    return bool(settings.METRICS) and available()


def _define(registry: Any) -> dict[str, Any]:
    return {
        "started": Counter("dyrygent_workflows_started_total", "Workflows that started running.",
                           ["definition"], registry=registry),
        "ended": Counter("dyrygent_workflows_ended_total", "Workflows that reached a final state.",
                         ["definition", "state"], registry=registry),
        "workflow_duration": Histogram("dyrygent_workflow_duration_seconds", "Start to end of a workflow.",
                                       ["definition", "state"], buckets=DURATION_BUCKETS, registry=registry),
        "node_duration": Histogram("dyrygent_node_duration_seconds", "Run time of a node's task body.",
                                   ["task_name", "state"], buckets=DURATION_BUCKETS, registry=registry),
        "queue_wait": Histogram("dyrygent_node_queue_wait_seconds", "Published to started: time spent in the "
                                "broker and the worker's prefetch.", ["task_name"], buckets=DURATION_BUCKETS,
                                registry=registry),
    }


def metrics(registry: Any = None) -> dict[str, Any]:
    """The event metrics, defined once per process (in ``registry``, the default one unless given)."""
    with _lock:
        if not _metrics:
            _metrics.update(_define(registry or prometheus_client.REGISTRY))
        return _metrics


def _definition(workflow: Any) -> str:
    return getattr(workflow, "definition", "") or "-"


def on_workflow_state_changed(sender: Any, workflow: Any, old_state: str, new_state: str, **kwargs: Any) -> None:
    found = metrics()
    definition = _definition(workflow)
    if new_state == WorkflowState.RUNNING and old_state == WorkflowState.INITIAL:
        found["started"].labels(definition).inc()
    elif new_state in WORKFLOW_FINAL:
        found["ended"].labels(definition, new_state).inc()
        if workflow.started_at and workflow.finished_at:
            found["workflow_duration"].labels(definition, new_state).observe(
                (workflow.finished_at - workflow.started_at).total_seconds())


def _headers(task: Any) -> dict[str, Any]:
    return getattr(getattr(task, "request", None), "headers", None) or {}


def on_task_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    headers = _headers(task)
    published = headers.get(PUBLISHED_AT_HEADER)
    if published is None:
        return
    started = getattr(_local, "started", None)
    if started is None:
        started = _local.started = {}
    started[task_id] = time.monotonic()
    try:
        metrics()["queue_wait"].labels(task.name).observe(max(0.0, time.time() - float(published)))
    except (TypeError, ValueError):
        logger.debug("Task %s has a malformed %s header", task_id, PUBLISHED_AT_HEADER)


def on_task_postrun(sender: Any = None, task_id: str | None = None, task: Any = None, state: str | None = None,
                    **kwargs: Any) -> None:
    began = getattr(_local, "started", {}).pop(task_id, None)
    if began is not None:
        metrics()["node_duration"].labels(task.name, state or "UNKNOWN").observe(time.monotonic() - began)


class RowsCollector(Collector if prometheus_client else object):  # type: ignore[misc]
    """Levels read from the rows at each scrape: three aggregate queries."""

    def collect(self) -> Iterator[Any]:
        from .models import WorkerHeartbeat, Workflow, WorkflowNode

        live = GaugeMetricFamily("dyrygent_workflows_live", "Workflows not final yet, by state and definition.",
                                 labels=["state", "definition"])
        for row in (Workflow.objects.filter(state__in=sorted(WORKFLOW_ACTIVE))
                    .values("state", "definition").annotate(n=Count("id")).order_by()):
            live.add_metric([row["state"], row["definition"] or "-"], row["n"])
        yield live
        queued = GaugeMetricFamily("dyrygent_nodes_queued", "Nodes published and not started yet.")
        queued.add_metric([], WorkflowNode.objects.filter(state=NodeState.QUEUED).count())
        yield queued
        workers = GaugeMetricFamily("dyrygent_workers_seen", "Worker heartbeat rows, alive or stale.",
                                    labels=["status"])
        fresh = timezone.now() - timedelta(seconds=settings.WORKER_TIMEOUT)
        seen = WorkerHeartbeat.objects.aggregate(total=Count("id"), alive=Count("id", filter=Q(last_seen__gte=fresh)))
        workers.add_metric(["alive"], seen["alive"])
        workers.add_metric(["stale"], seen["total"] - seen["alive"])
        yield workers


_connected = False


def connect(registry: Any = None) -> None:
    """Connect the receivers and register the rows collector (idempotent); AppConfig.ready calls it."""
    global _connected
    if not enabled() or _connected:
        return
    from celery.signals import task_postrun, task_prerun

    metrics(registry)
    workflow_state_changed.connect(on_workflow_state_changed, dispatch_uid="django_dyrygent.metrics.state")
    task_prerun.connect(on_task_prerun, weak=False, dispatch_uid="django_dyrygent.metrics.prerun")
    task_postrun.connect(on_task_postrun, weak=False, dispatch_uid="django_dyrygent.metrics.postrun")
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        (registry or prometheus_client.REGISTRY).register(RowsCollector())
    _connected = True


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus exposition: mount it where your scraper looks, behind your own access rule.

    In multiprocess mode every process's event metrics are merged from
    ``PROMETHEUS_MULTIPROC_DIR`` and the rows collector answers from here.
    """
    if not available():
        return HttpResponse("prometheus_client is not installed: pip install 'django-dyrygent[prometheus]'\n",
                            status=501, content_type="text/plain")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(RowsCollector())
    else:
        registry = prometheus_client.REGISTRY
    return HttpResponse(prometheus_client.generate_latest(registry),
                        content_type=prometheus_client.CONTENT_TYPE_LATEST)
