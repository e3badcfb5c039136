#!/usr/bin/env python3
"""An AI agent in Python that starts with nothing but its task's identity,
with the `lanyard` package (sdk/python).

It begins a task, asks the node agent for a credential from a provider
(the server exchanges the task's JWT-SVID at the provider's OAuth
authorization server), calls an API with it, ends the task, and watches
the API refuse the token once the task is over (the server revokes it at
the authorization server). Prints one JSON object.

    SPIFFE_ENDPOINT_SOCKET=unix:///run/lanyard/agent/api.sock python3 credential_agent.py \\
        --provider github --scope repo:read --api https://api.example.com/whoami
"""

import argparse
import json
import time

import requests

import lanyard


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", help="the node agent (default: SPIFFE_ENDPOINT_SOCKET)")
    p.add_argument("--type", default="report.generate")
    p.add_argument("--tool", action="append", default=[])
    p.add_argument("--on-behalf-of", default="")
    p.add_argument("--spiffe-id", default="")
    p.add_argument("--provider", default="github")
    p.add_argument("--scope", action="append", default=[])
    p.add_argument("--api", required=True, help="the API to call with the credential")
    p.add_argument("--api-ca", default=True, help="PEM CA of the API's certificate (default: system roots)")
    args = p.parse_args()

    def api(cred):
        r = requests.get(args.api, headers=cred.headers(), verify=args.api_ca, timeout=10)
        return r.status_code, r.json() if r.ok else None

    with lanyard.task(args.type, args.tool, ttl=120, intent="example task", spiffe_id=args.spiffe_id,
                      on_behalf_of=args.on_behalf_of, socket=args.socket) as t:
        out = {"task_id": t.id}
        try:
            cred = t.credential(args.provider, scopes=args.scope)
        except lanyard.LanyardError as e:
            print(json.dumps({**out, "refused": {"code": e.code, "details": e.reason}}))
            return 1
        out["credential"] = {"kind": cred.kind, "expires_at": int(cred.expires_at.timestamp()),
                             "scopes": list(cred.scopes), "task_expires_at": int(t.expires_at.timestamp())}
        out["api_during_task"] = api(cred)
    deadline = time.monotonic() + 15
    while (status := api(cred)[0]) == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    out["api_after_task"] = status
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
