"""Process heartbeats: every gateway process that holds reservations says it is alive every
few seconds (``HEARTBEAT_INTERVAL``), through its admission backend (a Redis key with a
``HEARTBEAT_TTL``, or a database row). A hold records the process that made it, so
reconciliation can tell a hold whose process died (charge what its stream relayed, release
the rest, well within a minute) from one still being answered."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_TTL = 15  # seconds without a heartbeat after which a process is taken for dead

_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None, "id": "", "thread": None}


def process_id() -> str:
    """This process's id (host, pid and a random part: a restarted pid is a new process)."""
    pid = os.getpid()
    if _state["pid"] != pid:
        with _lock:
            if _state["pid"] != pid:
                _state.update(
                    pid=pid,
                    id=f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}",
                    thread=None,
                )
    return str(_state["id"])


def current() -> str:
    """The id a hold records: this process's, or "" with heartbeats off (such holds are only
    closed by their deadline)."""
    return process_id() if settings.BILLING_HEARTBEATS else ""


def start(backend: Any) -> None:
    """Start this process's heartbeat thread for ``backend`` (once; cheap to call again)."""
    process_id()
    if _state["thread"] is not None or not settings.BILLING_HEARTBEATS:
        return
    with _lock:
        if _state["thread"] is not None:
            return
        thread = threading.Thread(
            target=_beat, args=(backend,), name="admission-heartbeat", daemon=True
        )
        _state["thread"] = thread
        thread.start()


def _beat(backend: Any) -> None:
    stop = threading.Event()
    while not stop.is_set():
        try:
            backend.heartbeat_sync(process_id())
        except Exception as exc:  # the store is down: the next beat tries again
            logger.warning(
                "admission heartbeat failed", extra={"fields": {"error": type(exc).__name__}}
            )
        stop.wait(HEARTBEAT_INTERVAL)
