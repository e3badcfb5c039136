"""Two tool servers for the tests, guarded with the package and served by
lanyard.asgi.serve (uvicorn, mutual TLS with this process's SVID): a
FastAPI service whose endpoints are ``@guard.tool`` functions, and an MCP
server (the official SDK) with lanyard.mcp.GuardMiddleware. Its process
must be an enforcement point. Writes ``{"api": PORT, "mcp": PORT}`` to
PORT_FILE once both listen.

    python guarded_service.py PORT_FILE
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from typing import Any

from fastapi import FastAPI
from mcp.server.mcpserver import MCPServer

import lanyard
import lanyard.asgi
import lanyard.mcp

guard = lanyard.Guard()

api = FastAPI()
api.add_middleware(lanyard.asgi.GuardMiddleware, exempt=["/health"])


@api.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@api.get("/contacts/{id}")
@guard.tool("crm.read")
async def read_contact(id: str) -> dict[str, Any]:
    caller = lanyard.current_caller()
    return {"id": id, "name": "ACME Corp", "by": "jwt" if caller and caller.jwt else "x509"}


@api.post("/mail")
@guard.tool("email.send")
def send_mail(to: str, subject: str = "") -> dict[str, str]:
    # A sync endpoint: FastAPI runs it in a worker thread, the caller with it.
    return {"sent": to}


@api.post("/shell")
@guard.tool("shell.exec")
async def shell(cmd: str) -> dict[str, str]:
    raise AssertionError("a denied call reached the tool")


mcp = MCPServer("crm", middleware=[lanyard.mcp.GuardMiddleware(
    guard, tools={"read_contact": "crm.read", "send_mail": "email.send", "run_shell": "shell.exec"})])


@mcp.tool(name="read_contact")
def mcp_read_contact(id: str) -> str:
    """Reads one contact."""
    return json.dumps({"id": id, "name": "ACME Corp"})


@mcp.tool(name="send_mail")
def mcp_send_mail(to: str) -> str:
    """Sends one email."""
    return f"sent to {to}"


@mcp.tool()
def run_shell(cmd: str) -> str:
    raise AssertionError("a denied call reached the tool")


@mcp.tool()
def unmapped(x: str = "") -> str:
    raise AssertionError("an unmapped tool ran")


def bound() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


async def main(port_file: str) -> None:
    a, m = bound(), bound()
    # Connections wait in the listen queue until the servers take them.
    with open(port_file + ".tmp", "w") as f:
        json.dump({"api": a.getsockname()[1], "mcp": m.getsockname()[1]}, f)
    os.rename(port_file + ".tmp", port_file)
    mcp_app = lanyard.asgi.GuardMiddleware(mcp.streamable_http_app(json_response=True))
    await asyncio.gather(
        lanyard.asgi.aserve(api, sockets=[a], log_level="warning"),
        lanyard.asgi.aserve(mcp_app, sockets=[m], log_level="warning"),
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
