"""The catalogue's JSON API; mount it with ``path("dyrygent/", include("django_dyrygent.urls"))``."""

from django.urls import path, re_path

from . import api

app_name = "django_dyrygent"
urlpatterns = [
    path("definitions/", api.definitions, name="api-definitions"),
    path("definitions/<str:name>/", api.definition, name="api-definition"),
    path("definitions/<str:name>/start/", api.start, name="api-start"),
    path("workflows/", api.workflows, name="api-workflows"),
    path("workflows/<str:workflow_id>/", api.status, name="api-workflow"),
    path("workflows/<str:workflow_id>/nodes/", api.nodes, name="api-nodes"),
    path("workflows/<str:workflow_id>/nodes/<str:node_id>/retry/", api.retry_node, name="api-node-retry"),
    path("workflows/<str:workflow_id>/nodes/<str:node_id>/mark/", api.mark_node, name="api-node-mark"),
    path("workflows/<str:workflow_id>/nodes/<str:node_id>/cancel/", api.cancel_node, name="api-node-cancel"),
    path("workflows/<str:workflow_id>/cancel/", api.cancel, name="api-cancel"),
    path("workflows/<str:workflow_id>/retry/", api.retry, name="api-retry"),
    path("workflows/<str:workflow_id>/pause/", api.pause, name="api-pause"),
    path("workflows/<str:workflow_id>/resume/", api.resume, name="api-resume"),
    path("workflows/<str:workflow_id>/signal/<str:name>/", api.signal, name="api-signal"),
    path("openapi.json", api.openapi_document, name="api-openapi"),
    # Last: every other path under the API answers a JSON 404. [\s\S], not ".": a path with a newline
    # (%0A) fell through to the project's HTML 404 (found by fuzzing).
    re_path(r"^(?P<path>[\s\S]*)$", api.not_found, name="api-not-found"),
]
