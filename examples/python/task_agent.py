#!/usr/bin/env python3
"""An AI agent in Python that works inside a Lanyard task, with the
`lanyard` package (sdk/python).

It begins a task, sees any SPIFFE client (py-spiffe here) get the task SVID
as its default SVID, uses it for mutual TLS with Python's own ssl module
against a tool server that reads the peer's SPIFFE ID and task claims,
fetches a task JWT-SVID, and ends the task. Prints one JSON object.

    SPIFFE_ENDPOINT_SOCKET=unix:///run/lanyard/agent/api.sock \\
        python3 task_agent.py --type report.generate --tool crm.read --audience crm
"""

import argparse
import base64
import json
import socket
import threading

from spiffe import WorkloadApiClient

import lanyard


def tool_server(task, listener, seen):
    """A one-shot mutual-TLS tool server: who called, with which task?"""
    conn, _ = listener.accept()
    with task.ssl_context(server_side=True).wrap_socket(conn, server_side=True) as tls:
        der = tls.getpeercert(binary_form=True)
        seen["peer_spiffe_id"] = lanyard.tls.peer_spiffe_id(der)
        seen["peer_task_id"] = lanyard.claims.from_certificate(der).task_id
        tls.sendall(b"ok\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", help="the node agent (default: SPIFFE_ENDPOINT_SOCKET)")
    p.add_argument("--type", default="report.generate")
    p.add_argument("--tool", action="append", default=[])
    p.add_argument("--ttl", type=int, default=120)
    p.add_argument("--audience", default="tools.example.org")
    p.add_argument("--on-behalf-of", default="")
    args = p.parse_args()
    try:
        t = lanyard.task(args.type, args.tool, ttl=args.ttl, intent="example task",
                         on_behalf_of=args.on_behalf_of, socket=args.socket)
    except lanyard.TaskDenied as e:
        print(json.dumps({"denied": {"reason": e.reason, "policy_ids": e.policy_ids}}))
        return
    with t:
        out = {"task_id": t.id, "granted_tools": list(t.granted_tools)}
        # Any SPIFFE client now gets the task SVID as its default SVID.
        with WorkloadApiClient(t.endpoint) as client:
            default = client.fetch_x509_svid()
        out["default_spiffe_id"] = str(default.spiffe_id)
        out["default_task_id"] = lanyard.claims.from_certificate(default.leaf).task_id

        listener = socket.create_server(("127.0.0.1", 0))
        seen = {}
        server = threading.Thread(target=tool_server, args=(t, listener, seen))
        server.start()
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with t.ssl_context().wrap_socket(raw) as tls:
                out["tool_reply"] = tls.recv(16).decode().strip()
        server.join(10)
        out["tool_server"] = seen

        payload = t.jwt_svid(audience=args.audience).split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        out["jwt_claims"] = {k: claims.get(k) for k in ("sub", "txn", "scope", "tctx")}
    out["ended"] = t.ended
    print(json.dumps(out))


if __name__ == "__main__":
    main()
