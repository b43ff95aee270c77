"""Secret references in a cloud server's `user_data` (issue 12, item 1), against moto's EC2 API through the real
libcloud driver and a real pipeline joining the vault and infra reconcilers by the daemon's secrets broker, with
real sealed manifests. The canary value reaches the instance's user data and nothing else: not the plan, the
stored actions, the instance's tags, the index or any file under the data directory."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.git.source import GitSource
from daemon.index.store import Index
from daemon.nickel.evaluator import Evaluator
from daemon.run.pipeline import Pipeline
from daemon.run.ports import SecretsBroker
from daemon.run.retry import RetryPolicy
from reconcilers.base import ReconcilerEnv
from reconcilers.infra.providers.cloud_diff import TAG_OWNER
from reconcilers.infra.reconciler import InfraReconciler
from reconcilers.vault.reconciler import VaultReconciler
from tests.fixtures import WorkRepo
from tests.reconcilers.infra.cloud.conftest import FaultProxy, aws_settings
from tests.vault_fixtures import CANARY, SecretWorld, secret_world

AMI = "ami-03cf127a"
REF = '{ secret = "kv/app/db", key = "password" }'
MANIFEST = "secrets/app/db.yaml"


@dataclass
class World:
    repo: WorkRepo
    secrets: SecretWorld
    pipe: Pipeline
    data: Path
    index: Index
    owner: str

    def manifest(self, values: dict[str, object]) -> str:
        previous = self.repo.path / MANIFEST
        return self.secrets.manifest(values, path=MANIFEST,
                                     previous=previous.read_text() if previous.exists() else None)


@pytest.fixture
def world(tmp_path: Path, evaluator: Evaluator, proxy: FaultProxy) -> Iterator[World]:
    """The vault and infra reconcilers (an aws provider at the proxy in front of moto) in one pipeline."""
    import uuid

    data = tmp_path / "data"
    secrets = secret_world(data)
    index = Index(data / "index.duckdb")
    broker = SecretsBroker(index)
    owner = f"test-{uuid.uuid4().hex[:10]}"
    settings = aws_settings(proxy.port, owner, tmp_path / "root")
    vault = VaultReconciler(ReconcilerEnv(data_dir=data, evaluator=evaluator, secrets=broker.for_("vault")))
    infra = InfraReconciler(ReconcilerEnv(data_dir=data, settings=settings, evaluator=evaluator,
                                          secrets=broker.for_("infra")))
    broker.provider = vault.secrets()
    repo = WorkRepo(tmp_path / "ops")
    pipe = Pipeline(source=GitSource(str(repo.path), "main", data), index=index,
                    reconcilers={"infra": infra, "vault": vault}, evaluator=evaluator,
                    retry=RetryPolicy(attempts=3, base=0.02, cap=0.05))
    yield World(repo, secrets, pipe, data, index, owner)
    pipe.close()
    infra.close()
    vault.close()
    index.close()


def server(user_data: str = f'["#!/bin/sh\\nDB_PASSWORD=", {REF}, "\\n"]') -> str:
    """infra/app.ncl: one server whose user data embeds the secret."""
    return ("{\n  resources = {\n    web = { kind = 'server, provider = 'aws, size = \"t2.micro\", "
            f'image = "{AMI}", user_data = {user_data} }},\n  }},\n}}\n')


def live(ec2: Any, owner: str) -> list[Any]:
    """Our instances that are not terminated."""
    return [n for n in ec2.list_nodes(ex_filters={f"tag:{TAG_OWNER}": owner})
            if n.state not in ("terminated", "shutting-down")]


def user_data(ec2: Any, instance_id: str) -> str:
    """The instance's user data, as the API keeps it (DescribeInstanceAttribute)."""
    res = ec2.connection.request(ec2.path, params={"Action": "DescribeInstanceAttribute", "InstanceId": instance_id,
                                                   "Attribute": "userData"}).object
    values = [el.text for el in res.iter() if el.tag.endswith("value") and el.text]
    return base64.b64decode(values[0]).decode() if values else ""


def leaks(folder: Path, value: str) -> list[str]:
    """Files under `folder` holding `value`."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and value.encode() in p.read_bytes()]


def test_user_data_secret_is_resolved_at_apply_only_and_a_new_value_replaces_the_server(
        world: World, ec2: Any) -> None:
    """The plan orders the server after the manifest's action and shows the reference with a keyed
    fingerprint; the instance gets the value in its user data; no plan, stored action, tag, index row or data
    file holds it. A new value of the secret replaces the server in the same run, after the manifest."""
    first = world.repo.commit({"secrets/rules.ncl": world.secrets.rules(),
                               MANIFEST: world.manifest({"password": CANARY}), "infra/app.ncl": server()})
    report = world.pipe.plan(first)
    assert not report.problems, report.problems
    action = next(a for a in report.actions if a.id == "infra:web")
    assert action.depends_on == (f"vault:{MANIFEST}",)
    assert action.summary.startswith(f"create server web on aws (t2.micro, {AMI}) with secret "
                                     "kv/app/db#password hmac-sha256:")
    assert CANARY not in json.dumps([[a.summary, a.change] for a in report.actions])

    result = world.pipe.run(first)
    assert result.status == "succeeded", result.message
    [node] = live(ec2, world.owner)
    assert user_data(ec2, node.id) == f"#!/bin/sh\nDB_PASSWORD={CANARY}\n"
    assert CANARY not in json.dumps(node.extra["tags"])
    world.index.sync()
    assert leaks(world.data, CANARY) == []
    assert [a.id for a in world.pipe.plan(first).actions] == []          # the spec tag is the declared spec's

    second = world.repo.commit({MANIFEST: world.manifest({"password": CANARY + "-two"})})
    report = world.pipe.plan(second)
    action = next(a for a in report.actions if a.id == "infra:web")
    assert action.summary.startswith("replace server web on aws [fields that need a new resource changed] with "
                                     "secret kv/app/db#password hmac-sha256:")
    assert action.depends_on == (f"vault:{MANIFEST}",)
    result = world.pipe.run(second)
    assert result.status == "succeeded", result.message
    [now] = live(ec2, world.owner)
    assert now.id != node.id and user_data(ec2, now.id) == f"#!/bin/sh\nDB_PASSWORD={CANARY}-two\n"
    world.index.sync()
    assert leaks(world.data, CANARY) == []
    assert [a.id for a in world.pipe.plan(second).actions] == []


def test_a_reference_to_a_missing_secret_is_named_at_validate(world: World) -> None:
    """A user-data reference to a key the manifest does not hold rejects the revision naming the server."""
    rev = world.repo.commit({"secrets/rules.ncl": world.secrets.rules(),
                             MANIFEST: world.manifest({"password": CANARY}),
                             "infra/app.ncl": server('{ secret = "kv/app/db", key = "nope" }')})
    problems = world.pipe.plan(rev).problems
    assert len(problems) == 1 and problems[0].message.startswith("resource web: ")
    assert "kv/app/db#nope" in problems[0].message and problems[0].path == "infra/app.ncl"
