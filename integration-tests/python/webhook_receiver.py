"""A webhook receiver for Lanyard's approval webhooks, for the tests.

Verifies each delivery on its own (HMAC-SHA256 over "TIMESTAMP.BODY" with
the shared key, the timestamp within five minutes), answers the first
--fail deliveries of each path with 500, and prints one JSON line per
delivery: path, status answered, verified, the event and approval ID.

    python3 webhook_receiver.py --port-file F --secret-file K [--fail N]
"""

import argparse
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--secret-file", required=True)
    p.add_argument("--fail", type=int, default=0)
    args = p.parse_args()
    with open(args.secret_file, "rb") as f:
        secret = f.read().strip()
    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            ts = self.headers.get("lanyard-timestamp", "")
            sig = self.headers.get("lanyard-signature", "")
            want = "v1=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            fresh = ts.isdigit() and abs(time.time() - int(ts)) < 300
            verified = fresh and hmac.compare_digest(sig, want)
            n = seen.get(self.path, 0)
            seen[self.path] = n + 1
            status = 500 if n < args.fail else (200 if verified else 401)
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {}
            print(json.dumps({
                "path": self.path, "status": status, "verified": verified,
                "event": doc.get("event"), "content_type": self.headers.get("content-type"),
                "approval_id": (doc.get("approval") or {}).get("id"),
                "arguments": (doc.get("approval") or {}).get("arguments_json"),
                "delivery": self.headers.get("lanyard-delivery"),
            }), flush=True)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os
    os.rename(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
