#!/usr/bin/env python3
"""Asks lanyard-gate's Envoy external-authorization service what Envoy
would ask, with a gRPC client generated from Envoy's own protos (the
`xds-protos` package): one CheckRequest per case, as Envoy builds it with
`with_request_body` and `include_peer_certificate`. The caller's
certificate is a task X.509-SVID this process begins a task for. Prints one
JSON object per case: the gRPC status code in the answer, the HTTP status
of a denial, the headers an OK sets and removes, the denial's body.

    python3 ext_authz_check.py --agent-socket unix:///run/lanyard/agent/api.sock \\
        --authz-socket /run/lanyard-gate/ext_authz.sock --path /mcp/crm \\
        --tool crm.read --destination 127.0.0.1 --cases '[...]'

A case: {"name": N, "method": "POST", "path": P, "headers": {...},
"body": {...} | "text", "certificate": true|false, "partial": false}.
"""

import argparse
import json
import os
import sys
import tempfile
import urllib.parse

from credential_agent import generate_stubs
from mcp_agent import pem_certs, split_der


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent-socket", default=os.environ.get("SPIFFE_ENDPOINT_SOCKET", ""))
    p.add_argument("--authz-socket", required=True)
    p.add_argument("--type", default="crm.assist")
    p.add_argument("--tool", action="append", default=[])
    p.add_argument("--destination", action="append", default=[])
    p.add_argument("--cases", required=True)
    p.add_argument("--proto-dir", default=os.path.join(here, "..", "..", "proto", "proto"))
    args = p.parse_args()

    import grpc
    from envoy.service.auth.v3 import attribute_context_pb2 as ac
    from envoy.service.auth.v3 import external_auth_pb2 as ea
    from envoy.service.auth.v3 import external_auth_pb2_grpc as eag

    generate_stubs(args.proto_dir, tempfile.mkdtemp(prefix="lanyard-stubs-"))
    from lanyard.task.v1 import task_pb2 as tpb
    from lanyard.task.v1 import task_pb2_grpc as trpc

    md = [("workload.spiffe.io", "true")]
    agent = args.agent_socket.removeprefix("unix://").removeprefix("unix:")
    with grpc.insecure_channel(f"unix:{agent}") as ch:
        tasks = trpc.TaskIdentityStub(ch)
        begun = tasks.BeginTask(tpb.BeginTaskRequest(
            task_type=args.type, tools=args.tool, destinations=args.destination,
            ttl_seconds=120, intent="check calls through Envoy"), metadata=md, timeout=15)
        cert = urllib.parse.quote(pem_certs(split_der(begun.x509_svid.x509_svid)), safe="")
        with grpc.insecure_channel(f"unix:{args.authz_socket}") as authz:
            stub = eag.AuthorizationStub(authz)
            for case in json.loads(args.cases):
                body = case.get("body", "")
                body = body if isinstance(body, str) else json.dumps(body)
                headers = {k.lower(): v for k, v in case.get("headers", {}).items()}
                size = len(body.encode())
                if case.get("partial"):
                    headers["x-envoy-auth-partial-body"] = "true"
                    body = body[: len(body) // 2]
                http = ac.AttributeContext.HttpRequest(
                    id="1", method=case.get("method", "POST"), path=case["path"],
                    host="gate.test", scheme="https", protocol="HTTP/1.1",
                    headers=headers, body=body, size=size)
                source = ac.AttributeContext.Peer(
                    certificate=cert if case.get("certificate", True) else "")
                req = ea.CheckRequest(attributes=ac.AttributeContext(
                    source=source, request=ac.AttributeContext.Request(http=http)))
                r = stub.Check(req, timeout=15)
                out = {"name": case["name"], "code": r.status.code}
                if r.HasField("ok_response"):
                    out["set"] = {h.header.key: h.header.value for h in r.ok_response.headers}
                    out["remove"] = list(r.ok_response.headers_to_remove)
                if r.HasField("denied_response"):
                    out["http_status"] = r.denied_response.status.code
                    out["body"] = r.denied_response.body
                print(json.dumps(out), flush=True)
        tasks.EndTask(tpb.EndTaskRequest(task_id=begun.task_id), metadata=md, timeout=15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
