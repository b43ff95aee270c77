"""`stratum infra`: cloud providers' catalogs and adopting existing cloud resources (issue 12).

    stratum infra catalog refresh [--provider NAME]   fetch sizes, images, zones (and prices) into the index
    stratum infra catalog show NAME [--kind size]     list a cached catalog
    stratum infra import PROVIDER ID --as NAME        tag an existing object as ours; print its Nickel
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from daemon.cli.common import common_options, emit_json, output_option, settings_from
from daemon.cli.errors import handle_errors
from daemon.errors import SettingsError


def _providers(settings: Any, only: str | None = None) -> dict[str, Any]:
    from reconcilers.infra.providers import build
    from reconcilers.infra.providers.cloud import CloudProvider

    section = settings.reconciler_settings().get("infra", {})
    found = build(section, settings.data_dir)
    if only is not None:
        if only not in found:
            raise SettingsError(f"no cloud provider {only!r} in the host settings",
                                hint=f"configured: {', '.join(sorted(found)) or 'none'}; add "
                                     f"[infra.providers.{only}] to stratumd.toml")
        found = {only: found[only]}
    for name, provider in found.items():
        if not isinstance(provider, CloudProvider):
            raise SettingsError(f"provider {name} is not usable: {provider.error.what}", hint=provider.error.hint)
    return found


@click.group("infra")
def infra() -> None:
    """Cloud infrastructure: provider catalogs and importing existing resources."""


@infra.group("catalog")
def catalog_group() -> None:
    """Sizes, images and zones of the configured cloud providers (checked by validate, priced in plans)."""


@catalog_group.command("refresh")
@common_options
@click.option("--provider", default=None, help="only this provider (default: every configured one)")
@handle_errors
def refresh(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
            root: Path | None, provider: str | None) -> None:
    """Fetch the catalogs from the providers' APIs into the index (run it while the daemon is stopped, or
    on a host whose daemon shares this data directory read-only)."""
    from daemon.index.store import Index
    from reconcilers.infra.providers.catalog import store

    settings = settings_from(repo, data_dir, config_file, branch, root)
    providers = _providers(settings, provider)
    index = Index(settings.index_path)
    try:
        for name, p in sorted(providers.items()):
            entries = p.catalog()
            store(index, name, entries)
            kinds = {k: sum(1 for e in entries if e.kind == k) for k in ("size", "image", "zone")}
            click.echo(f"{name}: {kinds['size']} sizes, {kinds['image']} images, {kinds['zone']} zones")
    finally:
        index.close()


@catalog_group.command("show")
@common_options
@output_option
@click.argument("provider")
@click.option("--kind", type=click.Choice(["size", "image", "zone"]), default="size")
@handle_errors
def show(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
         root: Path | None, output: str, provider: str, kind: str) -> None:
    """List one provider's cached catalog entries of a kind."""
    from daemon.index.store import Index
    from reconcilers.infra.providers.catalog import load, money

    settings = settings_from(repo, data_dir, config_file, branch, root)
    index = Index(settings.index_path, read_only=True)
    try:
        entries = sorted(load(index).get(provider, {}).get(kind, {}).values(), key=lambda e: e.id)
    finally:
        index.close()
    if output == "json":
        emit_json([{"id": e.id, "name": e.name, "price_hourly": e.price_hourly} for e in entries])
        return
    if not entries:
        click.echo(f"no {kind} catalog cached for {provider}: run `stratum infra catalog refresh`")
    for e in entries:
        click.echo(f"{e.id}\t{e.name}" + (f"\t{money(e.price_hourly)}" if e.price_hourly is not None else ""))


@infra.command("import")
@common_options
@click.argument("provider")
@click.argument("native_id")
@click.option("--as", "name", required=True, help="the resource id to give it in infra/")
@click.option("--kind", type=click.Choice(["server", "network", "subnet", "firewall", "volume"]),
              default="server")
@handle_errors
def import_(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
           root: Path | None, provider: str, native_id: str, name: str, kind: str) -> None:
    """Tag an existing cloud object as resource NAME of this repository and print the Nickel to commit
    (the first apply records its spec in place; nothing is replaced)."""
    from reconcilers.infra.providers.nickel_out import to_nickel

    settings = settings_from(repo, data_dir, config_file, branch, root)
    p = _providers(settings, provider)[provider]
    obj = p.adopt(kind, native_id, name)
    click.echo(to_nickel(provider, obj, name))
