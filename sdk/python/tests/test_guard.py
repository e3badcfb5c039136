"""lanyard.Guard in a tool server (its own process, an enforcement point)
deciding the calls of an AI agent's task over mutual TLS."""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

import pytest

import lanyard
from conftest import AGENT_ID, Stack
from tool_server import recv_line


def call(ctx: ssl.SSLContext, port: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(json.dumps({"tool": tool, "arguments": arguments}).encode() + b"\n")
            answer: dict[str, Any] = json.loads(recv_line(tls))
    return answer


def test_calls_are_decided_with_their_arguments(stack: Stack, tool_port: int) -> None:
    with lanyard.task("report.generate", ["crm.read", "email.send"]) as t:
        ok = call(t.ssl_context(), tool_port, "email.send", {"to": "bob@example.com"})
        assert ok["allow"] is True, ok
        assert ok["task_id"] == t.id
        assert ok["principal"] == AGENT_ID
        assert ok["decision_id"]
        no = call(t.ssl_context(), tool_port, "email.send", {"to": "eve@outside.example"})
        assert no["allow"] is False
        assert no["policy_ids"] == ["no-mail-out"]
        assert no["reason"] == "no email outside example.com"


def test_an_ended_task_is_refused(stack: Stack, tool_port: int) -> None:
    t = lanyard.task("report.generate", ["crm.read"])
    ctx = t.ssl_context()
    assert call(ctx, tool_port, "crm.read", {"id": "42"})["allow"] is True
    t.end()
    # The same certificate, presented after the task ended: the handshake
    # (chain to the bundle) passes, the node agent refuses it.
    no = call(ctx, tool_port, "crm.read", {"id": "42"})
    assert no["allow"] is False
    assert no["reason"].startswith("credential refused: credential revoked"), no
    assert f"task {t.id} ended" in no["reason"], no
    assert not no["decision_id"]


def test_the_guard_refuses_bad_input_clearly(stack: Stack) -> None:
    with lanyard.Guard() as g:
        with pytest.raises(ValueError, match="chain= .* or jwt="):
            g.decide("crm.read")
        with pytest.raises(ValueError, match="JSON"):
            g.decide("crm.read", jwt="x", arguments={"f": object()})
        # This process is not an enforcement point: a denial that says so.
        d = g.decide("crm.read", jwt="not.a.jwt")
        assert not d.allow
        assert "enforcement point" in d.reason
        with pytest.raises(lanyard.ToolDenied) as e:
            g.require("crm.read", jwt="not.a.jwt")
        assert "enforcement point" in e.value.reason
