"""Whether anyone is working: the heartbeat list (alive or stale, who sweeps, queues) and the banners."""

from datetime import timedelta

import pytest
from celery import chain
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from django_dyrygent.admin import health
from django_dyrygent.models import WorkerHeartbeat, Workflow
from django_dyrygent.worker.heartbeat import LivenessThread, consumed_queues
from tests.tasks import record

HEARTBEATS = reverse("admin:django_dyrygent_workerheartbeat_changelist")
WORKFLOWS = reverse("admin:django_dyrygent_workflow_changelist")


def beat(hostname, age=0, started=60, queues=("celery",), pid=1):
    now = timezone.now()
    return WorkerHeartbeat.objects.create(
        hostname=hostname, pid=pid, started_at=now - timedelta(seconds=started),
        last_seen=now - timedelta(seconds=age), queues=list(queues),
    )


@pytest.fixture
def no_workers(db, settings):
    """Liveness on (the suite runs without it), and only the heartbeats a test makes."""
    settings.DYRYGENT_LIVENESS = True
    WorkerHeartbeat.objects.all().delete()


def waiting_workflow(**options):
    wf = Workflow(name="waits", **options)
    wf.add_celery_canvas(chain(record.si("a"), record.s("b").set(queue="reports")))
    wf.apply_async()
    return wf


@pytest.mark.django_db
def test_heartbeat_list__alive_or_stale_who_sweeps_counts_and_queues(admin_client, no_workers):
    beat("w-old@host", started=600, queues=("celery", "reports"))
    beat("w-new@host", started=60, pid=2)
    beat("w-gone@host", age=3600, started=7200, pid=3)
    page = admin_client.get(HEARTBEATS).content.decode()
    row = {name: next(r for r in page.split("<tr")[1:] if name in r)
           for name in ("w-old@host", "w-new@host", "w-gone@host")}
    assert ">alive<" in row["w-old@host"] and ">alive<" in row["w-new@host"]
    assert ">stale<" in row["w-gone@host"] and "no heartbeat for 1 h 0 min" in row["w-gone@host"]
    # The oldest live worker sweeps; the one gone long ago does not, though it started first.
    assert 'alt="True"' in row["w-old@host"] and 'alt="False"' in row["w-new@host"]
    assert 'alt="False"' in row["w-gone@host"]
    assert "celery, reports" in row["w-old@host"]


@pytest.mark.django_db
def test_workflow_list__warns_when_no_live_worker_while_workflows_are_active(admin_client, no_workers):
    assert "No Celery worker is alive" not in admin_client.get(WORKFLOWS).content.decode()  # nothing active
    waiting_workflow()
    page = admin_client.get(WORKFLOWS).content.decode()
    assert "No Celery worker is alive (none sent a heartbeat in the last 30 s)" in page
    assert HEARTBEATS in page
    beat("w1@host")
    assert "No Celery worker is alive" not in admin_client.get(WORKFLOWS).content.decode()


@pytest.mark.django_db
def test_workflow_page__warns_when_no_live_worker_reads_a_queue_its_nodes_need(admin_client, no_workers):
    wf = waiting_workflow()
    url = reverse("admin:django_dyrygent_workflow_change", args=[wf.pk])
    beat("w-default@host", queues=(settings.CELERY_TASK_DEFAULT_QUEUE,))
    page = admin_client.get(url).content.decode()
    assert "No live worker consumes the queue reports, which nodes of this workflow are sent to" in page
    beat("w-reports@host", queues=("reports",), pid=2)
    assert "No live worker consumes" not in admin_client.get(url).content.decode()


@pytest.mark.django_db
def test_node_queues__node_option_then_workflow_option_then_routes_then_default(no_workers, settings):
    from django_dyrygent.conf import get_celery_app

    default = get_celery_app().conf.task_default_queue
    assert health.node_queues(waiting_workflow()) == {default, "reports"}
    assert health.node_queues(waiting_workflow(tasks_options={"queue": "bulk"})) == {"bulk", "reports"}
    app = get_celery_app()
    old_routes = app.conf.task_routes
    app.conf.task_routes = {"tests.record": {"queue": "routed"}}
    app.amqp.flush_routes()  # Celery reads task_routes once, into the router it keeps
    app.amqp.__dict__.pop("router", None)
    try:
        assert health.node_queues(waiting_workflow()) == {"routed", "reports"}
    finally:
        app.conf.task_routes = old_routes
        app.amqp.flush_routes()
        app.amqp.__dict__.pop("router", None)


@pytest.mark.django_db
def test_warning__silent_without_liveness_and_for_finished_workflows(no_workers, settings):
    wf = waiting_workflow()
    assert health.warning(wf).startswith("No Celery worker is alive")
    settings.DYRYGENT_LIVENESS = False
    assert health.warning(wf) == "" and health.warning() == ""
    settings.DYRYGENT_LIVENESS = True
    Workflow.objects.filter(pk=wf.pk).update(state="CANCELED")
    wf.refresh_from_db()
    assert health.warning(wf) == ""


@pytest.mark.worker
def test_heartbeat__records_the_queues_the_real_worker_consumes(worker):
    """The suite's worker runs without liveness; its thread's beat is taken here, on that worker."""
    thread = LivenessThread("queues@test", 4242, worker)
    thread.beat()
    row = WorkerHeartbeat.objects.get(hostname="queues@test")
    assert row.queues == consumed_queues(worker) == [settings.CELERY_TASK_DEFAULT_QUEUE]


@pytest.mark.django_db
def test_warning__a_routing_error_never_breaks_the_page(admin_client, no_workers, monkeypatch, caplog):
    wf = waiting_workflow()
    beat("w1@host")

    def broken(workflow):
        raise RuntimeError("router exploded")

    monkeypatch.setattr(health, "node_queues", broken)
    response = admin_client.get(reverse("admin:django_dyrygent_workflow_change", args=[wf.pk]))
    assert response.status_code == 200
    assert "Could not tell which queues the nodes of workflow" in caplog.text


@pytest.mark.django_db
def test_live_banner__in_the_page_status_and_the_list_endpoint(admin_client, client, no_workers):
    wf = waiting_workflow()
    status = reverse("admin:django_dyrygent_workflow_status", args=[wf.pk])
    endpoint = reverse("admin:django_dyrygent_workflow_worker_warning")
    assert 'data-url="%s"' % endpoint in admin_client.get(WORKFLOWS).content.decode()
    assert "No Celery worker is alive" in admin_client.get(status).json()["worker_warning"]
    assert "No Celery worker is alive" in admin_client.get(endpoint).json()["worker_warning"]
    beat("w1@host", queues=(settings.CELERY_TASK_DEFAULT_QUEUE, "reports"))
    assert admin_client.get(status).json()["worker_warning"].strip() == ""
    assert admin_client.get(endpoint).json()["worker_warning"].strip() == ""
    assert client.get(endpoint).status_code == 302  # the admin's login first
