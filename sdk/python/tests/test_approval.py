"""Calls and tasks an ``@approval`` policy holds for a person: pending
with an approval ID, allowed once after ``lanyard-server approval
approve``, held open with ``wait=`` until the answer."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

import lanyard
from conftest import APPROVER, Stack
from test_guard import call


def approve(stack: Stack, approval_id: str) -> None:
    out = stack.admin_cmd("approval", "approve", approval_id, "--as", APPROVER, "--reason", "ok")
    assert out.startswith("approved"), out


def test_a_held_call_is_pending_then_allowed_once(stack: Stack, tool_port: int) -> None:
    mail = {"to": "partner@outside.example", "body": "q3"}
    with lanyard.task("report.generate", ["email.send"]) as t:
        held = call(t.ssl_context(), tool_port, "email.send", mail)
        assert held["allow"] is False and held["pending"] is True, held
        assert held["approval_id"], held
        assert held["approval_expires_at"] > 0
        shown = json.loads(stack.admin_cmd("approval", "show", held["approval_id"], "--output", "json"))
        assert shown["task_id"] == t.id and shown["tool"] == "email.send"
        approve(stack, held["approval_id"])
        ok = call(t.ssl_context(), tool_port, "email.send", mail)
        assert ok["allow"] is True and ok["approval_id"] == held["approval_id"], ok
        again = call(t.ssl_context(), tool_port, "email.send", mail)
        assert again["pending"] is True and again["approval_id"] != held["approval_id"]


def test_a_waiting_call_is_released_by_the_answer(stack: Stack, tool_port: int) -> None:
    mail = {"to": "partner@outside.example", "body": "q4"}
    with lanyard.task("report.generate", ["email.send"]) as t:
        ctx = t.ssl_context()
        result: dict[str, Any] = {}

        def held_call() -> None:
            result.update(call_waiting(ctx, tool_port, mail))

        th = threading.Thread(target=held_call)
        th.start()
        pending = wait_for_pending(stack, t.id)
        assert th.is_alive(), "the call did not wait"
        approve(stack, pending)
        th.join(30)
        assert result.get("allow") is True, result


def call_waiting(ctx: Any, port: int, mail: dict[str, str]) -> dict[str, Any]:
    import socket
    from tool_server import recv_line
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(json.dumps({"tool": "email.send", "arguments": mail, "wait": 20}).encode() + b"\n")
            answer: dict[str, Any] = json.loads(recv_line(tls))
    return answer


def wait_for_pending(stack: Stack, task_id: str) -> str:
    import time
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = json.loads(stack.admin_cmd("approval", "list", "--output", "json"))
        for a in listed.get("approvals", []):
            if a["task_id"] == task_id:
                return str(a["id"])
        time.sleep(0.05)
    pytest.fail("no pending request appeared")


def test_a_task_held_for_approval_raises_approval_pending(stack: Stack) -> None:
    with pytest.raises(lanyard.ApprovalPending) as e:
        lanyard.task("report.generate", ["crm.read"], on_behalf_of="user:board@example.com")
    assert e.value.approval_id, e.value.reason
    assert e.value.code == "FAILED_PRECONDITION"
    approve(stack, e.value.approval_id)
    with lanyard.task("report.generate", ["crm.read"], on_behalf_of="user:board@example.com") as t:
        assert t.id
