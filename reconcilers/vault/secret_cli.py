"""`stratum secret ...`: keys, encrypted manifests, the safe editing flow, the git drivers, and the checks.
The vault plugin's verb group (reconcilers/vault/plugin.py): it reaches the data directory, the repository and a
bounded Nickel evaluator through the kernel's VerbHost in click's root `ctx.obj` (reconcilers/ports.py), so it
never imports the daemon; git's drivers run it as `python -m daemon.cli.secret secret ...` (a kernel shim that
runs `stratum`).

Thin on purpose: every verb parses its arguments, calls reconcilers.vault, and prints. Errors are
StratumError subclasses (file, key path, what to do); the main CLI maps them to exit code 1.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import pygit2

from reconcilers.base import Problem
from reconcilers.errors import StratumError
from reconcilers.vault import check as checks
from reconcilers.vault import editing, envelope, keys, manifest, merge, onboard, rules_sig, textconv
from reconcilers.vault.backends import DEFAULT, NAMES, Backend, available, get_backend
from reconcilers.vault.errors import ManifestError, NoKeyError, RulesError, SignatureError, VaultError
from reconcilers.vault.init import wire_repo
from reconcilers.vault.keysource import FileKeySource
from reconcilers.vault.rules import RULES_PATH, Rules, staged_index, unstaged_rules
from reconcilers.vault.secret_rules import load_repo, load_revision
from reconcilers.verbs import common_options, verb_host

if TYPE_CHECKING:
    from reconcilers.ports import VerbHost

OUTPUT = click.option(
    "--output", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Output format."
)
BACKEND = click.option(
    "--backend",
    type=click.Choice(NAMES),
    default=DEFAULT,
    show_default=True,
    envvar="STRATUM_VAULT_BACKEND",
    help="Crypto backend for ML-KEM/ML-DSA.",
)
KEYFILE = click.option(
    "--key-file",
    "key_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Private key file(s); default $STRATUM_KEY_FILE or every key in the config dir.",
)

# `stratum secret init --example`: a sealed manifest and an infra file that uses it
EXAMPLE_MANIFEST = "secrets/app/db.yaml"
EXAMPLE_INFRA = "infra/app_db.ncl"
EXAMPLE_TARGET = "etc/app/db.password"
_EXAMPLE_NCL = f"""# Made by `stratum secret init --example`: a file whose content is a secret. The value comes
# from the sealed manifest {EXAMPLE_MANIFEST} (KV path kv/app/db) and is resolved only when the daemon
# applies this resource: plans, the index and logs show a keyed fingerprint. A file holding a secret defaults
# to mode 0600.
{{
  resources = {{
    app_db_password = {{
      kind = 'file,
      path = "{EXAMPLE_TARGET}",
      content = {{ secret = "kv/app/db", key = "password" }},
    }},
  }},
}}
"""



def not_text(file: Path, err: UnicodeDecodeError) -> ManifestError:
    """The error for a file that is not UTF-8 text (a binary, another encoding)."""
    return ManifestError(f"not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})",
                         where=str(file), hint="secret manifests and plaintext inputs are UTF-8 YAML: check the "
                                               "file name, or convert the file to UTF-8")


class _File:
    """A manifest file on disk: where it lives, its repo, its repo-relative path, its rules."""

    def __init__(self, file: Path, path_override: str | None = None) -> None:
        self.file = file
        self.root = _repo_root(file.resolve().parent)
        if path_override:
            self.path = path_override
        elif self.root is not None:
            self.path = file.resolve().relative_to(self.root).as_posix()
        else:
            self.path = file.name
        self._rules: Rules | bool | None = False

    @property
    def rules(self) -> Rules | None:
        """The creation rules as staged (what the next commit and so the daemon will use); None outside a repo
        or without a rules file."""
        if self._rules is False:
            self._rules = _load_rules(self.root) if self.root is not None else None
        return self._rules if isinstance(self._rules, Rules) else None

    def read(self) -> str:
        """The file's text; a clear error when missing."""
        try:
            return self.file.read_text(encoding="utf-8")
        except OSError as err:
            raise ManifestError(f"cannot read: {err.strerror}", where=str(self.file)) from err
        except UnicodeDecodeError as err:
            raise not_text(self.file, err) from err

    def manifest(self) -> manifest.Manifest:
        """The parsed, encrypted manifest."""
        return manifest.parse(self.read(), str(self.file))

    def write(self, text: str) -> None:
        """Replace the file atomically, keeping its mode (new files: 0644, they hold ciphertext only)."""
        mode = self.file.stat().st_mode & 0o777 if self.file.exists() else 0o644
        tmp = self.file.with_name(f".{self.file.name}.stratum-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, self.file)


def _repo_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _host() -> VerbHost:
    return verb_host("secret", "run `stratum secret ...` (git drivers: `python -m daemon.cli.secret secret ...`)")


def _locate(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
            root: Path | None) -> tuple[Path, Any]:
    """The data directory and host settings of the common options, as every other verb resolves them."""
    return _host().locate({"repo": repo, "data_dir": data_dir, "config": config_file, "branch": branch,
                           "root": root})


def _load_rules(root: Path) -> Rules | None:
    """rules.load_repo (the index, as the daemon loads a commit), with a note when the work tree differs."""
    if unstaged_rules(root):
        click.echo(
            f"note: {RULES_PATH} has unstaged changes; using the staged version (`git add {RULES_PATH}` to use yours)",
            err=True,
        )
    return load_repo(_host(), root)


def _ring(key_files: tuple[Path, ...]) -> keys.KeyRing:
    return keys.load_keyring(list(key_files) or None)


def _policy(f: _File, recipients: tuple[str, ...], threshold: int | None) -> envelope.Policy:
    if recipients:
        parsed = tuple(keys.Recipient.parse(r) for r in recipients)
        return envelope.Policy((parsed,), 1)
    rules = f.rules
    if rules is None:
        raise RulesError(
            "no recipients given and no creation rules found",
            where=f.path,
            hint="pass --recipient stratum1..., or add secrets/rules.ncl to the repo",
        )
    policy = rules.policy_for(f.path)
    return envelope.Policy(policy.groups, threshold or policy.threshold)


def _open(f: _File, backend: Backend, ring: keys.KeyRing, trust: bool = True) -> envelope.Opened:
    """Verify (signatures, and trust when rules exist) and decrypt."""
    m = f.manifest()
    signer = envelope.verify(backend, m, f.path)
    rules = f.rules if trust else None
    if rules is not None and rules.trusted(signer) is None:
        raise SignatureError(
            f"signed by {signer.fingerprint}, not a trusted signer",
            where=f"{f.path}: stratum.signer",
            hint=f"add it to trusted_signers in {rules.source} if you trust it",
        )
    key = envelope.data_key(backend, m, ring, f.path)
    return envelope.Opened(envelope.decrypt_values(backend, m, key, f.path), key, m)


def _save(
    f: _File,
    backend: Backend,
    ring: keys.KeyRing,
    values: dict[str, Any],
    previous: envelope.Opened | None,
    policy: envelope.Policy | None = None,
    rotate: bool = False,
) -> str:
    if policy is None:
        policy = _policy_from_previous(f, previous)
    sealed = envelope.seal(
        backend,
        values,
        path=f.path,
        policy=policy,
        key=ring.signing_key(),
        previous=previous,
        rotate=rotate,
        where=str(f.file),
    )
    f.write(manifest.render(sealed))
    return _described(sealed)


def _described(sealed: manifest.Manifest) -> str:
    """`version N, for kem:..., kem:...; signed as sig:...`: the short ids people compare, never whole keys."""
    meta = sealed.meta
    recipients = ", ".join(w.recipient[:16] for group in meta.key_groups for w in group)
    signer = keys.Signer.parse_cached(meta.signer).fingerprint[:16]
    return f"version {meta.version}, for {recipients}; signed as {signer}"


def _policy_from_previous(f: _File, previous: envelope.Opened | None) -> envelope.Policy | None:
    # Edits keep the recipients the file has unless rules exist: then the rules decide (like updatekeys).
    if f.rules is not None or previous is None:
        return _policy(f, (), None)
    return None


def _echo_problems(problems: list[Problem], output: str) -> None:
    if output == "json":
        click.echo(json.dumps([p.as_dict() for p in problems], indent=2))
    else:
        for p in problems:
            click.echo(str(p), err=True)


class _SecretGroup(click.Group):
    """The verb group; every error a verb raises becomes `error: where: what (hint)` and exit 1, whether the
    group runs under `stratum` or stand-alone (git drivers): never a Python traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the verb, mapping StratumError and OS errors to a message and an exit code."""
        try:
            return super().invoke(ctx)
        except StratumError as err:
            click.echo(f"error: {err.render()}", err=True)
            ctx.exit(err.exit_code)
        except OSError as err:
            where = f"{err.filename}: " if err.filename else ""
            click.echo(f"error: {where}{err.strerror or err}\n  hint: check the path and its permissions", err=True)
            ctx.exit(1)


@click.group("secret", cls=_SecretGroup,
             help="Encrypted secret manifests: keys, encrypt/decrypt/edit, git drivers, checks.")
def secret() -> None:
    """The `stratum secret` verb group."""


@secret.command("keygen")
@click.option("--name", default="default", show_default=True, help="Key file name under the keys directory.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the key file here instead.")
@BACKEND
@OUTPUT
def keygen_cmd(name: str, out: Path | None, backend: str, output: str) -> None:
    """Create a key pair (0600 file); print the recipient (stdout) and signer key (stderr)."""
    identity, signing = keys.generate(get_backend(backend))
    path = out or keys.keys_dir() / f"{name}.key"
    keys.write_key_file(path, identity, signing)
    if output == "json":
        click.echo(
            json.dumps(
                {
                    "file": str(path),
                    "recipient": identity.recipient.text,
                    "signer": signing.signer.text,
                    "recipient_id": identity.recipient.fingerprint,
                    "signer_id": signing.signer.fingerprint,
                }
            )
        )
        return
    click.echo(f"wrote {path} (mode 0600): recipient {identity.recipient.fingerprint[:16]}, "
               f"signer {signing.signer.fingerprint[:16]}", err=True)
    click.echo(f"signer: {signing.signer.text}", err=True)
    click.echo(identity.recipient.text)


def _daemon_key_file(located: tuple[Path, Any], key_file: Path | None) -> Path:
    """The daemon's key: --key-file, else the host setting vault.key_file, else <data-dir>/vault/daemon.key."""
    data_dir, host = located
    configured = host.get("vault", {}).get("key_file")
    return key_file or (Path(configured) if configured else data_dir / "vault" / "daemon.key")


@secret.command("daemon-key")
@common_options
@click.option("--key-file", type=click.Path(path_type=Path), help="Override (host setting vault.key_file).")
@OUTPUT
def daemon_key_cmd(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
                   root: Path | None, key_file: Path | None, output: str) -> None:
    """Print the daemon's recipient (generating its key on first use), to add to the creation rules. The data
    directory defaults as for every other verb."""
    located = _locate(repo, data_dir, config_file, branch, root)
    source = FileKeySource(_daemon_key_file(located, key_file))
    recipient = source.recipient()
    # Once `stratum vault init` moved the key behind the seal, the file is gone: say where the key lives now.
    where = "behind the vault's seal" if source.moved else str(source.path)
    if output == "json":
        click.echo(json.dumps({"file": None if source.moved else str(source.path), "sealed": source.moved,
                               "recipient": recipient.text, "recipient_id": recipient.fingerprint}))
    else:
        click.echo(f"the daemon's recipient {recipient.fingerprint} (key {where})", err=True)
        click.echo(recipient.text)


@secret.command("init")
@common_options
@click.option("--name", default=None, help="Your name among the trusted signers (default: git user.name).")
@click.option("--commit", "do_commit", is_flag=True, help="Commit the rules (default: stage them).")
@click.option("--example", is_flag=True,
              help=f"Also write {EXAMPLE_MANIFEST} (a generated password, never shown) and {EXAMPLE_INFRA} (a file "
                   "the daemon writes from it): a secret used end to end.")
@BACKEND
@KEYFILE
def init_cmd(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
             root: Path | None, name: str | None, do_commit: bool, example: bool, backend: str,
             key_files: tuple[Path, ...]) -> None:
    """Set up secrets in one step: your keys (made if you have none), you as trusted signer and recipient, the
    daemon's key as recipient, one rule for secrets/, and the git diff/merge drivers; staged or committed.
    With --example, also a sealed manifest and an infra file that uses it."""
    located = _locate(repo, data_dir, config_file, branch, root)
    top = _repo_root(Path(repo or ".").resolve())
    if top is None:
        raise StratumError("not inside a git repository", where=str(repo or "."),
                           hint="run it in your ops repo (`stratum init DIR` makes one)")
    if not onboard.is_empty(_load_rules(top)):
        raise RulesError("the rules already trust signers or name recipients; init does not overwrite them",
                         where=RULES_PATH, hint="edit them, then `stratum secret sign-rules`; "
                         "`stratum secret updatekeys FILE` re-wraps a manifest for new recipients")
    # 1. your keys
    ring = _ring(key_files)
    if ring.identities and ring.signing_keys:
        identity, signing, made = ring.identities[0], ring.signing_keys[0], ""
    else:
        if key_files or os.environ.get("STRATUM_KEY_FILE"):
            raise NoKeyError("the given key file holds no key pair", where=", ".join(ring.sources),
                                  hint="run `stratum secret keygen --out FILE`, or unset STRATUM_KEY_FILE")
        identity, signing = keys.generate(get_backend(backend))
        made = str(keys.keys_dir() / "default.key")
        keys.write_key_file(Path(made), identity, signing)
    # 2. the daemon's key, 3. the rules, 4. staged or committed
    daemon = FileKeySource(_daemon_key_file(located, None)).recipient()
    who = onboard.signer_name(name or _git_config(top, "user.name") or os.environ.get("GIT_AUTHOR_NAME", "")
                              or os.environ.get("USER", ""))
    if example:
        taken = [p for p in (EXAMPLE_MANIFEST, EXAMPLE_INFRA) if (top / p).exists()]
        if taken:
            raise StratumError(f"{', '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; --example does "
                               "not overwrite files", where=str(top), hint="run it without --example")
    (top / RULES_PATH).parent.mkdir(parents=True, exist_ok=True)
    (top / RULES_PATH).write_text(
        onboard.render_rules(who, signing.signer, [(f"{who}", identity.recipient), ("the daemon", daemon)]))
    wire_repo(top)
    paths = [RULES_PATH, ".gitattributes"]
    _git_lines(top, "add", "--", *paths)
    if example:   # after staging the rules: encrypt reads the staged rules
        paths += _write_example(top, get_backend(backend), _ring(key_files))
        _git_lines(top, "add", "--", *paths)
    if made:
        click.echo(f"made your key pair {made} (0600; keep it out of every repository)", err=True)
    click.echo(f"trusted signer: {who} {signing.signer.fingerprint[:16]}", err=True)
    click.echo(f"recipients:     {who} {identity.recipient.fingerprint[:16]}, "
               f"the daemon {daemon.fingerprint[:16]} (data dir {located[0]})", err=True)
    if do_commit:
        what = f"Secrets: trust {who}; one rule for {who} and the daemon" + (
            f"; example {EXAMPLE_MANIFEST} used by {EXAMPLE_INFRA}" if example else "")
        result = subprocess.run(["git", "-C", str(top), "commit", "-q", "-m", what, "--", *paths],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StratumError(f"git commit failed: {result.stderr.strip() or result.stdout.strip()}",
                               where=str(top), hint="the rules are staged: fix the cause (a git identity?) "
                               "and `git commit`")
        click.echo(f"committed {', '.join(p for p in paths if p != '.gitattributes')}", err=True)
    else:
        click.echo(f"staged {', '.join(p for p in paths if p != '.gitattributes')}: commit them", err=True)
    if example:
        click.echo(f"next: stratum apply   (writes {EXAMPLE_TARGET}, mode 0600, from kv/app/db#password; plans "
                   "show a fingerprint only); with the vault service on, a token with policy `app` reads kv/app/db",
                   err=True)
    else:
        click.echo("next: stratum secret edit secrets/app.yaml   (or encrypt a YAML file in secrets/)", err=True)


def _write_example(top: Path, backend: Backend, ring: keys.KeyRing) -> list[str]:
    """A sealed example manifest (a generated password nobody is shown: `stratum secret decrypt` reveals it to
    its recipients) and an infra file that uses it; returns their repo paths."""
    import secrets as random_source

    (top / EXAMPLE_MANIFEST).parent.mkdir(parents=True, exist_ok=True)
    f = _File(top / EXAMPLE_MANIFEST)
    values = {"user": "app", "password": random_source.token_urlsafe(24)}
    described = _save(f, backend, ring, values, None, _policy(f, (), None))
    (top / EXAMPLE_INFRA).parent.mkdir(parents=True, exist_ok=True)
    (top / EXAMPLE_INFRA).write_text(_EXAMPLE_NCL)
    click.echo(f"encrypted {EXAMPLE_MANIFEST} ({described}); {EXAMPLE_INFRA} writes {EXAMPLE_TARGET} from it",
               err=True)
    return [EXAMPLE_MANIFEST, EXAMPLE_INFRA]


def _git_config(root: Path, key: str) -> str:
    result = subprocess.run(["git", "-C", str(root), "config", key], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


@secret.command("encrypt")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--recipient", "-r", "recipients", multiple=True, help="Recipient (repeat); default: the rules.")
@click.option("--path", "path_override", help="Repo-relative path to bind the manifest to.")
@BACKEND
@KEYFILE
def encrypt_cmd(
    file: Path,
    recipients: tuple[str, ...],
    path_override: str | None,
    backend: str,
    key_files: tuple[Path, ...],
) -> None:
    """Encrypt a plaintext YAML file in place."""
    f = _File(file, path_override)
    data, meta = manifest.split_document(manifest.load_yaml(f.read(), str(file)), str(file))
    if meta is not None:
        raise ManifestError("already encrypted", where=str(file), hint="use `stratum secret edit` or `set`")
    ring = _ring(key_files)
    described = _save(f, get_backend(backend), ring, data, None, _policy(f, recipients, None))
    click.echo(f"encrypted {file} ({described})", err=True)


@secret.command("decrypt")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), help="Write here (0600).")
@BACKEND
@KEYFILE
def decrypt_cmd(file: Path, out: Path | None, backend: str, key_files: tuple[Path, ...]) -> None:
    """Print (or write) the decrypted YAML, after verifying signatures and the signer's trust."""
    opened = _open(_File(file), get_backend(backend), _ring(key_files))
    text = manifest.dump_yaml(opened.values) if opened.values else "{}\n"
    if out is None:
        click.echo(text, nl=False)
        return
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


@secret.command("edit")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@BACKEND
@KEYFILE
def edit_cmd(file: Path, backend: str, key_files: tuple[Path, ...]) -> None:
    """Edit in $EDITOR through a private 0600 plaintext copy that never survives the command."""
    f, b, ring = _File(file), get_backend(backend), _ring(key_files)
    previous = _open(f, b, ring) if file.exists() else None
    values = previous.values if previous else {}
    header = f"# {f.path}: edit and save; the plaintext copy is removed when the editor exits.\n"
    edited = editing.edit_values(values, str(file), header)
    if previous is not None and merge._same(edited, previous.values):
        click.echo("no changes", err=True)
        return
    described = _save(f, b, ring, edited, previous)
    click.echo(f"saved {file} ({described})", err=True)


def _split_key(key: str) -> list[str]:
    parts = [p for p in key.split(".") if p]
    if not parts:
        raise ManifestError("empty key path", hint="name the key as a dotted path, e.g. db.password")
    return parts


@secret.command("set")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("key")
@click.option(
    "--type",
    "type_",
    type=click.Choice(["str", "int", "float", "bool", "bytes"]),
    default="str",
    show_default=True,
    help="How to read the value from stdin.",
)
@BACKEND
@KEYFILE
def set_cmd(file: Path, key: str, type_: str, backend: str, key_files: tuple[Path, ...]) -> None:
    """Set KEY (dotted path) to the value read from stdin (one trailing newline dropped)."""
    raw = sys.stdin.buffer.read()
    if type_ != "bytes" and raw.endswith(b"\n"):
        raw = raw[:-1]
    try:
        value: Any = (
            raw if type_ == "bytes" else manifest.decode_value(raw.strip().lower() if type_ == "bool" else raw, type_)
        )
    except (ValueError, UnicodeDecodeError) as err:
        raise ManifestError(f"stdin is not a valid {type_}", where=f"{file}: {key}") from err
    if type_ == "bool" and raw.strip().lower() not in (b"true", b"false"):
        raise ManifestError("a bool must be true or false", where=f"{file}: {key}")
    f, b, ring = _File(file), get_backend(backend), _ring(key_files)
    previous = _open(f, b, ring) if file.exists() else None
    values = copy.deepcopy(previous.values) if previous else {}
    node = values
    parts = _split_key(key)
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ManifestError(f"{part} holds a value, not a mapping", where=f"{file}: {key}")
        node = nxt
    node[parts[-1]] = value
    described = _save(f, b, ring, values, previous)
    click.echo(f"set {key} in {file} ({described})", err=True)


@secret.command("unset")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("key")
@BACKEND
@KEYFILE
def unset_cmd(file: Path, key: str, backend: str, key_files: tuple[Path, ...]) -> None:
    """Remove KEY (dotted path)."""
    f, b, ring = _File(file), get_backend(backend), _ring(key_files)
    previous = _open(f, b, ring)
    values = copy.deepcopy(previous.values)
    node: Any = values
    parts = _split_key(key)
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            # Key names are not secret (git diff shows them): say where the path stops and what is there.
            at = ".".join(parts[:depth]) or "the top level"
            known = ", ".join(sorted(str(k) for k in node)) if isinstance(node, dict) and node else "none"
            raise ManifestError(
                f"no such key: {at} has no key {part!r}", where=f"{file}: {key}",
                hint=f"keys there: {known}; `stratum secret textconv {file}` lists every key path",
            )
        if depth < len(parts) - 1:
            node = node[part]
    del node[parts[-1]]
    # Drop mappings the removal left empty, so `unset a.b` on the last key of `a` removes `a` too.
    for depth in range(len(parts) - 1, 0, -1):
        parent: Any = values
        for part in parts[: depth - 1]:
            parent = parent[part]
        if parent[parts[depth - 1]] == {}:
            del parent[parts[depth - 1]]
    described = _save(f, b, ring, values, previous)
    click.echo(f"removed {key} from {file} ({described})", err=True)


@secret.command("rotate")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@BACKEND
@KEYFILE
def rotate_cmd(file: Path, backend: str, key_files: tuple[Path, ...]) -> None:
    """Re-encrypt every value under a new data key, wrapped for the rules' recipients."""
    f, b, ring = _File(file), get_backend(backend), _ring(key_files)
    previous = _open(f, b, ring)
    described = _save(f, b, ring, previous.values, previous, _policy(f, (), None), rotate=True)
    click.echo(f"rotated the data key of {file} ({described})", err=True)


@secret.command("updatekeys")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@BACKEND
@KEYFILE
def updatekeys_cmd(file: Path, backend: str, key_files: tuple[Path, ...]) -> None:
    """Re-wrap the data key for the recipients the creation rules name now, and re-sign."""
    f, b, ring = _File(file), get_backend(backend), _ring(key_files)
    previous = _open(f, b, ring)
    policy = _policy(f, (), None)
    forced = envelope.Opened(previous.values, previous.data_key, previous.manifest)
    sealed = envelope.seal(
        b, forced.values, path=f.path, policy=policy, key=ring.signing_key(), previous=forced, where=str(file)
    )
    f.write(manifest.render(sealed))
    click.echo(f"updated the recipients of {file} ({_described(sealed)})", err=True)


@secret.command("sign-rules")
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=".", show_default=True)
@BACKEND
@KEYFILE
def sign_rules_cmd(repo: Path, backend: str, key_files: tuple[Path, ...]) -> None:
    """Sign the staged rules (trusted signers, creation rules) and stage the signature file. The daemon accepts
    a rules change only when a signer trusted by the previous rules signed it: a commit cannot trust itself."""
    root = _repo_root(repo.resolve())
    if root is None:
        raise StratumError("not inside a git repository", where=str(repo), hint="run it in your ops repo")
    rules = _load_rules(root)
    sig_file = root / rules_sig.sig_path(RULES_PATH)
    previous = None
    if sig_file.is_file():
        try:
            previous = rules_sig.parse(sig_file.read_text(encoding="utf-8"), str(sig_file))
        except SignatureError:
            previous = None  # a damaged old signature only loses its version; the new one starts above now
    key = _ring(key_files).signing_key()
    sig = rules_sig.sign(get_backend(backend), rules, key, RULES_PATH, previous)
    sig_file.parent.mkdir(parents=True, exist_ok=True)
    sig_file.write_text(sig.render(), encoding="utf-8")
    _git_lines(root, "add", "--", rules_sig.sig_path(RULES_PATH))
    click.echo(f"signed the staged rules ({sig.digest[:19]}, version {sig.version}) as {key.signer.fingerprint}; "
               f"staged {rules_sig.sig_path(RULES_PATH)}: commit it with the rules", err=True)
    head = load_revision(_host(), root, "HEAD")
    if head is not None and head.signers and head.trusted(key.signer) is None:
        click.echo(f"warning: {key.signer.fingerprint} is not a trusted signer at HEAD, so the daemon will reject "
                   "this rules change; ask a signer trusted there to run `stratum secret sign-rules`", err=True)


@secret.command("verify")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True))
@BACKEND
@OUTPUT
@click.pass_context
def verify_cmd(ctx: click.Context, files: tuple[Path, ...], backend: str, output: str) -> None:
    """Check signatures, signer trust, required recipients and path binding (no private key needed)."""
    b = get_backend(backend)
    problems: list[Problem] = []
    report: list[dict[str, Any]] = []
    for file in files:
        f = _File(file)
        m, found = checks.check_manifest(b, f.read(), f.path, f.rules)
        problems += found
        signer = keys.Signer.parse(m.meta.signer).fingerprint if m is not None else None
        report.append(
            {
                "file": str(file),
                "path": f.path,
                "ok": not found,
                "signer": signer,
                "version": m.meta.version if m else None,
                "trusted_as": f.rules.trusted(keys.Signer.parse(m.meta.signer)) if m and f.rules else None,
            }
        )
    if output == "json":
        click.echo(json.dumps({"files": report, "problems": [p.as_dict() for p in problems]}, indent=2))
    else:
        _echo_problems(problems, "text")
        for r in report:
            if r["ok"]:
                click.echo(f"{r['path']}: ok (version {r['version']}, signed by {r['trusted_as']} {r['signer']})")
    if problems:
        ctx.exit(1)


@secret.command("textconv")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--reveal", is_flag=True, help="Show plaintext values (needs a key that opens the file).")
@BACKEND
@KEYFILE
def textconv_cmd(file: Path, reveal: bool, backend: str, key_files: tuple[Path, ...]) -> None:
    """The `git diff` view: key paths and value fingerprints, never plaintext unless --reveal."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
        m = manifest.parse(text, str(file))
    except (UnicodeDecodeError, VaultError):
        # not a manifest (yet, or not text at all): git shows it as it is, and the check flags it
        sys.stdout.buffer.write(data)
        return
    b = get_backend(backend)
    opened: envelope.Opened | None = None
    try:
        ring = _ring(key_files)
        envelope.verify(b, m, str(file))
        key = envelope.data_key(b, m, ring, str(file))
        opened = envelope.Opened(envelope.decrypt_values(b, m, key, str(file)), key, m)
    except VaultError:
        if reveal:
            raise
    click.echo(textconv.render(m, opened, reveal), nl=False)


@secret.command("merge")
@click.argument("base", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("ours", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("theirs", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--path", "path_override", help="The manifest's repo-relative path (git passes %P).")
@BACKEND
@KEYFILE
@click.pass_context
def merge_cmd(
    ctx: click.Context,
    base: Path,
    ours: Path,
    theirs: Path,
    path_override: str | None,
    backend: str,
    key_files: tuple[Path, ...],
) -> None:
    """A git merge driver: three-way merge of decrypted values into OURS, re-encrypted and re-signed."""
    b, ring = get_backend(backend), _ring(key_files)
    path = path_override or ours.name
    # git runs drivers at the repo root; the rules come from there, the files are git's temp copies.
    f_ours = _File(ours, path)
    if f_ours.root is None:
        f_ours.root = _repo_root(Path.cwd())

    def opened(p: Path) -> envelope.Opened | None:
        if not p.exists() or p.stat().st_size == 0:
            return None
        tmp = _File(p, path)
        tmp.root = f_ours.root
        return _open(tmp, b, ring)

    o_base, o_ours, o_theirs = opened(base), opened(ours), opened(theirs)
    if o_ours is None:
        raise ManifestError("our side of the merge is empty", where=path)
    merged, conflicts = merge.merge_trees(
        o_base.values if o_base else {}, o_ours.values, o_theirs.values if o_theirs else {}
    )
    newest = max((o for o in (o_ours, o_theirs) if o), key=lambda o: o.manifest.meta.version)
    described = _save(f_ours, b, ring, merged, newest)
    if conflicts:
        for kp in conflicts:
            click.echo(f"CONFLICT {path}: {manifest.display(kp)} changed on both sides", err=True)
        click.echo(f"resolve with `stratum secret edit {path}` (values between <<<<<<< and >>>>>>>)", err=True)
        ctx.exit(1)
    click.echo(f"merged {path} ({described})", err=True)


def _git_lines(root: Path, *args: str) -> list[str]:
    result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=False)
    return [ln for ln in result.stdout.decode("utf-8", "replace").split("\0") if ln] if result.returncode == 0 else []


def _staged_blobs(root: Path, paths: list[str]) -> dict[str, bytes]:
    repo = pygit2.Repository(str(root))
    index = staged_index(repo)
    out: dict[str, bytes] = {}
    for path in paths:
        try:
            blob = repo[index[path].id]
        except KeyError:  # not in the index (removed meanwhile): nothing will be committed
            continue
        if isinstance(blob, pygit2.Blob):
            out[path] = blob.data
    return out


def _head_bytes(root: Path, path: str) -> bytes | None:
    result = subprocess.run(["git", "-C", str(root), "show", f"HEAD:{path}"], capture_output=True, check=False)
    return result.stdout if result.returncode == 0 else None


def _head_version(root: Path, path: str) -> tuple[int | None, bytes | None]:
    result = subprocess.run(["git", "-C", str(root), "show", f"HEAD:{path}"], capture_output=True, check=False)
    if result.returncode != 0:
        return None, None
    try:
        return manifest.parse(result.stdout.decode("utf-8"), path).meta.version, result.stdout
    except (VaultError, UnicodeDecodeError):
        return None, result.stdout


@secret.command("check")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=".", show_default=True)
@BACKEND
@OUTPUT
@click.pass_context
def check_cmd(ctx: click.Context, files: tuple[Path, ...], repo: Path, backend: str, output: str) -> None:
    """Fail on plaintext values, bad or untrusted signatures, missing recipients, replayed versions, and
    private    keys or credentials in any given file (default: every staged file)."""
    root = _repo_root(repo.resolve())
    if root is None:
        raise StratumError("not inside a git repository", where=str(repo), hint="run it in your ops repo")
    if files:
        paths = [
            (root / Path(f)).resolve().relative_to(root).as_posix()
            if not Path(f).is_absolute()
            else Path(f).resolve().relative_to(root).as_posix()
            for f in files
        ]
    else:
        paths = _git_lines(root, "diff", "--cached", "--name-only", "-z", "--diff-filter=ACMR")
    sig_path = rules_sig.sig_path(RULES_PATH)
    rules_touched = RULES_PATH in paths or sig_path in paths
    rules = _load_rules(root) if rules_touched or any(checks.is_manifest_path(p) for p in paths) else None
    b = get_backend(backend)
    problems: list[Problem] = []
    if rules_touched:
        # The daemon's rule: a rules change must be signed by a signer the previous rules (here HEAD's) trusted.
        sig_now = _staged_blobs(root, [sig_path]).get(sig_path)
        head_sig = _head_bytes(root, sig_path)
        head_rules = load_revision(_host(), root, "HEAD")
        problems += rules_sig.judge(b, rules, sig_now.decode("utf-8", "replace") if sig_now else None,
                                    head_rules, head_sig.decode("utf-8", "replace") if head_sig else None,
                                    RULES_PATH, "HEAD")
    # Named files (pre-commit passes them, with unstaged changes stashed) are read from disk; without names,
    # the staged files are read from the index: what `git commit` would record.
    staged = None if files else _staged_blobs(root, paths)
    for path in paths:
        file = root / path
        if staged is not None:
            if path not in staged:
                continue
            data = staged[path]
        elif not file.is_file():
            continue
        else:
            data = file.read_bytes()
        problems += checks.check_credentials(path, data)
        if checks.is_manifest_path(path):
            head_version, head_bytes = _head_version(root, path)
            last = head_version if head_bytes is not None and head_bytes != data else None
            _, found = checks.check_manifest(b, data.decode("utf-8", "replace"), path, rules, last)
            problems += found
    if output == "json":
        click.echo(json.dumps({"checked": len(paths), "problems": [p.as_dict() for p in problems]}, indent=2))
    else:
        _echo_problems(problems, "text")
        click.echo(f"{len(paths)} file(s) checked, {len(problems)} problem(s)", err=True)
    if problems:
        ctx.exit(1)


@secret.command("backends")
@OUTPUT
def backends_cmd(output: str) -> None:
    """List the crypto backends and whether each can run here."""
    status = available()
    if output == "json":
        click.echo(json.dumps(status, indent=2))
    else:
        for name, state in status.items():
            click.echo(f"{name:8} {state}")
