"""Node metrics in a real worker: run time by task name and outcome, queue wait from the publish header."""

import pytest
from celery import chain

from django_dyrygent import metrics
from django_dyrygent.models import Workflow
from tests.conftest import wait_for
from tests.tasks import add, fail

prometheus_client = pytest.importorskip("prometheus_client")
pytestmark = pytest.mark.worker


def count(name, **labels):
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


def test_node_metrics__run_times_by_outcome_and_queue_waits_observed_in_the_worker(worker, settings):
    settings.DYRYGENT_METRICS = True
    metrics.connect()
    before = {
        "add": count("dyrygent_node_duration_seconds_count", task_name="tests.add", state="SUCCESS"),
        "fail": count("dyrygent_node_duration_seconds_count", task_name="tests.fail", state="FAILURE"),
        "wait": count("dyrygent_node_queue_wait_seconds_count", task_name="tests.add"),
    }
    wf = Workflow(name="metrics")
    wf.add_celery_canvas(chain(add.si(1, 2), add.si(3, 4), fail.si("boom")))
    wf.apply_async()
    assert wf.wait(timeout=30) == Workflow.State.FAILURE
    # task_postrun follows the outcome the workflow ended on: wait for the last observation.
    wait_for(lambda: count("dyrygent_node_duration_seconds_count", task_name="tests.fail", state="FAILURE")
             == before["fail"] + 1, "the failed node's run time")
    assert count("dyrygent_node_duration_seconds_count", task_name="tests.add", state="SUCCESS") == before["add"] + 2
    assert count("dyrygent_node_queue_wait_seconds_count", task_name="tests.add") == before["wait"] + 2
