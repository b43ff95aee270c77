"""Fitting messages into listing columns without cutting words (`--output json` always has the full text)."""

from __future__ import annotations

ELLIPSIS = "…"


def clip(text: str | None, width: int) -> str:
    """`text` on one line, at most `width` characters: whitespace collapsed, cut at a word boundary with an
    ellipsis when too long (a single word longer than the width is cut inside it, as nothing else fits)."""
    flat = " ".join((text or "").split())
    if len(flat) <= width:
        return flat
    room = max(width - len(ELLIPSIS), 1)
    cut = flat.rfind(" ", 0, room + 1)
    head = flat[:cut] if cut > room // 2 else flat[:room]
    return head.rstrip(" ,;:") + ELLIPSIS
