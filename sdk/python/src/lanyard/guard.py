"""The tool's side: a :class:`Guard` asks the node agent to decide each
call a caller makes, on the caller's task SVID.

The tool's own process must be an enforcement point (its entry created
with ``--enforcement-point``): only enforcement points may ask for
decisions, since certificates are public and anyone else could run up
denials against another task. The node agent checks the credential
(chain to the bundle, not revoked, task live and in its window, tool
granted), then the Cedar policy with the call's arguments; a denial
counts towards quarantining the caller, and every decision is audited.

    guard = lanyard.Guard()
    decision = guard.require("crm.read", chain=[peer_der], arguments={"id": "42"})

The credential is what the caller presented: its certificate chain from
the TLS handshake (DER, leaf first; with the standard library
``SSLSocket.getpeercert(binary_form=True)`` gives the leaf, enough for an
SVID signed by the trust domain's CA), or a task JWT-SVID sent as a bearer
token (its audience must be ``audience``, by default the tool's own
SPIFFE ID).

In a web service, :class:`lanyard.asgi.GuardMiddleware` takes the
credential from each request and ``@guard.tool("crm.read")`` decides the
decorated function's calls with their arguments:

    @app.get("/contacts/{id}")
    @guard.tool("crm.read")
    async def read_contact(id: str) -> dict: ...
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from . import _caller, _socket
from ._errors import ApprovalPending, LanyardError, from_rpc_error
from ._gen import task_pb2, task_pb2_grpc
from ._tooldecor import decorate

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds a decision may take.
DECIDE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Decision:
    """The node agent's answer for one call."""

    allow: bool
    reason: str
    #: The deciding Cedar policies.
    policy_ids: tuple[str, ...]
    #: The decision's record in the audit log (empty for a refusal of the
    #: credential itself).
    decision_id: str
    #: The caller's task (empty when its credential carries none).
    task_id: str
    #: The caller's SPIFFE ID.
    principal: str
    #: Neither allowed nor denied yet: an ``@approval`` policy holds the
    #: call until a person approves it (``allow`` is false). The same call,
    #: made again once approved, is allowed once.
    pending: bool = False
    #: The approval request, when the call needed one.
    approval_id: str = ""
    #: When a pending request lapses (seconds since the epoch).
    approval_expires_at: int = 0


class ToolDenied(LanyardError):
    """A call was denied; ``decision`` says why and by which policies."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason, "PERMISSION_DENIED")
        self.decision = decision
        self.policy_ids = list(decision.policy_ids)


class CallPending(ApprovalPending):
    """A call is held for a person's approval; ``decision`` has the
    ``approval_id``. Retry the same call later (or decide with ``wait=``)."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason, decision.approval_id)
        self.decision = decision


class Guard:
    """Decides tool calls on the node agent at ``socket`` (default:
    ``SPIFFE_ENDPOINT_SOCKET``). Thread-safe; keep one per process."""

    def __init__(self, socket: str | None = None, audience: str = "") -> None:
        self._channel = grpc.insecure_channel(_socket.grpc_target(_socket.socket_path(socket)))
        self._tasks = task_pb2_grpc.TaskIdentityStub(self._channel)
        self._audience = audience

    def decide(
        self,
        tool: str,
        *,
        chain: Sequence[bytes] | None = None,
        jwt: str | None = None,
        resource: str = "",
        arguments: Mapping[str, Any] | None = None,
        wait: float = 0.0,
    ) -> Decision:
        """Decides a call of ``tool`` (on ``resource``, with ``arguments``
        as the policy's ``context.call``) by the caller holding ``chain`` or
        ``jwt``. A credential the agent refuses (revoked, expired, no task,
        not from this trust domain) is a denial, not an exception.

        A call an ``@approval`` policy holds is answered ``pending`` with an
        ``approval_id``; with ``wait`` (seconds, at most 60) the agent holds
        the call until a person answers and returns allow or deny."""
        if not 0 <= wait <= 60:
            raise ValueError("wait= is 0 to 60 seconds")
        if (chain is None) == (jwt is None):
            raise ValueError("give the caller's credential: chain= (its certificates) or jwt=")
        try:
            context = json.dumps(dict(arguments or {}), separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"arguments must be JSON: {e}") from None
        req = task_pb2.AuthorizeToolCallRequest(
            tool=tool, resource=resource, context_json=context, audience=self._audience,
            wait_ms=int(wait * 1000))
        if chain is not None:
            if not chain:
                raise ValueError("chain= is empty: the caller presented no certificate")
            req.x509_chain.certs.extend(bytes(c) for c in chain)
        else:
            req.jwt_svid = jwt or ""
        try:
            r: task_pb2.AuthorizeToolCallResponse = self._tasks.AuthorizeToolCall(
                req, metadata=_socket.METADATA, timeout=DECIDE_TIMEOUT + wait)
        except grpc.RpcError as e:
            err = from_rpc_error(e)
            if err.code == "PERMISSION_DENIED":
                # The credential was refused (or this process is not an
                # enforcement point: the reason says which).
                return Decision(False, err.reason, (), "", "", "")
            raise err from None
        return Decision(r.allow, r.reason, tuple(r.policy_ids), r.decision_id, r.task_id,
                        r.principal, r.pending, r.approval_id, r.approval_expires_at)

    def require(self, tool: str, **kwargs: Any) -> Decision:
        """:meth:`decide`, raising :class:`CallPending` for a call held for
        approval and :class:`ToolDenied` for a denial."""
        d = self.decide(tool, **kwargs)
        if d.pending:
            raise CallPending(d)
        if not d.allow:
            raise ToolDenied(d)
        return d

    async def adecide(self, tool: str, **kwargs: Any) -> Decision:
        """:meth:`decide` for asyncio (the call to the node agent runs in a
        worker thread)."""
        return await asyncio.to_thread(lambda: self.decide(tool, **kwargs))

    async def arequire(self, tool: str, **kwargs: Any) -> Decision:
        """:meth:`require` for asyncio."""
        return await asyncio.to_thread(lambda: self.require(tool, **kwargs))

    def tool(self, name: str, *, resource: str = "", wait: float = 0.0) -> Callable[[F], F]:
        """Decorates a function (sync or async) that carries out the tool
        ``name``: each call is decided for the current caller (set by
        :class:`lanyard.asgi.GuardMiddleware`, the MCP middleware, or
        :func:`lanyard.caller`) with the function's JSON-representable
        arguments as ``context.call``, before the function runs. A denial
        raises :class:`ToolDenied`, a held call :class:`CallPending`; with
        no caller the call is denied."""
        return decorate(self._require_current, name, resource, wait)

    def _require_current(self, tool: str, resource: str, arguments: dict[str, Any], wait: float) -> Decision:
        c = _caller.current()
        if c is None:
            raise ToolDenied(Decision(False, "no credential of the caller: serve the tool behind "
                                      "lanyard.asgi.GuardMiddleware or set it with lanyard.caller()",
                                      (), "", "", ""))
        return self.require(tool, resource=resource, arguments=arguments, wait=wait, **c.credential())

    def close(self) -> None:
        """Closes the connection to the node agent."""
        self._channel.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
