"""Errors: Python exceptions carrying the node agent's or server's reason,
never raw gRPC errors."""

from __future__ import annotations

import re

import grpc

_POLICIES = re.compile(r"denied by policy ([^:;]+)")
_APPROVAL = re.compile(r"\(approval ([0-9a-f]+)")


class LanyardError(Exception):
    """Something the node agent refused or could not do.

    ``code`` is the gRPC status name (``"PERMISSION_DENIED"``, ...) and
    ``reason`` the agent's own words."""

    def __init__(self, reason: str, code: str = "UNKNOWN") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TaskDenied(LanyardError):
    """A task (or a credential, or a delegation) was refused by policy or by
    the entry's ceilings. ``policy_ids`` names the deciding Cedar policies
    (empty when no policy permitted, or a ceiling refused)."""

    def __init__(self, reason: str, code: str = "PERMISSION_DENIED") -> None:
        super().__init__(reason, code)
        ids: list[str] = []
        for m in _POLICIES.finditer(reason):
            for p in m.group(1).split(","):
                p = p.strip()
                if p and p not in ids:
                    ids.append(p)
        self.policy_ids = ids


class ApprovalPending(LanyardError):
    """A policy holds the task (or the call) until a person approves it.
    ``approval_id`` names the request; begin the same task (or make the
    same call) again once it is approved: it then goes through once."""

    def __init__(self, reason: str, approval_id: str = "", code: str = "FAILED_PRECONDITION") -> None:
        super().__init__(reason, code)
        if not approval_id:
            m = _APPROVAL.search(reason)
            approval_id = m.group(1) if m else ""
        self.approval_id = approval_id


class NotFound(LanyardError):
    """No such task, or it is not this process's."""


class AgentUnavailable(LanyardError):
    """The node agent (or its server) cannot be reached."""


class InvalidRequest(LanyardError):
    """The request is malformed; the reason says which part."""


def from_rpc_error(e: grpc.RpcError) -> LanyardError:
    """The exception for a failed call to the node agent."""
    code = e.code() if isinstance(e, grpc.Call) else None
    details = (e.details() if isinstance(e, grpc.Call) else None) or str(e)
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return TaskDenied(details, name)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details, name)
    if code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("approval pending"):
        return ApprovalPending(details, code=name)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return AgentUnavailable(details, name)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(details, name)
    return LanyardError(details, name)
