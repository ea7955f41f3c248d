"""A database default for a NOT NULL column that the previous release's code does not know.

Django fills existing rows with a field's ``default`` during AddField, then
drops it from the column: an INSERT from code that does not name the column
then fails (NOT NULL). Between ``migrate`` and the last restart of a worker
or web process of the previous release that code still runs (docs/
operations.md, "Upgrading"), so a migration that adds such a column keeps a
database default, set in the same migration (one transaction on
PostgreSQL: no other session sees the column without it).

Not on SQLite (it cannot alter a column's default, and it is no database to
upgrade under traffic). The model state does not change (Django 4.2 has no
``db_default``), so ``makemigrations`` finds nothing to do.

Migrations import this module: what they run must not change once they are
released, so add new helpers here rather than change this one.
"""

from typing import Any

from django.db import migrations
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.base.schema import BaseDatabaseSchemaEditor


def _vendor(connection: BaseDatabaseWrapper) -> str:
    if connection.vendor == "mysql" and getattr(connection, "mysql_is_mariadb", False):
        return "mariadb"
    return connection.vendor


def column_default(model_name: str, field_name: str, by_vendor: dict[str, str]) -> migrations.RunPython:
    """A RunPython operation setting the column's default to ``by_vendor[vendor]`` (SQL), dropping it on reverse.

    Vendors not in ``by_vendor`` are left alone.
    """

    def alter(apps: Any, schema_editor: BaseDatabaseSchemaEditor, set_default: bool) -> None:
        vendor = _vendor(schema_editor.connection)
        if vendor not in by_vendor:
            return
        model = apps.get_model("django_dyrygent", model_name)
        column = model._meta.get_field(field_name).column
        action = f"SET DEFAULT {by_vendor[vendor]}" if set_default else "DROP DEFAULT"
        quote = schema_editor.quote_name
        schema_editor.execute(f"ALTER TABLE {quote(model._meta.db_table)} ALTER COLUMN {quote(column)} {action}")

    def forwards(apps: Any, schema_editor: BaseDatabaseSchemaEditor) -> None:
        alter(apps, schema_editor, set_default=True)

    def backwards(apps: Any, schema_editor: BaseDatabaseSchemaEditor) -> None:
        alter(apps, schema_editor, set_default=False)

    # atomic=False: on MySQL/MariaDB (no transactional DDL) Django would otherwise wrap the
    # operation in a transaction and refuse the ALTER; on PostgreSQL the whole migration is
    # one transaction anyway, so the default still appears together with its column.
    return migrations.RunPython(forwards, backwards, elidable=False, atomic=False)
