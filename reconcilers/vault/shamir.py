"""Shamir secret sharing over GF(2^8), byte by byte, as SOPS splits its data key across key groups.

No maintained PyPI library fits (pycryptodome's Shamir takes 16-byte secrets only), so this is small own code,
tested for every k-of-n split up to 5 and against wrong and duplicate shares.
"""

from __future__ import annotations

import os

# Log/antilog tables for GF(2^8) with the AES polynomial x^8+x^4+x^3+x+1, generator 3.
_EXP = [0] * 512
_LOG = [0] * 256
_x = 1
for _i in range(255):
    _EXP[_i] = _x
    _LOG[_x] = _i
    _x ^= (_x << 1) ^ (0x11B if _x & 0x80 else 0)
    _x &= 0xFF
for _i in range(255, 512):
    _EXP[_i] = _EXP[_i - 255]


def _mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(256)")
    return 0 if a == 0 else _EXP[(_LOG[a] - _LOG[b]) % 255]


def split(secret: bytes, threshold: int, shares: int) -> list[tuple[int, bytes]]:
    """`shares` points (x = 1..n, y bytes); any `threshold` of them rebuild `secret`."""
    if not 1 <= threshold <= shares <= 255:
        raise ValueError(f"need 1 <= threshold ({threshold}) <= shares ({shares}) <= 255")
    coeffs = [os.urandom(threshold - 1) for _ in secret]
    out: list[tuple[int, bytes]] = []
    for x in range(1, shares + 1):
        ys = bytearray()
        for byte, rest in zip(secret, coeffs, strict=True):
            # Horner's rule over the polynomial byte + rest[0]*x + rest[1]*x^2 + ...
            acc = 0
            for c in reversed(rest):
                acc = _mul(acc, x) ^ c
            ys.append(_mul(acc, x) ^ byte)
        out.append((x, bytes(ys)))
    return out


def combine(points: list[tuple[int, bytes]]) -> bytes:
    """The secret at x = 0, by Lagrange interpolation over the given points (distinct x, equal lengths)."""
    if not points:
        raise ValueError("no shares")
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs) or 0 in xs:
        raise ValueError("shares must have distinct, non-zero x")
    length = len(points[0][1])
    if any(len(y) != length for _, y in points):
        raise ValueError("shares differ in length")
    out = bytearray(length)
    for i, (xi, yi) in enumerate(points):
        # Lagrange basis at 0: prod x_j / (x_j - x_i); subtraction is XOR in GF(2^8).
        basis = 1
        for j, xj in enumerate(xs):
            if j != i:
                basis = _mul(basis, _div(xj, xj ^ xi))
        for k in range(length):
            out[k] ^= _mul(yi[k], basis)
    return bytes(out)
