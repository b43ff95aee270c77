"""The errors of the vault. Each names the file and key path and says what to do; none carries plaintext.

reconcilers.errors.InputError
 +-- VaultError                 base of every vault error (stalls the revision: no retry)
      +-- ManifestError         malformed YAML, unknown format version, a plaintext value, a missing block
      +-- DecryptError          a value or the data key does not open (tampered, truncated, swapped)
      +-- NoKeyError            none of the user's keys is a recipient of the manifest
      +-- SignatureError        missing, invalid, or untrusted signature; replayed version
      +-- RulesError            the creation rules are invalid or name no rule for a path
      +-- KeyFormatError        a key's text form is malformed (bad checksum, wrong kind)
      +-- BackendUnavailable    a crypto backend cannot run here (library missing, key form unsupported)
"""

from __future__ import annotations

from reconcilers.errors import InputError


class VaultError(InputError):
    """Base of the vault's errors."""


class ManifestError(VaultError):
    """The manifest's shape is wrong: YAML, metadata block, format version, an unencrypted value."""


class DecryptError(VaultError):
    """Authenticated decryption failed: a value or the wrapped data key was changed or moved."""


class NoKeyError(VaultError):
    """No private key the user holds can open the manifest."""


class SignatureError(VaultError):
    """The manifest's signature is missing, invalid, by an untrusted signer, or its version is replayed."""


class RulesError(VaultError):
    """The repo's creation rules are invalid or do not cover a path."""


class KeyFormatError(VaultError):
    """A key's text form does not parse (checksum, prefix, length)."""


class BackendUnavailable(VaultError):
    """A crypto backend is not installed here, or cannot use the given key form."""
