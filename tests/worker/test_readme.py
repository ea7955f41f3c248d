"""The README's installation steps, followed by a new user in a brand-new startproject, pass the checks.

Also: the README, the docs and the example project say the same thing about
the sweep entry and SQLite's options, and `make test` lists skipped tests.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import python_block_after

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SWEEP_ENTRY = re.compile(r'"([\w-]+)": \{"task": "django_dyrygent\.sweep", "schedule": ([\d.]+)\}')
SQLITE_OPTIONS = re.compile(r"""["']transaction_mode["']: ["']IMMEDIATE["'],\s*["']timeout["']: (\d+)""")


def texts():
    """Every place a user reads a setting from: README, docs, example settings, the checks' hints."""
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "example_project" / "settings.py",
             ROOT / "django_dyrygent" / "checks.py"]
    # Adjacent string literals over two lines (the checks' hints) read as one string.
    return {path.relative_to(ROOT).as_posix(): re.sub(r'"\s*\n\s*"', "", path.read_text()) for path in paths}


def test_readme_and_docs__one_sweep_entry_name_and_interval():
    """Where a beat entry for the sweeper is shown (the way without DYRYGENT_LIVENESS), it is the same one."""
    found = {(name, float(every)) for text in texts().values() for name, every in SWEEP_ENTRY.findall(text)}
    assert len(found) == 1, found


def test_readme_setup__needs_no_beat_entry_for_the_sweeper():
    """The workers sweep themselves (DYRYGENT_LIVENESS): the README's settings block has no beat entry."""
    block = python_block_after("# settings.py")
    assert "CELERY_BEAT_SCHEDULE" not in block
    assert "no beat entry is needed" in block


def test_readme_and_docs__one_sqlite_timeout():
    found = {where: set(SQLITE_OPTIONS.findall(text)) for where, text in texts().items()}
    values = set().union(*found.values())
    assert len(values) == 1, found
    assert found["README.md"] and found["django_dyrygent/checks.py"]


def test_readme_settings__include_connection_reuse_and_sqlite_options():
    block = python_block_after("# settings.py")
    assert "CELERY_DB_REUSE_MAX = 1000" in block
    assert SQLITE_OPTIONS.search(block)


def test_readme_install__new_startproject_passes_the_dyrygent_checks(tmp_path):
    """django-admin startproject, then only what the README says: no django_dyrygent warning is left."""
    subprocess.run([sys.executable, "-m", "django", "startproject", "proj", str(tmp_path)], check=True,
                   timeout=60)
    settings = tmp_path / "proj" / "settings.py"
    settings.write_text(settings.read_text() + "\n" + python_block_after("# settings.py"))
    celery_block = python_block_after("# proj/celery.py")
    celery_py, init_py = celery_block.split("# proj/__init__.py")
    (tmp_path / "proj" / "celery.py").write_text(celery_py)
    (tmp_path / "proj" / "__init__.py").write_text(init_py)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert "django_dyrygent." not in output, output
    assert "System check identified" in output  # Django's own deploy warnings (DEBUG, HSTS...) remain


def test_makefile__test_target_lists_skipped_tests_and_why():
    done = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    pytest_line = next(line for line in done.stdout.splitlines() if "-m pytest" in line)
    assert " -rs " in pytest_line


def _readme_project(path):
    """startproject + only the README's settings and Celery blocks, plus one app with a task (any project has one)."""
    subprocess.run([sys.executable, "-m", "django", "startproject", "proj", str(path)], check=True, timeout=60)
    settings = path / "proj" / "settings.py"
    settings.write_text(settings.read_text() + "\n" + python_block_after("# settings.py")
                        + '\nINSTALLED_APPS += ["shop"]\n')
    celery_py, init_py = python_block_after("# proj/celery.py").split("# proj/__init__.py")
    (path / "proj" / "celery.py").write_text(celery_py)
    (path / "proj" / "__init__.py").write_text(init_py)
    (path / "shop").mkdir()
    (path / "shop" / "__init__.py").write_text("")
    (path / "shop" / "tasks.py").write_text(
        "from celery import shared_task\n\n\n@shared_task\ndef step(label):\n    return label\n"
    )


START_WHILE_BROKER_DOWN = """
from celery import chain
from django_dyrygent.models import Workflow
from shop.tasks import step
wf = Workflow(name="readme")
wf.add_celery_canvas(chain(step.si("a"), step.si("b")))
wf.apply_async()
print("ID", wf.pk, "SENT", wf.start_sent)
"""


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="runs once, in the SQLite pass (its own SQLite)")
def test_readme_install__start_sent_while_the_broker_was_down_recovers_by_itself_within_a_minute(tmp_path):
    """A new startproject set up from the README only, no beat: a start the broker refused still runs.

    The caller is told (``start_sent`` is False); once the broker is up and a
    worker runs, the worker's own sweep starts the workflow.
    """
    from tests.reliability import harness

    _readme_project(tmp_path)
    redis = harness.Redis(tmp_path / "redis")  # its port is free: nothing listens yet (broker down)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
           "DJANGO_SETTINGS_MODULE": "proj.settings", "CELERY_BROKER_URL": redis.url}
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=tmp_path, env=env, check=True, timeout=180)
    started = subprocess.run([*manage, "shell", "-c", START_WHILE_BROKER_DOWN], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    workflow_id = re.search(r"ID (\S+) SENT False", started.stdout).group(1)
    state = [*manage, "shell", "-c",
             f"from django_dyrygent.models import Workflow; print(Workflow.objects.get(pk='{workflow_id}').state)"]
    worker = None
    redis.start()
    try:
        log = open(tmp_path / "worker.log", "wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "proj", "worker", "-P", "prefork", "-c", "1", "-l", "warning",
             "--without-mingle", "--without-gossip"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        up = time.monotonic()

        def final():
            out = subprocess.run(state, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
            last = (out.stdout.strip().splitlines() or [""])[-1]  # Django 5.2's shell may print a banner first
            return last if last in ("SUCCESS", "FAILURE", "ERROR") else None

        assert harness.wait_for(final, 90, interval=1.0, what="the workflow's end") == "SUCCESS", (
            (tmp_path / "worker.log").read_text()
        )
        assert time.monotonic() - up <= 60  # the bound, with default settings
    finally:
        harness.stop_process(worker, timeout=30)
        redis.stop()
