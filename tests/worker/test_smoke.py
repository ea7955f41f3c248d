import pytest
from celery import chain, group

from django_dyrygent.models import Workflow
from tests.models import Execution
from tests.tasks import record


@pytest.mark.worker
def test_chain_group_chord__run_in_dependency_order(worker):
    wf = Workflow(name="smoke")
    wf.add_celery_canvas(chain(record.si("a"), group(record.si("b1"), record.si("b2")), record.si("c")))
    wf.apply_async()
    assert wf.wait(timeout=30) == Workflow.State.SUCCESS
    labels = list(Execution.objects.values_list("label", flat=True))
    assert labels[0] == "a" and labels[-1] == "c" and sorted(labels[1:3]) == ["b1", "b2"]
