"""The benchmark's task; importing this module (Celery's autodiscovery) installs the worker probes."""

from celery import shared_task

from bench import probes


@shared_task(bind=True, name="bench.noop")
def noop(self, *args, **kwargs):
    if probes.enabled():
        probes.task_returned(self.request.id)
    return None


@shared_task(name="bench.sleep")
def sleep(seconds):
    """The live-workflows case's long node: a workflow waiting on it is live and has nothing due."""
    import time

    time.sleep(seconds)
