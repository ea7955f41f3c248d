"""The soak's verdict: the rows, the event log and the bodies' own records, against what the traffic implies.

``check(specs, faults, runs_dir)`` returns ``(violations, report)``:
``violations`` are lines naming the workflow, the node and what was seen (the
soak fails when there is any); ``report`` holds the figures the summary prints
(duplicates by cause, the documented exceptions that were used).

What is checked, per workflow:

1. its final state is the one its shape, its bodies' fixed outcomes and what
   the soak did to it imply (``traffic.natural``; CANCELED when the soak's
   cancel landed); a node given up after lost workers (``Worker lost N
   time(s)``, docs/reliability.md) turning an expected SUCCESS into FAILURE is
   reported, not failed;
2. no task body started while its workflow was final (between an end and a
   ``retry()``), except a body whose node the cancel found ``STARTED`` (the
   documented order of a cancel racing a start), a body of a worker that was
   paused while it ran (its start was recorded before the pause), and a body
   started while PostgreSQL was down (its start could not be recorded);
3. no body of a node started before every task it depends on (through joins
   and fan-outs) finished a successful run;
4. every task node of a SUCCESS workflow ran, and each body ran more than once
   only under a task id the engine replaced for a documented reason (lost
   worker, message taken as lost, ``retry()``) or under one id twice (the
   broker delivered it twice): counted by cause, and by the fault before it;
5. the counters on the workflow row equal its node rows;
6. no workflow, node or callback is left active;
7. control flow: the nodes of a path its branch did not choose are SKIPPED
   and their bodies never ran; a wait ended the way its outcome says
   (completed once by the soak's ``signal()`` / ``complete()``, whose repeat
   completed nothing; or timed out: FAILURE, or SUCCESS with its default),
   and the body after it started only once it was done; a timer fired no
   earlier than its delay after it was reached, and the body after it
   started no earlier either;
8. nothing was published while the workflow was paused: no node entered
   ``QUEUED`` between a pause and the next resume (event order), and every
   body that started in that window was published before the pause.
"""

import bisect
import json
from collections import Counter, defaultdict
from pathlib import Path

from django_dyrygent.models import Workflow, WorkflowEdge, WorkflowEvent, WorkflowNode
from django_dyrygent.states import COUNTED_KINDS, NODE_ACTIVE, NODE_FINAL, NODE_OK, WORKFLOW_FINAL, NodeKind
from tests.chaos import traffic

S = WorkflowNode.State
W = Workflow.State
WAITS = (NodeKind.WAIT, NodeKind.TIMER)
#: Nodes whose body is a Celery task of the soak (tests/chaos/tasks.py).
BODY_KINDS = (NodeKind.TASK, NodeKind.BRANCH)
#: Clock slack between the engine's timestamps and the bodies' (one machine, one clock; rounding only).
SLACK = 0.05
REPLACING = (("worker lost", "worker lost"), ("outcome lost", "outcome lost"),
             ("republished", "message taken as lost"), ("retry", "retry()"), ("timed out", "timeout"))


def read_runs(runs_dir):
    """label -> list of runs {id, t, pid, done, failed} from the bodies' files."""
    runs = defaultdict(list)
    for start in Path(runs_dir).glob("*.start"):
        label, task_id, _ = start.name[: -len(".start")].rsplit(".", 2)
        try:
            data = json.loads(start.read_text())
        except ValueError:  # killed between creating and writing the file
            data = {"pid": 0, "t": start.stat().st_mtime, "id": task_id}
        run = {"id": task_id, "t": data["t"], "pid": data["pid"], "done": None, "failed": None}
        done = start.with_suffix(".done")
        if done.exists():
            try:
                end = json.loads(done.read_text())
                run["done"], run["failed"] = end["t"], end["failed"]
            except ValueError:
                pass
        runs[label].append(run)
    for label in runs:
        runs[label].sort(key=lambda r: r["t"])
    return runs


def label_of(node):
    args = node.args
    if node.kind == NodeKind.MAP:
        return f"{args[0]} (fan-out)"
    if node.task_name == "chaos.item":
        return f"{args[1]}.{args[0]}"
    return args[0] if args else None


def _replacement(reason):
    """The cause of an event that gave its node a fresh task id, or None."""
    if reason.startswith("republished: no worker reported it"):  # the tick's republish keeps the id
        return None
    for prefix, cause in REPLACING:
        if reason.startswith(prefix):
            return cause
    return None


class Checker:
    def __init__(self, specs, faults, runs_dir):
        self.specs = specs
        self.faults = [f for f in faults if f.started is not None]
        self.runs = read_runs(runs_dir)
        self.violations = []
        self.report = {"duplicates": Counter(), "duplicates by fault": Counter(), "allowed late starts": Counter(),
                       "gave up after lost workers": 0, "retry() re-runs": 0, "final states": Counter()}
        # Wall-clock windows of the faults (the bodies' records carry wall-clock times).
        self.fault_times = sorted((f.wall_start, f.kind) for f in self.faults)

    def fail(self, spec, what):
        self.violations.append(f"{spec.name} ({spec.script}): {what}")

    def run(self):
        rows = {wf.pk: wf for wf in Workflow.objects.all()}
        submitted = [s for s in self.specs if s.pk is not None]
        for spec in self.specs:
            if spec.pk is None:
                self.fail(spec, "never submitted")
        for spec in submitted:
            wf = rows.get(spec.pk)
            if wf is None:
                self.fail(spec, "no row")
                continue
            self.report["final states"][wf.state] += 1
            self.check_workflow(spec, wf)
        return self.violations, self.report

    def check_workflow(self, spec, wf):
        nodes = {n.pk: n for n in WorkflowNode.objects.filter(workflow_id=wf.pk)}
        edges = list(WorkflowEdge.objects.filter(workflow_id=wf.pk).values_list("node_id", "dependency_id"))
        events = list(WorkflowEvent.objects.filter(workflow_id=wf.pk).order_by("created_at", "pk"))
        wf_events = [e for e in events if e.node_id is None]
        tasks = [n for n in nodes.values() if n.kind in BODY_KINDS]
        counted = [n for n in nodes.values() if n.kind in COUNTED_KINDS]

        # 6. nothing left active
        if wf.state not in WORKFLOW_FINAL:
            self.fail(spec, f"left {wf.state}")
        for n in nodes.values():
            if n.state in NODE_ACTIVE or (n.state == S.PENDING and wf.state in WORKFLOW_FINAL):
                self.fail(spec, f"node {label_of(n)} ({n.kind}) left {n.state} in a {wf.state} workflow")

        # 1. final state
        landed = any(e.new_state == W.CANCELED and e.reason == traffic.CANCEL_REASON for e in wf_events)
        expected = W.CANCELED if spec.script == "cancel" and landed else traffic.natural(spec)
        if wf.state != expected:
            gave_up = [n for n in tasks if n.state == S.FAILURE and n.error.startswith("Worker lost")]
            if expected == W.SUCCESS and wf.state == W.FAILURE and gave_up:
                self.report["gave up after lost workers"] += 1
            else:
                self.fail(spec, f"ended {wf.state}, expected {expected} (cancel landed: {landed}; "
                                f"{spec.results})")

        # 5. counters
        failed_maps = sum(1 for n in nodes.values() if n.kind == NodeKind.MAP and n.state == S.FAILURE)
        want = {
            "nodes_total": len(counted) + failed_maps,
            "nodes_done": sum(n.state in NODE_FINAL for n in counted) + failed_maps,
            "nodes_succeeded": sum(n.state == S.SUCCESS for n in counted),
            "nodes_skipped": sum(n.state == S.SKIPPED for n in counted),
            "nodes_failed": sum(n.state in NODE_FINAL and n.state not in NODE_OK for n in counted) + failed_maps,
        }
        have = {name: getattr(wf, name) for name in want}
        if have != want:
            self.fail(spec, f"counters {have} != rows {want}")

        # 4. runs: at least once, more than once only for a documented cause
        labels = {n.pk: label_of(n) for n in nodes.values() if n.kind not in (NodeKind.JOIN, *WAITS)}
        node_events = defaultdict(list)
        for e in events:
            if e.node_id is not None:
                node_events[e.node_id].append(e)
        for n in tasks:
            self.check_runs(spec, wf, n, labels[n.pk], node_events[n.pk])
        if spec.callbacks:
            self.check_callbacks(spec, wf, nodes, labels, wf_events)

        # 2. no body started while the workflow was final
        intervals, start = [], None
        for e in wf_events:
            if e.new_state in WORKFLOW_FINAL and start is None:
                start = e.created_at.timestamp()
            elif e.new_state not in WORKFLOW_FINAL and start is not None:
                intervals.append((start, e.created_at.timestamp()))
                start = None
        if start is not None:
            intervals.append((start, float("inf")))
        for n in tasks:
            canceled_running = any(e.new_state == S.CANCELED and e.old_state == S.STARTED for e in node_events[n.pk])
            for run in self.runs.get(labels[n.pk], ()):
                if not any(a < run["t"] < b for a, b in intervals):
                    continue
                why = self.allowed_late(run, canceled_running)
                if why:
                    self.report["allowed late starts"][why] += 1
                else:
                    self.fail(spec, f"body {labels[n.pk]} (task {run['id']}) started while the workflow was final")

        # 7, 8. control flow and pauses
        self.check_control_flow(spec, nodes, labels, node_events, edges)
        self.check_pauses(spec, wf_events, events, tasks, labels)

        # 3. dependencies before dependents
        deps = defaultdict(list)
        for node_id, dep_id in edges:
            deps[node_id].append(dep_id)

        def task_deps(pk, seen):
            for dep_id in deps[pk]:
                if dep_id in seen:
                    continue
                seen.add(dep_id)
                if nodes[dep_id].state == S.SKIPPED:
                    continue  # a path its branch did not choose: counts as done (rule 7)
                if nodes[dep_id].kind in BODY_KINDS:
                    yield dep_id
                else:
                    yield from task_deps(dep_id, seen)

        for n in tasks:
            runs = self.runs.get(labels[n.pk], ())
            if not runs:
                continue
            first = runs[0]["t"]
            for dep_id in task_deps(n.pk, set()):
                done = [r["done"] for r in self.runs.get(labels[dep_id], ()) if r["failed"] is False]
                if not done or min(done) > first:
                    self.fail(spec, f"{labels[n.pk]} started before its dependency {labels[dep_id]} succeeded "
                                    f"(first start {first:.3f}, dependency's first success "
                                    f"{min(done) if done else None})")

    def check_control_flow(self, spec, nodes, labels, node_events, edges):
        by_label = {label: pk for pk, label in labels.items()}
        if spec.branch:
            branch = nodes[by_label[spec.branch["label"]]]
            for label in spec.skipped():
                node = nodes[by_label[label]]
                ran = self.runs.get(label, [])
                if ran:
                    self.fail(spec, f"{label} is on a path the branch did not choose, yet its body ran "
                                    f"{len(ran)} times")
                if branch.state == S.SUCCESS and node.state != S.SKIPPED:
                    self.fail(spec, f"{label} is on a path the branch did not choose, yet it is {node.state}")
            chosen = {label for key in spec.chosen() for label in spec.branch["paths"][key]}
            for label in chosen:
                if nodes[by_label[label]].state == S.SKIPPED:
                    self.fail(spec, f"{label} is on a chosen path, yet SKIPPED")
        followers = defaultdict(list)  # a wait or timer -> the bodies after it
        for node_id, dep_id in edges:
            if nodes[dep_id].kind in WAITS and node_id in labels:
                followers[dep_id].append(labels[node_id])
        for n in nodes.values():
            if n.kind not in WAITS:
                continue
            events = node_events[n.pk]
            done = [e for e in events if e.new_state == S.SUCCESS]
            if len(done) > 1:
                self.fail(spec, f"{n.kind} {n.task_name} succeeded {len(done)} times")
            reached = [e.created_at.timestamp() for e in events if e.new_state == S.WAITING]
            ended = done[0].created_at.timestamp() if done else None
            if n.kind == NodeKind.WAIT:
                self.check_wait(spec, n, done)
            elif done and reached and ended < reached[0] + spec.timer["delay"] - SLACK:
                self.fail(spec, f"timer fired {ended - reached[0]:.3f}s after it was reached, "
                                f"before its delay of {spec.timer['delay']}s")
            for label in followers[n.pk]:
                for run in self.runs.get(label, []):
                    if ended is None or run["t"] < ended - SLACK:
                        self.fail(spec, f"{label} started before the {n.kind} it follows was done "
                                        f"(start {run['t']:.3f}, done {ended})")
                    if n.kind == NodeKind.TIMER and reached and run["t"] < reached[0] + spec.timer["delay"] - SLACK:
                        self.fail(spec, f"{label} started {run['t'] - reached[0]:.3f}s after its timer was "
                                        f"reached, before the timer's delay of {spec.timer['delay']}s")

    def check_wait(self, spec, node, done):
        outcome = spec.wait["outcome"]
        signals = spec.results.get("signals", [])
        if sum(signals) > 1:
            self.fail(spec, f"wait {node.task_name} completed by the soak {sum(signals)} times: {signals}")
        if node.state != S.SUCCESS:
            if outcome in ("signal", "complete", "default") and node.state not in (S.CANCELED, S.UPSTREAM_FAILED):
                self.fail(spec, f"wait {node.task_name} ({outcome}) ended {node.state}: {node.error[:80]}")
            if outcome == "timeout" and node.state == S.FAILURE and not node.error.startswith("Timed out"):
                self.fail(spec, f"wait {node.task_name} failed, but not by its timeout: {node.error[:80]}")
            return
        reason = done[0].reason if done else ""
        if outcome == "timeout":
            self.fail(spec, f"wait {node.task_name} should have timed out, yet succeeded ({reason!r})")
        elif outcome == "default" and not reason.startswith("timed out: default"):
            self.fail(spec, f"wait {node.task_name} should have timed out with its default, yet: {reason!r}")
        elif outcome in ("signal", "complete"):
            want = "signal" if outcome == "signal" else "completed"
            if not reason.startswith(want):
                self.fail(spec, f"wait {node.task_name} completed by {reason!r}, not by the soak's {outcome}")
            if signals and signals[-1] and len(signals) > 1 and signals[-2]:
                self.fail(spec, f"wait {node.task_name}: the repeated {outcome} completed it again: {signals}")

    def check_pauses(self, spec, wf_events, events, tasks, labels):
        """No node queued (published) while paused; a body started while paused was published before."""
        windows, start = [], None
        for e in wf_events:
            if e.new_state == W.PAUSED and start is None:
                start = e
            elif e.old_state == W.PAUSED and start is not None:
                windows.append((start, e))
                start = None
        if start is not None:
            windows.append((start, None))
        if not windows:
            return
        published = defaultdict(list)  # node -> event pks that put it in QUEUED
        for e in events:
            if e.node_id is not None and e.new_state == S.QUEUED:
                published[e.node_id].append(e.pk)
                for paused, resumed in windows:
                    if paused.pk < e.pk and (resumed is None or e.pk < resumed.pk):
                        self.fail(spec, f"node {labels.get(e.node_id, e.node_id)} queued while the workflow was "
                                        f"paused ({e.old_state} -> QUEUED, {e.reason!r})")
        for n in tasks:
            for run in self.runs.get(labels[n.pk], ()):
                for paused, resumed in windows:
                    end = resumed.created_at.timestamp() if resumed else float("inf")
                    if not paused.created_at.timestamp() + SLACK < run["t"] < end:
                        continue
                    if not any(pk < paused.pk for pk in published[n.pk]):
                        self.fail(spec, f"body {labels[n.pk]} started while the workflow was paused, and was not "
                                        f"published before the pause")

    def allowed_late(self, run, canceled_running):
        if canceled_running:
            return "node STARTED when the cancel landed"
        for f in self.faults:
            if f.kind == "sigstop" and run["pid"] in f.pids and run["t"] >= f.wall_start:
                return "worker paused while it ran (zombie)"
            # A worker retries a start it cannot record for DYRYGENT_OUTCOME_RETRY_FOR (60 s), then runs the body.
            if f.kind == "pg_restart" and f.wall_start <= run["t"] <= f.wall_end + 65:
                return "start not recordable: PostgreSQL down"
        return None

    def check_runs(self, spec, wf, node, label, events):
        runs = self.runs.get(label, [])
        if wf.state == W.SUCCESS and not runs and node.state != S.SKIPPED:
            self.fail(spec, f"{label}: SUCCESS workflow but its body never ran")
        if node.state == S.SUCCESS and not any(r["failed"] is False for r in runs):
            self.fail(spec, f"{label}: SUCCESS but no run of its body succeeded ({len(runs)} runs)")
        ids = [*(node.previous_task_ids or []), node.task_id]
        by_id = Counter(r["id"] for r in runs)
        unknown = set(by_id) - set(ids)
        if unknown:
            self.fail(spec, f"{label}: body ran under task ids the node never had: {sorted(unknown)}")
        for count in by_id.values():
            if count > 1:
                self.report["duplicates"]["same task id run again (delivered twice)"] += count - 1
                self.report["duplicates by fault"][("same task id", self.fault_before(runs[-1]["t"]))] += count - 1
        replacing = [(e, cause) for e in events if (cause := _replacement(e.reason))]
        # ids[k] (k >= 1) was given by the k-th replacing event.
        for k, task_id in enumerate(ids[1:]):
            if not by_id.get(task_id):
                continue
            if k >= len(replacing):
                self.fail(spec, f"{label}: ran under task id {task_id} with no event saying why it was given")
                continue
            event, cause = replacing[k]
            if not any(by_id.get(earlier) for earlier in ids[: k + 1]):
                continue  # the body's first run (the earlier ids never ran it)
            if cause == "retry()":
                self.report["retry() re-runs"] += 1
            elif cause == "worker lost" and self.draining(runs, ids[: k + 1]):
                # docs/reliability.md: SIGTERM to the main process drains "without re-runs"; issue 22
                # (rolling restart) found the peer re-running the draining worker's node. Reported.
                self.report["duplicates"]["worker lost while draining (SIGTERM to its main process)"] += 1
            else:
                self.report["duplicates"][cause] += 1
                self.report["duplicates by fault"][(cause, self.fault_before(event.created_at.timestamp()))] += 1

    def draining(self, runs, task_ids):
        """Whether an earlier run (under ``task_ids``) was on a worker scaled down by SIGTERM."""
        drained = {pid for f in self.faults if f.kind == "scale" for pid in f.pids}
        return any(r["pid"] in drained for r in runs if r["id"] in task_ids)

    def check_callbacks(self, spec, wf, nodes, labels, wf_events):
        failed_once = any(e.new_state in (W.FAILURE, W.ERROR) for e in wf_events)
        for n in nodes.values():
            if n.kind not in (NodeKind.FINALIZER, NodeKind.ERROR_CALLBACK):
                continue
            runs = self.runs.get(labels[n.pk], [])
            wanted = n.kind == NodeKind.FINALIZER or failed_once
            if wanted and (n.state != S.SUCCESS or not runs):
                self.fail(spec, f"callback {labels[n.pk]} is {n.state} with {len(runs)} runs; it should have run")
            if not wanted and runs:
                self.fail(spec, f"callback {labels[n.pk]} ran {len(runs)} times; the workflow never failed")
            if n.state in NODE_ACTIVE:
                self.fail(spec, f"callback {labels[n.pk]} left {n.state}")

    def fault_before(self, t):
        i = bisect.bisect_right(self.fault_times, (t, "~"))
        return self.fault_times[i - 1][1] if i else "none"


def check(specs, faults, runs_dir):
    return Checker(specs, faults, runs_dir).run()
