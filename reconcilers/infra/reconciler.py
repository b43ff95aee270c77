"""The infra reconciler: Nickel resources in `infra/` reconciled through providers (reconcilers/infra/provider.py;
`local` is the first)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconcilers.base import (
    Action,
    ApplyContext,
    InventoryItem,
    Outcome,
    PolicyResource,
    Problem,
    Reconciler,
    ReconcilerEnv,
)
from reconcilers.errors import ApplyError, PathEscapeError, StratumError, TerminalError, WaitingError
from reconcilers.infra import diff, secretapply
from reconcilers.infra.load import FileCache, load_infra
from reconcilers.infra.loadcarry import LoadCarry
from reconcilers.infra.local import LocalProvider, content_hash
from reconcilers.infra.memo import PerResource
from reconcilers.infra.model import (
    CLOUD_KINDS,
    InfraDesired,
    InfraObserved,
    ObservedResource,
    Resource,
    applied_spec_hash,
    inventory_entry,
    inventory_facts,
    policy_text,
)
from reconcilers.infra.provider import Provider
from reconcilers.infra.providers import build as build_cloud
from reconcilers.infra.providers import catalog, cloud_checks, cost, owner_explicit
from reconcilers.infra.providers.cloud_diff import TAG_SPEC, replace_hash
from reconcilers.infra.templates import TemplateRenderer
from reconcilers.ports import Evaluator as PortEvaluator
from reconcilers.ports import SecretsPort, Snapshot, Tables

_WRITTEN = ("file", "systemd_unit", "symlink")     # kinds written through a temporary file, then renamed


class InfraReconciler(Reconciler[InfraDesired, InfraObserved]):
    """The reconciler of `infra/` (the contract: reconcilers/base.py)."""

    name = "infra"

    def __init__(self, env: ReconcilerEnv, providers: Mapping[str, Provider] | None = None) -> None:
        section: dict[str, Any] = dict(env.settings.get("infra", {}))
        root = Path(section.get("root") or env.data_dir / "root")
        # The local provider also checks paths, finds stray temporary files and runs compensations: those are
        # local matters. Every resource is observed, applied and destroyed through its own provider.
        self.provider = LocalProvider(root)
        # Cloud providers come from the host's [infra.providers.*] settings (credentials never from the repo).
        self.providers: Mapping[str, Provider] = providers or {"local": self.provider,
                                                               **build_cloud(section, env.data_dir)}
        self._owner_explicit = owner_explicit(section)
        if env.evaluator is None:
            raise StratumError("the infra reconciler needs the daemon's Nickel evaluator (ReconcilerEnv.evaluator)",
                               hint="report this bug: the daemon hands one to every reconciler")
        self._file_cache: FileCache = {}
        # The last problem-free load, patched by the next (loadcarry.py); None: every load in full.
        self.load_carry: LoadCarry | None = LoadCarry()
        self._policy_views = PerResource(self._policy_view)
        self._items = PerResource(self._item)        # inventory entries (memo.py)
        self._folders = PerResource(self._folder)    # where temporary files may be left (_strays)
        self._rows = PerResource(self._row)          # index rows (the same tuple: daemon/run/carry.py compares by it)
        self._renderer = TemplateRenderer()       # templates render in a bounded child process
        self.evaluator: PortEvaluator = env.evaluator
        self.index_port: Tables | None = env.index   # own tables: the cloud catalogs (providers/catalog.py)
        # Secret references: located at load, resolved at apply through the port (secretapply.py).
        self.secrets_port: SecretsPort | None = env.secrets
        self.runtime_dir = Path(section.get("runtime_dir") or env.data_dir / "run")
        self._macs = secretapply.AppliedMacs(env.data_dir / "infra" / "secret-applied.json")
        self._waiting = secretapply.Waiting()      # applies that waited (a certificate while the vault is closed)

    def empty(self) -> InfraDesired:
        """Desired state with no resources (what rollback reconciles to before any good revision)."""
        return InfraDesired(resources={})

    def load(self, snap: Snapshot) -> InfraDesired:
        """Resources of the commit (Nickel evaluated with the infra contract)."""
        for memo in (self._policy_views, self._items, self._rows, self._folders):
            memo.rotate()                         # resources of older revisions leave the memos (memo.py)
        desired = load_infra(snap, self.evaluator, self._file_cache, self._renderer, self.load_carry)
        return secretapply.locate_all(snap, desired, self.secrets_port, self.runtime_dir)

    def validate(self, desired: InfraDesired) -> list[Problem]:
        """Load problems plus provider-level checks (paths must stay under the root)."""
        problems = list(desired.problems)
        if self._has_cloud(desired, []):
            problems += cloud_checks.check(desired, self.providers)
            problems += catalog.check(desired, self._catalogs())
        checked: list[tuple[Resource, str]] = []
        for r in desired.resources.values():
            if r.path:
                checked.append((r, r.path))
            f = r.fields
            if "target" in f or "creates" in f:
                checked.extend((r, str(f[key])) for key in ("target", "creates") if f.get(key))
        escapes = self.provider.escapes(rel for _, rel in checked)    # each folder resolved once
        if escapes:
            for r, rel in checked:
                err = escapes.get(rel)
                if err is not None:
                    problems.append(Problem(f"resource {r.id}: {err.what}", r.source, r.line, reconciler=self.name,
                                            hint=err.hint))
        return problems

    def observe(self, desired: InfraDesired, inventory: list[InventoryItem]) -> InfraObserved:
        """What the host has for every desired and inventoried resource."""
        cache: dict[str, str] = {}  # parent folder -> real path, for this pass
        seen, expected = self._observe_desired(desired, cache)
        for item in inventory:
            if item.reconciler == self.name and item.resource_id not in seen:
                data = json.loads(item.data)
                kind = str(data.get("kind", ""))
                seen[item.resource_id] = self._of(str(data.get("provider") or "local"), item.resource_id).observe(
                    kind, item.resource_id if kind in CLOUD_KINDS else data.get("path", ""), cache)
        orphans = cloud_checks.orphans(desired, inventory, self.providers, cache)
        strays = self._strays(desired, inventory)
        if not self._owner_explicit:
            return InfraObserved(resources=seen, strays=strays, expected=expected, unclaimed=orphans)
        return InfraObserved(resources=seen, strays=strays, expected=expected, orphans=orphans)

    def _observe_desired(self, desired: InfraDesired, cache: dict[str, str],
                         ) -> tuple[dict[str, ObservedResource], dict[str, tuple[str, str]]]:
        """What the host has for each desired resource, and the keyed fingerprints expected of those holding
        secrets."""
        seen: dict[str, ObservedResource] = {}
        expected: dict[str, tuple[str, str]] = {}
        for r in desired.resources.values():
            rel = str(r.fields.get("creates", "")) if r.kind == "command" else r.path
            seen[r.id] = self._of(r.provider, r.id).observe(r.kind, r.id if r.kind in CLOUD_KINDS else rel, cache)
            if r.kind in ("file", "systemd_unit") and secretapply.uses_secrets(r):
                seen[r.id] = self._keyed(r, seen[r.id])
                mac = self._macs.expected(r.id, r.spec_hash)
                if mac is not None:
                    expected[r.id] = (r.spec_hash, mac)
        return seen, expected

    def _keyed(self, r: Resource, o: ObservedResource) -> ObservedResource:
        """`o` with its content hash replaced by the keyed fingerprint of what the host holds: a plain hash of
        a file holding a short secret would give the secret away to whoever tries candidates."""
        if not o.exists or o.kind != "file" or r.provider != "local" or self.secrets_port is None:
            return replace(o, content_hash="")
        try:
            data = secretapply.host_bytes(self.provider.resolve_str(r.path), self.runtime_dir, r.fields)
        except PathEscapeError:
            data = None
        return replace(o, content_hash=self.secrets_port.fingerprint(data) if data is not None else "")

    def _strays(self, desired: InfraDesired, inventory: list[InventoryItem],
                covered: frozenset[str] = frozenset()) -> tuple[str, ...]:
        """Our temporary files left in the folders we write to (by a daemon killed mid-write). `covered`:
        inventory entries known to write where their desired resource does (their folder is counted once)."""
        folder = self._folders
        folders = {folder(r) for r in desired.resources.values()}
        for item in inventory:
            if item.reconciler == self.name and item.kind in _WRITTEN and item.resource_id not in covered:
                path = inventory_entry(item.data)[1]
                if path:
                    folders.add(path.rpartition("/")[0])
        folders.discard(None)
        return tuple(self.provider.stray_temps(f for f in folders if f is not None))

    @staticmethod
    def _folder(r: Resource) -> str | None:
        """The folder a written resource's temporary files go to (None: a resource that writes none)."""
        return r.path.rpartition("/")[0] if r.kind in _WRITTEN and r.path else None

    def observe_changed(self, desired: InfraDesired, inventory: list[InventoryItem]) -> InfraObserved:
        """Like `observe`, but resources applied before with the same spec are taken as in place without
        reading the host (a commit's run touches what the commit changed; drift checks read everything). Stray
        temporary files are looked for in every folder we write to, as `observe` does."""
        resources = desired.resources
        unchanged: set[str] = set()
        covered: set[str] = set()               # entries whose folder the desired resource names already
        for item in inventory:                   # one pass: every entry's recorded kind, path and spec hash
            if item.reconciler != self.name:
                continue
            r = resources.get(item.resource_id)
            if r is None:
                continue
            _, path, spec_hash = inventory_facts(item.data)
            if spec_hash == r.spec_hash:
                unchanged.add(item.resource_id)
            if path == r.path and item.kind == r.kind:
                covered.add(item.resource_id)
        changed = InfraDesired(resources={rid: r for rid, r in resources.items() if rid not in unchanged})
        seen, expected = self._observe_desired(changed, {})
        return InfraObserved(resources=seen, strays=self._strays(desired, inventory, frozenset(covered)),
                             assumed=frozenset(unchanged), expected=expected)

    def simulate(self, desired: InfraDesired) -> InfraObserved:
        """The host as if `desired` had been applied (for pull-request plans that read no host)."""
        seen: dict[str, ObservedResource] = {}
        expected: dict[str, tuple[str, str]] = {}
        for r in desired.resources.values():
            f = r.fields
            if r.kind in ("file", "systemd_unit") and secretapply.uses_secrets(r):
                # Bytes unknown without the value: as if this spec had been applied and its bytes recorded.
                expected[r.id] = (r.spec_hash, f"simulated:{r.spec_hash}")
                seen[r.id] = ObservedResource(True, "file", expected[r.id][1], format(int(f["mode"], 8), "04o"))
            elif r.kind in ("file", "systemd_unit"):
                mode = format(int(f["mode"], 8), "04o")
                seen[r.id] = ObservedResource(True, "file", content_hash(f["content"]), mode)
            elif r.kind == "directory":
                seen[r.id] = ObservedResource(True, "directory", mode=format(int(f["mode"], 8), "04o"))
            elif r.kind == "symlink":
                seen[r.id] = ObservedResource(True, "symlink", target=diff.expected_link(f["path"], f["target"]))
            elif r.kind in CLOUD_KINDS:
                seen[r.id] = cloud_checks.simulated(r)
            else:
                seen[r.id] = ObservedResource(exists=True)
        return InfraObserved(resources=seen, expected=expected)

    def plan(self, desired: InfraDesired, observed: InfraObserved, inventory: list[InventoryItem]) -> list[Action]:
        """The pure diff (reconcilers/infra/diff.py), cloud server actions priced from the cached catalogs."""
        actions = secretapply.note_waiting(diff.plan(desired, observed, inventory), inventory, self.name)
        if self._has_cloud(desired, inventory):
            actions = cost.annotate(actions, cost.changes(actions, desired, inventory, self._catalogs()))
        return actions

    def _has_cloud(self, desired: InfraDesired, inventory: list[InventoryItem]) -> bool:
        return (any(r.kind in CLOUD_KINDS for r in desired.resources.values())
                or any(i.kind in CLOUD_KINDS for i in inventory if i.reconciler == self.name))

    def _catalogs(self) -> catalog.Catalogs:
        import duckdb

        try:
            return catalog.load(self.index_port)
        except (duckdb.Error, OSError):       # a catalog is a courtesy: without one, nothing is checked or priced
            return {}

    def drift(self, desired: InfraDesired, observed: InfraObserved, inventory: list[InventoryItem]) -> list[Problem]:
        """Resources whose host state moved away from an unchanged spec."""
        inv = {i.resource_id: i for i in inventory if i.reconciler == self.name}
        out = []
        for f in diff.findings(desired, observed, inv):
            if f.nature != "drift":
                continue
            r = desired.resources[f.resource_id]
            where = r.path or r.fields.get("run", "") or f"on {r.provider}"
            out.append(Problem(f"drift on {r.kind} {r.id} ({where}): {f.reason}; "
                               f"policy {r.drift}", r.source, r.line, reconciler=self.name))
        for provider, kind, rid in observed.unclaimed:
            out.append(Problem(f"untracked {kind} {rid} on {provider} carries this repository's owner tag but no "
                               "resource or inventory entry claims it; not deleted", reconciler=self.name,
                               hint="set [infra] owner in stratumd.toml to let Stratum remove such objects, or "
                                    "delete it yourself"))
        for stray in observed.strays:
            out.append(Problem(f"stray temporary file {stray} under the root: left by an interrupted apply, owned "
                               "by no resource", reconciler=self.name, hint="the next apply removes it"))
        return out

    def explain(self, desired: InfraDesired, observed: InfraObserved, inventory: list[InventoryItem],
                before: InfraDesired | None = None) -> dict[str, dict[str, Any]]:
        """Expected vs found (with bounded diffs) for every resource a plan changes or a drift report names.
        `before` (a pull request's base) stands in for the host: contents come from its specs."""
        inv = {i.resource_id: i for i in inventory if i.reconciler == self.name}
        out: dict[str, dict[str, Any]] = {}
        for f in diff.findings(desired, observed, inv):
            r = desired.resources[f.resource_id]
            o = observed.resources.get(f.resource_id, diff.ABSENT)
            found: bytes | None = None
            if before is not None:
                old = before.resources.get(f.resource_id)
                if old is not None and old.kind in ("file", "systemd_unit") and not secretapply.uses_secrets(old):
                    found = str(old.fields["content"]).encode()
            elif (o.kind == "file" and r.kind in ("file", "systemd_unit") and not secretapply.uses_secrets(r)
                  and not self._macs.holds(r.id)):
                # Never a file holding a secret, nor one that held a secret when last applied: not shown.
                found = self._read_host(r.path)
            labels = {"found_label": "base", "expected_label": "head"} if before is not None else {}
            out[f.resource_id] = diff.explain(r, o, f, found, **labels)
        if self._has_cloud(desired, inventory):
            # Each priced action's change, for the plan's per-provider cost (daemon/run/report.py sums them).
            actions = diff.plan(desired, observed, inventory)
            for action_id, (provider, hourly) in cost.changes(actions, desired, inventory,
                                                              self._catalogs()).items():
                key = action_id.split(":", 1)[1]
                detail = dict(out.get(key) or {"resource": key, "kind": "server", "differences": []})
                detail["tally"] = cost.tally(provider, hourly)
                out[key] = detail
        return out

    def _read_host(self, rel: str) -> bytes | None:
        """Up to MAX_DIFF_BYTES + 1 bytes of a host file under the root (None when unreadable or outside)."""
        try:
            path = self.provider.resolve_str(rel)
            with open(path, "rb") as fh:
                return fh.read(diff.MAX_DIFF_BYTES + 1)
        except (OSError, PathEscapeError):
            return None

    def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
        """Carry out one action on the host."""
        change = action.payload()
        if "stray" in change:
            return Outcome(action.id, True, self.provider.remove_stray(str(change["stray"])))
        if "orphan" in change:                # tagged ours, claimed by nothing (reconcilers/infra/providers)
            o = change["orphan"]
            note = self._of(str(o["provider"]), action.target).destroy(str(o["kind"]), str(o["rid"]))
            return Outcome(action.id, True, note or f"removed untracked {o['kind']} {o['rid']} on {o['provider']}")
        if action.kind == "delete":
            data = change["inventory"]
            provider = self._of(str(data.get("provider") or "local"), action.target)
            ref = action.target if data.get("kind") in CLOUD_KINDS else data.get("path")
            note = provider.destroy(data["kind"], ref) if ref else "forgotten"
            if not change.get("keep_inventory"):
                self._macs.record(action.target, "", None)
                self._waiting.clear(action.target)
            if data.get("kind") == "systemd_unit" and data.get("path"):
                secretapply.remove_credentials(self.runtime_dir, str(data["path"]).rpartition("/")[2])
            # A move between providers deletes the old object; the inventory entry is the new provider's.
            return Outcome(action.id, True, note, removed=not change.get("keep_inventory"))
        res = change["resource"]
        provider = self._of(str(res.get("provider") or "local"), action.target)
        if secretapply.SECRETS in res["spec"]:
            spec_hash = applied_spec_hash(str(change["inventory"])) or ""
            try:
                resolved = secretapply.resolve(self.secrets_port, action.target, res["spec"])
            except WaitingError as err:
                if not err.defer:
                    raise                     # waits within the run (the executor requeues it)
                # Nothing is written (every reference resolves before any write): a waiting item; the run goes on.
                why = secretapply.waiting_message(err)
                self._waiting.mark(action.target, spec_hash, why)
                return Outcome(action.id, False, f"waiting: {res['kind']} {action.target}: {why}")
            message = self._apply_with_secrets(provider, action.target, res["kind"], res["spec"], resolved,
                                               spec_hash)
            self._waiting.clear(action.target)
        else:
            message = provider.apply(action.target, res["kind"], res["spec"])
            self._macs.record(action.target, "", None)     # (a resource that held a secret holds none now)
            self._waiting.clear(action.target)
        return Outcome(action.id, True, message,
                       inventory={"reconciler": self.name, "resource_id": action.target, "kind": res["kind"],
                                  "data": change["inventory"]})

    def _apply_with_secrets(self, provider: Provider, rid: str, kind: str, spec: Mapping[str, Any],
                            resolved: secretapply.Resolved, spec_hash: str) -> str:
        """Apply with the references resolved (at apply, and only then) and remember a keyed fingerprint of
        the bytes written. A command's output and errors have the values redacted; the original error is not
        chained, so no traceback carries a value."""

        def hide(text: str) -> str:
            return secretapply.redact(text, resolved.values, resolved.refs)

        try:
            if kind == "systemd_unit" and resolved.spec.get(secretapply.CREDENTIALS):
                secretapply.write_credentials(self.runtime_dir, str(spec["name"]),
                                              resolved.spec[secretapply.CREDENTIALS])
            if kind == "command" and isinstance(provider, LocalProvider):
                # Redacted before the output is cut to its tail (see LocalProvider.run_command).
                message = provider.command(rid, resolved.spec, hide)
            elif kind in CLOUD_KINDS:
                # The object's spec tag is the hash of the declared spec (references, fingerprints), never of
                # the values: a hash of a spec holding a short secret could be searched for it.
                message = provider.apply(rid, kind, {**resolved.spec, TAG_SPEC: replace_hash(spec)})
            else:
                message = provider.apply(rid, kind, resolved.spec)
        except StratumError as err:
            # The same error class and fields (a TransientError keeps its `after`), the message redacted; the
            # original is not chained, so no traceback carries a value.
            hidden = copy.copy(err)
            hidden.what = hide(err.what)
            hidden.args = (hidden.render(),)
            raise hidden from None
        if kind in ("file", "systemd_unit") and self.secrets_port is not None:
            self._macs.record(rid, spec_hash, self.secrets_port.fingerprint(secretapply.written_bytes(resolved.spec)))
        return secretapply.redact(message, resolved.values, resolved.refs)

    def _of(self, provider: str, rid: str) -> Provider:
        """The provider a resource names (the contract in nickel/infra.ncl admits only known ones)."""
        found = self.providers.get(provider)
        if found is None:
            raise TerminalError(f"resource {rid} names provider {provider!r}, which this daemon does not have",
                                where=f"infra:{rid}", hint=f"use one of: {', '.join(sorted(self.providers))}")
        return found

    def compensate(self, action: Action, ctx: ApplyContext) -> None:
        """Run a command's declared compensation."""
        if not action.compensation:
            return
        comp = json.loads(action.compensation)
        env = comp.get("env", {})
        values: dict[str, str] = {}
        if secretapply.SECRETS in comp:
            resolved = secretapply.resolve(self.secrets_port, action.target, comp)
            env, values = resolved.spec["env"], resolved.values
        refs = comp.get(secretapply.SECRETS, {})
        code, output = self.provider.run_command(comp["run"], float(comp.get("timeout", 300)), env,
                                                 lambda text: secretapply.redact(text, values, refs))
        if code != 0:
            raise ApplyError(f"compensation exited {code}: {output.strip()[-400:]}", where=action.id)

    def inventory_items(self, desired: InfraDesired) -> list[InventoryItem]:
        """The inventory a fully applied revision leaves."""
        # The memoized entry of each resource (memo.py), except those whose apply waited: main's marked entry.
        marked, item = self._waiting.marked(), self._items
        return [InventoryItem(self.name, r.id, r.kind, self._waiting.entry(r)) if r.id in marked else item(r)
                for r in desired.resources.values()]

    def _item(self, r: Resource) -> InventoryItem:
        return InventoryItem(self.name, r.id, r.kind, r.inventory_data())

    def resource_rows(self, desired: InfraDesired) -> list[tuple[str, str, str, str, str]]:
        """(reconciler, id, kind, path, spec hash) rows for the index."""
        row = self._rows
        return [row(r) for r in desired.resources.values()]

    def _row(self, r: Resource) -> tuple[str, str, str, str, str]:
        return self.name, r.id, r.kind, r.path, r.spec_hash

    def policy_resources(self, desired: InfraDesired) -> list[PolicyResource]:
        """What change control authorizes: each resource with its attributes; the digest covers everything
        a commit can change about it (spec, labels, prune, drift, dependencies)."""
        # Admission asks for the revision and its base on every run; resources of unchanged files are the same
        # objects from one load to the next (the load cache), so their policy view is made once (memo.py).
        view = self._policy_views
        return [view(r) for r in desired.resources.values()]

    def _policy_view(self, r: Resource) -> PolicyResource:
        digest = hashlib.sha256(policy_text(r).encode())
        return PolicyResource(self.name, r.id, r.kind, r.path, r.provider, r.labels, digest.hexdigest()[:16],
                              r.source, r.line)

    def close(self) -> None:
        """Stop the template worker (the Nickel evaluator is the daemon's)."""
        self._renderer.close()
