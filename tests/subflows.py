"""Factories that sub-workflow nodes run (``Workflow.add_subworkflow``): module level, imported by path."""

from celery import chain, group

from django_dyrygent.models import Workflow

from .tasks import add, fail, hold, mul, record


def adder(x, y=2):
    """(x + y) * 10: a chain whose last result is the child's result."""
    return chain(add.si(x, y), mul.s(10))


def pair(label):
    """Two leaves: the child's result is the list of both."""
    return group(record.si(f"{label}-a"), record.si(f"{label}-b"))


def failing(message="child boom"):
    wf = Workflow(name="failing child")
    wf.add_signature(fail.si(message))
    return wf


def held(flag):
    """Runs until the test releases ``flag`` (tests.hold)."""
    wf = Workflow(name=f"held {flag}")
    wf.add_celery_canvas(chain(record.si(f"child-start:{flag}"), hold.si(flag)))
    return wf


def fail_after(flag):
    """Waits for ``flag``, then fails: a child that fails when the test says."""
    wf = Workflow(name=f"fail after {flag}")
    wf.add_celery_canvas(chain(hold.si(flag), fail.si(f"after {flag}")))
    return wf


def nested(level=0):
    """Runs itself one level deeper, forever: the depth cap stops it."""
    wf = Workflow(name=f"level {level}")
    wf.add_subworkflow(nested, {"level": level + 1})
    return wf


def not_a_workflow():
    return 42
