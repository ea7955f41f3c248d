from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # The catalogue's JSON API: /api/definitions/, /api/definitions/<name>/start/, ...
    path("api/", include("django_dyrygent.urls")),
    path("", include("example_project.demo.urls")),
]
