import datetime
import decimal
import uuid

import pytest
from django.core.exceptions import ValidationError

from django_dyrygent.engine import messaging
from django_dyrygent.models import Workflow, WorkflowNode
from django_dyrygent.serialization import NotSerialisable, from_tree, to_tree
from tests.tasks import identity

VALUES = [
    datetime.datetime(2026, 11, 26, 12, 30, tzinfo=datetime.timezone.utc),
    datetime.date(2026, 1, 2),
    uuid.UUID("85ee388d-423a-4aec-afbe-c8d360960830"),
    decimal.Decimal("1.50"),
    {"nested": [1, "two", None]},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_tree__round_trips_what_celerys_json_serializer_carries(value):
    assert from_tree(to_tree(value)) == value


def test_tree__refuses_what_a_celery_json_message_cannot_carry():
    with pytest.raises(NotSerialisable):
        to_tree(object())
    with pytest.raises(NotSerialisable):
        to_tree(float("nan"))


@pytest.mark.django_db
def test_apply_async__accepts_datetimes_and_uuids_in_arguments_and_payloads(monkeypatch):
    monkeypatch.setattr(messaging, "send_tick", lambda *a, **k: None)
    when = VALUES[0]
    wf = Workflow(custom_payload={"at": when})
    node = wf.add_signature(identity.s(when, VALUES[2]))
    node.custom_payload["day"] = VALUES[1]
    wf.apply_async()
    stored = WorkflowNode.objects.get(pk=node.pk)
    assert from_tree(stored.signature["args"]) == [when, VALUES[2]]


@pytest.mark.django_db
def test_apply_async__names_the_node_whose_arguments_cannot_be_serialised():
    wf = Workflow()
    wf.add_signature(identity.s(object()), )
    with pytest.raises(ValidationError, match="args are not JSON-serialisable"):
        wf.apply_async()
    assert not Workflow.objects.exists()


@pytest.mark.worker
def test_pass_results__a_datetime_result_reaches_the_next_task_as_a_datetime(worker):
    from celery import chain

    when = VALUES[0]
    wf = Workflow(pass_results=True)
    wf.add_celery_canvas(chain(identity.si(when), identity.s()))
    wf.apply_async()
    assert wf.wait(timeout=30) == Workflow.State.SUCCESS
    last = wf.nodes.order_by("-position").first()
    assert last.get_result() == when
