"""The admin, for rendering a large workflow's page (bench/run.py's huge case)."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
