"""Start a demo workflow from a form and watch it run.

The progress page reads the workflow row's counters (no per-node COUNT) and
one query for the node rows; it reloads itself while the workflow runs.
"""

from datetime import timedelta

from celery import current_app
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone

from django_dyrygent.admin.display import workflow_progress
from django_dyrygent.models import Workflow, WorkflowNode

from .forms import StartDemoForm
from .workflows import build_demo_workflow

RECENT = 10
REFRESH_SECONDS = 1
#: A workflow that shows no progress this long after its creation makes the page ask the workers.
PING_AFTER = timedelta(seconds=3)
#: How long the page waits for workers to answer a ping.
PING_TIMEOUT = 0.5


def workers_answering(timeout=PING_TIMEOUT):
    """How many Celery workers answer a ping; None when the broker cannot be asked."""
    try:
        return len(current_app.control.ping(timeout=timeout) or [])
    except Exception:  # a broker that is down says nothing about workers
        return None


def stalled(wf, nodes):
    """Not final, nothing done and nothing running a while after creation: maybe no worker."""
    return (
        not wf.is_final and not wf.nodes_done
        and not any(node.state == WorkflowNode.State.STARTED for node in nodes)
        and timezone.now() - wf.created_at > PING_AFTER
    )


def index(request):
    if request.method == "POST":
        form = StartDemoForm(request.POST)
        if form.is_valid():
            wf = build_demo_workflow(**form.cleaned_data).apply_async()
            return redirect("demo:progress", pk=wf.pk)
    else:
        form = StartDemoForm()
    recent = Workflow.objects.only(
        "id", "name", "state", "nodes_total", "nodes_done", "nodes_failed", "created_at"
    )[:RECENT]
    return render(request, "demo/index.html", {"form": form, "recent": recent})


def progress(request, pk):
    wf = get_object_or_404(Workflow, pk=pk)
    nodes = list(
        wf.nodes.filter(kind=WorkflowNode.Kind.TASK)
        .only("task_name", "task_id", "state", "result", "error", "reason", "started_at", "finished_at",
              "position", "workflow_id")
        .order_by("position")
    )
    for node in nodes:
        # The exception line, not the top of the traceback; the admin shows it all.
        lines = node.error.strip().splitlines()
        node.error_summary = lines[-1] if lines else ""
    return render(
        request,
        "demo/progress.html",
        {
            "wf": wf,
            "nodes": nodes,
            "bar": workflow_progress(wf),
            "refresh": None if wf.is_final else REFRESH_SECONDS,
            # Asked only when the workflow seems stuck: a ping costs up to PING_TIMEOUT.
            "no_worker": stalled(wf, nodes) and workers_answering() == 0,
            "admin_url": reverse("admin:django_dyrygent_workflow_change", args=[wf.pk]),
        },
    )
