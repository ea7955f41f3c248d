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
  workflow ended: expected the natural outcome.
"""

import random
from dataclasses import dataclass, field

from celery import chord

from django_dyrygent.models import Workflow
from tests.chaos.tasks import body, item, source

CANCEL_REASON = "chaos cancel"
SHAPES = {"chain": 30, "chord": 20, "fanout": 20, "callbacks": 22, "dag": 8}


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
    # Filled in by the soak as it runs:
    pk: object = None  # the workflow's id once submitted
    results: dict = field(default_factory=dict)  # what cancel()/retry() returned
    script_done: bool = False

    @property
    def name(self):
        return f"chaos-{self.index}-{self.shape}"

    def labels(self):
        """Every task body this workflow runs when nobody cancels it (callbacks apart)."""
        labels = [label for label, *_ in self.nodes]
        if self.fanout:
            f = self.fanout
            labels += [f["source"], f["after"], *(f"{f['prefix']}.{i}" for i in range(f["count"]))]
        return labels

    def fails(self):
        if any(mode != "ok" for _, _, mode, _ in self.nodes):
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
    script = rng.choices(["none", "cancel", "heal", "retry", "cancel-retry"], weights=[60, 12, 10, 10, 8])[0]
    if shape == "dag" and script == "heal":
        script = "none"
    spec = Spec(index, at, shape, script, delay=rng.uniform(0.0, 8.0))
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
    else:  # callbacks: a small diamond with link_error and link_finalizer
        a, b, c, d = (f"{prefix}.{x}" for x in "abcd")
        spec.nodes += [(a, duration(), "ok", []), (b, duration(), "ok", [a]), (c, duration(), "ok", [a]),
                       (d, duration(), "ok", [b, c])]
        spec.callbacks = {"error": f"{prefix}.on-error", "finalizer": f"{prefix}.finally"}
    if script == "heal" and not spec.nodes:
        spec.script = script = "none"
    if spec.nodes and (fail or script == "heal"):
        i = rng.randrange(len(spec.nodes))
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
    for label, seconds, mode, deps in spec.nodes:
        nodes[label] = wf.add_signature(body.si(label, seconds=seconds, mode=mode),
                                        dependencies=[nodes[d] for d in deps] or None)
    if spec.fanout:
        f = spec.fanout
        src = wf.add_signature(source.si(f["source"], f["count"]))
        fan = wf.add_fanout(item.s(f["prefix"], seconds=f["seconds"], fail_index=f["fail_index"]), src)
        wf.add_signature(body.si(f["after"]), dependencies=[fan])
    if spec.callbacks:
        wf.link_error(body.si(spec.callbacks["error"]))
        wf.link_finalizer(body.si(spec.callbacks["finalizer"]))
    return wf
