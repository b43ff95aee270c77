"""The few DER pieces the CRL splice needs: a TLV reader and encoders for SEQUENCE, INTEGER, time, BIT STRING.

Why our own: `CertificateRevocationListBuilder` copies its entry list on every add (O(n^2): ~6 s for 20,000
entries here), so the engine keeps the revoked entries pre-encoded and splices them into a TBS the builder made.
"""

from __future__ import annotations

import datetime as dt

SEQUENCE = 0x30
CONTEXT_0 = 0xA0


def length(n: int) -> bytes:
    """A DER length field."""
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element."""
    return bytes([tag]) + length(len(content)) + content


def read(buf: bytes, pos: int) -> tuple[int, int, int]:
    """At `pos`: (tag, start of content, end of content); single-byte tags only (all X.509 needs here)."""
    if pos + 2 > len(buf):
        raise ValueError("DER: truncated element")
    tag, first = buf[pos], buf[pos + 1]
    start = pos + 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > len(buf):
            raise ValueError("DER: unsupported length")
        size = int.from_bytes(buf[start:start + count], "big")
        start += count
    if start + size > len(buf):
        raise ValueError("DER: element runs past the end")
    return tag, start, start + size


def children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """The elements inside a constructed element's content, as (tag, element start, element end)."""
    out = []
    pos = start
    while pos < end:
        tag, _, stop = read(buf, pos)
        out.append((tag, pos, stop))
        pos = stop
    return out


def integer(value: int) -> bytes:
    """A non-negative INTEGER (a leading zero byte keeps the high bit clear)."""
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return tlv(0x02, raw)


def time(moment: dt.datetime) -> bytes:
    """UTCTime before 2050, GeneralizedTime from then on (RFC 5280 4.1.2.5)."""
    moment = moment.astimezone(dt.UTC)
    if moment.year < 2050:
        return tlv(0x17, moment.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(0x18, moment.strftime("%Y%m%d%H%M%SZ").encode())


def bit_string(data: bytes) -> bytes:
    """A BIT STRING with no unused bits."""
    return tlv(0x03, b"\x00" + data)


def revoked_entry(serial: int, revoked_at: dt.datetime) -> bytes:
    """One revokedCertificates entry: SEQUENCE { userCertificate, revocationDate }."""
    return tlv(SEQUENCE, integer(serial) + time(revoked_at))
