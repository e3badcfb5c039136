#!/usr/bin/env python3
"""Verifies a Lanyard JWT-SVID the way a verifier outside SPIFFE does:
OpenID Connect discovery document -> its jwks_uri -> the key named by the
token's kid -> signature, iss, aud and exp (PyJWT's PyJWKClient).

    verify_jwt_svid.py --issuer https://oidc.example.org --audience AUD < token

Prints the verified claims as JSON and exits 0; on a refusal prints
{"refused": "<PyJWT error class>", "reason": "..."} and exits 1.
"""

import argparse
import json
import sys
import urllib.request

import jwt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--issuer", required=True, help="the issuer URL to trust")
    ap.add_argument("--audience", required=True, help="this verifier's audience")
    args = ap.parse_args()
    token = sys.stdin.read().strip()

    discovery_url = args.issuer.rstrip("/") + "/.well-known/openid-configuration"
    with urllib.request.urlopen(discovery_url, timeout=10) as resp:
        discovery = json.load(resp)
    if discovery.get("issuer") != args.issuer.rstrip("/"):
        print(json.dumps({"refused": "DiscoveryIssuerMismatch",
                          "reason": f"discovery names issuer {discovery.get('issuer')!r}"}))
        return 1

    jwks = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False)
    try:
        key = jwks.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=discovery.get("id_token_signing_alg_values_supported", ["ES256"]),
            audience=args.audience,
            issuer=args.issuer.rstrip("/"),
            options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
        )
    except jwt.PyJWTError as e:
        print(json.dumps({"refused": type(e).__name__, "reason": str(e)}))
        return 1
    print(json.dumps({"claims": claims, "kid": key.key_id}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
