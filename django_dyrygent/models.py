"""Workflow rows: one ``Workflow``, one ``WorkflowNode`` per signature, one edge per dependency.

Beside the graph: the event log, the workers' heartbeats and queued runs.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, models, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from . import canvas as celery_canvas
from . import fastinit
from .canvas import CONCURRENCY_KEY_MAX_LENGTH
from .draft import GRAPH_KINDS, NO_DEFAULT, Draft
from .querysets import WorkflowNodeQuerySet, WorkflowQuerySet
from .serialization import from_tree
from .signals import Handler, connect_compat_handler
from .states import (
    NODE_FINAL,
    WORKFLOW_FINAL,
    NodeKind,
    NodeState,
    Trigger,
    TriggerRule,
    WorkflowState,
)

if TYPE_CHECKING:
    from celery import Signature


def _refuse_positional_dict(args: tuple[Any, ...], message: str) -> None:
    """celery-dyrygent's Workflow(options) / WorkflowNode(signature) would silently become the primary key.

    Django itself builds loaded rows from positional field values (the id
    first), so positional arguments stay allowed; a dict is never an id.
    """
    if args and isinstance(args[0], dict):
        raise TypeError(message)


class Workflow(models.Model):
    """Run a DAG of Celery signatures; the rows are the single source of truth.

    An unsaved instance collects nodes in memory (``add_celery_canvas``,
    ``add_signature``); ``apply_async`` validates and saves everything in one
    transaction and starts it on commit.
    """

    State = WorkflowState

    id = models.UUIDField(_("id"), primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(
        _("name"), max_length=255, blank=True, default="", db_index=True,
        help_text=_("Free-form label, shown in the admin and searchable."),
    )
    state = models.CharField(
        _("state"), max_length=20, choices=WorkflowState.choices,
        default=WorkflowState.INITIAL, db_index=True,
        help_text=_("Changed only by the engine, through its transition function."),
    )
    custom_payload = models.JSONField(
        _("custom payload"), default=dict, blank=True, encoder=DjangoJSONEncoder,
        help_text=_("Application data stored with the workflow; never read by the engine."),
    )
    options = models.JSONField(
        _("tick options"), default=dict, blank=True,
        help_text=_("apply_async options of the tick task (queue, priority, ...)."),
    )
    tasks_options = models.JSONField(
        _("task options"), default=dict, blank=True,
        help_text=_("apply_async options given to every node's task; a signature's own options win."),
    )
    pass_results = models.BooleanField(
        _("pass results"), default=False,
        help_text=_("Give mutable signatures their parents' results, as native Celery canvas does."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    deadline = models.DateTimeField(
        _("deadline"), null=True, blank=True,
        help_text=_("The engine ends the workflow ERROR if it still runs at this time."),
    )
    paused_at = models.DateTimeField(
        _("paused at"), null=True, blank=True,
        help_text=_("When the workflow was paused; resume() moves the deadline on by the time paused."),
    )
    next_tick_at = models.DateTimeField(
        _("next tick at"), null=True, blank=True, db_index=True,
        help_text=_("When the scheduled safety-net tick is due; overdue means it was lost."),
    )
    error = models.TextField(
        _("error"), blank=True, default="",
        help_text=_("Why it did not succeed: its first failed node and that node's exception, or why "
                    "the engine ended it."),
    )
    nodes_total = models.PositiveIntegerField(_("nodes"), default=0)
    nodes_done = models.PositiveIntegerField(
        _("nodes done"), default=0, help_text=_("Nodes in a final state (any outcome)."),
    )
    nodes_succeeded = models.PositiveIntegerField(_("nodes succeeded"), default=0)
    nodes_failed = models.PositiveIntegerField(
        _("nodes failed"), default=0, help_text=_("FAILURE, UPSTREAM_FAILED and CANCELED nodes."),
    )
    nodes_upstream_failed = models.PositiveIntegerField(
        _("nodes upstream failed"), default=0,
        help_text=_("The UPSTREAM_FAILED part of nodes failed: nodes that never ran because a dependency failed."),
    )
    nodes_skipped = models.PositiveIntegerField(_("nodes skipped"), default=0)
    ticks = models.PositiveIntegerField(_("ticks"), default=0)
    engine_errors = models.PositiveIntegerField(
        _("consecutive engine errors"), default=0,
        help_text=_("Ticks that failed in a row; at DYRYGENT_MAX_ENGINE_ERRORS the workflow ends ERROR."),
    )
    lock_version = models.PositiveBigIntegerField(
        _("lock version"), default=0, editable=False,
        help_text=_("Bumped by every engine transaction; on SQLite the bump is the lock."),
    )
    # -- provenance: set when a catalogue definition started it (see catalogue.py) --
    definition = models.CharField(
        _("definition"), max_length=100, blank=True, default="", db_index=True,
        help_text=_("Name of the catalogue definition that built it; blank when code built it."),
    )
    parameters = models.JSONField(
        _("parameters"), default=dict, blank=True, encoder=DjangoJSONEncoder,
        help_text=_("The definition's validated parameters; 'run again' starts it with these."),
    )
    trigger = models.CharField(
        _("started from"), max_length=20, choices=Trigger.choices, blank=True, default="",
    )
    started_by = models.CharField(_("started by"), max_length=150, blank=True, default="")
    parent_node = models.ForeignKey(
        "WorkflowNode", on_delete=models.SET_NULL, null=True, blank=True, related_name="subworkflows",
        verbose_name=_("parent node"),
        help_text=_("The sub-workflow node of another workflow that started this one; it ends as this one does."),
    )
    idempotency_key = models.CharField(
        _("idempotency key"), max_length=255, null=True, blank=True, unique=True,
        help_text=_("A client's key: a repeated start request with it returns this workflow."),
    )

    objects = WorkflowQuerySet.as_manager()

    class Meta:
        verbose_name = _("workflow")
        verbose_name_plural = _("workflows")
        ordering = ["-created_at"]
        permissions = [
            ("start_workflow", _("Can start workflows from the catalogue")),
            ("signal_workflow", _("Can complete waiting nodes (signals, approvals)")),
        ]
        indexes = [
            models.Index(fields=["state", "next_tick_at"], name="dyrygent_wf_state_tick_idx"),
        ]

    def __str__(self) -> str:
        # No state here: admin headings and links would show a stale one.
        return f"{self.name or 'workflow'} {str(self.id)[:8]}"

    # -- building (unsaved workflow) -------------------------------------------------
    # Every builder method adds to one Draft (django_dyrygent.draft) through the
    # canvas functions, as django_dyrygent.workflows (the celery-dyrygent door) does.

    #: After apply_async: None until its transaction commits, then whether the
    #: first tick reached the broker (False: the sweeper starts it later).
    start_sent: bool | None = None
    #: The broker's exception when ``start_sent`` is False.
    start_error: BaseException | None = None
    _draft: Draft | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _refuse_positional_dict(
            args,
            "Workflow() takes its fields by keyword, e.g. Workflow(options={...}); "
            "django_dyrygent.workflows.Workflow accepts celery-dyrygent's Workflow(options).",
        )
        super().__init__(*args, **kwargs)

    @classmethod
    def write_connection(cls) -> BaseDatabaseWrapper:
        """The connection workflows are written through: the router's database for writing them.

        The one accessor: engine steps, the hot path, saving, ``wait()``'s
        LISTEN and the system checks all ask it, so a router cannot send
        them to different databases.
        """
        return connections[router.db_for_write(cls)]

    @property
    def draft(self) -> Draft:
        """The unsaved graph this workflow builds; refused once the workflow was applied."""
        self._require_draft("change its graph")
        if self._draft is None:
            self._draft = Draft(self, self._new_node)
        return self._draft

    def _new_node(self, **fields: Any) -> WorkflowNode:
        return WorkflowNode.for_draft(self, fields)

    def _require_draft(self, what: str) -> None:
        if not self._state.adding:
            raise ValidationError(
                f"Cannot {what}: workflow {self.pk} was already applied; build a new Workflow.",
                code="already_applied",
            )

    def add_signature(
        self,
        signature: Signature | dict[str, Any],
        dependencies: Iterable[WorkflowNode] | None = None,
        trigger_rule: str = TriggerRule.ALL_SUCCESS,
        timeout: float | timedelta | None = None,
        max_attempts: int = 1,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
    ) -> WorkflowNode:
        """Add one signature as a node depending on ``dependencies``; returns the node.

        ``trigger_rule``: "all_success" (default), "all_done" or "one_failed".
        ``timeout``: seconds (or timedelta) after its start at which a node
        still running is given up on and its task revoked; ``max_attempts``:
        how many runs it gets in all before a timeout fails it.
        ``concurrency_key`` and ``concurrency_limit`` (given together): at most
        that many nodes with the key run at once across all workflows; a node
        that finds them all taken waits (WAITING, no worker, no message), in
        the order the nodes became ready.
        """
        return celery_canvas.add_signature(
            self.draft, signature, dependencies, trigger_rule=trigger_rule, timeout=timeout, max_attempts=max_attempts,
            concurrency_key=concurrency_key, concurrency_limit=concurrency_limit,
        )

    def add_fanout(
        self, template: Signature | dict[str, Any], dependency: WorkflowNode,
        timeout: float | timedelta | None = None,
    ) -> WorkflowNode:
        """Run ``template`` once per item of ``dependency``'s result (a list), at run time.

        Returns the fan-out node: it succeeds once every item's task has, with
        the list of their results (in pass-results mode), so followers depend
        on it like on a chord header. Each item is prepended to the
        template's arguments.
        """
        return celery_canvas.add_fanout(self.draft, template, dependency, timeout=timeout)

    def add_wait(
        self, name: str, dependencies: Iterable[WorkflowNode] | None = None,
        timeout: float | timedelta | None = None, default: Any = NO_DEFAULT,
    ) -> WorkflowNode:
        """Wait for an outside event: a node with no task, completed by ``wf.signal(name, payload)``.

        It becomes WAITING when its dependencies have succeeded and holds no
        worker and no broker message while it waits. ``signal`` (or
        ``node.complete``) succeeds it with the payload as its result, passed
        on like a task's under ``pass_results``. ``timeout`` (seconds or a
        timedelta, counted from when it starts waiting): the tick then fails
        it, or succeeds it with ``default`` when one is given.
        """
        return celery_canvas.add_wait(self.draft, name, dependencies, timeout=timeout, default=default)

    def add_branch(
        self, signature: Signature | dict[str, Any], paths: dict[str, WorkflowNode | list[WorkflowNode]],
        dependencies: Iterable[WorkflowNode] | None = None,
    ) -> WorkflowNode:
        """A task that chooses which of its dependents run: it returns a key of ``paths`` (or a list).

        ``paths`` maps each key to the node(s) that run when the task returns
        it; they are made dependents of the branch. The nodes of the other
        paths are SKIPPED (with the reason), and so is every node after them
        whose dependencies were all skipped; a node that also follows a chosen
        path or anything else runs. A result that names no key of ``paths``
        fails the branch with a message listing them.
        """
        return celery_canvas.add_branch(self.draft, signature, paths, dependencies)

    def add_timer(
        self, dependencies: Iterable[WorkflowNode] | None = None, delay: float | timedelta | None = None,
        at: datetime | None = None, name: str = "",
    ) -> WorkflowNode:
        """Wait for a time: a node with no task that succeeds ``delay`` after it is reached, or at ``at``.

        The due time is a column of the node's row, fired by the workflow's
        tick (or the workers' sweep): no worker and no broker message holds
        it, so it survives worker and broker restarts. ``name`` labels it.
        """
        return celery_canvas.add_timer(self.draft, dependencies, delay=delay, at=at, name=name)

    def add_subworkflow(
        self, definition: str | Callable[..., Any], params: dict[str, Any] | None = None,
        dependencies: Iterable[WorkflowNode] | None = None, name: str = "",
    ) -> WorkflowNode:
        """Run another workflow as one node: a catalogue definition's name, or a factory.

        A factory is a module-level function returning an unsaved Workflow (or
        a canvas), stored by its dotted path and called with ``params`` as
        keywords; a definition's ``params`` go through its form, as from any
        door. The child is built and started when the node is reached, never
        before; the node is WAITING while it runs, then SUCCESS with the
        child's result (its last nodes' results), FAILURE when the child
        fails or errs, CANCELED when the child is canceled. Canceling this
        workflow cancels the child. ``name`` labels the node (default: the
        definition or factory).
        """
        return celery_canvas.add_subworkflow(self.draft, definition, params, dependencies, name=name)

    def add_celery_canvas(
        self, canvas: Signature | dict[str, Any], dependencies: Iterable[WorkflowNode] | None = None,
        concurrency_key: str | None = None, concurrency_limit: int | None = None,
    ) -> list[WorkflowNode]:
        """Add a chain/group/chord/signature; returns the nodes a follower must depend on.

        ``concurrency_key``/``concurrency_limit``: as for ``add_signature``, on every task of the canvas.
        """
        return celery_canvas.add_canvas(
            self.draft, canvas, dependencies, concurrency_key=concurrency_key, concurrency_limit=concurrency_limit,
        )

    def leaves(self) -> list[WorkflowNode]:
        """Nodes nobody depends on (callbacks excluded)."""
        if self._state.adding:
            return self.draft.leaves()
        return list(
            self.nodes.filter(kind__in=GRAPH_KINDS, dependents__isnull=True).order_by("position")
        )

    def link_error(self, signature: Signature | dict[str, Any]) -> WorkflowNode:
        """Run ``signature`` once if the workflow ends FAILURE or ERROR."""
        return celery_canvas.add_callback(self.draft, signature, NodeKind.ERROR_CALLBACK)

    def link_finalizer(self, signature: Signature | dict[str, Any]) -> WorkflowNode:
        """Run ``signature`` once whenever the workflow ends, whatever the outcome."""
        return celery_canvas.add_callback(self.draft, signature, NodeKind.FINALIZER)

    # -- running ---------------------------------------------------------------------

    def apply_async(self, options: dict[str, Any] | None = None) -> Workflow:
        """Validate, save everything in one transaction and start the workflow on commit.

        Returns self; see ``start_sent`` for whether the start reached the broker.
        """
        # A run method: saving (build/) and the engine are imported lazily (the accepted exception).
        from . import engine
        from .build import save

        self._require_draft("apply it again")
        save.save_and_start(
            self.draft, options, engine.start_saved,
            save.Models(Workflow, WorkflowNode, WorkflowEdge, WorkflowEvent),
        )
        return self

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> str:
        """Block until the workflow is final (TimeoutError after ``timeout`` s); return its state."""
        from .engine import waiting  # the engine, lazily, like the run methods

        return waiting.wait(self, timeout=timeout, interval=interval)

    def tick(self) -> str:
        """Run one tick now, in this process; returns the state, or "busy", "missing" or "error"."""
        from . import engine

        return engine.tick(self.pk, scheduled=False)

    def cancel(self, reason: str = "") -> bool:
        """Cancel: revoke published tasks, mark the rest CANCELED. Idempotent."""
        from . import engine

        result = engine.cancel(self.pk, reason=reason)
        self.refresh_from_db()
        return result

    def pause(self, reason: str = "") -> bool:
        """Stop publishing: running tasks finish and are recorded, nothing new starts until ``resume()``.

        Returns whether the workflow was RUNNING and is now PAUSED.
        """
        from . import engine

        result = engine.pause(self.pk, reason=reason)
        self.refresh_from_db()
        return result

    def resume(self, reason: str = "") -> bool:
        """Publish what became ready while paused and run on; the deadline moves on by the pause.

        Returns whether the workflow was PAUSED and is now RUNNING (or ended, if
        everything finished while it was paused).
        """
        from . import engine

        result = engine.resume(self.pk, reason=reason)
        self.refresh_from_db()
        return result

    def signal(self, name: str, payload: Any = None) -> int:
        """Complete the WAITING wait nodes named ``name`` with ``payload``; returns how many.

        0 when no node of that name is waiting: not reached yet (nothing is
        stored for later), already signalled, timed out, or the workflow has
        ended. A payload that cannot be stored raises ValidationError.
        """
        from . import engine

        result = engine.signal(self.pk, name, payload)
        self.refresh_from_db()
        return result

    def retry(self) -> int:
        """Re-run FAILURE, UPSTREAM_FAILED and CANCELED nodes with fresh task ids and resume."""
        from . import engine

        result = engine.retry(self.pk)
        self.refresh_from_db()
        return result

    def skip(self, nodes: Iterable[WorkflowNode | int], reason: str = "") -> int:
        """Mark pending nodes SKIPPED so their dependents may run."""
        from . import engine

        result = engine.skip(self.pk, nodes, reason=reason)
        self.refresh_from_db()
        return result

    # -- reading ---------------------------------------------------------------------

    @property
    def is_final(self) -> bool:
        return self.state in WORKFLOW_FINAL

    @property
    def progress(self) -> float:
        """Fraction of nodes in a final state, from the row counters (no query)."""
        return 1.0 if not self.nodes_total else self.nodes_done / self.nodes_total

    @property
    def duration(self) -> timedelta | None:
        if not self.started_at:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @classmethod
    def connect(cls, signal_name: str) -> Callable[[Handler], Handler]:
        """Decorator registering a celery-dyrygent style ``handler(workflow, payload)``.

        Names: ``on_state_change`` (payload: new state), ``on_finish`` (payload:
        None), ``after_active_tick`` (payload: None).
        """
        def decorator(handler: Handler) -> Handler:
            connect_compat_handler(signal_name, handler)
            return handler

        return decorator


class WorkflowNode(models.Model):
    """One signature of a workflow (or an internal join, or a workflow callback)."""

    State = NodeState
    Kind = NodeKind
    TriggerRule = TriggerRule

    # Indexed by the (workflow, state) and (workflow, position) indexes, which lead with it.
    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="nodes", verbose_name=_("workflow"), db_index=False,
    )
    task_id = models.CharField(
        _("task id"), max_length=255,
        help_text=_("Celery task id this node publishes with; fresh on every retry()."),
    )
    task_name = models.CharField(_("task name"), max_length=255, blank=True, default="")
    kind = models.CharField(_("kind"), max_length=20, choices=NodeKind.choices, default=NodeKind.TASK)
    signature = models.JSONField(
        _("signature"), default=dict, blank=True,
        help_text=_("task, args, kwargs, options, immutable; Celery's own chaining options removed."),
    )
    state = models.CharField(
        _("state"), max_length=20, choices=NodeState.choices, default=NodeState.PENDING,
    )
    trigger_rule = models.CharField(
        _("trigger rule"), max_length=20, choices=TriggerRule.choices, default=TriggerRule.ALL_SUCCESS,
    )
    result = models.JSONField(_("result"), null=True, blank=True, encoder=DjangoJSONEncoder)
    error = models.TextField(_("error"), blank=True, default="", help_text=_("Exception and traceback."))
    reason = models.CharField(
        _("reason"), max_length=255, blank=True, default="",
        help_text=_("Why the engine put the node in its state (skipped, upstream failed, ...)."),
    )
    custom_payload = models.JSONField(
        _("custom payload"), default=dict, blank=True, encoder=DjangoJSONEncoder,
    )
    position = models.PositiveIntegerField(_("position"), default=0, help_text=_("Order of creation."))
    waiting = models.PositiveIntegerField(
        _("unfinished dependencies"), default=0,
        help_text=_("Dependencies not yet final; the node is released when it drops to zero."),
    )
    failed_dependencies = models.PositiveIntegerField(_("failed dependencies"), default=0)
    attempts = models.PositiveIntegerField(_("attempts"), default=1)
    publish_count = models.PositiveIntegerField(_("publishes"), default=0)
    retries = models.PositiveIntegerField(_("Celery retries"), default=0)
    previous_task_ids = models.JSONField(_("previous task ids"), default=list, blank=True)
    timeout = models.DurationField(
        _("timeout"), null=True, blank=True,
        help_text=_("A STARTED node with no outcome this long after it started is failed (timed out)."),
    )
    timeout_at = models.DateTimeField(_("times out at"), null=True, blank=True)
    max_attempts = models.PositiveIntegerField(
        _("max attempts"), default=1,
        help_text=_("Runs of the node the engine allows when it times out (1: fail at the first timeout)."),
    )
    fanout_size = models.PositiveIntegerField(
        _("fan-out size"), null=True, blank=True,
        help_text=_("For a fan-out node: how many task nodes it expanded into (empty until then)."),
    )
    queued_at = models.DateTimeField(_("queued at"), null=True, blank=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    # NULL, not "": a node without a key (the previous release inserts none) is outside the
    # partial index below and needs no database default.
    concurrency_key = models.CharField(  # noqa: DJ001
        _("concurrency key"), max_length=CONCURRENCY_KEY_MAX_LENGTH, null=True, blank=True,
        help_text=_("Nodes sharing this key, across all workflows, run at most concurrency limit at once "
                    "(QUEUED, STARTED or RETRY); the others wait in WAITING, first ready first run."),
    )
    concurrency_limit = models.PositiveIntegerField(
        _("concurrency limit"), null=True, blank=True,
        help_text=_("How many nodes of the concurrency key may hold a slot when this one is admitted."),
    )
    worker_hostname = models.CharField(
        _("worker"), max_length=255, blank=True, default="",
        help_text=_("Celery node name of the worker running the node (empty: unknown, or the "
                    "worker runs without DYRYGENT_LIVENESS)."),
    )
    worker_pid = models.PositiveIntegerField(
        _("worker pid"), null=True, blank=True,
        help_text=_("Process id of that worker's main process; with the host name it names the "
                    "WorkerHeartbeat that tells whether the worker is alive."),
    )
    dependencies = models.ManyToManyField(
        "self", symmetrical=False, related_name="dependents", blank=True,
        through="WorkflowEdge", through_fields=("node", "dependency"),
        verbose_name=_("dependencies"),
    )

    objects = WorkflowNodeQuerySet.as_manager()

    class Meta:
        verbose_name = _("workflow node")
        verbose_name_plural = _("workflow nodes")
        ordering = ["workflow", "position"]
        # One per action on a single node (admin, API): each can be given on its own.
        permissions = [
            ("retry_node", _("Can retry a node and the failed nodes after it")),
            ("mark_node", _("Can mark a node succeeded or skipped")),
            ("cancel_node", _("Can cancel a node")),
        ]
        # Plain indexes in Meta, not db_index=True: on PostgreSQL a db_index CharField
        # gets a second, ``varchar_pattern_ops`` index for LIKE that nothing here runs,
        # and every index is one more write per node saved and per state change.
        # Unique through a constraint, not unique=True: on PostgreSQL the field option adds a
        # second, ``varchar_pattern_ops`` index (LIKE), one more write per node built.
        constraints = [models.UniqueConstraint(fields=["task_id"], name="dyrygent_node_task_id_unique")]
        indexes = [
            models.Index(fields=["workflow", "state"], name="dyrygent_node_wf_state_idx"),
            models.Index(fields=["workflow", "position"], name="dyrygent_node_wf_pos_idx"),
            models.Index(fields=["state"], name="dyrygent_node_state_idx"),
            models.Index(fields=["task_name"], name="dyrygent_node_task_name_idx"),
            # Partial: a node without a key (nearly all) writes no entry, at build or at any state change.
            models.Index(fields=["concurrency_key", "state"], name="dyrygent_node_key_state_idx",
                         condition=models.Q(concurrency_key__isnull=False)),
        ]

    def __str__(self) -> str:
        label = self.task_name or self.kind
        return f"{label} [{self.task_id}] ({self.state})"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _refuse_positional_dict(
            args,
            "WorkflowNode() takes its fields by keyword; add signatures with Workflow.add_signature(), "
            "or use django_dyrygent.workflows.WorkflowNode(signature).",
        )
        super().__init__(*args, **kwargs)

    @classmethod
    def for_draft(cls, workflow: Workflow, fields: dict[str, Any]) -> WorkflowNode:
        """``WorkflowNode(workflow=workflow, **fields)``, made without ``Model.__init__``'s per-field work.

        A draft makes one node per signature, thousands for a large canvas, and
        ``Model.__init__`` does per-field work none of them needs: see ``fastinit``.
        When something listens to ``pre_init`` / ``post_init`` for this model,
        or a name is not a plain field, the ordinary constructor runs.
        """
        node = fastinit.instance(cls, "workflow", workflow, fields)
        return node if node is not None else cls(workflow=workflow, **fields)

    def add_dependency(self, other: WorkflowNode) -> None:
        """Make this node wait for ``other`` (both nodes of the same unsaved workflow)."""
        workflow = self.workflow if WorkflowNode.workflow.is_cached(self) else None
        draft = workflow._draft if workflow is not None and self._state.adding else None
        if draft is None or not draft.owns(self):
            raise ValidationError(
                f"Node {self} is not part of an unsaved workflow; edges are fixed once applied.",
                code="already_applied",
            )
        draft.add_dependency(self, other)

    @property
    def is_final(self) -> bool:
        return self.state in NODE_FINAL

    def complete(self, result: Any = None) -> bool:
        """Succeed this WAITING wait node with ``result``; False when it is not waiting (any more)."""
        from . import engine

        done = engine.complete(self.workflow_id, self.pk, result)
        self.refresh_from_db()
        return done

    def get_result(self) -> Any:
        """The result as the task returned it (``result`` holds its JSON form:
        datetimes, UUIDs and Decimals are tagged objects there, as in a Celery message)."""
        return from_tree(self.result)

    @property
    def args(self) -> list[Any]:
        return self.signature.get("args", [])

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.signature.get("kwargs", {})

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class WorkflowEdge(models.Model):
    """``node`` waits for ``dependency``; ``position`` keeps the dependency order (header order)."""

    # No database constraint: the edge's nodes are checked, and they belong to the workflow. A
    # checked key here would cost two deferred lookups per edge at the commit of a build. The ORM
    # still deletes a workflow's edges with it (Django collects CASCADE itself).
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    # Indexed by the unique (node, dependency) constraint and the (dependency, node) index.
    node = models.ForeignKey(WorkflowNode, on_delete=models.CASCADE, related_name="+", db_index=False)
    dependency = models.ForeignKey(WorkflowNode, on_delete=models.CASCADE, related_name="+", db_index=False)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name = _("workflow edge")
        verbose_name_plural = _("workflow edges")
        constraints = [
            models.UniqueConstraint(fields=["node", "dependency"], name="dyrygent_edge_unique"),
        ]
        indexes = [
            models.Index(fields=["dependency", "node"], name="dyrygent_edge_dep_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.dependency_id} -> {self.node_id}"


__all__ = [
    "ApiToken", "ConcurrencyKey", "FailedStart", "QueuedRun", "WorkerHeartbeat", "Workflow", "WorkflowEdge",
    "WorkflowEvent", "WorkflowNode",
]


class WorkflowEvent(models.Model):
    """One transition of a workflow or of one of its nodes, written with the change."""

    workflow = models.ForeignKey("Workflow", on_delete=models.CASCADE, related_name="events")
    node = models.ForeignKey(
        "WorkflowNode", on_delete=models.CASCADE, related_name="events", null=True, blank=True,
    )
    old_state = models.CharField(_("old state"), max_length=20, blank=True, default="")
    new_state = models.CharField(_("new state"), max_length=20)
    reason = models.CharField(_("reason"), max_length=255, blank=True, default="")
    created_at = models.DateTimeField(_("at"), db_index=True)

    class Meta:
        verbose_name = _("workflow event")
        verbose_name_plural = _("workflow events")
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["workflow", "created_at"], name="dyrygent_event_wf_idx")]

    def __str__(self) -> str:
        who = f"node {self.node_id}" if self.node_id else "workflow"
        return f"{who}: {self.old_state or '-'} -> {self.new_state}"


class WorkerHeartbeat(models.Model):
    """One running Celery worker (main process), kept fresh by its liveness thread.

    The engine reads it to tell a running node from one whose worker died
    (stale ``last_seen``), stopped (``stopped_at``) or lost its outcome
    (worker alive, task not held).
    """

    hostname = models.CharField(_("worker"), max_length=255, help_text=_("Celery node name."))
    pid = models.PositiveIntegerField(_("pid"), help_text=_("Process id of the worker's main process."))
    started_at = models.DateTimeField(_("started at"))
    last_seen = models.DateTimeField(_("last seen"), db_index=True)
    stopped_at = models.DateTimeField(
        _("stopped at"), null=True, blank=True,
        help_text=_("When the worker shut down, after its pool had drained; empty while it runs."),
    )
    active_task_ids = models.JSONField(
        _("active tasks"), default=list, blank=True,
        help_text=_("Task ids the worker's pool was running at the last beat."),
    )
    reserved_task_ids = models.JSONField(
        _("reserved tasks"), default=list, blank=True,
        help_text=_("Task ids prefetched or scheduled (ETA) by the worker at the last beat."),
    )
    queues = models.JSONField(
        _("queues"), default=list, blank=True,
        help_text=_("Names of the queues the worker consumed from at the last beat."),
    )

    class Meta:
        verbose_name = _("worker heartbeat")
        verbose_name_plural = _("worker heartbeats")
        ordering = ["started_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["hostname", "pid"], name="dyrygent_heartbeat_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.hostname} (pid {self.pid})"

    @property
    def held_task_ids(self) -> set[str]:
        return {*(self.active_task_ids or ()), *(self.reserved_task_ids or ())}


class QueuedRun(models.Model):
    """A scheduled start that waits for the running workflow of its definition to end.

    The ``workflow_finished`` receiver of that run starts the oldest waiting
    one (``launch.start_next_queued``); see ``launch.start_scheduled`` for why
    a run that ends while a start is being queued cannot miss it.
    """

    definition = models.CharField(_("definition"), max_length=100, db_index=True)
    parameters = models.JSONField(_("parameters"), default=dict, blank=True, encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(_("queued at"), auto_now_add=True)

    class Meta:
        verbose_name = _("queued run")
        verbose_name_plural = _("queued runs")
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.definition} queued at {self.created_at:%Y-%m-%d %H:%M:%S}"


class FailedStart(models.Model):
    """A start of a catalogue definition that a schedule asked for and that could not happen.

    A Celery task has no one to answer: without this row a failed scheduled
    start would only be a line in a worker's log.
    """

    definition = models.CharField(_("definition"), max_length=100, db_index=True)
    parameters = models.JSONField(_("parameters"), default=dict, blank=True, encoder=DjangoJSONEncoder)
    trigger = models.CharField(_("started from"), max_length=20, choices=Trigger.choices, blank=True, default="")
    error = models.TextField(_("error"), help_text=_("Why it could not start, and what to do."))
    hostname = models.CharField(
        _("worker"), max_length=255, blank=True, default="",
        help_text=_("Celery node name of the worker that tried to start it."),
    )
    created_at = models.DateTimeField(_("failed at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("failed start")
        verbose_name_plural = _("failed starts")
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.definition} failed at {self.created_at:%Y-%m-%d %H:%M:%S}"


class ApiToken(models.Model):
    """A user's key for the JSON API, sent as ``Authorization: Bearer <key>``; only its hash is stored.

    The key is shown once, when it is made (``ApiToken.issue``, or the
    admin's add page); a lost key is revoked and a new one made. The key
    acts as its user, with that user's permissions.
    """

    #: Every key starts with it: a secret scanner, or a person, tells it apart.
    KEY_PREFIX = "dyr_"

    user = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="dyrygent_api_tokens",
        verbose_name=_("user"), help_text=_("Whose permissions the token carries."),
    )
    name = models.CharField(_("name"), max_length=100, help_text=_("What it is for (a script, a service)."))
    key_hash = models.CharField(_("key hash"), max_length=64, unique=True, editable=False,
                                help_text=_("SHA-256 of the key; the key itself is not kept."))
    prefix = models.CharField(_("key starts with"), max_length=12, editable=False,
                              help_text=_("The key's first characters, to tell tokens apart."))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    last_used_at = models.DateTimeField(_("last used at"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked at"), null=True, blank=True,
                                      help_text=_("A revoked token authenticates nobody."))

    class Meta:
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash_key(key: str) -> str:
        # The key is 256 random bits: a fast hash cannot be brute-forced, and a lookup by it is one index probe.
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def new_key(cls) -> str:
        return cls.KEY_PREFIX + secrets.token_urlsafe(32)

    def set_key(self) -> str:
        """Give this token a fresh key (not saved); returns the key, the only time it can be read."""
        key = self.new_key()
        self.key_hash = self.hash_key(key)
        self.prefix = key[: len(self.KEY_PREFIX) + 6]
        return key

    @classmethod
    def issue(cls, user: Any, name: str) -> tuple[ApiToken, str]:
        """A new saved token for ``user`` and its key."""
        token = cls(user=user, name=name)
        key = token.set_key()
        token.save()
        return token, key

    @classmethod
    def user_for(cls, key: str) -> Any:
        """The active user the key belongs to, or None (unknown, revoked, or the user is inactive)."""
        token = cls.objects.select_related("user").filter(key_hash=cls.hash_key(key), revoked_at=None).first()
        if token is None or not token.user.is_active:
            return None
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
            # At most one write a minute per token: a busy client does not write on every call.
            cls.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user


class ConcurrencyKey(models.Model):
    """One concurrency key in use: the row whose lock serialises the admissions under that key.

    The slots themselves are not counted here: a key's occupancy is read
    from the states of its nodes, so a node that ends by any path (a crash
    the sweep repairs included) frees its slot without anyone decrementing
    a counter. The row only gives every database (PostgreSQL, MySQL/MariaDB,
    SQLite through its write lock) one thing to lock per key.
    """

    key = models.CharField(_("key"), max_length=CONCURRENCY_KEY_MAX_LENGTH, unique=True)

    class Meta:
        verbose_name = _("concurrency key")
        verbose_name_plural = _("concurrency keys")
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key
