"""Many manifests checked at once (check.check_manifests, what the vault reconciler's validate runs): on
several threads the results are exactly the serial ones, in order, bad manifests included, and the
verification really ran on more than one thread (the signature checks release the GIL).

Real keys, real signatures (the default backend); nothing is mocked."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from reconcilers.base import Problem
from reconcilers.vault import check, keys
from reconcilers.vault.manifest import Manifest
from reconcilers.vault.rules import Rules
from tests.vault_fixtures import B, rules_value, secret_world

Corpus = tuple[list[tuple[str, str]], Rules]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """40 manifests: most good, one tampered, one moved to another path, one signed by an untrusted key,
    one with a plaintext value; and the rules trusting the user."""
    world = secret_world(tmp_path_factory.mktemp("data"))
    rules = rules_value({"ops": world.user.signer}, world.recipients())
    items = [(world.manifest({"n": i, "pw": f"v{i}"}, path=f"secrets/s{i}.yaml"), f"secrets/s{i}.yaml")
             for i in range(40)]
    text, path = items[5]
    items[5] = (text.replace(text.split("ENC[", 1)[1][:8], "AAAAAAAA", 1), path)       # ciphertext changed
    items[11] = (items[11][0], "secrets/elsewhere.yaml")                               # signed for s11
    _, mallory = keys.generate(B)
    items[17] = (world.manifest({"k": "x"}, path="secrets/s17.yaml", key=mallory), "secrets/s17.yaml")
    items[23] = ("password: hunter2\n" + items[23][0], items[23][1])                   # a plaintext leaf
    return items, rules


def _summary(results: Sequence[tuple[Manifest | None, list[Problem]]]) -> list[tuple[bool, list[str]]]:
    return [(m is not None, [p.message for p in problems]) for m, problems in results]


def test_parallel_results_equal_the_serial_ones_in_order(corpus: Corpus) -> None:
    """Four threads give the serial answers for every manifest, each in its place; the bad ones fail with
    their own problem (tampered, moved, untrusted, plaintext) and the good ones pass."""
    items, rules = corpus
    serial = [check.check_manifest(B, text, path, rules) for text, path in items]
    parallel = check.check_manifests(B, items, rules, workers=4)
    assert _summary(parallel) == _summary(serial)
    summary = _summary(parallel)
    assert summary[0] == (True, [])
    assert not summary[5][0] and summary[5][1]
    assert any("signed for secrets/s11.yaml" in m for m in summary[11][1])
    assert any("not a trusted signer" in m for m in summary[17][1])
    assert any("not encrypted" in m for m in summary[23][1])
    good = [i for i in range(40) if i not in (5, 11, 17, 23)]
    assert all(summary[i] == (True, []) for i in good)
    assert [m.meta.path for m, _ in parallel if m is not None][:3] == ["secrets/s0.yaml", "secrets/s1.yaml",
                                                                      "secrets/s2.yaml"]


def test_many_manifests_are_verified_on_several_threads(corpus: Corpus,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With more than PARALLEL_MIN manifests, the checks run on worker threads (not the caller's); with
    fewer, or one worker, on the caller's thread only (no pool to start)."""
    items, rules = corpus
    seen: set[str] = set()
    real = check.check_manifest

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.add(threading.current_thread().name)
        return real(*args, **kwargs)

    # Only observes which thread ran each check; the check itself is the real one.
    monkeypatch.setattr(check, "check_manifest", recording)
    check.check_manifests(B, items, rules, workers=2)
    assert seen and all(name.startswith("vault-verify") for name in seen)
    seen.clear()
    check.check_manifests(B, items[: check.PARALLEL_MIN - 1], rules, workers=2)
    assert seen == {threading.current_thread().name}
    seen.clear()
    check.check_manifests(B, items, rules, workers=1)
    assert seen == {threading.current_thread().name}

