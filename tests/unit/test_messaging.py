"""messaging.py: what the engine sends to Celery after commit, and through which app."""

import uuid

from celery import Celery

from django_dyrygent.engine import messaging
from tests.celery_app import app as tests_app

#: An app that is not Celery's current one, as DYRYGENT_CELERY_APP may name.
other_app = Celery("dyrygent-other", set_as_current=False, broker="memory://")
#: An app whose broker is down: nothing listens on port 9 (discard) of the loopback.
broker_down_app = Celery("dyrygent-broker-down", set_as_current=False, broker="redis://127.0.0.1:9/0",
                         broker_connection_timeout=1)

#: The modules that make up the engine: none of them may import the tasks that wrap it.


def test_send_tick__goes_by_name_through_the_configured_app(settings, monkeypatch):
    sent = {"other": [], "current": []}
    monkeypatch.setattr(other_app, "send_task", lambda name, args, *a, **kw: sent["other"].append((name, args, kw)))
    monkeypatch.setattr(tests_app, "send_task", lambda name, *a, **kw: sent["current"].append(name))
    settings.DYRYGENT_CELERY_APP = "tests.unit.test_messaging.other_app"
    workflow_id = uuid.uuid4()

    assert messaging.send_tick(workflow_id, {"queue": "ticks", "eta": "ignored"}, countdown=5.0) is None

    assert sent["current"] == []
    ((name, args, call),) = sent["other"]
    assert name == messaging.TICK_TASK == "django_dyrygent.tick"
    assert list(args) == [str(workflow_id)]
    assert (call["countdown"], call["queue"], call.get("eta")) == (5.0, "ticks", None)


def test_send_tick__a_refusing_broker_is_returned_not_raised(settings, monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(other_app, "send_task", refuse)
    settings.DYRYGENT_CELERY_APP = "tests.unit.test_messaging.other_app"
    assert isinstance(messaging.send_tick(uuid.uuid4(), {}), ConnectionError)


def test_revoke__a_broker_that_is_down_is_given_up_on_and_logged_not_waited_for(settings, caplog, monkeypatch):
    """Celery's broadcast would retry its connection forever: cancel() hung while Redis was away (chaos soak)."""
    import threading

    # Celery lets the environment's broker URL win over the app's (the PostgreSQL pass sets one).
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_BROKER_WRITE_URL", raising=False)
    settings.DYRYGENT_CELERY_APP = "tests.unit.test_messaging.broker_down_app"
    done = threading.Event()
    thread = threading.Thread(target=lambda: (messaging.revoke(["lost-task"]), done.set()), daemon=True)
    thread.start()
    thread.join(60)  # a liveness bound, not a speed figure: unbounded retries never return
    assert done.is_set(), "revoke() is still retrying the broker"
    assert "Could not revoke 1 task(s): lost-task" in caplog.text


def test_revoke__reaches_the_workers_through_the_configured_app(settings, monkeypatch):
    calls = []
    monkeypatch.setattr(other_app.control, "revoke", lambda ids, **kwargs: calls.append((ids, kwargs)))
    settings.DYRYGENT_CELERY_APP = "tests.unit.test_messaging.other_app"
    messaging.revoke(["a", "b"], terminate=True)
    ((ids, kwargs),) = calls
    assert ids == ["a", "b"] and kwargs["terminate"] is True and kwargs["connection"] is not None
