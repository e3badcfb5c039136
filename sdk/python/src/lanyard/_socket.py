"""Where the node agent is: the ``SPIFFE_ENDPOINT_SOCKET`` convention every
SPIFFE library follows."""

from __future__ import annotations

import os

ENV = "SPIFFE_ENDPOINT_SOCKET"
#: The metadata every Workload API (and task API) call carries.
METADATA = (("workload.spiffe.io", "true"),)


def socket_path(socket: str | None = None) -> str:
    """The agent's socket path from ``socket`` (a path, ``unix:PATH`` or
    ``unix://PATH``) or, when not given, ``SPIFFE_ENDPOINT_SOCKET``."""
    value = socket if socket is not None else os.environ.get(ENV, "")
    if not value:
        raise ValueError(f"no node agent socket: pass socket= or set {ENV} (e.g. unix:///run/lanyard/agent/api.sock)")
    if value.startswith("unix://"):
        path = value[len("unix://"):]
    elif value.startswith("unix:"):
        path = value[len("unix:"):]
    elif value.startswith("/"):
        path = value
    else:
        raise ValueError(f"{ENV}={value!r}: only unix sockets are supported (unix:///path)")
    if not path.startswith("/"):
        raise ValueError(f"{value!r}: the socket path must be absolute")
    return path


def grpc_target(path: str) -> str:
    """The gRPC target of a unix socket path."""
    return f"unix:{path}"
