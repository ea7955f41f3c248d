"""``dyrygent_run NAME --param key=value`` and ``dyrygent_run --list``: the catalogue on the command line."""

import pytest
from django.core.management.base import CommandError

from django_dyrygent.models import Workflow
from tests.conftest import run_command

pytestmark = pytest.mark.django_db


def test_dyrygent_run__list_shows_definitions_parameters_and_policy():
    out, _ = run_command("dyrygent_run", "--list")
    assert "tests.add  (overlap: allow)" in out
    assert "    Add two numbers, then multiply by ten." in out
    assert "--param x=...  (integer; required)" in out
    assert "--param y=...  (integer; optional; default 2)" in out
    assert "--param mode=...  (choice; optional; default 'fast'; one of fast, full)" in out
    assert "--param day=...  (date; required): The day to report on." in out
    assert "tests.hold-queue  (overlap: queue)" in out


def test_dyrygent_run__starts_a_definition_with_params_through_its_form():
    out, _ = run_command("dyrygent_run", "tests.report", "--param", "day=2026-11-27", "--param", "hosts=3",
                         "--name", "nightly")
    wf = Workflow.objects.get()
    assert out.strip() == str(wf.pk)
    assert (wf.name, wf.definition, wf.trigger) == ("nightly", "tests.report", "command")
    assert wf.parameters == {"day": "2026-11-27", "hosts": 3, "mode": "fast"}
    assert wf.nodes_total == 3


@pytest.mark.parametrize("args, message", [
    (["tests.add"], r"Invalid parameters for tests.add:\n  x: This field is required."),
    (["tests.add", "--param", "x=four"], "x: Enter a whole number."),
    (["tests.add", "--param", "x=1", "--param", "z=2"], r"\(form\): Unknown parameter\(s\) z; tests.add takes"),
    (["tests.add", "--param", "x"], "--param expects KEY=VALUE, got 'x'"),
    (["tests.report", "--param", "day=2026-11-27", "--param", "hosts=4"], "4 hosts is unlucky"),
    (["tests.report", "--param", "day=2026-11-27", "--param", "hosts=5", "--param", "mode=full"],
     "A full report covers at most 3 hosts."),
    (["tests.add", "--param", "x=1", "--payload", "{}", "--pass-results"],
     "--payload, --pass-results cannot be used with the definition 'tests.add'"),
    (["tests.tasks.noop", "--param", "x=1"], "--param applies to catalogue definitions; 'tests.tasks.noop'"),
    (["tests.nope"], "Cannot import 'tests.nope'"),
    (["nope"], "Cannot import 'nope': it is neither a workflow definition"),
    (["--list", "tests.add"], "--list takes no NAME or PATH."),
    ([], "Give a definition NAME"),
])
def test_dyrygent_run__bad_catalogue_input_is_a_command_error_and_saves_nothing(args, message):
    with pytest.raises(CommandError, match=message):
        run_command("dyrygent_run", *args)
    assert not Workflow.objects.exists()


def test_parse_pairs__params_stay_strings_and_repeated_keys_become_lists():
    from django_dyrygent.management.commands.dyrygent_run import _parse_pairs

    assert _parse_pairs(["n=8", "tag=a", "tag=b", "tag=c", "empty="], "--param", as_json=False) == {
        "n": "8", "tag": ["a", "b", "c"], "empty": "",
    }
    assert _parse_pairs(["priority=8", "queue=fast"], "--option") == {"priority": 8, "queue": "fast"}
