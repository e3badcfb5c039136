"""A FastAPI service guarded with lanyard.asgi.GuardMiddleware and
``@guard.tool``, served by lanyard.asgi.serve (uvicorn, mutual TLS with the
ASGI TLS extension) in its own process, an enforcement point; called by an
AI agent's task over httpx, requests, and with a bearer JWT-SVID."""

from __future__ import annotations

import ssl

import time

import httpx
from cryptography import x509

import lanyard
from conftest import TOOL_ID, Guarded, Stack


def bundle_only(t: lanyard.Task) -> ssl.SSLContext:
    """A client context trusting the bundle and presenting no certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=lanyard.tls.pem(t.authorities()))
    return ctx


def test_calls_are_decided_per_function_with_their_arguments(stack: Stack, guarded: Guarded) -> None:
    with lanyard.task("report.generate", ["crm.read", "email.send"]) as t, t.httpx_client(timeout=20) as http:
        r = http.get(f"{guarded.api}/contacts/42")
        assert r.status_code == 200, r.text
        assert r.json() == {"id": "42", "name": "ACME Corp", "by": "x509"}
        # A sync endpoint (run in a worker thread) and its arguments.
        ok = http.post(f"{guarded.api}/mail", params={"to": "bob@example.com"})
        assert ok.status_code == 200, ok.text
        no = http.post(f"{guarded.api}/mail", params={"to": "eve@outside.example"})
        assert no.status_code == 403, no.text
        body = no.json()
        assert body["error"] == "denied"
        assert body["policy_ids"] == ["no-mail-out"]
        assert body["reason"] == "no email outside example.com"
        assert body["decision_id"]
        # A tool the task was not granted never reaches the function.
        sh = http.post(f"{guarded.api}/shell", params={"cmd": "id"})
        assert sh.status_code == 403, sh.text
        assert "shell.exec" in sh.json()["reason"], sh.text
        # A call held for approval: 503 with what the caller needs to retry.
        held = http.post(f"{guarded.api}/mail", params={"to": "partner@outside.example"})
        assert held.status_code == 503, held.text
        assert held.headers["retry-after"] == "5"
        assert held.headers["lanyard-approval-id"] == held.json()["approval_id"]
        assert "mail-partner" in held.json()["policy_ids"]
    assert "AssertionError" not in guarded.log.read_text()


def test_a_revoked_svid_is_refused(stack: Stack, guarded: Guarded) -> None:
    t = lanyard.task("report.generate", ["crm.read"])
    # One TLS context, kept past the task's end (the task's own clients
    # stop at its end).
    ctx = t.ssl_context()
    with httpx.Client(verify=ctx, timeout=20) as http:
        assert http.get(f"{guarded.api}/contacts/42").status_code == 200
    t.end()
    # A new connection with the same certificate (it still chains to the
    # bundle): the node agent refuses the ended task's SVID.
    http = httpx.Client(verify=ctx, timeout=20)
    r = http.get(f"{guarded.api}/contacts/42")
    assert r.status_code == 403, r.text
    assert "credential refused" in r.json()["reason"], r.text
    assert f"task {t.id} ended" in r.json()["reason"], r.text
    http.close()


def test_a_bearer_jwt_svid_without_a_certificate(stack: Stack, guarded: Guarded) -> None:
    with lanyard.task("report.generate", ["crm.read"]) as t:
        with httpx.Client(verify=bundle_only(t), timeout=20) as bare:
            # No credential at all: 401, and the health check stays open.
            r = bare.get(f"{guarded.api}/contacts/42")
            assert r.status_code == 401, r.text
            assert r.headers["www-authenticate"] == "Bearer"
            assert bare.get(f"{guarded.api}/health").status_code == 200
            token = t.jwt_svid(audience=TOOL_ID)
            ok = bare.get(f"{guarded.api}/contacts/42", headers={"authorization": f"Bearer {token}"})
            assert ok.status_code == 200, ok.text
            assert ok.json()["by"] == "jwt"
            # A token for another audience is refused by the node agent.
            other = t.jwt_svid(audience="spiffe://example.org/someone-else")
            no = bare.get(f"{guarded.api}/contacts/42", headers={"authorization": f"Bearer {other}"})
            assert no.status_code == 403, no.text


def test_a_requests_session_follows_the_task(stack: Stack, guarded: Guarded) -> None:
    with lanyard.task("report.generate", ["crm.read"]) as t, t.requests_session() as s:
        r = s.get(f"{guarded.api}/contacts/7", timeout=20)
        assert r.status_code == 200, r.text
        assert r.json()["id"] == "7"


def test_the_server_follows_its_own_svid_rotation(stack: Stack, guarded: Guarded) -> None:
    """The tool's entry has a 10 s TTL: new connections get the new SVID."""
    def served(t: lanyard.Task) -> x509.Certificate:
        host, port = guarded.api.removeprefix("https://").split(":")
        ctx = t.ssl_context()
        import socket
        with socket.create_connection((host, int(port)), timeout=15) as raw, \
                ctx.wrap_socket(raw) as tls_sock:
            der = tls_sock.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    with lanyard.task("report.generate", ["crm.read"], ttl="2m") as t:
        first = served(t)
        assert lanyard.tls.peer_spiffe_id(first) == TOOL_ID
        deadline = time.monotonic() + 40
        while (now := served(t)).serial_number == first.serial_number:
            assert time.monotonic() < deadline, "the server kept its first SVID"
            time.sleep(1)
        assert now.not_valid_after_utc > first.not_valid_after_utc
        with t.httpx_client(timeout=20) as http:
            assert http.get(f"{guarded.api}/contacts/42").status_code == 200


def test_an_svid_revoked_by_serial_is_refused_within_seconds(stack: Stack, guarded: Guarded) -> None:
    with lanyard.task("report.generate", ["crm.read"]) as t:
        ctx = t.ssl_context()  # one certificate, kept
        leaf = t.svid().leaf
        with httpx.Client(verify=ctx, timeout=20) as http:
            assert http.get(f"{guarded.api}/contacts/42").status_code == 200
        stack.admin_cmd("svid", "revoke", f"{leaf.serial_number:X}", "--reason", "key leaked")
        deadline = time.monotonic() + 15
        while True:
            # A new connection each time (the same certificate).
            with httpx.Client(verify=ctx, timeout=20) as http:
                r = http.get(f"{guarded.api}/contacts/42")
            if r.status_code == 403 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 403, r.text
        assert "revoked" in r.json()["reason"], r.text
