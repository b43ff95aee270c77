"""`stratum infra`: cloud providers' catalogs and adopting existing cloud resources (issue 12). The verbs reach
the host settings and the index through the kernel's VerbHost in click's ctx.obj (a reconciler never imports
the daemon).

    stratum infra catalog refresh [--provider NAME]   fetch sizes, images, zones (and prices) into the index
    stratum infra catalog show NAME [--kind size]     list a cached catalog
    stratum infra import PROVIDER ID --as NAME        tag an existing object as ours; print its Nickel
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from reconcilers.errors import SettingsError
from reconcilers.ports import VerbHost
from reconcilers.verbs import verb_host

_OPTIONS = ("repo", "data_dir", "config", "branch", "root")


def _common(fn: Any) -> Any:
    for option in reversed([
        click.option("--repo", default=None, help="repository path or URL (default: the current directory)"),
        click.option("--data-dir", default=None, help="state directory (default: one per repository)"),
        click.option("--config", default=None, help="host settings file (default: <data-dir>/stratumd.toml)"),
        click.option("--branch", default=None, help="branch (default: main)"),
        click.option("--root", default=None, help="root of the local provider (default: <data-dir>/root)"),
    ]):
        fn = option(fn)
    return fn


def _host() -> VerbHost:
    return verb_host("infra")


def _providers(section: Mapping[str, Any], data_dir: Path, only: str | None = None) -> dict[str, Any]:
    from reconcilers.infra.providers import build
    from reconcilers.infra.providers.cloud import CloudProvider

    found: dict[str, Any] = dict(build(section, data_dir))
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
@_common
@click.option("--provider", default=None, help="only this provider (default: every configured one)")
def refresh(provider: str | None, **options: Any) -> None:
    """Fetch the catalogs from the providers' APIs into the index."""
    from reconcilers.infra.providers.catalog import store

    with _host().workspace({k: options.get(k) for k in _OPTIONS}) as ws:
        providers = _providers(dict(ws.host.get("infra", {})), ws.data_dir, provider)
        for name, p in sorted(providers.items()):
            entries = p.catalog()
            store(ws.index, name, entries)
            kinds = {k: sum(1 for e in entries if e.kind == k) for k in ("size", "image", "zone")}
            click.echo(f"{name}: {kinds['size']} sizes, {kinds['image']} images, {kinds['zone']} zones")


@catalog_group.command("show")
@_common
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", help="output format")
@click.argument("provider")
@click.option("--kind", type=click.Choice(["size", "image", "zone"]), default="size")
def show(output: str, provider: str, kind: str, **options: Any) -> None:
    """List one provider's cached catalog entries of a kind."""
    import json

    from reconcilers.infra.providers.catalog import load, money

    with _host().workspace({k: options.get(k) for k in _OPTIONS}) as ws:
        entries = sorted(load(ws.index).get(provider, {}).get(kind, {}).values(), key=lambda e: e.id)
    if output == "json":
        click.echo(json.dumps([{"id": e.id, "name": e.name, "price_hourly": e.price_hourly} for e in entries],
                              indent=2))
        return
    if not entries:
        click.echo(f"no {kind} catalog cached for {provider}: run `stratum infra catalog refresh`")
    for e in entries:
        click.echo(f"{e.id}\t{e.name}" + (f"\t{money(e.price_hourly)}" if e.price_hourly is not None else ""))


@infra.command("import")
@_common
@click.argument("provider")
@click.argument("native_id")
@click.option("--as", "name", required=True, help="the resource id to give it in infra/")
@click.option("--kind", type=click.Choice(["server", "network", "subnet", "firewall", "volume", "dns_record"]),
              default="server")
def import_(provider: str, native_id: str, name: str, kind: str, **options: Any) -> None:
    """Tag an existing cloud object as resource NAME of this repository and print the Nickel to commit
    (the first apply records its spec in place; nothing is replaced)."""
    from reconcilers.infra.providers.nickel_out import to_nickel

    with _host().open("infra", {k: options.get(k) for k in _OPTIONS}) as env:
        p = _providers(dict(env.settings.get("infra", {})), env.data_dir, provider)[provider]
        obj = p.adopt(kind, native_id, name)
    click.echo(to_nickel(provider, obj, name))
