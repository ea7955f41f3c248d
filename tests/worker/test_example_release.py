"""The example project's ``release`` definition: an approval step, then a branch, on the real worker."""

import pytest

from django_dyrygent import catalogue, launch
from django_dyrygent.models import Workflow, WorkflowNode
from example_project.demo import workflows as demo_workflows  # noqa: F401  (registers the definitions)
from tests.conftest import wait_for

TIMEOUT = 60


@pytest.mark.worker
@pytest.mark.parametrize(("approved", "ran", "skipped"), [
    (True, "demo.publish_release", "demo.roll_back"),
    (False, "demo.roll_back", "demo.publish_release"),
])
def test_example_release__approval_then_branch(worker, approved, ran, skipped):
    assert catalogue.registry.get("release").title.startswith("Ship a release")
    wf = launch.start("release", {"version": "2.0", "delay": 0}).workflow
    wait = wf.nodes.get(kind=WorkflowNode.Kind.WAIT)
    wait_for(lambda: WorkflowNode.objects.get(pk=wait.pk).state == WorkflowNode.State.WAITING, "the approval")
    assert wf.signal("approved", {"approved": approved, "by": "release-manager"}) == 1
    assert wf.wait(timeout=TIMEOUT) == Workflow.State.SUCCESS
    assert wf.nodes.get(task_name=ran).result.endswith("2.0")
    assert wf.nodes.get(task_name=skipped).state == WorkflowNode.State.SKIPPED
