"""Fixtures: a real lanyard-server and lanyard-agent in a temporary
directory, with an entry for this Python interpreter (the agent attests
the process by uid and program, as it would any AI agent).

The binaries come from ``LANYARD_BIN_DIR`` or the repository's
``target/debug`` (``cargo build --bin lanyard-server --bin lanyard-agent``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
TD = "example.org"
NODE = f"spiffe://{TD}/node/py"
AGENT_ID = f"spiffe://{TD}/agent/py"
TOOL_ID = f"spiffe://{TD}/tool/py"

POLICY = """
@id("begin")
permit (principal, action == Lanyard::Action::"BeginTask", resource);

@id("tools")
permit (principal, action == Lanyard::Action::"UseTool", resource);

@id("credentials")
permit (principal, action == Lanyard::Action::"GetCredential", resource);

@id("delegate")
permit (principal, action == Lanyard::Action::"Delegate", resource);

@id("no-mail-out")
@reason("no email outside example.com")
forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
when { context.at_call && context.call.contains("to=eve@outside.example") };

@id("no-shell")
@reason("shells are never granted")
forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"shell.exec");

@id("mail-partner")
@approval("any-operator")
permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
when { context.at_call && context.call.contains("to=partner@outside.example") };

@id("board-reports")
@approval("any-operator")
permit (principal, action == Lanyard::Action::"BeginTask", resource == Lanyard::TaskType::"report.generate")
when { context.on_behalf_of == "user:board@example.com" };
"""

#: The one declared approver.
APPROVER = "user:alice@example.com"
#: Console sessions last this long (seconds): short, so that a test sees
#: one expire.
CONSOLE_SESSION = 10


def _bin(name: str) -> str:
    d = Path(os.environ.get("LANYARD_BIN_DIR", REPO / "target" / "debug"))
    p = d / name
    if not p.exists():
        pytest.fail(f"{p} not found: run `cargo build --bin lanyard-server --bin lanyard-agent` or set LANYARD_BIN_DIR")
    return str(p)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_socket(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"{path.name} did not appear; log:\n{log.read_text()}")


@dataclass
class Stack:
    dir: Path
    admin: Path
    socket: Path
    server_bin: str
    #: A copy of this interpreter: another program to the agent, whose
    #: entry is an enforcement point (a tool server written in Python).
    tool_python: Path
    #: The operator console's base URL.
    console: str

    def admin_cmd(self, *args: str) -> str:
        """Runs ``lanyard-server ARGS --admin-socket ...``; its output."""
        out = subprocess.run(
            [self.server_bin, *args, "--admin-socket", str(self.admin)],
            capture_output=True, text=True, timeout=30,
        )
        if out.returncode != 0:
            raise AssertionError(f"lanyard-server {' '.join(args)}: {out.stderr}")
        return out.stdout


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    server_bin, agent_bin = _bin("lanyard-server"), _bin("lanyard-agent")
    d = Path(tempfile.mkdtemp(prefix="lanyard-py-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port = _free_port()
        admin = d / "admin.sock"
        slog = d / "server.log"
        config = d / "server.toml"
        config.write_text(
            # The tests share one AI agent process: its denials, across
            # tests, must not quarantine it.
            f'console_session_ttl = "{CONSOLE_SESSION}s"\nquarantine_max_denials = 1000\n'
            f'[[approver]]\nname = "{APPROVER}"\n')
        console_port = _free_port()
        procs.append(subprocess.Popen(
            [server_bin, "run", "--config", str(config), "--trust-domain", TD,
             "--console-bind", f"127.0.0.1:{console_port}",
             "--data-dir", str(d / "server"),
             "--bind", f"127.0.0.1:{port}", "--admin-socket", str(admin)],
            stdout=slog.open("wb"), stderr=subprocess.STDOUT))
        _wait_socket(admin, procs[-1], slog)
        tool_python = d / "python-tool"
        shutil.copy(os.path.realpath(sys.executable), tool_python)
        s = Stack(d, admin, d / "agent.sock", server_bin, tool_python,
                  f"http://127.0.0.1:{console_port}")
        token = s.admin_cmd("token", "generate", "--agent-id", NODE).strip()
        (d / "bundle.pem").write_text(s.admin_cmd("bundle", "show", "--format", "pem"))
        policy = d / "policy.cedar"
        policy.write_text(POLICY)
        s.admin_cmd("policy", "set", str(policy))
        s.admin_cmd("credential", "add", "internal", "--kind", "txn-token", "--audience", f"spiffe://{TD}")
        # This interpreter, as the agent sees it (/proc/PID/exe).
        exe = os.path.realpath(sys.executable)
        s.admin_cmd(
            "entry", "create", "--spiffe-id", AGENT_ID, "--parent-id", NODE,
            "--selector", f"unix:uid:{os.getuid()}", "--selector", f"unix:path:{exe}",
            "--x509-ttl", "10s",
            "--allow-task-type", "report.generate",
            "--allow-tool", "crm.read", "--allow-tool", "email.send", "--allow-tool", "shell.exec",
            "--allow-credential", "internal", "--max-task-ttl", "10m",
        )
        s.admin_cmd(
            "entry", "create", "--spiffe-id", TOOL_ID, "--parent-id", NODE,
            "--selector", f"unix:uid:{os.getuid()}", "--selector", f"unix:path:{tool_python}",
            "--enforcement-point", "--x509-ttl", "10s",
        )
        alog = d / "agent.log"
        agent_config = d / "agent.toml"
        agent_config.write_text("[quarantine]\nmax_denials = 1000\n")
        procs.append(subprocess.Popen(
            [agent_bin, "run", "--config", str(agent_config), "--server", f"127.0.0.1:{port}", "--trust-domain", TD,
             "--join-token", token, "--trust-bundle", str(d / "bundle.pem"),
             "--socket", str(s.socket), "--data-dir", str(d / "agent")],
            stdout=alog.open("wb"), stderr=subprocess.STDOUT))
        _wait_socket(s.socket, procs[-1], alog)
        os.environ["SPIFFE_ENDPOINT_SOCKET"] = f"unix://{s.socket}"
        # The entry has reached the agent once this process is served.
        from spiffe import WorkloadApiClient

        client = WorkloadApiClient(f"unix://{s.socket}")
        deadline = time.monotonic() + 30
        while True:
            try:
                client.fetch_x509_svid(timeout=5)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        client.close()
        yield s
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["rm", "-rf", str(d)], check=False)


def _tool_process(stack: Stack, script: str, name: str) -> Iterator[str]:
    """Runs ``tests/SCRIPT PORT_FILE`` with the copied interpreter (an
    enforcement point) until the session ends; yields what it wrote to
    PORT_FILE."""
    port_file = stack.dir / f"{name}.port"
    env = dict(os.environ)
    # The copied interpreter finds this environment's packages by path.
    env["PYTHONPATH"] = os.pathsep.join([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    log = stack.dir / f"{name}.log"
    proc = subprocess.Popen(
        [str(stack.tool_python), str(Path(__file__).with_name(script)), str(port_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{script} did not start: {log.read_text()}")
            time.sleep(0.05)
        yield port_file.read_text()
    finally:
        proc.terminate()
        proc.wait(10)


#: The tool server written with lanyard.Guard (tests/tool_server.py), run by
#: the copied interpreter (an enforcement point); its port. One per session.
@pytest.fixture(scope="session")
def tool_port(stack: Stack) -> Iterator[int]:
    for text in _tool_process(stack, "tool_server.py", "tool"):
        yield int(text)


@dataclass
class Guarded:
    """The FastAPI service and the MCP server of tests/guarded_service.py."""

    api: str
    mcp: str
    log: Path


@pytest.fixture(scope="session")
def guarded(stack: Stack) -> Iterator[Guarded]:
    for text in _tool_process(stack, "guarded_service.py", "guarded"):
        ports = json.loads(text)
        yield Guarded(f"https://127.0.0.1:{ports['api']}", f"https://127.0.0.1:{ports['mcp']}/mcp",
                      stack.dir / "guarded.log")
