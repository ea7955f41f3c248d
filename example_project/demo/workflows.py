"""The demo DAG: a Celery canvas (chain, group, chord) plus explicit-dependency nodes.

::

    fetch_inventory ──> provision × N ──> check × N ──> summarize ──┐
          │            (group)           (chord header)  (chord body)├──> notify
          └──────────────────────────> audit ───────────────────────┘

``fetch_inventory`` and ``audit`` are added with ``add_signature``; the
middle is one native canvas hung below ``fetch_inventory`` with
``add_celery_canvas(..., dependencies=[fetch])``; ``notify`` waits for every
leaf. Between the group and the chord header the importer puts one internal
join node, so the N × N edges a naive import would draw become 2 × N.

The ``release`` definition shows control flow: a person approves (a wait
node, answered from the admin's node list or ``dyrygent_signal``), then a
branch publishes or rolls back.

Three catalogue definitions at the bottom make these workflows startable by
name, without a view: from the admin ("Start a workflow"), the command line
(``manage.py dyrygent_run demo --param hosts=3``), the JSON API mounted at
``/api/`` and the beat schedule in ``example_project/schedule.py``.
"""

from datetime import timedelta

from celery import chain, chord, group

from django_dyrygent import catalogue
from django_dyrygent.models import Workflow

from .forms import StartDemoForm
from .tasks import (
    audit,
    build_release,
    check,
    decide,
    fetch_inventory,
    notify,
    provision,
    publish_release,
    roll_back,
    summarize,
)

DEFAULT_HOSTS = 4


def host_names(count):
    return [f"web-{i + 1}" for i in range(count)]


def build_demo_workflow(hosts=DEFAULT_HOSTS, delay=0.2, fail=False, name="demo"):
    """An unsaved demo Workflow; call ``apply_async()`` on it to run it.

    ``fail=True`` makes the last host's provisioning raise, to show a failed
    branch: its descendants end UPSTREAM_FAILED, ``audit`` still runs, and the
    workflow ends FAILURE.
    """
    if not isinstance(hosts, int) or not 1 <= hosts <= 100:
        raise ValueError(f"hosts must be an integer from 1 to 100, not {hosts!r}")
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 60:
        raise ValueError(f"delay must be from 0 to 60 seconds, not {delay!r}")
    names = host_names(hosts)
    wf = Workflow(
        name=name,
        # Native canvas semantics: summarize (a mutable signature, .s()) gets the
        # list of check results as its first argument.
        pass_results=True,
        custom_payload={"hosts": hosts, "delay": delay, "fail": fail, "source": "demo"},
    )
    fetch = wf.add_signature(fetch_inventory.si(names, delay=delay))
    wf.add_celery_canvas(
        chain(
            group(provision.si(h, delay=delay, fail=fail and h == names[-1]) for h in names),
            chord([check.si(h, delay=delay) for h in names], summarize.s(delay=delay)),
        ),
        dependencies=[fetch],
    )
    wf.add_signature(audit.si(delay=delay), dependencies=[fetch])
    last = wf.add_signature(notify.si("ops", delay=delay), dependencies=wf.leaves())
    last.custom_payload["channel"] = "ops"
    return wf


# -- the catalogue: the same workflows, startable by name ------------------------------


@catalogue.register("demo", form=StartDemoForm)
def demo(hosts, delay, fail):
    """Provision hosts: fetch the inventory, provision and check every host, summarize, notify.

    Tick "fail" to see a failed branch: its descendants end UPSTREAM_FAILED while audit still runs.
    """
    return build_demo_workflow(hosts=hosts, delay=delay, fail=fail)


@catalogue.register("nightly-audit", overlap="skip", deadline=timedelta(hours=1))
def nightly_audit(channel: str = "ops", delay: float = 0.2):
    """Write the audit log, then tell a channel; started every night by Celery beat.

    A night whose previous audit still runs is skipped (overlap policy "skip").
    """
    wf = Workflow(custom_payload={"source": "nightly-audit"})
    wf.add_celery_canvas(chain(audit.si(delay=delay), notify.si(channel, delay=delay)))
    return wf


@catalogue.register("release", deadline=timedelta(days=2))
def release(version: str = "1.0", delay: float = 0.2):
    """Ship a release: build it, wait for a person's approval, then publish it or roll back.

    Answer the "approved" wait from the node list (Approve / Reject), or with
    ``manage.py dyrygent_signal <id> approved --payload '{"approved": true}'``.
    Nobody answering within a day counts as a rejection.
    """
    wf = Workflow(pass_results=True, custom_payload={"source": "release"})
    built = wf.add_signature(build_release.si(version, delay=delay))
    approved = wf.add_wait("approved", dependencies=[built], timeout=timedelta(days=1),
                           default={"approved": False})
    publish = wf.add_signature(publish_release.si(version, delay=delay))
    rollback = wf.add_signature(roll_back.si(version, delay=delay))
    wf.add_branch(decide.s(), {"publish": publish, "roll back": rollback}, dependencies=[approved])
    return wf
