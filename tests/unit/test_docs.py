"""The docs stay true to the code: links resolve, and every command, setting and check is documented."""

import re
from pathlib import Path

import pytest
from django.core.management import get_commands

from django_dyrygent import checks, conf

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def text(name):
    return (DOCS / name).read_text(encoding="utf-8")


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    heading = heading.strip().lower()
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def anchors(page):
    return {slug(line.lstrip("#")) for line in page.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")}


def test_docs__index_links_every_page():
    linked = {m.split("#")[0] for m in LINK.findall(text("index.md"))}
    assert {p.name for p in PAGES} - {"index.md"} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_docs__relative_links_and_anchors_resolve(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        name, _, anchor = target.partition("#")
        dest = DOCS / name if name else page
        assert dest.exists(), f"{page.name}: broken link {target}"
        if anchor:
            assert anchor in anchors(dest), f"{page.name}: no heading for #{anchor} in {dest.name}"


def test_docs__every_dyrygent_command_exists_and_is_documented():
    commands = {name for name in get_commands() if name.startswith("dyrygent_")}
    assert commands == {
        "dyrygent_run", "dyrygent_status", "dyrygent_cancel", "dyrygent_retry",
        "dyrygent_tick", "dyrygent_graph", "dyrygent_prune", "dyrygent_pause", "dyrygent_resume",
        "dyrygent_signal",
    }
    mentioned = set()
    for page in PAGES:
        mentioned |= set(re.findall(r"\bdyrygent_[a-z]+\b", page.read_text(encoding="utf-8")))
    mentioned -= {"dyrygent_workflow"}  # the message header, not a command
    assert mentioned == commands
    operations = text("operations.md")
    combined = {"dyrygent_cancel", "dyrygent_retry", "dyrygent_pause", "dyrygent_resume"}  # in pairs
    assert "### dyrygent_cancel, dyrygent_retry" in operations
    assert "### dyrygent_pause, dyrygent_resume" in operations
    missing = [name for name in commands - combined if f"### {name}" not in operations]
    assert not missing


def test_docs__every_setting_is_documented_with_its_default():
    settings_page = text("settings.md")
    rows = dict(re.findall(r"^\| `DYRYGENT_([A-Z_]+)` \| [^|]+ \| `([^`]+)`", settings_page, re.M))
    assert set(rows) == set(conf.DEFAULTS)
    for name, default in conf.DEFAULTS.items():
        assert rows[name] == repr(default), f"DYRYGENT_{name}: documented {rows[name]}, code {default!r}"


def test_docs__every_check_id_is_explained():
    source = Path(checks.__file__).read_text(encoding="utf-8")
    ids = set(re.findall(r'id="(django_dyrygent\.[EWI]\d{3})"', source))
    # E002/E004 come from the typed settings table (conf.Setting.problem).
    conf_source = Path(conf.__file__).read_text(encoding="utf-8")
    ids |= {f"django_dyrygent.{code}" for code in re.findall(r'return "([EWI]\d{3})"', conf_source)}
    assert len(ids) >= 8
    page = text("troubleshooting.md")
    assert {i for i in ids if f"`{i}`" not in page} == set()


# Fixed parts of messages quoted in troubleshooting.md: if the code's wording
# changes, the page must change with it.
QUOTED = [
    "no worker reported within",
    "Tick for unknown workflow",
    "Could not publish node",
    "Could not send the tick of workflow",
    "Could not revoke",
    "could not record",
    "the sweep will repair it",
    "either; the sweep will re-run it",
    "Result backend lookup of task",
    "late %s report ignored",
    "is not a node of workflow",
    "of a django_dyrygent signal failed",
    "Result is not JSON-serialisable, so it cannot be stored in the node",
    "store large data elsewhere and return a reference to it",
    "Timed out: no outcome",
    "not a list",
    "Workflow still running at its deadline",
    "a dependency did not succeed",
    "duplicate task id, also used by",
    "task id already used by another workflow",
    "Dependency cycle: ",
    "workflow callbacks cannot have dependencies",
    "expected a Celery signature or canvas",
    "use add_celery_canvas() for chains, groups and chords.",
    "was already applied; build a new Workflow.",
    "edges are fixed once applied.",
    "only PENDING or QUEUED nodes can be skipped",
    "(neither done nor skipped)",
    "is not a workflow id: give the UUID or at least its first",
    "is too short: give at least",
    "is ambiguous: it matches",
    "must be callable without arguments",
    "--payload must be a JSON object, not",
    "--timeout only applies with --wait.",
    "use a number followed by s, m, h, d or w",
    "it cannot be combined with a workflow id.",
    "it keeps running.",
    "First failure:",
    "Scheduled start of %s failed",
    "Queued run of %s dropped",
    "imports the catalogue when it starts, so a definition added or renamed",
    "SQLite has no row locks",
    "No configured Celery app is current",
    "Celery has no result backend",
    "The Celery app cannot be loaded",
    "levels deep, over",
    "starting its sub-workflow",
    "running sub-workflow",
]


def test_docs__quoted_messages_are_the_code_s_messages():
    package = Path(checks.__file__).resolve().parent
    source = "\n".join(p.read_text(encoding="utf-8") for p in package.rglob("*.py"))
    page = text("troubleshooting.md") + text("api.md") + text("concepts.md") + text("operations.md")
    missing_in_code = [q for q in QUOTED if q not in source]
    # The docs show "%s" placeholders filled in.
    missing_in_docs = [q for q in QUOTED if re.sub(r"%s", "", q).split("  ")[0].strip() not in page
                       and q.replace("%s", "FAILURE") not in page]
    assert missing_in_code == [] and missing_in_docs == []
