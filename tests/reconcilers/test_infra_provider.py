"""The infra reconciler reaches targets only through the provider Protocol (reconcilers/infra/provider.py): the
providers it is built with observe, apply and destroy every resource by the provider the resource names, so a
new provider (issue 12) is added without touching the reconciler. Real pipeline, repo, Nickel worker, host root."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from daemon.nickel.evaluator import Evaluator
from daemon.run.pipeline import Pipeline
from reconcilers.base import Action, ApplyContext, ReconcilerEnv, freeze
from reconcilers.errors import TerminalError
from reconcilers.infra.local import LocalProvider
from reconcilers.infra.model import ObservedResource
from reconcilers.infra.provider import Provider
from reconcilers.infra.reconciler import InfraReconciler
from tests.fixtures import Stack, WorkRepo, infra, resource


class Recording:
    """A provider that records what the reconciler asks of it and does it through a real local provider."""

    def __init__(self, inner: LocalProvider) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def observe(self, kind: str, ref: str, cache: dict[str, str] | None = None) -> ObservedResource:
        """Record, then observe for real."""
        self.calls.append(("observe", ref))
        return self.inner.observe(kind, ref, cache)

    def apply(self, rid: str, kind: str, spec: Mapping[str, Any]) -> str:
        """Record, then apply for real."""
        self.calls.append(("apply", rid))
        return self.inner.apply(rid, kind, spec)

    def destroy(self, kind: str, ref: str) -> str:
        """Record, then destroy for real."""
        self.calls.append(("destroy", ref))
        return self.inner.destroy(kind, ref)


def test_every_resource_goes_through_the_provider_it_names(tmp_path: Path, repo: WorkRepo,
                                                           evaluator: Evaluator) -> None:
    """Applying a file, then deleting it from the repo: observe, apply and destroy all reach the provider the
    reconciler was given for `local`, and the host root shows the effect."""
    stack = Stack(tmp_path, repo.path, evaluator=evaluator)
    try:
        recording = Recording(LocalProvider(stack.root))
        providers: Mapping[str, Provider] = {"local": recording}
        env = ReconcilerEnv(data_dir=stack.data, settings={"infra": {"root": str(stack.root)}}, evaluator=evaluator)
        rec = InfraReconciler(env, providers=providers)
        stack.pipeline = Pipeline(source=stack.source, index=stack.index, reconcilers={"infra": rec},
                                  evaluator=evaluator)
        first = repo.commit({"infra/a.ncl": infra(resource("motd", "file", path="etc/motd", content="hi\n"))})
        assert stack.run(first).status == "succeeded"
        assert (stack.root / "etc/motd").read_text() == "hi\n"
        assert ("observe", "etc/motd") in recording.calls and ("apply", "motd") in recording.calls
        second = repo.commit({"infra/a.ncl": infra()})
        assert stack.run(second).status == "succeeded"
        assert ("destroy", "etc/motd") in recording.calls and not (stack.root / "etc/motd").exists()
        rec.close()
    finally:
        stack.pipeline.close()
        stack.close()


def test_a_resource_naming_an_unknown_provider_is_a_terminal_error(tmp_path: Path, evaluator: Evaluator) -> None:
    """A provider the daemon does not have is the revision's fault: terminal (never retried), naming the
    providers there are."""
    env = ReconcilerEnv(data_dir=tmp_path, settings={"infra": {"root": str(tmp_path / "root")}}, evaluator=evaluator)
    rec = InfraReconciler(env)
    change = freeze({"inventory": "{}", "resource": {"id": "vm", "kind": "server", "provider": "cloud", "spec": {}}})
    try:
        with pytest.raises(TerminalError, match="provider 'cloud'") as err:
            rec.apply(Action("infra:vm", "infra", "create", "vm", "create vm", change), ApplyContext("r", "x"))
        assert "local" in err.value.hint
    finally:
        rec.close()
