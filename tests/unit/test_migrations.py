"""The shipped migrations match the models, whatever the host project's settings.

A reusable app whose models drift from its migrations makes every host
project generate a migration inside site-packages; one that follows the
host's DEFAULT_AUTO_FIELD does the same the day the host changes it.
"""

import hashlib
import os
import re
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test.utils import override_settings

from django_dyrygent import migrations

pytestmark = pytest.mark.django_db

APP = "django_dyrygent"
MIGRATIONS_DIR = Path(migrations.__file__).parent


#: sha256 of each released migration file. A released migration is never edited:
#: databases that applied it never see the edit. Change the models and add a new
#: migration (makemigrations django_dyrygent --name ...) instead.
RELEASED = {
    # 0.1.0
    "0001_initial.py": "9134a142a3f5823f907903a6ec98faec7d231483c9f22075fb8e3f94862893fa",
}


def migration_files():
    return sorted(p.name for p in MIGRATIONS_DIR.glob("[0-9]*.py"))


def test_migrations__models_match_migrations():
    out = StringIO()
    # --check exits with SystemExit(1) when a migration is missing.
    call_command("makemigrations", APP, "--check", "--dry-run", stdout=out, stderr=out)
    assert "No changes detected" in out.getvalue()


@override_settings(DEFAULT_AUTO_FIELD="django.db.models.BigAutoField")
def test_migrations__models_match_migrations_with_big_auto_field():
    test_migrations__models_match_migrations()


@pytest.mark.parametrize(
    "auto_field",
    ["django.db.models.AutoField", "django.db.models.BigAutoField", "django.db.models.SmallAutoField"],
)
def test_migrations__host_default_auto_field_creates_no_migration(auto_field):
    """override_settings cannot rebuild loaded models, so ask a fresh interpreter."""
    code = textwrap.dedent(
        f"""
        import sys
        from django.conf import settings
        import tests.settings as base
        values = {{k: getattr(base, k) for k in dir(base) if k.isupper()}}
        values["DEFAULT_AUTO_FIELD"] = {auto_field!r}
        settings.configure(**values)
        import django
        django.setup()
        from django.core.management import call_command
        call_command("makemigrations", {APP!r}, "--check", "--dry-run", verbosity=1)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No changes detected" in proc.stdout


def test_migrations__no_duplicate_migration_numbers():
    """Two migrations with one number make backward migrations ambiguous."""
    numbers = [name[:4] for name in migration_files()]
    assert numbers and len(numbers) == len(set(numbers)), numbers


def test_migrations__file_names_are_numbered():
    for name in os.listdir(MIGRATIONS_DIR):
        if name.endswith(".py") and name != "__init__.py":
            assert re.fullmatch(r"\d{4}_\w+\.py", name), name


def test_migrations__form_one_linear_history():
    graph = MigrationLoader(connection, ignore_no_migrations=True).graph
    leaves = graph.leaf_nodes(APP)
    assert len(leaves) == 1, leaves
    chain = graph.forwards_plan(leaves[0])
    own = [name for app, name in chain if app == APP]
    assert own == [name[:-3] for name in migration_files()]


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_migrations__released_migrations_are_frozen(name):
    digest = hashlib.sha256((MIGRATIONS_DIR / name).read_bytes()).hexdigest()
    assert digest == RELEASED[name], (
        f"{name} was released and must not change; put the schema change in a new migration."
    )


def test_migrations__later_migrations_build_on_the_released_ones():
    """Every migration after the released ones comes after them in the file order."""
    files = migration_files()
    assert files[: len(RELEASED)] == sorted(RELEASED), files
