"""Start catalogue definitions: validation, provenance, idempotency and the overlap policy.

Every door (admin, command, JSON API, schedule) ends here, so they share one
set of rules:

* parameters are validated by the definition's form; a bad value raises
  ``ParameterError`` carrying the form (its ``errors`` are what a 400 shows)
  and nothing is saved;
* the started workflow records its definition, parameters, trigger and user;
* an idempotency key is a unique column: a repeated request returns the first
  workflow, and two racing requests cannot both insert (the loser's INSERT
  fails on the constraint and it returns the winner's row);
* a scheduled start follows the definition's overlap policy (allow, skip,
  queue); a queued start is started by the end of the run it waits for.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery.canvas import Signature
from django import forms
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils import timezone

from .canvas import default_concurrency
from .catalogue import Definition, UnknownDefinition, registry
from .models import FailedStart, QueuedRun, Workflow
from .serialization import unstorable
from .signals import workflow_finished
from .states import WORKFLOW_ACTIVE, Overlap, Trigger

logger = logging.getLogger("django_dyrygent.catalogue")

#: The longest idempotency key accepted (the column's size).
MAX_KEY_LENGTH = 255

if TYPE_CHECKING:  # django.contrib.auth may not be installed: types only
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    #: Who asks for a start (``request.user``); None for code and schedules.
    User = AbstractBaseUser | AnonymousUser | None


class StartError(ValueError):
    """A start request that cannot be honoured as given (a client error: 400/409, CommandError)."""


class ParameterError(StartError):
    """The parameters do not pass the definition's form; ``form.errors`` says which and why."""

    def __init__(self, definition: Definition, form: forms.BaseForm) -> None:
        self.definition = definition
        self.form = form
        self.errors = form.errors.get_json_data()
        details = "; ".join(
            (f"{field}: " if field != "__all__" else "") + " ".join(e["message"] for e in errors)
            for field, errors in self.errors.items()
        )
        super().__init__(f"Invalid parameters for workflow definition {definition.name!r}: {details}")


class IdempotencyConflict(StartError):
    """The key was already used for another request (another definition, parameters or user)."""


@dataclass
class Outcome:
    """What a start did: ``started`` (a new workflow), ``replayed`` (the key's first
    workflow), ``skipped`` or ``queued`` (overlap policy; no workflow yet)."""

    status: str
    workflow: Workflow | None = None

    @property
    def created(self) -> bool:
        return self.status == "started"


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from a JSONField: what a stored row is compared with."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def valid_form(definition: Definition, params: dict[str, Any] | None) -> forms.BaseForm:
    """The bound, valid form for ``params``, or ``ParameterError``."""
    try:
        form = definition.bind(params)
    except TypeError as exc:
        raise StartError(str(exc)) from None
    if not form.is_valid():
        raise ParameterError(definition, form)
    return form


def build(definition: Definition, form: forms.BaseForm) -> Workflow:
    """Call the factory with the cleaned data; an unsaved workflow with the definition's defaults.

    A factory may refuse a combination of values the form let through by
    raising ``ValueError`` or ``ValidationError``: that is a form error too.
    """
    try:
        built = definition.factory(**form.cleaned_data)
    except (ValueError, ValidationError) as exc:
        messages = exc.messages if isinstance(exc, ValidationError) else [str(exc)]
        for message in messages:
            form.add_error(None, message)
        raise ParameterError(definition, form) from None
    if isinstance(built, Signature):
        wf = Workflow()
        wf.add_celery_canvas(built)
    elif isinstance(built, Workflow) and built._state.adding:
        wf = built
    else:
        raise TypeError(
            f"The factory of workflow definition {definition.name!r} returned {built!r}; it must return "
            "an unsaved Workflow or a Celery signature/canvas."
        )
    wf.name = wf.name or definition.name
    wf.options = {**definition.options, **(wf.options or {})}
    wf.tasks_options = {**definition.tasks_options, **(wf.tasks_options or {})}
    if definition.pass_results is not None and not wf.pass_results:
        wf.pass_results = definition.pass_results
    if definition.deadline is not None and wf.deadline is None:
        wf.deadline = timezone.now() + definition.deadline
    key = definition.key_for(form.cleaned_data)
    if key is not None:
        try:
            default_concurrency(wf.draft, key, definition.concurrency_limit)
        except ValidationError as exc:  # the parameters made a key that cannot be stored (too long, blank)
            for message in exc.messages:
                form.add_error(None, message)
            raise ParameterError(definition, form) from None
    wf.definition = definition.name
    wf.parameters = _as_json(definition.parameters(form))
    return wf


def launch(
    definition: Definition, form: forms.BaseForm, *, trigger: str = "", user: User = None,
    idempotency_key: str | None = None, name: str | None = None,
) -> Outcome:
    """Build from a valid form and start it; the new workflow, or the key's first one."""
    wf = build(definition, form)
    if name:
        wf.name = name
    wf.trigger = trigger
    wf.started_by = user.get_username() if user is not None and user.is_authenticated else ""
    wf.idempotency_key = idempotency_key or None
    try:
        wf.apply_async()
    except ValidationError as exc:
        # The factory built something the engine refuses (e.g. an argument that
        # is not JSON): with these parameters the definition cannot run.
        for message in exc.messages:
            form.add_error(None, message)
        raise ParameterError(definition, form) from None
    except IntegrityError:
        if idempotency_key:
            replay = _replay(definition, idempotency_key, wf.parameters, wf.started_by)
            if replay is not None:
                return replay
        raise
    logger.info("Started workflow %s from definition %s (%s)", wf.pk, definition.name, trigger or "code")
    return Outcome("started", wf)


def _check_key(key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise StartError(f"The idempotency key must be a non-empty string of at most {MAX_KEY_LENGTH} characters.")
    problem = unstorable(key, "the idempotency key")
    if problem:  # PostgreSQL refuses it in the very lookup: a 500 of the API, found by fuzzing
        raise StartError(f"{problem[0].upper()}{problem[1:]}, which no database column can hold.")
    return key


def _replay(definition: Definition, key: str, parameters: Any, started_by: str) -> Outcome | None:
    """The workflow first started with ``key``, if it was the same request; else a conflict."""
    first = Workflow.objects.filter(idempotency_key=key).first()
    if first is None:
        return None
    if (first.definition, first.started_by, first.parameters) != (definition.name, started_by, parameters):
        raise IdempotencyConflict(
            f"The idempotency key {key!r} was already used for another request (workflow {first.pk}); "
            "use a new key for a different definition, parameters or user."
        )
    return Outcome("replayed", first)


def start(
    name: str | Definition, params: dict[str, Any] | None = None, *, trigger: str = "", user: User = None,
    idempotency_key: object = None, workflow_name: str | None = None,
) -> Outcome:
    """Start definition ``name`` with ``params`` (a dict of values, as JSON or a command gives them).

    Raises ``UnknownDefinition``, ``ParameterError`` or ``IdempotencyConflict``;
    in each case nothing is saved. Returns an ``Outcome``.
    """
    definition = name if isinstance(name, Definition) else registry.get(name)
    key = _check_key(idempotency_key)
    form = valid_form(definition, params)
    if key:
        started_by = user.get_username() if user is not None and user.is_authenticated else ""
        replay = _replay(definition, key, _as_json(definition.parameters(form)), started_by)
        if replay is not None:
            return replay
    return launch(definition, form, trigger=trigger, user=user, idempotency_key=key, name=workflow_name)


def run_again(workflow: Workflow, *, trigger: str = "", user: User = None) -> Outcome:
    """Start ``workflow``'s definition again with the parameters it recorded."""
    if not workflow.definition:
        raise StartError(f"Workflow {workflow.pk} was not started from a catalogue definition.")
    return start(workflow.definition, workflow.parameters, trigger=trigger, user=user)


# -- schedules and the overlap policy -------------------------------------------------------------


def start_scheduled(name: str, params: dict[str, Any] | None = None) -> Outcome:
    """What Celery beat runs (``django_dyrygent.start_definition``): a start under the overlap policy.

    ``skip``: do nothing while a run of the definition is INITIAL or RUNNING.
    ``queue``: store a ``QueuedRun``; the end of the running workflow starts it
    (``workflow_finished`` receiver below), no polling involved.

    No workflow row is locked here: a tick that finds its row locked leaves it
    for later, so a lock taken by a schedule would delay the runs it looks at.
    Instead the queue is written first and read again after: if the run ended
    between "still running?" and the insert, its receiver may have found no
    queued row, so the ``start_next_queued`` call after the insert starts it;
    if it ends later, its receiver (called after that commit) sees the row.
    ``start_next_queued`` serialises the two on the queued row's lock.
    Parameters are validated first: a bad schedule fails at every fire and
    never queues anything.
    """
    definition = registry.get(name)
    form = valid_form(definition, params)
    if definition.overlap == Overlap.ALLOW:
        return launch(definition, form, trigger=Trigger.SCHEDULE)
    running = (
        Workflow.objects.filter(definition=definition.name, state__in=WORKFLOW_ACTIVE)
        .order_by("created_at").first()
    )
    if running is not None and definition.overlap == Overlap.SKIP:
        logger.info("Scheduled run of %s skipped: workflow %s still runs", name, running.pk)
        return Outcome("skipped", running)
    if running is None and not (
        definition.overlap == Overlap.QUEUE and QueuedRun.objects.filter(definition=definition.name).exists()
    ):
        return launch(definition, form, trigger=Trigger.SCHEDULE)
    # A run goes on, or earlier fires wait (a run ended without starting its
    # successor: its process died after committing): this fire waits its turn.
    QueuedRun.objects.create(definition=definition.name, parameters=definition.parameters(form))
    started = start_next_queued(definition.name)
    if started is not None:
        return started
    logger.info("Scheduled run of %s queued behind workflow %s", name, running and running.pk)
    return Outcome("queued", running)


def start_next_queued(name: str) -> Outcome | None:
    """Start the oldest queued run of ``name`` unless a run of it is still going.

    The oldest queued row is locked first (a concurrent caller waits, then
    finds it gone or sees the run it started), and only then are the
    running workflows counted, so two callers never start two queued runs.
    """
    with transaction.atomic():
        queued = QueuedRun.objects.select_for_update().filter(definition=name).order_by("created_at", "id").first()
        if queued is None:
            return None
        if Workflow.objects.filter(definition=name, state__in=WORKFLOW_ACTIVE).exists():
            return None
        queued.delete()
        try:
            definition = registry.get(name)
            return launch(definition, valid_form(definition, queued.parameters), trigger=Trigger.QUEUE)
        except (LookupError, StartError) as exc:
            # The definition changed since the run was queued: dropping it is
            # the only way forward, and the failed start says why.
            record_failed_start(name, queued.parameters, exc, trigger=Trigger.QUEUE)
            return None


def record_failed_start(
    name: str, params: Any, exc: Exception, *, trigger: str = Trigger.SCHEDULE, hostname: str = "",
) -> FailedStart:
    """Keep a start nobody waits for (a schedule's) that could not happen, saying what to do.

    A scheduled start has no caller to answer: the row is what the admin
    shows (and the workflow list warns about). An unknown name in a worker
    almost always means the definition was added or renamed after the
    worker started: definitions are imported once, at start-up.
    """
    where = f"the worker {hostname}" if hostname else "this process"
    if isinstance(exc, UnknownDefinition):
        advice = (
            f"{where.capitalize()} imports the catalogue when it starts, so a definition added or renamed "
            "since is unknown to it: restart the Celery workers. If the name is a typo, correct the schedule."
        )
    else:
        advice = "Correct the schedule's parameters (dyrygent_run --list shows what the definition takes)."
    row = FailedStart.objects.create(
        definition=str(name)[:100], parameters=params if isinstance(params, dict) else {"params": params},
        trigger=trigger, error=f"{exc} {advice}", hostname=hostname[:255],
    )
    what = "Queued run of %s dropped" if trigger == Trigger.QUEUE else "Scheduled start of %s failed"
    logger.error(what + " (see Failed starts in the admin): %s", name, row.error)
    return row


def on_workflow_finished(sender: type, workflow: Workflow, **kwargs: Any) -> None:
    if workflow.definition and QueuedRun.objects.filter(definition=workflow.definition).exists():
        start_next_queued(workflow.definition)


def connect_receivers() -> None:
    workflow_finished.connect(on_workflow_finished, weak=False, dispatch_uid="django_dyrygent.catalogue.queue")
