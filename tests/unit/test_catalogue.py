"""The catalogue: registration, forms from type hints, and starting a definition (launch.py).

No worker here: inside a ``django_db`` test nothing is published, so the
tests see exactly the rows a start made. Worker-backed runs are in
test_catalogue_schedule.py.
"""

import enum
from datetime import date, timedelta
from typing import Literal, Optional

import pytest
from django import forms
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError
from django.utils import timezone

from django_dyrygent import catalogue, launch
from django_dyrygent.models import QueuedRun, Workflow
from tests.tasks import add


class Colour(enum.Enum):
    RED = "red"
    DARK_BLUE = "dark-blue"


@pytest.fixture
def site():
    return catalogue.Registry()


def test_autodiscover__imports_app_workflows_modules_but_not_the_compat_path():
    # tests/workflows.py was imported by AppConfig.ready.
    assert {"tests.add", "tests.report", "tests.hold-queue", "tests.secret"} <= {d.name for d in catalogue.registry}
    assert all(not d.factory.__module__.startswith("django_dyrygent") for d in catalogue.registry)


def test_autodiscover__off_when_the_setting_is_none(settings, monkeypatch):
    imported = []
    monkeypatch.setattr(catalogue, "import_module", imported.append)
    settings.DYRYGENT_CATALOGUE_MODULE = None
    catalogue.autodiscover()
    assert imported == []
    settings.DYRYGENT_CATALOGUE_MODULE = "workflows"
    catalogue.autodiscover()
    assert "tests.workflows" in imported and "django_dyrygent.workflows" not in imported


def test_register__derives_a_form_from_type_hints(site):
    @catalogue.register("hinted", site=site)
    def hinted(n: int, day: date, ratio: float = 0.5, tag: Optional[str] = None, dry_run: bool = True,
               colour: Colour = Colour.RED, mode: Literal["a", "b"] = "a", extra: dict = None):
        """First line.

        More words."""

    definition = site.get("hinted")
    fields = definition.form_class().fields
    assert isinstance(fields["n"], forms.IntegerField) and fields["n"].required
    assert isinstance(fields["day"], forms.DateField)
    assert not fields["ratio"].required and fields["ratio"].initial == 0.5
    assert isinstance(fields["tag"], forms.CharField) and not fields["tag"].required
    assert isinstance(fields["dry_run"], forms.BooleanField) and not fields["dry_run"].required
    assert [c[0] for c in fields["colour"].choices] == ["red", "dark-blue"]
    assert [c[0] for c in fields["mode"].choices] == ["a", "b"]
    assert isinstance(fields["extra"], forms.JSONField)
    assert definition.title == "First line." and definition.description == "First line.\n\nMore words."
    schema = {f["name"]: f for f in definition.fields_schema()}
    assert schema["n"] == {"name": "n", "type": "integer", "required": True, "label": "N", "help_text": ""}
    assert schema["colour"]["default"] == "red" and schema["dry_run"]["default"] is True


@pytest.mark.parametrize("factory, message", [
    (lambda n: None, "parameter 'n' of .* has no type hint"),
    (lambda: None, None),
])
def test_register__a_parameter_without_hint_is_refused_naming_it(site, factory, message):
    if message is None:
        catalogue.register("ok", site=site)(factory)
        return
    with pytest.raises(ImproperlyConfigured, match=message):
        catalogue.register("bad", site=site)(factory)
    assert "bad" not in site


def test_register__unsupported_hint_names_the_parameter(site):
    def factory(when: complex):
        pass

    with pytest.raises(ImproperlyConfigured, match="parameter 'when' has type hint <class 'complex'>"):
        catalogue.register("bad", site=site)(factory)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "has space"}, "Invalid workflow definition name 'has space'"),
    ({"name": "a/b"}, "Invalid workflow definition name"),
    ({"name": "ok", "overlap": "sometimes"}, "overlap must be one of allow, skip, queue"),
    ({"name": "ok", "form": dict}, "form= must be a Form class"),
])
def test_register__bad_declarations_are_refused(site, kwargs, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        catalogue.register(site=site, **kwargs)(lambda: None)
    assert len(site) == 0


def test_register__same_name_twice_from_another_factory_is_refused(site):
    def first():
        pass

    def second():
        pass

    catalogue.register("dup", site=site)(first)
    catalogue.register("dup", site=site)(first)  # a module imported again: harmless
    with pytest.raises(ImproperlyConfigured, match="registered twice"):
        catalogue.register("dup", site=site)(second)


def test_register__bare_decorator_uses_the_function_name(monkeypatch, site):
    monkeypatch.setattr(catalogue, "registry", site)

    @catalogue.register
    def cleanup(days: int = 30):
        """Delete old rows."""

    assert site.get("cleanup").title == "Delete old rows." and cleanup.__name__ == "cleanup"


def test_registry__unknown_name_is_a_lookup_error(site):
    with pytest.raises(catalogue.UnknownDefinition, match="No workflow definition named 'nope'"):
        site.get("nope")


# -- starting -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_start__records_definition_parameters_and_defaults():
    user = User.objects.create_user("ann")
    before = timezone.now()
    outcome = launch.start("tests.add", {"x": "4"}, trigger="api", user=user)

    wf = Workflow.objects.get()
    assert outcome.status == "started" and outcome.workflow.pk == wf.pk
    assert (wf.definition, wf.trigger, wf.started_by, wf.name) == ("tests.add", "api", "ann", "tests.add")
    assert wf.parameters == {"x": 4, "y": 2, "label": ""}
    # The definition's defaults, where the factory left them unset.
    assert wf.pass_results is True and wf.tasks_options == {"priority": 3}
    assert before + timedelta(minutes=59) < wf.deadline < timezone.now() + timedelta(hours=1, minutes=1)
    assert wf.nodes_total == 2


@pytest.mark.django_db
def test_start__form_class_definition_stores_json_ready_values_and_wraps_a_canvas():
    wf = launch.start("tests.report", {"day": "2026-11-27", "hosts": 2}).workflow
    wf.refresh_from_db()
    assert wf.parameters == {"day": "2026-11-27", "hosts": 2, "mode": "fast"}
    assert list(wf.nodes.values_list("signature__args", flat=True)) == [
        ["report-2026-11-27-fast-0"], ["report-2026-11-27-fast-1"],
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("params, errors", [
    ({}, {"x": ["This field is required."]}),
    ({"x": "four"}, {"x": ["Enter a whole number."]}),
    ({"x": 1, "z": 2}, {"__all__": ["Unknown parameter(s) z; tests.add takes: x, y, label."]}),
])
def test_start__bad_parameters_raise_the_form_errors_and_save_nothing(params, errors):
    with pytest.raises(launch.ParameterError) as info:
        launch.start("tests.add", params)
    assert {k: [e["message"] for e in v] for k, v in info.value.errors.items()} == errors
    assert "Invalid parameters for workflow definition 'tests.add'" in str(info.value)
    assert not Workflow.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("params, message", [
    ({"day": "2026-13-01"}, "day: Enter a valid date."),
    ({"day": "2026-11-27", "hosts": 9}, "hosts: Ensure this value is less than or equal to 5."),
    ({"day": "2026-11-27", "hosts": 5, "mode": "full"}, "A full report covers at most 3 hosts."),
    ({"day": "2026-11-27", "hosts": 4}, "4 hosts is unlucky: the factory refuses it."),
])
def test_start__form_clean_and_factory_refusals_are_form_errors(params, message):
    with pytest.raises(launch.ParameterError, match=message.replace(".", r"\.")):
        launch.start("tests.report", params)
    assert not Workflow.objects.exists()


@pytest.mark.django_db
def test_start__parameters_that_are_not_an_object_are_refused():
    with pytest.raises(launch.StartError, match=r"parameters must be an object \(a dict\), not list"):
        launch.start("tests.add", [1, 2])
    assert not Workflow.objects.exists()


@pytest.mark.django_db
def test_start__unknown_definition_saves_nothing():
    with pytest.raises(catalogue.UnknownDefinition):
        launch.start("tests.nope", {})
    assert not Workflow.objects.exists()


@pytest.mark.django_db
def test_start__engine_validation_error_becomes_a_parameter_error(monkeypatch):
    definition = catalogue.registry.get("tests.add")
    monkeypatch.setattr(definition, "factory", lambda **kw: add.si(object(), 1))
    with pytest.raises(launch.ParameterError, match="not JSON-serialisable"):
        launch.start("tests.add", {"x": 1})
    assert not Workflow.objects.exists()


@pytest.mark.django_db
def test_start__idempotency_key_returns_the_first_workflow():
    first = launch.start("tests.add", {"x": 1}, idempotency_key="k-1")
    again = launch.start("tests.add", {"x": "1"}, idempotency_key="k-1")

    assert (first.status, again.status) == ("started", "replayed")
    assert again.workflow.pk == first.workflow.pk and Workflow.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("name, params, user", [
    ("tests.add", {"x": 2}, None),  # other parameters
    ("tests.secret", {"x": 1}, None),  # other definition
    ("tests.add", {"x": 1}, "bob"),  # other user
])
def test_start__idempotency_key_reused_for_another_request_is_a_conflict(name, params, user):
    launch.start("tests.add", {"x": 1}, idempotency_key="k-1")
    other = User.objects.create_user(user) if user else None
    with pytest.raises(launch.IdempotencyConflict, match="already used for another request"):
        launch.start(name, params, idempotency_key="k-1", user=other)
    assert Workflow.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "   ", "k" * 256, 12])
def test_start__bad_idempotency_key_is_refused(key):
    with pytest.raises(launch.StartError, match="idempotency key must be a non-empty string"):
        launch.start("tests.add", {"x": 1}, idempotency_key=key)
    assert not Workflow.objects.exists()


@pytest.mark.django_db
def test_start__idempotency_race_loser_returns_the_winner(monkeypatch):
    """The pre-check misses a row inserted meanwhile: the unique constraint decides."""
    winner = launch.start("tests.add", {"x": 1}, idempotency_key="race").workflow
    monkeypatch.setattr(launch, "_replay", lambda *a, _real=launch._replay: None)
    with pytest.raises(IntegrityError):  # no replay possible: the error is not swallowed
        launch.start("tests.add", {"x": 1}, idempotency_key="race")
    monkeypatch.undo()
    calls = []
    real = launch._replay

    def first_misses(*args):
        calls.append(args)
        return None if len(calls) == 1 else real(*args)

    monkeypatch.setattr(launch, "_replay", first_misses)
    outcome = launch.start("tests.add", {"x": 1}, idempotency_key="race")
    assert outcome.status == "replayed" and outcome.workflow.pk == winner.pk and len(calls) == 2
    assert Workflow.objects.count() == 1


@pytest.mark.django_db
def test_run_again__same_definition_and_parameters():
    first = launch.start("tests.report", {"day": "2026-11-27", "hosts": 3}).workflow
    first.refresh_from_db()
    again = launch.run_again(first, trigger="admin").workflow
    again.refresh_from_db()
    assert again.pk != first.pk
    assert (again.definition, again.parameters, again.trigger) == ("tests.report", first.parameters, "admin")


@pytest.mark.django_db
def test_run_again__a_workflow_built_by_code_is_refused():
    wf = Workflow()
    wf.add_signature(add.si(1, 1))
    wf.apply_async()
    with pytest.raises(launch.StartError, match="was not started from a catalogue definition"):
        launch.run_again(wf)


@pytest.mark.django_db
def test_definition__user_can_start_needs_both_permissions():
    definition = catalogue.registry.get("tests.secret")
    user = User.objects.create_user("u")
    assert not definition.user_can_start(user)
    user.user_permissions.add(Permission.objects.get(codename="start_workflow"))
    user = User.objects.get(pk=user.pk)
    assert catalogue.registry.get("tests.add").user_can_start(user)
    assert not definition.user_can_start(user)
    user.user_permissions.add(Permission.objects.get(codename="view_execution"))
    assert definition.user_can_start(User.objects.get(pk=user.pk))


# -- overlap policy, decided without a worker (the worker runs are in test_catalogue_schedule.py) --


@pytest.mark.django_db
@pytest.mark.parametrize("policy, statuses, workflows, queued", [
    ("allow", ["started", "started"], 2, 0),
    ("skip", ["started", "skipped"], 1, 0),
    ("queue", ["started", "queued"], 1, 1),
])
def test_start_scheduled__overlap_policy_while_a_run_is_active(policy, statuses, workflows, queued):
    outcomes = [launch.start_scheduled(f"tests.hold-{policy}", {"flag": "f"}) for _ in range(2)]
    assert [o.status for o in outcomes] == statuses
    assert Workflow.objects.filter(definition=f"tests.hold-{policy}", trigger="schedule").count() == workflows
    assert QueuedRun.objects.count() == queued
    if policy != "allow":  # the answer names the run that is still going
        assert outcomes[1].workflow.pk == outcomes[0].workflow.pk


@pytest.mark.django_db
def test_start_scheduled__bad_parameters_queue_nothing():
    launch.start_scheduled("tests.hold-queue", {"flag": "f"})
    with pytest.raises(launch.ParameterError, match="flag: This field is required"):
        launch.start_scheduled("tests.hold-queue", {})
    assert QueuedRun.objects.count() == 0 and Workflow.objects.count() == 1


@pytest.mark.django_db
def test_start_scheduled__queue_left_behind_by_a_dead_process_is_drained_in_order():
    QueuedRun.objects.create(definition="tests.hold-queue", parameters={"flag": "older"})
    outcome = launch.start_scheduled("tests.hold-queue", {"flag": "newer"})
    assert outcome.status == "started" and outcome.workflow.parameters == {"flag": "older"}
    assert outcome.workflow.trigger == "queue"
    assert list(QueuedRun.objects.values_list("parameters", flat=True)) == [{"flag": "newer"}]


@pytest.mark.django_db
def test_start_next_queued__drops_a_run_whose_parameters_no_longer_validate(caplog):
    QueuedRun.objects.create(definition="tests.hold-queue", parameters={"flag": ""})
    assert launch.start_next_queued("tests.hold-queue") is None
    assert not QueuedRun.objects.exists() and not Workflow.objects.exists()
    assert "Queued run of tests.hold-queue dropped" in caplog.text


@pytest.mark.django_db
def test_start_scheduled__a_run_ending_while_the_start_is_queued_does_not_strand_it(monkeypatch):
    """The run ends (and its receiver finds no queued row) between the check and the insert."""
    from django_dyrygent import engine

    first = launch.start_scheduled("tests.hold-queue", {"flag": "f1"}).workflow
    real_create = QueuedRun.objects.create

    def end_first_then_create(**kwargs):
        engine.cancel(first.pk)  # the run ends right here; nothing was queued yet
        return real_create(**kwargs)

    monkeypatch.setattr(QueuedRun.objects, "create", end_first_then_create)
    outcome = launch.start_scheduled("tests.hold-queue", {"flag": "f2"})
    assert outcome.status == "started" and outcome.workflow.parameters == {"flag": "f2"}
    assert outcome.workflow.trigger == "queue" and not QueuedRun.objects.exists()


# -- concurrency keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"concurrency_limit": 2}, "'keyed': concurrency_limit=2 was given without a concurrency_key"),
    ({"concurrency_key": "c-{customer}", "concurrency_limit": 0}, "'keyed': concurrency_limit of key"),
    ({"concurrency_key": "c-{customer}"}, "'keyed': concurrency_limit of key 'c-{customer}' must be"),
])
def test_register__bad_concurrency_is_refused_naming_the_definition(site, kwargs, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        catalogue.register("keyed", site=site, **kwargs)(lambda: None)
    assert len(site) == 0


@pytest.mark.django_db
def test_start__a_definition_s_concurrency_key_is_filled_from_the_parameters(site):
    @catalogue.register("billing", concurrency_key="customer-{customer}", concurrency_limit=2, site=site)
    def billing(customer: int):
        wf = Workflow()
        wf.add_signature(add.si(1, 2))
        wf.add_signature(add.si(2, 3), concurrency_key="ledger", concurrency_limit=1)  # its own wins
        return wf

    wf = launch.start(site.get("billing"), {"customer": "42"}).workflow
    assert sorted(wf.nodes.values_list("concurrency_key", "concurrency_limit")) == [
        ("customer-42", 2), ("ledger", 1)]


def test_register__a_key_template_naming_no_parameter_is_refused(site):
    def typo(customer: int = 1):
        return add.si(1, 2)

    with pytest.raises(ImproperlyConfigured, match=r"'typo': concurrency_key 'customer-\{custmer\}' names custmer, "
                                                   r"not parameters of it \(customer\)"):
        catalogue.register("typo", concurrency_key="customer-{custmer}", concurrency_limit=1, site=site)(typo)
    assert len(site) == 0


@pytest.mark.django_db
def test_start__a_key_too_long_from_the_parameters_is_a_parameter_error(site):

    @catalogue.register("long", concurrency_key="c-{name}", concurrency_limit=1, site=site)
    def long(name: str = "x"):
        return add.si(1, 2)

    with pytest.raises(launch.ParameterError) as refused:
        launch.start(site.get("long"), {"name": "n" * 300})
    assert "at most 200 characters" in str(refused.value.errors)
    assert not Workflow.objects.exists()
