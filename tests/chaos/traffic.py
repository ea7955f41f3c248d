"""The soak's traffic, derived from its seed: which workflows, when, their outcomes, cancels and retries.

``plan(seed, seconds)`` returns the list of ``Spec``: everything about a
workflow is fixed there (shape, durations, which bodies fail, what is done to
it and when), so a seed replays the same traffic. ``build(spec)`` makes the
unsaved ``Workflow``; ``natural(spec)`` is the state it ends in when nobody
cancels it.

Scripts (what the soak does to a workflow after submitting it):

* ``none``;
* ``cancel``: ``cancel()`` after ``delay`` s; expected CANCELED if that cancel
  landed (its event, reason ``chaos cancel``), else the natural outcome;
* ``heal``: one body is ``flaky``; once the workflow ended FAILURE the soak
  writes the heal file and calls ``retry()``: expected SUCCESS;
* ``retry``: ``retry()`` after ``delay`` s, whatever the state (a no-op, or
  failed bodies run again and fail again): expected the natural outcome;
* ``cancel-retry``: ``cancel()`` after ``delay`` s, ``retry()`` once the
  workflow ended: expected the natural outcome;
* ``pause``: ``pause()`` after ``delay`` s, ``resume()`` ``hold`` s later:
  expected the natural outcome.

Control flow (each with a body before and after it):

* ``branch``: a ``chaos.choose`` task picks one path (or both) of two; the
  other path's nodes are SKIPPED and never run, the merge after both runs;
* ``wait``: ``add_wait`` completed by the soak with ``signal()`` or
  ``complete()`` (outcome ``signal`` / ``complete``) once it is waiting, and
  signalled once more to see it is not completed twice; or never, with a
  timeout (``timeout``: FAILURE) or a timeout and a default (``default``:
  SUCCESS);
* ``timer``: ``add_timer`` with a delay of 1-6 s.
"""

import random
from dataclasses import dataclass, field

from celery import chord

from django_dyrygent.models import Workflow
from tests.chaos.tasks import body, choose, item, source

CANCEL_REASON = "chaos cancel"
SHAPES = {"chain": 22, "chord": 14, "fanout": 14, "callbacks": 14, "dag": 8, "branch": 10, "wait": 10, "timer": 8}
SCRIPTS = {"none": 52, "cancel": 12, "heal": 10, "retry": 8, "cancel-retry": 6, "pause": 12}
#: What is done to a workflow with a wait (retry() would re-arm it: kept for the other shapes).
WAIT_SCRIPTS = ("none", "cancel", "pause")
WAIT_OUTCOMES = {"signal": 4, "complete": 2, "timeout": 2, "default": 2}


@dataclass
class Spec:
    index: int
    at: float  # seconds after the start of the traffic
    shape: str
    script: str
    delay: float
    nodes: list = field(default_factory=list)  # (label, seconds, mode, dependency labels)
    fanout: dict | None = None  # {"source": label, "prefix", "count", "fail_index", "after": label}
    callbacks: dict = field(default_factory=dict)  # {"error": label, "finalizer": label}
    branch: dict | None = None  # {"label", "after": label, "key": chosen key(s), "paths": {key: [labels]}, "mode"}
    wait: dict | None = None  # {"name", "after": label, "outcome", "timeout": s or None, "delay": s}
    timer: dict | None = None  # {"after": label, "delay": s}
    hold: float = 0.0  # pause: seconds between pause() and resume()
    # Filled in by the soak as it runs:
    pk: object = None  # the workflow's id once submitted
    results: dict = field(default_factory=dict)  # what cancel()/retry() returned
    script_done: bool = False
    wait_done: bool = True  # False until the soak's signal() / complete() is over

    @property
    def name(self):
        return f"chaos-{self.index}-{self.shape}"

    def labels(self):
        """Every task body this workflow runs when nobody cancels it (callbacks apart)."""
        skipped = self.skipped()
        labels = [label for label, *_ in self.nodes if label not in skipped]
        if self.branch:
            labels.append(self.branch["label"])
        if self.fanout:
            f = self.fanout
            labels += [f["source"], f["after"], *(f"{f['prefix']}.{i}" for i in range(f["count"]))]
        return labels

    def chosen(self):
        key = self.branch["key"]
        return [key] if isinstance(key, str) else list(key)

    def skipped(self):
        """The labels of the paths the branch does not choose (when it succeeds): never run."""
        if not self.branch:
            return set()
        chosen = {label for key in self.chosen() for label in self.branch["paths"][key]}
        return {label for labels in self.branch["paths"].values() for label in labels} - chosen

    def fails(self):
        skipped = self.skipped()
        if any(mode != "ok" for label, _, mode, _ in self.nodes if label not in skipped):
            return True
        if self.branch and self.branch["mode"] != "ok":
            return True
        if self.wait and self.wait["outcome"] == "timeout":
            return True
        return bool(self.fanout and 0 <= self.fanout["fail_index"] < self.fanout["count"])


def plan(seed, seconds):
    """The traffic of a run of ``seconds`` s: one workflow every 1.5 to 4 s."""
    rng = random.Random(f"{seed}-traffic")
    specs, at = [], 2.0
    while at < seconds:
        specs.append(_spec(rng, len(specs), at))
        at += rng.uniform(1.5, 4.0)
    return specs


def _spec(rng, index, at):
    shape = rng.choices(list(SHAPES), weights=list(SHAPES.values()))[0]
    script = rng.choices(list(SCRIPTS), weights=list(SCRIPTS.values()))[0]
    if (shape == "dag" and script == "heal") or (shape in ("wait", "timer", "branch") and script not in WAIT_SCRIPTS):
        script = "none"
    spec = Spec(index, at, shape, script, delay=rng.uniform(0.0, 8.0), hold=round(rng.uniform(1.0, 6.0), 2))
    prefix = f"w{index}"
    fail = rng.random() < 0.2 and script != "heal"

    def duration():
        return round(rng.choice([0.0, 0.05, 0.2, 0.5, 1.0, 2.0]), 2)

    if shape == "chain":
        previous = None
        for i in range(rng.randint(3, 6)):
            spec.nodes.append((f"{prefix}.c{i}", duration(), "ok", [previous] if previous else []))
            previous = f"{prefix}.c{i}"
    elif shape == "chord":
        header = [f"{prefix}.h{i}" for i in range(rng.randint(3, 6))]
        spec.nodes += [(label, duration(), "ok", []) for label in header]
        spec.nodes.append((f"{prefix}.body", duration(), "ok", header))
    elif shape == "dag":
        layers = []
        for layer in range(10):
            labels = [f"{prefix}.d{layer}x{i}" for i in range(20)]
            for label in labels:
                deps = rng.sample(layers[-1], rng.randint(1, 3)) if layers else []
                spec.nodes.append((label, rng.choice([0.0, 0.0, 0.02]), "ok", deps))
            layers.append(labels)
    elif shape == "fanout":
        count = rng.randint(2, 8)
        spec.fanout = {"source": f"{prefix}.src", "prefix": f"{prefix}.it", "count": count,
                       "fail_index": rng.randrange(count) if fail else -1, "after": f"{prefix}.after",
                       "seconds": duration()}
        fail = False
    elif shape == "branch":  # before -> choose -> left (two) or right (one) -> merge after both
        before, left, right, merge = f"{prefix}.pre", [f"{prefix}.l0", f"{prefix}.l1"], [f"{prefix}.r0"], \
            f"{prefix}.merge"
        spec.nodes += [(before, duration(), "ok", []), (left[0], duration(), "ok", []),
                       (left[1], duration(), "ok", [left[0]]), (right[0], duration(), "ok", []),
                       (merge, duration(), "ok", [left[1], right[0]])]
        key = rng.choice(["left", "right", "left", "right", ["left", "right"]])
        spec.branch = {"label": f"{prefix}.br", "after": before, "key": key, "paths": {"left": left, "right": right},
                       "mode": "ok"}
    elif shape == "wait":  # before -> wait -> after
        before, after = f"{prefix}.pre", f"{prefix}.post"
        outcome = rng.choices(list(WAIT_OUTCOMES), weights=list(WAIT_OUTCOMES.values()))[0]
        spec.nodes += [(before, duration(), "ok", []), (after, duration(), "ok", [])]
        spec.wait = {"name": f"go-{index}", "after": before, "before": after, "outcome": outcome,
                     "timeout": None if outcome in ("signal", "complete") else round(rng.uniform(2, 8), 2),
                     "delay": round(rng.uniform(0.5, 10), 2)}
    elif shape == "timer":  # before -> timer -> after
        before, after = f"{prefix}.pre", f"{prefix}.post"
        spec.nodes += [(before, duration(), "ok", []), (after, duration(), "ok", [])]
        spec.timer = {"after": before, "before": after, "delay": round(rng.uniform(1, 6), 2)}
    else:  # callbacks: a small diamond with link_error and link_finalizer
        a, b, c, d = (f"{prefix}.{x}" for x in "abcd")
        spec.nodes += [(a, duration(), "ok", []), (b, duration(), "ok", [a]), (c, duration(), "ok", [a]),
                       (d, duration(), "ok", [b, c])]
        spec.callbacks = {"error": f"{prefix}.on-error", "finalizer": f"{prefix}.finally"}
    if script == "heal" and not spec.nodes:
        spec.script = script = "none"
    if spec.nodes and (fail or script == "heal"):
        i = rng.randrange(len(spec.nodes) + (1 if spec.branch else 0))
        if i == len(spec.nodes):
            spec.branch["mode"] = "fail"
        else:
            label, seconds, _, deps = spec.nodes[i]
            spec.nodes[i] = (label, seconds, "flaky" if script == "heal" else "fail", deps)
    return spec


def natural(spec):
    """The final state when nobody cancels it (heal: once healed and retried)."""
    if spec.script == "heal":
        return Workflow.State.SUCCESS
    return Workflow.State.FAILURE if spec.fails() else Workflow.State.SUCCESS


def build(spec):
    """The unsaved workflow of ``spec``."""
    wf = Workflow(name=spec.name)
    nodes = {}
    if spec.shape == "chord":
        *header, (cb_label, cb_seconds, cb_mode, _) = spec.nodes
        wf.add_celery_canvas(chord([body.si(label, seconds=s, mode=m) for label, s, m, _ in header],
                                   body.si(cb_label, seconds=cb_seconds, mode=cb_mode)))
        return wf
    gates = {}  # label -> the wait or timer node it follows
    if spec.wait:
        gates[spec.wait["before"]] = spec.wait
    if spec.timer:
        gates[spec.timer["before"]] = spec.timer
    for label, seconds, mode, deps in spec.nodes:
        dependencies = [nodes[d] for d in deps]
        gate = gates.get(label)
        if gate is spec.wait and gate:
            extra = {} if gate["outcome"] != "default" else {"default": {"late": True}}
            dependencies.append(wf.add_wait(gate["name"], dependencies=[nodes[gate["after"]]],
                                            timeout=gate["timeout"], **extra))
        elif gate:
            dependencies.append(wf.add_timer(dependencies=[nodes[gate["after"]]], delay=gate["delay"],
                                             name=f"timer-{spec.index}"))
        nodes[label] = wf.add_signature(body.si(label, seconds=seconds, mode=mode), dependencies=dependencies or None)
    if spec.branch:
        b = spec.branch
        wf.add_branch(choose.si(b["label"], b["key"], mode=b["mode"]),
                      {key: [nodes[label] for label in labels] for key, labels in b["paths"].items()},
                      dependencies=[nodes[b["after"]]])
    if spec.fanout:
        f = spec.fanout
        src = wf.add_signature(source.si(f["source"], f["count"]))
        fan = wf.add_fanout(item.s(f["prefix"], seconds=f["seconds"], fail_index=f["fail_index"]), src)
        wf.add_signature(body.si(f["after"]), dependencies=[fan])
    if spec.callbacks:
        wf.link_error(body.si(spec.callbacks["error"]))
        wf.link_finalizer(body.si(spec.callbacks["finalizer"]))
    return wf
