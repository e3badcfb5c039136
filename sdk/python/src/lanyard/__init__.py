"""Lanyard for Python: short-lived, task-bound SPIFFE identities for AI
agents, from the node agent on this machine.

    import lanyard

    with lanyard.task(type="report.generate", tools=["crm.read"],
                      intent="weekly report", ttl="10m") as task:
        http = task.httpx_client()
        token = task.jwt_svid(audience="crm")

The node agent's socket comes from ``SPIFFE_ENDPOINT_SOCKET`` (or
``socket=``), as for every SPIFFE library.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from . import claims, tls
from ._caller import Caller, caller, current as current_caller
from .guard import CallPending, Decision, Guard, ToolDenied
from ._errors import (AgentUnavailable, ApprovalPending, InvalidRequest, LanyardError, NotFound,
                      TaskDenied)
from ._gen import task_pb2
from ._duration import seconds
from ._task import Credential, Delegation, Task
from .claims import TaskClaims

__version__ = "0.1.0"

__all__ = [
    "AgentUnavailable",
    "ApprovalPending",
    "CallPending",
    "Caller",
    "Credential",
    "Decision",
    "Delegation",
    "Guard",
    "InvalidRequest",
    "LanyardError",
    "NotFound",
    "Task",
    "TaskClaims",
    "TaskDenied",
    "ToolDenied",
    "atask",
    "caller",
    "claims",
    "current_caller",
    "task",
    "tls",
]

Duration = int | str | datetime.timedelta


def task(
    type: str,
    tools: Sequence[str] = (),
    *,
    intent: str = "",
    on_behalf_of: str = "",
    ttl: Duration | None = None,
    sensitivity: str = "",
    destinations: Sequence[str] = (),
    spiffe_id: str = "",
    jwt_audiences: Sequence[str] = (),
    allow_partial: bool = False,
    delegation: Delegation | None = None,
    socket: str | None = None,
) -> Task:
    """Begins a task on the node agent and returns it; use it as a context
    manager so that it ends with the block (also on an exception; any task
    still held ends at process exit).

    ``type`` is the task type (``"report.generate"``), ``tools`` the tools
    it needs, ``ttl`` its lifetime (seconds, ``"10m"`` or a ``timedelta``;
    at most the entry's maximum; default 5 minutes, or what a delegation
    allows), ``sensitivity`` the data sensitivity
    level (empty: the lowest), ``destinations`` the hosts or services it
    will reach, ``on_behalf_of`` whom it acts for. ``delegation`` begins a
    sub-task from another task's :meth:`Task.delegate`.

    Raises :class:`TaskDenied` (with the policy IDs) when policy or the
    entry's ceilings refuse it."""
    t = Task(socket)
    try:
        t._begin(task_pb2.BeginTaskRequest(
            spiffe_id=spiffe_id,
            task_type=type,
            intent=intent,
            tools=list(tools),
            destinations=list(destinations),
            data_sensitivity=sensitivity,
            ttl_seconds=seconds(ttl) if ttl is not None else (delegation.ttl_seconds if delegation else 300),
            on_behalf_of=on_behalf_of,
            jwt_audiences=list(jwt_audiences),
            allow_partial=allow_partial,
            parent_task_id=delegation.parent_task_id if delegation else "",
            delegation_token=delegation.token if delegation else "",
        ))
    except BaseException:
        t.end(quiet=True)
        raise
    return t


class atask:
    """``async with lanyard.atask(...) as task``: :func:`task` for asyncio
    (the calls to the node agent run in a worker thread)."""

    def __init__(self, type: str, tools: Sequence[str] = (), **kwargs: Any) -> None:
        self._args = (type, tools)
        self._kwargs = kwargs
        self._task: Task | None = None

    async def __aenter__(self) -> Task:
        type_, tools = self._args
        t = await asyncio.to_thread(lambda: task(type_, tools, **self._kwargs))
        self._task = t
        return t

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            await asyncio.to_thread(self._task.__exit__, exc_type, exc, tb)
