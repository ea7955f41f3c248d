"""The Django admin of django_dyrygent: read-only pages over rows the engine owns.

``workflows`` registers the workflow page (list, DAG, actions), ``nodes`` the
node and worker pages, ``starts`` the failed scheduled starts, ``tokens`` the
API tokens, ``views`` the "Start a workflow" pages; ``readonly`` is
their shared base and ``display`` the HTML pieces they render. Django's
autodiscovery imports this package, which registers them all. May import the
engine, the graph and the public modules; nothing below imports it.
"""

from .nodes import WorkerHeartbeatAdmin, WorkflowNodeAdmin
from .starts import FailedStartAdmin
from .tokens import ApiTokenAdmin
from .workflows import WorkflowAdmin

__all__ = ["ApiTokenAdmin", "FailedStartAdmin", "WorkerHeartbeatAdmin", "WorkflowAdmin", "WorkflowNodeAdmin"]
