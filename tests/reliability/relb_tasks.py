"""Tasks of the rel-b reliability tests (poison values); the in-process worker runs them."""

from celery import shared_task

from tests.models import Execution


@shared_task(bind=True, name="tests.reliability.poison_result")
def poison_result(self, kind):
    """Returns a value no database column can hold: a NUL, or a lone surrogate."""
    Execution.objects.create(label=f"poison:{kind}", task_id=self.request.id or "")
    return {"nul": "a\x00b", "surrogate": "x\ud800y", "key": {"k\x00": 1}}[kind]


class PoisonError(Exception):
    pass


@shared_task(bind=True, name="tests.reliability.poison_error")
def poison_error(self):
    """Raises with a NUL in its message (made here: a NUL argument is refused at build time)."""
    Execution.objects.create(label="poison:error", task_id=self.request.id or "")
    raise PoisonError("bad\x00message")
