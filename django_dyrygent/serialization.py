"""Values stored in JSON columns exactly as Celery's JSON serializer would carry them.

Task arguments and results are stored as the JSON tree kombu's serializer
produces (datetimes, dates, UUIDs and Decimals become tagged objects) and are
turned back into Python values when a task is published: a workflow then
passes a task the same values a native Celery call would.
"""

from __future__ import annotations

import json
from typing import Any, overload

from kombu.utils import json as kombu_json


class NotSerialisable(ValueError):
    """The value cannot travel in a Celery JSON message."""


def to_tree(value: Any) -> Any:
    """The JSON tree of ``value``; raises NotSerialisable naming the problem."""
    try:
        return json.loads(kombu_json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise NotSerialisable(str(exc)) from None


def from_tree(tree: Any) -> Any:
    """Python values back from a tree made by ``to_tree``."""
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if not tree and isinstance(tree, (dict, list)):
        # Most options and arguments: what the round trip would give, without it.
        return {} if isinstance(tree, dict) else []
    return kombu_json.loads(json.dumps(tree))


def size_of(tree: Any) -> int:
    """Bytes of ``tree`` as compact JSON: what a result cap compares."""
    return len(json.dumps(tree, separators=(",", ":")).encode())


# -- values a database column cannot hold ---------------------------------------------------

# NUL and lone surrogates: PostgreSQL refuses both in text and jsonb, and a lone
# surrogate cannot even be encoded to UTF-8 for SQLite or MySQL. The engine checks
# for them on every database, so a workflow behaves the same wherever it runs.
_UNSTORABLE = {"\x00": "a NUL character (\\x00)"}


def _problem_in(text: str) -> str | None:
    if "\x00" in text:
        return _UNSTORABLE["\x00"]
    for char in text:
        if "\ud800" <= char <= "\udfff":
            return f"a lone surrogate (\\u{ord(char):04x})"
    return None


def unstorable(tree: Any, path: str = "result") -> str | None:
    """Where ``tree`` holds a string no database column can store, and what; None if nowhere.

    Returns e.g. ``"result['name'][2] contains a NUL character (\\x00)"``.
    Keys are checked as well as values.
    """
    stack: list[tuple[Any, str]] = [(tree, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            problem = _problem_in(value)
            if problem:
                return f"{where} contains {problem}"
        elif isinstance(value, dict):
            for key, item in value.items():
                problem = _problem_in(key) if isinstance(key, str) else None
                if problem:
                    return f"a key of {where} contains {problem}"
                stack.append((item, f"{where}[{key!r}]"))
        elif isinstance(value, (list, tuple)):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
    return None


@overload
def storable_text(text: str) -> str: ...
@overload
def storable_text(text: None) -> None: ...
def storable_text(text: str | None) -> str | None:
    """``text`` with NUL and lone surrogates written as visible escapes (``\\x00``, ``\\ud800``).

    For text meant for people (errors, tracebacks, reasons): stored escaped
    rather than refused, so a poison character never costs the message.
    """
    if not text:
        return text
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def error_line(head: str | None, tail: str | None = "") -> str:
    """The line that says what went wrong: a traceback's last line (the exception), else the first."""
    lines = [line.strip() for line in (head or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if not lines[0].startswith("Traceback (most recent call last)"):
        return lines[0]
    tail_lines = [line.strip() for line in (tail or head or "").strip().splitlines() if line.strip()]
    return tail_lines[-1] if tail_lines else lines[0]
