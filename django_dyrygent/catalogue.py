"""The workflow catalogue: named definitions that build a workflow from validated parameters.

A definition is a factory function registered under a name, with a Django
``Form`` that validates its parameters (given, or derived from the factory's
type hints). Every door that starts a workflow by name (the admin's "Start a
workflow" page, ``dyrygent_run NAME``, the JSON API, a Celery beat schedule)
goes through the same form, so a value refused in one door is refused in all
of them, with the same message.

Definitions live in each installed app's ``workflows.py``, imported at start-up
like ``admin.py`` (``autodiscover`` in ``AppConfig.ready``), so a worker that
runs a scheduled start knows every definition the web process knows::

    from django_dyrygent import catalogue

    @catalogue.register("nightly-report", overlap="skip", deadline=timedelta(hours=2))
    def nightly_report(day: date, limit: int = 100, dry_run: bool = False):
        \"\"\"Rebuild the report of one day.\"\"\"
        wf = Workflow(name=f"report {day}")
        wf.add_celery_canvas(chain(fetch.si(str(day), limit), render.s(dry_run=dry_run)))
        return wf

This module knows nothing about rows: starting a definition is ``launch.py``.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import inspect
import re
import string
import types
import typing
import uuid
from dataclasses import dataclass, field
from importlib import import_module

from django import forms
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db.models import Model, QuerySet
from django.forms.utils import pretty_name
from django.http import QueryDict
from django.utils.module_loading import module_has_submodule

from .canvas import concurrency_fields
from .conf import settings
from .states import Overlap

#: ``request.user``: any user model with ``has_perm`` (the stubs' AbstractBaseUser has none), or None.
User = typing.Any
#: A workflow factory: called with the form's cleaned data, returns an unsaved Workflow or a canvas.
Factory = typing.Callable[..., typing.Any]
F = typing.TypeVar("F", bound=Factory)

#: The custom model permission every door checks before starting a definition.
START_PERMISSION = "django_dyrygent.start_workflow"
#: Names are used in URLs and on the command line: no spaces, no slashes.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")

#: Type hint -> form field for definitions without a form of their own.
HINT_FIELDS = {
    int: forms.IntegerField,
    float: forms.FloatField,
    str: forms.CharField,
    bool: forms.BooleanField,
    decimal.Decimal: forms.DecimalField,
    datetime.date: forms.DateField,
    datetime.datetime: forms.DateTimeField,
    datetime.time: forms.TimeField,
    datetime.timedelta: forms.DurationField,
    uuid.UUID: forms.UUIDField,
    dict: forms.JSONField,
    list: forms.JSONField,
}


#: Widgets and error messages of the time fields: the browser's own pickers, and an error that names the format.
TIME_FIELDS: dict[type[forms.Field], tuple[forms.Widget, str]] = {
    forms.DateField: (forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
                      "Enter a date as YYYY-MM-DD, e.g. 2026-12-07."),
    forms.DateTimeField: (forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
                          "Enter a date and time as YYYY-MM-DD HH:MM[:SS], e.g. 2026-12-07 14:30."),
    forms.TimeField: (forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
                      "Enter a time as HH:MM[:SS], e.g. 14:30."),
    forms.DurationField: (forms.TextInput(), "Enter a duration as [DD] [HH:[MM:]]SS, e.g. 1:30:00 or 2 00:00:00."),
}
#: "name: text" lines of a Google-style "Args:" section, for help texts.
ARG_LINE_RE = re.compile(r"^ {2,4}(\w+)(?:\s*\([^)]*\))?:\s*(.+)$")


#: Form field class -> the type name the API and ``dyrygent_run --list`` show.
FIELD_TYPES = {
    "CharField": "string", "IntegerField": "integer", "FloatField": "number", "DecimalField": "decimal",
    "BooleanField": "boolean", "DateField": "date", "DateTimeField": "datetime", "TimeField": "time",
    "DurationField": "duration", "UUIDField": "uuid", "JSONField": "json", "ChoiceField": "choice",
    "TypedChoiceField": "choice", "MultipleChoiceField": "choices", "TypedMultipleChoiceField": "choices",
    "EmailField": "email", "URLField": "url", "SlugField": "slug",
}


class UnknownDefinition(LookupError):
    """No definition is registered under that name."""


# -- forms derived from type hints --------------------------------------------------------------


def _coerce_like(value: typing.Any) -> typing.Callable[[typing.Any], typing.Any]:
    """The choices' own type (int, str...), to turn the submitted text back into one of them.

    Typed as a callable: mypy does not match ``type[Any]`` against the stubs' coerce protocol.
    """
    return type(value)


def arg_help(factory: Factory) -> dict[str, str]:
    """Each parameter's text in the factory's "Args:" docstring section (Google style), by name.

    A parameter's line is indented 2 to 4 spaces under the header; deeper
    lines continue it.
    """
    found: dict[str, str] = {}
    inside, current = False, ""
    for line in (inspect.getdoc(factory) or "").splitlines():
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            inside = True
        elif inside and line and not line.startswith(" "):
            break  # the next section
        elif inside and (match := ARG_LINE_RE.match(line)):
            current = match.group(1)
            found[current] = match.group(2).strip()
        elif inside and current and line.strip():
            found[current] += " " + line.strip()
    return found


def _field_for(
    definition_name: str, param: inspect.Parameter, hint: typing.Any, help_text: str = "",
) -> forms.Field:
    """One form field for one factory parameter; a parameter with a default is optional."""
    has_default = param.default is not inspect.Parameter.empty
    optional = has_default
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            hint, optional = args[0], True
            origin = typing.get_origin(hint)
    kwargs: dict[str, typing.Any] = {"required": not optional, "label": pretty_name(param.name),
                                     "help_text": help_text}
    if has_default and param.default is not None:
        kwargs["initial"] = param.default.value if isinstance(param.default, enum.Enum) else param.default
    if origin is typing.Literal:
        return forms.TypedChoiceField(
            choices=[(v, v) for v in typing.get_args(hint)],
            coerce=_coerce_like(typing.get_args(hint)[0]), **kwargs,
        )
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return forms.TypedChoiceField(
            choices=[(m.value, m.name.replace("_", " ").lower()) for m in hint],
            coerce=_coerce_like(next(iter(hint)).value), **kwargs,
        )
    field_class = HINT_FIELDS.get(origin or hint)
    if field_class is None:
        raise ImproperlyConfigured(
            f"Workflow definition {definition_name!r}: parameter {param.name!r} has type hint "
            f"{hint!r}, which has no form field; use one of "
            f"{', '.join(sorted(t.__name__ for t in HINT_FIELDS))}, a Literal or an Enum, "
            "or give the definition a form= of its own."
        )
    if field_class is forms.BooleanField:
        kwargs["required"] = False  # an unticked box is False, not a missing value
    if field_class in TIME_FIELDS:
        widget, invalid = TIME_FIELDS[field_class]
        kwargs["widget"] = widget
        kwargs["error_messages"] = {"invalid": invalid}
        if field_class is forms.DateTimeField:
            kwargs["input_formats"] = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S",
                                       "%Y-%m-%d"]
        if not kwargs["help_text"]:
            kwargs["help_text"] = invalid.removeprefix("Enter ").rstrip(".")
    return field_class(**kwargs)


def form_from_signature(definition_name: str, factory: Factory) -> type[forms.Form]:
    """A ``Form`` class with one field per parameter of ``factory``, from its type hints."""
    try:
        hints = typing.get_type_hints(factory)
    except Exception as exc:  # an unresolvable forward reference, a typo in a hint
        raise ImproperlyConfigured(
            f"Workflow definition {definition_name!r}: cannot read the type hints of "
            f"{factory.__qualname__}: {exc}"
        ) from exc
    fields: dict[str, forms.Field] = {}
    helps = arg_help(factory)
    for param in inspect.signature(factory).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name not in hints:
            raise ImproperlyConfigured(
                f"Workflow definition {definition_name!r}: parameter {param.name!r} of "
                f"{factory.__qualname__} has no type hint; give it one (int, str, date, ...) "
                "or give the definition a form= of its own."
            )
        fields[param.name] = _field_for(definition_name, param, hints[param.name], helps.get(param.name, ""))
    return type(f"{factory.__name__.title().replace('_', '')}Form", (forms.Form,), fields)


# -- definitions ----------------------------------------------------------------------------------


def _jsonable(value: typing.Any) -> typing.Any:
    """What a cleaned value is stored as: model instances by primary key, enums by value."""
    if isinstance(value, Model):
        return value.pk
    if isinstance(value, QuerySet):
        return [obj.pk for obj in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _is_blank(value: typing.Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _blanks_filled(form: forms.BaseForm) -> typing.Any:
    """``form.data`` with each blank value of a field that has an initial value set to that value."""
    data = form.data
    filled = None
    for name, form_field in form.fields.items():
        if name not in data or not _is_blank(data[name]):
            continue
        initial = form.get_initial_for_field(form_field, name)
        if initial is None:
            continue
        if filled is None:
            # A QueryDict's copy is mutable and keeps its lists; any other mapping becomes a dict.
            filled = data.copy() if isinstance(data, QueryDict) else dict(data)
        if isinstance(filled, QueryDict) and isinstance(initial, (list, tuple)):
            filled.setlist(name, list(initial))
        else:
            filled[name] = initial
    return data if filled is None else filled


@dataclass
class Definition:
    """A named way to build a workflow; see ``register``."""

    name: str
    factory: Factory
    description: str = ""
    form_class: type[forms.BaseForm] | None = None  # register() always gives one
    #: An extra permission ("app_label.codename") needed to start this definition.
    permission: str = ""
    overlap: str = Overlap.ALLOW
    #: Defaults applied to the built workflow where the factory left them unset.
    options: dict[str, typing.Any] = field(default_factory=dict)
    tasks_options: dict[str, typing.Any] = field(default_factory=dict)
    deadline: datetime.timedelta | None = None
    pass_results: bool | None = None
    #: Concurrency key of every task the factory left without one: a ``str.format`` template
    #: filled with the parameters ("customer-{customer_id}"), and its limit.
    concurrency_key: str | None = None
    concurrency_limit: int | None = None

    def __post_init__(self) -> None:
        try:
            concurrency_fields(self.concurrency_key, self.concurrency_limit)
        except ValidationError as exc:
            raise ImproperlyConfigured(f"Workflow definition {self.name!r}: {' '.join(exc.messages)}") from None
        if self.concurrency_key is not None and self.form_class is not None:
            named = {re.split(r"[.\[]", field_name, maxsplit=1)[0]
                     for _text, field_name, _spec, _conv in string.Formatter().parse(self.concurrency_key)
                     if field_name is not None}
            parameters = list(self.new_form().fields)
            unknown = sorted(named - set(parameters))
            if unknown:
                raise ImproperlyConfigured(
                    f"Workflow definition {self.name!r}: concurrency_key {self.concurrency_key!r} names "
                    f"{', '.join(unknown)}, not parameters of it ({', '.join(parameters) or 'none'})."
                )

    def key_for(self, parameters: dict[str, typing.Any]) -> str | None:
        """The concurrency key of a run with these (cleaned) parameters; None without one."""
        if self.concurrency_key is None:
            return None
        try:
            return self.concurrency_key.format(**parameters)
        except (KeyError, IndexError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"Workflow definition {self.name!r}: concurrency_key {self.concurrency_key!r} cannot be "
                f"filled from its parameters ({', '.join(sorted(parameters)) or 'none'}): {exc!r}"
            ) from None

    @property
    def title(self) -> str:
        return self.description.strip().splitlines()[0] if self.description.strip() else self.name

    def new_form(self, **kwargs: typing.Any) -> forms.BaseForm:
        """An instance of the definition's form (``kwargs``: data, files...).

        A bound form gets each blank value (empty text, ``None``) replaced by
        the field's initial value before validation: blank means "the default"
        at every door, while a field without a default stays blank and so is
        refused when it is required. An absent key is left alone: an unticked
        checkbox is absent and means False.
        """
        assert self.form_class is not None, "a Definition is made by register(), which sets form_class"
        form = self.form_class(**kwargs)
        if form.is_bound:
            form.data = _blanks_filled(form)
        return form

    def initial(self) -> dict[str, typing.Any]:
        """The form's initial values: what a start without that parameter gets."""
        form = self.new_form()
        return {name: form.get_initial_for_field(f, name) for name, f in form.fields.items()
                if form.get_initial_for_field(f, name) is not None}

    def bind(self, params: object) -> forms.BaseForm:
        """A bound form for ``params`` (a dict, e.g. from JSON), defaults filled in.

        Unlike an HTML form, a key the form does not know is an error, not
        silently dropped: a typo in an API call or a ``--param`` must not start
        a run with a default the caller did not mean.
        """
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise TypeError(f"parameters must be an object (a dict), not {type(params).__name__}")
        form = self.new_form(data={**self.initial(), **params})
        unknown = sorted(set(params) - set(form.fields))
        if unknown:
            form.full_clean()
            known = ", ".join(form.fields) or "none"
            form.add_error(None, f"Unknown parameter(s) {', '.join(unknown)}; {self.name} takes: {known}.")
        return form

    def parameters(self, form: forms.BaseForm) -> dict[str, typing.Any]:
        """The cleaned data as stored on the workflow (JSON-ready, re-bindable to the form)."""
        return {name: _jsonable(value) for name, value in form.cleaned_data.items()}

    def fields_schema(self) -> list[dict[str, typing.Any]]:
        """The parameters as JSON data: name, type, required, default, help, choices."""
        form = self.new_form()
        out: list[dict[str, typing.Any]] = []
        for name, f in form.fields.items():
            initial = form.get_initial_for_field(f, name)
            item: dict[str, typing.Any] = {
                "name": name,
                "type": FIELD_TYPES.get(type(f).__name__, type(f).__name__.removesuffix("Field").lower()),
                # A field with an initial value gets it when a start leaves it out.
                "required": f.required and initial is None,
                "label": str(form[name].label),
                "help_text": str(f.help_text or ""),
            }
            if initial is not None:
                item["default"] = _jsonable(initial)
            choices = getattr(f, "choices", None)
            if choices is not None:
                item["choices"] = [_jsonable(value) for value, _label in choices]
            out.append(item)
        return out

    def user_can_start(self, user: User) -> bool:
        """The catalogue permission, plus this definition's own one when it has one."""
        return bool(
            user is not None and user.is_active and user.has_perm(START_PERMISSION)
            and (not self.permission or user.has_perm(self.permission))
        )


class Registry:
    """Definitions by name. One module-level instance, ``registry``, like ``admin.site``."""

    def __init__(self) -> None:
        self._definitions: dict[str, Definition] = {}

    def register(self, definition: Definition) -> Definition:
        if not NAME_RE.match(definition.name or ""):
            raise ImproperlyConfigured(
                f"Invalid workflow definition name {definition.name!r}: use letters, digits and "
                "_ . : - (no spaces or slashes), at most 100 characters, starting with a letter or digit."
            )
        if definition.overlap not in Overlap.values:
            raise ImproperlyConfigured(
                f"Workflow definition {definition.name!r}: overlap must be one of "
                f"{', '.join(Overlap.values)}, not {definition.overlap!r}."
            )
        current = self._definitions.get(definition.name)
        if current is not None and _origin(current.factory) != _origin(definition.factory):
            raise ImproperlyConfigured(
                f"Workflow definition {definition.name!r} is registered twice: by "
                f"{_origin(current.factory)} and by {_origin(definition.factory)}."
            )
        self._definitions[definition.name] = definition
        return definition

    def unregister(self, name: str) -> None:
        self._definitions.pop(name, None)

    def get(self, name: str) -> Definition:
        try:
            return self._definitions[name]
        except (KeyError, TypeError):
            raise UnknownDefinition(f"No workflow definition named {name!r}.") from None

    def __contains__(self, name: object) -> bool:
        return name in self._definitions

    def __iter__(self) -> typing.Iterator[Definition]:
        return iter(sorted(self._definitions.values(), key=lambda d: d.name))

    def __len__(self) -> int:
        return len(self._definitions)

    def for_user(self, user: User) -> list[Definition]:
        return [d for d in self if d.user_can_start(user)]


def _origin(factory: Factory) -> str:
    return f"{factory.__module__}.{factory.__qualname__}"


registry = Registry()


@typing.overload
def register(name: F) -> F: ...
@typing.overload
def register(
    name: str | None = None, *, description: str | None = None, form: type[forms.BaseForm] | None = None,
    permission: str = "", overlap: str = Overlap.ALLOW, options: dict[str, typing.Any] | None = None,
    tasks_options: dict[str, typing.Any] | None = None, deadline: datetime.timedelta | None = None,
    pass_results: bool | None = None, site: Registry | None = None,
    concurrency_key: str | None = None, concurrency_limit: int | None = None,
) -> typing.Callable[[F], F]: ...
def register(
    name: str | Factory | None = None, *, description: str | None = None, form: type[forms.BaseForm] | None = None,
    permission: str = "", overlap: str = Overlap.ALLOW, options: dict[str, typing.Any] | None = None,
    tasks_options: dict[str, typing.Any] | None = None, deadline: datetime.timedelta | None = None,
    pass_results: bool | None = None, site: Registry | None = None,
    concurrency_key: str | None = None, concurrency_limit: int | None = None,
) -> typing.Any:
    """Decorator: register the decorated factory as a workflow definition.

    Usable bare (``@catalogue.register``) or with arguments. ``name`` defaults
    to the function's name; ``description`` to its
    docstring. ``form``: a ``forms.Form`` class validating the parameters;
    without it one is derived from the factory's type hints. The factory is
    called with the form's ``cleaned_data`` as keyword arguments and returns
    an unsaved ``Workflow`` (or a Celery signature/canvas, wrapped in one).
    ``overlap`` ("allow", "skip" or "queue") is what a scheduled start does
    while a run of this definition is still going. ``options``,
    ``tasks_options``, ``deadline`` (a timedelta from the start) and
    ``pass_results`` are defaults for what the factory leaves unset.
    ``permission``: an extra "app_label.codename" permission needed to start
    it, on top of ``django_dyrygent.start_workflow``. ``concurrency_key`` (a
    ``str.format`` template of the parameters, e.g. "customer-{customer_id}")
    and ``concurrency_limit``: at most that many tasks of runs with the same
    key run at once; the tasks the factory gave a key of their own keep it.
    """

    def decorator(factory: F) -> F:
        # A bare @register's factory came as ``name`` and was swapped for None below.
        definition_name = typing.cast("str | None", name) or factory.__name__
        form_class = form if form is not None else form_from_signature(definition_name, factory)
        if not (isinstance(form_class, type) and issubclass(form_class, forms.BaseForm)):
            raise ImproperlyConfigured(
                f"Workflow definition {definition_name!r}: form= must be a Form class, not {form_class!r}."
            )
        (registry if site is None else site).register(Definition(
            name=definition_name,
            factory=factory,
            description=inspect.cleandoc(description if description is not None else factory.__doc__ or ""),
            form_class=form_class,
            permission=permission,
            overlap=overlap,
            options=dict(options or {}),
            tasks_options=dict(tasks_options or {}),
            deadline=deadline,
            pass_results=pass_results,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
        ))
        return factory

    if callable(name):  # bare @catalogue.register, without parentheses
        factory, name = name, None
        return decorator(factory)
    return decorator


def autodiscover() -> None:
    """Import ``<app>.workflows`` of every installed app, as the admin imports ``admin.py``.

    ``django_dyrygent.workflows`` itself is skipped: it is the celery-dyrygent
    compatible import path (``from django_dyrygent.workflows import Workflow``),
    not a place for definitions. ``DYRYGENT_CATALOGUE_MODULE`` names another
    module, or ``None`` turns discovery off (then import your definitions yourself).
    """
    module_name = settings.CATALOGUE_MODULE
    if not module_name:
        return
    for app_config in apps.get_app_configs():
        if app_config.name == __package__:
            continue
        if module_has_submodule(app_config.module, module_name):
            import_module(f"{app_config.name}.{module_name}")
