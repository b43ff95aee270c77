"""The common libcloud adapter: one `CloudProvider` implements the infra provider Protocol for any backend
(aws, upcloud, a generic libcloud compute driver) that can list, create, destroy and tag its objects.

1. Ownership: every object Stratum creates carries `stratum:id` (the resource id), `stratum:owner` (the repo /
   daemon it belongs to) and `stratum:spec`. Only objects with our owner tag are ever looked at, changed or
   destroyed; an object tagged ours that no resource or inventory entry claims is reported by `owned()` (an
   apply that created it and died before recording it), so the reconciler adopts or removes it.
2. Observe: one listing per provider per observe pass (the pass's `cache` dict identifies the pass), so a no-op
   plan of 200 resources makes a handful of list/describe calls, never one per resource.
3. Apply is idempotent: it looks the resource up by its tags first, so an apply retried after the API created
   the object but failed to answer (a 500, a timeout) adopts it instead of creating a second one.
4. Readiness: a created server is waited for (polling, bounded by its `timeout`); not ready in time is a
   TransientError, retried by the executor and then rolled back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from reconcilers.errors import TerminalError, TransientError
from reconcilers.infra.model import ObservedResource
from reconcilers.infra.providers.catalog import Entry
from reconcilers.infra.providers.cloud_diff import (
    GONE_STATES,
    TAG_ID,
    TAG_OWNER,
    TAG_SPEC,
    differs,
    observed_attrs,
    replace_hash,
    wanted_tags,
)
from reconcilers.infra.providers.errors import api_call


@dataclass(frozen=True, slots=True)
class CloudObject:
    """One object on a cloud API: its kind, the Stratum id its tags name, the API's own id, tags and the
    attributes the diff compares (size, image, cidr, state, ...). `raw` is the driver's object."""

    kind: str
    rid: str
    native_id: str
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    attrs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    raw: Any = field(default=None, compare=False, repr=False)


Resolve = Callable[[str, str], CloudObject]     # (kind, resource id) -> the object it names (raises when absent)


class PerThread:
    """One libcloud driver per thread, made on first use. A driver's connection keeps the request in flight
    on itself (`action`, `method`, `data`), so apply threads sharing one driver could mix their requests."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._local = threading.local()

    def get(self) -> Any:
        """This thread's driver."""
        driver = getattr(self._local, "driver", None)
        if driver is None:
            driver = self._local.driver = self._factory()
        return driver


def driver_of(driver: Any) -> Any:
    """The driver to use now: this thread's when `driver` is a PerThread, else `driver` itself."""
    return driver.get() if isinstance(driver, PerThread) else driver


class Backend(Protocol):
    """What one cloud API offers the adapter. Every method may raise libcloud's exceptions: the adapter
    classifies them (reconcilers/infra/providers/errors.py)."""

    kinds: frozenset[str]

    def list_owned(self, owner: str) -> list[CloudObject]:
        """Every object of the served kinds whose owner tag is `owner` (gone objects left out)."""
        ...

    def find(self, kind: str, owner: str, rid: str) -> CloudObject | None:
        """The object of `kind` tagged with `owner` and `rid`, if any."""
        ...

    def create(self, kind: str, rid: str, spec: Mapping[str, Any], tags: Mapping[str, str],
               resolve: Resolve) -> CloudObject:
        """Create the object with all `tags` set."""
        ...

    def destroy(self, obj: CloudObject) -> None:
        """Remove the object (detaching what must be detached first)."""
        ...

    def set_tags(self, obj: CloudObject, tags: Mapping[str, str], remove: list[str]) -> None:
        """Set `tags` on the object and remove the tag keys in `remove`."""
        ...

    def refresh(self, obj: CloudObject) -> CloudObject | None:
        """The object as the API sees it now (None when gone)."""
        ...

    def ready(self, obj: CloudObject) -> bool:
        """True when the object is usable (a server running, a volume available or attached)."""
        ...

    def catalog(self) -> list[Entry]:
        """Sizes (with hourly prices when known), images and zones the API offers."""
        ...

    def get(self, kind: str, native_id: str) -> CloudObject | None:
        """An object by the API's own id, ours or not (for `stratum infra import`)."""
        ...


class CloudProvider:
    """The infra provider Protocol over a `Backend` (see the module docstring)."""

    def __init__(self, name: str, backend: Backend, owner: str, *, poll: float = 1.0, parallelism: int = 4) -> None:
        self.name = name
        self.backend = backend
        self.owner = owner
        self.poll = poll
        # At most this many changes in flight on this provider, whatever the executor's width (API rate limits
        # are per provider account).
        self._slots = threading.BoundedSemaphore(max(1, parallelism))
        self._lock = threading.Lock()
        self._pass: dict[str, str] | None = None     # the observe pass the listing belongs to
        self._listing: dict[tuple[str, str], CloudObject] = {}
        self._lazy_listed: set[str] = set()           # lazy kinds listed in this pass

    # -- observe ---------------------------------------------------------------------------------------
    def _listed(self, cache: dict[str, str] | None, kind: str = "") -> dict[tuple[str, str], CloudObject]:
        with self._lock:
            if cache is None or cache is not self._pass:
                with api_call(self.name, "listing resources"):
                    found = self.backend.list_owned(self.owner)
                self._listing = {(o.kind, o.rid): o for o in found}
                self._lazy_listed = set()
                # Kept by reference: the pass's dict stays alive, so the next pass's dict is a different object.
                self._pass = cache
            # A lazy kind (aws DNS records: a listing per zone) is listed by the first pass that looks at one.
            if kind in getattr(self.backend, "lazy_kinds", ()) and kind not in self._lazy_listed:
                with api_call(self.name, f"listing {kind} resources"):
                    found = self.backend.list_kind(kind, self.owner)  # type: ignore[attr-defined]
                self._listing.update({(o.kind, o.rid): o for o in found})
                self._lazy_listed.add(kind)
            return self._listing

    def observe(self, kind: str, ref: str, cache: dict[str, str] | None = None) -> ObservedResource:
        """The object tagged with resource id `ref` (one listing per pass)."""
        obj = self._listed(cache, kind).get((kind, ref))
        if obj is None:
            return ObservedResource(exists=False)
        return ObservedResource(True, kind, obj.tags.get(TAG_SPEC, ""), target=obj.native_id,
                                attrs=observed_attrs(obj.attrs, obj.tags))

    def owned(self, cache: dict[str, str] | None = None) -> list[tuple[str, str]]:
        """(kind, resource id) of every object tagged ours on this provider (in this pass's listing)."""
        return sorted(self._listed(cache))

    # -- apply -----------------------------------------------------------------------------------------
    def _tags(self, rid: str, spec: Mapping[str, Any]) -> dict[str, str]:
        return {**wanted_tags(spec), TAG_ID: rid, TAG_OWNER: self.owner, TAG_SPEC: replace_hash(spec)}

    def _resolve(self, kind: str, rid: str) -> CloudObject:
        with api_call(self.name, f"{kind} {rid}"):
            found = self.backend.find(kind, self.owner, rid)
        if found is None:
            raise TransientError(f"{self.name}: {kind} {rid} is not there yet", where=f"infra:{rid}",
                                 hint="it is created by an earlier action of the plan; retried")
        return found

    def apply(self, rid: str, kind: str, spec: Mapping[str, Any]) -> str:
        """Create, update the tags of, or replace the object for resource `rid` (see the module docstring)."""
        with self._slots:
            return self._apply(rid, kind, spec)

    def _apply(self, rid: str, kind: str, spec: Mapping[str, Any]) -> str:
        # A spec whose secret references were resolved comes with the hash of its declared form (the reconciler
        # computes it): the spec tag, and the comparison with the object found, never hash the values.
        declared = str(spec.get(TAG_SPEC) or "")
        spec = {k: v for k, v in spec.items() if k != TAG_SPEC}
        if kind not in self.backend.kinds:
            raise TerminalError(f"provider {self.name} cannot manage a {kind} (resource {rid})",
                                where=f"infra:{rid}", hint=f"it serves: {', '.join(sorted(self.backend.kinds))}")
        where = f"{kind} {rid}"
        with api_call(self.name, where):
            current = self.backend.find(kind, self.owner, rid)
        tags = {**self._tags(rid, spec), **({TAG_SPEC: declared} if declared else {})}
        if current is not None:
            _, how = differs(kind, spec, True, current.tags.get(TAG_SPEC, ""),
                             observed_attrs(current.attrs, current.tags), want=declared or None)
            if how == "update":
                stale = [k for k in current.tags if k not in tags and not k.startswith("stratum:") and k != "Name"]
                with api_call(self.name, where):
                    self.backend.set_tags(current, tags, stale)
                    done = self._sync(current, spec)
                what = f"{' '.join(done)} and tags" if done else "tags"
                return f"{self.name}: updated {what} of {where} ({current.native_id})"
            if how == "":
                with api_call(self.name, where):
                    done = self._sync(current, spec)      # a volume re-attached to a replaced server
                self._wait(current, spec, where)
                if done:
                    return f"{self.name}: updated {' '.join(done)} of {where} ({current.native_id})"
                return f"{self.name}: {where} already in place ({current.native_id})"
            with api_call(self.name, where):
                self.backend.destroy(current)
            self._wait_gone(current, spec, where)
        with api_call(self.name, where):
            created = self.backend.create(kind, rid, spec, tags, self._resolve)
        self._wait(created, spec, where)
        verb = "replaced" if current is not None else "created"
        return f"{self.name}: {verb} {where} ({created.native_id})"

    def _sync(self, obj: CloudObject, spec: Mapping[str, Any]) -> list[str]:
        """What else the backend changes in place (a firewall's rules, a volume's attachment): what it did."""
        sync = getattr(self.backend, "sync", None)
        return list(sync(obj, spec, self._resolve)) if sync is not None else []

    def destroy(self, kind: str, ref: str) -> str:
        """Remove the object tagged with resource id `ref`; a note when it was already gone."""
        with self._slots:
            return self._destroy(kind, ref)

    def _destroy(self, kind: str, ref: str) -> str:
        where = f"{kind} {ref}"
        with api_call(self.name, where):
            current = self.backend.find(kind, self.owner, ref)
            if current is None:
                return f"{self.name}: {where} was already gone"
            self.backend.destroy(current)
        self._wait_gone(current, {}, where)
        return ""

    def catalog(self) -> list[Entry]:
        """The provider's catalog (sizes, images, zones), fetched now."""
        with api_call(self.name, "fetching the catalog"):
            return self.backend.catalog()

    def adopt(self, kind: str, native_id: str, rid: str) -> CloudObject:
        """Tag an existing object as resource `rid` of ours (`stratum infra import`); the first apply of the
        resource then records its spec tag in place instead of replacing it."""
        where = f"{kind} {native_id}"
        with api_call(self.name, where):
            obj = self.backend.get(kind, native_id)
            if obj is None:
                raise TerminalError(f"{self.name}: no {kind} {native_id}", where=where,
                                    hint="check the id (and the provider's region) and try again")
            owner = obj.tags.get(TAG_OWNER)
            if owner and owner != self.owner:
                raise TerminalError(f"{self.name}: {where} belongs to another Stratum ({owner})", where=where,
                                    hint="import it from the repository that owns it, or untag it first")
            # The object's own tags are kept (a backend may replace the whole set, as UpCloud's labels).
            kept = {k: v for k, v in obj.tags.items() if not k.startswith("stratum:")}
            self.backend.set_tags(obj, {**kept, TAG_ID: rid, TAG_OWNER: self.owner}, [])
            found = self.backend.get(kind, native_id)
        return found or obj

    # -- readiness -------------------------------------------------------------------------------------
    def _deadline(self, spec: Mapping[str, Any]) -> float:
        return time.monotonic() + float(spec.get("timeout", 300))

    def _wait(self, obj: CloudObject, spec: Mapping[str, Any], where: str) -> None:
        if not spec.get("wait_ready", True):
            return
        deadline = self._deadline(spec)
        current: CloudObject | None = obj
        while True:
            with api_call(self.name, where):
                if current is not None and self.backend.ready(current):
                    return
                if time.monotonic() >= deadline:
                    break
                time.sleep(self.poll)
                current = self.backend.refresh(obj)
            if current is None or str(current.attrs.get("state", "")) in GONE_STATES:
                raise TransientError(f"{self.name}: {where} vanished while Stratum waited for it to be ready",
                                     where=where, hint="see the provider's console for why it went away")
        raise TransientError(f"{self.name}: {where} not ready after {spec.get('timeout', 300)} s", where=where,
                             hint="raise the resource's `timeout`, or check it in the provider's console")

    def _wait_gone(self, obj: CloudObject, spec: Mapping[str, Any], where: str) -> None:
        """Wait until a destroyed object is gone (a replaced server's name or address is then free)."""
        deadline = self._deadline(spec)
        while True:
            with api_call(self.name, where):
                now = self.backend.refresh(obj)
            if now is None or str(now.attrs.get("state", "")) in GONE_STATES:
                return
            if time.monotonic() >= deadline:
                raise TransientError(f"{self.name}: {where} still there after {spec.get('timeout', 300)} s",
                                     where=where, hint="check it in the provider's console")
            time.sleep(self.poll)
