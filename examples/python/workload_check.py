#!/usr/bin/env python3
"""Calls every Workload API method on a Lanyard agent with Python's grpcio.

grpcio is the gRPC C-core, which over a unix socket sends the percent-encoded
socket path as the HTTP/2 :authority: the client most SPIFFE libraries
outside Go and Rust are built on. Prints one JSON object with what each call
returned, or exits non-zero with the error.

    python3 workload_check.py --socket /run/lanyard/public/api.sock --audience tools

Stubs are generated from proto/workload.proto with grpcio-tools (see
generate_stubs() below); nothing here is specific to Lanyard.
"""

import argparse
import base64
import json
import os
import sys
import tempfile


def generate_stubs(proto_dir, out_dir):
    """Generates workload_pb2*.py from the SPIFFE Workload API proto."""
    from grpc_tools import protoc
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main([
        "protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_dir, "workload.proto"),
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)


def first(stream):
    """The first message of a server stream, then cancels it."""
    for msg in stream:
        stream.cancel()
        return msg
    raise SystemExit("stream ended without a message")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_proto = os.path.join(here, "..", "..", "proto", "proto")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", default=os.environ.get("SPIFFE_ENDPOINT_SOCKET", ""))
    p.add_argument("--audience", default="tools.example.org")
    p.add_argument("--proto-dir", default=default_proto)
    p.add_argument("--no-header", action="store_true",
                   help="omit the workload.spiffe.io header (expects InvalidArgument)")
    args = p.parse_args()
    socket = args.socket
    if socket.startswith("unix://"):
        socket = socket[len("unix://"):]
    elif socket.startswith("unix:"):
        socket = socket[len("unix:"):]
    if not socket:
        raise SystemExit("--socket or SPIFFE_ENDPOINT_SOCKET is required")

    import grpc

    stubs = tempfile.mkdtemp(prefix="lanyard-stubs-")
    generate_stubs(args.proto_dir, stubs)
    import workload_pb2 as pb
    import workload_pb2_grpc as rpc

    md = [] if args.no_header else [("workload.spiffe.io", "true")]
    out = {}
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        api = rpc.SpiffeWorkloadAPIStub(channel)
        if args.no_header:
            try:
                first(api.FetchX509SVID(pb.X509SVIDRequest(), metadata=md, timeout=10))
            except grpc.RpcError as e:
                out["code"] = e.code().name
                out["details"] = e.details()
            print(json.dumps(out))
            return

        x509 = first(api.FetchX509SVID(pb.X509SVIDRequest(), metadata=md, timeout=10))
        out["x509"] = [
            {
                "spiffe_id": s.spiffe_id,
                "hint": s.hint,
                "chain_der_b64": base64.b64encode(s.x509_svid).decode(),
                "key_len": len(s.x509_svid_key),
                "bundle_der_b64": base64.b64encode(s.bundle).decode(),
            }
            for s in x509.svids
        ]
        bundles = first(api.FetchX509Bundles(pb.X509BundlesRequest(), metadata=md, timeout=10))
        out["x509_bundles"] = {
            td: base64.b64encode(der).decode() for td, der in bundles.bundles.items()
        }
        jwt = api.FetchJWTSVID(pb.JWTSVIDRequest(audience=[args.audience]), metadata=md, timeout=10)
        token = jwt.svids[0].svid
        out["jwt"] = {"spiffe_id": jwt.svids[0].spiffe_id, "svid": token}
        valid = api.ValidateJWTSVID(
            pb.ValidateJWTSVIDRequest(audience=args.audience, svid=token), metadata=md, timeout=10
        )
        out["validated"] = {
            "spiffe_id": valid.spiffe_id,
            "sub": valid.claims.fields["sub"].string_value,
        }
        jwt_bundles = first(api.FetchJWTBundles(pb.JWTBundlesRequest(), metadata=md, timeout=10))
        out["jwt_bundles"] = {
            td: json.loads(jwks) for td, jwks in jwt_bundles.bundles.items()
        }
        try:
            api.ValidateJWTSVID(
                pb.ValidateJWTSVIDRequest(audience=args.audience, svid=token + "x"),
                metadata=md, timeout=10,
            )
            out["tampered"] = "accepted"
        except grpc.RpcError as e:
            out["tampered"] = e.code().name
    print(json.dumps(out))


if __name__ == "__main__":
    main()
