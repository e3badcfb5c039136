#!/usr/bin/env python3
"""An AI agent in Python that works inside a Lanyard task.

It begins a task on its node agent (lanyard.task.v1.TaskIdentity), picks the
task SVID up through the standard SPIFFE Workload API (it is the default SVID
while the task runs), uses it for mutual TLS with Python's own ssl module
(OpenSSL) against a tool server that checks the peer's SPIFFE ID and task
claims, fetches a task JWT, and ends the task. Prints one JSON object.

    python3 task_agent.py --socket unix:///run/lanyard/agent/api.sock \\
        --type report.generate --tool crm.read --audience crm

Stubs come from the repository's .proto files, generated with grpcio-tools.
"""

import argparse
import base64
import json
import os
import socket as sock
import ssl
import sys
import tempfile
import threading

# The task claims extension's OID, 2.25.187691679452939855309652420807227979439,
# as DER (tag, length, content).
TASK_CLAIMS_OID_DER = bytes.fromhex("0614") + bytes.fromhex(
    "69829ab48d90cfdbeabb97a3e9b483cfcfe6ed2f"
)


def generate_stubs(proto_dir, out_dir):
    from grpc_tools import protoc
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    for proto in ["workload.proto", "lanyard/task/v1/task.proto"]:
        rc = protoc.main([
            "protoc", f"-I{proto_dir}", f"-I{include}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
            os.path.join(proto_dir, proto),
        ])
        if rc != 0:
            raise SystemExit(f"protoc failed on {proto} with {rc}")
    sys.path.insert(0, out_dir)


def pem(kind, der):
    b = base64.encodebytes(der).decode().replace("\n", "")
    lines = "\n".join(b[i:i + 64] for i in range(0, len(b), 64))
    return f"-----BEGIN {kind}-----\n{lines}\n-----END {kind}-----\n"


def split_der(blob):
    """Concatenated DER certificates -> list."""
    out, i = [], 0
    while i < len(blob):
        if blob[i + 1] & 0x80:
            n = blob[i + 1] & 0x7F
            length = int.from_bytes(blob[i + 2:i + 2 + n], "big")
            end = i + 2 + n + length
        else:
            end = i + 2 + blob[i + 1]
        out.append(blob[i:end])
        i = end
    return out


def write_svid(svid, d):
    chain = split_der(svid.x509_svid)
    paths = {
        "cert": os.path.join(d, "svid.pem"),
        "key": os.path.join(d, "svid.key"),
        "bundle": os.path.join(d, "bundle.pem"),
    }
    with open(paths["cert"], "w") as f:
        f.write("".join(pem("CERTIFICATE", c) for c in chain))
    fd = os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pem("PRIVATE KEY", svid.x509_svid_key))
    with open(paths["bundle"], "w") as f:
        f.write("".join(pem("CERTIFICATE", c) for c in split_der(svid.bundle)))
    return paths


def tool_server(paths, result):
    """A one-shot mTLS tool server: requires a client certificate from the
    trust bundle and reports the peer's SPIFFE ID and whether it carries
    task claims for the expected task."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(paths["bundle"])
    ctx.load_cert_chain(paths["cert"], paths["key"])
    listener = sock.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    result["port"] = listener.getsockname()[1]
    result["ready"].set()
    conn, _ = listener.accept()
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            peer = tls.getpeercert()
            der = tls.getpeercert(binary_form=True)
            uris = [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]
            result["peer_spiffe_id"] = uris[0] if uris else None
            result["peer_has_task_claims"] = TASK_CLAIMS_OID_DER in der
            result["peer_task_id_in_cert"] = result["task_id"].encode() in der
            tls.sendall(b"ok\n")
    except ssl.SSLError as e:
        result["server_error"] = str(e)
    finally:
        listener.close()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", default=os.environ.get("SPIFFE_ENDPOINT_SOCKET", ""))
    p.add_argument("--type", default="report.generate")
    p.add_argument("--tool", action="append", default=[])
    p.add_argument("--ttl", type=int, default=120)
    p.add_argument("--audience", default="tools.example.org")
    p.add_argument("--on-behalf-of", default="")
    p.add_argument("--proto-dir", default=os.path.join(here, "..", "..", "proto", "proto"))
    args = p.parse_args()
    path = args.socket.removeprefix("unix://").removeprefix("unix:")
    if not path:
        raise SystemExit("--socket or SPIFFE_ENDPOINT_SOCKET is required")

    import grpc

    stubs = tempfile.mkdtemp(prefix="lanyard-stubs-")
    generate_stubs(args.proto_dir, stubs)
    import workload_pb2 as wpb
    import workload_pb2_grpc as wrpc
    from lanyard.task.v1 import task_pb2 as tpb
    from lanyard.task.v1 import task_pb2_grpc as trpc

    md = [("workload.spiffe.io", "true")]
    out = {}
    with grpc.insecure_channel(f"unix:{path}") as channel:
        tasks = trpc.TaskIdentityStub(channel)
        api = wrpc.SpiffeWorkloadAPIStub(channel)
        try:
            begun = tasks.BeginTask(tpb.BeginTaskRequest(
                task_type=args.type, tools=args.tool, ttl_seconds=args.ttl,
                intent="example task", on_behalf_of=args.on_behalf_of,
                jwt_audiences=[args.audience],
            ), metadata=md, timeout=15)
        except grpc.RpcError as e:
            print(json.dumps({"denied": {"code": e.code().name, "details": e.details()}}))
            return
        out["task_id"] = begun.task_id
        out["granted_tools"] = list(begun.granted_tools)
        out["begin_hint"] = begun.x509_svid.hint
        out["begin_jwt"] = bool(begun.jwt_svid.svid)

        # Any SPIFFE client now gets the task SVID as its default SVID.
        stream = api.FetchX509SVID(wpb.X509SVIDRequest(), metadata=md, timeout=15)
        first = next(iter(stream))
        stream.cancel()
        default = first.svids[0]
        out["default_hint"] = default.hint
        out["default_spiffe_id"] = default.spiffe_id

        # Mutual TLS with OpenSSL on both sides, authenticated by the task SVID.
        d = tempfile.mkdtemp(prefix="lanyard-task-")
        paths = write_svid(default, d)
        server = {"ready": threading.Event(), "task_id": begun.task_id}
        t = threading.Thread(target=tool_server, args=(paths, server), daemon=True)
        t.start()
        server["ready"].wait(10)
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.check_hostname = False  # SPIFFE authenticates by URI SAN, not host name
        cctx.load_verify_locations(paths["bundle"])
        cctx.load_cert_chain(paths["cert"], paths["key"])
        with sock.create_connection(("127.0.0.1", server["port"]), timeout=10) as raw:
            with cctx.wrap_socket(raw) as tls:
                out["tool_reply"] = tls.recv(16).decode().strip()
        t.join(10)
        out["tool_server"] = {k: v for k, v in server.items() if k not in ("ready",)}

        jwt = api.FetchJWTSVID(wpb.JWTSVIDRequest(audience=[args.audience]),
                               metadata=md, timeout=15)
        payload = jwt.svids[0].svid.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        out["jwt_claims"] = {k: claims.get(k) for k in ("sub", "txn", "scope", "tctx")}

        tasks.EndTask(tpb.EndTaskRequest(task_id=begun.task_id), metadata=md, timeout=15)
        listed = tasks.ListTasks(tpb.ListTasksRequest(), metadata=md, timeout=15)
        out["tasks_after_end"] = len(listed.tasks)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
