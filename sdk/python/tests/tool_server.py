"""A tool server for the tests, written with lanyard.Guard: mutual TLS
(its own SVID from the Workload API; callers must present one), one JSON
request per connection ``{"tool": ..., "arguments": {...}, "wait": S}``, answered
with the node agent's decision as JSON. Its process must be an
enforcement point.

    python tool_server.py PORT_FILE
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import ssl
import sys

from spiffe import WorkloadApiClient, X509Source

import lanyard


def recv_line(tls: ssl.SSLSocket) -> bytes:
    """Reads until a newline (or the peer closes)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = tls.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def main() -> None:
    port_file = sys.argv[1]
    source = X509Source(WorkloadApiClient(os.environ["SPIFFE_ENDPOINT_SOCKET"]), timeout_in_seconds=15)
    guard = lanyard.Guard()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(listener.getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    while True:
        conn, _ = listener.accept()
        x = source.get_x509_context()
        svid = x.default_svid
        bundle = x.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        authorities = list(bundle.x509_authorities) if bundle else []
        ctx = lanyard.tls.context(svid.cert_chain, svid.private_key, authorities, server_side=True)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                leaf = tls.getpeercert(binary_form=True)
                req = json.loads(recv_line(tls))
                if leaf is None:
                    raise ValueError("no client certificate")
                d = guard.decide(req["tool"], chain=[leaf], arguments=req.get("arguments"),
                                 wait=float(req.get("wait", 0)))
                tls.sendall(json.dumps(dataclasses.asdict(d)).encode() + b"\n")
        except Exception as e:  # one bad connection does not stop the server
            print(f"tool server: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
