"""The benchmark's cases (issue 9's target table) and how each system runs one.

Every case is a list of canvases submitted at once (one for most cases, 200
for "many workflows"), plus, where native Celery cannot run the same canvas,
the native stand-in the target compares with (a flat group of the same
number of tasks).
"""

import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field

NATIVE, CELERY_DYRYGENT, OURS = "native", "celery-dyrygent", "django-dyrygent"
# celery-dyrygent's fastest tick policy: set_retry_policy("random", min, max)
# draws randint(min, max) seconds and asserts 0 < min <= max, so 1 s is the floor.
CD_RETRY_POLICY = ("random", 1, 1)

#: Sizes of the full run (issue 9) and of the CI smoke run.
FULL = {
    "chain": 20, "group": 200, "chord": 100, "dag": (10, 100), "wide": 2000,
    "many": (200, 5, 10), "build": (100, 100), "huge": (100, 1000),
}
SMOKE = {
    "chain": 3, "group": 10, "chord": 5, "dag": (2, 5), "wide": 10,
    "many": (3, 2, 3), "build": (5, 10), "huge": (3, 10),
}


@dataclass
class Case:
    name: str
    label: str
    target: float  # the ratio to native issue 9 asks for
    ours: list  # canvases django-dyrygent and celery-dyrygent run
    native: list  # canvases native Celery runs (the same, or the flat stand-in)
    wide: bool = False  # runs on the 8-process worker
    big: bool = False  # fewer repetitions
    nodes: int = 0
    notes: list = field(default_factory=list)


def noop():
    from bench.tasks import noop as task

    return task.si()


def chained_groups(levels, width):
    from celery import chain, group

    return chain(*[group([noop() for _ in range(width)]) for _ in range(levels)])


def flat_group(size):
    from celery import group

    return group([noop() for _ in range(size)])


def cases(sizes):
    """The cases of one run, built lazily (canvases are rebuilt for every repetition)."""
    from celery import chain, chord

    n_chain, n_group, n_chord = sizes["chain"], sizes["group"], sizes["chord"]
    levels, width = sizes["dag"]
    n_wide = sizes["wide"]
    flows, flow_levels, flow_width = sizes["many"]
    per_flow = flow_levels * flow_width
    return [
        Case("chain", f"chain of {n_chain}", 1.5,
             lambda: [chain(*[noop() for _ in range(n_chain)])], None, nodes=n_chain),
        Case("group", f"group of {n_group}", 1.15, lambda: [flat_group(n_group)], None, nodes=n_group),
        Case("chord", f"chord {n_chord} + 1", 1.5,
             lambda: [chord(flat_group(n_chord), noop())], None, nodes=n_chord + 1),
        Case("dag", f"{levels} x {width} chained DAG (native: flat group of {levels * width})", 1.3,
             lambda: [chained_groups(levels, width)], lambda: [flat_group(levels * width)],
             big=True, nodes=levels * width),
        Case("wide", f"group of {n_wide}, 8 worker processes", 1.2,
             lambda: [flat_group(n_wide)], None, wide=True, big=True, nodes=n_wide),
        Case("many", f"{flows} workflows x {per_flow} nodes at once (native: {flows} flat groups)", 1.3,
             lambda: [chained_groups(flow_levels, flow_width) for _ in range(flows)],
             lambda: [flat_group(per_flow) for _ in range(flows)],
             big=True, nodes=flows * per_flow),
    ]


# -- running one case ------------------------------------------------------------------------


def run_native(canvases, timeout):
    t0 = time.perf_counter()
    results = [c.apply_async() for c in canvases]
    deadline = time.monotonic() + timeout
    for result in results:
        result.get(timeout=max(0.1, deadline - time.monotonic()), disable_sync_subtasks=False)
    return {"seconds": time.perf_counter() - t0}


def run_celery_dyrygent(canvases, timeout):
    from celery_dyrygent.workflows import Workflow as CDWorkflow

    t0 = time.perf_counter()
    results = []
    for canvas in canvases:
        wf = CDWorkflow()
        wf.set_retry_policy(*CD_RETRY_POLICY)
        wf.add_celery_canvas(canvas)
        results.append(wf.apply_async())
    deadline = time.monotonic() + timeout
    for result in results:
        result.get(timeout=max(0.1, deadline - time.monotonic()))
    return {"seconds": time.perf_counter() - t0}


def run_ours(canvases, timeout, name="bench", progress=None):
    """Build, apply and wait; also when each wait() returned (wall clock, for its latency).

    ``progress`` gets the workflows and the wait() returns as they come, so a
    run that times out still yields the probes' figures of what it did.
    """
    from django_dyrygent.models import Workflow

    progress = {} if progress is None else progress
    flows, returned = [], progress.setdefault("wait_returned", {})
    called = progress.setdefault("wait_called", {})
    progress["workflows"] = ids = []
    t0 = time.perf_counter()
    for canvas in canvases:
        wf = Workflow(name=name)
        wf.add_celery_canvas(canvas)
        wf.apply_async()
        flows.append(wf)
        ids.append(str(wf.pk))
    deadline = time.monotonic() + timeout
    for wf in flows:
        called[str(wf.pk)] = time.time()
        try:
            state = wf.wait(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            raise TimeoutError(
                f"{len(returned)} of {len(flows)} workflows finished within the {timeout:.0f}s timeout"
            ) from None
        returned[str(wf.pk)] = time.time()
        if state != Workflow.State.SUCCESS:
            raise RuntimeError(f"workflow {wf.pk} ended {state}: {wf.error}")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, **progress}


def run_build(levels, width):
    """apply_async of one workflow of levels x width nodes, build included; canceled right after."""
    from django_dyrygent.models import Workflow

    t0 = time.perf_counter()
    wf = Workflow(name=f"build {levels}x{width}")
    wf.add_celery_canvas(chained_groups(levels, width))
    wf.apply_async()
    seconds = time.perf_counter() - t0
    wf.cancel("benchmark: only apply_async is measured")
    return {"seconds": seconds, "nodes": wf.nodes.count()}


# -- what the worker probes saw (bench/probes.py) ---------------------------------------------


def reset_probes(redis_client):
    keys = list(redis_client.scan_iter("bench:*", count=1000))
    if keys:
        redis_client.delete(*keys)


def read_probes(redis_client, run):
    """Figures of one run of ours from the probes' Redis keys and the workflow rows."""
    time.sleep(0.3)  # the last task hands its figures over in task_postrun, after the commit we saw
    get = redis_client.get
    out = {
        "noop_stmts": int(get("bench:stmts:bench.noop") or 0),
        "noop_tasks": int(get("bench:tasks:bench.noop") or 0),
        "tick_stmts": int(get("bench:stmts:django_dyrygent.tick") or 0),
        "holds": [float(x) for x in redis_client.lrange("bench:holds", 0, -1)],
        "lockwaits": [float(x) for x in redis_client.lrange("bench:lockwaits", 0, -1)],
        "cntholds": [float(x) for x in redis_client.lrange("bench:cntholds", 0, -1)],
    }
    finished = {k.decode(): float(v) for k, v in redis_client.hgetall("bench:finished").items()}
    # From the ending commit, or from the call when the workflow had ended before it: the
    # workflows are waited for one after another, and one that ended while wait() still
    # waited for an earlier one is not late (that counted up to 1.8 s in the many case).
    called = run.get("wait_called", {})
    out["wait_latencies"] = [
        run["wait_returned"][pk] - max(finished[pk], called.get(pk, 0.0))
        for pk in run["workflows"] if pk in finished and pk in run["wait_returned"]
    ]
    out["wait_latencies_from_end"] = [  # the old figure, kept to show the difference
        run["wait_returned"][pk] - finished[pk]
        for pk in run["workflows"] if pk in finished and pk in run["wait_returned"]
    ]
    returned = {k.decode(): float(v) for k, v in redis_client.hgetall("bench:returned").items()}
    published = {k.decode(): float(v) for k, v in redis_client.hgetall("bench:published").items()}
    out["release_latencies"] = release_latencies(run["workflows"], returned, published)
    return out


def release_latencies(workflow_ids, returned, published):
    """Seconds from a task node's last task dependency returning to the node being published.

    Joins (no task of their own) are looked through: the dependencies of a
    group's members are the previous group's members.
    """
    from django_dyrygent.models import WorkflowEdge, WorkflowNode

    nodes = {
        pk: (task_id, kind)
        for pk, task_id, kind in WorkflowNode.objects.filter(workflow_id__in=workflow_ids)
        .values_list("pk", "task_id", "kind")
    }
    deps = defaultdict(list)
    for node, dep in WorkflowEdge.objects.filter(workflow_id__in=workflow_ids).values_list(
        "node_id", "dependency_id"
    ):
        deps[node].append(dep)
    resolved = {}

    def task_deps(pk):
        if pk not in resolved:
            found = []
            for dep in deps[pk]:
                found.extend([dep] if nodes[dep][1] == WorkflowNode.Kind.TASK else task_deps(dep))
            resolved[pk] = found
        return resolved[pk]

    latencies = []
    for pk, (task_id, kind) in nodes.items():
        if kind != WorkflowNode.Kind.TASK or not deps[pk] or task_id not in published:
            continue
        ends = [returned.get(nodes[d][0]) for d in task_deps(pk)]
        if ends and None not in ends:
            latencies.append(published[task_id] - max(ends))
    return latencies


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def median(values):
    return statistics.median(values) if values else None
