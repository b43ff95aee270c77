"""The daemon's side of the ports in reconcilers/ports.py: what `ReconcilerEnv` hands each reconciler.

    bound_events     EventRecorder   events into the index under the reconciler's name
    SecretsBroker    SecretsPort     asks the reconciler that provides secrets (the vault), audits every use
    TimerScheduler   Scheduler       threading timers on the daemon's clock; `wake` rings the daemon's loop
    RepoGitWriter    GitWriter       commits as the daemon to branches other than the watched one

Each is small and made once per daemon (runtime.build); tests pass these same classes over real repos and
indexes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import pygit2

from daemon import log
from reconcilers.errors import SourceError, StratumError
from reconcilers.gittree import insert_blob
from reconcilers.ports import EventRecorder, SecretLocation, SecretsPort, Snapshot, Timer

if TYPE_CHECKING:
    from daemon.git.source import GitSource
    from daemon.index.store import Index

IDENTITY = ("stratumd", "stratumd@localhost")     # who the daemon's own commits are by


def bound_events(index: Index, reconciler: str) -> EventRecorder:
    """An event recorder writing into `index` under `reconciler`'s name."""

    def record(kind: str, message: str, *, subject: str = "", revision: str = "") -> None:
        index.event(kind, message, reconciler=reconciler, subject=subject, revision=revision)
    return record


class SecretsBroker:
    """The one secrets port of a daemon: the provider is the reconciler whose `secrets()` answers (set after
    the reconcilers are built); `for_(name)` is the port handed to reconciler `name`, so each resolution is
    audited with who asked, for which reference and why. The value is returned, never recorded or kept."""

    def __init__(self, index: Index | None) -> None:
        self.provider: SecretsPort | None = None
        self._index = index

    def for_(self, reconciler: str) -> SecretsPort:
        """The port as reconciler `reconciler` sees it."""
        return _BoundSecrets(self, reconciler)

    def resolve(self, reconciler: str, reference: str, purpose: str) -> str:
        """Resolve through the provider; audited whether it works or not."""
        if self.provider is None:
            self._audit(reconciler, reference, purpose, "refused: no secrets provider runs")
            raise StratumError(f"cannot resolve secret {reference}: no reconciler provides secrets here",
                               where=reference, hint="enable the vault reconciler (it needs its key)")
        try:
            value = self.provider.resolve(reference, purpose=purpose)
        except Exception as err:
            self._audit(reconciler, reference, purpose, f"failed: {type(err).__name__}")
            raise
        self._audit(reconciler, reference, purpose, "resolved")
        return value

    def _provider(self, reference: str) -> SecretsPort:
        if self.provider is None:
            raise StratumError(f"secret {reference}: no reconciler provides secrets here", where=reference,
                               hint="enable the vault reconciler (it needs its key)")
        return self.provider

    def locate(self, snap: Snapshot, reference: str) -> SecretLocation:
        """Where `reference` points in `snap` (no value: not audited as a use)."""
        return self._provider(reference).locate(snap, reference)

    def fingerprint(self, data: bytes) -> str:
        """The provider's keyed fingerprint of `data`."""
        return self._provider("(fingerprint)").fingerprint(data)

    def _audit(self, reconciler: str, reference: str, purpose: str, outcome: str) -> None:
        # The reference and the purpose only: never the value, never a length or a hash of it.
        log.get().info("secret_resolved", reconciler=reconciler, reference=reference, purpose=purpose,
                       outcome=outcome)
        if self._index is not None:
            self._index.event("secret_resolved", f"{reconciler} asked for {reference} ({purpose}): {outcome}",
                              reconciler=reconciler, subject=reference)


class _BoundSecrets:
    def __init__(self, broker: SecretsBroker, reconciler: str) -> None:
        self._broker = broker
        self._reconciler = reconciler

    def resolve(self, reference: str, *, purpose: str) -> str:
        """See SecretsPort."""
        return self._broker.resolve(self._reconciler, reference, purpose)

    def locate(self, snap: Snapshot, reference: str) -> SecretLocation:
        """See SecretsPort."""
        return self._broker.locate(snap, reference)

    def fingerprint(self, data: bytes) -> str:
        """See SecretsPort."""
        return self._broker.fingerprint(data)


class TimerScheduler:
    """Timers as daemon threads; `wake_fn` is set by the service to ring its loop (None: nothing to wake)."""

    def __init__(self) -> None:
        self.wake_fn: Callable[[str], None] | None = None
        self.rerun_fn: Callable[[str], None] | None = None     # set by the service: run what is in force again
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self._closed = False

    def call_later(self, delay: float, fn: Callable[[], None], *, name: str = "") -> Timer:
        """Run `fn` once after `delay` seconds; its errors are logged, never raised into the daemon."""
        def fire() -> None:
            with self._lock:
                self._timers.discard(timer)
            try:
                fn()
            except Exception:  # noqa: BLE001 a reconciler's timer never takes the daemon down
                log.get().exception("timer_failed", timer=name)

        timer = threading.Timer(max(0.0, delay), fire)
        timer.daemon = True
        timer.name = f"timer-{name}" if name else "timer"
        with self._lock:
            if self._closed:
                raise StratumError("the daemon is stopping: no new timers", hint="retry after it starts")
            self._timers.add(timer)
        timer.start()
        return timer

    def wake(self, reason: str) -> None:
        """Ring the daemon's loop (a no-op outside a daemon)."""
        if self.wake_fn is not None:
            self.wake_fn(reason)

    def rerun(self, reason: str) -> None:
        """Ask the daemon for a run of what is in force (a no-op outside a daemon)."""
        if self.rerun_fn is not None:
            self.rerun_fn(reason)

    def close(self) -> None:
        """Cancel every pending timer (shutdown)."""
        with self._lock:
            self._closed = True
            timers, self._timers = list(self._timers), set()
        for timer in timers:
            timer.cancel()


class RepoGitWriter:
    """Commits one file at a time, without a work tree, as the daemon, to any branch but the watched one
    (what the daemon applies comes from people through review; it never writes its own input)."""

    def __init__(self, source: GitSource) -> None:
        self._source = source
        self._lock = threading.Lock()

    def commit_file(self, branch: str, path: str, text: str, message: str, base: str | None = None) -> str:
        """Add or replace `path` on `branch` in one commit; a new branch starts at commit `base` (None: with no
        parent, a branch of its own). The commit id."""
        return self.commit_files(branch, {path: text}, message, base)

    def commit_files(self, branch: str, files: Mapping[str, str], message: str, base: str | None = None) -> str:
        """Add or replace every file of `files` (path -> text) on `branch` in one commit (see commit_file)."""
        where = next(iter(files), branch)
        if branch.removeprefix("refs/heads/") == self._source.branch:
            raise SourceError(f"the daemon does not commit to the branch it watches ({branch})", where=where,
                              hint="configure a side branch (for example stratum/executions)")
        repo = self._source.repo
        # The source's lock too: the loop's fetch prunes branches the remote lacks, so it must not run between
        # this commit and its push (it deleted the new branch under a busy daemon).
        with self._lock, self._source.writing():
            ref_name = f"refs/heads/{branch.removeprefix('refs/heads/')}"
            ref = repo.references.get(ref_name)
            parent = ref.peel(pygit2.Commit) if ref is not None else None
            if parent is None and base is not None:
                found = repo.get(base)
                if not isinstance(found, pygit2.Commit):
                    raise SourceError(f"commit {base} is not in the repository", where=branch)
                parent = found
            tree = parent.tree if parent is not None else None
            tree_id = None
            for path, text in sorted(files.items()):
                blob_id = repo.create_blob(text.encode("utf-8"))
                tree_id = insert_blob(repo, tree, path.split("/"), blob_id)
                written = repo.get(tree_id)
                tree = written if isinstance(written, pygit2.Tree) else None
            if tree_id is None:
                raise SourceError("nothing to commit: no files given", where=branch)
            sig = pygit2.Signature(*IDENTITY)
            before = ref.target if ref is not None else None
            commit = str(repo.create_commit(ref_name, sig, sig, message, tree_id,
                                            [parent.id] if parent is not None else []))
            try:
                # A mirror's branches live on the remote (the next fetch prunes what it lacks): push it there.
                self._source.publish(ref_name.removeprefix("refs/heads/"))
            except SourceError:
                if before is not None:
                    repo.references.create(ref_name, before, force=True)
                elif repo.references.get(ref_name) is not None:
                    repo.references.delete(ref_name)
                raise
            return commit

