"""The README's installation steps, followed by a new user in a brand-new startproject, pass the checks.

Also: the README, the docs and the example project say the same thing about
the sweep entry and SQLite's options, and `make test` lists skipped tests.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SWEEP_ENTRY = re.compile(r'"([\w-]+)": \{"task": "django_dyrygent\.sweep", "schedule": ([\d.]+)\}')
SQLITE_OPTIONS = re.compile(r"""["']transaction_mode["']: ["']IMMEDIATE["'],\s*["']timeout["']: (\d+)""")


def texts():
    """Every place a user reads a setting from: README, docs, example settings, the checks' hints."""
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "example_project" / "settings.py",
             ROOT / "django_dyrygent" / "checks.py"]
    # Adjacent string literals over two lines (the checks' hints) read as one string.
    return {path.relative_to(ROOT).as_posix(): re.sub(r'"\s*\n\s*"', "", path.read_text()) for path in paths}


def python_block_after(marker):
    """The fenced python block of the README whose first line is ``marker``."""
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        if block.startswith(marker):
            return block
    raise AssertionError(f"No python block starting with {marker!r} in README.md")


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
