"""Write a draft's nodes and edges on PostgreSQL: ids from the nodes' sequence, rows through COPY.

One concern (the fast writer of one backend); the rest of saving does not
depend on how rows reach the table: the other backends take ``save``'s
``bulk_create`` path. Statements do not grow with the graph: ``nextval``
once, then one ``COPY … FROM STDIN`` per table, values handed over as they
are (the JSON columns as the text validation already encoded). The
statements' text is in ``engine.sql``, the one engine module ``build/`` may
import.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.fields.json import JSONField

from ..draft import Draft
from ..engine import sql

if TYPE_CHECKING:
    from ..models import Workflow, WorkflowEdge, WorkflowNode
    from ..models import WorkflowNode as Node
    from .save import Encoded


def copy_graph(
    connection: BaseDatabaseWrapper, workflow: Workflow, draft: Draft, encoded: Encoded,
    node_model: type[WorkflowNode], edge_model: type[WorkflowEdge],
) -> None:
    """Nodes and edges in three statements, whatever their number.

    The ids come from the nodes' own sequence (``nextval``: other builders
    running at the same time get other ids), so the edges can name their
    nodes without reading anything back.
    """
    nodes = draft.nodes
    if not nodes:
        return
    node_table = node_model._meta.db_table
    reserve, params = sql.reserve_ids_sql(connection, node_model)
    with connection.cursor() as cursor:
        cursor.execute(reserve, [*params, len(nodes)])
        ids = sorted(row[0] for row in cursor.fetchall())
    for node, pk in zip(nodes, ids, strict=True):
        node.pk = pk
    columns, rows = node_rows(node_model, nodes, encoded)
    copy_rows(connection, node_table, columns, rows)
    workflow_id = str(workflow.pk)  # as COPY's text: psycopg formats a str for half a UUID's cost
    pk = attrgetter(node_model._meta.pk.attname)
    edge_rows = (
        (workflow_id, pk(node), pk(dep), i)
        for node in nodes
        for i, dep in enumerate(draft.dependencies_of(node))
    )
    edge_fields = ("workflow", "node", "dependency", "position")
    by_name = {f.name: f for f in edge_model._meta.concrete_fields}
    edge_columns = [str(by_name[name].column) for name in edge_fields]
    copy_rows(connection, edge_model._meta.db_table, edge_columns, edge_rows)


def node_rows(
    model: type[WorkflowNode], nodes: Sequence[Node], encoded: Encoded | None = None
) -> tuple[list[str], Iterator[list[Any]]]:
    """The columns of ``WorkflowNode`` and one list of values per node, JSON columns as JSON text.

    Values are the instances' own (no per-field preparation): the model's
    columns hold nothing a field converts on the way in but JSON. The rows
    are made as COPY sends them, never all held at once.
    """
    fields = model._meta.concrete_fields
    columns = [str(f.column) for f in fields]
    values = attrgetter(*(f.attname for f in fields))
    json_columns = [
        (i, getattr(encoded, field.name, None) or {}, field.encoder)
        for i, field in enumerate(fields) if isinstance(field, JSONField)
    ]

    def rows() -> Iterator[list[Any]]:
        for node in nodes:
            row = list(values(node))
            key = id(node)
            for i, texts, encoder in json_columns:
                text = texts.get(key)
                row[i] = text if text is not None else _json_text(encoder, row[i])
            yield row

    return columns, rows()


def _json_text(encoder: type[json.JSONEncoder] | None, value: Any) -> str | None:
    if not value and type(value) in (list, dict):  # a default: [] or {}
        return "[]" if type(value) is list else "{}"
    # A nullable JSON column stores None as SQL NULL, as the ORM does.
    return None if value is None else json.dumps(value, cls=encoder)


def copy_rows(
    connection: BaseDatabaseWrapper, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
    as_text: bool = False,
) -> None:
    """``COPY table (columns) FROM STDIN``: psycopg 3's ``cursor.copy``, psycopg2's ``copy_expert``.

    Runs through the connection's execute wrappers and query log, like any
    ORM statement (``CaptureQueriesContext`` counts it), and its errors are
    Django's (a duplicate task id is an IntegrityError). ``as_text`` makes
    psycopg 3 take the text psycopg2 is given (tests compare both).
    """
    statement = sql.copy_sql(connection, table, columns)
    with connection.cursor() as cursor:
        raw = cursor.cursor
        if hasattr(raw, "copy"):  # psycopg 3

            def run() -> None:
                with raw.copy(statement) as copy:
                    if as_text:
                        for line in copy_lines(rows):
                            copy.write(line)
                    else:
                        for row in rows:
                            copy.write_row(row)

        else:  # psycopg2

            def run() -> None:
                raw.copy_expert(statement, _LinesReader(copy_lines(rows)))

        _execute(connection, cursor, statement, run)


def _execute(connection: BaseDatabaseWrapper, cursor: Any, sql: str, run: Callable[[], None]) -> None:
    """Run ``run`` as the statement ``sql``, the way Django's cursor runs one."""

    def executor(sql: str, params: Any, many: bool, context: dict[str, Any]) -> None:
        run()

    execute: Callable[..., None] = executor
    for wrapper in reversed(connection.execute_wrappers):
        execute = partial(wrapper, execute)
    start = time.monotonic()
    with connection.wrap_database_errors:
        execute(sql, None, False, {"connection": connection, "cursor": cursor})
    if connection.queries_logged:
        connection.queries_log.append({"sql": sql, "time": f"{time.monotonic() - start:.3f}"})


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def copy_lines(rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """Rows in COPY's text format (tab-separated, ``\\N`` for NULL, backslash escapes), a line each."""
    for row in rows:
        yield "\t".join(map(_copy_value, row)) + "\n"


class _LinesReader(io.TextIOBase):
    """A read-only file over ``copy_lines``, for psycopg2's ``copy_expert``: made as it is read."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self._pending = ""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        parts, length = [self._pending], len(self._pending)
        for line in self._lines:
            parts.append(line)
            length += len(line)
            if size is not None and 0 <= size <= length:
                break
        text = "".join(parts)
        if size is None or size < 0:
            self._pending = ""
            return text
        self._pending = text[size:]
        return text[:size]


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (int, uuid.UUID)):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"{value.days} days {value.seconds} seconds {value.microseconds} microseconds"
    raise TypeError(f"No COPY text for {type(value).__name__}: {value!r:.100}")
