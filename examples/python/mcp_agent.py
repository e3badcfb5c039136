#!/usr/bin/env python3
"""An AI agent in Python whose MCP tools sit behind lanyard-gate.

It begins a task on its node agent (lanyard.task.v1.TaskIdentity), takes the
task's X.509-SVID for mutual TLS, and talks to the gateway with the official
MCP SDK's client (Streamable HTTP) as it would to any MCP server: the gateway
decides every tool call, filters the tool list and injects the tool's own
credential, which this process never sees. It runs the steps it is given and
prints one JSON object per step.

    python3 mcp_agent.py --socket unix:///run/lanyard/agent/api.sock \\
        --url https://gate.example:8443/mcp/crm --tool crm.read \\
        --destination crm.internal \\
        --steps '[{"list": true}, {"call": "read_contact", "args": {"id": "42"}}]'

Steps: {"list": true}; {"call": NAME, "args": {...}}; {"wait": FILE} (prints
{"waiting": FILE} and waits until FILE exists); {"raw": {"headers": {...},
"body": {...}}} (one POST outside the SDK, e.g. with headers that disagree
with the body); {"http": {"method": M, "url": U, "json": {...}}, "as":
"x509" | "jwt"} (a plain HTTP request with the task X.509-SVID, or with the
task JWT-SVID as a bearer token and no client certificate: needs
--jwt-audience). Stubs come from the repository's .proto files
(grpcio-tools).
"""

import argparse
import asyncio
import json
import os
import shutil
import ssl
import sys
import tempfile
import time

from credential_agent import generate_stubs


def split_der(blob):
    """Concatenated DER certificates, one by one."""
    out, i = [], 0
    while i < len(blob):
        if blob[i] != 0x30:
            raise ValueError("not a DER sequence")
        n = blob[i + 1]
        if n < 0x80:
            hdr, length = 2, n
        else:
            k = n & 0x7F
            hdr, length = 2 + k, int.from_bytes(blob[i + 2:i + 2 + k], "big")
        out.append(blob[i:i + hdr + length])
        i += hdr + length
    return out


def pem_certs(ders):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return "".join(x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM).decode()
                   for d in ders)


def trust_context(svid):
    """A client context trusting the bundle, presenting no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=pem_certs(split_der(svid.bundle)))
    return ctx


def ssl_context(svid):
    """A client context presenting the task SVID and trusting the bundle.
    The standard library loads keys only from files: they live in a private
    directory for the moment it takes, then go."""
    from cryptography.hazmat.primitives import serialization

    pem = pem_certs
    key = serialization.load_der_private_key(svid.x509_svid_key, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # An X.509-SVID names a SPIFFE ID, not a DNS name: the chain is checked
    # against the trust bundle; the gateway's name is not a hostname.
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=pem(split_der(svid.bundle)))
    d = tempfile.mkdtemp(prefix="lanyard-svid-")
    try:
        os.chmod(d, 0o700)
        cert_path, key_path = os.path.join(d, "svid.pem"), os.path.join(d, "key.pem")
        with open(cert_path, "w") as f:
            f.write(pem(split_der(svid.x509_svid)))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        ctx.load_cert_chain(cert_path, key_path)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return ctx


def emit(obj):
    print(json.dumps(obj), flush=True)


async def plain_http(steps, ctx, trust, jwt, timeout):
    import httpx2

    async with httpx2.AsyncClient(verify=ctx, timeout=timeout) as mtls, \
            httpx2.AsyncClient(verify=trust, timeout=timeout) as bare:
        for s in steps:
            h = s["http"]
            client, headers = mtls, dict(h.get("headers", {}))
            if s.get("as") == "jwt":
                client = bare
                headers["authorization"] = f"Bearer {jwt}"
            try:
                r = await client.request(h.get("method", "GET"), h["url"], json=h.get("json"),
                                         headers=headers)
                emit({"http": h["url"], "status": r.status_code, "body": r.text})
            except Exception as e:
                emit({"step": s, "error": f"{type(e).__name__}: {e}"})


async def run(url, ctx, steps, mode, timeout):
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(verify=ctx, timeout=timeout)
    try:
        async with Client(streamable_http_client(url, http_client=http), mode=mode,
                          read_timeout_seconds=timeout) as client:
            for s in steps:
                try:
                    if "list" in s:
                        r = await asyncio.wait_for(client.list_tools(), timeout)
                        emit({"tools": sorted(t.name for t in r.tools)})
                    elif "call" in s:
                        r = await asyncio.wait_for(client.call_tool(s["call"], s.get("args", {})), timeout)
                        text = " ".join(getattr(c, "text", "") for c in r.content)
                        emit({"call": s["call"], "is_error": bool(r.is_error), "text": text,
                              "meta": (r.meta or {}).get("dev.lanyard/decision")})
                    elif "wait" in s:
                        emit({"waiting": s["wait"]})
                        while not os.path.exists(s["wait"]):
                            await asyncio.sleep(0.05)
                    elif "raw" in s:
                        resp = await http.post(url, json=s["raw"]["body"], headers={
                            "accept": "application/json, text/event-stream",
                            **s["raw"].get("headers", {})})
                        emit({"raw": resp.status_code, "body": resp.text})
                except Exception as e:  # each step says what became of it
                    emit({"step": s, "error": f"{type(e).__name__}: {e}"})
    except BaseException as e:
        emit({"session_error": f"{type(e).__name__}: {e}"})
    finally:
        await http.aclose()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", default=os.environ.get("SPIFFE_ENDPOINT_SOCKET", ""))
    p.add_argument("--url", required=True, help="the MCP endpoint on lanyard-gate")
    p.add_argument("--type", default="crm.assist")
    p.add_argument("--tool", action="append", default=[])
    p.add_argument("--destination", action="append", default=[])
    p.add_argument("--ttl", type=int, default=120)
    p.add_argument("--jwt-audience", action="append", default=[])
    p.add_argument("--steps", required=True, help="JSON list of steps")
    p.add_argument("--mode", default="legacy", help="MCP client mode: legacy, auto or 2026-07-28")
    p.add_argument("--timeout", type=float, default=20, help="seconds per step")
    p.add_argument("--deadline", type=float, default=120, help="seconds for the whole session")
    p.add_argument("--proto-dir", default=os.path.join(here, "..", "..", "proto", "proto"))
    args = p.parse_args()
    path = args.socket.removeprefix("unix://").removeprefix("unix:")
    if not path:
        raise SystemExit("--socket or SPIFFE_ENDPOINT_SOCKET is required")

    import grpc

    generate_stubs(args.proto_dir, tempfile.mkdtemp(prefix="lanyard-stubs-"))
    from lanyard.task.v1 import task_pb2 as tpb
    from lanyard.task.v1 import task_pb2_grpc as trpc

    md = [("workload.spiffe.io", "true")]
    with grpc.insecure_channel(f"unix:{path}") as channel:
        tasks = trpc.TaskIdentityStub(channel)
        begun = tasks.BeginTask(tpb.BeginTaskRequest(
            task_type=args.type, tools=args.tool, destinations=args.destination,
            ttl_seconds=args.ttl, intent="answer a customer about their account",
            jwt_audiences=args.jwt_audience,
        ), metadata=md, timeout=15)
        emit({"task_id": begun.task_id, "granted": list(begun.granted_tools)})
        ctx = ssl_context(begun.x509_svid)
        steps = json.loads(args.steps)
        if all("http" in s for s in steps):
            asyncio.run(plain_http(steps, ctx, trust_context(begun.x509_svid),
                                   begun.jwt_svid.svid, args.timeout))
        else:
            try:
                asyncio.run(asyncio.wait_for(run(args.url, ctx, steps, args.mode, args.timeout),
                                             args.deadline))
            except TimeoutError:
                emit({"session_error": f"no end within {args.deadline} s"})
        try:
            tasks.EndTask(tpb.EndTaskRequest(task_id=begun.task_id), metadata=md, timeout=15)
        except grpc.RpcError as e:
            emit({"end_task": e.code().name})
    return 0


if __name__ == "__main__":
    sys.exit(main())
