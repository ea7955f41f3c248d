"""Graphs that grow while they run, end to end on a real worker: a task adds nodes to its own
workflow; its body running twice adds them once; the admin picture shows them."""

import pytest
from django.urls import reverse

from django_dyrygent.models import Workflow, WorkflowNode
from tests.models import Execution
from tests.tasks import record, split

TIMEOUT = 30
S = WorkflowNode.State
W = Workflow.State


@pytest.mark.worker
@pytest.mark.parametrize("rerun", [False, True], ids=["once", "body-runs-twice"])
def test_extend__a_task_maps_over_items_it_found_and_the_dependent_waits_for_them(worker, admin_client, rerun):
    label = f"grow-{rerun}"
    wf = Workflow(name="grows")
    first = wf.add_signature(split.si(label, 3, rerun=rerun))
    wf.add_signature(record.si(f"{label}-after"), dependencies=[first])
    wf.apply_async()
    assert wf.wait(timeout=TIMEOUT) == W.SUCCESS
    runs = list(Execution.objects.filter(label__startswith=label).values_list("label", flat=True))
    assert Execution.objects.filter(label=f"split:{label}").count() == (2 if rerun else 1)
    items = [f"{label}-{i}" for i in range(3)]
    assert sorted(r for r in runs if r not in (f"{label}-after", f"{label}-also")) == items
    assert runs.count(f"{label}-also") == 1
    assert runs.index(f"{label}-after") > max(runs.index(item) for item in items)
    wf.refresh_from_db()
    assert (wf.nodes_total, wf.nodes_done, wf.nodes_succeeded) == (6, 6, 6)
    assert wf.nodes.count() == 6
    page = admin_client.get(reverse("admin:django_dyrygent_workflow_change", args=[wf.pk])).content.decode()
    picture = page[page.index('class="dy-dag'):]
    picture = picture[:picture.index("</svg>")]
    for node in wf.nodes.all():
        assert reverse("admin:django_dyrygent_workflownode_change", args=[node.pk]) in picture
