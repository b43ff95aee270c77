"""UpCloud through libcloud's UpCloud driver (API 1.2): servers.

libcloud's driver exposes neither UpCloud's labels nor the plan and zone of a listed server, so this backend
reads the API's own JSON through the driver's authenticated connection (one `GET 1.2/server` lists every
server with its title, plan, zone, state and labels) and creates servers through the driver. Ownership is
carried by the server's title, `stratum:<owner>:<resource id>:<spec hash>` (written in the create call itself,
so nothing is ever ours untitled); a resource's `tags` are the server's UpCloud labels, set and changed in place
with `PUT 1.2/server/<uuid>`. `stratum infra import upcloud <uuid> --as NAME` retitles an existing server as
ours and keeps its labels.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from reconcilers.errors import SettingsError, TerminalError, TransientError
from reconcilers.infra.providers.catalog import Entry
from reconcilers.infra.providers.cloud import CloudObject, Resolve, driver_of
from reconcilers.infra.providers.cloud_diff import TAG_ID, TAG_OWNER, TAG_SPEC

PREFIX = "stratum:"
STOP_TIMEOUT = 120.0
_STATES = {"started": "running", "stopped": "stopped", "maintenance": "pending", "error": "error"}


def upcloud_driver(name: str, conf: Mapping[str, Any]) -> Any:
    """A libcloud UpCloud driver from host settings (`username`/`password`, or the environment variables
    named by `username_env`/`password_env`, UPCLOUD_USERNAME/UPCLOUD_PASSWORD by default)."""
    from libcloud.compute.providers import get_driver
    from libcloud.compute.types import Provider as Kind

    user = conf.get("username") or os.environ.get(str(conf.get("username_env", "UPCLOUD_USERNAME")), "")
    password = conf.get("password") or os.environ.get(str(conf.get("password_env", "UPCLOUD_PASSWORD")), "")
    if not user or not password:
        raise SettingsError(f"provider {name}: no UpCloud credentials",
                            hint=f"set username and password in [infra.providers.{name}] of stratumd.toml, or "
                                 "UPCLOUD_USERNAME and UPCLOUD_PASSWORD in the daemon's environment")
    extra = {k: conf[k] for k in ("host", "port", "secure") if k in conf}
    extra["timeout"] = float(conf.get("timeout", 60))   # every API call is bounded (seconds)
    driver: Any = get_driver(Kind.UPCLOUD)(user, password, **extra)
    driver.stratum_zone = str(conf.get("zone", "fi-hel1"))
    driver.stratum_poll = float(conf.get("poll", 2.0))
    return driver


def title_of(owner: str, rid: str, spec_hash: str) -> str:
    """The server title that marks it as ours."""
    return f"{PREFIX}{owner}:{rid}:{spec_hash}"


def parse_title(title: str) -> tuple[str, str, str] | None:
    """(owner, resource id, spec hash) of a title we wrote, else None."""
    if not title.startswith(PREFIX):
        return None
    parts = title[len(PREFIX):].rsplit(":", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


class UpcloudBackend:
    """The cloud Backend (reconcilers/infra/providers/cloud.py) for UpCloud servers."""

    kinds = frozenset({"server"})

    def __init__(self, driver: Any) -> None:
        self._driver = driver                 # a driver, or a PerThread making one per apply thread
        self.zone: str = str(getattr(self.driver, "stratum_zone", "fi-hel1"))

    @property
    def driver(self) -> Any:
        """The libcloud driver of the calling thread."""
        return driver_of(self._driver)

    def _get(self, path: str) -> Any:
        return self.driver.connection.request(path).object

    def _object(self, server: Mapping[str, Any], *, anyone: bool = False) -> CloudObject | None:
        """Our server as a CloudObject (None when its title is not ours, unless `anyone`: import)."""
        mine = parse_title(str(server.get("title", "")))
        if mine is None and not anyone:
            return None
        owner, rid, spec_hash = mine or ("", "", "")
        state = _STATES.get(str(server.get("state", "")), str(server.get("state", "")))
        attrs = {"size": server.get("plan"), "zone": server.get("zone"), "state": state}
        labels = {str(x.get("key")): str(x.get("value", "")) for x in _labels(server)}
        ours = {TAG_ID: rid, TAG_OWNER: owner, TAG_SPEC: spec_hash} if mine else {}
        return CloudObject("server", rid, str(server["uuid"]), {**labels, **ours},
                           {k: v for k, v in attrs.items() if v}, dict(server))

    def list_owned(self, owner: str) -> list[CloudObject]:
        """Servers whose title carries `owner` (one API call)."""
        out = []
        for server in self._get("1.2/server")["servers"]["server"]:
            obj = self._object(server)
            if obj is not None and obj.tags[TAG_OWNER] == owner:
                out.append(obj)
        return out

    def find(self, kind: str, owner: str, rid: str) -> CloudObject | None:
        """Our server for `rid`, if any."""
        return next((o for o in self.list_owned(owner) if o.rid == rid), None)

    def refresh(self, obj: CloudObject) -> CloudObject | None:
        """The server now; None when the API no longer knows it."""
        from libcloud.common.exceptions import BaseHTTPError

        try:
            return self._object(self._get(f"1.2/server/{obj.native_id}")["server"])
        except BaseHTTPError as err:
            if getattr(err, "code", 0) == 404:
                return None
            raise

    def create(self, kind: str, rid: str, spec: Mapping[str, Any], tags: Mapping[str, str],
               resolve: Resolve) -> CloudObject:
        """Create a server from a template image in a zone, titled as ours."""
        from libcloud.compute.base import NodeImage, NodeLocation, NodeSize

        if kind != "server":
            raise TerminalError(f"upcloud cannot manage a {kind} (resource {rid})", where=f"infra:{rid}")
        d = self.driver
        zone = str(spec.get("zone") or self.zone)
        size = NodeSize(str(spec["size"]), str(spec["size"]), 0, int(spec.get("disk_gb", 10)), 0, 0.0, d)
        image = NodeImage(str(spec["image"]), str(spec["image"]), d, extra={"type": "template"})
        location = NodeLocation(zone, zone, "", d)
        node = d.create_node(name=title_of(tags[TAG_OWNER], rid, tags[TAG_SPEC]), size=size, image=image,
                             location=location, ex_hostname=rid)
        created = CloudObject("server", rid, str(node.id), dict(tags),
                              {"size": str(spec["size"]), "zone": zone, "state": "pending"}, None)
        if any(not k.startswith("stratum:") for k in tags):
            self.set_tags(created, tags, [])  # labels: the driver's create call has no place for them
        return created

    def destroy(self, obj: CloudObject) -> None:
        """Stop the server (hard), then delete it once stopped (the adapter waits for it to be gone)."""
        now = self.refresh(obj)
        if now is None:
            return
        if now.attrs.get("state") != "stopped":
            body = json.dumps({"stop_server": {"stop_type": "hard", "timeout": "60"}})
            self.driver.connection.request(f"1.2/server/{obj.native_id}/stop", method="POST", data=body)
            deadline = time.monotonic() + STOP_TIMEOUT          # UpCloud deletes stopped servers only
            while now is not None and now.attrs.get("state") != "stopped":
                if time.monotonic() > deadline:
                    raise TransientError(f"upcloud: server {obj.rid} did not stop within {STOP_TIMEOUT} s",
                                         where=f"infra:{obj.rid}", hint="check it in UpCloud's console")
                time.sleep(float(getattr(self.driver, "stratum_poll", 2.0)))
                now = self.refresh(obj)
        self.driver.connection.request(f"1.2/server/{obj.native_id}", method="DELETE")

    def set_tags(self, obj: CloudObject, tags: Mapping[str, str], remove: list[str]) -> None:
        """Stratum's tags into the title, the user's as the server's labels (replacing them all: keys in
        `remove` are simply left out), in one `PUT 1.2/server/<uuid>`."""
        labels = [{"key": k, "value": v} for k, v in sorted(tags.items()) if not k.startswith("stratum:")]
        body = {"server": {"title": title_of(tags[TAG_OWNER], tags[TAG_ID], tags.get(TAG_SPEC, "")),
                           "labels": {"label": labels}}}
        self.driver.connection.request(f"1.2/server/{obj.native_id}", method="PUT", data=json.dumps(body))

    def catalog(self) -> list[Entry]:
        """Plans priced for the configured zone (UpCloud's price list), template images and zones."""
        from libcloud.compute.base import NodeLocation

        d = self.driver
        where = NodeLocation(self.zone, self.zone, "", d)
        out = []
        for size in d.list_sizes(location=where):
            # UpCloud prices plans in cents per hour.
            cents = size.price
            out.append(Entry("size", str(size.id), str(size.name), float(cents) / 100 if cents else None))
        out += [Entry("image", str(i.id), str(i.name)) for i in d.list_images() if i.extra.get("type") == "template"]
        out += [Entry("zone", str(z.id), str(z.name)) for z in d.list_locations()]
        return out

    def get(self, kind: str, native_id: str) -> CloudObject | None:
        """A server by its uuid, ours or not (for `stratum infra import`)."""
        from libcloud.common.exceptions import BaseHTTPError

        if kind != "server":
            raise TerminalError(f"upcloud: only servers can be imported, not a {kind}",
                                hint="pass --kind server")
        try:
            return self._object(self._get(f"1.2/server/{native_id}")["server"], anyone=True)
        except BaseHTTPError as err:
            if getattr(err, "code", 0) == 404:
                return None
            raise

    def ready(self, obj: CloudObject) -> bool:
        """A server is ready once started."""
        return obj.attrs.get("state") == "running"


def _labels(server: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A server's labels as the API lists them (`{"labels": {"label": [{"key", "value"}]}}`)."""
    found = server.get("labels")
    items = found.get("label") if isinstance(found, Mapping) else None
    return [x for x in items if isinstance(x, Mapping)] if isinstance(items, list) else []
