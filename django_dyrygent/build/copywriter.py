"""Write a draft's nodes and edges on PostgreSQL: ids from the nodes' sequence, rows through COPY.

Apart from ``builder`` because it is one concern (the fast writer of one
backend) and the rest of saving does not depend on how rows reach the table:
the other backends take ``builder``'s ``bulk_create`` path. Statements do not
grow with the graph: ``nextval`` once, then one ``COPY … FROM STDIN`` per
table, values handed over as they are (the JSON columns as the text
validation already encoded).
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

from django.apps import apps
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.fields.json import JSONField

if TYPE_CHECKING:
    from .save import Encoded
    from ..draft import Draft

#: A ``models.WorkflowNode`` / ``models.Workflow``: this module must not import models (see draft.py).
Node = Any
WorkflowModel = Any


def _model(name: str) -> Any:
    # models imports draft, which imports builder, which imports this module: look them up at call time.
    return apps.get_model("django_dyrygent", name)


def copy_graph(connection: BaseDatabaseWrapper, workflow: WorkflowModel, draft: Draft, encoded: Encoded) -> None:
    """Nodes and edges in three statements, whatever their number.

    The ids come from the nodes' own sequence (``nextval``: other builders
    running at the same time get other ids), so the edges can name their
    nodes without reading anything back.
    """
    WorkflowNode, WorkflowEdge = _model("WorkflowNode"), _model("WorkflowEdge")
    nodes = draft.nodes
    if not nodes:
        return
    node_table = WorkflowNode._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
            [connection.ops.quote_name(node_table), WorkflowNode._meta.pk.column, len(nodes)],
        )
        ids = sorted(row[0] for row in cursor.fetchall())
    for node, pk in zip(nodes, ids, strict=True):
        node.pk = pk
    columns, rows = node_rows(nodes, encoded)
    copy_rows(connection, node_table, columns, rows)
    workflow_id = workflow.pk
    pk = attrgetter(WorkflowNode._meta.pk.attname)
    edge_rows = (
        (workflow_id, pk(node), pk(dep), i)
        for node in nodes
        for i, dep in enumerate(draft.dependencies_of(node))
    )
    edge_fields = ("workflow", "node", "dependency", "position")
    edge_columns = [WorkflowEdge._meta.get_field(name).column for name in edge_fields]
    copy_rows(connection, WorkflowEdge._meta.db_table, edge_columns, edge_rows)


def node_rows(nodes: Sequence[Node], encoded: Encoded | None = None) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    """The columns of ``WorkflowNode`` and one tuple of values per node, JSON columns as JSON text.

    Values are the instances' own (no per-field preparation): the model's
    columns hold nothing a field converts on the way in but JSON. The rows
    are made as COPY sends them, never all held at once.
    """
    fields = _model("WorkflowNode")._meta.concrete_fields
    columns = [f.column for f in fields]
    values = attrgetter(*(f.attname for f in fields))
    encoders: list[tuple[int, Callable[[Node, Any], Any]]] = []
    for i, field in enumerate(fields):
        if isinstance(field, JSONField):
            texts = getattr(encoded, field.name, None) or {}
            encoders.append((i, partial(_json_text, texts, field.encoder)))

    def rows() -> Iterator[tuple[Any, ...]]:
        for node in nodes:
            row = list(values(node))
            for i, encode in encoders:
                row[i] = encode(node, row[i])
            yield tuple(row)

    return columns, rows()


def _json_text(texts: dict[int, str], encoder: type[json.JSONEncoder] | None, node: Node, value: Any) -> str | None:
    text = texts.get(id(node))
    if text is not None:
        return text
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
    quote = connection.ops.quote_name
    sql = f"COPY {quote(table)} ({', '.join(quote(c) for c in columns)}) FROM STDIN"
    with connection.cursor() as cursor:
        raw = cursor.cursor
        if hasattr(raw, "copy"):  # psycopg 3

            def run() -> None:
                with raw.copy(sql) as copy:
                    if as_text:
                        for line in copy_lines(rows):
                            copy.write(line)
                    else:
                        for row in rows:
                            copy.write_row(row)

        else:  # psycopg2

            def run() -> None:
                raw.copy_expert(sql, _LinesReader(copy_lines(rows)))

        _execute(connection, cursor, sql, run)


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
