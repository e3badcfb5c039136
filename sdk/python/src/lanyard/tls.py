"""TLS for the standard library from an X.509-SVID.

The standard library loads a certificate and key only from files and
cannot swap a context's certificate, so each context is built fresh from
the current SVID: the key goes to a private directory (mode 0700, file
0600) for the moment ``load_cert_chain`` reads it and is removed at once.
A context verifies the peer's chain against the trust bundle; SPIFFE
authenticates by the URI SAN, not a host name, so host name checking is
off and the caller checks the peer's SPIFFE ID (:func:`peer_spiffe_id`).
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


def pem(certs: Iterable[x509.Certificate]) -> str:
    """``certs`` as concatenated PEM text."""
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def context(
    chain: list[x509.Certificate],
    key: PrivateKeyTypes,
    authorities: Iterable[x509.Certificate],
    server_side: bool = False,
) -> ssl.SSLContext:
    """A TLS 1.2+ context presenting ``chain`` (leaf first) and ``key``,
    requiring a peer certificate that chains to ``authorities``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    roots = pem(authorities)
    if not roots:
        raise ValueError("no trust bundle to verify peers against")
    ctx.load_verify_locations(cadata=roots)
    load_svid(ctx, chain, key)
    return ctx


def load_svid(ctx: ssl.SSLContext, chain: list[x509.Certificate], key: PrivateKeyTypes) -> None:
    """Loads ``chain`` and ``key`` into ``ctx`` (for the connections made
    after; calling it again replaces them)."""
    d = tempfile.mkdtemp(prefix="lanyard-svid-")
    try:
        os.chmod(d, 0o700)
        cert_path, key_path = os.path.join(d, "svid.pem"), os.path.join(d, "key.pem")
        with open(cert_path, "w") as f:
            f.write(pem(chain))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ))
        ctx.load_cert_chain(cert_path, key_path)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def peer_spiffe_id(cert: x509.Certificate | bytes) -> str | None:
    """The SPIFFE ID (the one ``spiffe://`` URI SAN) of a peer certificate
    (DER bytes, e.g. ``SSLSocket.getpeercert(binary_form=True)``), or
    ``None``."""
    if isinstance(cert, (bytes, bytearray)):
        cert = x509.load_der_x509_certificate(bytes(cert))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    return uris[0] if len(uris) == 1 else None
