"""Trust is never granted by the commit it protects (issue 16, items 6 and 7), through the real pipeline:

- a commit adding its own signer to trusted_signers, with a manifest that signer signed, is rejected by the
  daemon's run and by `stratum validate`; a rules change signed by a signer trusted before it passes;
- a manifest copied to another path, and an older version of a manifest replayed, are rejected by the daemon
  (its verification cache is keyed by path too; versions are judged against the last good revision)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from reconcilers.vault import keys
from tests.daemon.test_secret_apply import piped  # noqa: F401 the shared pipeline fixture
from tests.proc import cli_env
from tests.vault_fixtures import CANARY, B

Piped = tuple[Any, ...]  # (repo, world, pipeline, vault, keysource): see tests.daemon.test_secret_apply.piped


def _base(piped: Piped) -> str:  # noqa: F811 the fixture, by name
    repo, world, pipe, _, _ = piped
    first = repo.commit({"secrets/rules.ncl": world.rules(), "secrets/app.yaml": world.manifest({"k": "v1"})})
    assert pipe.run(first).status == "succeeded"
    return first


def _messages(result: object) -> str:
    return "\n".join(str(p) for p in getattr(result, "problems", ()))


def test_a_commit_cannot_trust_its_own_signer(piped: Piped) -> None:  # noqa: F811
    """New signer + a manifest it signed, in one commit: rejected (unsigned rules change), and again when the
    newcomer signs the rules change itself; the last good revision and its values stay in force."""
    repo, world, pipe, vault, _ = piped
    first = _base(piped)
    _, mallory = keys.generate(B)
    attack = {"secrets/rules.ncl": world.rules(mallory=mallory.signer),
              "secrets/evil.yaml": world.manifest({"k": CANARY}, path="secrets/evil.yaml", key=mallory)}
    result = pipe.run(repo.commit(attack))
    assert result.status == "rejected"
    assert "not signed" in _messages(result) and "secrets/rules.ncl" in _messages(result)
    self_signed = pipe.run(repo.commit({"secrets/rules.ncl.sig": world.rules_sig(mallory, mallory=mallory.signer)}))
    assert self_signed.status == "rejected"
    assert "not a trusted signer at the last good revision" in _messages(self_signed)
    assert pipe.index.get_state("last_good_revision") == first
    assert vault.paths() == ["secrets/app.yaml"] and vault.get("secrets/app.yaml", "k") == "v1"


def test_a_rules_change_signed_by_a_previously_trusted_signer_passes(piped: Piped) -> None:  # noqa: F811
    """ops signs the rules that add bob: applied; then bob's manifest is accepted too."""
    repo, world, pipe, vault, _ = piped
    _base(piped)
    _, bob = keys.generate(B)
    added = repo.commit({"secrets/rules.ncl": world.rules(bob=bob.signer),
                         "secrets/rules.ncl.sig": world.rules_sig(world.user, bob=bob.signer)})
    assert pipe.run(added).status == "succeeded"
    by_bob = repo.commit({"secrets/bob.yaml": world.manifest({"k": "b"}, path="secrets/bob.yaml", key=bob)})
    assert pipe.run(by_bob).status == "succeeded"
    assert vault.get("secrets/bob.yaml", "k") == "b"


def test_an_old_signed_rules_file_cannot_be_replayed(piped: Piped) -> None:  # noqa: F811
    """Rules v2 (bob added) then v3 (bob removed), both signed by ops; putting v2 and its signature back is a
    replay: its signature version is not above the last good one."""
    repo, world, pipe, _, _ = piped
    _base(piped)
    _, bob = keys.generate(B)
    v2_rules, v2_sig = world.rules(bob=bob.signer), world.rules_sig(world.user, bob=bob.signer)
    assert pipe.run(repo.commit({"secrets/rules.ncl": v2_rules, "secrets/rules.ncl.sig": v2_sig})).status \
        == "succeeded"
    v3 = {"secrets/rules.ncl": world.rules(), "secrets/rules.ncl.sig": world.rules_sig(world.user, previous=v2_sig)}
    assert pipe.run(repo.commit(v3)).status == "succeeded"
    replay = pipe.run(repo.commit({"secrets/rules.ncl": v2_rules, "secrets/rules.ncl.sig": v2_sig}))
    assert replay.status == "rejected" and "replayed" in _messages(replay)


def test_validate_rejects_the_self_trusting_commit(piped: Piped, tmp_path: Path) -> None:  # noqa: F811
    """`stratum validate` on the staged tree judges the rules change by HEAD's rules, like the daemon."""
    repo, world, _, _, _ = piped
    repo.commit({"secrets/rules.ncl": world.rules(), "secrets/app.yaml": world.manifest({"k": "v1"})})
    _, mallory = keys.generate(B)
    repo.write({"secrets/rules.ncl": world.rules(mallory=mallory.signer),
                "secrets/evil.yaml": world.manifest({"k": CANARY}, path="secrets/evil.yaml", key=mallory)})
    subprocess.run(["git", "add", "-A"], cwd=repo.path, check=True)
    proc = subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", "validate",
                           "--repo", str(repo.path)], env=cli_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "secrets/rules.ncl" in proc.stderr and "not signed" in proc.stderr
    assert "Traceback" not in proc.stderr and CANARY not in proc.stdout + proc.stderr


def test_a_manifest_copied_to_another_path_is_rejected(piped: Piped) -> None:  # noqa: F811
    """The same blob at a second path: rejected by the daemon as validate rejects it (stratum.path binding),
    although the first path's verification is cached."""
    repo, _, pipe, vault, _ = piped
    _base(piped)
    text = (repo.path / "secrets/app.yaml").read_text()
    result = pipe.run(repo.commit({"secrets/copy.yaml": text}))
    assert result.status == "rejected"
    assert "signed for secrets/app.yaml, but lives at secrets/copy.yaml" in _messages(result)
    assert vault.paths() == ["secrets/app.yaml"]


def test_an_older_version_is_rejected_against_the_last_good_revision(piped: Piped) -> None:  # noqa: F811
    """v1 then v2 applied; v1 committed again is a replay, also when the vault's own record of applied versions
    is gone (judged against the last good revision's manifest), and also copied to another path."""
    repo, world, pipe, vault, _ = piped
    _base(piped)
    v1 = (repo.path / "secrets/app.yaml").read_text()
    assert pipe.run(repo.commit({"secrets/app.yaml": world.manifest({"k": "v2"}, previous=v1)})).status \
        == "succeeded"
    vault._versions.clear()
    (vault.state_dir / "versions.json").unlink()
    replay = pipe.run(repo.commit({"secrets/app.yaml": v1}))
    assert replay.status == "rejected" and "replayed" in _messages(replay)
    moved = pipe.run(repo.commit({"secrets/app.yaml": None, "secrets/old.yaml": v1}))
    assert moved.status == "rejected" and "lives at secrets/old.yaml" in _messages(moved)
    assert vault.get("secrets/app.yaml", "k") == "v2"

