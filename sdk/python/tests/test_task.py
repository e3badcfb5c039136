"""Tasks through the package against a real server and node agent."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable

import pytest
from spiffe import WorkloadApiClient

import lanyard
from conftest import AGENT_ID, Stack


def served_task_ids(stack: Stack) -> set[str]:
    """The task IDs in the SVIDs the agent serves this process now."""
    client = WorkloadApiClient(f"unix://{stack.socket}")
    try:
        ids = set()
        for s in client.fetch_x509_svids(timeout=10):
            c = lanyard.claims.from_certificate(s.leaf)
            if c is not None:
                ids.add(c.task_id)
        return ids
    finally:
        client.close()


def test_a_task_carries_its_grant_and_ends_with_the_block(stack: Stack) -> None:
    with lanyard.task("report.generate", ["crm.read", "email.send"], intent="weekly report",
                      on_behalf_of="user:alice@example.com", ttl="2m",
                      destinations=["crm.internal"]) as t:
        assert t.spiffe_id == AGENT_ID
        assert t.granted_tools == ("crm.read", "email.send")
        assert t.claims is not None
        assert t.claims.task_id == t.id
        assert t.claims.task_type == "report.generate"
        assert t.claims.tools == ("crm.read", "email.send")
        assert t.claims.on_behalf_of == "user:alice@example.com"
        assert t.claims.destinations == ("crm.internal",)
        now = datetime.datetime.now(datetime.timezone.utc)
        assert now < t.expires_at <= now + datetime.timedelta(minutes=2, seconds=5)
        assert t.claims.allows("crm.read") and not t.claims.allows("shell.exec")
        # The SVID the Workload API serves is the task's.
        assert lanyard.claims.from_certificate(t.svid().leaf) == t.claims
        assert t.id in served_task_ids(stack)
        task_id = t.id
    assert t.ended
    assert task_id not in served_task_ids(stack)
    with pytest.raises(lanyard.LanyardError):
        t.svid()


def test_a_refused_task_raises_with_the_policy_and_its_reason(stack: Stack) -> None:
    with pytest.raises(lanyard.TaskDenied) as e:
        lanyard.task("report.generate", ["crm.read", "shell.exec"])
    assert e.value.policy_ids == ["no-shell"]
    assert "shells are never granted" in e.value.reason
    assert e.value.code == "PERMISSION_DENIED"
    # A type the entry does not allow: refused by its ceilings.
    with pytest.raises(lanyard.TaskDenied):
        lanyard.task("payments.send", ["crm.read"])
    # Partial: begins with what is permitted and says what was not.
    with lanyard.task("report.generate", ["crm.read", "shell.exec"], allow_partial=True) as t:
        assert t.granted_tools == ("crm.read",)
        assert [tool for tool, _ in t.denied] == ["shell.exec"]


def test_bad_arguments_are_clear_errors(stack: Stack) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        lanyard.task("report.generate", ["crm.read"], ttl="ten minutes")
    with pytest.raises(lanyard.TaskDenied, match="exceeds the entry's maximum"):
        lanyard.task("report.generate", ["crm.read"], ttl="1h")
    with pytest.raises(lanyard.InvalidRequest) as e:
        lanyard.task("", ["crm.read"])
    assert e.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ValueError, match="only unix sockets"):
        lanyard.task("report.generate", ["crm.read"], socket="tcp://127.0.0.1:1")


def serve_once(ctx_for_conn: Callable[[], ssl.SSLContext], seen: list[bytes], stop: threading.Event) -> int:
    """A tool server: each connection gets a fresh context (so it follows
    rotation too), must present a client certificate, and is answered over
    HTTP/1.1; the peer's certificate is kept."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)

    def run() -> None:
        with listener:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                try:
                    with ctx_for_conn().wrap_socket(conn, server_side=True) as tls:
                        der = tls.getpeercert(binary_form=True)
                        assert der is not None
                        seen.append(der)
                        tls.recv(65536)
                        body = b"ok"
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n" + body)
                except (ssl.SSLError, OSError):
                    continue

    threading.Thread(target=run, daemon=True).start()
    return int(listener.getsockname()[1])


def test_mutual_tls_between_two_tasks_with_the_standard_library(stack: Stack) -> None:
    with lanyard.task("report.generate", ["crm.read"]) as tool, \
            lanyard.task("report.generate", ["email.send"]) as agent:
        seen: list[bytes] = []
        stop = threading.Event()
        port = serve_once(lambda: tool.ssl_context(server_side=True), seen, stop)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with agent.ssl_context().wrap_socket(raw) as tls:
                    server_cert = tls.getpeercert(binary_form=True)
                    assert server_cert is not None
                    assert lanyard.tls.peer_spiffe_id(server_cert) == AGENT_ID
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: tool\r\n\r\n")
                    assert tls.recv(1024).startswith(b"HTTP/1.1 200")
        finally:
            stop.set()
        client_claims = lanyard.claims.from_certificate(seen[0])
        assert client_claims is not None and client_claims.task_id == agent.id
        assert client_claims.tools == ("email.send",)


def test_the_svid_rotates_under_a_short_ttl_and_no_expired_one_is_used(stack: Stack) -> None:
    # The entry's X.509-SVIDs live 10 s: over ~25 s the task's renews at
    # least twice, and every connection presents one that is valid.
    with lanyard.task("report.generate", ["crm.read"], ttl="2m") as t:
        seen: list[bytes] = []
        stop = threading.Event()
        port = serve_once(lambda: t.ssl_context(server_side=True), seen, stop)
        leaf = t.svid().leaf
        # (not_before is back-dated for clock skew: measure from now.)
        now = datetime.datetime.now(datetime.timezone.utc)
        assert leaf.not_valid_after_utc - now <= datetime.timedelta(seconds=11)
        try:
            with t.httpx_client(timeout=10) as http:
                deadline = time.monotonic() + 25
                while time.monotonic() < deadline:
                    r = http.get(f"https://127.0.0.1:{port}/")
                    assert r.status_code == 200
                    time.sleep(0.5)
        finally:
            stop.set()
        from cryptography import x509

        certs = [x509.load_der_x509_certificate(d) for d in seen]
        serials = {c.serial_number for c in certs}
        assert len(serials) >= 3, f"only {len(serials)} SVIDs in 25 s under a 10 s TTL"
        for c in certs:
            claims = lanyard.claims.from_certificate(c)
            assert claims is not None and claims.task_id == t.id


def test_jwt_svid_delegation_and_credential(stack: Stack) -> None:
    with lanyard.task("report.generate", ["crm.read", "email.send"]) as t:
        token = t.jwt_svid(audience="crm")
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["sub"] == AGENT_ID
        assert claims["aud"] in ("crm", ["crm"])
        assert claims["txn"] == t.id
        assert claims["tctx"]["tools"] == ["crm.read", "email.send"]

        d = t.delegate(to=AGENT_ID, tools=["email.send"], ttl="1m")
        with lanyard.task("report.generate", ["email.send"], delegation=d) as child:
            assert child.claims is not None
            assert child.claims.parent_task_id == t.id
            assert child.granted_tools == ("email.send",)
        with pytest.raises(lanyard.LanyardError):
            # Single use.
            lanyard.task("report.generate", ["email.send"], delegation=d)

        c = t.credential("internal", audience="spiffe://example.org/crm")
        assert c.kind == "txn_token"
        assert set(c.headers()) == {"Txn-Token"}
        assert c.value not in repr(c)
        with pytest.raises(lanyard.NotFound, match="no credential provider"):
            t.credential("not-declared")


def test_atask_ends_on_an_exception(stack: Stack) -> None:
    held: list[lanyard.Task] = []

    async def run() -> None:
        async with lanyard.atask("report.generate", ["crm.read"]) as t:
            held.append(t)
            assert t.id in served_task_ids(stack)
            raise RuntimeError("the model gave up")

    with pytest.raises(RuntimeError, match="gave up"):
        asyncio.run(run())
    assert held[0].ended
    assert held[0].id not in served_task_ids(stack)
