"""The aws backend's listing for an observe pass: servers and volumes read straight from the Describe*
answers' XML, every page, only the attributes the diff compares and the tags (aws.py lists the other kinds
through libcloud's objects)."""

from __future__ import annotations

from typing import Any

from reconcilers.errors import TransientError
from reconcilers.infra.providers.cloud import CloudObject
from reconcilers.infra.providers.cloud_diff import GONE_STATES, TAG_ID, TAG_OWNER

MAX_PAGES = 1000


def listed_fast(backend: Any, owner: str) -> list[CloudObject]:
    """Our servers and volumes for an observe pass, read straight from the answers' XML: only the
    attributes the diff compares and the tags. libcloud's own conversion fills some thirty extra fields
    per object (a fifth of a second for 200 servers and 200 volumes here); the objects listed carry no
    driver object (`raw`): an action looks its object up again (`find`)."""
    from libcloud.compute.types import NodeState

    out: list[CloudObject] = []
    states = backend.driver.NODE_STATE_MAP
    for item in _pages(backend, {"Action": "DescribeInstances", "MaxResults": "1000"}, owner,
                       "reservationSet/item/instancesSet/item"):
        raw = text(item, "instanceState/name")
        state = raw if raw == "shutting-down" else str(states.get(raw, NodeState.UNKNOWN))
        attrs: dict[str, Any] = {"size": text(item, "instanceType"), "image": text(item, "imageId"),
                                 "state": state, "zone": text(item, "placement/availabilityZone")}
        out.append(_light(backend, "server", item, "instanceId", attrs))
    for item in _pages(backend, {"Action": "DescribeVolumes", "MaxResults": "500"}, owner, "volumeSet/item"):
        size = text(item, "size")
        attrs = {"size_gb": int(size) if size.isdigit() else size, "zone": text(item, "availabilityZone"),
                 "state": text(item, "status"), "attached_to": text(item, "attachmentSet/item/instanceId")}
        out.append(_light(backend, "volume", item, "volumeId", attrs))
    return [o for o in out if o.rid and str(o.attrs.get("state", "")) not in GONE_STATES]


def _pages(backend: Any, params: dict[str, str], owner: str, item_path: str) -> list[Any]:
    """Every page of one Describe* of our owner's objects (the items at `item_path`)."""
    params = {**params, **backend.driver._build_filters({f"tag:{TAG_OWNER}": owner})}
    out: list[Any] = []
    for _ in range(MAX_PAGES):
        res = backend._request(params)
        out += backend._find(res, item_path)
        token = [t.text for t in backend._find(res, "nextToken") if t.text]
        if not token:
            return out
        params["NextToken"] = token[0]
    raise TransientError(f"aws: more than {MAX_PAGES} pages of {params['Action']}", hint="report this bug")


def _light(backend: Any, kind: str, item: Any, id_tag: str, attrs: dict[str, Any]) -> CloudObject:
    """A listed object without its driver object (`raw`)."""
    tags = {text(t, "key"): text(t, "value") for t in backend._find(item, "tagSet/item")}
    clean = {k: v for k, v in attrs.items() if v not in (None, "")}
    return CloudObject(kind, tags.get(TAG_ID, ""), text(item, id_tag), tags, clean, None)


def text(element: Any, path: str) -> str:
    """The text at `path` (parts in libcloud's EC2 namespace, read when called), "" when absent."""
    from libcloud.compute.drivers import ec2

    found = element.find("/".join(f"{{{ec2.NAMESPACE}}}{part}" for part in path.split("/")))
    return str(found.text or "") if found is not None else ""
