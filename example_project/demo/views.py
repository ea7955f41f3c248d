"""Start a demo workflow from a form and watch it run.

The progress page reads the workflow row's counters (no per-node COUNT) and
one query for the node rows; it reloads itself while the workflow runs.
"""

from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from django_dyrygent.models import Workflow, WorkflowNode

from .forms import StartDemoForm
from .workflows import build_demo_workflow

RECENT = 10
REFRESH_SECONDS = 1


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
            "percent": round(100 * wf.progress),
            "refresh": None if wf.is_final else REFRESH_SECONDS,
            "admin_url": reverse("admin:django_dyrygent_workflow_change", args=[wf.pk]),
        },
    )
