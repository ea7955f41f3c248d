from django.contrib import admin
from django.urls import include, path

from django_dyrygent.metrics import metrics_view

urlpatterns = [
    path("dyrygent/metrics", metrics_view),
    path("admin/", admin.site.urls),
    path("dyrygent/", include("django_dyrygent.urls")),
]
