"""pass_results=True must give the same final result as native Celery, canvas by canvas.

Each case builds its canvas twice (a canvas is consumed when applied): once
for native Celery on the same real worker and result backend, once as a
workflow. The workflow's final result is the result of its last leaf node
(all leaves, in order, when the canvas ends with a group).
"""

import pytest
from celery import chain, chord, group

from django_dyrygent.models import Workflow
from tests.tasks import add, append, identity, mul, tsum

pytestmark = pytest.mark.worker

TIMEOUT = 30

CASES = {
    # A mutable signature in a chain gets its parent's result as first argument.
    "chain_of_mutables": lambda: chain(add.s(1, 2), add.s(10), mul.s(3)),
    # An immutable step in the middle gets nothing; the step after it gets its result.
    "immutable_in_the_middle": lambda: chain(add.s(1, 2), add.si(10, 10), add.s(5)),
    # group | task is upgraded to a chord: the task gets the header results in order.
    "chain_after_group_is_a_chord": lambda: chain(
        add.s(1, 1), group(add.s(10), mul.s(10), add.s(100)), append.s("end")
    ),
    "chain_starting_with_group": lambda: chain(group(add.s(1, 1), add.s(2, 2), add.s(3, 3)), append.s("x")),
    "chord_with_chain_body": lambda: chord([add.s(1, 1), add.s(2, 2)], chain(tsum.s(), mul.s(10), add.s(1))),
    "group_of_chains_as_chord_header": lambda: chord(
        [chain(add.s(1, 1), mul.s(2)), chain(add.s(2, 2), mul.s(3), add.s(1))], identity.s()
    ),
    "nested_chords_in_a_chain": lambda: chain(
        add.s(1, 1),
        chord([add.s(1), add.s(2)], tsum.s()),
        chord([mul.s(2), mul.s(3)], append.s("second")),
    ),
    "header_members_receive_the_parent_result": lambda: chain(
        add.s(2, 3), group(chain(add.s(1), mul.s(2)), mul.s(10)), identity.s()
    ),
    "immutable_chord_body": lambda: chain(chord([add.s(1, 1), add.s(2, 2)], add.si(5, 5)), add.s(1)),
    "group_followed_by_group": lambda: chain(
        group(add.s(1, 1), add.s(2, 2)), group(append.s("a"), append.s("b")), identity.s()
    ),
    "chain_ending_with_group": lambda: chain(add.s(1, 1), group(add.s(1), add.s(2), mul.s(5))),
    # A chord body gets a list even for a one-task header ...
    "single_task_chord_header": lambda: chord([add.s(1, 1)], identity.s()),
    "piped_single_task_group_is_a_chord": lambda: group(add.s(5, 1)) | identity.s(),
    "chain_holding_a_piped_one_task_chord": lambda: chain(add.s(1, 1), group(add.s(5)) | identity.s()),
    # ... while Celery unrolls a one-task group inside a chain into the task itself.
    "single_task_group_in_chain": lambda: chain(add.s(1, 1), group(add.s(5)), identity.s()),
    "nested_chord_in_chord_header": lambda: chord(
        [chord([add.s(1, 1), add.s(2, 2)], tsum.s()), add.s(10, 10)], identity.s()
    ),
    "nested_chain_flattened": lambda: chain(add.s(1, 1), chain(add.s(2), chain(mul.s(3), add.s(4)))),
    "group_of_group_as_chord_header": lambda: chord(
        [group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)], identity.s()
    ),
}

# Cases where native Celery differs from the engine because of Celery itself.
CELERY_QUIRKS = {
    "group_of_group_as_chord_header": (
        "Celery quirk: a group nested in a chord header is flattened with "
        "deque.extendleft(task.tasks) (celery/canvas.py, group._freeze_unroll), which "
        "reverses its members, so native Celery returns [4, 2, 6]; the engine keeps the "
        "written order [2, 4, 6]."
    ),
}


def native_result(canvas):
    return canvas.apply_async().get(timeout=TIMEOUT)


def workflow_result(canvas):
    wf = Workflow(name="pass-results", pass_results=True)
    wf.add_celery_canvas(canvas)
    wf.apply_async()
    state = wf.wait(timeout=TIMEOUT)
    assert state == Workflow.State.SUCCESS, list(wf.nodes.values_list("task_name", "state", "error"))
    results = [n.result for n in wf.leaves()]
    return results[0] if len(results) == 1 else results


@pytest.mark.parametrize(
    "case",
    [pytest.param(name, marks=[pytest.mark.xfail(reason=CELERY_QUIRKS[name], strict=True)]
                  if name in CELERY_QUIRKS else []) for name in CASES],
)
def test_pass_results__same_final_result_as_native_celery(worker, case):
    expected = native_result(CASES[case]())
    got = workflow_result(CASES[case]())
    assert got == expected
