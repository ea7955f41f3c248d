from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import engine
from ...conf import settings
from ...engine import db
from ...worker.recovery import Sweeper
from ._common import add_workflow_id_argument, get_workflow

logger = logging.getLogger("django_dyrygent.commands")


class Command(BaseCommand):
    help = (
        "Tick one workflow now, or (without an id) sweep: tick every running workflow whose "
        "scheduled tick is overdue, i.e. whose tick message was lost. Run the sweep from cron, "
        "or with --loop as a small long-running process, if you do not schedule the "
        "django_dyrygent.sweep task with Celery beat."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_workflow_id_argument(parser, required=False)
        parser.add_argument(
            "--stale-after", dest="stale_after", type=float, default=None,
            help="Sweep workflows whose tick is this many seconds overdue "
            "(default: DYRYGENT_STALE_AFTER, now %s)." % settings.STALE_AFTER,
        )
        parser.add_argument(
            "--batch-size", dest="batch_size", type=int, default=100,
            help="Most workflows one sweep ticks (default: %(default)s).",
        )
        parser.add_argument(
            "--loop", dest="loop", action="store_true", default=False,
            help="Sweep again every --interval seconds until SIGTERM or SIGINT (Ctrl-C).",
        )
        parser.add_argument(
            "--interval", dest="interval", type=float, default=None,
            help="Seconds between two sweeps with --loop (default: DYRYGENT_TICK_INTERVAL).",
        )
        # For tests and one-off runs: stop after this many sweeps.
        parser.add_argument(
            "--max-iterations", dest="max_iterations", type=int, default=None, help=argparse.SUPPRESS,
        )

    def handle(
        self, *args: Any, workflow_id: str | None, stale_after: float | None, batch_size: int,
        loop: bool, interval: float | None, max_iterations: int | None, **options: Any,
    ) -> None:
        if batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1, not {batch_size}.")
        if stale_after is not None and stale_after < 0:
            raise CommandError(f"--stale-after must be zero or more seconds, not {stale_after}.")
        if interval is not None and interval <= 0:
            raise CommandError(f"--interval must be more than zero seconds, not {interval}.")
        if workflow_id is not None:
            if loop:
                raise CommandError(
                    "--loop sweeps all stale workflows; it cannot be combined with a workflow id."
                )
            wf = get_workflow(workflow_id)
            outcome = engine.tick(wf.pk, scheduled=False)
            if outcome == "busy":
                self.stdout.write(f"Workflow {wf.pk} is being advanced by another worker; tick skipped.")
            else:
                self.stdout.write(f"Ticked workflow {wf.pk}: it is {outcome}.")
            return
        sweeper = Sweeper()
        if not loop:
            count, recovered = sweeper.sweep_once(stale_after=stale_after, batch_size=batch_size)
            self.stdout.write(f"Swept {count} stale workflow(s).")
            if recovered:
                self.stdout.write(f"Recovered {recovered} node(s) of lost workers.")
            return
        self._loop(sweeper, stale_after, batch_size, interval or float(settings.TICK_INTERVAL), max_iterations)

    def _loop(
        self, sweeper: Sweeper, stale_after: float | None, batch_size: int, interval: float,
        max_iterations: int | None,
    ) -> None:
        stop = threading.Event()
        received: list[str] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            received.append(signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.stdout.write(f"Sweeping every {interval:g}s; stop with SIGTERM or Ctrl-C.")
        iterations = total = 0
        try:
            while not stop.is_set():
                try:
                    count, _recovered = db.run(
                        sweeper.sweep_once, stale_after=stale_after, batch_size=batch_size, what="a sweep"
                    )
                except Exception:
                    # A database hiccup must not end the sweeper; the next round retries.
                    logger.exception("Sweep failed; retrying in %ss", interval)
                    count = 0
                total += count
                iterations += 1
                if count:
                    self.stdout.write(f"Swept {count} stale workflow(s).")
                if max_iterations is not None and iterations >= max_iterations:
                    break
                # A full batch means more may be waiting: go again at once.
                if count < batch_size:
                    stop.wait(interval)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            db.drop_broken_connections()
        why = f"on {received[0]}" if received else f"after {iterations} sweep(s)"
        self.stdout.write(f"Stopped {why}: {iterations} sweep(s), {total} workflow(s) ticked.")
