"""The task claims decoder on bad input: a clear error, never a crash."""

from __future__ import annotations

import pytest

from lanyard import claims


def good() -> bytes:
    def tlv(tag: int, body: bytes) -> bytes:
        assert len(body) < 128
        return bytes([tag, len(body)]) + body

    body = (tlv(0x02, b"\x01") + tlv(0x0C, b"t1") + tlv(0x0C, b"report")
            + tlv(0x30, tlv(0x0C, b"crm.read")) + tlv(0x0C, b"internal")
            + tlv(0x04, bytes(32)) + tlv(0x80, b"user:alice")
            + tlv(0x81, b"20261207120000Z") + tlv(0xA3, tlv(0x0C, b"crm.internal")))
    return tlv(0x30, body)


def test_decodes_every_field() -> None:
    c = claims.from_der(good())
    assert (c.task_id, c.task_type, c.tools, c.data_sensitivity) == ("t1", "report", ("crm.read",), "internal")
    assert c.on_behalf_of == "user:alice"
    assert c.not_after is not None and c.not_after.year == 2026
    assert c.destinations == ("crm.internal",)


@pytest.mark.parametrize("cut", [1, 2, 5, 20, 60])
def test_truncated_input_is_refused(cut: int) -> None:
    with pytest.raises(claims.ClaimsError):
        claims.from_der(good()[:-cut])


def test_other_garbage_is_refused() -> None:
    for bad in [b"", b"\x04\x00", b"\x30\x81", good() + b"\x00", b"\x30\x03\x02\x01\x02"]:
        with pytest.raises(claims.ClaimsError):
            claims.from_der(bad)
