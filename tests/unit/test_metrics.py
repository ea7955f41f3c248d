"""Prometheus metrics: event counters from the engine's signals, levels read from the rows at scrape."""

from datetime import timedelta

import pytest
from celery import chain
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dyrygent import engine, metrics
from django_dyrygent.engine import outcomes
from django_dyrygent.models import WorkerHeartbeat, Workflow
from tests.tasks import add, record

prometheus_client = pytest.importorskip("prometheus_client")
pytestmark = pytest.mark.django_db


@pytest.fixture
def metrics_on(settings):
    settings.DYRYGENT_METRICS = True
    metrics.connect()
    return prometheus_client.REGISTRY


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def workflow(definition="tests.metrics"):
    wf = Workflow(name="m", definition=definition)
    wf.add_celery_canvas(chain(record.si("a"), add.si(1, 2)))
    wf.apply_async()
    return wf


def test_workflow_counters__started_and_ended_by_definition_and_state(metrics_on, django_capture_on_commit_callbacks):
    labels = {"definition": "tests.metrics"}
    started = sample(metrics_on, "dyrygent_workflows_started_total", **labels)
    failed = sample(metrics_on, "dyrygent_workflows_ended_total", state="FAILURE", **labels)
    durations = sample(metrics_on, "dyrygent_workflow_duration_seconds_count", state="FAILURE", **labels)
    with django_capture_on_commit_callbacks(execute=True):
        wf = workflow()
        engine.tick(wf.pk, scheduled=False)
    assert sample(metrics_on, "dyrygent_workflows_started_total", **labels) == started + 1
    first = wf.nodes.get(position=0)
    with django_capture_on_commit_callbacks(execute=True):
        outcomes.node_failed(wf.pk, first.task_id, exception=ValueError("boom"), traceback="")
    assert sample(metrics_on, "dyrygent_workflows_ended_total", state="FAILURE", **labels) == failed + 1
    assert sample(metrics_on, "dyrygent_workflow_duration_seconds_count", state="FAILURE", **labels) == durations + 1


def test_rows_collector__live_workflows_queued_nodes_and_workers():
    running = workflow("tests.live")
    engine.tick(running.pk, scheduled=False)
    workflow("tests.live")  # INITIAL
    now = timezone.now()
    WorkerHeartbeat.objects.create(hostname="alive@h", pid=1, started_at=now, last_seen=now)
    WorkerHeartbeat.objects.create(hostname="gone@h", pid=2, started_at=now, last_seen=now - timedelta(hours=1))
    with CaptureQueriesContext(connection) as queries:
        families = {f.name: f for f in metrics.RowsCollector().collect()}
    assert len(queries) == 3
    live = {tuple(s.labels.values()): s.value for s in families["dyrygent_workflows_live"].samples}
    assert live[("RUNNING", "tests.live")] == 1 and live[("INITIAL", "tests.live")] == 1
    (queued,) = families["dyrygent_nodes_queued"].samples
    assert queued.value == running.nodes.filter(state="QUEUED").count() == 1
    workers = {s.labels["status"]: s.value for s in families["dyrygent_workers_seen"].samples}
    assert workers == {"alive": 1, "stale": 1}


def test_metrics_view__serves_the_exposition_format(client, metrics_on):
    workflow()
    response = client.get("/dyrygent/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    body = response.content.decode()
    assert "dyrygent_workflows_live" in body and "dyrygent_workers_seen" in body


def test_metrics_view__says_what_to_install_without_prometheus_client(client, monkeypatch):
    monkeypatch.setattr(metrics, "prometheus_client", None)
    response = client.get("/dyrygent/metrics")
    assert response.status_code == 501 and b"django-dyrygent[prometheus]" in response.content


def test_grafana_queries__name_only_series_and_labels_that_exist(metrics_on):
    """The docs' Grafana queries: each series is exposed, with every label they group or filter by."""
    import re
    from pathlib import Path

    series = {}
    for metric in metrics._metrics.values():
        labels = set(metric._labelnames)
        if metric._type == "counter":
            series[metric._name + "_total"] = labels
        else:
            for suffix in ("_sum", "_count"):
                series[metric._name + suffix] = labels
            series[metric._name + "_bucket"] = labels | {"le"}
    Workflow.objects.create(name="live", definition="tests.metrics", state="RUNNING")
    WorkerHeartbeat.objects.create(hostname="w@h", pid=1, started_at=timezone.now(), last_seen=timezone.now())
    for family in metrics.RowsCollector().collect():
        series[family.name] = {label for sample in family.samples for label in sample.labels}

    page = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    block = page.split("A Grafana panel's queries", 1)[1].split("```promql", 1)[1].split("```", 1)[0]
    queries = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(queries) >= 6
    for line in queries:
        names = re.findall(r"\b(dyrygent_[a-z_]+)", line)
        assert names and all(name in series for name in names), (line, sorted(series))
        used = set(re.findall(r"by \(([^)]*)\)", line)) | set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", line))
        used = {label.strip() for group in used for label in group.split(",")}
        known = set().union(*(series[name] for name in names))
        assert used <= known, (line, used - known)
