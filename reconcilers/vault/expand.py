"""Seed expansion: the expanded ML-KEM-768 / ML-DSA-65 private keys of FIPS seeds, in plain Python.

`cryptography` (OpenSSL) loads these private keys only from their seeds and exports only seeds (its PKCS#8
writer emits the `seed` choice and its reader refuses `expandedKey`), while PQClean and liboqs work only on
expanded keys and have no seeded key generation. Expanding a seed here makes every seed-form key usable by
every backend. This is key generation only (no secret-dependent branching matters at rest: it runs once per key
and process, the result cached); decapsulation and signing stay in the backends. Checked against the NIST KATs
of `cryptography-vectors` (tests/reconcilers/test_vault_expand.py).

    mlkem768(d || z)  FIPS 203 ML-KEM.KeyGen_internal (Alg. 16, K-PKE.KeyGen Alg. 13) -> (ek, dk)
    mldsa65(xi)       FIPS 204 ML-DSA.KeyGen_internal (Alg. 6)                          -> (pk, sk)
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

Poly = list[int]

# ML-KEM-768 (FIPS 203) ------------------------------------------------------------------------------------
KQ, KK, ETA1 = 3329, 3, 2


def _bitrev(i: int, bits: int) -> int:
    return int(f"{i:0{bits}b}"[::-1], 2)


_KZETAS = [pow(17, _bitrev(i, 7), KQ) for i in range(128)]
_KGAMMAS = [pow(17, 2 * _bitrev(i, 7) + 1, KQ) for i in range(128)]


def _kem_ntt(f: Poly) -> Poly:
    """FIPS 203 Alg. 9."""
    f, i, length = list(f), 1, 128
    while length >= 2:
        for start in range(0, 256, 2 * length):
            zeta = _KZETAS[i]
            i += 1
            for j in range(start, start + length):
                t = zeta * f[j + length] % KQ
                f[j + length] = (f[j] - t) % KQ
                f[j] = (f[j] + t) % KQ
        length //= 2
    return f


def _kem_mul(a: Poly, b: Poly) -> Poly:
    """FIPS 203 Alg. 11/12: products of degree-one polynomials modulo X^2 - gamma."""
    h = [0] * 256
    for i in range(128):
        a0, a1, b0, b1 = a[2 * i], a[2 * i + 1], b[2 * i], b[2 * i + 1]
        h[2 * i] = (a0 * b0 + a1 * b1 * _KGAMMAS[i]) % KQ
        h[2 * i + 1] = (a0 * b1 + a1 * b0) % KQ
    return h


def _rejection(xof: Callable[[int], bytes], step: int, decode: Callable[[bytes], tuple[int, ...]]) -> Poly:
    # Rejection sampling from an XOF; a longer read is a prefix-extension, so retrying longer is exact.
    size = 1024
    while True:
        stream = xof(size)
        out: Poly = []
        for pos in range(0, size - step + 1, step):
            out.extend(decode(stream[pos : pos + step]))
            if len(out) >= 256:
                return out[:256]
        size *= 2


def _sample_ntt(seed: bytes) -> Poly:
    """FIPS 203 Alg. 7: SHAKE128, two 12-bit candidates per 3 bytes, kept when below q."""

    def decode(c: bytes) -> tuple[int, ...]:
        d1, d2 = c[0] | (c[1] & 15) << 8, c[1] >> 4 | c[2] << 4
        return tuple(d for d in (d1, d2) if d < KQ)

    return _rejection(hashlib.shake_128(seed).digest, 3, decode)


def _cbd2(b: bytes) -> Poly:
    """FIPS 203 Alg. 8 for eta = 2: each byte gives two coefficients (b0+b1-b2-b3, b4+b5-b6-b7)."""
    out = []
    for byte in b:
        bits = [(byte >> k) & 1 for k in range(8)]
        out.append((bits[0] + bits[1] - bits[2] - bits[3]) % KQ)
        out.append((bits[4] + bits[5] - bits[6] - bits[7]) % KQ)
    return out


def _pack(coeffs: Poly, bits: int) -> bytes:
    """Little-endian bit packing of 256 coefficients of `bits` bits (ByteEncode / SimpleBitPack)."""
    acc = 0
    for i, c in enumerate(coeffs):
        acc |= c << (i * bits)
    return acc.to_bytes(32 * bits, "little")


@functools.lru_cache(maxsize=64)
def mlkem768(seed: bytes) -> tuple[bytes, bytes]:
    """(ek, dk) of the 64-byte seed d || z (FIPS 203 ML-KEM.KeyGen_internal)."""
    if len(seed) != 64:
        raise ValueError("an ML-KEM seed is 64 bytes (d || z)")
    d, z = seed[:32], seed[32:]
    g = hashlib.sha3_512(d + bytes([KK])).digest()
    rho, sigma = g[:32], g[32:]
    a_hat = [[_sample_ntt(rho + bytes([j, i])) for j in range(KK)] for i in range(KK)]
    prf = [hashlib.shake_256(sigma + bytes([n])).digest(64 * ETA1) for n in range(2 * KK)]
    s_hat = [_kem_ntt(_cbd2(prf[i])) for i in range(KK)]
    e_hat = [_kem_ntt(_cbd2(prf[KK + i])) for i in range(KK)]
    t_hat = []
    for i in range(KK):
        acc = e_hat[i]
        for j in range(KK):
            acc = [(x + y) % KQ for x, y in zip(acc, _kem_mul(a_hat[i][j], s_hat[j]), strict=True)]
        t_hat.append(acc)
    ek = b"".join(_pack(t, 12) for t in t_hat) + rho
    dk = b"".join(_pack(s, 12) for s in s_hat) + ek + hashlib.sha3_256(ek).digest() + z
    return ek, dk


# ML-DSA-65 (FIPS 204) -------------------------------------------------------------------------------------
DQ, DK, DL, ETA, D = 8380417, 6, 5, 4, 13
_DZETAS = [pow(1753, _bitrev(i, 8), DQ) for i in range(256)]


def _dsa_ntt(w: Poly) -> Poly:
    """FIPS 204 Alg. 41."""
    w, m, length = list(w), 0, 128
    while length >= 1:
        for start in range(0, 256, 2 * length):
            m += 1
            z = _DZETAS[m]
            for j in range(start, start + length):
                t = z * w[j + length] % DQ
                w[j + length] = (w[j] - t) % DQ
                w[j] = (w[j] + t) % DQ
        length //= 2
    return w


def _dsa_intt(w: Poly) -> Poly:
    """FIPS 204 Alg. 42 (including the final scaling by 256^-1)."""
    w, m, length = list(w), 256, 1
    while length < 256:
        for start in range(0, 256, 2 * length):
            m -= 1
            z = DQ - _DZETAS[m]
            for j in range(start, start + length):
                t = w[j]
                w[j] = (t + w[j + length]) % DQ
                w[j + length] = z * (t - w[j + length]) % DQ
        length *= 2
    return [x * 8347681 % DQ for x in w]


def _rej_ntt(seed: bytes) -> Poly:
    """FIPS 204 Alg. 30: SHAKE128, 23-bit candidates from 3 bytes, kept when below q."""

    def decode(c: bytes) -> tuple[int, ...]:
        z = c[0] | c[1] << 8 | (c[2] & 0x7F) << 16
        return (z,) if z < DQ else ()

    return _rejection(hashlib.shake_128(seed).digest, 3, decode)


def _rej_bounded(seed: bytes) -> Poly:
    """FIPS 204 Alg. 31 for eta = 4: SHAKE256, two half-bytes per byte, kept when below 9, as 4 - z."""

    def decode(c: bytes) -> tuple[int, ...]:
        return tuple(4 - z for z in (c[0] & 15, c[0] >> 4) if z < 9)

    return _rejection(hashlib.shake_256(seed).digest, 1, decode)


@functools.lru_cache(maxsize=64)
def mldsa65(xi: bytes) -> tuple[bytes, bytes]:
    """(pk, sk) of the 32-byte seed xi (FIPS 204 ML-DSA.KeyGen_internal)."""
    if len(xi) != 32:
        raise ValueError("an ML-DSA seed is 32 bytes")
    h = hashlib.shake_256(xi + bytes([DK, DL])).digest(128)
    rho, rho_prime, key = h[:32], h[32:96], h[96:]
    a_hat = [[_rej_ntt(rho + bytes([s, r])) for s in range(DL)] for r in range(DK)]
    s1 = [_rej_bounded(rho_prime + r.to_bytes(2, "little")) for r in range(DL)]
    s2 = [_rej_bounded(rho_prime + (r + DL).to_bytes(2, "little")) for r in range(DK)]
    s1_hat = [_dsa_ntt([c % DQ for c in p]) for p in s1]
    t1, t0 = [], []
    for r in range(DK):
        acc = [0] * 256
        for s in range(DL):
            acc = [(x + a * b) % DQ for x, a, b in zip(acc, a_hat[r][s], s1_hat[s], strict=True)]
        t = [(x + e) % DQ for x, e in zip(_dsa_intt(acc), s2[r], strict=True)]
        low = [((x + (1 << (D - 1)) - 1) % (1 << D)) - ((1 << (D - 1)) - 1) for x in t]  # Power2Round, r0 centred
        t0.append(low)
        t1.append([(x - lo) >> D for x, lo in zip(t, low, strict=True)])
    pk = rho + b"".join(_pack(p, 10) for p in t1)
    tr = hashlib.shake_256(pk).digest(64)
    sk = (
        rho
        + key
        + tr
        + b"".join(_pack([ETA - c for c in p], 4) for p in (*s1, *s2))
        + b"".join(_pack([(1 << (D - 1)) - c for c in p], D) for p in t0)
    )
    return pk, sk
