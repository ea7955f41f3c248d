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
