"""Tasks the end-to-end tests run on a real worker."""

import time

from celery import shared_task

from .models import Execution


@shared_task(bind=True, name="tests.record")
def record(self, label, *args, sleep=0, **kwargs):
    if sleep:
        time.sleep(sleep)
    Execution.objects.create(label=label, task_id=self.request.id or "")
    return label


@shared_task(name="tests.add")
def add(x, y):
    return x + y


@shared_task(name="tests.mul")
def mul(x, y):
    return x * y


@shared_task(name="tests.tsum")
def tsum(values):
    return sum(values)


@shared_task(name="tests.identity")
def identity(*args):
    return list(args) if len(args) != 1 else args[0]


@shared_task(name="tests.noop")
def noop(*args, **kwargs):
    return None


class Boom(Exception):
    pass


@shared_task(bind=True, name="tests.fail")
def fail(self, message="boom", *args):
    Execution.objects.create(label=f"fail:{message}", task_id=self.request.id or "")
    raise Boom(message)


@shared_task(bind=True, name="tests.flaky", max_retries=3)
def flaky(self, label, failures=1):
    if self.request.retries < failures:
        raise self.retry(countdown=0.1, exc=Boom(f"attempt {self.request.retries}"))
    Execution.objects.create(label=label, task_id=self.request.id or "")
    return self.request.retries


@shared_task(name="tests.big")
def big(size):
    return "x" * size


@shared_task(name="tests.not_json")
def not_json():
    return object()


@shared_task(name="tests.make_list")
def make_list(n):
    return list(range(n))


@shared_task(name="tests.square")
def square(x):
    return x * x


@shared_task(name="tests.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


# -- end-to-end suites (test_e2e, test_operations_e2e, test_pass_results, test_signals) --


@shared_task(bind=True, name="tests.request_info")
def request_info(self, *args):
    """What the worker saw of the message: lets tests check that publish options arrived."""
    headers = self.request.headers or {}
    delivery = self.request.delivery_info or {}
    return {
        "x_tag": getattr(self.request, "x_tag", None) or headers.get("x_tag"),
        "priority": delivery.get("priority"),
        "routing_key": delivery.get("routing_key"),
        "workflow": getattr(self.request, "dyrygent_workflow", None) or headers.get("dyrygent_workflow"),
    }


@shared_task(bind=True, name="tests.gate")
def gate(self, flag, *args):
    """Fails until an Execution row labelled ``flag:<flag>`` exists: a switch tests flip between runs."""
    Execution.objects.create(label=f"gate:{flag}", task_id=self.request.id or "")
    if not Execution.objects.filter(label=f"flag:{flag}").exists():
        raise Boom(f"flag {flag} is not set")
    return flag


@shared_task(bind=True, name="tests.on_end")
def on_end(self, workflow_id, label):
    """A workflow callback: records which callback ran for which workflow."""
    Execution.objects.create(label=f"{label}:{workflow_id}", task_id=self.request.id or "")
    return label


@shared_task(name="tests.append")
def append(values, item):
    """Order-sensitive combination for pass-results canvases."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return values + [item]


@shared_task(name="tests.quiet", ignore_result=True)
def quiet(*args, **kwargs):
    """A no-op that writes no result-backend row: the engine learns the outcome from worker signals."""
    return None


@shared_task(name="tests.not_json_quiet", ignore_result=True)
def not_json_quiet():
    """Returns a set and stores no result: only the engine sees it is not JSON."""
    return {1, 2}


@shared_task(bind=True, name="tests.slow_first")
def slow_first(self, label, seconds=3):
    """Slow on its first run only: the engine's timeout retry gets a fast second run."""
    first = not Execution.objects.filter(label=f"start:{label}").exists()
    Execution.objects.create(label=f"start:{label}", task_id=self.request.id or "")
    if first:
        time.sleep(seconds)
    return label


@shared_task(bind=True, name="tests.hold")
def hold(self, flag, timeout=30):
    """Runs until an Execution row labelled ``release:<flag>`` exists (at most ``timeout`` s):
    keeps a workflow RUNNING for as long as a test needs it to."""
    deadline = time.monotonic() + timeout
    while not Execution.objects.filter(label=f"release:{flag}").exists():
        if time.monotonic() > deadline:
            raise Boom(f"hold {flag}: never released")
        time.sleep(0.05)
    Execution.objects.create(label=f"held:{flag}", task_id=self.request.id or "")
    return flag


@shared_task(bind=True, name="tests.split", max_retries=2)
def split(self, label, n, rerun=False):
    """Adds ``n`` nodes its dependents wait for, and one beside them ("also run that"), from inside its
    body; with ``rerun``, the body runs a second time (a Celery retry, same task id) and adds them again."""
    from celery import group

    from django_dyrygent.growth import extend

    Execution.objects.create(label=f"split:{label}", task_id=self.request.id or "")
    extend("items", group(record.si(f"{label}-{i}") for i in range(n)))
    extend("also", record.si(f"{label}-also"), dependents_wait=False)
    if rerun and self.request.retries == 0:
        raise self.retry(countdown=0.1)
    return n
