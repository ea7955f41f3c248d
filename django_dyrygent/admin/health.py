"""Whether anyone is working: the banner of the workflow list and page, from the workers' heartbeats.

Reads what the liveness threads write (``WorkerHeartbeat``: who beat lately
and which queues it reads) and judges it with ``worker.liveness``, the rules
the sweep itself uses. Silent when ``DYRYGENT_LIVENESS`` is off: without
heartbeats there is nothing to tell from.
"""

from __future__ import annotations

import logging
from typing import Any

from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from ..conf import get_celery_app, settings
from ..models import Workflow, WorkflowNode
from ..states import NodeKind, NodeState
from ..worker.liveness import Snapshot

logger = logging.getLogger("django_dyrygent.admin")

#: Node states whose task still has to reach a worker.
WAITING = (NodeState.PENDING, NodeState.QUEUED, NodeState.RETRY)


def node_queues(workflow: Workflow) -> set[str]:
    """The queues the workflow's waiting task nodes are sent to, routed as Celery routes them.

    A node's own ``queue`` option, else the workflow's ``tasks_options``,
    else the app's ``task_routes`` for its task name, else the default queue:
    one query for the distinct (task name, queue option) pairs, however many nodes.
    """
    app = get_celery_app()
    pairs = (
        WorkflowNode.objects.filter(workflow_id=workflow.pk, state__in=WAITING)
        .exclude(kind__in=(NodeKind.JOIN, NodeKind.MAP))
        .values_list("task_name", "signature__options__queue").distinct()
    )
    base: dict[str, Any] = dict(workflow.tasks_options or {})
    queues: set[str] = set()
    for task_name, queue in pairs:
        options = {**base, **({"queue": queue} if queue else {})}
        routed = app.amqp.router.route(options, task_name)
        target = routed.get("queue")
        queues.add(getattr(target, "name", None) or str(target or app.conf.task_default_queue))
    return queues


def warning(workflow: Workflow | None = None) -> str:
    """Why nothing (or not everything) runs, for a banner; empty when live workers cover the work.

    Without ``workflow`` (the list): only whether any worker is alive, and
    only while some workflow is active. With it: also whether a live worker
    consumes every queue its waiting nodes need.
    """
    if not settings.LIVENESS:
        return ""
    if workflow is None:
        if not Workflow.objects.active().exists():
            return ""
    elif workflow.is_final:
        return ""
    live = Snapshot.load(timezone.now()).live()
    if not live:
        return _("No Celery worker is alive (none sent a heartbeat in the last %(seconds)s s): "
                 "nothing runs until a worker starts.") % {"seconds": f"{float(settings.WORKER_TIMEOUT):g}"}
    if workflow is None:
        return ""
    read = {queue for beat in live for queue in (beat.queues or ())}
    if not read:  # beats written before workers recorded their queues: nothing to compare
        return ""
    try:
        needed = node_queues(workflow)
    except Exception:  # a routing function of the project that raises: the page still shows
        logger.exception("Could not tell which queues the nodes of workflow %s need", workflow.pk)
        return ""
    missing = sorted(needed - read)
    if not missing:
        return ""
    return ngettext(
        "No live worker consumes the queue %(queues)s, which nodes of this workflow are sent to: they wait "
        "until a worker reads it (celery worker -Q %(queues)s).",
        "No live worker consumes the queues %(queues)s, which nodes of this workflow are sent to: they wait "
        "until a worker reads them (celery worker -Q %(queues)s).", len(missing),
    ) % {"queues": ",".join(missing)}


def banner(workflow: Workflow | None = None) -> str:
    """The banner's HTML, as the page renders it: the live refresh swaps it in when the workers change."""
    return render_to_string("admin/django_dyrygent/workflow/worker_warning_banner.html",
                            {"worker_warning": warning(workflow)})
