"""The vault's answer to the secrets port (reconcilers/ports.py).

    resolve      `kv/<path>#<key>` or `<manifest path>#<dotted key>` to the decrypted value, at the moment an
                 action needs it, from the applied manifests (the daemon's broker audits each use)
    locate       where a reference points in a revision's tree: its manifest, the action loading it, and a keyed
                 fingerprint of the value's committed ciphertext. Nothing is decrypted: manifests keep a
                 value's `ENC[...]` string while the value is unchanged, so the fingerprint moves exactly when
                 the value (or its data key, on rotation) does.
    fingerprint  HMAC of content under the daemon's fingerprint key (fingerprints.py)
Nothing here records a value.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from reconcilers.errors import InputError, StratumError, WaitingError
from reconcilers.ports import SecretLocation, Snapshot
from reconcilers.vault.errors import VaultError
from reconcilers.vault.fingerprints import FingerprintKey
from reconcilers.vault.keysource import KeySealedError
from reconcilers.vault.kvpath import KvMap, Reference, lookup, parse_reference
from reconcilers.vault.manifest import Manifest, parse

if TYPE_CHECKING:
    from reconcilers.vault.pki.certrefs import CertIssuer


def is_cert_reference(reference: str) -> bool:
    """pki/certrefs.py's test, whose module (and the PKI's cryptography.x509 with it) is imported only for a
    reference that can be a certificate's ("cert:..."): a daemon that resolves KV references alone never
    loads the PKI (bench/idle.py)."""
    if not reference.startswith("cert"):
        return False
    from reconcilers.vault.pki.certrefs import is_cert_reference as certrefs_test

    return certrefs_test(reference)


_PARSED_MAX = 1_000


class Values(Protocol):
    """What the port reads of the vault reconciler, declared here so the two do not import each other."""

    @property
    def name(self) -> str: ...

    def get(self, path: str, key: str | None = None) -> Any: ...

    def manifest_for_kv(self, kv_path: str) -> str | None: ...

    def recipient_fingerprint(self) -> str | None: ...

    @property
    def fingerprints(self) -> FingerprintKey: ...

    @property
    def certificates(self) -> CertIssuer: ...


class VaultSecrets:
    """SecretsPort over the vault reconciler's loaded manifests."""

    def __init__(self, vault: Values) -> None:
        self._vault = vault
        self._kv = KvMap()
        self._parsed: OrderedDict[tuple[str, str], Manifest | None] = OrderedDict()

    # resolve: apply time ------------------------------------------------------------------------------
    def resolve(self, reference: str, *, purpose: str) -> str:
        """The value at `reference`; a mapping or list is refused (reference one value). A certificate
        reference is the PEM of its part (issued, or renewed when due, by pki/certrefs.py)."""
        if is_cert_reference(reference):
            return self._vault.certificates.resolve(reference)
        ref = parse_reference(reference)
        path = self._vault.manifest_for_kv(ref.path) if ref.kv else ref.path
        try:
            if path is None:
                raise KeyError(ref.path)
            value = self._vault.get(path, ref.key)
        except KeySealedError as err:
            # Waiting, not failing: the rest of the run applies, and this action proceeds once unsealed.
            raise WaitingError(f"secret {reference}: the daemon's key is behind the vault's seal ({err.hint})",
                               where=reference, hint="`stratum vault unseal`; the action then proceeds",
                               after=2.0) from None
        except KeyError as err:
            # Name this daemon's key: the usual cause is a manifest sealed for another data directory's daemon
            # (`stratum secret init` without the daemon's --data-dir), which its short id shows at a glance.
            mine = self._vault.recipient_fingerprint()
            whose = f"this daemon's key is {mine[:16]}" if mine else "this daemon has no key yet"
            raise StratumError(f"secret {reference} is not loaded or not readable by this daemon ({whose})",
                               where=reference,
                               hint="check the path and key, that the manifest is applied, and that the daemon's "
                                    "key is among its recipients (`stratum secret daemon-key --data-dir <the "
                                    "daemon's>` prints it; add it to the creation rule, then `stratum secret "
                                    "updatekeys`)") from err
        if isinstance(value, dict | list):
            raise InputError(f"secret {reference} holds a mapping or list, not one value", where=reference,
                             hint="reference a single key inside it")
        return str(value)

    # locate: validate and plan time (no plaintext) -----------------------------------------------------
    def _manifest(self, snap: Snapshot, ref: Reference) -> tuple[str, Manifest]:
        if ref.kv:
            found = self._kv.of(snap).get(ref.path, [])
            if not found:
                raise InputError(f"secret {ref.text}: no manifest under secrets/ has KV path {ref.path}",
                                 where=ref.text, hint=f"add secrets/{ref.path.removeprefix('kv/')}.yaml, or set "
                                 "`kv_path` in the manifest that should answer")
            if len(found) > 1:
                raise InputError(f"secret {ref.text}: KV path {ref.path} is declared by {', '.join(found)}",
                                 where=ref.text, hint="give each manifest its own kv_path")
            path = found[0]
        else:
            path = ref.path
        entry = snap.entry(path)
        if entry is None:
            raise InputError(f"secret {ref.text}: {path} is not in the revision", where=ref.text,
                             hint="commit the manifest, or fix the reference")
        key = (path, entry.blob_id)
        if key not in self._parsed:
            try:
                self._parsed[key] = parse(snap.text(entry), path)
            except (VaultError, StratumError):
                self._parsed[key] = None       # the vault's own validation reports what is wrong with it
            while len(self._parsed) > _PARSED_MAX:
                self._parsed.popitem(last=False)
        manifest = self._parsed[key]
        if manifest is None:
            raise InputError(f"secret {ref.text}: {path} is not a valid manifest", where=ref.text,
                             hint="see the vault problems of this revision")
        return path, manifest

    def locate(self, snap: Snapshot, reference: str) -> SecretLocation:
        """The manifest, loading action and keyed version fingerprint of `reference` in `snap` (for a
        certificate: its PKI role and a keyed fingerprint of its generation)."""
        if is_cert_reference(reference):
            return self._vault.certificates.locate(reference, snap.revision)
        ref = parse_reference(reference)
        path, manifest = self._manifest(snap, ref)
        try:
            enc = lookup(manifest.data, ref.key)
        except KeyError as err:
            raise InputError(f"secret {ref.text}: {path} has no key {ref.key}", where=ref.text,
                             hint="fix the key (dotted for nested values) or add it with `stratum secret edit`"
                             ) from err
        if not isinstance(enc, str):
            raise InputError(f"secret {ref.text} holds a mapping or list, not one value", where=ref.text,
                             hint="reference a single key inside it")
        mine = self._vault.recipient_fingerprint()
        groups = [g for g in manifest.meta.key_groups if any(w.recipient == mine for w in g)]
        if mine is not None and len(groups) < manifest.meta.shamir_threshold:
            raise InputError(f"secret {ref.text}: the daemon cannot decrypt {path} (its key is not among the "
                             "recipients)", where=ref.text,
                             hint="add the daemon's recipient (`stratum secret daemon-key`) to the creation rule "
                                  "and run `stratum secret updatekeys`")
        version = self._vault.fingerprints.of(b"secret-version", path.encode(), ref.key.encode(), enc.encode())
        return SecretLocation(reference, path, f"{self._vault.name}:{path}", version)

    def fingerprint(self, data: bytes) -> str:
        """HMAC of `data` under the daemon's fingerprint key."""
        return self._vault.fingerprints.of(b"content", data)
