"""The server-side store behind the web's one-time preview tokens: bounded in time and in count."""

from __future__ import annotations

from reconcilers.forms.pending import PendingAnswers


def test_tokens_expire_and_the_oldest_go_first() -> None:
    """A token past its TTL is gone; past the limit the oldest is dropped; a taken token cannot be taken again."""
    now = [0.0]
    store = PendingAnswers(ttl=10.0, limit=2, clock=lambda: now[0])
    a = store.put("f", "alice", {"x": 1})
    b = store.put("f", "alice", {"x": 2})
    c = store.put("f", "alice", {"x": 3})                 # drops a
    assert store.take(a, "f", "alice") is None and len(store) == 2
    assert store.take(b, "g", "alice") is None            # another form: not this token's
    assert store.take(b, "f", "alice") == {"x": 2}
    assert store.take(b, "f", "alice") is None
    now[0] = 11.0
    assert store.take(c, "f", "alice") is None and len(store) == 0
