"""Connection pools that follow a task's SVID: a new SVID gets a new pool
(built from a fresh TLS context); the pool before it is kept for requests
still in flight and closed one rotation later."""

from __future__ import annotations

import ssl
import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from spiffe import X509Svid


class Task(Protocol):
    """What the clients need of a task: its current SVID, and a TLS
    context built from it."""

    def svid(self) -> X509Svid: ...

    def ssl_context(self, server_side: bool = False) -> ssl.SSLContext: ...


class _Pools:
    def __init__(self, task: Task, make: Any) -> None:
        self._task = task
        self._make = make
        self._lock = threading.Lock()
        self._serial: int | None = None
        self._current: Any = None
        self._retired: list[Any] = []

    def current(self) -> tuple[Any, list[Any]]:
        """The pool for the current SVID, and pools now due to close."""
        serial = self._task.svid().leaf.serial_number
        with self._lock:
            due: list[Any] = []
            if serial != self._serial or self._current is None:
                ctx = self._task.ssl_context()
                if self._current is not None:
                    self._retired.append(self._current)
                self._current, self._serial = self._make(ctx), serial
                due, self._retired = self._retired[:-1], self._retired[-1:]
            return self._current, due

    def all(self) -> list[Any]:
        with self._lock:
            pools = self._retired + ([self._current] if self._current is not None else [])
            self._retired, self._current = [], None
            return pools
