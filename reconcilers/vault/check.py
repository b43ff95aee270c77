"""The secret checks, shared by `stratum secret check`, the pre-commit hook, validate, the daemon.

For a manifest (`secrets/**/*.yaml`):
 1. it parses, and every value is an `ENC[...]` string (each plaintext key path is its own problem);
 2. it was signed for the path it lives at;
 3. both signatures verify, and the signer is a trusted signer of the rules;
 4. every recipient the creation rules require is in its key group, with the rule's threshold;
 5. its version is above the last one seen for the path (no replay of an older, validly signed file).
For any file: no private key block or high-confidence credential (credentials.py).
Problems name file and key path, never a value.
"""

from __future__ import annotations

from collections.abc import Sequence

from reconcilers.base import Problem
from reconcilers.vault import credentials, envelope
from reconcilers.vault.backends import Backend
from reconcilers.vault.errors import VaultError
from reconcilers.vault.manifest import (
    Manifest,
    display,
    parse_meta,
    plaintext_paths,
    split_text,
)
from reconcilers.vault.rules import Rules

NAME = "vault"
MANIFEST_SUFFIXES = (".yaml", ".yml")
# Below this many manifests, starting threads costs more than the second core saves.
PARALLEL_MIN = 16


def is_manifest_path(path: str) -> bool:
    """True for a repo-relative path the vault treats as a secret manifest."""
    return path.startswith("secrets/") and path.endswith(MANIFEST_SUFFIXES)


def _problem(err: VaultError, path: str) -> Problem:
    # err.where already starts with the file; keep only the key path part after it for the message.
    where = err.where
    suffix = where[len(path) :].lstrip(": ") if where.startswith(path) else where
    message = f"{suffix}: {err.what}" if suffix else err.what
    return Problem(message=message, path=path, reconciler=NAME, hint=err.hint)


def parse_checked(text: str, path: str) -> tuple[Manifest | None, list[Problem]]:
    """Step 1: the manifest, or the problems (one per plaintext key path)."""
    try:
        data, raw_meta = split_text(text, path)
        leaks = plaintext_paths(data)
        if leaks:
            return None, [
                Problem(
                    f"{display(p)}: value is not encrypted",
                    path=path,
                    reconciler=NAME,
                    hint="run `stratum secret encrypt` on the file; never commit plaintext",
                )
                for p in leaks
            ]
        return Manifest(data=data, meta=parse_meta(raw_meta, path)), []
    except VaultError as err:
        return None, [_problem(err, path)]


def check_manifest(
    backend: Backend, text: str, path: str, rules: Rules | None, last_version: int | None = None
) -> tuple[Manifest | None, list[Problem]]:
    """Steps 1-5 for one manifest. The manifest is returned when steps 1-3 passed."""
    manifest, problems = parse_checked(text, path)
    if manifest is None:
        return None, problems
    meta = manifest.meta
    # 2. bound to its path
    if meta.path != path:
        problems.append(
            Problem(
                f"stratum.path: signed for {meta.path}, but lives at {path}",
                path=path,
                reconciler=NAME,
                hint="run `stratum secret updatekeys` to re-sign it here",
            )
        )
    # 3. signatures and trust
    try:
        signer = envelope.verify(backend, manifest, path)
    except VaultError as err:
        return None, [*problems, _problem(err, path)]
    if rules is None:
        problems.append(
            Problem(
                "no rules file: cannot tell whether the signer is trusted",
                path=path,
                reconciler=NAME,
                hint="add secrets/rules.ncl with trusted_signers",
            )
        )
        return manifest, problems
    if rules.trusted(signer) is None:
        problems.append(
            Problem(
                f"stratum.signer: signed by {signer.fingerprint}, not a trusted signer",
                path=path,
                reconciler=NAME,
                hint=f"add the signer to trusted_signers in {rules.source}, or have a trusted "
                "signer re-sign with `stratum secret updatekeys`",
            )
        )
    # 4. required recipients
    try:
        policy = rules.policy_for(path)
    except VaultError as err:
        problems.append(_problem(err, path))
    else:
        have = [{w.recipient for w in g} for g in meta.key_groups]
        for gi, group in enumerate(policy.groups):
            for r in group:
                if gi >= len(have) or r.fingerprint not in have[gi]:
                    problems.append(
                        Problem(
                            f"stratum.key_groups[{gi}]: recipient {r.fingerprint} required by the rules is missing",
                            path=path,
                            reconciler=NAME,
                            hint="run `stratum secret updatekeys` on the file",
                        )
                    )
        if len(policy.groups) != len(meta.key_groups) or policy.threshold != meta.shamir_threshold:
            problems.append(
                Problem(
                    f"stratum.key_groups: {len(meta.key_groups)} group(s), "
                    f"threshold {meta.shamir_threshold}; "
                    f"the rules want {len(policy.groups)}, threshold {policy.threshold}",
                    path=path,
                    reconciler=NAME,
                    hint="run `stratum secret updatekeys` on the file",
                )
            )
    # 5. replay
    if last_version is not None and meta.version <= last_version:
        problems.append(
            Problem(
                f"stratum.version {meta.version} is not above the last seen {last_version}: an "
                "older manifest replayed?",
                path=path,
                reconciler=NAME,
                hint="re-save it with `stratum secret edit` (it bumps the version)",
            )
        )
    return manifest, problems


def check_manifests(
    backend: Backend, items: Sequence[tuple[str, str]], rules: Rules | None, workers: int = 1
) -> list[tuple[Manifest | None, list[Problem]]]:
    """`check_manifest` for each (text, path) of `items`, in order, on up to `workers` threads (from
    PARALLEL_MIN items on).

    The two signature checks, about two thirds of a manifest's cost, run without the GIL: cryptography releases
    it during Ed25519 and ML-DSA verification (pyca/cryptography#15164, measured with 51.0) and PQClean's cffi
    calls release it too. But on the 2-core shared host measured (load 2 and more), two threads were slower
    than one (1,000 manifests: 0.66-0.71 s against 0.60 s, with ~1.7x the CPU: the threads trade the GIL at every
    signature), so the daemon checks serially (the default) and bench/secret_manifests.py keeps measuring the
    threaded path. Each check reads only its arguments; the results are the serial ones, in the same order."""
    if workers <= 1 or len(items) < PARALLEL_MIN:
        return [check_manifest(backend, text, path, rules) for text, path in items]
    from concurrent.futures import ThreadPoolExecutor  # only for many manifests (~10 ms of every validate)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vault-verify") as pool:
        return list(pool.map(lambda item: check_manifest(backend, item[0], item[1], rules), items))


def check_credentials(path: str, data: bytes) -> list[Problem]:
    """A problem for every private key block or credential pattern in a file."""
    return [
        Problem(
            f"contains a {f.kind}",
            path=path,
            line=f.line,
            reconciler=NAME,
            hint="remove it and rotate the credential; store secrets with `stratum secret set`",
        )
        for f in credentials.scan(path, data)
    ]
