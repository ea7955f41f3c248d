"""The OpenAPI 3.1 document of the JSON API (``api.py``), served at ``openapi.json`` beside it.

Written by hand next to the views it describes, and held to them by a test
that validates every answer the test suite gets from the API against the
schema this document gives for that path, method and status.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .catalogue import FIELD_TYPES
from .states import NodeKind, NodeState, Overlap, Trigger, TriggerRule, WorkflowState

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


def _object(properties: dict[str, Schema], optional: tuple[str, ...] = ()) -> Schema:
    return {
        "type": "object", "properties": properties, "additionalProperties": False,
        "required": [name for name in properties if name not in optional],
    }


def _with(base: Schema, **properties: Schema) -> Schema:
    """``base`` and more properties, all required (a closed object cannot be extended with allOf)."""
    return _object({**base["properties"], **properties})


COUNT = {"type": "integer", "minimum": 0}
TIME = _nullable("string", format="date-time")

WORKFLOW = _object({
    "id": {"type": "string", "format": "uuid"},
    "name": {"type": "string"},
    "state": {"type": "string", "enum": list(WorkflowState.values)},
    "definition": {"type": "string", "description": "The catalogue definition that built it; blank for code."},
    "parameters": {"type": "object", "description": "The definition's validated parameters."},
    "trigger": {"type": "string", "enum": ["", *Trigger.values]},
    "started_by": {"type": "string"},
    "nodes_total": COUNT,
    "nodes_done": COUNT,
    "nodes_succeeded": COUNT,
    "nodes_failed": {**COUNT, "description": "FAILURE, UPSTREAM_FAILED and CANCELED task nodes."},
    "nodes_upstream_failed": {**COUNT, "description": "The part of nodes_failed that never ran."},
    "created_at": TIME,
    "started_at": TIME,
    "finished_at": TIME,
    "paused_at": _nullable("string", format="date-time", description="When it was paused (PAUSED only)."),
    "deadline": _nullable("string", format="date-time", description="When the engine gives up (ERROR)."),
    "waiting_for": {"type": "array", "items": {"type": "string"},
                    "description": "Names of the waits a signal would complete now."},
    "error": {"type": "string", "description": "Why it did not succeed: for FAILURE, its first failure."},
    "parent_workflow": _nullable("string", format="uuid",
                                 description="The workflow whose sub-workflow node runs this one."),
    "parent_node": _nullable("string", description="That node's task id."),
    "subworkflows": {"type": "array", "description": "The workflows this one's sub-workflow nodes started.",
                     "items": _object({"id": {"type": "string", "format": "uuid"},
                                       "state": {"type": "string", "enum": list(WorkflowState.values)},
                                       "node": {"type": "string", "description": "The node's task id."}})},
    "admin_url": _nullable("string"),
})

NODE = _object({
    "id": {"type": "integer"},
    "task_id": {"type": "string"},
    "task_name": {"type": "string"},
    "kind": {"type": "string", "enum": list(NodeKind.values)},
    "state": {"type": "string", "enum": list(NodeState.values)},
    "trigger_rule": {"type": "string", "enum": list(TriggerRule.values)},
    "dependencies": {"type": "array", "items": {"type": "integer"}, "description": "Ids of the nodes it waits for."},
    "result": {"description": "The task's result as stored (JSON; datetimes tagged as in Celery messages)."},
    "error": {"type": "string", "description": "Exception and traceback of a failed node."},
    "reason": {"type": "string", "description": "Why it is in its state; for a node waiting for a slot of its "
                                                "concurrency key, 'waiting for concurrency key K: n of N running'."},
    "concurrency_key": _nullable("string"),
    "concurrency_limit": _nullable("integer", minimum=1),
    "attempts": {"type": "integer", "minimum": 1},
    "queued_at": TIME,
    "started_at": TIME,
    "finished_at": TIME,
    "duration_seconds": _nullable("number"),
    "subworkflow": _nullable("string", format="uuid",
                             description="For a sub-workflow node: the id of the workflow it runs (or will run)."),
})

PARAMETER = _object({
    "name": {"type": "string"},
    "type": {"type": "string", "description": f"One of {', '.join(sorted(set(FIELD_TYPES.values())))}, or another "
                                              "form field's name."},
    "required": {"type": "boolean"},
    "label": {"type": "string"},
    "help_text": {"type": "string"},
    "default": {"description": "What a start without it (or with it blank) gets."},
    "choices": {"type": "array"},
}, optional=("default", "choices"))

DEFINITION = _object({
    "name": {"type": "string"},
    "title": {"type": "string"},
    "description": {"type": "string"},
    "overlap": {"type": "string", "enum": list(Overlap.values)},
    "parameters": {"type": "array", "items": _ref("Parameter")},
})


def _page(item: str, **extra: Schema) -> Schema:
    return _object({
        **extra,
        "count": {**COUNT, "description": "How many match the filters, over every page."},
        "limit": {"type": "integer", "minimum": 1},
        "offset": COUNT,
        "next": _nullable("string", description="The next page's URL; null on the last page."),
        "previous": _nullable("string"),
        "results": {"type": "array", "items": _ref(item)},
    })


SCHEMAS: dict[str, Schema] = {
    "Error": _object({
        "error": {"type": "string", "description": "What is wrong, and what to do."},
        "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                   "description": "A form's errors by field (__all__: the whole form)."},
    }, optional=("errors",)),
    "Parameter": PARAMETER,
    "Definition": DEFINITION,
    "DefinitionList": _object({"definitions": {"type": "array", "items": _ref("Definition")}}),
    "StartRequest": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "params": {"type": "object", "description": "The definition's parameters; blank or null: the default."},
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 255},
        },
    },
    "Workflow": WORKFLOW,
    "StartedWorkflow": _with(WORKFLOW, replayed={
        "type": "boolean", "description": "True when the idempotency key was seen: the first request's workflow."}),
    "RetriedWorkflow": _with(WORKFLOW, nodes_reset={**COUNT, "description": "Task nodes put back to run."}),
    "SignalledWorkflow": _with(WORKFLOW, completed={
        **COUNT, "description": "Waiting nodes the signal completed; 0 when none waits for it."}),
    "SignalRequest": {
        "type": "object", "additionalProperties": False,
        "properties": {"payload": {"description": "The waiting node's result: what a pass-results follower gets."}},
    },
    "WorkflowPage": _page("Workflow"),
    "Node": NODE,
    "NodePage": _page("Node", workflow={"type": "string", "format": "uuid"}),
    "RetriedNode": _with(NODE, nodes_reset={**COUNT, "description": "Task nodes put back to run, it included."}),
    "MarkedNode": _with(NODE, nodes_released={
        **COUNT, "description": "UPSTREAM_FAILED nodes after it put back to PENDING."}),
    "MarkRequest": _object({
        "state": {"type": "string", "enum": ["SUCCESS", "SKIPPED"]},
        "result": {"description": "The node's result (SUCCESS only): what a pass-results follower receives."},
    }, optional=("result",)),
}


def _json(schema: str, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


ERRORS = {
    "400": "Bad input: the message (and a form's errors) say which; on any operation, a Content-Length that is no "
           "size or a body that cannot be read.",
    "401": "Not authenticated: the message says how (the WWW-Authenticate header names Bearer).",
    "403": "A permission is missing (named), or the CSRF check of a session failed.",
    "404": "Unknown definition, workflow or path.",
    "409": "Conflict: a reused idempotency key, or nothing to cancel, retry, pause or resume.",
    "413": "The body (on any operation, by its Content-Length) is over DYRYGENT_API_MAX_BODY_BYTES.",
}


def _errors(*statuses: str) -> dict[str, Schema]:
    """``statuses`` and 400 and 413, which the checks every view shares answer before the view runs.

    (A Content-Length that is no size or over the cap, a session's body the CSRF check cannot read:
    undocumented until the fuzzing in tests/unit/test_api_fuzz.py held every answer to this document.)
    """
    return {status: _json("Error", ERRORS[status]) for status in sorted({*statuses, "400", "413"})}


def _query(name: str, description: str, schema: Schema) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _path(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


PAGING = [
    _query("limit", "Page size.", {"type": "integer", "minimum": 1}),
    _query("offset", "How many to leave out before the page.", {"type": "integer", "minimum": 0}),
]
NAME = _path("name", "A catalogue definition's name.")
WORKFLOW_ID = _path("workflow_id", "The workflow's id (a UUID).")
NODE_ID = _path("node_id", "The node's id (an integer, the id in the nodes list).")

PATHS: dict[str, Schema] = {
    "/definitions/": {"get": {
        "operationId": "listDefinitions", "summary": "The definitions this user may start.",
        "responses": {"200": _json("DefinitionList", "The definitions."), **_errors("401", "403")},
    }},
    "/definitions/{name}/": {"get": {
        "operationId": "readDefinition", "summary": "One definition and its parameters.", "parameters": [NAME],
        "responses": {"200": _json("Definition", "The definition."), **_errors("401", "403", "404")},
    }},
    "/definitions/{name}/start/": {"post": {
        "operationId": "startDefinition", "summary": "Start a definition with validated parameters.",
        "parameters": [NAME, {"name": "Idempotency-Key", "in": "header", "required": False,
                              "schema": {"type": "string"}, "description": "Same as idempotency_key."}],
        "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("StartRequest")}}},
        "responses": {
            "201": _json("StartedWorkflow", "Started."),
            "200": _json("StartedWorkflow", "The idempotency key's first workflow (replayed)."),
            **_errors("400", "401", "403", "404", "409", "413"),
        },
    }},
    "/workflows/": {"get": {
        "operationId": "listWorkflows", "summary": "Workflows, newest first, filtered and paged.",
        "parameters": [
            _query("definition", "The catalogue definition that built it.", {"type": "string"}),
            _query("state", "One state, or several separated by commas.", {"type": "string"}),
            _query("started_by", "The user name that started it.", {"type": "string"}),
            _query("trigger", "Which door started it.", {"type": "string", "enum": list(Trigger.values)}),
            _query("created_after", "ISO 8601 date or date-time (inclusive).", {"type": "string"}),
            _query("created_before", "ISO 8601 date or date-time (exclusive).", {"type": "string"}),
            *PAGING,
        ],
        "responses": {"200": _json("WorkflowPage", "One page."), **_errors("400", "401", "403")},
    }},
    "/workflows/{workflow_id}/": {"get": {
        "operationId": "readWorkflow", "summary": "One workflow: state, counters, timings, why it failed.",
        "parameters": [WORKFLOW_ID],
        "responses": {"200": _json("Workflow", "The workflow."), **_errors("401", "403", "404")},
    }},
    "/workflows/{workflow_id}/nodes/": {"get": {
        "operationId": "listNodes", "summary": "A workflow's nodes, their states and results, in order.",
        "parameters": [
            WORKFLOW_ID,
            _query("state", "One state, or several separated by commas.", {"type": "string"}),
            _query("kind", "Node kind.", {"type": "string", "enum": list(NodeKind.values)}),
            *PAGING,
        ],
        "responses": {"200": _json("NodePage", "One page."), **_errors("400", "401", "403", "404")},
    }},
    "/workflows/{workflow_id}/cancel/": {"post": {
        "operationId": "cancelWorkflow", "summary": "Cancel a workflow that has not ended.",
        "parameters": [WORKFLOW_ID],
        "responses": {"200": _json("Workflow", "Canceled."), **_errors("401", "403", "404", "409")},
    }},
    "/workflows/{workflow_id}/retry/": {"post": {
        "operationId": "retryWorkflow", "summary": "Re-run the failed, upstream-failed and canceled nodes.",
        "parameters": [WORKFLOW_ID],
        "responses": {"200": _json("RetriedWorkflow", "Running again."), **_errors("401", "403", "404", "409")},
    }},
    "/workflows/{workflow_id}/pause/": {"post": {
        "operationId": "pauseWorkflow", "summary": "Pause a running workflow: nothing new is published.",
        "parameters": [WORKFLOW_ID],
        "responses": {"200": _json("Workflow", "Paused."), **_errors("401", "403", "404", "409")},
    }},
    "/workflows/{workflow_id}/resume/": {"post": {
        "operationId": "resumeWorkflow", "summary": "Resume a paused workflow: what became ready runs.",
        "parameters": [WORKFLOW_ID],
        "responses": {"200": _json("Workflow", "Running again (or ended)."), **_errors("401", "403", "404", "409")},
    }},
    "/workflows/{workflow_id}/signal/{name}/": {"post": {
        "operationId": "signalWorkflow", "summary": "Complete the workflow's waiting nodes of that name.",
        "parameters": [WORKFLOW_ID, _path("name", "The wait's name (wf.add_wait(name)).")],
        "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("SignalRequest")}}},
        "responses": {"200": _json("SignalledWorkflow", "The workflow, and how many waits the signal completed."),
                      **_errors("400", "401", "403", "404", "413")},
    }},
    "/workflows/{workflow_id}/nodes/{node_id}/retry/": {"post": {
        "operationId": "retryNode", "summary": "Run a failed node again, and what did not succeed after it.",
        "parameters": [WORKFLOW_ID, NODE_ID],
        "responses": {"200": _json("RetriedNode", "The node, back to run."), **_errors("401", "403", "404", "409")},
    }},
    "/workflows/{workflow_id}/nodes/{node_id}/mark/": {"post": {
        "operationId": "markNode", "summary": "End a node SUCCESS (with a result) or SKIPPED without running it.",
        "parameters": [WORKFLOW_ID, NODE_ID],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("MarkRequest")}}},
        "responses": {"200": _json("MarkedNode", "The node, marked."),
                      **_errors("400", "401", "403", "404", "409", "413")},
    }},
    "/workflows/{workflow_id}/nodes/{node_id}/cancel/": {"post": {
        "operationId": "cancelNode", "summary": "Cancel a node that has not ended (its task is revoked).",
        "parameters": [WORKFLOW_ID, NODE_ID],
        "responses": {"200": _json("Node", "The node, canceled."), **_errors("401", "403", "404", "409")},
    }},
    "/openapi.json": {"get": {
        "operationId": "openapi", "summary": "This document.", "security": [],
        "responses": {"200": {"description": "The OpenAPI document.",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    }},
}


def document(base_url: str) -> Schema:
    """The whole document; ``base_url`` is where the API is mounted (its server URL)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "django_dyrygent API",
            "version": __version__,
            "description": "Start catalogue definitions and follow, cancel or retry workflows. Authenticate with "
                           "'Authorization: Bearer <token>' (API tokens are made in the admin) or a browser "
                           "session (unsafe methods then need the X-CSRFToken header).",
        },
        "servers": [{"url": base_url}],
        "security": [{"bearerAuth": []}, {"sessionAuth": []}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "A key from API tokens (admin)."},
                "sessionAuth": {"type": "apiKey", "in": "cookie", "name": "sessionid",
                                "description": "Django's session cookie; send X-CSRFToken on POST."},
            },
        },
    }
