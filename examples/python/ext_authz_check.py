#!/usr/bin/env python3
"""Asks lanyard-gate's Envoy external-authorization service what Envoy would ask, with a
client from Envoy's own protos (`xds-protos`): one CheckRequest per case of --cases (JSON
list of {"name", "method", "path", "headers", "body", "certificate", "partial"}), as Envoy
builds it with `include_peer_certificate`, for this process's task SVID; a JSON line each."""

import argparse
import json
import urllib.parse

import grpc
from envoy.service.auth.v3 import attribute_context_pb2 as ac, external_auth_pb2 as ea, external_auth_pb2_grpc as eag

import lanyard

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--agent-socket", help="the node agent (default: SPIFFE_ENDPOINT_SOCKET)")
p.add_argument("--authz-socket", required=True)
p.add_argument("--type", default="crm.assist")
for many in ("--tool", "--destination"):
    p.add_argument(many, action="append", default=[])
p.add_argument("--cases", required=True)
args = p.parse_args()
with lanyard.task(args.type, args.tool, destinations=args.destination, ttl=120, intent="check calls through Envoy",
                  socket=args.agent_socket) as t, grpc.insecure_channel(f"unix:{args.authz_socket}") as authz:
    cert = urllib.parse.quote(lanyard.tls.pem(t.svid().cert_chain), safe="")
    for case in json.loads(args.cases):
        body = case.get("body", "") if isinstance(case.get("body", ""), str) else json.dumps(case["body"])
        headers, size = {k.lower(): v for k, v in case.get("headers", {}).items()}, len(body.encode())
        if case.get("partial"):
            headers["x-envoy-auth-partial-body"], body = "true", body[: len(body) // 2]
        http = ac.AttributeContext.HttpRequest(id="1", method=case.get("method", "POST"), path=case["path"], size=size,
                                               host="gate.test", scheme="https", protocol="HTTP/1.1", headers=headers, body=body)
        source = ac.AttributeContext.Peer(certificate=cert if case.get("certificate", True) else "")
        r = eag.AuthorizationStub(authz).Check(ea.CheckRequest(attributes=ac.AttributeContext(
            source=source, request=ac.AttributeContext.Request(http=http))), timeout=15)
        out = {"name": case["name"], "code": r.status.code}
        if r.HasField("ok_response"):
            out.update(set={h.header.key: h.header.value for h in r.ok_response.headers},
                       remove=list(r.ok_response.headers_to_remove))
        if r.HasField("denied_response"):
            out.update(http_status=r.denied_response.status.code, body=r.denied_response.body)
        print(json.dumps(out), flush=True)
