"""Password elements become secret manifests through the vault's manifest layer, never Nickel.

The values of a form's password elements are sealed into one manifest, `secrets/forms/<form>-<target>.yaml`,
for the recipients of the repository's creation rules (secrets/rules.ncl of the base revision), signed by the
key of whoever runs the form (their keyring, as `stratum secret set` signs; the daemon's web backend uses the
host's `[forms] key_file`). The generated Nickel gets only references: the template's `ncl.<element>` is the
infra contract's `{ secret = "kv/forms/<form>-<target>", key = "<element>" }` (the manifest's KV path), which
the vault resolves at apply time only. A signer the rules do not trust is refused here, before any commit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from reconcilers.errors import InputError
from reconcilers.forms.model import Form
from reconcilers.ports import Evaluator, Snapshot
from reconcilers.vault import envelope, manifest
from reconcilers.vault.backends import get_backend
from reconcilers.vault.keys import KeyRing
from reconcilers.vault.kvpath import kv_path_of
from reconcilers.vault.rules import load_snapshot

SealPasswords = Callable[[Form, Snapshot, Mapping[str, str], str], tuple[dict[str, str], dict[str, str]]]


def manifest_path(form: Form, target: str) -> str:
    """Where the passwords of the form's output at `target` go."""
    stem = target.rsplit("/", 1)[-1].removesuffix(".ncl")
    return f"secrets/forms/{form.name}-{stem}.yaml"


def vault_sealer(evaluator: Evaluator, keyring: Callable[[], KeyRing], backend: str = "openssl") -> SealPasswords:
    """A sealer over the vault layer; `keyring` is called only when a form has passwords."""

    def seal(form: Form, snap: Snapshot, passwords: Mapping[str, str], target: str,
             ) -> tuple[dict[str, str], dict[str, str]]:
        path = manifest_path(form, target)
        rules, problems = load_snapshot(snap, evaluator)
        if problems:
            raise InputError(f"secrets/rules.ncl does not evaluate: {problems[0]}", where="secrets/rules.ncl")
        if rules is None:
            raise InputError(f"form {form.name} asks for a password, and the repository has no secrets/rules.ncl",
                             where=form.path, hint="run `stratum secret init` in the repository first")
        key = keyring().signing_key()
        if rules.trusted(key.signer) is None:
            raise InputError(f"your signing key ({key.signer.fingerprint[:16]}) is not a trusted signer of "
                             "secrets/rules.ncl: the manifest would be refused", where="secrets/rules.ncl",
                             hint="ask a trusted signer to add you (`stratum secret init` prints your key)")
        policy = rules.policy_for(path)
        sealed = envelope.seal(get_backend(backend), dict(passwords), path=path, policy=policy, key=key,
                               where=f"form {form.name}")
        kv = kv_path_of(path)
        return {path: manifest.render(sealed)}, {name: f"{kv}#{name}" for name in passwords}
    return seal
