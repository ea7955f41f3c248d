"""Every raw SQL statement of the package, each a named builder; the callers run them.

The ORM writes everything else. A statement is here when the ORM cannot say
it: the PostgreSQL hot path's one-statement STARTED and success (their
guarantees are argued in ``hotpath``'s docstring and in ``success_sql``'s),
the lock modes the ORM has no word for (``FOR KEY SHARE``, ``LOCK IN SHARE
MODE``, ``SKIP LOCKED`` inside an UPDATE), notifications (``pg_notify``,
``LISTEN``) and the COPY writer's ``nextval`` and ``COPY``.
``tests/unit/test_sql.py`` runs each statement against the ORM path it stands for.

One quoting rule. Every name taken from ``Model._meta`` (a table, a column
list built from fields) goes through the connection's ``ops.quote_name``;
values are always parameters, never text in the statement. The columns the
statements name in their text are the models' own lower-case column names,
which need no quoting on any backend (the test above runs every statement, so
a renamed column fails it). The builders take the connection for its
``quote_name`` and vendor; the text is built once per vendor and arguments
(``_once``): tables and columns do not change at run time.

Layering. This module imports only the models and ``states``, nothing else of
the engine, so it is a leaf every caller may use. The one caller outside
``engine/`` is the COPY writer (``build/copywriter.py``): ``build/`` may
import ``engine.sql`` and no other engine module (``tests/unit/test_layering.py``
holds both rules).
"""

from collections.abc import Callable, Sequence
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model

from ..models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode

Quote = Callable[[str], str]

#: Fields loaded whenever the engine reasons about a node (``steps``, ``decisions``, the hot path's RETURNING).
NODE_FIELDS = (
    "id", "workflow_id", "task_id", "task_name", "kind", "state", "trigger_rule",
    "waiting", "failed_dependencies", "signature", "publish_count", "fanout_size", "timeout",
    "concurrency_key", "concurrency_limit",
)
# Those fields in model order (what Model.from_db expects), and their columns.
NODE_FIELD_OBJECTS = [f for f in WorkflowNode._meta.concrete_fields if f.attname in NODE_FIELDS]
NODE_DB_COLUMNS = [str(f.column) for f in NODE_FIELD_OBJECTS]
#: What ``started_sql`` returns when nobody listens to ``node_state_changed``.
STARTED_FIELD_OBJECTS = [
    f for f in WorkflowNode._meta.concrete_fields if f.attname in ("id", "workflow_id", "task_id", "state")
]

_built: dict[tuple[Any, ...], str] = {}


def _once(build: Callable[..., str], conn: BaseDatabaseWrapper, *args: Any) -> str:
    """``build(quote_name, *args)``, built on first use for this vendor and kept."""
    key = (build, conn.vendor, args)
    sql = _built.get(key)
    if sql is None:
        sql = _built[key] = build(conn.ops.quote_name, *args)
    return sql


def _table(quote: Quote, model: type[Model]) -> str:
    return quote(model._meta.db_table)


def _column(quote: Quote, model: type[Model], attname: str) -> str:
    fields = {f.attname: f for f in model._meta.concrete_fields}
    return quote(str(fields[attname].column))


# -- rows taken shared -------------------------------------------------------------------------


def share_workflow_sql(conn: BaseDatabaseWrapper) -> str:
    """One workflow row (one parameter: its id) locked shared until the transaction ends.

    PostgreSQL's ``FOR KEY SHARE`` (what a foreign key to the row takes: it
    waits for the engine's ``FOR UPDATE`` and is shared with completions),
    MySQL/MariaDB's ``LOCK IN SHARE MODE``. Returns one row when the workflow
    exists. Other backends have no row locks: a plain read.
    """
    return _once(_share_workflow, conn, conn.vendor)


def _share_workflow(quote: Quote, vendor: str) -> str:
    mode = {"postgresql": " FOR KEY SHARE", "mysql": " LOCK IN SHARE MODE"}.get(vendor, "")
    return f"SELECT 1 FROM {_table(quote, Workflow)} WHERE {_column(quote, Workflow, 'id')} = %s{mode}"


# -- the idle tick (PostgreSQL) ----------------------------------------------------------------


def idle_tick_sql(conn: BaseDatabaseWrapper) -> str:
    """Count an idle tick and move ``next_tick_at`` unless a step holds the row (PostgreSQL).

    Parameters: the workflow's id, RUNNING, the ``next_tick_at`` read before
    (NULL matches NULL), the new ``next_tick_at`` (NULL keeps it). The row is
    taken ``FOR KEY SHARE SKIP LOCKED`` in the same statement: a locked step
    (``FOR UPDATE``) is not waited for, the completions' ``FOR KEY SHARE``
    does not conflict. ``rowcount`` says whether the tick was counted.
    """
    return _once(_idle_tick, conn)


def _idle_tick(quote: Quote) -> str:
    table = _table(quote, Workflow)
    ident, state, ticks, next_at = (_column(quote, Workflow, a) for a in ("id", "state", "ticks", "next_tick_at"))
    return (
        f"WITH free AS (SELECT {ident} FROM {table} WHERE {ident} = %s AND {state} = %s"
        f" AND {next_at} IS NOT DISTINCT FROM %s::timestamptz FOR KEY SHARE SKIP LOCKED)"
        f" UPDATE {table} SET {ticks} = {table}.{ticks} + 1,"
        f" {next_at} = COALESCE(%s::timestamptz, {table}.{next_at})"
        f" FROM free WHERE {table}.{ident} = free.{ident}"
    )


# -- notifications (PostgreSQL) ----------------------------------------------------------------

#: Queue a notification (parameters: channel, payload); delivered at commit, dropped on rollback.
NOTIFY_SQL = "SELECT pg_notify(%s, %s)"


def listen_sql(conn: BaseDatabaseWrapper, channel: str) -> str:
    """LISTEN on ``channel``: an identifier, so quoted, not a parameter (LISTEN takes none)."""
    return f"LISTEN {conn.ops.quote_name(channel)}"


# -- the COPY writer (PostgreSQL) --------------------------------------------------------------


def reserve_ids_sql(conn: BaseDatabaseWrapper, model: type[Model]) -> tuple[str, list[Any]]:
    """``count`` ids from ``model``'s primary key sequence: the statement and its first two parameters.

    The caller appends the count. The table is a value here (the argument of
    ``pg_get_serial_sequence``), quoted as the function expects.
    """
    sql = "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)"
    return sql, [conn.ops.quote_name(model._meta.db_table), model._meta.pk.column]


def copy_sql(conn: BaseDatabaseWrapper, table: str, columns: Sequence[str]) -> str:
    """``COPY table (columns) FROM STDIN``: the rows follow in the COPY protocol."""
    quote = conn.ops.quote_name
    return f"COPY {quote(table)} ({', '.join(quote(c) for c in columns)}) FROM STDIN"


# -- the hot path (PostgreSQL) -----------------------------------------------------------------

#: For the hot path's own connection (``hotpath._prepared_cursor``), once per session: plans of
#: index lookups and nested loops only, so that a generic plan made on near-empty tables never
#: scans a table once it is large (the hot statements read a handful of rows by key).
KEY_LOOKUP_PLANS = (
    "SELECT set_config('enable_seqscan', 'off', false), set_config('enable_hashjoin', 'off', false),"
    " set_config('enable_mergejoin', 'off', false)"
)


def started_sql(conn: BaseDatabaseWrapper, listened: bool, lazy: bool = False) -> str:
    """STARTED's one statement (PostgreSQL): a conditional UPDATE of the node, RETURNING it.

    Parameters: STARTED, now, now, hostname, pid, workflow id, task id, the
    states it starts from. The subquery locks the node row and reads its state
    before the change (the first column returned). It returns
    ``NODE_FIELD_OBJECTS`` when ``listened`` (the signal's receivers get the
    node), else ``STARTED_FIELD_OBJECTS``. ``lazy``: the commit does not wait
    for the WAL flush (``hotpath._lazy_commit`` says when that is allowed).
    """
    return _once(_started, conn, listened, lazy)


def _started(quote: Quote, listened: bool, lazy: bool) -> str:
    node_t = _table(quote, WorkflowNode)
    fields = NODE_FIELD_OBJECTS if listened else STARTED_FIELD_OBJECTS
    returned = ", ".join(f"d.{quote(str(f.column))}" for f in fields)
    return ("SET LOCAL synchronous_commit = off; " if lazy else "") + (
        f"UPDATE {node_t} d SET state = %s, started_at = %s, timeout_at = %s + d.timeout, "
        f"  worker_hostname = %s, worker_pid = %s "
        f"FROM (SELECT id, state FROM {node_t} WHERE workflow_id = %s AND task_id = %s "
        f"      AND state = ANY(%s) FOR UPDATE) o "
        f"WHERE d.id = o.id RETURNING o.state, {returned}"
    )


def _ready(counts: str) -> str:
    """A task dependent this completion queues: its last dependency, plain rule, nothing failed."""
    return (
        f"n.waiting = {counts}.n AND n.failed_dependencies = 0 AND n.state = %(pending)s "
        f"AND n.kind = %(task_kind)s AND n.trigger_rule = ANY(%(queue_rules)s) AND n.concurrency_key IS NULL"
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


def success_sql(conn: BaseDatabaseWrapper, event_log: bool, joins: bool, last: bool = False) -> str:
    """The one statement of a plain success (PostgreSQL); see ``hotpath``'s docstring.

    Locks, always in this order: the workflow row FOR KEY SHARE (``wf``), the
    node (``me``), its dependents in id order (``deps``), with ``joins`` the
    dependents of the joins this completion succeeds, in id order and SKIP
    LOCKED (``jdeps``), and last the workflow row FOR NO KEY UPDATE (``cnt``,
    the only lock a sibling completion waits for, held from there to the
    commit). Each is taken by a CTE that reads the one before it (``jh``
    reads all of ``deps`` through an ARRAY, ``cnt`` counts ``deps`` and
    ``jdeps``), so PostgreSQL cannot reorder them; a row lock reads the row's
    newest committed version, so ``decision`` is taken on the newest values.
    Every write is conditioned on ``decision``: all of them happen, or none.

    Without ``joins`` a dependent that is a join this completion would
    release counts as undecided: ``deps_ok`` is false, nothing is written,
    and ``hotpath`` runs the statement again with ``joins``. Almost every
    completion releases no join, and the three CTEs that decide joins cost
    planning time on each run, so they are there only when asked for.

    ``jdeps`` never waits: a row another transaction holds is skipped, the
    count of ``jdeps`` then differs from ``jh``'s and the statement writes
    nothing. So the only waits between two completions are for ``me``, for
    ``deps`` (both in one order: the node, then ascending ids) and for
    ``cnt`` (last: its holder waits for nothing more). ``decision.locked_at``
    is the server's clock when ``cnt`` was locked (a join succeeded here
    finishes at it).

    With ``last`` the statement is the one of the workflow's last task node:
    ``count_ok`` asks that this success completes the count with nothing
    failed, no callback waiting to run and no parent workflow to tell (the
    locked path's ``decisions.finish`` does all three), and the counters'
    UPDATE ends the workflow SUCCESS with its event row and ``wait()``'s
    notification (parameter ``channel``), under the counters' lock that
    serialises it with every other completion, at ``locked_at`` (not the
    reporting worker's ``now``, taken before the statement waited: a sibling
    counted meanwhile may have run after it). Without ``last`` such a
    completion writes nothing (``count_ok`` false) and ``hotpath`` asks again
    with ``last``: one statement more, once per workflow, instead of the
    locked step.

    Result rows: ``node_ok, deps_ok, count_ok, locked_at``, then a role (1:
    the node, 2: a dependent queued, 3: a join's dependent queued), the old
    state, the workflow's ``tasks_options`` (role 1) and ``NODE_DB_COLUMNS``.
    """
    return _once(_success, conn, event_log, joins, last)


def _success(quote: Quote, event_log: bool, joins: bool, last: bool) -> str:
    node_t, wf_t, edge_t = _table(quote, WorkflowNode), _table(quote, Workflow), _table(quote, WorkflowEdge)
    names = ", ".join(quote(c) for c in NODE_DB_COLUMNS)
    cols = ", ".join(f"d.{quote(c)}" for c in NODE_DB_COLUMNS)
    events = (
        f", events AS (INSERT INTO {_table(quote, WorkflowEvent)} "
        f"  (workflow_id, node_id, old_state, new_state, reason, created_at) "
        f"  SELECT workflow_id, id, old_state, %(success)s, '', %(now)s FROM done "
        + ("  UNION ALL SELECT workflow_id, id, %(pending)s, %(success)s, '', %(now)s FROM released "
           "WHERE join_ready " if joins else "")
        + "  UNION ALL SELECT workflow_id, id, %(pending)s, %(queued)s, '', %(now)s FROM released WHERE ready"
        + (" UNION ALL SELECT workflow_id, id, %(pending)s, %(queued)s, '', %(now)s FROM released2 WHERE ready"
           if joins else "")
        + (" UNION ALL SELECT id, NULL, %(running)s, %(ended)s, '', (SELECT locked_at FROM decision) FROM counters"
           if last else "")
        + ") "
    ) if event_log else ""
    queue = (
        "state = CASE WHEN {t}.ready THEN %(queued)s {join}ELSE d.state END, "
        "queued_at = CASE WHEN {t}.ready THEN %(now)s ELSE d.queued_at END, "
        "publish_count = d.publish_count + CASE WHEN {t}.ready THEN 1 ELSE 0 END"
    )
    join_ready = f", ({_JOIN_READY}) AS join_ready" if joins else ""
    join_ctes = (
        f"jh AS (SELECT node_id, count(*) AS n FROM {edge_t} "
        f"  WHERE dependency_id = ANY(ARRAY(SELECT id FROM deps WHERE join_ready)) GROUP BY node_id), "
        f"jdeps AS (SELECT n.id, n.state, n.kind, n.waiting, n.failed_dependencies, jh.n, ({_ready('jh')}) AS ready "
        f"  FROM {node_t} n JOIN jh ON jh.node_id = n.id ORDER BY n.id FOR UPDATE OF n SKIP LOCKED), "
    ) if joins else ""
    deps_ok = (
        f"  NOT EXISTS (SELECT 1 FROM deps WHERE NOT ready AND NOT join_ready AND {_blocked('deps')}) "
        f"  AND NOT EXISTS (SELECT 1 FROM jdeps WHERE NOT ready AND {_blocked('jdeps')}) "
        f"  AND (SELECT count(*) FROM jdeps) = (SELECT count(*) FROM jh) "
        f"  AND NOT EXISTS (SELECT 1 FROM jdeps JOIN deps ON deps.id = jdeps.id) AS deps_ok, "
    ) if joins else f"  NOT EXISTS (SELECT 1 FROM deps WHERE NOT ready AND {_blocked('deps')}) AS deps_ok, "
    released = (
        f"released AS (UPDATE {node_t} d SET waiting = d.waiting - deps.n, "
        + queue.format(t="deps", join="WHEN deps.join_ready THEN %(success)s " if joins else "")
        # A join finishes at the server's clock after every lock: a sibling that decremented it
        # earlier committed before, so its finished_at (its worker's clock, taken before its
        # statement) is never later than the join's (dependency order, as under the lock).
        + (", finished_at = CASE WHEN deps.join_ready THEN (SELECT locked_at FROM decision) "
           "  ELSE d.finished_at END " if joins else " ")
        + f"  FROM deps WHERE d.id = deps.id AND (SELECT ok FROM decision) "
        f"  RETURNING deps.ready, {'deps.join_ready, ' if joins else ''}{cols}), "
    )
    released2 = (
        f"released2 AS (UPDATE {node_t} d SET waiting = d.waiting - jdeps.n, "
        + queue.format(t="jdeps", join="")
        + f"  FROM jdeps WHERE d.id = jdeps.id AND (SELECT ok FROM decision) "
        f"  RETURNING jdeps.ready, {cols}), "
    ) if joins else ""
    return (
        # The workflow by its key alone (a generic plan never picks the state index), and
        # whether it runs and does not pass results: no node of another one is decided.
        f"WITH wf AS (SELECT id, tasks_options, parent_node_id, "
        f"  state = %(running)s AND NOT pass_results AS live FROM {wf_t} WHERE id = %(wf)s FOR KEY SHARE), "
        f"me AS (SELECT id, state FROM {node_t} WHERE workflow_id = (SELECT id FROM wf WHERE live) "
        f"  AND task_id = %(task)s AND kind = %(task_kind)s AND state = ANY(%(active)s) "
        f"  AND concurrency_key IS NULL FOR UPDATE), "
        f"deps AS (SELECT n.id, n.state, n.kind, n.waiting, n.failed_dependencies, h.n, "
        f"  ({_ready('h')}) AS ready{join_ready} "
        f"  FROM {node_t} n JOIN (SELECT node_id, count(*) AS n FROM {edge_t} "
        f"    WHERE dependency_id = (SELECT id FROM me) GROUP BY node_id) h ON h.node_id = n.id "
        f"  ORDER BY n.id FOR UPDATE OF n), "
        f"{join_ctes}"
        f"cnt AS (SELECT nodes_done, nodes_total, nodes_failed FROM {wf_t} WHERE id = (SELECT id FROM wf) "
        f"  AND EXISTS (SELECT 1 FROM me) AND (SELECT count(*) FROM deps) >= 0 "
        + ("  AND (SELECT count(*) FROM jdeps) >= 0 " if joins else "")
        + "FOR NO KEY UPDATE), "
        f"decision AS MATERIALIZED (SELECT *, node_ok AND deps_ok AND count_ok AS ok FROM (SELECT "
        f"  EXISTS (SELECT 1 FROM me) AS node_ok, "
        f"{deps_ok}"
        + (
            # The last task node, nothing failed, nobody else to run or tell: decisions.finish's SUCCESS.
            f"  EXISTS (SELECT 1 FROM cnt WHERE nodes_done + 1 = nodes_total AND nodes_failed = 0) "
            f"  AND (SELECT parent_node_id FROM wf) IS NULL "
            f"  AND NOT EXISTS (SELECT 1 FROM {node_t} WHERE workflow_id = (SELECT id FROM wf) "
            f"    AND kind = ANY(%(callbacks)s) AND state = %(pending)s) AS count_ok, "
            if last else "  EXISTS (SELECT 1 FROM cnt WHERE nodes_done + 1 < nodes_total) AS count_ok, "
        )
        + "  (SELECT clock_timestamp() FROM cnt) AS locked_at) c), "
        f"done AS (UPDATE {node_t} d SET state = %(success)s, result = %(result)s, error = '', "
        f"  finished_at = %(now)s FROM me WHERE d.id = me.id AND (SELECT ok FROM decision) "
        f"  RETURNING me.state AS old_state, {cols}), "
        f"{released}{released2}"
        f"counters AS (UPDATE {wf_t} SET nodes_done = nodes_done + 1, nodes_succeeded = nodes_succeeded + 1 "
        # Ended at the server's clock once every lock is held, as a join is: every completion
        # counted before committed by then, so none ran after the workflow's end.
        + (", state = %(ended)s, finished_at = (SELECT locked_at FROM decision), next_tick_at = NULL "
           if last else "")
        + f"  WHERE id = (SELECT id FROM wf) AND (SELECT ok FROM decision) RETURNING id)"
        f"{events} "
        f"SELECT dc.node_ok, dc.deps_ok, dc.count_ok, dc.locked_at, r.* FROM decision dc "
        # wait()'s wake-up, delivered at the commit; an uncorrelated subquery runs once.
        + ("CROSS JOIN (SELECT count(*) FROM (SELECT pg_notify(%(channel)s, %(ended)s) FROM counters) n) nf "
           if last else "")
        + "LEFT JOIN ("
        f"  SELECT 1 AS role, old_state, (SELECT tasks_options FROM wf) AS tasks_options, {names} FROM done "
        f"  UNION ALL SELECT 2, %(pending)s, NULL, {names} FROM released WHERE ready"
        + (" UNION ALL SELECT 3, %(pending)s, NULL, {names} FROM released2 WHERE ready".replace("{names}", names)
           if joins else "")
        + ") r ON true"
    )
