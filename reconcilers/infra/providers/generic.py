"""Any libcloud compute driver as a provider, with the common subset every driver has: servers through
`list_nodes`, `create_node(name, size, image[, location])` and `destroy_node`.

Drivers differ in what they keep besides a name, so ownership is carried by the node's name,
`<resource id>--<spec hash>--<owner>`; sizes and images are the driver's ids. Tags are not supported by the
common subset (a resource with `tags` gets a clear error).

    [infra.providers.other]
    type = "libcloud"
    driver = "ec2"                         # a libcloud compute Provider name
    key_env = "OTHER_KEY"                  # or key = "...", secret = "..."
    secret_env = "OTHER_SECRET"
    options = { region = "eu-west-1" }     # keyword arguments of the driver
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from reconcilers.errors import SettingsError, TerminalError
from reconcilers.infra.providers.catalog import Entry
from reconcilers.infra.providers.cloud import CloudObject, Resolve, driver_of
from reconcilers.infra.providers.cloud_diff import GONE_STATES, TAG_ID, TAG_OWNER, TAG_SPEC

SEP = "--"


def generic_driver(name: str, conf: Mapping[str, Any]) -> Any:
    """The libcloud compute driver a `type = "libcloud"` section names."""
    from libcloud.compute.providers import get_driver
    from libcloud.compute.types import Provider as Kinds

    wanted = str(conf.get("driver", "")).upper()
    kind = getattr(Kinds, wanted, None)
    if not wanted or kind is None:
        raise SettingsError(f"provider {name}: unknown libcloud driver {conf.get('driver')!r}",
                            hint="name a libcloud compute provider, such as ec2, digital_ocean, linode, vultr")
    key = conf.get("key") or os.environ.get(str(conf.get("key_env", "")), "")
    secret = conf.get("secret") or os.environ.get(str(conf.get("secret_env", "")), "")
    args = [a for a in (key, secret) if a]
    return get_driver(kind)(*args, **dict(conf.get("options", {})))


def name_of(rid: str, spec_hash: str, owner: str) -> str:
    """The node name that marks it as ours."""
    return f"{rid}{SEP}{spec_hash}{SEP}{owner}"


class GenericBackend:
    """The cloud Backend (reconcilers/infra/providers/cloud.py) over any libcloud compute driver."""

    kinds = frozenset({"server"})
    tags_supported = False                    # validate refuses a resource with `tags` (cloud_checks.py)

    def __init__(self, driver: Any) -> None:
        self._driver = driver                 # a driver, or a PerThread making one per apply thread

    @property
    def driver(self) -> Any:
        """The libcloud driver of the calling thread."""
        return driver_of(self._driver)

    def _object(self, node: Any, owner: str) -> CloudObject | None:
        name = str(node.name or "")
        if not name.endswith(SEP + owner):
            return None
        head = name[: -len(SEP + owner)]
        rid, sep, spec_hash = head.rpartition(SEP)
        if not sep:
            return None
        size = node.size.id if getattr(node, "size", None) is not None else node.extra.get("instance_type")
        image = node.image.id if getattr(node, "image", None) is not None else node.extra.get("image_id")
        attrs = {"size": size, "image": image, "state": str(node.state)}
        return CloudObject("server", rid, str(node.id), {TAG_ID: rid, TAG_OWNER: owner, TAG_SPEC: spec_hash},
                           {k: v for k, v in attrs.items() if v}, node)

    def list_owned(self, owner: str) -> list[CloudObject]:
        """The driver's nodes named as ours (gone ones left out)."""
        out = [self._object(n, owner) for n in self.driver.list_nodes()]
        return [o for o in out if o is not None and str(o.attrs.get("state")) not in GONE_STATES]

    def find(self, kind: str, owner: str, rid: str) -> CloudObject | None:
        """Our node for `rid`, if any."""
        return next((o for o in self.list_owned(owner) if o.rid == rid), None)

    def refresh(self, obj: CloudObject) -> CloudObject | None:
        """The node now, by its id (None when gone)."""
        owner = obj.tags[TAG_OWNER]
        for node in self.driver.list_nodes():
            if str(node.id) == obj.native_id:
                return self._object(node, owner)
        return None

    def create(self, kind: str, rid: str, spec: Mapping[str, Any], tags: Mapping[str, str],
               resolve: Resolve) -> CloudObject:
        """create_node with the driver's size and image ids."""
        from libcloud.compute.base import NodeImage, NodeSize

        d = self.driver
        size = NodeSize(str(spec["size"]), str(spec["size"]), 0, 0, 0, 0.0, d)
        image = NodeImage(str(spec["image"]), str(spec["image"]), d)
        node = d.create_node(name=name_of(rid, tags[TAG_SPEC], tags[TAG_OWNER]), size=size, image=image)
        found = self._object(node, tags[TAG_OWNER])
        if found is None:
            raise TerminalError(f"libcloud driver {type(d).__name__} did not keep the node's name for {rid}",
                                where=f"infra:{rid}", hint="this driver cannot be used by the generic adapter")
        return found

    def destroy(self, obj: CloudObject) -> None:
        """destroy_node."""
        self.driver.destroy_node(obj.raw)

    def set_tags(self, obj: CloudObject, tags: Mapping[str, str], remove: list[str]) -> None:
        """Not in the common subset."""
        raise TerminalError(f"server {obj.rid}: tags are not supported by the generic libcloud adapter",
                            where=f"infra:{obj.rid}", hint="remove `tags` from the resource")

    def catalog(self) -> list[Entry]:
        """The driver's sizes (with its prices), images and locations."""
        d = self.driver
        out = [Entry("size", str(s.id), str(s.name), float(s.price) if s.price not in (None, "") else None)
               for s in d.list_sizes()]
        out += [Entry("image", str(i.id), str(i.name)) for i in d.list_images()]
        out += [Entry("zone", str(z.id), str(z.name)) for z in d.list_locations()]
        return out

    def get(self, kind: str, native_id: str) -> CloudObject | None:
        """Not offered: the common subset has no way to mark an existing node as ours but renaming it, and it
        cannot rename a node."""
        raise TerminalError(f"the generic libcloud adapter cannot import {kind} {native_id}: libcloud's common "
                            "subset can neither tag nor rename a node, and ownership is carried by its name",
                            hint="declare a new server instead, or use a provider type with import (aws, upcloud)")

    def ready(self, obj: CloudObject) -> bool:
        """Running."""
        return obj.attrs.get("state") == "running"
