"""The dyrygent_* management commands, the operator helpers behind them, and the system checks.

Most tests drive the engine directly (no worker): inside a ``django_db``
test nothing is published, because on_commit callbacks never run, so the
commands see exactly the rows the test made. The ``--wait`` tests use the
real worker.
"""

import io
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from celery import chain, group, signature
from django.core.management.base import CommandError
from django.utils import timezone

from django_dyrygent import checks, engine, operations
from django_dyrygent.engine import hotpath, outcomes
from django_dyrygent.models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from tests.conftest import run_command
from tests.tasks import add, fail, noop, record

S = WorkflowNode.State
W = Workflow.State

# -- objects that dyrygent_run imports by dotted path ------------------------------------------------

SMALL_CANVAS = chain(record.si("run-a"), group(record.si("run-b1"), record.si("run-b2")), record.si("run-c"))
FAILING_CANVAS = chain(record.si("before"), fail.si("on purpose"), record.si("never"))
NOT_A_CANVAS = 42


def make_canvas():
    return chain(add.si(1, 2), add.s(10))


def make_workflow():
    wf = Workflow(name="from-factory", custom_payload={"origin": "factory"})
    wf.add_celery_canvas(group(noop.si(), noop.si()))
    return wf


def needs_arguments(size):
    return group(noop.si() for _ in range(size))


def make_invalid_workflow():
    wf = Workflow()
    wf.add_signature(noop.si(object()))  # argument not JSON-serialisable
    return wf


# -- helpers -----------------------------------------------------------------------------------------


class TTY(io.StringIO):
    def isatty(self):
        return True


def started_workflow(canvas=None, **kwargs):
    """A saved workflow that the engine started (its first nodes QUEUED, nothing published)."""
    wf = Workflow(**kwargs)
    wf.add_celery_canvas(canvas if canvas is not None else chain(noop.si(), fail.si(), noop.si()))
    wf.apply_async()
    engine.tick(wf.pk, scheduled=False)
    wf.refresh_from_db()
    return wf


def complete(node, result=None):
    hotpath.node_started(node.workflow_id, node.task_id)
    outcomes.node_succeeded(node.workflow_id, node.task_id, result)


def queued(wf):
    return list(wf.nodes.filter(state=S.QUEUED).order_by("position"))


def finished_workflow(state=W.SUCCESS, ended_ago=timedelta(days=40)):
    """A workflow run to completion through the engine, then dated ``ended_ago`` in the past."""
    wf = started_workflow(chain(noop.si(), noop.si()))
    while queued(wf):
        for node in queued(wf):
            if state == W.SUCCESS:
                complete(node)
            else:
                outcomes.node_failed(wf.pk, node.task_id, RuntimeError("x"))
    wf.refresh_from_db()
    assert wf.state == state
    when = timezone.now() - ended_ago
    Workflow.objects.filter(pk=wf.pk).update(created_at=when, finished_at=when)
    return wf


# -- finding a workflow ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_resolve_workflow__full_id_prefix_and_hyphen_free_forms():
    wf = started_workflow()
    full = str(wf.pk)
    for ident in (full, full.upper(), full.replace("-", ""), full[:8], full[:13], full.replace("-", "")[:11]):
        assert operations.resolve_workflow(ident).pk == wf.pk, ident


@pytest.mark.django_db
@pytest.mark.parametrize(
    "ident, error, message",
    [
        ("zzzzzzzz", ValueError, "is not a workflow id"),
        ("1234567", ValueError, "too short"),
        ("0" * 33, ValueError, "is not a workflow id"),
        ("00000000", LookupError, "No workflow id starts with"),
        ("00000000-0000-0000-0000-000000000000", LookupError, "No workflow with id"),
    ],
)
def test_resolve_workflow__bad_ids_name_the_problem(ident, error, message):
    with pytest.raises(error, match=message):
        operations.resolve_workflow(ident)


@pytest.mark.django_db
def test_resolve_workflow__ambiguous_prefix_lists_the_candidates():
    for suffix in ("1111-1111-1111-111111111111", "2222-2222-2222-222222222222"):
        Workflow.objects.create(id=uuid.UUID("abcdef12-" + suffix))
    with pytest.raises(LookupError, match="ambiguous.*abcdef12-1111.*abcdef12-2222"):
        operations.resolve_workflow("abcdef12")
    assert str(operations.resolve_workflow("abcdef12-2").pk).startswith("abcdef12-2222")


@pytest.mark.parametrize(
    "text, seconds",
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("3600s", 3600), ("2w", 14 * 86400),
     (" 1.5H ", 5400)],
)
def test_parse_duration__units(text, seconds):
    assert operations.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["30", "d", "30 days", "-5d", "0s", "1y", ""])
def test_parse_duration__rejects_malformed(text):
    with pytest.raises(ValueError, match="Invalid duration"):
        operations.parse_duration(text)


# -- dyrygent_status -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_dyrygent_status__shows_state_counters_and_every_node(django_assert_max_num_queries):
    wf = started_workflow(name="nightly")
    complete(queued(wf)[0])
    with django_assert_max_num_queries(4):
        out, _ = run_command("dyrygent_status", str(wf.pk)[:8], no_color=True)
    assert f"Workflow {wf.pk}  nightly" in out
    assert "state      RUNNING" in out
    assert "1/3 done: 1 succeeded, 0 failed, 0 skipped" in out
    table = out.split("REASON", 1)[1].splitlines()[1:]
    assert [line.split()[1:3] for line in table] == [
        ["tests.noop()", "SUCCESS"], ["tests.fail()", "QUEUED"], ["tests.noop()", "PENDING"],
    ]


@pytest.mark.django_db
def test_dyrygent_status__node_rows_show_arguments_to_tell_siblings_apart():
    wf = started_workflow(group(record.si("web-1", sleep=0), record.si("web-2")))
    out, _ = run_command("dyrygent_status", str(wf.pk), no_color=True)
    assert "tests.record('web-1', sleep=0)  QUEUED" in out and "tests.record('web-2')" in out
    data = json.loads(run_command("dyrygent_status", str(wf.pk), json=True)[0])
    assert data["nodes"][1]["call"] == "('web-2')"


@pytest.mark.django_db
def test_dyrygent_status__json_is_machine_readable():
    wf = started_workflow(custom_payload={"k": "v"})
    out, _ = run_command("dyrygent_status", str(wf.pk), json=True)
    data = json.loads(out)
    assert data["id"] == str(wf.pk) and data["state"] == "RUNNING"
    assert data["counters"] == {"total": 3, "done": 0, "succeeded": 0, "failed": 0, "upstream_failed": 0,
                                "skipped": 0, "ticks": 1}
    assert data["custom_payload"] == {"k": "v"}
    assert [n["state"] for n in data["nodes"]] == ["QUEUED", "PENDING", "PENDING"]


@pytest.mark.django_db
def test_dyrygent_status__groups_a_big_workflow_with_constant_queries(django_assert_max_num_queries):
    small = started_workflow(chain(noop.si(), group(record.si(i) for i in range(60)), noop.si()))
    with django_assert_max_num_queries(4):
        out, _ = run_command("dyrygent_status", str(small.pk), no_color=True)
    assert "node rows, grouped by task and state" in out
    rows = {tuple(line.split()[:3]) for line in out.split("LAST FINISH", 1)[1].splitlines()[1:]}
    assert ("tests.record", "PENDING", "60") in rows
    assert ("tests.noop", "QUEUED", "1") in rows and ("tests.noop", "PENDING", "1") in rows
    # Ten times the nodes: still the same handful of queries.
    big = started_workflow(chain(noop.si(), group(record.si(i) for i in range(600)), noop.si()))
    with django_assert_max_num_queries(4):
        out, _ = run_command("dyrygent_status", str(big.pk), json=True)
    assert {"task_name": "tests.record", "kind": "task", "state": "PENDING", "count": 600} in [
        {k: g[k] for k in ("task_name", "kind", "state", "count")} for g in json.loads(out)["groups"]
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("command", ["dyrygent_status", "dyrygent_cancel", "dyrygent_retry", "dyrygent_tick",
                                     "dyrygent_graph"])
def test_dyrygent_commands__unknown_or_malformed_id_is_a_command_error(command):
    with pytest.raises(CommandError, match="No workflow id starts with 'deadbeef'"):
        run_command(command, "deadbeef")
    with pytest.raises(CommandError, match="is not a workflow id"):
        run_command(command, "not-an-id")


# -- dyrygent_cancel / dyrygent_retry -------------------------------------------------------------------


@pytest.mark.django_db
def test_dyrygent_cancel__cancels_then_says_there_is_nothing_left():
    wf = started_workflow()
    out, _ = run_command("dyrygent_cancel", str(wf.pk), reason="maintenance")
    assert out == f"Canceled workflow {wf.pk}.\n"
    wf.refresh_from_db()
    assert wf.state == W.CANCELED
    assert set(wf.nodes.values_list("state", "reason")) == {(S.CANCELED, "maintenance")}
    out, _ = run_command("dyrygent_cancel", str(wf.pk))
    assert "had already ended (CANCELED); nothing to cancel" in out


@pytest.mark.django_db
def test_dyrygent_retry__resets_failed_nodes_and_resumes():
    wf = started_workflow()
    complete(queued(wf)[0])
    failing = queued(wf)[0]
    outcomes.node_failed(wf.pk, failing.task_id, RuntimeError("boom"))
    wf.refresh_from_db()
    assert wf.state == W.FAILURE
    out, _ = run_command("dyrygent_retry", str(wf.pk))
    assert out == f"Workflow {wf.pk}: 2 node(s) reset for another attempt; it is RUNNING.\n"
    retried = WorkflowNode.objects.get(pk=failing.pk)
    assert retried.state == S.QUEUED and retried.task_id != failing.task_id
    out, _ = run_command("dyrygent_retry", str(wf.pk))
    assert "no failed or canceled node to retry" in out


# -- dyrygent_tick -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_dyrygent_tick__with_an_id_starts_a_new_workflow():
    wf = Workflow()
    wf.add_celery_canvas(noop.si())
    wf.apply_async()
    out, _ = run_command("dyrygent_tick", str(wf.pk)[:8])
    assert out == f"Ticked workflow {wf.pk}: it is RUNNING.\n"
    assert wf.nodes.get().state == S.QUEUED


@pytest.mark.django_db
def test_dyrygent_tick__sweep_ticks_only_overdue_workflows():
    overdue, on_time = started_workflow(), started_workflow()
    Workflow.objects.filter(pk=overdue.pk).update(next_tick_at=timezone.now() - timedelta(seconds=600))
    out, _ = run_command("dyrygent_tick", stale_after=60)
    assert out == "Swept 1 stale workflow(s).\n"
    ticks = dict(Workflow.objects.values_list("pk", "ticks"))
    assert ticks == {overdue.pk: 2, on_time.pk: 1}


@pytest.mark.django_db
def test_dyrygent_tick__loop_stops_cleanly_on_sigterm(monkeypatch):
    calls = []

    def sweep(stale_after=None, batch_size=100):
        calls.append((stale_after, batch_size))
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return 0

    monkeypatch.setattr(engine, "sweep", sweep)
    before = signal.getsignal(signal.SIGTERM)
    out, _ = run_command("dyrygent_tick", loop=True, interval=0.01, stale_after=5, batch_size=7,
                         max_iterations=1000)
    assert calls == [(5, 7)] * 3
    assert out.splitlines()[-1] == "Stopped on SIGTERM: 3 sweep(s), 0 workflow(s) ticked."
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.django_db
def test_dyrygent_tick__loop_survives_a_failing_sweep_and_counts(monkeypatch, caplog):
    results = iter([RuntimeError("database went away"), 3, 0])

    def sweep(stale_after=None, batch_size=100):
        value = next(results)
        if isinstance(value, Exception):
            raise value
        return value

    monkeypatch.setattr(engine, "sweep", sweep)
    with caplog.at_level(logging.ERROR, logger="django_dyrygent.commands"):
        out, _ = run_command("dyrygent_tick", loop=True, interval=0.01, max_iterations=3)
    assert "Swept 3 stale workflow(s)." in out
    assert out.splitlines()[-1] == "Stopped after 3 sweep(s): 3 sweep(s), 3 workflow(s) ticked."
    assert [r.getMessage() for r in caplog.records] == ["Sweep failed; retrying in 0.01s"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, options, message",
    [
        (("00000000",), {"loop": True}, "cannot be combined with a workflow id"),
        ((), {"batch_size": 0}, "--batch-size must be at least 1"),
        ((), {"interval": 0, "loop": True}, "--interval must be more than zero"),
        ((), {"stale_after": -1}, "--stale-after must be zero or more"),
    ],
)
def test_dyrygent_tick__bad_options(args, options, message):
    with pytest.raises(CommandError, match=message):
        run_command("dyrygent_tick", *args, **options)


# -- dyrygent_graph -------------------------------------------------------------------------------------


def weird_canvas():
    """Task names with every character the export formats must escape."""
    return chain(signature('evil"name\\<b>[x]{y}|`'), group(noop.si(), noop.si()), noop.si())


@pytest.mark.django_db
def test_dyrygent_graph__json_has_every_node_and_edge():
    wf = started_workflow(weird_canvas())
    out, _ = run_command("dyrygent_graph", str(wf.pk), format="json")
    data = json.loads(out)
    assert data["workflow"] == {"id": str(wf.pk), "name": "", "state": "RUNNING"}
    assert len(data["nodes"]) == wf.nodes.count() == 5  # 4 tasks and the join after the group
    assert {(e["from"], e["to"]) for e in data["edges"]} == set(
        WorkflowEdge.objects.filter(workflow=wf).values_list("dependency_id", "node_id")
    )
    assert data["nodes"][0]["task_name"] == 'evil"name\\<b>[x]{y}|`'


@pytest.mark.django_db
def test_dyrygent_graph__dot_escapes_labels_and_draws_joins_as_points():
    wf = started_workflow(weird_canvas())
    out, _ = run_command("dyrygent_graph", str(wf.pk), format="dot")
    assert out.startswith("digraph workflow {") and out.rstrip().endswith("}")
    assert 'label="evil\\"name\\\\<b>[x]{y}|`\\nQUEUED"' in out
    assert out.count("shape=point") == 1
    assert out.count(" -> ") == WorkflowEdge.objects.filter(workflow=wf).count()


@pytest.mark.django_db
def test_dyrygent_graph__mermaid_uses_entity_codes_for_markup():
    wf = started_workflow(weird_canvas())
    out, _ = run_command("dyrygent_graph", str(wf.pk), format="mermaid")
    assert out.startswith("flowchart LR\n")
    assert '["evil#quot;name\\#lt;b#gt;#91;x#93;#123;y#125;#124;#96;<br/>QUEUED"]' in out
    assert out.count(" --> ") == WorkflowEdge.objects.filter(workflow=wf).count()


@pytest.mark.django_db
def test_dyrygent_graph__writes_a_file_or_says_why_not(tmp_path):
    wf = started_workflow()
    target = tmp_path / "wf.dot"
    out, _ = run_command("dyrygent_graph", str(wf.pk), format="dot", output=str(target))
    assert out == f"Wrote the dot graph of workflow {wf.pk} to {target}.\n"
    assert target.read_text().startswith("digraph workflow {")
    with pytest.raises(CommandError, match="Cannot write .*missing/wf.dot"):
        run_command("dyrygent_graph", str(wf.pk), output=str(tmp_path / "missing" / "wf.dot"))
    with pytest.raises(CommandError, match="invalid choice: 'png'"):
        run_command("dyrygent_graph", str(wf.pk), "--format", "png")


# -- dyrygent_prune -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_dyrygent_prune__deletes_old_finished_workflows_with_their_rows():
    old_ok = finished_workflow(W.SUCCESS)
    old_failed = finished_workflow(W.FAILURE)
    recent = finished_workflow(W.SUCCESS, ended_ago=timedelta(days=1))
    running = started_workflow()
    Workflow.objects.filter(pk=running.pk).update(created_at=timezone.now() - timedelta(days=90))
    old_ids = [old_ok.pk, old_failed.pk]
    expected = {
        "nodes": WorkflowNode.objects.filter(workflow_id__in=old_ids).count(),
        "edges": WorkflowEdge.objects.filter(workflow_id__in=old_ids).count(),
        "events": WorkflowEvent.objects.filter(workflow_id__in=old_ids).count(),
    }
    assert all(expected.values())

    out, _ = run_command("dyrygent_prune", older_than="30d", dry_run=True, no_color=True)
    assert out.startswith(
        f"Dry run: would delete 2 workflow(s), {expected['nodes']} node(s), {expected['edges']} edge(s) "
        f"and {expected['events']} event(s) in CANCELED, ERROR, FAILURE, SUCCESS that ended before "
    )
    assert Workflow.objects.count() == 4

    out, _ = run_command("dyrygent_prune", "--older-than", "30d", "--batch-size", "1", no_color=True)
    assert out.startswith(f"Deleted 2 workflow(s), {expected['nodes']} node(s), {expected['edges']} edge(s)")
    assert set(Workflow.objects.values_list("pk", flat=True)) == {recent.pk, running.pk}
    for model in (WorkflowNode, WorkflowEdge, WorkflowEvent):
        assert not model.objects.filter(workflow_id__in=old_ids).exists()


@pytest.mark.django_db
def test_dyrygent_prune__state_filter_keeps_other_outcomes():
    ok, failed = finished_workflow(W.SUCCESS), finished_workflow(W.FAILURE)
    out, _ = run_command("dyrygent_prune", "--older-than", "720h", "--state", "failure", no_color=True)
    assert out.startswith("Deleted 1 workflow(s)") and " in FAILURE that ended before " in out
    assert list(Workflow.objects.values_list("pk", flat=True)) == [ok.pk]
    assert not Workflow.objects.filter(pk=failed.pk).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, message",
    [
        (["--older-than", "30 days"], "--older-than: Invalid duration '30 days'"),
        (["--older-than", "0s"], "must be greater than zero"),
        (["--older-than", "30d", "--state", "running"], "invalid choice: 'RUNNING'"),
        (["--older-than", "30d", "--batch-size", "0"], "--batch-size must be at least 1"),
        ([], "the following arguments are required: --older-than"),
    ],
)
def test_dyrygent_prune__bad_input(args, message):
    with pytest.raises(CommandError, match=message):
        run_command("dyrygent_prune", *args)


def test_prune__refuses_non_final_states():
    with pytest.raises(ValueError, match="RUNNING is not a final state"):
        operations.prunable(timezone.now(), states=["RUNNING", "SUCCESS"])


# -- dyrygent_run -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_dyrygent_run__starts_a_canvas_with_name_payload_and_options():
    out, _ = run_command(
        "dyrygent_run", "tests.worker.test_commands.make_canvas", "--name", "adder", "--payload", '{"user": 7}',
        "--option", "priority=8", "--option", "queue=fast", "--tick-option", "queue=ticks", "--pass-results",
    )
    wf = Workflow.objects.get()
    assert out == f"{wf.pk}\n"
    assert (wf.name, wf.custom_payload, wf.pass_results) == ("adder", {"user": 7}, True)
    assert wf.tasks_options == {"priority": 8, "queue": "fast"}
    assert wf.options == {"queue": "ticks"}
    assert list(wf.nodes.values_list("task_name", flat=True)) == ["tests.add", "tests.add"]


@pytest.mark.django_db
def test_dyrygent_run__accepts_a_task_and_a_factory_returning_a_workflow():
    out, _ = run_command("dyrygent_run", "tests.tasks.noop")
    wf = Workflow.objects.get(pk=out.strip())
    assert wf.name == "tests.tasks.noop" and wf.nodes.get().task_name == "tests.noop"
    out, _ = run_command("dyrygent_run", "tests.worker.test_commands.make_workflow")
    wf = Workflow.objects.get(pk=out.strip())
    assert (wf.name, wf.custom_payload, wf.nodes_total) == ("from-factory", {"origin": "factory"}, 2)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, message",
    [
        (["tests.worker.test_commands.nothing_here"], "Cannot import 'tests.worker.test_commands.nothing_here'"),
        (["no_such_module.canvas"], "Cannot import 'no_such_module.canvas'"),
        (["notdotted"], "Cannot import 'notdotted'"),
        (["tests.worker.test_commands.NOT_A_CANVAS"], "is a int, not a Celery signature or canvas"),
        (["tests.worker.test_commands.needs_arguments"], "must be callable without arguments"),
        (["tests.worker.test_commands.make_invalid_workflow"], "is not valid: .*args are not JSON-serialisable"),
        (["tests.tasks.noop", "--payload", "{oops"], "--payload is not valid JSON: Expecting property name"),
        (["tests.tasks.noop", "--payload", "[1, 2]"], "--payload must be a JSON object, not list"),
        (["tests.tasks.noop", "--option", "queue"], "--option expects KEY=VALUE, got 'queue'"),
        (["tests.tasks.noop", "--tick-option", "=x"], "--tick-option expects KEY=VALUE"),
        (["tests.tasks.noop", "--timeout", "5"], "--timeout only applies with --wait"),
        (["tests.tasks.noop", "--wait", "--timeout", "0"], "--timeout must be more than zero"),
    ],
)
def test_dyrygent_run__bad_input_is_a_command_error_and_saves_nothing(args, message):
    with pytest.raises(CommandError, match=message):
        run_command("dyrygent_run", *args)
    assert not Workflow.objects.exists()


@pytest.mark.django_db
def test_dyrygent_run__wait_timeout_exits_2_and_leaves_it_running():
    # Inside this test's transaction nothing is published: the workflow cannot move.
    stdout = TTY()
    still = r"is still INITIAL after 0.2s \(0/4 nodes done\); it keeps running"
    with pytest.raises(CommandError, match=still) as exc:
        run_command("dyrygent_run", "tests.worker.test_commands.SMALL_CANVAS", "--wait", "--timeout", "0.2",
                    "--poll-interval", "0.05", stdout=stdout)
    assert exc.value.returncode == 2
    lines = stdout.getvalue().split("\r")
    assert lines[0] == f"{Workflow.objects.get().pk}\n"
    assert lines[1].startswith("[------------------------------] 0/4 done ")
    assert Workflow.objects.get().state == W.INITIAL


def test_dyrygent_commands__exit_non_zero_without_traceback_from_the_command_line(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    cases = [
        (["dyrygent_status", "xyz"], "CommandError: 'xyz' is not a workflow id"),
        (["dyrygent_prune", "--older-than", "soon"], "CommandError: --older-than: Invalid duration 'soon'"),
    ]
    for args, message in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "django", *args], capture_output=True, text=True, env=env,
            cwd=Path(__file__).resolve().parents[2], timeout=120,
        )
        assert proc.returncode == 1, proc.stderr
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.worker
def test_dyrygent_run__wait_follows_to_success_without_warnings(worker, caplog):
    caplog.set_level(logging.INFO, logger="django_dyrygent")
    out, _ = run_command("dyrygent_run", "tests.worker.test_commands.SMALL_CANVAS", "--wait", "--timeout", "60",
                         "--poll-interval", "0.05", no_color=True)
    wf = Workflow.objects.get()
    lines = out.splitlines()
    assert lines[0] == str(wf.pk)
    assert lines[-1].startswith(f"Workflow {wf.pk} ended SUCCESS in ")
    assert lines[-1].endswith("4/4 nodes done, 0 failed, 0 skipped.")
    # Plain progress lines (stdout is not a terminal), one per change, ending with the final counts.
    assert all(" nodes done, " in line for line in lines[1:-1]) and lines[-2].startswith("SUCCESS: 4/4")
    # A countdown tick of an earlier test's workflow (its rows flushed since) only says it is ignored.
    loud = [r for r in caplog.records if r.name.startswith("django_dyrygent") and r.levelno >= logging.WARNING
            and not r.getMessage().startswith("Tick for unknown workflow")]
    assert loud == []


@pytest.mark.worker
def test_dyrygent_run__wait_on_a_failing_workflow_exits_1(worker):
    ended = (r"ended FAILURE in .*3/3 nodes done, 1 failed, 1 upstream failed, 0 skipped\. "
             r"First failure: tests\.fail \[.*\]: tests\.tasks\.Boom: on purpose\. See dyrygent_status")
    with pytest.raises(CommandError, match=ended) as exc:
        run_command("dyrygent_run", "tests.worker.test_commands.FAILING_CANVAS", "--wait", "--timeout", "60",
                    "--poll-interval", "0.05")
    assert exc.value.returncode == 1
    assert Workflow.objects.get().state == W.FAILURE


# -- system checks ---------------------------------------------------------------------------------------


def ids(messages):
    return [m.id for m in messages]


def test_check_worker_hooks__error_when_the_receivers_are_disconnected():
    from celery import signals as celery_signals

    from django_dyrygent.worker import handlers

    assert checks.check_worker_hooks() == []
    celery_signals.task_success.disconnect(dispatch_uid="django_dyrygent.success")
    try:
        messages = checks.check_worker_hooks()
    finally:
        handlers.connect_worker_signals()
    assert ids(messages) == ["django_dyrygent.E003"] and messages[0].hint
    assert checks.check_worker_hooks() == []


def test_check_sweeper__warns_until_beat_schedules_the_sweep(settings):
    from tests.celery_app import app

    messages = checks.check_sweeper()
    assert ids(messages) == ["django_dyrygent.W002"] and "dyrygent_tick" in messages[0].hint
    previous = app.conf.beat_schedule
    app.conf.beat_schedule = {"sweep": {"task": "django_dyrygent.sweep", "schedule": 60.0}}
    try:
        assert checks.check_sweeper() == []
    finally:
        app.conf.beat_schedule = previous


def test_check_sweeper__runs_only_with_check_deploy():
    from django.core.checks import registry

    assert checks.check_sweeper not in registry.registry.get_checks(include_deployment_checks=False)
    assert checks.check_sweeper in registry.registry.get_checks(include_deployment_checks=True)


def test_check_settings__wrong_type_and_non_positive_values(settings):
    settings.DYRYGENT_TICK_INTERVAL = "10"
    settings.DYRYGENT_REQUEUE_AFTER = 0
    settings.DYRYGENT_RECONCILE_BATCH = -5
    messages = checks.check_settings()
    assert sorted((m.id, m.msg.split(" ")[0]) for m in messages) == [
        ("django_dyrygent.E002", "DYRYGENT_TICK_INTERVAL"),
        ("django_dyrygent.E004", "DYRYGENT_RECONCILE_BATCH"),
        ("django_dyrygent.E004", "DYRYGENT_REQUEUE_AFTER"),
    ]
    assert all(m.hint for m in messages)


def test_check_celery__bad_app_path_is_e001(settings):
    settings.DYRYGENT_CELERY_APP = "tests.nowhere.app"
    messages = checks.check_celery()
    assert ids(messages) == ["django_dyrygent.E001"] and "tests.nowhere" in messages[0].msg


@pytest.mark.django_db
def test_dyrygent_graph__svg_is_the_admin_picture_with_its_stylesheet_inlined(tmp_path):
    from xml.etree import ElementTree

    wf = started_workflow(weird_canvas())
    target = tmp_path / "wf.svg"
    run_command("dyrygent_graph", str(wf.pk)[:8], "--format", "svg", "--output", str(target))
    text = target.read_text()
    root = ElementTree.fromstring(text.encode())  # well-formed XML despite the markup in the task name
    ns = {"svg": "http://www.w3.org/2000/svg"}
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert ".dy-node rect" in root.find("svg:style", ns).text
    nodes = root.findall(".//svg:a", ns)
    assert len(nodes) == wf.nodes.count()
    titles = [a.find("svg:title", ns).text for a in nodes]
    assert titles[0].startswith('evil"name\\<b>[x]{y}|`\nstate: QUEUED')
    assert len(root.findall(".//svg:path", ns)) == WorkflowEdge.objects.filter(workflow=wf).count()


@pytest.mark.django_db
def test_dyrygent_graph__svg_renders_unlinked_without_a_urlconf(tmp_path, settings):
    """Worker-only settings have no ROOT_URLCONF (so no admin to link to); the picture still renders."""
    del settings.ROOT_URLCONF
    wf = started_workflow(weird_canvas())
    target = tmp_path / "wf.svg"
    run_command("dyrygent_graph", str(wf.pk), "--format", "svg", "--output", str(target))
    text = target.read_text()
    assert text.startswith("<svg") or "<svg" in text
    assert "/admin/" not in text
