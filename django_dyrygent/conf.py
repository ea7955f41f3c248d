"""Settings of django_dyrygent: flat ``DYRYGENT_*`` names, read lazily.

Each setting is declared once, as a typed ``Setting`` (name, default,
accepted types, lower bound): the accessor, the system check E002/E004 and
the docs test all read that one table, so they cannot drift apart.

Values are looked up on every use, not cached: a cache would go stale when a
setting is deleted (pytest-django's ``del settings.X`` sends no
``setting_changed``), and a lookup costs a dictionary access.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery, current_app
from django.conf import settings as django_settings
from django.utils.module_loading import import_string

PREFIX = "DYRYGENT_"

NUMBER = (int, float)


@dataclass(frozen=True)
class Setting:
    """One ``DYRYGENT_*`` setting: its default, the types it accepts, and its bound."""

    name: str
    default: Any
    types: tuple[type, ...]
    #: ``"positive"``: must be > 0; ``"non_negative"``: must be >= 0; None: any value of the type.
    bound: str | None = None
    #: The only values accepted, when the setting is one of a few words.
    choices: tuple[Any, ...] = ()

    @property
    def full_name(self) -> str:
        return PREFIX + self.name

    def problem(self, value: Any) -> tuple[str, str] | None:
        """(check id, message) when ``value`` is not acceptable, else None."""
        if not isinstance(value, self.types) or (isinstance(value, bool) and bool not in self.types):
            kinds = " or ".join(t.__name__ for t in self.types)
            return "E002", f"{self.full_name} must be {kinds}, not {type(value).__name__} ({value!r})."
        if self.choices and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            return "E002", f"{self.full_name} must be one of {allowed}, not {value!r}."
        if isinstance(value, bool) or not isinstance(value, NUMBER):
            return None
        if self.bound == "positive" and value <= 0:
            return "E004", f"{self.full_name} must be greater than zero, not {value!r}."
        if self.bound == "non_negative" and value < 0:
            return "E004", f"{self.full_name} must be zero or more, not {value!r}."
        return None


SETTINGS: tuple[Setting, ...] = (
    # Seconds between two safety-net ticks of a running workflow. Progress is
    # event driven; the tick only reconciles what events missed.
    Setting("TICK_INTERVAL", 10.0, NUMBER, "positive"),
    # Seconds a workflow may run before the engine gives up (ERROR).
    # Same default as celery-dyrygent's max processing time: 7 days.
    Setting("MAX_PROCESSING_TIME", 7 * 24 * 3600, NUMBER, "positive"),
    # Seconds a QUEUED node may wait for a worker to report it before the tick
    # checks the result backend and, if the task is unknown, publishes it again.
    Setting("REQUEUE_AFTER", 300.0, NUMBER, "positive"),
    # Largest JSON-encoded task result stored in a node row, in bytes (0: no cap).
    Setting("MAX_RESULT_BYTES", 1024 * 1024, (int,), "non_negative"),
    # Most stale nodes one tick reconciles (keeps a tick's cost bounded).
    Setting("RECONCILE_BATCH", 500, (int,), "positive"),
    # Dotted path to the Celery app; None means celery.current_app.
    Setting("CELERY_APP", None, (str, type(None))),
    # A running workflow whose scheduled tick is this many seconds overdue is
    # picked up by the sweeper (``dyrygent_tick`` / ``django_dyrygent.sweep``).
    Setting("STALE_AFTER", 60.0, NUMBER),
    # Consecutive failed ticks after which the engine gives up: workflow ERROR.
    Setting("MAX_ENGINE_ERRORS", 10, (int,), "positive"),
    # Whether every transition writes a WorkflowEvent row.
    Setting("EVENT_LOG", True, (bool,)),
    # Each Celery worker keeps a WorkerHeartbeat row fresh and one of them
    # sweeps (lost ticks, nodes of dead workers, lost outcomes and publishes).
    # Turn it off on every worker at once: a node started by a worker without
    # it is never judged (only its timeout applies).
    Setting("LIVENESS", True, (bool,)),
    # Seconds between two heartbeats of a worker.
    Setting("HEARTBEAT_INTERVAL", 5.0, NUMBER, "positive"),
    # A worker whose heartbeat is this many seconds old is dead: its nodes run again.
    Setting("WORKER_TIMEOUT", 30.0, NUMBER, "positive"),
    # Seconds between two sweeps of the sweeping worker.
    Setting("SWEEP_INTERVAL", 5.0, NUMBER, "positive"),
    # Runs a node gets beyond its first when its worker is lost (killed, OOM,
    # WorkerLostError); it gets max(max_attempts, 1 + this) runs in all.
    Setting("LOST_WORKER_RETRIES", 1, (int,), "non_negative"),
    # A QUEUED node no live worker holds, whose queue still has messages, is
    # republished only after waiting this long (a slow queue is not a lost message).
    Setting("QUEUED_LOST_AFTER", 3600.0, NUMBER, "positive"),
    # Seconds a worker keeps retrying (with backoff) to write a task's outcome
    # while the database is unreachable, before leaving it to the sweeper.
    Setting("OUTCOME_RETRY_FOR", 60.0, NUMBER, "non_negative"),
    # Largest JSON-encoded custom_payload (workflow or node) apply_async accepts, in bytes (0: no cap).
    Setting("MAX_PAYLOAD_BYTES", 1024 * 1024, (int,), "non_negative"),
    # Largest JSON-encoded args + kwargs of one signature apply_async accepts, in bytes (0: no cap).
    Setting("MAX_ARGUMENT_BYTES", 1024 * 1024, (int,), "non_negative"),
    # How deep sub-workflows may nest: a child whose ancestors already number this many fails its
    # node instead of starting (a definition that runs itself would otherwise never end).
    Setting("MAX_SUBWORKFLOW_DEPTH", 10, (int,), "positive"),
    # What apply_async does with a task name the Celery registry does not know, when this
    # process's registry is complete (a worker process): warn in the log, refuse, or ignore.
    Setting("UNKNOWN_TASKS", "warn", (str,), choices=("warn", "refuse", "ignore")),
    # Module of every installed app that the catalogue imports at start-up to
    # find workflow definitions (like admin.py); None: no discovery.
    Setting("CATALOGUE_MODULE", "workflows", (str, type(None))),
    # Whether Celery also stores every node's outcome in the result backend. Off: node tasks
    # are published with ignore_result=True (the node row holds the outcome) and a worker
    # stores an outcome there itself only when it cannot write it to the database.
    Setting("STORE_NODE_RESULTS", False, (bool,)),
    # PostgreSQL: the hot path's success statement is a server-side prepared statement on the
    # worker's own connection (planned once per connection). Off behind a pooler that cannot
    # keep prepared statements (PgBouncer in transaction mode before 1.21).
    Setting("PREPARED_STATEMENTS", True, (bool,)),
    # Prometheus metrics (the [prometheus] extra): django_dyrygent.metrics.
    Setting("METRICS", False, (bool,)),
    # Largest request body the JSON API reads, in bytes; a larger one is answered 413.
    Setting("API_MAX_BODY_BYTES", 64 * 1024, (int,), "positive"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
#: name -> default, for code and tests that only need the defaults.
DEFAULTS: dict[str, Any] = {s.name: s.default for s in SETTINGS}


class Settings:
    """Lazy accessor: ``conf.settings.TICK_INTERVAL`` reads ``DYRYGENT_TICK_INTERVAL``.

    The annotations below type each setting for mypy (``__getattr__`` still
    reads every one); tests/test_settings.py checks they match ``SETTINGS``.
    """

    TICK_INTERVAL: float
    MAX_PROCESSING_TIME: float
    REQUEUE_AFTER: float
    MAX_RESULT_BYTES: int
    RECONCILE_BATCH: int
    CELERY_APP: str | None
    STALE_AFTER: float
    MAX_ENGINE_ERRORS: int
    EVENT_LOG: bool
    LIVENESS: bool
    HEARTBEAT_INTERVAL: float
    WORKER_TIMEOUT: float
    SWEEP_INTERVAL: float
    LOST_WORKER_RETRIES: int
    QUEUED_LOST_AFTER: float
    OUTCOME_RETRY_FOR: float
    MAX_PAYLOAD_BYTES: int
    MAX_ARGUMENT_BYTES: int
    MAX_SUBWORKFLOW_DEPTH: int
    UNKNOWN_TASKS: str
    CATALOGUE_MODULE: str | None
    STORE_NODE_RESULTS: bool
    PREPARED_STATEMENTS: bool
    METRICS: bool
    API_MAX_BODY_BYTES: int

    def __getattr__(self, name: str) -> Any:
        setting = BY_NAME.get(name)
        if setting is None:
            raise AttributeError(f"Invalid django_dyrygent setting: {name!r}")
        return getattr(django_settings, setting.full_name, setting.default)


settings = Settings()


def get_celery_app() -> Celery:
    """The Celery app that publishes nodes and ticks."""
    path = settings.CELERY_APP
    if path:
        app: Celery = import_string(path)
        return app
    # The app itself, not the proxy: callers keep it beyond the current context.
    return current_app._get_current_object()  # type: ignore[attr-defined]
