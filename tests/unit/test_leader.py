"""Which worker sweeps: one rule (``liveness.leader``), the one ``LivenessThread.is_leader`` asks."""

from datetime import timedelta

import pytest
from django.utils import timezone

from django_dyrygent.models import WorkerHeartbeat
from django_dyrygent.worker import liveness
from django_dyrygent.worker.heartbeat import LivenessThread

pytestmark = pytest.mark.django_db


def beat(hostname, started_ago, seen_ago, now):
    return WorkerHeartbeat.objects.create(
        hostname=hostname, pid=1, started_at=now - timedelta(seconds=started_ago),
        last_seen=now - timedelta(seconds=seen_ago),
    )


def test_leader__the_oldest_live_worker_sweeps_a_silent_older_one_does_not(settings):
    settings.DYRYGENT_WORKER_TIMEOUT = 60
    now = timezone.now()
    beat("silent", started_ago=900, seen_ago=120, now=now)
    beat("old", started_ago=600, seen_ago=5, now=now)
    beat("young", started_ago=30, seen_ago=1, now=now)
    assert liveness.leader(now) == ("old", 1)
    assert LivenessThread("old", 1).is_leader() and not LivenessThread("young", 1).is_leader()


def test_leader__a_tie_goes_to_the_first_row_and_nobody_live_means_no_leader(settings):
    settings.DYRYGENT_WORKER_TIMEOUT = 60
    now = timezone.now()
    assert liveness.leader(now) is None
    beat("first", started_ago=100, seen_ago=1, now=now)
    beat("second", started_ago=100, seen_ago=1, now=now)
    assert liveness.leader(now) == ("first", 1)
