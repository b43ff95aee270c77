"""`stratum vault` (init, unseal, seal, status against a running daemon's vault API) and `stratum audit verify`:
the vault plugin's verbs (errors are rendered by the `stratum` group's one handler).

The verbs speak HTTP to the vault listener (`--address`, else $VAULT_ADDR, else the host settings' `[vault]
listen`, else http://127.0.0.1:8200), as the
`vault operator` commands do; unseal keys are read from a hidden prompt unless given (a shell history keeps
arguments).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from reconcilers.errors import InputError, StratumError

DEFAULT_ADDR = "http://127.0.0.1:8200"


class VaultApiError(StratumError):
    """The vault answered with an error, or could not be reached."""


def _address(option: str | None) -> str:
    """--address, else $VAULT_ADDR, else the listener the host settings of this repository's data directory
    give the vault (`[vault] listen`, https when `[http]` has a certificate), else the default."""
    import os

    return (option or os.environ.get("VAULT_ADDR") or _configured() or DEFAULT_ADDR).rstrip("/")


def _configured() -> str | None:
    """The vault listener named by the host settings the daemon of this repository reads (the VerbHost port
    resolves the data directory as every verb does: --repo/--data-dir given to the group, else the defaults)."""
    ctx = click.get_current_context(silent=True)
    host = ctx.find_root().obj if ctx is not None else None
    if host is None or not hasattr(host, "locate"):
        return None
    options = ctx.find_object(dict) if ctx is not None else None
    try:
        _, settings = host.locate({"repo": (options or {}).get("repo"), "data_dir": (options or {}).get("data_dir")})
    except StratumError:
        return None                           # not in a repository: the default address
    listen = str(settings.get("vault", {}).get("listen") or "")
    if not listen:
        return None
    http = settings.get("http", {})
    return f"{'https' if http.get('tls_cert') and http.get('tls_key') else 'http'}://{listen}"


def call(address: str, method: str, path: str, body: dict[str, Any] | None = None, token: str = "") -> dict[str, Any]:
    """One request to the vault API; its JSON answer, or VaultApiError with the vault's own error text."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{address}/v1/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", **(
                                         {"X-Vault-Token": token} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        try:
            errors = json.loads(err.read()).get("errors") or [err.reason]
        except ValueError:
            errors = [str(err.reason)]
        raise VaultApiError(f"the vault refused {method} {path}: {'; '.join(map(str, errors))}", where=address,
                            hint="see `stratum vault status`") from err
    except (urllib.error.URLError, OSError) as err:
        raise VaultApiError(f"cannot reach the vault API: {getattr(err, 'reason', err)}", where=address,
                            hint="is stratumd running with the vault listener ([vault] listen, default "
                                 "127.0.0.1:8200)? Pass --address or set VAULT_ADDR") from err
    return dict(json.loads(raw)) if raw else {}


def _address_option(fn: Any) -> Any:
    return click.option("--address", default=None, help="Vault API address (default: $VAULT_ADDR, else the "
                        f"host settings' [vault] listen, else {DEFAULT_ADDR}).")(fn)


@click.group()
@click.option("--repo", default=None, help="The ops repository whose daemon's vault to call (default: the current "
                                            "directory): its host settings name the listener.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="The daemon's data directory (default: the repository's, as for every verb).")
@click.pass_context
def vault(ctx: click.Context, repo: str | None, data_dir: Path | None) -> None:
    """The vault service: init, unseal, seal, status (a Vault-compatible API on the daemon)."""
    ctx.obj = {"repo": repo, "data_dir": data_dir}   # the root keeps the kernel's VerbHost (find_root().obj)


@vault.command()
@_address_option
@click.option("--shares", default=5, show_default=True, help="How many unseal keys to make.")
@click.option("--threshold", default=3, show_default=True, help="How many of them unseal.")
@click.option("--format", "fmt", type=click.Choice(["slip39", "base64"]), default="slip39", show_default=True,
              help="SLIP-39 mnemonics (words with a checksum) or base64.")
def init(address: str | None, shares: int, threshold: int, fmt: str) -> None:
    """Initialize the vault: print the unseal keys and the root token, once."""
    out = call(_address(address), "PUT", "sys/init",
               {"secret_shares": shares, "secret_threshold": threshold, "share_format": fmt})
    for i, key in enumerate(out["keys"], 1):
        click.echo(f"Unseal Key {i}: {key}")
    click.echo(f"\nInitial Root Token: {out['root_token']}\n")
    click.echo(f"The vault is sealed. Unseal it with {threshold} of these {shares} keys (`stratum vault unseal`).\n"
               "They are shown only now: hand them to different people and keep them apart.")


@vault.command()
@_address_option
@click.argument("key", required=False)
@click.option("--reset", is_flag=True, help="Forget the keys given so far.")
def unseal(address: str | None, key: str | None, reset: bool) -> None:
    """Give one unseal key (prompted without echo when not given)."""
    addr = _address(address)
    if reset:
        status = call(addr, "PUT", "sys/unseal", {"reset": True})
    else:
        key = key or click.prompt("Unseal key", hide_input=True)
        if not key.strip():
            raise InputError("no unseal key given", hint="type one of the keys `stratum vault init` printed")
        status = call(addr, "PUT", "sys/unseal", {"key": key})
    _print_status(status)


@vault.command()
@_address_option
@click.option("--token", envvar="VAULT_TOKEN", required=True, help="A token with sudo on sys/seal ($VAULT_TOKEN).")
def seal(address: str | None, token: str) -> None:
    """Seal the vault now (every data endpoint answers 503 until unsealed)."""
    call(_address(address), "PUT", "sys/seal", {}, token)
    click.echo("Sealed.")


@vault.command("rotate-root")
@_address_option
@click.argument("name")
@click.option("--mount", default="database", show_default=True, help="The database engine's mount.")
@click.option("--token", envvar="VAULT_TOKEN", required=True, help="A token allowed to rotate it ($VAULT_TOKEN).")
def rotate_root(address: str | None, name: str, mount: str, token: str) -> None:
    """Rotate a database connection's root password (after an incident): only the vault knows the new one."""
    call(_address(address), "POST", f"{mount.strip('/')}/rotate-root/{name}", {}, token)
    click.echo(f"Rotated the root password of {mount.strip('/')}/config/{name}.")


@vault.command()
@_address_option
def status(address: str | None) -> None:
    """Seal status: initialized, sealed, progress."""
    _print_status(call(_address(address), "GET", "sys/seal-status"))


def _print_status(st: dict[str, Any]) -> None:
    click.echo(f"Initialized   {str(st.get('initialized')).lower()}\nSealed        {str(st.get('sealed')).lower()}\n"
               f"Shares        {st.get('n')}\nThreshold     {st.get('t')}\nUnseal Progress {st.get('progress')}/"
               f"{st.get('t')}")


@click.group()
def audit() -> None:
    """The vault's audit log: verify its hash chain."""


@audit.command()
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
def verify(path: Path) -> None:
    """Check the hash chain of an audit log (and its rotated files): exit 1 naming each broken line."""
    from reconcilers.vault.service.audit import verify as verify_chain

    count, problems = verify_chain(path)
    for p in problems:
        click.echo(p, err=True)
    if problems:
        raise InputError(f"the audit log's chain is broken in {len(problems)} place(s) over {count} entries",
                         where=str(path), hint="the lines named above were edited, removed or reordered")
    click.echo(f"ok: {count} entries, chain intact")
