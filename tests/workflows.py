"""Workflow definitions of the test suite, found by the catalogue's autodiscovery (tests is an app)."""

from datetime import timedelta

from celery import chain
from django import forms
from django.core.exceptions import ValidationError

from django_dyrygent import catalogue
from django_dyrygent.models import Workflow

from .tasks import add, hold, mul, record


@catalogue.register("tests.add", pass_results=True, tasks_options={"priority": 3},
                    deadline=timedelta(hours=1))
def add_numbers(x: int, y: int = 2, label: str = ""):
    """Add two numbers, then multiply by ten.

    The parameters come from the type hints.
    """
    wf = Workflow(name=label)
    wf.add_celery_canvas(chain(add.si(x, y), mul.s(10)))
    return wf


class ReportForm(forms.Form):
    day = forms.DateField(help_text="The day to report on.")
    hosts = forms.IntegerField(min_value=1, max_value=5, initial=2)
    mode = forms.ChoiceField(choices=[("fast", "fast"), ("full", "full")], initial="fast")

    def clean(self):
        data = super().clean()
        if data.get("mode") == "full" and data.get("hosts", 0) > 3:
            raise ValidationError("A full report covers at most 3 hosts.")
        return data


@catalogue.register("tests.report", form=ReportForm, description="A report built from a form of its own.")
def report(day, hosts, mode):
    if hosts == 4:
        raise ValueError("4 hosts is unlucky: the factory refuses it.")
    return chain(*(record.si(f"report-{day.isoformat()}-{mode}-{h}") for h in range(hosts)))


def _hold(flag: str):
    wf = Workflow()
    wf.add_celery_canvas(chain(record.si(f"start:{flag}"), hold.si(flag)))
    return wf


for _policy in ("skip", "queue", "allow"):
    catalogue.register(f"tests.hold-{_policy}", overlap=_policy,
                       description=f"Wait for a release flag (overlap: {_policy}).")(_hold)


@catalogue.register("tests.secret", permission="tests.view_execution")
def secret(x: int = 1):
    """Needs a permission of its own on top of start_workflow."""
    return add.si(x, x)
