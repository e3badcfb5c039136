"""Who is calling a tool: the credential a request presented, held for the
request's duration so that :meth:`Guard.tool` decides with it.

A certificate is public: the chain counts only when it comes from a TLS
handshake this process (or the ASGI server running it) made, never from a
request header. A JWT-SVID is a bearer token: it counts as sent.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization


@dataclass(frozen=True)
class Caller:
    """A caller's credential: its certificate chain from the TLS handshake
    (DER, leaf first), or a task JWT-SVID it sent as a bearer token."""

    chain: tuple[bytes, ...] | None = None
    jwt: str | None = None

    def credential(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`Guard.decide` for this caller."""
        if self.chain is not None:
            return {"chain": list(self.chain)}
        return {"jwt": self.jwt or ""}


_current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("lanyard_caller", default=None)


def current() -> Caller | None:
    """The caller of the request being served, if a middleware (or
    :func:`caller`) set one."""
    return _current.get()


@contextmanager
def caller(chain: Sequence[bytes] | None = None, jwt: str | None = None) -> Iterator[Caller]:
    """Sets the caller for the block: ``chain`` from the TLS handshake
    (``SSLSocket.getpeercert(binary_form=True)`` gives the leaf), or a
    ``jwt`` from an ``Authorization: Bearer`` header."""
    if (chain is None) == (jwt is None):
        raise ValueError("give the caller's credential: chain= (its certificates) or jwt=")
    c = Caller(tuple(bytes(d) for d in chain) if chain is not None else None, jwt)
    token = _current.set(c)
    try:
        yield c
    finally:
        _current.reset(token)


def from_asgi_scope(scope: Mapping[str, Any]) -> Caller | None:
    """The caller of an ASGI request: the client chain from the ASGI TLS
    extension (``scope["extensions"]["tls"]["client_cert_chain"]``, PEM,
    set by servers that expose the handshake, such as
    :func:`lanyard.asgi.serve`), else a bearer token from the
    ``Authorization`` header; ``None`` if neither."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    pems = tls.get("client_cert_chain") or []
    if pems:
        return Caller(chain=tuple(
            x509.load_pem_x509_certificate(p.encode() if isinstance(p, str) else p).public_bytes(
                serialization.Encoding.DER) for p in pems))
    for name, value in scope.get("headers") or []:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return Caller(jwt=token.strip())
    return None


def set_current(c: Caller | None) -> contextvars.Token[Caller | None]:
    """Sets the current caller (for middlewares); reset with the token."""
    return _current.set(c)


def reset(token: contextvars.Token[Caller | None]) -> None:
    _current.reset(token)
