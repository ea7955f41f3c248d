"""Values stored in JSON columns exactly as Celery's JSON serializer would carry them.

Task arguments and results are stored as the JSON tree kombu's serializer
produces (datetimes, dates, UUIDs and Decimals become tagged objects) and are
turned back into Python values when a task is published: a workflow then
passes a task the same values a native Celery call would.
"""

from __future__ import annotations

import json
from typing import Any

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
    return kombu_json.loads(json.dumps(tree))


def size_of(tree: Any) -> int:
    """Bytes of ``tree`` as compact JSON: what a result cap compares."""
    return len(json.dumps(tree, separators=(",", ":")).encode())
