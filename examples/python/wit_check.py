#!/usr/bin/env python3
"""A WIT-SVID client that is not Lanyard's: raw grpcio stubs generated from
the Workload API proto (with the WIT-SVID profile) and Lanyard's task proto,
PyJWT and `cryptography` for the proof of possession (a WIMSE Workload
Proof Token). It fetches its WIT and key, builds proofs, and asks the node
agent's AuthorizeToolCall (this process must also be an enforcement point)
with each case; one JSON line per case: {"case", "code", "allow", "reason"}.

    wit_check.py --socket unix:///run/lanyard/agent/api.sock \\
        --spiffe-id spiffe://example.org/agent/py --target https://tool.example/call

Cases: a good proof; the same proof again; a proof for another target; a
proof signed by another key; the WIT as a bearer JWT-SVID; and, after the
first WIT has expired (its entry's TTL is short), that WIT with a fresh
proof.
"""

import argparse
import base64
import hashlib
import json
import os
import secrets
import sys
import tempfile
import time

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

MD = [("workload.spiffe.io", "true")]


def generate_stubs(proto_dir, out_dir):
    from grpc_tools import protoc
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    for proto in ["workload.proto", "lanyard/task/v1/task.proto"]:
        if protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}",
                        f"--grpc_python_out={out_dir}", os.path.join(proto_dir, proto)]) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    # Regular packages, so that these stubs win over an installed package
    # of the same name.
    for d in ["lanyard", "lanyard/task", "lanyard/task/v1"]:
        open(os.path.join(out_dir, d, "__init__.py"), "a").close()
    sys.path.insert(0, out_dir)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def proof(key, wit, target, ttl=30):
    claims = {"aud": target, "exp": int(time.time()) + ttl, "jti": secrets.token_urlsafe(16),
              "wth": b64(hashlib.sha256(wit.encode()).digest())}
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": "wpt+jwt"})


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", default=os.environ.get("SPIFFE_ENDPOINT_SOCKET", ""))
    p.add_argument("--spiffe-id", required=True, help="the WIT's identity")
    p.add_argument("--target", required=True, help="the request target URI the proofs name")
    p.add_argument("--tool", default="crm.read")
    p.add_argument("--proto-dir", default=os.path.join(here, "..", "..", "proto", "proto"))
    args = p.parse_args()
    generate_stubs(args.proto_dir, tempfile.mkdtemp(prefix="lanyard-stubs-"))
    import workload_pb2 as wpb
    import workload_pb2_grpc as wrpc
    from lanyard.task.v1 import task_pb2 as tpb
    from lanyard.task.v1 import task_pb2_grpc as trpc

    path = args.socket.removeprefix("unix://").removeprefix("unix:")
    with grpc.insecure_channel(f"unix:{path}") as ch:
        stream = wrpc.SpiffeWorkloadAPIStub(ch).FetchWITSVID(
            wpb.WITSVIDRequest(spiffe_id=args.spiffe_id), metadata=MD, timeout=30)
        first = next(iter(stream))
        stream.cancel()
        svid = first.svids[0]
        wit = svid.wit_svid
        key = ECAlgorithm.from_jwk(svid.wit_svid_key)
        tasks = trpc.TaskIdentityStub(ch)

        def ask(case, credential, target=args.target):
            req = tpb.AuthorizeToolCallRequest(tool=args.tool, context_json="{}", target_uri=target,
                                               **credential)
            try:
                r = tasks.AuthorizeToolCall(req, metadata=MD, timeout=15)
                out = {"case": case, "code": "OK", "allow": r.allow, "reason": r.reason}
            except grpc.RpcError as e:
                out = {"case": case, "code": e.code().name, "allow": False, "reason": e.details()}
            print(json.dumps(out), flush=True)

        def with_proof(wpt, token=wit):
            return {"wit": tpb.WitProof(wit_svid=token, wpt=wpt)}

        good = proof(key, wit, args.target)
        ask("good", with_proof(good))
        ask("replayed", with_proof(good))
        ask("other target", with_proof(proof(key, wit, "https://other.example/call")))
        ask("other key", with_proof(proof(ec.generate_private_key(ec.SECP256R1()), wit, args.target)))
        ask("bearer", {"jwt_svid": wit})
        payload = wit.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]
        time.sleep(max(0, exp - time.time()) + 1.5)
        ask("expired", with_proof(proof(key, wit, args.target)))


if __name__ == "__main__":
    main()
