"""Which catalogue definitions run on a schedule, when next, and how the last scheduled start went.

Schedules belong to Celery beat, not to this app: they are entries that run
``django_dyrygent.start_definition``, either in the Celery app's
``beat_schedule`` (settings) or, when django-celery-beat is installed, in
its ``PeriodicTask`` rows. This page only reads them; each scheduled
definition's last outcome is its newest scheduled workflow or failed start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery.schedules import BaseSchedule
from celery.schedules import schedule as every
from django.apps import apps
from django.utils import timezone

from ..conf import get_celery_app
from ..models import FailedStart, Workflow
from ..states import Trigger

START_TASK = "django_dyrygent.start_definition"


@dataclass
class ScheduleEntry:
    """One beat entry that starts a definition."""

    name: str
    source: str
    definition: str
    parameters: dict[str, Any]
    schedule: str
    enabled: bool
    next_run: datetime | None
    last_run: datetime | None
    last_state: str = ""
    last_at: datetime | None = None
    last_error: str = ""
    last_workflow: Any = None


def _call(args: Any, kwargs: Any) -> tuple[str, dict[str, Any]]:
    """The definition name and parameters of a start_definition call, as beat would make it."""
    args, kwargs = list(args or []), dict(kwargs or {})
    name = kwargs.get("name", args[0] if args else "")
    params = kwargs.get("params", args[1] if len(args) > 1 else {}) or {}
    return str(name), params if isinstance(params, dict) else {}


def _next_run(sched: BaseSchedule, last_run: datetime | None, now: datetime) -> datetime | None:
    """When ``sched`` fires next, counted from the last run when beat recorded one (else from now)."""
    try:
        remaining = sched.remaining_estimate(last_run or now)
    except Exception:  # a custom schedule class that cannot say
        return None
    due = now + remaining  # Celery's estimate is the time left from now, counted from the last run
    if not isinstance(due, datetime):
        return None
    # To the nearest second: the estimate is computed from "now" and is a few microseconds short.
    due = due.replace(microsecond=0) + timedelta(seconds=due.microsecond >= 500_000)
    return max(due, now)


def _from_settings(now: datetime) -> list[ScheduleEntry]:
    found = []
    for key, entry in (getattr(get_celery_app().conf, "beat_schedule", None) or {}).items():
        if entry.get("task") != START_TASK:
            continue
        sched = entry["schedule"]
        if isinstance(sched, (int, float, timedelta)):
            sched = every(sched)
        definition, params = _call(entry.get("args"), entry.get("kwargs"))
        found.append(ScheduleEntry(
            name=key, source="settings", definition=definition, parameters=params, schedule=str(sched),
            enabled=True, next_run=_next_run(sched, None, now), last_run=None,
        ))
    return found


def _from_database(now: datetime) -> list[ScheduleEntry]:
    if not apps.is_installed("django_celery_beat"):
        return []
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    found = []
    for task in PeriodicTask.objects.filter(task=START_TASK).order_by("name"):
        try:
            args, kwargs = json.loads(task.args or "[]"), json.loads(task.kwargs or "{}")
        except ValueError:
            args, kwargs = [], {}
        definition, params = _call(args, kwargs)
        sched = task.schedule
        found.append(ScheduleEntry(
            name=task.name, source="django-celery-beat", definition=definition, parameters=params,
            schedule=str(task.crontab or task.interval or task.solar or task.clocked or sched),
            enabled=task.enabled, next_run=_next_run(sched, task.last_run_at, now) if task.enabled else None,
            last_run=task.last_run_at,
        ))
    return found


def entries() -> list[ScheduleEntry]:
    """Every schedule that starts a definition, with its definition's last scheduled outcome.

    Two indexed queries per scheduled definition (its newest scheduled
    workflow, its newest failed start), never a scan of the history.
    """
    now = timezone.now()
    found = _from_settings(now) + _from_database(now)
    outcomes: dict[str, tuple[Workflow | None, FailedStart | None]] = {}
    for definition in {e.definition for e in found}:
        outcomes[definition] = (
            Workflow.objects.filter(definition=definition, trigger=Trigger.SCHEDULE)
            .only("id", "definition", "state", "created_at", "error").order_by("-created_at").first(),
            FailedStart.objects.filter(definition=definition).order_by("-created_at").first(),
        )
    for entry in found:
        run, failed = outcomes[entry.definition]
        if failed is not None and (run is None or failed.created_at > run.created_at):
            entry.last_state, entry.last_at, entry.last_error = "FAILED_START", failed.created_at, failed.error
        elif run is not None:
            entry.last_state, entry.last_at, entry.last_workflow = run.state, run.created_at, run
            entry.last_error = run.error
    return found
