"""A blank parameter means its default at every door; a required one left blank is refused at every door.

``tests.add`` is ``add_numbers(x: int, y: int = 2, label: str = "")``: ``y`` is
optional with a default, ``x`` required. The factory builds ``add.si(x, y)``,
so the first node's arguments show what the factory was called with.
"""

import datetime
import json

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from django_dyrygent import launch
from django_dyrygent.catalogue import registry
from django_dyrygent.models import Workflow

pytestmark = pytest.mark.django_db


def staff_client():
    user = User.objects.create_user("starter", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["start_workflow", "view_workflow"]))
    client = Client()
    client.force_login(user)
    return client


def first_args(wf):
    return wf.nodes.order_by("position").first().signature["args"]


def only_workflow():
    (wf,) = Workflow.objects.all()
    return wf


def admin_start(params):
    return staff_client().post(reverse("admin:django_dyrygent_workflow_start", args=["tests.add"]), params)


def api_start(params):
    return staff_client().post("/dyrygent/definitions/tests.add/start/", data=json.dumps({"params": params}),
                               content_type="application/json")


def cli_start(*pairs):
    args = []
    for pair in pairs:
        args += ["--param", pair]
    call_command("dyrygent_run", "tests.add", *args, stdout=open("/dev/null", "w"))


def test_admin_start__blank_optional_parameter_gets_its_default():
    response = admin_start({"x": "1", "y": "", "label": ""})
    assert response.status_code == 302
    wf = only_workflow()
    assert wf.parameters["y"] == 2
    assert first_args(wf) == [1, 2]


@pytest.mark.parametrize("blank", [None, ""])
def test_api_start__null_or_empty_optional_parameter_gets_its_default(blank):
    response = api_start({"x": 1, "y": blank})
    assert response.status_code == 201, response.content
    wf = only_workflow()
    assert response.json()["parameters"]["y"] == 2
    assert first_args(wf) == [1, 2]


def test_dyrygent_run__empty_param_gets_its_default():
    cli_start("x=1", "y=")
    wf = only_workflow()
    assert wf.parameters["y"] == 2
    assert first_args(wf) == [1, 2]


def test_launch_start__blank_values_mean_the_defaults():
    outcome = launch.start("tests.add", {"x": 3, "y": None, "label": ""})
    assert outcome.workflow.parameters == {"x": 3, "y": 2, "label": ""}


def test_admin_start__blank_required_parameter_is_refused():
    response = admin_start({"x": "", "y": "5"})
    assert response.status_code == 200
    assert response.context["form"].errors == {"x": ["This field is required."]}
    assert not Workflow.objects.exists()


@pytest.mark.parametrize("blank", [None, ""])
def test_api_start__blank_required_parameter_is_400(blank):
    response = api_start({"x": blank})
    assert response.status_code == 400
    assert response.json()["errors"] == {"x": ["This field is required."]}
    assert not Workflow.objects.exists()


def test_dyrygent_run__blank_required_param_is_refused():
    with pytest.raises(CommandError, match="x: This field is required"):
        cli_start("x=")
    assert not Workflow.objects.exists()


def test_definition_bind__custom_form_blank_field_with_initial_gets_it():
    form = registry.get("tests.report").bind({"day": "2026-11-27", "hosts": "", "mode": None})
    assert form.is_valid(), form.errors
    assert registry.get("tests.report").parameters(form) == {
        "day": datetime.date(2026, 11, 27), "hosts": 2, "mode": "fast",
    }
