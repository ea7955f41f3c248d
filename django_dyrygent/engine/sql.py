"""The text of the hot path's one-statement successes (PostgreSQL); ``hotpath`` runs them.

Kept apart from ``hotpath`` (the connection, the fallbacks, publishing) so
that each stays readable: this module only builds SQL and knows nothing of
Celery. The statement's guarantees are argued in ``hotpath``'s docstring and
in ``success_sql``'s.
"""

from functools import cache

from django.db.models import Model

from ..models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from . import steps

# The columns the engine reads of a node, in model order (what Model.from_db expects).
NODE_FIELD_OBJECTS = [f for f in WorkflowNode._meta.concrete_fields if f.attname in steps.NODE_FIELDS]
NODE_DB_COLUMNS = [str(f.column) for f in NODE_FIELD_OBJECTS]


def table(model: type[Model]) -> str:
    return model._meta.db_table


def _ready(counts: str) -> str:
    """A task dependent this completion queues: its last dependency, plain rule, nothing failed."""
    return (
        f"n.waiting = {counts}.n AND n.failed_dependencies = 0 AND n.state = %(pending)s "
        f"AND n.kind = %(task_kind)s AND n.trigger_rule = ANY(%(queue_rules)s)"
    )


# A join this completion succeeds: its last dependency and nothing failed (a join's readiness
# ignores its trigger rule: decisions.readiness). A fan-out (kind map) is not one of them.
_JOIN_READY = "n.waiting = h.n AND n.failed_dependencies = 0 AND n.state = %(pending)s AND n.kind = %(join_kind)s"


def _blocked(alias: str) -> str:
    """A dependent the statement cannot decide: a callback, or a PENDING node whose counters
    reach zero (or carry a failure) without being a ready task (or, one level up, a ready join)."""
    return (
        f"({alias}.kind = ANY(%(callbacks)s) OR ({alias}.state = %(pending)s "
        f"AND ({alias}.waiting - {alias}.n <= 0 OR {alias}.failed_dependencies > 0)))"
    )


@cache
def plain_success_sql(event_log: bool) -> str:
    """The success of a node whose dependents are task nodes only (PostgreSQL), built once.

    ``success_sql`` without the joins: the same locks in the same order
    (``wf``, ``me``, ``deps``, ``cnt``) and the same result rows, so the two
    are read alike. It is what almost every completion runs: planning the
    join statement's three CTEs more cost a group of 200 about a fifth more
    time per completion (bench/README.md), although they find nothing. When
    a dependent is a join this completion would release, ``deps_ok`` is
    false, nothing is written, and ``hotpath`` runs ``success_sql``.
    """
    node_t, wf_t, edge_t = table(WorkflowNode), table(Workflow), table(WorkflowEdge)
    names = ", ".join(NODE_DB_COLUMNS)
    cols = ", ".join(f"d.{c}" for c in NODE_DB_COLUMNS)
    events = (
        f", events AS (INSERT INTO {table(WorkflowEvent)} "
        f"  (workflow_id, node_id, old_state, new_state, reason, created_at) "
        f"  SELECT workflow_id, id, old_state, %(success)s, '', %(now)s FROM done "
        f"  UNION ALL SELECT workflow_id, id, %(pending)s, %(queued)s, '', %(now)s FROM released WHERE ready) "
    ) if event_log else ""
    return (
        f"WITH wf AS (SELECT id, tasks_options FROM {wf_t} "
        f"  WHERE id = %(wf)s AND state = %(running)s AND NOT pass_results FOR KEY SHARE), "
        f"me AS (SELECT id, state FROM {node_t} WHERE workflow_id = (SELECT id FROM wf) "
        f"  AND task_id = %(task)s AND kind = %(task_kind)s AND state = ANY(%(active)s) FOR UPDATE), "
        f"deps AS (SELECT n.id, n.state, n.kind, n.waiting, n.failed_dependencies, h.n, ({_ready('h')}) AS ready "
        f"  FROM {node_t} n JOIN (SELECT node_id, count(*) AS n FROM {edge_t} "
        f"    WHERE dependency_id = (SELECT id FROM me) GROUP BY node_id) h ON h.node_id = n.id "
        f"  ORDER BY n.id FOR UPDATE OF n), "
        f"cnt AS (SELECT nodes_done, nodes_total FROM {wf_t} WHERE id = (SELECT id FROM wf) "
        f"  AND EXISTS (SELECT 1 FROM me) AND (SELECT count(*) FROM deps) >= 0 FOR NO KEY UPDATE), "
        f"decision AS MATERIALIZED (SELECT *, node_ok AND deps_ok AND count_ok AS ok FROM (SELECT "
        f"  EXISTS (SELECT 1 FROM me) AS node_ok, "
        f"  NOT EXISTS (SELECT 1 FROM deps WHERE NOT ready AND {_blocked('deps')}) AS deps_ok, "
        f"  EXISTS (SELECT 1 FROM cnt WHERE nodes_done + 1 < nodes_total) AS count_ok, "
        f"  (SELECT clock_timestamp() FROM cnt) AS locked_at) c), "
        f"done AS (UPDATE {node_t} d SET state = %(success)s, result = %(result)s, error = '', "
        f"  finished_at = %(now)s FROM me WHERE d.id = me.id AND (SELECT ok FROM decision) "
        f"  RETURNING me.state AS old_state, {cols}), "
        f"released AS (UPDATE {node_t} d SET waiting = d.waiting - deps.n, "
        f"  state = CASE WHEN deps.ready THEN %(queued)s ELSE d.state END, "
        f"  queued_at = CASE WHEN deps.ready THEN %(now)s ELSE d.queued_at END, "
        f"  publish_count = d.publish_count + CASE WHEN deps.ready THEN 1 ELSE 0 END "
        f"  FROM deps WHERE d.id = deps.id AND (SELECT ok FROM decision) "
        f"  RETURNING deps.ready, {cols}), "
        f"counters AS (UPDATE {wf_t} SET nodes_done = nodes_done + 1, nodes_succeeded = nodes_succeeded + 1 "
        f"  WHERE id = (SELECT id FROM wf) AND (SELECT ok FROM decision) RETURNING id)"
        f"{events} "
        f"SELECT dc.node_ok, dc.deps_ok, dc.count_ok, dc.locked_at, r.* FROM decision dc LEFT JOIN ("
        f"  SELECT 1 AS role, old_state, (SELECT tasks_options FROM wf) AS tasks_options, {names} FROM done "
        f"  UNION ALL SELECT 2, %(pending)s, NULL, {names} FROM released WHERE ready"
        f") r ON true"
    )


@cache
def success_sql(event_log: bool) -> str:
    """The one statement of a plain success (PostgreSQL), built once; see ``hotpath``'s docstring.

    Locks, always in this order: the workflow row FOR KEY SHARE (``wf``), the
    node (``me``), its dependents in id order (``deps``), the dependents of
    the joins this completion succeeds, in id order and SKIP LOCKED
    (``jdeps``), the workflow row FOR NO KEY UPDATE (``cnt``, the only lock a
    sibling completion waits for, held from there to the commit). Each is
    taken by a CTE that reads the one before it (``jh`` reads all of ``deps``
    through an ARRAY, ``cnt`` counts ``deps`` and ``jdeps``), so PostgreSQL
    cannot reorder them; a row lock reads the row's newest committed version,
    so ``decision`` is taken on the newest values. Every write is
    conditioned on ``decision``: all of them happen, or none.

    ``jdeps`` never waits: a row another transaction holds is skipped, the
    count of ``jdeps`` then differs from ``jh``'s and the statement writes
    nothing. So the only waits between two completions are for ``me``, for
    ``deps`` (both in one order: the node, then ascending ids) and for
    ``cnt`` (last: its holder waits for nothing more), as before joins were
    decided here. ``decision.locked_at`` is the server's clock when ``cnt``
    was locked (the probes' measure of the counters' hold).
    """
    node_t, wf_t, edge_t = table(WorkflowNode), table(Workflow), table(WorkflowEdge)
    names = ", ".join(NODE_DB_COLUMNS)
    cols = ", ".join(f"d.{c}" for c in NODE_DB_COLUMNS)
    events = (
        f", events AS (INSERT INTO {table(WorkflowEvent)} "
        f"  (workflow_id, node_id, old_state, new_state, reason, created_at) "
        f"  SELECT workflow_id, id, old_state, %(success)s, '', %(now)s FROM done "
        f"  UNION ALL SELECT workflow_id, id, %(pending)s, %(success)s, '', %(now)s FROM released WHERE join_ready "
        f"  UNION ALL SELECT workflow_id, id, %(pending)s, %(queued)s, '', %(now)s FROM released WHERE ready "
        f"  UNION ALL SELECT workflow_id, id, %(pending)s, %(queued)s, '', %(now)s FROM released2 WHERE ready) "
    ) if event_log else ""
    queue = (
        "state = CASE WHEN {t}.ready THEN %(queued)s {join} ELSE d.state END, "
        "queued_at = CASE WHEN {t}.ready THEN %(now)s ELSE d.queued_at END, "
        "publish_count = d.publish_count + CASE WHEN {t}.ready THEN 1 ELSE 0 END"
    )
    return (
        f"WITH wf AS (SELECT id, tasks_options FROM {wf_t} "
        f"  WHERE id = %(wf)s AND state = %(running)s AND NOT pass_results FOR KEY SHARE), "
        f"me AS (SELECT id, state FROM {node_t} WHERE workflow_id = (SELECT id FROM wf) "
        f"  AND task_id = %(task)s AND kind = %(task_kind)s AND state = ANY(%(active)s) FOR UPDATE), "
        f"deps AS (SELECT n.id, n.state, n.kind, n.waiting, n.failed_dependencies, h.n, "
        f"  ({_ready('h')}) AS ready, ({_JOIN_READY}) AS join_ready "
        f"  FROM {node_t} n JOIN (SELECT node_id, count(*) AS n FROM {edge_t} "
        f"    WHERE dependency_id = (SELECT id FROM me) GROUP BY node_id) h ON h.node_id = n.id "
        f"  ORDER BY n.id FOR UPDATE OF n), "
        f"jh AS (SELECT node_id, count(*) AS n FROM {edge_t} "
        f"  WHERE dependency_id = ANY(ARRAY(SELECT id FROM deps WHERE join_ready)) GROUP BY node_id), "
        f"jdeps AS (SELECT n.id, n.state, n.kind, n.waiting, n.failed_dependencies, jh.n, ({_ready('jh')}) AS ready "
        f"  FROM {node_t} n JOIN jh ON jh.node_id = n.id ORDER BY n.id FOR UPDATE OF n SKIP LOCKED), "
        f"cnt AS (SELECT nodes_done, nodes_total FROM {wf_t} WHERE id = (SELECT id FROM wf) "
        f"  AND EXISTS (SELECT 1 FROM me) AND (SELECT count(*) FROM deps) >= 0 "
        f"  AND (SELECT count(*) FROM jdeps) >= 0 FOR NO KEY UPDATE), "
        f"decision AS MATERIALIZED (SELECT *, node_ok AND deps_ok AND count_ok AS ok FROM (SELECT "
        f"  EXISTS (SELECT 1 FROM me) AS node_ok, "
        f"  NOT EXISTS (SELECT 1 FROM deps WHERE NOT ready AND NOT join_ready AND {_blocked('deps')}) "
        f"  AND NOT EXISTS (SELECT 1 FROM jdeps WHERE NOT ready AND {_blocked('jdeps')}) "
        f"  AND (SELECT count(*) FROM jdeps) = (SELECT count(*) FROM jh) "
        f"  AND NOT EXISTS (SELECT 1 FROM jdeps JOIN deps ON deps.id = jdeps.id) AS deps_ok, "
        f"  EXISTS (SELECT 1 FROM cnt WHERE nodes_done + 1 < nodes_total) AS count_ok, "
        f"  (SELECT clock_timestamp() FROM cnt) AS locked_at) c), "
        f"done AS (UPDATE {node_t} d SET state = %(success)s, result = %(result)s, error = '', "
        f"  finished_at = %(now)s FROM me WHERE d.id = me.id AND (SELECT ok FROM decision) "
        f"  RETURNING me.state AS old_state, {cols}), "
        f"released AS (UPDATE {node_t} d SET waiting = d.waiting - deps.n, "
        + queue.format(t="deps", join="WHEN deps.join_ready THEN %(success)s") +
        # A join finishes at the server's clock after every lock: a sibling that decremented it
        # earlier committed before, so its finished_at (its worker's clock, taken before its
        # statement) is never later than the join's (dependency order, as under the lock).
        f", finished_at = CASE WHEN deps.join_ready THEN (SELECT locked_at FROM decision) "
        f"  ELSE d.finished_at END "
        f"  FROM deps WHERE d.id = deps.id AND (SELECT ok FROM decision) "
        f"  RETURNING deps.ready, deps.join_ready, {cols}), "
        f"released2 AS (UPDATE {node_t} d SET waiting = d.waiting - jdeps.n, "
        + queue.format(t="jdeps", join="") +
        f"  FROM jdeps WHERE d.id = jdeps.id AND (SELECT ok FROM decision) "
        f"  RETURNING jdeps.ready, {cols}), "
        f"counters AS (UPDATE {wf_t} SET nodes_done = nodes_done + 1, nodes_succeeded = nodes_succeeded + 1 "
        f"  WHERE id = (SELECT id FROM wf) AND (SELECT ok FROM decision) RETURNING id)"
        f"{events} "
        f"SELECT dc.node_ok, dc.deps_ok, dc.count_ok, dc.locked_at, r.* FROM decision dc LEFT JOIN ("
        f"  SELECT 1 AS role, old_state, (SELECT tasks_options FROM wf) AS tasks_options, {names} FROM done "
        f"  UNION ALL SELECT 2, %(pending)s, NULL, {names} FROM released WHERE ready "
        f"  UNION ALL SELECT 3, %(pending)s, NULL, {names} FROM released2 WHERE ready"
        f") r ON true"
    )
