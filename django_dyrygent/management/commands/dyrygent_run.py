from __future__ import annotations

import json
import time
from typing import Any

from celery.app.task import Task
from celery.canvas import Signature
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string

from ... import launch
from ...catalogue import registry
from ...models import Workflow
from ...operations import failed_text
from ...states import Trigger, WorkflowState

#: Exit status when --wait gives up before the workflow ends (it keeps running).
EXIT_TIMEOUT = 2
#: Exit status when the workflow ends FAILURE, ERROR or CANCELED.
EXIT_FAILED = 1


def _parse_pairs(pairs: list[str] | None, flag: str, as_json: bool = True) -> dict[str, Any]:
    """KEY=VALUE pairs.

    Options (``as_json``): a VALUE that parses as JSON is used as such
    (priority=8 is an int). Parameters: VALUE stays a string, as a browser
    sends it, for the definition's form to parse; a key given twice becomes a
    list (for multiple-choice fields).
    """
    out: dict[str, Any] = {}
    value: Any  # the text after "=", then what it parses to (or a list of repeated values)
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"{flag} expects KEY=VALUE, got {pair!r}.")
        key = key.strip()
        if as_json:
            try:
                value = json.loads(value)
            except ValueError:
                pass
        elif key in out:
            value = (out[key] if isinstance(out[key], list) else [out[key]]) + [value]
        out[key] = value
    return out


class Command(BaseCommand):
    help = (
        "Start a workflow and print its id. NAME is a workflow definition of the catalogue "
        "(dyrygent_run --list shows them; --param KEY=VALUE gives its parameters). PATH names a signature, "
        "chain, group or chord, a Celery task (run with no arguments), or a callable taking no "
        "arguments that returns one of those or an unsaved Workflow. With --wait, follow it "
        "until it ends; exit status 0 on SUCCESS, 1 on FAILURE/ERROR/CANCELED, 2 if --timeout "
        "runs out first (the workflow keeps running)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "path", metavar="NAME|PATH", nargs="?", default=None,
            help="A catalogue definition's name, or a dotted path, e.g. myapp.workflows.build_nightly.",
        )
        parser.add_argument(
            "--list", dest="list", action="store_true", default=False,
            help="List the catalogue's workflow definitions and their parameters, then exit.",
        )
        parser.add_argument(
            "--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
            help="A parameter of the definition NAME, validated by its form; repeatable.",
        )
        parser.add_argument("--name", dest="name", default=None, help="Workflow name (default: PATH).")
        parser.add_argument(
            "--payload", dest="payload", default=None,
            help="Workflow custom_payload as a JSON object, e.g. '{\"user_id\": 7}'.",
        )
        parser.add_argument(
            "--option", dest="task_options", action="append", default=[], metavar="KEY=VALUE",
            help="apply_async option for every node's task (queue=fast, priority=8, ...); "
            "repeatable. VALUE is read as JSON when it parses, else as a string.",
        )
        parser.add_argument(
            "--tick-option", dest="tick_options", action="append", default=[], metavar="KEY=VALUE",
            help="apply_async option of the workflow's tick task (Workflow(options=...)); repeatable.",
        )
        parser.add_argument(
            "--pass-results", dest="pass_results", action="store_true", default=False,
            help="Give mutable signatures their parents' results, as native Celery canvas does.",
        )
        parser.add_argument(
            "--wait", dest="wait", action="store_true", default=False,
            help="Follow the workflow until it ends, with a progress bar on a terminal.",
        )
        parser.add_argument(
            "--timeout", dest="timeout", type=float, default=None,
            help="With --wait: give up after this many seconds (exit status 2). Default: no limit.",
        )
        parser.add_argument(
            "--poll-interval", dest="poll_interval", type=float, default=0.5,
            help="With --wait: seconds between two reads of the workflow row (default: %(default)s).",
        )

    def handle(
        self, *args: Any, path: str | None, name: str | None, payload: str | None, task_options: list[str],
        tick_options: list[str], pass_results: bool, wait: bool, timeout: float | None,
        poll_interval: float, **options: Any,
    ) -> None:
        if options["list"]:
            if path is not None:
                raise CommandError("--list takes no NAME or PATH.")
            self._list()
            return
        if path is None:
            raise CommandError("Give a definition NAME (see --list) or a dotted PATH.")
        if timeout is not None and not wait:
            raise CommandError("--timeout only applies with --wait.")
        if timeout is not None and timeout <= 0:
            raise CommandError(f"--timeout must be more than zero seconds, not {timeout}.")
        if poll_interval <= 0:
            raise CommandError(f"--poll-interval must be more than zero seconds, not {poll_interval}.")
        if path in registry:
            refused = [flag for flag, given in (("--payload", payload is not None), ("--option", task_options),
                                                ("--tick-option", tick_options), ("--pass-results", pass_results))
                       if given]
            if refused:
                raise CommandError(
                    f"{', '.join(refused)} cannot be used with the definition {path!r}: it sets them itself. "
                    "Give its parameters with --param KEY=VALUE."
                )
            wf = self._start_definition(path, _parse_pairs(options["params"], "--param", as_json=False), name)
        else:
            if options["params"]:
                raise CommandError(
                    f"--param applies to catalogue definitions; {path!r} is not one (see dyrygent_run --list)."
                )
            wf = self._start_path(path, name, payload, task_options, tick_options, pass_results)
        self.stdout.write(str(wf.pk))
        if wait:
            self._follow(wf, timeout, poll_interval)

    # -- the catalogue ---------------------------------------------------------------------

    def _list(self) -> None:
        if not len(registry):
            self.stdout.write("No workflow definitions (declare them in an app's workflows.py).")
            return
        for definition in registry:
            self.stdout.write(self.style.SUCCESS(definition.name) + f"  (overlap: {definition.overlap})")
            if definition.description:
                self.stdout.write(f"    {definition.title}")
            for field in definition.fields_schema():
                detail = [field["type"], "required" if field["required"] else "optional"]
                if "default" in field:
                    detail.append(f"default {field['default']!r}")
                if "choices" in field:
                    detail.append("one of " + ", ".join(map(str, field["choices"])))
                help_text = f": {field['help_text']}" if field["help_text"] else ""
                self.stdout.write(f"    --param {field['name']}=...  ({'; '.join(detail)}){help_text}")

    def _start_definition(self, name: str, params: dict[str, Any], workflow_name: str | None) -> Workflow:
        try:
            outcome = launch.start(name, params, trigger=Trigger.COMMAND, workflow_name=workflow_name)
        except launch.ParameterError as exc:
            lines = [f"  {'(form)' if field == '__all__' else field}: {' '.join(e['message'] for e in errors)}"
                     for field, errors in exc.errors.items()]
            raise CommandError(f"Invalid parameters for {name}:\n" + "\n".join(lines)) from None
        except launch.StartError as exc:
            raise CommandError(str(exc)) from None
        assert outcome.workflow is not None, "start() answers started or replayed, both with a workflow"
        return outcome.workflow

    # -- a dotted path -------------------------------------------------------------------------

    def _start_path(
        self, path: str, name: str | None, payload: str | None, task_options: list[str],
        tick_options: list[str], pass_results: bool,
    ) -> Workflow:
        custom_payload = self._payload(payload)
        task_opts = _parse_pairs(task_options, "--option")
        tick_opts = _parse_pairs(tick_options, "--tick-option")
        wf = self._build(path)
        if name is not None or not wf.name:
            wf.name = name if name is not None else path
        if custom_payload is not None:
            wf.custom_payload = custom_payload
        if tick_opts:
            wf.options = {**(wf.options or {}), **tick_opts}
        if pass_results:
            wf.pass_results = True
        try:
            wf.apply_async(options={**(wf.tasks_options or {}), **task_opts} or None)
        except ValidationError as exc:
            raise CommandError(f"The workflow from {path} is not valid: {'; '.join(exc.messages)}") from None
        return wf

    # -- building ----------------------------------------------------------------------

    def _payload(self, text: str | None) -> dict[str, Any] | None:
        if text is None:
            return None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise CommandError(f"--payload is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise CommandError(f"--payload must be a JSON object, not {type(value).__name__}.")
        return value

    def _build(self, path: str) -> Workflow:
        try:
            obj = import_string(path)
        except ImportError as exc:
            if "." not in path:
                raise CommandError(
                    f"Cannot import {path!r}: it is neither a workflow definition (see dyrygent_run --list) "
                    "nor a dotted path."
                ) from None
            raise CommandError(f"Cannot import {path!r}: {exc}") from None
        if isinstance(obj, Task):
            obj = obj.si()
        elif not isinstance(obj, (Signature, Workflow)) and callable(obj):
            try:
                obj = obj()
            except TypeError as exc:
                raise CommandError(f"{path} must be callable without arguments: {exc}") from None
        if isinstance(obj, Workflow):
            if not obj._state.adding:
                raise CommandError(f"{path} returned workflow {obj.pk}, which was already applied.")
            return obj
        if isinstance(obj, Signature):
            wf = Workflow()
            try:
                wf.add_celery_canvas(obj)
            except ValidationError as exc:
                reason = "; ".join(exc.messages)
                raise CommandError(f"Cannot import the canvas from {path}: {reason}") from None
            return wf
        raise CommandError(
            f"{path} is a {type(obj).__name__}, not a Celery signature or canvas, a task, an unsaved "
            "Workflow or a callable returning one."
        )

    # -- following ---------------------------------------------------------------------

    def _follow(self, wf: Workflow, timeout: float | None, interval: float) -> None:
        tty = self.stdout.isatty()
        began = time.monotonic()
        last = None
        row = wf
        while True:
            fresh = Workflow.objects.filter(pk=wf.pk).only(
                "state", "nodes_total", "nodes_done", "nodes_failed", "nodes_upstream_failed", "nodes_skipped",
                "error",
                "started_at", "finished_at",
            ).first()
            if fresh is None:
                raise CommandError(f"Workflow {wf.pk} disappeared while waiting (pruned or deleted?).")
            row = fresh
            elapsed = time.monotonic() - began
            snapshot = (row.state, row.nodes_done, row.nodes_failed)
            if tty:
                self.stdout.write("\r" + self._bar(row, elapsed), ending="")
                self.stdout.flush()
            elif snapshot != last:
                self.stdout.write(
                    f"{row.state}: {row.nodes_done}/{row.nodes_total} nodes done, "
                    f"{failed_text(row.nodes_failed, row.nodes_upstream_failed)}, {elapsed:.1f}s"
                )
            last = snapshot
            if row.state in (WorkflowState.SUCCESS, WorkflowState.FAILURE, WorkflowState.ERROR,
                             WorkflowState.CANCELED):
                break
            if timeout is not None and elapsed >= timeout:
                if tty:
                    self.stdout.write("")
                raise CommandError(
                    f"Workflow {wf.pk} is still {row.state} after {timeout:g}s "
                    f"({row.nodes_done}/{row.nodes_total} nodes done); it keeps running. "
                    f"Follow it with dyrygent_status {wf.pk} or stop it with dyrygent_cancel {wf.pk}.",
                    returncode=EXIT_TIMEOUT,
                )
            time.sleep(interval)
        if tty:
            self.stdout.write("")
        summary = (
            f"Workflow {wf.pk} ended {row.state} in {time.monotonic() - began:.1f}s: "
            f"{row.nodes_done}/{row.nodes_total} nodes done, "
            f"{failed_text(row.nodes_failed, row.nodes_upstream_failed)}, "
            f"{row.nodes_skipped} skipped."
        )
        if row.state == WorkflowState.SUCCESS:
            self.stdout.write(self.style.SUCCESS(summary))
            return
        # For FAILURE the engine recorded the first failure (node, exception line) there.
        detail = f" {row.error.rstrip('.')}." if row.error else ""
        raise CommandError(
            f"{summary}{detail} See dyrygent_status {wf.pk}.", returncode=EXIT_FAILED
        )

    @staticmethod
    def _bar(row: Workflow, elapsed: float, width: int = 30) -> str:
        total = row.nodes_total or 0
        fraction = 1.0 if not total else row.nodes_done / total
        filled = int(round(width * fraction))
        bar = "#" * filled + "-" * (width - filled)
        failed = f", {failed_text(row.nodes_failed, row.nodes_upstream_failed)}" if row.nodes_failed else ""
        return f"[{bar}] {row.nodes_done}/{total} done{failed}  {elapsed:6.1f}s  {row.state:<8}"
