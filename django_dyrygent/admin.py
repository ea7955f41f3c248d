from django.contrib import admin

from .models import Workflow, WorkflowNode


class ReadOnlyAdmin(admin.ModelAdmin):
    """The engine owns these rows: the admin shows them, never edits them."""

    def has_add_permission(self, request, obj=None):
        return False

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.concrete_fields]


@admin.register(Workflow)
class WorkflowAdmin(ReadOnlyAdmin):
    list_display = ("name", "id", "state", "nodes_done", "nodes_total", "nodes_failed", "created_at")
    list_filter = ("state", "created_at")
    search_fields = ("id", "name")
    date_hierarchy = "created_at"


@admin.register(WorkflowNode)
class WorkflowNodeAdmin(ReadOnlyAdmin):
    list_display = ("task_name", "task_id", "state", "workflow", "queued_at", "finished_at")
    list_filter = ("state", "kind")
    search_fields = ("task_id", "task_name")
    list_select_related = ("workflow",)
