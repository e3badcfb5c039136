#!/usr/bin/env python3
"""An AI agent in Python that starts with nothing but its task's identity.

It begins a task on its node agent (lanyard.task.v1.TaskIdentity), asks the
node agent for a credential from a provider (lanyard.broker.v1
CredentialBroker/GetCredential: the server exchanges the task's JWT-SVID at
the provider's OAuth authorization server), calls an API with it, ends the
task, and watches the API refuse the token once the task is over (the
server revokes it at the authorization server). Prints one JSON object.

    python3 credential_agent.py --socket unix:///run/lanyard/agent/api.sock \\
        --provider github --scope repo:read --api https://api.example.com/whoami

Stubs come from the repository's .proto files, generated with grpcio-tools.
"""

import argparse
import json
import os
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request


def generate_stubs(proto_dir, out_dir):
    from grpc_tools import protoc
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    for proto in ["lanyard/task/v1/task.proto", "lanyard/broker/v1/broker.proto",
                  "workload.proto"]:
        rc = protoc.main([
            "protoc", f"-I{proto_dir}", f"-I{include}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
            os.path.join(proto_dir, proto),
        ])
        if rc != 0:
            raise SystemExit(f"protoc failed on {proto} with {rc}")
    sys.path.insert(0, out_dir)


def call_api(url, token, ctx):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", default=os.environ.get("SPIFFE_ENDPOINT_SOCKET", ""))
    p.add_argument("--type", default="report.generate")
    p.add_argument("--tool", action="append", default=[])
    p.add_argument("--ttl", type=int, default=120)
    p.add_argument("--on-behalf-of", default="")
    p.add_argument("--spiffe-id", default="")
    p.add_argument("--provider", default="github")
    p.add_argument("--scope", action="append", default=[])
    p.add_argument("--api", required=True, help="the API to call with the credential")
    p.add_argument("--api-ca", help="PEM CA of the API's certificate (default: system roots)")
    p.add_argument("--proto-dir", default=os.path.join(here, "..", "..", "proto", "proto"))
    args = p.parse_args()
    path = args.socket.removeprefix("unix://").removeprefix("unix:")
    if not path:
        raise SystemExit("--socket or SPIFFE_ENDPOINT_SOCKET is required")

    import grpc

    generate_stubs(args.proto_dir, tempfile.mkdtemp(prefix="lanyard-stubs-"))
    from lanyard.broker.v1 import broker_pb2 as bpb
    from lanyard.broker.v1 import broker_pb2_grpc as brpc
    from lanyard.task.v1 import task_pb2 as tpb
    from lanyard.task.v1 import task_pb2_grpc as trpc

    ctx = ssl.create_default_context(cafile=args.api_ca)
    md = [("workload.spiffe.io", "true")]
    out = {}
    with grpc.insecure_channel(f"unix:{path}") as channel:
        tasks = trpc.TaskIdentityStub(channel)
        broker = brpc.CredentialBrokerStub(channel)
        begun = tasks.BeginTask(tpb.BeginTaskRequest(
            spiffe_id=args.spiffe_id, task_type=args.type, tools=args.tool,
            ttl_seconds=args.ttl, intent="example task", on_behalf_of=args.on_behalf_of,
        ), metadata=md, timeout=15)
        out["task_id"] = begun.task_id
        try:
            cred = broker.GetCredential(bpb.GetCredentialRequest(
                name=args.provider, scopes=args.scope,
            ), metadata=md, timeout=20)
        except grpc.RpcError as e:
            out["refused"] = {"code": e.code().name, "details": e.details()}
            tasks.EndTask(tpb.EndTaskRequest(task_id=begun.task_id), metadata=md, timeout=15)
            print(json.dumps(out))
            return 1
        out["credential"] = {
            "type": bpb.CredentialType.Name(cred.type),
            "expires_at": cred.expires_at,
            "scopes": list(cred.scopes),
            "lease_id": cred.lease_id,
            "task_expires_at": begun.expires_at,
        }
        out["api_during_task"] = call_api(args.api, cred.credential, ctx)

        tasks.EndTask(tpb.EndTaskRequest(task_id=begun.task_id), metadata=md, timeout=15)
        deadline = time.monotonic() + 15
        while True:
            status, _ = call_api(args.api, cred.credential, ctx)
            if status != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        out["api_after_task"] = status
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
