"""Unsaved model instances made without ``Model.__init__``'s per-field work (``WorkflowNode.for_draft``).

A draft makes one node per signature, thousands for a large canvas, and
``Model.__init__`` repeats per-field work (signals, descriptors, defaults) for
each of them. Apart from ``models`` because it is about Django's model
machinery, not about workflows: it reads a model's fields once and fills an
instance the way the constructor would.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import models
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init

M = TypeVar("M", bound=models.Model)


class _PlainFields:
    """A model's fields as ``instance`` fills them: names, fixed defaults, callable defaults."""

    def __init__(self, model: type[models.Model], parent: str) -> None:
        self.names: set[str] = set()
        #: attname -> fixed default (None where the default is callable), in the constructor's order
        self.defaults: dict[str, Any] = {}
        #: (attname, callable default): called per instance, so none shares a mutable default
        self.factories: list[tuple[str, Callable[[], Any]]] = []
        self.parent_attname = ""
        for field in model._meta.concrete_fields:
            if field.name == parent:
                self.parent_attname = field.attname
            else:
                self.names.add(field.attname)
            if field.has_default() and callable(field.default):
                self.defaults[field.attname] = None
                self.factories.append((field.attname, field.default))
            else:
                self.defaults[field.attname] = field.get_default()


@functools.cache
def _plain_fields(model: type[models.Model], parent: str) -> _PlainFields:
    return _PlainFields(model, parent)


def instance(model: type[M], parent: str, parent_obj: models.Model, fields: dict[str, Any]) -> M | None:
    """``model(**{parent: parent_obj}, **fields)`` without the constructor; None when it must run.

    The instance is the same: every field's default (callable ones called per
    instance), the given values, the parent (a foreign key) cached. When
    something listens to ``pre_init`` / ``post_init`` for the model, or a name
    is not a plain field, None: the caller runs the constructor, so receivers
    see every instance.
    """
    plain = _plain_fields(model, parent)
    if (
        not fields.keys() <= plain.names
        # ``receivers`` first: empty in most projects, and has_listeners costs a lookup per call.
        or (pre_init.receivers and pre_init.has_listeners(model))
        or (post_init.receivers and post_init.has_listeners(model))
    ):
        return None
    obj = model.__new__(model)
    state = ModelState()
    state.fields_cache = {parent: parent_obj}
    # Every attribute set first in the constructor's order (the defaults), then overwritten:
    # instances then share their attribute names (a dict in another order takes three
    # times the memory), and the copying is dict.update's, not a Python loop's.
    values = vars(obj)
    values["_state"] = state
    values.update(plain.defaults)
    for attname, make in plain.factories:
        values[attname] = make()
    values.update(fields)
    values[plain.parent_attname] = parent_obj.pk
    return obj
