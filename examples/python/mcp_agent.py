#!/usr/bin/env python3
"""An AI agent in Python whose MCP tools sit behind lanyard-gate (the `lanyard` package).

It begins a task and talks to the gateway with the official MCP SDK's client over mutual
TLS with the task's X.509-SVID, as to any MCP server: the gateway decides every call, filters
the tool list and injects the tool's own credential, which this process never sees. One
JSON line per step of --steps: {"list": true}; {"call": NAME, "args": {...}}; {"wait": FILE}
(waits until FILE exists); {"raw": {"headers": {...}, "body": {...}}} (one POST outside the
SDK); {"http": {"method", "url", "json"}, "as": "x509" | "jwt"} (plain HTTP with the task
X.509-SVID, or with a task JWT-SVID for --jwt-audience as a bearer token and no certificate).

    mcp_agent.py --url https://gate:8443/mcp/crm --tool crm.read --steps '[{"list": true}]'
"""

import argparse
import asyncio
import json
import os
import ssl

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

import lanyard


def emit(obj):
    print(json.dumps(obj), flush=True)


async def plain_http(steps, task, jwt_audience, timeout):
    trust = ssl.create_default_context(cadata=lanyard.tls.pem(task.authorities()))
    trust.check_hostname = False  # SPIFFE authenticates by URI SAN, not host name
    async with httpx2.AsyncClient(verify=task.ssl_context(), timeout=timeout) as mtls, \
            httpx2.AsyncClient(verify=trust, timeout=timeout) as bare:
        for s in steps:
            h, client, headers = s["http"], mtls, dict(s["http"].get("headers", {}))
            if s.get("as") == "jwt":
                client, headers["authorization"] = bare, f"Bearer {task.jwt_svid(jwt_audience)}"
            try:
                r = await client.request(h.get("method", "GET"), h["url"], json=h.get("json"), headers=headers)
                emit({"http": h["url"], "status": r.status_code, "body": r.text})
            except Exception as e:
                emit({"step": s, "error": f"{type(e).__name__}: {e}"})


async def mcp_session(url, task, steps, mode, timeout):
    try:
        async with httpx2.AsyncClient(verify=task.ssl_context(), timeout=timeout) as http, \
                Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=timeout) as client:
            for s in steps:
                try:
                    if "list" in s:
                        r = await asyncio.wait_for(client.list_tools(), timeout)
                        emit({"tools": sorted(t.name for t in r.tools)})
                    elif "call" in s:
                        r = await asyncio.wait_for(client.call_tool(s["call"], s.get("args", {})), timeout)
                        emit({"call": s["call"], "is_error": bool(r.is_error),
                              "text": " ".join(getattr(c, "text", "") for c in r.content),
                              "meta": (r.meta or {}).get("dev.lanyard/decision")})
                    elif "wait" in s:
                        emit({"waiting": s["wait"]})
                        while not os.path.exists(s["wait"]):
                            await asyncio.sleep(0.05)
                    elif "raw" in s:
                        resp = await http.post(url, json=s["raw"]["body"], headers={
                            "accept": "application/json, text/event-stream", **s["raw"].get("headers", {})})
                        emit({"raw": resp.status_code, "body": resp.text})
                except Exception as e:  # each step says what became of it
                    emit({"step": s, "error": f"{type(e).__name__}: {e}"})
    except BaseException as e:
        emit({"session_error": f"{type(e).__name__}: {e}"})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="the MCP endpoint on lanyard-gate")
    p.add_argument("--type", default="crm.assist")
    p.add_argument("--tool", action="append", default=[])
    p.add_argument("--destination", action="append", default=[])
    p.add_argument("--jwt-audience", default="")
    p.add_argument("--steps", required=True, help="JSON list of steps")
    p.add_argument("--mode", default="legacy", help="MCP client mode: legacy, auto or 2026-07-28")
    p.add_argument("--timeout", type=float, default=20, help="seconds per step")
    p.add_argument("--deadline", type=float, default=120, help="seconds for the whole session")
    args = p.parse_args()
    steps = json.loads(args.steps)
    t = lanyard.task(args.type, args.tool, destinations=args.destination, ttl=120,
                     intent="answer a customer about their account")
    emit({"task_id": t.id, "granted": list(t.granted_tools)})
    if all("http" in s for s in steps):
        asyncio.run(plain_http(steps, t, args.jwt_audience, args.timeout))
    else:
        try:
            asyncio.run(asyncio.wait_for(mcp_session(args.url, t, steps, args.mode, args.timeout), args.deadline))
        except TimeoutError:
            emit({"session_error": f"no end within {args.deadline} s"})
    try:
        t.end()
    except lanyard.LanyardError as e:
        emit({"end_task": e.code})


if __name__ == "__main__":
    main()
