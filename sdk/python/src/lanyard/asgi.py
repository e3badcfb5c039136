"""Guarding an ASGI service (Starlette, FastAPI): who calls comes from the
request, what they may do is decided per call by ``@guard.tool``.

    import lanyard, lanyard.asgi
    from fastapi import FastAPI

    guard = lanyard.Guard()
    app = FastAPI()
    app.add_middleware(lanyard.asgi.GuardMiddleware)

    @app.get("/contacts/{id}")
    @guard.tool("crm.read")
    async def read_contact(id: str) -> dict: ...

    lanyard.asgi.serve(app, port=8443)   # mutual TLS with this process's SVID

The caller's credential is its certificate chain when the ASGI server
exposes the TLS handshake (the ASGI TLS extension); uvicorn, Hypercorn,
Daphne and Granian do not, so :func:`serve` runs uvicorn with a protocol
that adds it. Otherwise the caller sends a task JWT-SVID as
``Authorization: Bearer`` (its audience must be the guard's audience, by
default this tool's SPIFFE ID).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from cryptography import x509

from . import _caller, _socket, tls
from .guard import CallPending, ToolDenied

if TYPE_CHECKING:
    from spiffe import X509Source, X509Svid

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Seconds a caller is told to wait before retrying a held call (as
#: lanyard-gate says).
PENDING_RETRY_AFTER = 5


async def _json(send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[str, str]] = ()) -> None:
    raw = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                    *((k.encode(), v.encode()) for k, v in headers)],
    })
    await send({"type": "http.response.body", "body": raw})


class GuardMiddleware:
    """Takes each HTTP request's caller credential (the TLS client chain,
    else a bearer JWT-SVID) for ``@guard.tool`` to decide with; a request
    with neither is answered 401. A :class:`~lanyard.ToolDenied` raised
    while serving is answered 403 ``{"error": "denied", "reason",
    "policy_ids", "decision_id"}``, a :class:`~lanyard.CallPending` 503
    with ``Retry-After`` and ``Lanyard-Approval-Id``, the answers
    lanyard-gate gives. ``exempt`` lists paths served without a credential
    (a health check)."""

    def __init__(self, app: ASGIApp, exempt: Sequence[str] = ()) -> None:
        self.app = app
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        try:
            caller = _caller.from_asgi_scope(scope)
        except ValueError as e:  # a TLS extension with a chain that does not parse
            caller = None
            reason = f"unreadable client certificate: {e}"
        else:
            reason = "no credential: present a task X.509-SVID (mutual TLS) or a task JWT-SVID as a bearer token"
        if caller is None:
            if scope["type"] == "http":
                await _json(send, 401, {"error": "unauthenticated", "reason": reason},
                            [("www-authenticate", "Bearer")])
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
            return
        scope.setdefault("state", {})["lanyard_caller"] = caller
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        token = _caller.set_current(caller)
        try:
            await self.app(scope, receive, tracking_send)
        except CallPending as e:
            if started:
                raise
            d = e.decision
            await _json(send, 503, {
                "error": "approval pending", "reason": d.reason, "approval_id": d.approval_id,
                "approval_expires_at": d.approval_expires_at, "policy_ids": list(d.policy_ids),
                "decision_id": d.decision_id,
            }, [("retry-after", str(PENDING_RETRY_AFTER)), ("lanyard-approval-id", d.approval_id)])
        except ToolDenied as e:
            if started:
                raise
            d = e.decision
            await _json(send, 403, {"error": "denied", "reason": d.reason, "policy_ids": list(d.policy_ids),
                                    "decision_id": d.decision_id})
        finally:
            _caller.reset(token)


def _tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI TLS extension for one connection (version 0.2)."""
    chain: list[bytes] = []
    verified = getattr(ssl_object, "get_verified_chain", None)  # Python 3.13+: DER, root last
    if callable(verified):
        chain = [bytes(c) for c in verified()][:-1]
    if not chain:
        leaf = ssl_object.getpeercert(binary_form=True)
        chain = [leaf] if leaf else []
    version = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}.get(ssl_object.version() or "")
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(d) for d in chain],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": version,
        "cipher_suite": None,
    }


def _with_tls(app: ASGIApp, ext: dict[str, Any]) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        scope["extensions"] = {**(scope.get("extensions") or {}), "tls": dict(ext)}
        await app(scope, receive, send)
    return wrapped


def _protocol_class() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11WithTLSExtension(H11Protocol):
        """uvicorn's HTTP/1.1 protocol, adding the ASGI TLS extension (the
        client's certificate chain) to each request of a TLS connection."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                self.app = _with_tls(self.app, _tls_extension(ssl_object))

    return H11WithTLSExtension


class _ServerTLS:
    """A server-side TLS context on this process's SVID, renewed in place
    (for new connections) when the SVID rotates."""

    def __init__(self, source: X509Source, require_client_cert: bool) -> None:
        self._source = source
        ctx, self._serial = self._build()
        # Optional: a caller without a certificate may still send a bearer
        # JWT-SVID (GuardMiddleware answers 401 to one with neither); a
        # certificate that is presented must chain to the bundle.
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        self.context = ctx

    def _current(self) -> tuple[X509Svid, list[x509.Certificate]]:
        x = self._source.get_x509_context()
        svid = x.default_svid
        bundle = x.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        return svid, list(bundle.x509_authorities) if bundle else []

    def _build(self) -> tuple[ssl.SSLContext, int]:
        svid, authorities = self._current()
        ctx = tls.context(svid.cert_chain, svid.private_key, authorities, server_side=True)
        return ctx, svid.leaf.serial_number

    async def follow(self) -> None:
        """Swaps in each new SVID (and trust bundle) on the event loop's
        thread, where the server creates its TLS connections."""
        while True:
            await asyncio.sleep(1)
            if self._source.svid.leaf.serial_number == self._serial:
                continue
            svid, authorities = self._current()
            tls.load_svid(self.context, svid.cert_chain, svid.private_key)
            roots = tls.pem(authorities)
            if roots:
                self.context.load_verify_locations(cadata=roots)
            self._serial = svid.leaf.serial_number


async def aserve(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 8443,
    *,
    sockets: Sequence[socket.socket] | None = None,
    agent_socket: str | None = None,
    require_client_cert: bool = False,
    **uvicorn_options: Any,
) -> None:
    """Serves ``app`` with uvicorn over TLS with this process's X.509-SVID
    from the Workload API (following its rotation). A client certificate
    must chain to the trust bundle; each request's client chain is in the
    ASGI TLS extension for :class:`GuardMiddleware`. A client may also
    connect without one (to send a bearer JWT-SVID) unless
    ``require_client_cert``. ``sockets`` serves already bound sockets
    instead of ``host``/``port``; ``uvicorn_options`` go to
    ``uvicorn.Config``."""
    import uvicorn
    from spiffe import WorkloadApiClient, X509Source

    endpoint = f"unix://{_socket.socket_path(agent_socket)}"
    source = await asyncio.to_thread(lambda: X509Source(WorkloadApiClient(endpoint), timeout_in_seconds=30))
    try:
        server_tls = _ServerTLS(source, require_client_cert)
        config = uvicorn.Config(app, host=host, port=port, http=_protocol_class(),
                                ssl_context_factory=lambda _c, _d: server_tls.context, **uvicorn_options)
        server = uvicorn.Server(config)
        follow = asyncio.create_task(server_tls.follow())
        try:
            await server.serve(sockets=list(sockets) if sockets is not None else None)
        finally:
            follow.cancel()
    finally:
        source.close()


def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 8443, **kwargs: Any) -> None:
    """:func:`aserve`, run until interrupted."""
    asyncio.run(aserve(app, host, port, **kwargs))
