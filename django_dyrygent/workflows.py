"""celery-dyrygent compatible import path: ``from django_dyrygent.workflows import Workflow``."""

from .models import Workflow, WorkflowNode  # noqa: F401

__all__ = ["Workflow", "WorkflowNode"]
