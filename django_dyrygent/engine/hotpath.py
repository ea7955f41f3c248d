"""The worker's hot path without the workflow lock (PostgreSQL): STARTED and a plain success.

Every task node reports twice: STARTED (``task_prerun``) and its outcome
(``task_success``). Under the workflow row lock (``steps.locked_step``)
the completions of one workflow run one after another, each holding the
lock for its whole transaction. Here both reports are ONE statement each,
run in autocommit (no ``BEGIN``/``COMMIT`` round trips), all through
``_cursor()``:

* **STARTED** (``node_started``, every database): one conditional UPDATE of
  the node row (QUEUED/RETRY/STARTED -> STARTED, ``started_at``,
  ``timeout_at``, the worker), no event row, no lock on the workflow row
  (MySQL/MariaDB: the workflow row in share mode first, see ``_started_orm``).
* **Success of a plain task node** (``node_succeeded``, PostgreSQL): one
  CTE (``sql.success_sql``) that

  1. takes ``FOR KEY SHARE`` on the workflow row, RUNNING and not passing
     results: shared with every other completion, but it conflicts with the
     ``FOR UPDATE`` of the rare decisions (cancel, retry, skip, the tick, the
     deadline), so a decision waits for the completions in flight and a
     later completion waits for the decision, then finds the workflow no
     longer RUNNING and takes the locked path (which publishes nothing);
  2. locks the node row (an active task), then its dependents' rows in id
     order (no deadlock between two completions sharing dependents), then
     the dependents of the joins it completes (below) in id order with
     ``SKIP LOCKED``, then the workflow row ``FOR NO KEY UPDATE`` for its
     counters: LAST, so the one lock siblings wait for is held only from
     there to the commit, and two completions of one workflow never wait
     for each other otherwise;
  3. decides on those rows' newest values (a row lock reads the newest
     committed version): every dependent either keeps waiting, is queued by
     this completion, or is a join this completion succeeds (its last
     dependency, nothing failed: what ``decisions.readiness`` says of a
     join), whose own dependents then keep waiting or are queued the same
     way; and the workflow does not end here;
  4. only then writes, each write conditioned on that decision: the node ->
     SUCCESS, the dependents' ``waiting`` decremented (the one completion
     that brings a counter to zero queues that node, or succeeds that join,
     in the same UPDATE: exactly once, since the dependents' row locks
     serialise the decrements), the joins' dependents likewise, the event
     rows in one INSERT, the workflow's counters.

  The released nodes are published when the statement has returned (it has
  committed; inside a caller's transaction, at its commit).

  A join succeeded here has exactly the locked path's effects
  (``decisions._apply_readiness`` / ``settle``): PENDING -> SUCCESS with
  ``finished_at`` (the server's clock once every lock is held, so never
  before a sibling that decremented it earlier finished), ``waiting`` 0, an
  event row, no count in ``nodes_done``
  (only task nodes count), no ``node_state_changed`` (joins send none), its
  dependents' counters decremented by their edges from it.

  **Deadlocks.** Two completions wait for each other only on rows both
  lock; they lock the node, then its dependents in ascending id, then the
  counters row, and a holder of the counters row waits for nothing more.
  The joins' dependents are the one set locked out of that order (their ids
  may be lower than a dependent's a sibling still waits for): they are
  locked ``SKIP LOCKED``, so the statement never waits for them: a row held
  by another transaction is skipped and the statement writes nothing (the
  locked path takes the report). In a DAG of groups a join's dependents
  depend on the join alone, so nobody else ever holds them.

Anything the statement does not decide makes it write nothing, and the
report takes the locked path instead (``outcomes.node_succeeded``), which
then counts it once: a result that cannot be stored, a node that is not a
task or not active (a duplicate report), a node or a dependent with a
concurrency key (its slot is freed and taken under the key's lock,
``slots``), a workflow not RUNNING or passing
results, a dependent whose readiness is anything but "queue this task" or
"succeed this join" (a fan-out, a skip, an upstream failure, a callback),
a join's dependent that is anything but a task that keeps waiting or is
queued (another join, a skip, ...), held by another transaction, or also a
direct dependent of the node (one UPDATE cannot change a row twice), and
the completion that brings ``nodes_done`` to ``nodes_total`` when the
workflow has a failed node, a callback to run or a parent to tell (under the
lock it finishes the workflow through ``maybe_finish``). These are rare:
once per workflow, or per group whose join feeds a join. Otherwise the last
completion ends the workflow SUCCESS in its own statement (``sql.success_sql``
with ``last``): the counters' lock serialises the completions, so exactly
one of them sees the count complete. SQLite and MariaDB always take the
locked path for outcomes.
"""

import logging
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from functools import partial
from typing import Any

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.db.models import DateTimeField, ExpressionWrapper, F, Value
from django.utils import timezone

from .. import signals
from ..conf import settings
from ..models import Workflow, WorkflowNode
from ..states import CALLBACK_KINDS, NODE_ACTIVE, NODE_TRANSITIONS, NodeKind, NodeState, TriggerRule, WorkflowState
from . import db, messaging, outcomes, sql, steps, waiting

logger = logging.getLogger("django_dyrygent.hotpath")

# The states a node may succeed from, as the state table says.
_SUCCEEDS_FROM = sorted(str(s) for s in NODE_ACTIVE if NodeState.SUCCESS in NODE_TRANSITIONS[s])
# Trigger rules a dependent may be queued under straight from its counters.
_QUEUE_RULES = [str(TriggerRule.ALL_SUCCESS), str(TriggerRule.ALL_DONE)]


_NODE_FIELD_OBJECTS = sql.NODE_FIELD_OBJECTS
_STARTED_FIELD_OBJECTS = sql.STARTED_FIELD_OBJECTS
# The states a worker's STARTED is written from, most likely first.
_STARTS_FROM = [str(s) for s in outcomes.WORKER_SOURCES[NodeState.STARTED]]


_TASKS_OPTIONS: Any = Workflow._meta.get_field("tasks_options")


# Per thread: the hot path's own connection, and the pid of the process that opened it.
_own = threading.local()
# Connections a forked child inherited: never closed nor collected there (their socket is
# the parent's: closing one would end the parent's session), only kept from the collector.
_inherited: list[BaseDatabaseWrapper] = []
# Every own connection this process opened, with the pid that opened it (``close_all_connections``).
_opened: weakref.WeakKeyDictionary[BaseDatabaseWrapper, int] = weakref.WeakKeyDictionary()


def _connection() -> BaseDatabaseWrapper:
    """The connection the hot path's statements run on.

    In a worker process on PostgreSQL, outside any atomic block, a connection
    of its own per thread (``connections.create_connection``), opened on first
    use and kept: Celery's Django fix-up closes Django's ``connections``
    before and after every task unless CELERY_DB_REUSE_MAX is set, which
    would cost every STARTED and every success a new PostgreSQL connection.
    A forked child opens its own (``os.getpid()`` changes). Inside an atomic
    block (a caller's transaction, a test), or outside a worker, Django's own
    connection, so the caller sees and rolls back what the hot path wrote.
    """
    default = Workflow.write_connection()
    if default.vendor != "postgresql" or not db.in_worker() or default.in_atomic_block:
        return default
    conn = getattr(_own, "conn", None)
    if conn is None or _own.pid != os.getpid():
        if conn is not None:
            _inherited.append(conn)
        conn = connections.create_connection(default.alias)
        _own.conn, _own.pid = conn, os.getpid()
        _opened[conn] = _own.pid
    return conn


def close_connection() -> None:
    """Close this thread's own hot-path connection, if it has one (tests, shutdown)."""
    conn = getattr(_own, "conn", None)
    if conn is not None:
        if _own.pid == os.getpid():
            db._close(conn)
        else:
            _inherited.append(conn)  # the parent's: never closed here
    _own.conn = None


def close_all_connections() -> None:
    """Close the own connections every thread of this process opened (a test session's end).

    Only once the threads that opened them are done with them: a thread's
    connection is otherwise its own. Connections a forked child inherited are
    left alone (their socket is the parent's).
    """
    close_connection()
    for conn, pid in list(_opened.items()):
        if pid == os.getpid() and conn.connection is not None:
            conn.inc_thread_sharing()
            db._close(conn)


@contextmanager
def _cursor() -> Iterator[tuple[BaseDatabaseWrapper, CursorWrapper]]:
    """The one door of every hot-path statement: ``(connection, cursor)``.

    A connection error closes and forgets the hot path's own connection (the
    next statement opens a new one); ``db.run`` retries the step.
    """
    conn = _connection()
    try:
        with conn.cursor() as cursor:
            yield conn, cursor
    except db.RETRYABLE:
        if conn is getattr(_own, "conn", None):
            close_connection()
        raise


def node_started(workflow_id: Any, task_id: str, hostname: str = "", pid: int | None = None) -> WorkflowNode | None:
    """A worker is about to run the node's task (task_prerun): ONE statement, no event row.

    QUEUED/RETRY/STARTED -> STARTED with ``started_at`` (the record of the
    start), ``timeout_at`` and the worker's ``hostname``/``pid`` (for the
    liveness sweep), conditional on the node being in one of those states
    under this task id. On PostgreSQL an ``UPDATE … RETURNING`` outside any
    transaction block (autocommit: no BEGIN/COMMIT). It takes no lock on the
    workflow row (the foreign key is not updated) and holds only the node's
    row, so it cannot take part in a deadlock: a cancel that already moved
    the node makes it match nothing, a cancel after it re-reads the node
    (``Step.transition_nodes``).

    Returns None when the node is not runnable (canceled, skipped, final,
    retried under a new task id, gone): the run-time guard then refuses the
    body. Otherwise a WorkflowNode: its NODE_FIELDS when ``node_state_changed``
    has receivers (which get it after the statement), else only its id, task
    id and state.
    """
    conn = _connection()
    hostname = hostname[:255]
    listened = bool(signals.node_state_changed.receivers)
    now = timezone.now()
    if conn.vendor != "postgresql":
        return _started_orm(workflow_id, task_id, hostname, pid, now, listened)
    fields = _NODE_FIELD_OBJECTS if listened else _STARTED_FIELD_OBJECTS
    with _cursor() as (conn, cursor):
        lazy = _lazy_commit(conn)
        cursor.execute(sql.started_sql(conn, listened, lazy),
                       [NodeState.STARTED, now, now, hostname, pid, workflow_id, task_id, _STARTS_FROM])
        while lazy and cursor.description is None and cursor.nextset():
            pass  # psycopg 3 stands on the SET's result first; psycopg2 on the last one
        row = cursor.fetchone()
    if row is None:
        return _not_runnable(workflow_id, task_id)
    node = _node(conn, row[1:], fields)
    if listened:
        # Not transaction.on_commit: it would open Django's connection to ask about autocommit.
        conn.on_commit(partial(signals.send, signals.node_state_changed, node=node, old_state=row[0],
                               new_state=NodeState.STARTED))
    return node


def _lazy_commit(conn: BaseDatabaseWrapper) -> bool:
    """Whether STARTED may commit without waiting for its WAL flush (``synchronous_commit = off``).

    A committing statement waits for PostgreSQL to flush its WAL to disk,
    on most disks far longer than the statement itself takes, once per
    STARTED and once per success. STARTED need not wait:
    the node's next durable commit (its outcome, always flushed) flushes the
    WAL before it, STARTED's record included, so only a database server crash
    while the task runs can lose it, and then the node is QUEUED again, which
    the outcome report accepts as well (and the sweep judges as for a lost
    start). Only in autocommit (outside a caller's transaction, where
    ``SET LOCAL`` would outlive the statement), and only with client-side
    parameter binding (Django's default): the SET and the UPDATE go as one
    query string, one round trip and one implicit transaction.
    """
    return not conn.in_atomic_block and not (conn.settings_dict.get("OPTIONS") or {}).get("server_side_binding")


def _started_orm(
    workflow_id: Any, task_id: str, hostname: str, pid: int | None, now: datetime, listened: bool
) -> WorkflowNode | None:
    """``node_started`` on SQLite and MariaDB: one UPDATE (a SELECT more for the signal's receivers)."""
    values = {
        "state": NodeState.STARTED, "started_at": now, "worker_hostname": hostname, "worker_pid": pid,
        # NULL when the node has no timeout.
        "timeout_at": ExpressionWrapper(Value(now) + F("timeout"), output_field=DateTimeField()),
    }
    if _connection().vendor == "mysql":
        # InnoDB locks every row its UPDATE scans, so a bare UPDATE could hold this node while
        # waiting for another that a cancel (workflow row, then nodes) holds: deadlock. Take the
        # workflow row shared first (waits for the decisions, shared with other starts).
        with transaction.atomic():
            conn = _connection()
            with conn.cursor() as cursor:
                cursor.execute(sql.share_workflow_sql(conn), [Workflow._meta.pk.get_db_prep_value(workflow_id, conn)])
            return _started_update(workflow_id, task_id, values, listened)
    return _started_update(workflow_id, task_id, values, listened)


def _started_update(workflow_id: Any, task_id: str, values: dict[str, Any], listened: bool) -> WorkflowNode | None:
    nodes = WorkflowNode.objects.filter(task_id=task_id, workflow_id=workflow_id)
    if not listened:
        if not nodes.filter(state__in=_STARTS_FROM).update(**values):
            return _not_runnable(workflow_id, task_id)
        node = WorkflowNode(workflow_id=workflow_id, task_id=task_id, state=NodeState.STARTED)
        node._state.adding = False
        return node
    for old in _STARTS_FROM:  # the old state is the signal's
        if nodes.filter(state=old).update(**values):
            found = nodes.only(*sql.NODE_FIELDS).first()
            transaction.on_commit(partial(signals.send, signals.node_state_changed, node=found,
                                          old_state=old, new_state=NodeState.STARTED))
            return found
    return _not_runnable(workflow_id, task_id)


def _not_runnable(workflow_id: Any, task_id: str) -> WorkflowNode | None:
    """Log that the STARTED report matched no row (in the event log when a re-run replaced the task); None.

    A node that still has the task id is canceled, skipped or final: that
    is the logger's. Without one, the id may have been replaced (a worker
    declared dead woke up with the message in hand).
    """
    if WorkflowNode.objects.filter(task_id=task_id).exists() or not outcomes.note_stale_report(
        workflow_id, task_id, NodeState.STARTED, note="; its body was not run",
    ):
        logger.info("Workflow %s: STARTED report for task %s ignored (node gone, final or moved on)",
                    workflow_id, task_id)
    return None


def _node(conn: BaseDatabaseWrapper, values: Any, fields: list[Any] = _NODE_FIELD_OBJECTS) -> WorkflowNode:
    """A WorkflowNode from RETURNING columns, converted as the ORM would (JSON decoded)."""
    values = [
        f.from_db_value(v, None, conn) if hasattr(f, "from_db_value") else v
        for f, v in zip(fields, values, strict=True)
    ]
    return WorkflowNode.from_db(conn.alias, [f.attname for f in fields], values)


class _Fallback(Exception):
    """This completion needs a decision the hot path does not take: roll back, lock."""


def node_succeeded(workflow_id: Any, task_id: str, result: Any) -> WorkflowNode | None:
    """A worker reports that the node's task returned ``result``; see the module docstring.

    Returns the node, or None when the report was ignored, as
    ``outcomes.node_succeeded`` does (which this falls back to).
    """
    conn = _connection()
    if conn.vendor != "postgresql":
        return outcomes.node_succeeded(workflow_id, task_id, result)
    value, problem = outcomes.encode_result(result)
    if problem is None:
        try:
            return _fast_success(workflow_id, task_id, value)
        except _Fallback as why:
            logger.debug("Workflow %s, task %s: locked path (%s)", workflow_id, task_id, why)
        except outcomes.VALUE_REFUSED:
            pass  # the locked path fails this node alone, saying why
    return outcomes.node_succeeded(workflow_id, task_id, result)


def success_params(conn: BaseDatabaseWrapper, workflow_id: Any, task_id: str, value: Any) -> dict[str, Any]:
    """The parameters of ``sql.success_sql``: this completion's, and the state table's."""
    return {
        "wf": workflow_id, "task": task_id, "now": timezone.now(),
        "result": WorkflowNode._meta.get_field("result").get_db_prep_save(value, conn),
        "running": WorkflowState.RUNNING, "task_kind": NodeKind.TASK, "active": _SUCCEEDS_FROM,
        "pending": NodeState.PENDING, "queued": NodeState.QUEUED, "success": NodeState.SUCCESS,
        "queue_rules": _QUEUE_RULES, "callbacks": [str(k) for k in CALLBACK_KINDS],
        "join_kind": NodeKind.JOIN, "ended": WorkflowState.SUCCESS, "channel": waiting.channel(workflow_id),
    }


def _prepared_cursor(conn: BaseDatabaseWrapper) -> CursorWrapper | None:
    """A cursor that binds parameters on the server and prepares, on the hot path's own connection; else None.

    Planning the success statement (a CTE of a dozen parts) costs PostgreSQL
    about a millisecond each time, as much as running it. Prepared on the
    worker's own connection, it is planned once per connection and variant
    (PostgreSQL may then keep a generic plan). Django's own cursors bind on
    the client and never prepare (its default, for poolers), so only the
    connection this module opened, which nobody else uses, gets this (psycopg
    3, DYRYGENT_PREPARED_STATEMENTS on): a server-binding cursor, prepared
    from its first run, wrapped as Django wraps its own (its exceptions, its
    ``execute_wrapper`` hooks, ``connection.queries``).

    A generic plan is kept for the connection's life, whatever the tables
    became since: one made while the tables were nearly empty (a new
    deployment, the first minute of a benchmark) scanned the whole node
    table at every completion once it held thousands of rows (a completion
    went from 3 to 9 ms). Every statement of this connection reads a handful
    of rows by key, so the connection plans index lookups only
    (``sql.KEY_LOOKUP_PLANS``), whatever the statistics say.
    """
    if not settings.PREPARED_STATEMENTS or conn is not getattr(_own, "conn", None) or conn.in_atomic_block:
        return None
    raw = conn.connection
    if raw is None or not hasattr(raw, "prepare_threshold"):  # psycopg2: no prepared statements here
        return None
    import psycopg

    if raw not in _planned:
        raw.execute(sql.KEY_LOOKUP_PLANS)
        raw.prepare_threshold = 0  # Django's None turns preparing off; Django's client-side cursors never do
        _planned.add(raw)
    return conn._prepare_cursor(psycopg.Cursor(raw))


# The own connections (psycopg's) whose planner settings ``_prepared_cursor`` set.
_planned: weakref.WeakSet[Any] = weakref.WeakSet()


def _fast_success(workflow_id: Any, task_id: str, value: Any) -> WorkflowNode:
    """Record a plain success in one statement; raise ``_Fallback`` (nothing written) otherwise."""
    with _cursor() as (conn, cursor):
        params = success_params(conn, workflow_id, task_id, value)
        event_log = bool(settings.EVENT_LOG)

        prepared = _prepared_cursor(conn)

        def run(joins: bool, last: bool) -> list[tuple[Any, ...]]:
            statement = sql.success_sql(conn, event_log, joins, last)
            if prepared is not None:
                prepared.execute(statement, params)
                return prepared.fetchall()
            # Its own transaction in autocommit (a worker); a savepoint inside the caller's.
            with transaction.atomic(using=conn.alias) if conn.in_atomic_block else nullcontext():
                cursor.execute(statement, params)
                return cursor.fetchall()

        joins = last = False
        try:
            rows = run(joins, last)
            node_ok, deps_ok = rows[0][:2]
            if node_ok and not deps_ok:
                # Nothing written: a dependent needs more than a decrement, maybe a join this
                # completion releases (once per join, not per sibling): the statement that decides joins.
                joins = True
                rows = run(joins, last)
            node_ok, deps_ok, count_ok = rows[0][:3]
            if node_ok and deps_ok and not count_ok:
                # Nothing written: maybe the workflow's last node, which ends it (once per workflow).
                last = True
                rows = run(joins, last)
        finally:
            if prepared is not None:
                prepared.close()
    node_ok, deps_ok, count_ok = rows[0][:3]
    if not (node_ok and deps_ok and count_ok):
        raise _Fallback(
            "workflow not RUNNING or passing results, or node not an active task" if not node_ok
            else "a dependent needs a decision (fan-out, skip, upstream failure, callback, a join's "
                 "dependent that is not a plain task or that another completion holds)"
            if not deps_ok else "the last node of a workflow that has failures, callbacks or a parent"
        )
    node, released, tasks_options = None, [], None
    for row in sorted(rows, key=lambda r: r[4]):
        role, old_state, options, values = row[4], row[5], row[6], row[7:]
        if role == 1:
            node, old = _node(conn, values), old_state
            tasks_options = _TASKS_OPTIONS.from_db_value(options, None, conn)
        else:
            released.append(_node(conn, values))
    assert node is not None  # decision ok: the node row was updated
    state = WorkflowState.SUCCESS if last else WorkflowState.RUNNING
    wf = Workflow.from_db(conn.alias, ["id", "state", "pass_results"], [node.workflow_id, state, False])
    step = steps.Step(wf)
    if last:  # announced as decisions.finish's are
        step.wf_changes.append((WorkflowState.RUNNING, WorkflowState.SUCCESS))
        step.finished = True
    step.node_changes.append((node, old, NodeState.SUCCESS))
    step.node_changes.extend((dep, NodeState.PENDING, NodeState.QUEUED) for dep in released)
    step.to_publish = [(dep, ()) for dep in released]
    # Committed already (autocommit): on_commit runs these now; in a caller's transaction, at its commit
    # (not transaction.on_commit: it would open Django's connection to ask about autocommit).
    if released:
        conn.on_commit(partial(messaging.publish, workflow_id, tasks_options or {}, step.to_publish))
    conn.on_commit(step.announce)
    return node
