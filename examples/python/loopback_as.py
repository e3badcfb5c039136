#!/usr/bin/env python3
"""A small OAuth 2.0 authorization server that trusts Lanyard JWT-SVIDs the
way an external one does, and a protected API behind it: for Lanyard's
credential tests and the credential example. Not for production.

It verifies every JWT-SVID from the issuer's OpenID Connect discovery
document alone (discovery -> jwks_uri -> the token's kid -> signature,
`iss`, `aud`, `exp`; PyJWT's PyJWKClient) and implements:

- POST /token: RFC 8693 token exchange (subject_token, optional
  actor_token: the issued token records `act`), and `client_credentials`
  with a JWT-SVID client assertion (client_assertion_type
  urn:ietf:params:oauth:client-assertion-type:jwt-spiffe, client_id the
  SPIFFE ID); scopes limited to --scope; opaque tokens of --token-ttl s.
- POST /revoke: RFC 7009.
- GET /api/whoami: the protected API (Authorization: Bearer TOKEN).
- GET /_log: what it saw, as JSON (grants, refusals, revocations).

    loopback_as.py --issuer http://127.0.0.1:PORT --audience https://as.test \\
        --scope repo:read --scope issues:write [--cert C --key K] --port-file F
"""

import argparse
import http.server
import json
import secrets
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request

import jwt

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
JWT_SPIFFE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"


class Refusal(Exception):
    def __init__(self, status, error, description):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.tokens = {}
        self.log = []
        issuer = args.issuer.rstrip("/")
        with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", timeout=10) as r:
            doc = json.load(r)
        if doc.get("issuer") != issuer:
            raise SystemExit(f"discovery names issuer {doc.get('issuer')!r}, not {issuer!r}")
        self.issuer = issuer
        self.algorithms = doc.get("id_token_signing_alg_values_supported", ["ES256"])
        self.jwks = jwt.PyJWKClient(doc["jwks_uri"], cache_keys=False)

    def verify(self, token, what):
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            return jwt.decode(token, key.key, algorithms=self.algorithms,
                              audience=self.args.audience, issuer=self.issuer,
                              options={"require": ["iss", "sub", "aud", "exp"]})
        except jwt.PyJWTError as e:
            raise Refusal(400, "invalid_grant" if what != "client" else "invalid_client",
                          f"{what} token: {type(e).__name__}: {e}")

    def note(self, event):
        with self.lock:
            self.log.append(event)


def task_of(claims):
    """The task a Lanyard task JWT-SVID carries (its `txn` claim)."""
    return claims.get("txn")


def token_endpoint(state, form):
    grant = form.get("grant_type", "")
    client = None
    if form.get("client_assertion"):
        if form.get("client_assertion_type") != JWT_SPIFFE:
            raise Refusal(400, "invalid_client", "client_assertion_type is not jwt-spiffe")
        client = state.verify(form["client_assertion"], "client")
        if form.get("client_id") and form["client_id"] != client["sub"]:
            raise Refusal(400, "invalid_client", "client_id is not the assertion's sub")
    if grant == TOKEN_EXCHANGE:
        if form.get("subject_token_type") != JWT_TYPE:
            raise Refusal(400, "invalid_request", "subject_token_type must be jwt")
        subject = state.verify(form.get("subject_token", ""), "subject")
        actor = None
        if form.get("actor_token"):
            actor = state.verify(form["actor_token"], "actor")
    elif grant == "client_credentials":
        if client is None:
            raise Refusal(401, "invalid_client", "client_credentials needs a client assertion")
        subject, actor = client, None
    else:
        raise Refusal(400, "unsupported_grant_type", f"grant_type {grant!r}")
    asked = form.get("scope", "").split()
    allowed = state.args.scope or []
    outside = [s for s in asked if s not in allowed]
    if outside:
        raise Refusal(400, "invalid_scope", f"not grantable: {' '.join(outside)}")
    granted = asked or allowed
    token = secrets.token_urlsafe(24)
    record = {
        "sub": subject["sub"],
        "task": task_of(subject),
        "scope": granted,
        "exp": int(time.time()) + state.args.token_ttl,
        "revoked": False,
    }
    if actor is not None:
        record["act"] = {"sub": actor["sub"], "task": task_of(actor)}
    with state.lock:
        state.tokens[token] = record
    state.note({"event": "grant", "grant_type": grant, "client": client and client["sub"],
                **{k: v for k, v in record.items() if k != "revoked"}})
    return {"access_token": token, "token_type": "Bearer", "expires_in": state.args.token_ttl,
            "scope": " ".join(granted),
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}


def revoke_endpoint(state, form):
    client = None
    if form.get("client_assertion"):
        client = state.verify(form["client_assertion"], "client")["sub"]
    with state.lock:
        rec = state.tokens.get(form.get("token", ""))
        if rec is not None:
            rec["revoked"] = True
    state.note({"event": "revoke", "known": rec is not None, "client": client,
                "sub": rec and rec["sub"], "task": rec and rec["task"]})
    return {}


def make_handler(state):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
            try:
                if self.path == "/token":
                    self.reply(200, token_endpoint(state, form))
                elif self.path == "/revoke":
                    self.reply(200, revoke_endpoint(state, form))
                else:
                    self.reply(404, {"error": "not_found"})
            except Refusal as r:
                state.note({"event": "refused", "path": self.path, "error": r.error,
                            "description": r.description})
                self.reply(r.status, {"error": r.error, "error_description": r.description})

        def do_GET(self):
            if self.path == "/_log":
                with state.lock:
                    self.reply(200, list(state.log))
            elif self.path == "/api/whoami":
                auth = self.headers.get("Authorization", "")
                with state.lock:
                    rec = state.tokens.get(auth.removeprefix("Bearer "))
                if rec is None or rec["revoked"] or rec["exp"] < time.time():
                    self.reply(401, {"error": "invalid_token"})
                else:
                    self.reply(200, {k: v for k, v in rec.items() if k != "revoked"})
            else:
                self.reply(404, {"error": "not_found"})

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--audience", required=True, help="this server's audience")
    ap.add_argument("--scope", action="append", help="a grantable scope (repeatable)")
    ap.add_argument("--token-ttl", type=int, default=3600)
    ap.add_argument("--cert", help="PEM certificate (serve HTTPS)")
    ap.add_argument("--key", help="PEM key of --cert")
    ap.add_argument("--port-file", help="write the bound port here")
    args = ap.parse_args()
    state = State(args)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    if args.cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.cert, args.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        import os
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"listening on {port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
