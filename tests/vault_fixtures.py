"""Helpers for tests that commit real secret manifests: a user's keys, the daemon's key where the daemon looks
for it (<data-dir>/vault/daemon.key), rules that trust the user and name both as recipients, and sealed
manifests. Everything is real crypto with the default backend; nothing is mocked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from reconcilers.vault import envelope, keys, manifest, rules_sig
from reconcilers.vault.backends import get_backend
from reconcilers.vault.keysource import FileKeySource
from reconcilers.vault.rules import Rules, from_value

B = get_backend("openssl")
# A value that must never appear outside the daemon's memory: searched for in files, logs, plans and output.
CANARY = "canary-Pl41nt3xt-7f3a9c"


def rules_ncl(signers: dict[str, keys.Signer], recipients: list[keys.Recipient]) -> str:
    """secrets/rules.ncl trusting `signers` (name -> key), one `^secrets/` rule for `recipients`."""
    listed = ", ".join(f'{{ name = "{n}", key = {json.dumps(s.text)} }}' for n, s in signers.items())
    rcpts = ", ".join(json.dumps(r.text) for r in recipients)
    return (f"{{\n  trusted_signers = [{listed}],\n"
            f'  creation_rules = [{{ path_regex = "^secrets/", recipients = [{rcpts}] }}],\n}}\n')


def rules_value(signers: dict[str, keys.Signer], recipients: list[keys.Recipient]) -> Rules:
    """The evaluated form of `rules_ncl(signers, recipients)` (what the daemon gets from Nickel)."""
    return from_value({"trusted_signers": [{"name": n, "key": s.text} for n, s in signers.items()],
                       "creation_rules": [{"path_regex": "^secrets/", "recipients": [r.text for r in recipients]}]})


@dataclass
class SecretWorld:
    """A user (trusted signer and recipient) and the daemon (recipient) of one data directory."""

    user: keys.SigningKey
    user_identity: keys.Identity
    daemon: keys.Recipient

    def recipients(self) -> list[keys.Recipient]:
        """The rule's recipients: the user and the daemon."""
        return [self.user_identity.recipient, self.daemon]

    def rules(self, **extra: keys.Signer) -> str:
        """The rules text trusting the user (and `extra` signers)."""
        return rules_ncl({"ops": self.user.signer, **extra}, self.recipients())

    def rules_sig(self, key: keys.SigningKey, previous: str | None = None, **extra: keys.Signer) -> str:
        """A signature by `key` over `rules(**extra)` (what `stratum secret sign-rules` writes)."""
        value = rules_value({"ops": self.user.signer, **extra}, self.recipients())
        prev = rules_sig.parse(previous, "prev") if previous else None
        return rules_sig.sign(B, value, key, previous=prev).render()

    def manifest(self, values: dict[str, object], path: str = "secrets/app.yaml",
                 key: keys.SigningKey | None = None, previous: str | None = None) -> str:
        """A sealed manifest for `path`, signed by `key` (default: the user), after `previous` (a version bump)."""
        opened = None
        if previous is not None:
            m = manifest.parse(previous, path)
            ring = keys.KeyRing((self.user_identity,), ())
            opened = envelope.open_manifest(B, m, ring, path)
        policy = envelope.Policy((tuple(self.recipients()),))
        return manifest.render(envelope.seal(B, values, path=path, policy=policy, key=key or self.user,
                                             previous=opened))


def secret_world(data_dir: Path) -> SecretWorld:
    """A user's keys, and the daemon's key created where the daemon of `data_dir` will read it."""
    identity, signing = keys.generate(B)
    daemon = FileKeySource(data_dir / "vault" / "daemon.key").recipient()
    return SecretWorld(signing, identity, daemon)
