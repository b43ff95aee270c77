"""A reconciler that returns an inventory entry in the wrong shape fails that action, checkpointed with the
reason, and the execution ends like any failure: never an exception out of the executor that leaves the run
half-applied and recorded as `internal error: KeyError: 'data'` (the vault's old outcome, issue 9 item 1)."""

from __future__ import annotations

from daemon.index.store import Index
from reconcilers.base import Action, ApplyContext, Outcome
from tests.daemon.test_plan import CTX, Recorder, _executor, _final_status, act, index, rec  # noqa: F401 fixtures


class OldVaultShape(Recorder):
    """Returns the inventory the vault used to return: its own fields, none of the executor's."""

    def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
        """Apply as the Recorder does, then answer with a malformed inventory for target `bad`."""
        outcome = super().apply(action, ctx)
        if action.target != "bad":
            return outcome
        return Outcome(action.id, True, "loaded", inventory={"path": "secrets/x.yaml", "version": 1})


def test_a_malformed_inventory_entry_fails_its_action_not_the_run(index: Index) -> None:  # noqa: F811
    """`bad` fails with a message naming the reconciler; `good` (independent) completes; `after` (needs bad)
    never starts; nothing raises."""
    recorder = OldVaultShape()
    result = _executor(recorder, index).execute("run", [act("good"), act("bad"), act("after", "bad")], CTX)
    assert result.failed is not None
    failed, message = result.failed
    assert failed.id == "t:bad" and "malformed inventory entry" in message and "the t reconciler" in message
    statuses = _final_status(index, "run")
    assert statuses["t:bad"] == "failed" and "t:after" not in statuses
    assert statuses["t:good"] == "done" and [i.resource_id for i in index.inventory("t")] == ["good"]
