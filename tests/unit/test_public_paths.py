"""Every import path users rely on still resolves, whatever moves inside the package.

The paths come from two places: the ones DESIGN pins (listed here) and every
``django_dyrygent....`` name the documentation mentions. A dotted name whose
first part after the package is not a module is a Celery task name, a
permission, a model label or a logger, and must be one of those.
"""

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
from django.apps import apps
from django.contrib.auth.models import Permission

import django_dyrygent
import django_dyrygent.tasks  # noqa: F401  (registers the shared tasks)
from tests.celery_app import app

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_MODULES = {m.name for m in pkgutil.iter_modules(django_dyrygent.__path__)}

PINNED = [
    "django_dyrygent.models.Workflow",
    "django_dyrygent.models.WorkflowNode",
    "django_dyrygent.workflows.Workflow",
    "django_dyrygent.workflows.WorkflowNode",
    "django_dyrygent.workflows.WorkflowException",
    "django_dyrygent.workflows.register_workflow_processor",
    "django_dyrygent.signals.workflow_state_changed",
    "django_dyrygent.signals.workflow_finished",
    "django_dyrygent.signals.workflow_active_tick",
    "django_dyrygent.signals.node_state_changed",
    "django_dyrygent.canvas",
    "django_dyrygent.draft.Draft",
    "django_dyrygent.catalogue",
    "django_dyrygent.tasks.tick",
    "django_dyrygent.engine.tick",
    "django_dyrygent.engine.cancel",
    "django_dyrygent.engine.retry",
    "django_dyrygent.engine.skip",
    "django_dyrygent.engine.sweep",
    "django_dyrygent.urls.urlpatterns",
    "django_dyrygent.admin.WorkflowAdmin",
    "django_dyrygent.conf.settings",
    "django_dyrygent.states",
]
#: Loggers the docs name (operators filter on them); kept when modules move.
LOGGERS = {"engine", "handlers", "worker", "recovery", "commands", "catalogue", "signals", "db", "hotpath", "builder"}


def resolve(dotted):
    """Import the longest module prefix of ``dotted`` and follow the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def documented_names():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = set()
    for page in pages:
        text = page.read_text(encoding="utf-8")
        found.update(m.rstrip(".") for m in re.findall(r"\bdjango_dyrygent(?:\.[A-Za-z_]\w*)+", text))
        for module, names in re.findall(r"^\s*from (django_dyrygent[\w.]*) import ([\w, ]+)$", text, re.M):
            found.update(f"{module}.{n.split(' as ')[0].strip()}" for n in names.split(","))
    return found


@pytest.mark.parametrize("dotted", PINNED)
def test_pinned_path__imports(dotted):
    assert resolve(dotted) is not None


@pytest.mark.django_db
def test_documented_paths__each_imports_or_names_a_task_permission_or_logger():
    app.loader.import_default_modules()
    tasks = set(app.tasks)
    codenames = Permission.objects.filter(content_type__app_label="django_dyrygent").values_list("codename", flat=True)
    permissions = {f"django_dyrygent.{codename}" for codename in codenames}
    model_labels = {model._meta.label for model in apps.get_app_config("django_dyrygent").get_models()}
    unresolved = []
    for dotted in sorted(documented_names()):
        head = dotted.split(".")[1]
        if head in PACKAGE_MODULES:
            try:
                resolve(dotted)
            except (ImportError, AttributeError) as exc:
                unresolved.append(f"{dotted}: {exc}")
        elif not (dotted in tasks or dotted in permissions or dotted in model_labels or head in LOGGERS
                  or re.fullmatch(r"django_dyrygent\.[EW]\d{3}", dotted)):
            unresolved.append(f"{dotted}: not a module path, task, permission, model label, logger or check id")
    assert not unresolved, "\n".join(unresolved)


def test_resolve__fails_on_a_path_that_moved():
    with pytest.raises((ImportError, AttributeError)):
        resolve("django_dyrygent.hotpath.node_succeeded")
