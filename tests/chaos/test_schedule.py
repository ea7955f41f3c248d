"""A seed fixes the soak's whole plan: the same seed replays the same traffic and faults."""

from collections import Counter
from itertools import pairwise

from tests.chaos import faults, traffic


def _plan(seed):
    specs = traffic.plan(seed, 180)
    schedule = faults.schedule(seed, 180)
    return ([(s.at, s.shape, s.script, s.delay, s.nodes, s.fanout, s.callbacks) for s in specs],
            [(f.at, f.kind, f.target, f.child, f.hold) for f in schedule])


def test_plan__the_same_seed_gives_the_same_traffic_and_faults():
    assert _plan(20261207) == _plan(20261207)
    assert _plan(20261207) != _plan(7)


def test_schedule__a_fault_every_10_to_30s_and_every_kind_in_a_long_run():
    schedule = faults.schedule(1, 1800)
    gaps = [b.at - a.at for a, b in pairwise(schedule)]
    assert all(10 <= gap <= 30 for gap in gaps)
    assert set(Counter(f.kind for f in schedule)) == set(faults.KINDS)
    # A pause outlasts the liveness window; every fault that lasts ends before the next one (scale apart).
    assert all(f.hold > faults.WORKER_TIMEOUT for f in schedule if f.kind == "sigstop")
    assert all(f.hold < 10 for f in schedule if f.kind != "scale")


def test_plan__every_shape_and_script_appears_and_outcomes_are_known():
    specs = traffic.plan(3, 1800)
    assert {s.shape for s in specs} == set(traffic.SHAPES)
    assert {s.script for s in specs} == set(traffic.SCRIPTS)
    assert {s.wait["outcome"] for s in specs if s.wait} == set(traffic.WAIT_OUTCOMES)
    assert {str(s.branch["key"]) for s in specs if s.branch} == {"left", "right", "['left', 'right']"}
    for spec in specs:
        modes = [mode for _, _, mode, _ in spec.nodes]
        if spec.script == "heal":  # one body fails until healed, none for good: SUCCESS after the retry
            assert modes.count("flaky") == 1 and "fail" not in modes
        else:
            assert "flaky" not in modes
        labels = spec.labels()
        assert len(labels) == len(set(labels))
