"""The catalogue's JSON API; mount it with ``path("dyrygent/", include("django_dyrygent.urls"))``."""

from django.urls import path

from . import api

app_name = "django_dyrygent"
urlpatterns = [
    path("definitions/", api.definitions, name="api-definitions"),
    path("definitions/<str:name>/", api.definition, name="api-definition"),
    path("definitions/<str:name>/start/", api.start, name="api-start"),
    path("workflows/<str:workflow_id>/", api.status, name="api-workflow"),
    path("workflows/<str:workflow_id>/cancel/", api.cancel, name="api-cancel"),
    path("workflows/<str:workflow_id>/retry/", api.retry, name="api-retry"),
    path("workflows/<str:workflow_id>/pause/", api.pause, name="api-pause"),
    path("workflows/<str:workflow_id>/resume/", api.resume, name="api-resume"),
    path("workflows/<str:workflow_id>/signal/<str:name>/", api.signal, name="api-signal"),
]
