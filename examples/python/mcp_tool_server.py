#!/usr/bin/env python3
"""An MCP tool server built with the official MCP SDK, as any catalogue
server is: it knows nothing of Lanyard. It serves a small CRM over the
Streamable HTTP transport on a loopback port (and a plain HTTP API under
/api/) and, for the tests, records the credential each request carried
(served at /_log, never through MCP).

    python3 mcp_tool_server.py --port-file /tmp/crm.port [--json-response]

Behind lanyard-gate, the gateway decides each call and injects the CRM's
credential; the AI agent never holds it.
"""

import argparse
import json
import os
import socket

import uvicorn
from mcp.server.mcpserver import MCPServer

CONTACTS = {"42": {"name": "ACME Corp", "stage": "renewal"}, "7": {"name": "Globex", "stage": "lead"}}


def build(json_response):
    mcp = MCPServer("crm")

    @mcp.tool()
    def read_contact(id: str) -> str:
        """Reads one contact."""
        c = CONTACTS.get(id)
        return json.dumps({"id": id, **c}) if c else f"no contact {id}"

    @mcp.tool()
    def delete_contact(id: str) -> str:
        """Deletes one contact."""
        return f"deleted {id}" if CONTACTS.pop(id, None) else f"no contact {id}"

    @mcp.tool()
    def send_email(to: str, body: str = "") -> str:
        """Sends an email."""
        return f"sent to {to}"

    @mcp.tool()
    def debug_dump() -> str:
        """A tool nobody mapped to a Lanyard tool."""
        return json.dumps(CONTACTS)

    return mcp.streamable_http_app(json_response=json_response)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port-file", required=True)
    p.add_argument("--json-response", action="store_true")
    args = p.parse_args()
    app = build(args.json_response)
    seen = []

    async def recorder(scope, receive, send):
        if scope["type"] == "http":
            if scope["path"] == "/_log":
                body = json.dumps(seen).encode()
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            record = {"method": scope["method"], "path": scope["path"],
                      "query": scope.get("query_string", b"").decode(),
                      "authorization": headers.get("authorization"),
                      "x_api_key": headers.get("x-api-key"),
                      "mcp_method": headers.get("mcp-method"),
                      "session": headers.get("mcp-session-id")}
            seen.append(record)
            if scope["path"].startswith("/api/"):
                # A plain HTTP API beside the MCP endpoint: it answers what
                # it was asked (and nothing of the credential).
                body = json.dumps({"method": record["method"], "path": record["path"],
                                   "query": record["query"]}).encode()
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, args.port_file)
    uvicorn.Server(uvicorn.Config(recorder, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    main()
