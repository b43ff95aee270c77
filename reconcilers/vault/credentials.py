"""High-confidence credential patterns for staged files: private key blocks and well-known token formats.

Only patterns with a near-zero false-positive rate: each has a fixed, documented prefix. A finding names the
file, line and pattern, never the matched text. A line may opt out with `stratum: allow-credential`
(for test fixtures of credential scanners); the opt-out is visible in review.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ALLOW = "stratum: allow-credential"

PATTERNS: tuple[tuple[str, re.Pattern[bytes]], ...] = (
    ("PEM private key block", re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")),
    (
        "Stratum private key",
        re.compile(rb"STRATUM-(?:SECRET|SIGNING)-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{40,}"),
    ),
    ("age secret key", re.compile(rb"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{50,}")),
    (
        "AWS access key id",
        re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16}(?![A-Z0-9])"),
    ),
    (
        "AWS secret access key",
        re.compile(rb"(?i)aws_?secret_?access_?key[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"),
    ),
    ("GitHub token", re.compile(rb"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])")),
    ("GitHub fine-grained token", re.compile(rb"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}")),
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One credential found: where and which kind (never the text)."""

    path: str
    line: int
    kind: str


def scan(path: str, data: bytes) -> list[Finding]:
    """Every credential pattern in `data`, one finding per (line, kind)."""
    out: list[Finding] = []
    seen: set[tuple[int, str]] = set()
    for kind, pattern in PATTERNS:
        for m in pattern.finditer(data):
            start = data.rfind(b"\n", 0, m.start()) + 1
            end = data.find(b"\n", m.end())
            if ALLOW.encode() in data[start : end if end >= 0 else len(data)]:
                continue
            line = data.count(b"\n", 0, m.start()) + 1
            if (line, kind) not in seen:
                seen.add((line, kind))
                out.append(Finding(path, line, kind))
    out.sort(key=lambda f: (f.line, f.kind))
    return out
