"""An MCP server built with the official SDK and guarded with
lanyard.mcp.GuardMiddleware, called by an AI agent's task with the
official SDK's client over mutual TLS: each tool call decided with its
arguments, the tool list cut to the task's grant."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

import lanyard
from conftest import Guarded, Stack


async def session(t: lanyard.Task, url: str, steps: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    out: list[Any] = []
    http = httpx2.AsyncClient(verify=t.ssl_context(), timeout=20)
    try:
        async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=20) as client:
            out.append(sorted(tool.name for tool in (await client.list_tools()).tools))
            for name, args in steps:
                out.append(await client.call_tool(name, args))
    finally:
        await http.aclose()
    return out


def text(r: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in r.content)


def test_each_tool_call_is_decided_with_its_arguments(stack: Stack, guarded: Guarded) -> None:
    with lanyard.task("report.generate", ["crm.read", "email.send"]) as t:
        listed, read, sent, refused, held, unmapped = asyncio.run(session(t, guarded.mcp, [
            ("read_contact", {"id": "42"}),
            ("send_mail", {"to": "bob@example.com"}),
            ("send_mail", {"to": "eve@outside.example"}),
            ("send_mail", {"to": "partner@outside.example"}),
            ("unmapped", {}),
        ]))
    # Granted and mapped only: not run_shell (not granted), not unmapped.
    assert listed == ["read_contact", "send_mail"]
    assert not read.is_error and "ACME Corp" in text(read), read
    assert not sent.is_error and text(sent) == "sent to bob@example.com", sent
    assert refused.is_error
    assert text(refused).startswith("Denied by Lanyard: no email outside example.com"), refused
    meta = (refused.meta or {})["dev.lanyard/decision"]
    assert meta["decision"] == "deny" and meta["policy_ids"] == ["no-mail-out"] and meta["decision_id"]
    assert held.is_error and text(held).startswith("Pending:"), held
    hmeta = (held.meta or {})["dev.lanyard/decision"]
    assert hmeta["decision"] == "pending" and hmeta["approval_id"], hmeta
    assert unmapped.is_error and "not mapped" in text(unmapped), unmapped
    assert "AssertionError" not in guarded.log.read_text()


def test_a_tool_the_task_was_not_granted_is_denied_when_called(stack: Stack, guarded: Guarded) -> None:
    with lanyard.task("report.generate", ["crm.read"]) as t:
        listed, shell = asyncio.run(session(t, guarded.mcp, [("run_shell", {"cmd": "id"})]))
    assert listed == ["read_contact"]
    assert shell.is_error and "shell.exec" in text(shell), shell
    assert "AssertionError" not in guarded.log.read_text()
