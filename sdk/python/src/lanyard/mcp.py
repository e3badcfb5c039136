"""Guarding an MCP server built with the official MCP SDK (``mcp`` 2.3 or
later): every ``tools/call`` is decided by the node agent, per call, with
its arguments.

    import lanyard, lanyard.asgi, lanyard.mcp
    from mcp.server.mcpserver import MCPServer

    guard = lanyard.Guard()
    server = MCPServer("crm", middleware=[
        lanyard.mcp.GuardMiddleware(guard, tools={"read_contact": "crm.read"})])
    lanyard.asgi.serve(lanyard.asgi.GuardMiddleware(server.streamable_http_app()), port=8443)

The caller is the one :class:`lanyard.asgi.GuardMiddleware` found on the
HTTP request (its TLS client chain, or a bearer JWT-SVID). Each MCP tool
maps to a Lanyard tool; a tool with no mapping is denied (and not listed)
unless ``allow_unmapped`` names it as itself. A denial or a call held for
approval is a ``CallToolResult`` with ``isError: true`` and the reason,
as lanyard-gate answers, so the SDKs show it to the model;
``_meta["dev.lanyard/decision"]`` carries the decision, the policy IDs and
the approval ID. ``tools/list`` leaves out the tools the caller's task was
not granted (known from its certificate; a JWT caller sees every mapped
tool and is decided per call).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import _caller, claims
from .guard import Decision, Guard

META_KEY = "dev.lanyard/decision"

#: From this MCP revision on, every result names its ``resultType``; the
#: SDK adds it to what handlers return, not to what a middleware answers.
_RESULT_TYPE_FROM = "2026-07-28"


def _refusal(text: str, d: Decision) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "decision": "pending" if d.pending else "deny", "reason": d.reason,
        "policy_ids": list(d.policy_ids), "decision_id": d.decision_id,
    }
    if d.approval_id:
        meta["approval_id"] = d.approval_id
        meta["approval_expires_at"] = d.approval_expires_at
    if d.policy_ids:
        text += f" (policies: {', '.join(d.policy_ids)})"
    return {"content": [{"type": "text", "text": text}], "isError": True, "_meta": {META_KEY: meta}}


def _denied(reason: str) -> dict[str, Any]:
    return _refusal(f"Denied by Lanyard: {reason}", Decision(False, reason, (), "", "", ""))


def _caller_of(ctx: Any) -> _caller.Caller | None:
    """The caller of an MCP request: from the HTTP request it came on."""
    c = _caller.current()
    if c is not None:
        return c
    request = getattr(ctx, "request", None)
    scope = getattr(request, "scope", None)
    if scope is None:
        return None
    state = scope.get("state") or {}
    found = state.get("lanyard_caller")
    if isinstance(found, _caller.Caller):
        return found
    try:
        return _caller.from_asgi_scope(scope)
    except ValueError:
        return None


class GuardMiddleware:
    """An MCP ``ServerMiddleware`` deciding each tool call on the node
    agent. ``tools`` maps MCP tool names to Lanyard tools; ``wait`` holds a
    call that needs approval up to that many seconds (at most 60) for a
    person's answer."""

    def __init__(self, guard: Guard, tools: Mapping[str, str], *, allow_unmapped: bool = False,
                 wait: float = 0.0) -> None:
        if not 0 <= wait <= 60:
            raise ValueError("wait= is 0 to 60 seconds")
        self.guard = guard
        self.tools = dict(tools)
        self.allow_unmapped = allow_unmapped
        self.wait = wait

    def lanyard_tool(self, name: str) -> str | None:
        """The Lanyard tool an MCP tool maps to, if any."""
        return self.tools.get(name) or (name if self.allow_unmapped else None)

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        if ctx.method == "tools/call":
            return await self._call(ctx, call_next)
        if ctx.method == "tools/list":
            return self._filter(ctx, await call_next(ctx))
        return await call_next(ctx)

    async def _call(self, ctx: Any, call_next: Any) -> Any:
        answer = await self._decide(ctx, call_next)
        version = getattr(ctx, "protocol_version", "") or ""
        if isinstance(answer, dict) and version >= _RESULT_TYPE_FROM and "resultType" not in answer:
            answer["resultType"] = "complete"
        return answer

    async def _decide(self, ctx: Any, call_next: Any) -> Any:
        params = ctx.params or {}
        name = params.get("name")
        if not isinstance(name, str):
            return await call_next(ctx)  # the SDK refuses the malformed request
        tool = self.lanyard_tool(name)
        if tool is None:
            return _denied(f"MCP tool {name!r} is not mapped to a Lanyard tool")
        caller = _caller_of(ctx)
        if caller is None:
            return _denied("no credential of the caller (serve the MCP app behind lanyard.asgi.GuardMiddleware)")
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict):
            arguments = {}
        arguments = {k: v for k, v in arguments.items() if k != "_meta"}
        d = await self.guard.adecide(tool, arguments=arguments, wait=self.wait, **caller.credential())
        if d.pending:
            return _refusal("Pending: this call needs a person's approval and has not been answered yet. "
                            "Retry the same call with the same arguments later; it is allowed once approved. "
                            f"({d.reason})", d)
        if not d.allow:
            return _refusal(f"Denied by Lanyard: {d.reason}", d)
        token = _caller.set_current(caller)
        try:
            return await call_next(ctx)
        finally:
            _caller.reset(token)

    def _filter(self, ctx: Any, result: Any) -> Any:
        caller = _caller_of(ctx)
        granted: claims.TaskClaims | None = None
        if caller is not None and caller.chain:
            try:
                granted = claims.from_certificate(caller.chain[0])
            except ValueError:
                granted = None

        def keep(tool_name: str) -> bool:
            tool = self.lanyard_tool(tool_name)
            return tool is not None and (granted is None or granted.allows(tool))

        if isinstance(result, dict):
            tools = result.get("tools")
            if isinstance(tools, list):
                return {**result, "tools": [t for t in tools if keep(str(t.get("name", "")))]}
            return result
        tools = getattr(result, "tools", None)
        if isinstance(tools, list):
            return result.model_copy(update={"tools": [t for t in tools if keep(t.name)]})
        return result
