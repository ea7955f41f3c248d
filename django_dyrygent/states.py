from django.db import models
from django.utils.translation import gettext_lazy as _


class WorkflowState(models.TextChoices):
    INITIAL = "INITIAL", _("Initial")
    RUNNING = "RUNNING", _("Running")
    # Running tasks finish and are recorded, nothing new is published until resume().
    PAUSED = "PAUSED", _("Paused")
    SUCCESS = "SUCCESS", _("Success")
    FAILURE = "FAILURE", _("Failure")
    ERROR = "ERROR", _("Error")
    CANCELED = "CANCELED", _("Canceled")


class NodeState(models.TextChoices):
    PENDING = "PENDING", _("Pending")
    # A wait or timer node whose dependencies succeeded: waiting for its signal or its time;
    # or a task node waiting for a free slot of its concurrency key.
    WAITING = "WAITING", _("Waiting")
    QUEUED = "QUEUED", _("Queued")
    STARTED = "STARTED", _("Started")
    RETRY = "RETRY", _("Retry")
    SUCCESS = "SUCCESS", _("Success")
    FAILURE = "FAILURE", _("Failure")
    UPSTREAM_FAILED = "UPSTREAM_FAILED", _("Upstream failed")
    SKIPPED = "SKIPPED", _("Skipped")
    CANCELED = "CANCELED", _("Canceled")


class NodeKind(models.TextChoices):
    TASK = "task", _("Task")
    # Internal: no Celery task, completes inside the transaction that satisfies it.
    JOIN = "join", _("Join")
    # Dynamic fan-out: expands at run time into one task node per item of its
    # dependency's result, then completes like a join with their results.
    MAP = "map", _("Fan-out")
    # link_error / link_finalizer signatures: run once the workflow has ended.
    ERROR_CALLBACK = "error_callback", _("Error callback")
    FINALIZER = "finalizer", _("Finalizer")
    # No Celery task: WAITING once its dependencies succeeded, succeeded by wf.signal(name)
    # or node.complete(); its name is in task_name.
    WAIT = "wait", _("Wait for a signal")
    # No Celery task: WAITING once its dependencies succeeded, succeeds by itself at its due
    # time (timeout_at), fired by the tick; nothing waits in a broker message.
    TIMER = "timer", _("Timer")
    # A task whose result (a key, or a list of keys) chooses which of its dependents run;
    # the others are SKIPPED. Its signature keeps the paths (key -> node positions).
    BRANCH = "branch", _("Branch")
    # No Celery task: runs another workflow (a catalogue definition or a factory), started when
    # the node is reached; WAITING while the child runs, then it ends as the child did.
    SUBWORKFLOW = "subworkflow", _("Sub-workflow")


class TriggerRule(models.TextChoices):
    ALL_SUCCESS = "all_success", _("All dependencies succeeded (or were skipped)")
    ALL_DONE = "all_done", _("All dependencies finished, whatever the outcome")
    ONE_FAILED = "one_failed", _("At least one dependency failed")


class Trigger(models.TextChoices):
    """Which door of the catalogue started a workflow (blank: started by code)."""

    ADMIN = "admin", _("Admin")
    COMMAND = "command", _("Command line")
    API = "api", _("HTTP API")
    SCHEDULE = "schedule", _("Schedule")
    # A scheduled run that waited for the previous one (overlap policy "queue").
    QUEUE = "queue", _("Queued schedule")


class Overlap(models.TextChoices):
    """What a scheduled start does while a run of the same definition is still going."""

    ALLOW = "allow", _("Start another run alongside")
    SKIP = "skip", _("Skip this run")
    QUEUE = "queue", _("Start it when the previous run ends")


WORKFLOW_FINAL = frozenset(
    {WorkflowState.SUCCESS, WorkflowState.FAILURE, WorkflowState.ERROR, WorkflowState.CANCELED}
)
NODE_FINAL = frozenset(
    {
        NodeState.SUCCESS,
        NodeState.FAILURE,
        NodeState.UPSTREAM_FAILED,
        NodeState.SKIPPED,
        NodeState.CANCELED,
    }
)
# Final states that let an ``all_success`` dependent run.
NODE_OK = frozenset({NodeState.SUCCESS, NodeState.SKIPPED})
NODE_FAILED = NODE_FINAL - NODE_OK
NODE_ACTIVE = frozenset({NodeState.QUEUED, NodeState.STARTED, NodeState.RETRY})
# Runs that are not over: a paused run still counts (overlap policies, the active() queryset).
WORKFLOW_ACTIVE = frozenset({WorkflowState.INITIAL, WorkflowState.RUNNING, WorkflowState.PAUSED})
#: Not over and not paused: the workflows the engine drives, whose ticks keep coming.
WORKFLOW_RUNNABLE = frozenset({WorkflowState.INITIAL, WorkflowState.RUNNING})
# Nodes that run once the workflow has ended (link_error, link_finalizer), never as part of it.
CALLBACK_KINDS = (NodeKind.ERROR_CALLBACK, NodeKind.FINALIZER)
# Steps of the workflow the counters count (nodes_total, nodes_done, ...): the user's, not joins.
COUNTED_KINDS = (NodeKind.TASK, NodeKind.BRANCH, NodeKind.WAIT, NodeKind.TIMER, NodeKind.SUBWORKFLOW)
# Steps of the workflow published to Celery as tasks (callbacks run after it).
TASK_KINDS = (NodeKind.TASK, NodeKind.BRANCH)
# Nodes that wait in WAITING instead of being published.
WAITING_KINDS = (NodeKind.WAIT, NodeKind.TIMER)
# Nodes without a Celery task of their own: no call to check, no task name to look up.
TASKLESS_KINDS = (NodeKind.JOIN, NodeKind.WAIT, NodeKind.TIMER, NodeKind.SUBWORKFLOW)

# The node state machine. Every node state change goes through
# ``steps.Step.transition_nodes`` which refuses anything not listed here.
NODE_TRANSITIONS: dict[str, set[str]] = {
    NodeState.PENDING: {
        NodeState.QUEUED,
        NodeState.WAITING,  # a wait node reached
        NodeState.SUCCESS,  # join nodes complete in place
        NodeState.UPSTREAM_FAILED,
        NodeState.SKIPPED,
        NodeState.CANCELED,
        NodeState.FAILURE,  # a node whose call cannot even be built
    },
    NodeState.QUEUED: {
        NodeState.QUEUED,  # republished after being lost
        NodeState.STARTED,
        NodeState.RETRY,
        NodeState.SUCCESS,
        NodeState.FAILURE,
        NodeState.CANCELED,
        NodeState.SKIPPED,  # skip(): published but not started yet, so revoked
    },
    NodeState.STARTED: {
        NodeState.QUEUED,  # timed out with attempts left: published again, fresh task id
        NodeState.STARTED,
        NodeState.RETRY,
        NodeState.SUCCESS,
        NodeState.FAILURE,
        NodeState.CANCELED,
    },
    NodeState.RETRY: {
        NodeState.QUEUED,
        NodeState.STARTED,
        NodeState.RETRY,  # a late task_retry of the previous run (outcomes.WORKER_SOURCES)
        NodeState.SUCCESS,
        NodeState.FAILURE,
        NodeState.CANCELED,
    },
    NodeState.WAITING: {
        NodeState.QUEUED,  # a task node waiting for a slot of its concurrency key was admitted
        NodeState.SUCCESS,  # signalled, a timer due, a wait timed out with a default, a child succeeded
        NodeState.FAILURE,  # timed out
        NodeState.CANCELED,
    },
    NodeState.SUCCESS: set(),
    NodeState.FAILURE: {NodeState.PENDING},  # retry()
    NodeState.UPSTREAM_FAILED: {NodeState.PENDING},
    NodeState.CANCELED: {NodeState.PENDING},
    # retry() of a CANCELED workflow: its error callback, skipped by that ending, waits for the next one.
    NodeState.SKIPPED: {NodeState.PENDING},
}

WORKFLOW_TRANSITIONS: dict[str, set[str]] = {
    WorkflowState.INITIAL: {WorkflowState.RUNNING, WorkflowState.CANCELED, WorkflowState.ERROR},
    WorkflowState.RUNNING: {
        WorkflowState.SUCCESS,
        WorkflowState.FAILURE,
        WorkflowState.ERROR,
        WorkflowState.CANCELED,
        WorkflowState.PAUSED,  # pause()
    },
    # Not SUCCESS/FAILURE: a paused workflow whose nodes all ended is finished by resume().
    # Not ERROR: its deadline is suspended while it is paused (resume() moves it on).
    WorkflowState.PAUSED: {WorkflowState.RUNNING, WorkflowState.CANCELED},
    WorkflowState.SUCCESS: set(),
    WorkflowState.FAILURE: {WorkflowState.RUNNING},  # retry()
    WorkflowState.ERROR: {WorkflowState.RUNNING},
    WorkflowState.CANCELED: {WorkflowState.RUNNING},
}
