"""Task claims as task SVIDs carry them: one X.509 extension (DER) and the
``tctx`` claim of a task JWT-SVID.

The extension (OID ``2.25.187691679452939855309652420807227979439``)::

    TaskClaims ::= SEQUENCE {
      version          INTEGER (1),
      taskId           UTF8String,
      taskType         UTF8String,
      tools            SEQUENCE OF UTF8String,
      dataSensitivity  UTF8String,
      grantDigest      OCTET STRING,      -- SHA-256 of the RFC 8785 grant
      onBehalfOf   [0] IMPLICIT UTF8String OPTIONAL,
      taskNotAfter [1] IMPLICIT GeneralizedTime OPTIONAL,
      parentTaskId [2] IMPLICIT UTF8String OPTIONAL,
      destinations [3] IMPLICIT SEQUENCE OF UTF8String OPTIONAL }
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from cryptography import x509

#: The task claims extension's OID.
TASK_CLAIMS_OID = x509.ObjectIdentifier("2.25.187691679452939855309652420807227979439")

_MAX = 16 * 1024


class ClaimsError(ValueError):
    """The task claims extension is malformed."""


@dataclass(frozen=True)
class TaskClaims:
    """What a task SVID says about its task."""

    task_id: str
    task_type: str
    tools: tuple[str, ...]
    data_sensitivity: str
    grant_digest: bytes
    on_behalf_of: str | None = None
    not_after: datetime.datetime | None = None
    parent_task_id: str | None = None
    destinations: tuple[str, ...] = field(default_factory=tuple)

    def allows(self, tool: str) -> bool:
        """Whether the task was granted ``tool``."""
        return tool in self.tools


def _tlv(buf: bytes, i: int) -> tuple[int, bytes, int]:
    """One DER element at ``i``: its tag, content and the next offset."""
    if i + 2 > len(buf):
        raise ClaimsError("truncated element")
    tag, n = buf[i], buf[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 2 or i + k > len(buf):
            raise ClaimsError("bad length")
        n = int.from_bytes(buf[i:i + k], "big")
        i += k
    if i + n > len(buf):
        raise ClaimsError("truncated content")
    return tag, buf[i:i + n], i + n


def _utf8(tag: int, content: bytes, want: int, what: str) -> str:
    if tag != want:
        raise ClaimsError(f"{what}: unexpected tag 0x{tag:02x}")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ClaimsError(f"{what}: not UTF-8") from e


def _strings(content: bytes, what: str) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(content):
        tag, c, i = _tlv(content, i)
        out.append(_utf8(tag, c, 0x0C, what))
    return tuple(out)


def from_der(der: bytes) -> TaskClaims:
    """Decodes the extension's content (its ``extnValue`` octets)."""
    if len(der) > _MAX:
        raise ClaimsError("extension too large")
    tag, body, end = _tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise ClaimsError("not one SEQUENCE")
    parts: list[tuple[int, bytes]] = []
    i = 0
    while i < len(body):
        t, c, i = _tlv(body, i)
        parts.append((t, c))
    if len(parts) < 6:
        raise ClaimsError("missing fields")
    if parts[0] != (0x02, b"\x01"):
        raise ClaimsError("unknown version")
    task_id = _utf8(*parts[1], 0x0C, "taskId")
    task_type = _utf8(*parts[2], 0x0C, "taskType")
    if parts[3][0] != 0x30:
        raise ClaimsError("tools: not a SEQUENCE")
    tools = _strings(parts[3][1], "tools")
    sensitivity = _utf8(*parts[4], 0x0C, "dataSensitivity")
    if parts[5][0] != 0x04 or len(parts[5][1]) != 32:
        raise ClaimsError("grantDigest: not a 32-byte OCTET STRING")
    obo = parent = None
    not_after = None
    destinations: tuple[str, ...] = ()
    for t, c in parts[6:]:
        if t == 0x80:
            obo = _utf8(t, c, 0x80, "onBehalfOf")
        elif t == 0x81:
            text = _utf8(t, c, 0x81, "taskNotAfter")
            try:
                not_after = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
            except ValueError as e:
                raise ClaimsError("taskNotAfter: not a GeneralizedTime") from e
        elif t == 0x82:
            parent = _utf8(t, c, 0x82, "parentTaskId")
        elif t == 0xA3:
            destinations = _strings(c, "destinations")
        else:
            raise ClaimsError(f"unknown field tag 0x{t:02x}")
    return TaskClaims(task_id, task_type, tools, sensitivity, parts[5][1], obo, not_after, parent, destinations)


def from_certificate(cert: x509.Certificate | bytes) -> TaskClaims | None:
    """The task claims of a certificate (DER bytes or parsed), or ``None``
    when it carries none (an SVID outside a task)."""
    if isinstance(cert, (bytes, bytearray)):
        cert = x509.load_der_x509_certificate(bytes(cert))
    try:
        ext = cert.extensions.get_extension_for_oid(TASK_CLAIMS_OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ClaimsError("unexpected extension type")
    return from_der(value.value)
