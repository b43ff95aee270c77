"""Bech32m (BIP 350) text encoding with a checksum, without BIP 173's 90-character cap.

Post-quantum public keys are over a kilobyte, so the Bitcoin reference code (capped at 90 characters)
does not fit; age lifts the cap the same way for its post-quantum recipients. The checksum still catches any
typo of up to four characters in short strings and all but about one in a billion errors in long ones.
Results are cached: the daemon sees the same few signer keys in every manifest, and the checksum over a
3,000-character key costs milliseconds in Python.
"""

from __future__ import annotations

import functools

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_REV = {c: i for i, c in enumerate(CHARSET)}
_BECH32M = 0x2BC830A3
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class Bech32Error(ValueError):
    """The string is not valid bech32m (the message says why, never echoes the data)."""


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= _GEN[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convert(data: bytes | list[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    max_acc = (1 << (frombits + tobits - 1)) - 1  # keep the accumulator small: linear, not quadratic
    for value in data:
        acc = ((acc << frombits) | value) & max_acc
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad and bits:
        out.append((acc << (tobits - bits)) & maxv)
    elif not pad and (bits >= frombits or (acc << (tobits - bits)) & maxv):
        raise Bech32Error("invalid padding")
    return out


@functools.lru_cache(maxsize=1024)
def encode(hrp: str, payload: bytes) -> str:
    """`hrp` + "1" + data + 6-character checksum, lower case."""
    hrp = hrp.lower()
    data = _convert(payload, 8, 5, True)
    poly = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ _BECH32M
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[d] for d in data + checksum)


@functools.lru_cache(maxsize=1024)
def decode(text: str) -> tuple[str, bytes]:
    """(hrp, payload) of a bech32m string; Bech32Error on mixed case, bad characters or a bad checksum."""
    if text.lower() != text and text.upper() != text:
        raise Bech32Error("mixed upper and lower case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise Bech32Error("missing separator or checksum")
    hrp, rest = text[:pos], text[pos + 1 :]
    if any(ord(c) < 33 or ord(c) > 126 for c in hrp):
        raise Bech32Error("invalid prefix")
    try:
        data = [_REV[c] for c in rest]
    except KeyError as err:
        raise Bech32Error("character outside the bech32 alphabet") from err
    if _polymod([*_hrp_expand(hrp), *data]) != _BECH32M:
        raise Bech32Error("checksum mismatch (a typo or a truncated copy)")
    return hrp, bytes(_convert(data[:-6], 5, 8, False))
