"""kombu's file-system transport, with each message written atomically.

kombu's own ``Channel._put`` creates the message file under its final name and
then writes it; a consumer polling the folder can move and read it in between,
get an empty file and drop the message (its JSON does not parse). A lost tick
or node message would stall a workflow until the safety net repairs it. Writing
under a name the consumer ignores and renaming it into place (atomic on one
file system) closes that window.

For the server-less setup (development, demos, tests) only: with
``CELERY_BROKER_URL = "filesystem://"`` set
``CELERY_BROKER_TRANSPORT = "django_dyrygent.filesystem_broker:Transport"``
and ``CELERY_BROKER_TRANSPORT_OPTIONS = transport_options(folder)``.
Production brokers (Redis, RabbitMQ) need nothing of this.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # The stubs' two bases disagree (AbstractChannel: (queue, message); kombu's filesystem
    # Channel, which is what runs: (queue, payload, **kwargs)); this follows the latter.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # The consumer only takes names ending in "<queue>.msg".
        partial = final + ".part"
        try:
            with open(partial, "wb") as f:
                f.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


#: The value for ``CELERY_BROKER_TRANSPORT``.
TRANSPORT = "django_dyrygent.filesystem_broker:Transport"


def transport_options(folder: str | os.PathLike[str], polling_interval: float = 0.05) -> dict[str, Any]:
    """``CELERY_BROKER_TRANSPORT_OPTIONS`` for a file-system broker kept under ``folder``.

    Creates the folders (kombu does not) and keeps kombu's control files there
    too: its default is ``./control``, relative to wherever a process starts.
    Producers and workers must use the same folder.
    """
    folder = Path(folder)
    for name in ("queue", "processed", "control"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": polling_interval,
    }
