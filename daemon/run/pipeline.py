"""One run: snapshot -> load -> validate -> admit -> index -> plan -> apply -> record.

`Pipeline.run` is a numbered list of steps. Whatever happens, the run record is finalized (`succeeded`,
`failed`, `rolled_back`, `rejected`) in the deferred `_finish`. Invalid input rejects the revision as a whole:
nothing is applied and the last good revision stays in force. A failed apply rolls back (compensations in
reverse, then the target reconciled to the last good revision).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon import log
from daemon.control.admission import Admission, AdmissionSettings, admit
from daemon.control.policy import Policies, load_policies
from daemon.errors import CycleError, InputError, StratumError
from daemon.git.source import MAX_FILES, GitSource, Snapshot
from daemon.git.tree_check import repo_cap_problems, tree_problems
from daemon.nickel.evaluator import Evaluator
from daemon.run import carry, gcpolicy
from daemon.run.plan import Executor, order, sequence
from daemon.run.retry import RetryPolicy
from reconcilers.base import (
    Action,
    AnyReconciler,
    ApplyContext,
    InventoryItem,
    Problem,
    ResourceRow,
    RunRecord,
)

if TYPE_CHECKING:
    from daemon.index.store import Index
    from daemon.service.metrics import Metrics

SETTINGS_CONTRACT = '(import "stratum.ncl").Settings'
LAST_GOOD_REF = "refs/stratum/last-good"


class RunInterrupted(Exception):
    """The daemon is stopping: running actions finished and were checkpointed; nothing more was started."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """The finalized outcome of a run."""

    run_id: str
    revision: str
    status: str
    duration_ms: float
    message: str = ""
    problems: tuple[Problem, ...] = ()
    actions: tuple[tuple[str, str], ...] = ()    # (action id, status)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A revision loaded and validated by every reconciler."""

    snapshot: Snapshot
    repo_settings: Mapping[str, Any]
    desired: Mapping[str, Any]
    problems: tuple[Problem, ...]
    policies: Policies | None = None          # policies/*.cedar of this revision (change control)


@dataclass(frozen=True, slots=True)
class PlanReport:
    """What applying a revision would do, per reconciler, for `stratum plan` and pull requests."""

    revision: str
    base: str | None
    actions: tuple[Action, ...]
    problems: tuple[Problem, ...]
    drift: tuple[Problem, ...] = ()
    admission: Admission | None = None        # signer and change-control decisions
    details: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)   # "infra:id" -> expected vs found


@dataclass
class Pipeline:
    """Runs revisions of one source against a set of reconcilers, recording into one index."""

    source: GitSource
    index: Index
    reconcilers: Mapping[str, AnyReconciler]
    evaluator: Evaluator
    parallelism: int = 4
    notes: bool = True
    _metrics: Metrics | None = None           # made on first use (see the `metrics` property)
    # False in a process that ends after one run and serves no /metrics (a CLI apply): nobody could read them.
    keep_metrics: bool = True
    on_action: Callable[[Action, str], None] | None = None
    on_phase: Callable[[str, int], None] | None = None   # (step, actions in it): progress for a person watching
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    stop: threading.Event | None = None       # shutdown: finish running actions, start no more
    max_files: int = MAX_FILES                # files per revision (host cap; stratum.ncl may ask for fewer)
    retry: RetryPolicy = field(default_factory=RetryPolicy)   # how transient and waiting errors are retried
    settle_memory: bool = True                # after each run, one full garbage collection (gcpolicy.py)
    _good: dict[str, Loaded] = field(default_factory=dict)
    _landed: carry.Landed | None = None       # the last revision that became good in this process (carry.py)
    _recorded: tuple[str, tuple[ResourceRow, ...]] | None = None   # the resource rows recorded last
    carry_note: str = ""                      # how the last run recorded its rows: "carried: ..." | "full: why"
    carry_forward: bool = True                # False: every run writes everything (the reference in tests)
    _hooks: cf.ThreadPoolExecutor = field(
        default_factory=lambda: cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-hooks"))

    @property
    def metrics(self) -> Metrics:
        """The process's run metrics, made when first used: prometheus_client costs every `stratum plan` and
        pull-request plan that records no run (~0.1 s of start-up) when made with the pipeline."""
        if self._metrics is None:
            self._metrics = _new_metrics()
        return self._metrics

    # 1-4: load and validate --------------------------------------------------------------------------
    def load(self, revision: str) -> Loaded:
        """Snapshot and load a revision through every reconciler; problems collected, never raised."""
        return self.load_snapshot(self.source.snapshot(revision))

    def load_snapshot(self, snap: Snapshot) -> Loaded:
        """Load a snapshot (a commit or a staged tree) through every reconciler."""
        with gcpolicy.paused():               # the load keeps what it makes: no collector passes (gcpolicy.py)
            return load_snapshot(snap, self.reconcilers, self.evaluator, self.max_files)

    def _plan(self, loaded: Loaded, inventory: list[InventoryItem] | None = None,
              observed: Mapping[str, Any] | None = None, incremental: bool = False, check: bool = True,
              ) -> list[Action]:
        inventory = self.index.inventory() if inventory is None else inventory
        actions: list[Action] = []
        for name, rec in self.reconcilers.items():
            if observed is not None:
                seen = observed[name]
            elif incremental:
                seen = rec.observe_changed(loaded.desired[name], inventory)
            else:
                seen = rec.observe(loaded.desired[name], inventory)
            actions.extend(rec.plan(loaded.desired[name], seen, inventory))
        if check:
            order(actions)  # raises CycleError naming the cycle
        return actions

    def plan(self, revision: str, base: str | None = None) -> PlanReport:
        """The plan of `revision` against the current target (nothing applied)."""
        with gcpolicy.paused():               # load, observe, diff, details: bounded and pure (gcpolicy.py)
            return self._plan_report(revision, base)

    def _plan_report(self, revision: str, base: str | None) -> PlanReport:
        loaded = self.load(revision)
        if loaded.problems:
            return PlanReport(loaded.snapshot.revision, base, (), loaded.problems)
        # The last good revision was admitted when it was applied; re-judging it (after the host's signers or
        # teams changed) must not silence drift detection on what actually runs.
        admission = None if loaded.snapshot.revision == self.index.get_state("last_good_revision") \
            else self._admit(loaded)
        if admission is not None and admission.problems:
            return PlanReport(loaded.snapshot.revision, base, (), admission.problems, (), admission)
        inventory = self.index.inventory()
        observed = {name: rec.observe(loaded.desired[name], inventory) for name, rec in self.reconcilers.items()}
        try:
            actions = sequence(self._plan(loaded, inventory, observed, check=False))
        except CycleError as err:
            return PlanReport(loaded.snapshot.revision, base, (), (Problem(err.what, hint=err.hint),))
        drift: list[Problem] = []
        for name, rec in self.reconcilers.items():
            drift.extend(rec.drift(loaded.desired[name], observed[name], inventory))
        details = self._details(loaded.desired, observed, inventory)
        return PlanReport(loaded.snapshot.revision, base, tuple(actions), (), tuple(drift), admission, details)

    def _details(self, desired: Mapping[str, Any], observed: Mapping[str, Any], inventory: list[InventoryItem],
                 before: Mapping[str, Any] | None = None) -> dict[str, Mapping[str, Any]]:
        """Expected vs found per changed or drifted resource, from reconcilers that explain (diffs for people;
        computed here because plans and checkpoints keep no contents). A failure only loses the details."""
        out: dict[str, Mapping[str, Any]] = {}
        for name, rec in self.reconcilers.items():
            if name not in desired or name not in observed:
                continue
            try:
                found = rec.explain(desired[name], observed[name], inventory, before.get(name) if before else None)
            except Exception:  # noqa: BLE001 details are a courtesy: the plan stands without them
                log.get().exception("explain_failed", reconciler=name)
                continue
            out.update({f"{name}:{rid}": d for rid, d in found.items()})
        return out

    def plan_between(self, base: str, head: str) -> PlanReport:
        """What merging `head` onto `base` would change: head's desired state against base's, as if base were
        applied (no target is read; this is what a pull request shows)."""
        base_loaded = self.load(base)
        head_loaded = self.load(head)
        if head_loaded.problems:
            return PlanReport(head_loaded.snapshot.revision, base_loaded.snapshot.revision, (), head_loaded.problems)
        # The base's problems do not matter (the PR may fix them); its policies govern policies/ changes.
        admission = admit(self.source, head_loaded, base_loaded, self.reconcilers, self.admission)
        actions: list[Action] = []
        details: dict[str, Mapping[str, Any]] = {}
        for name, rec in self.reconcilers.items():
            if name not in base_loaded.desired or name not in head_loaded.desired:
                continue
            seen = rec.simulate(base_loaded.desired[name])
            if seen is None:                  # this reconciler cannot plan without reading its target
                continue
            inventory = rec.inventory_items(base_loaded.desired[name]) or []
            actions.extend(rec.plan(head_loaded.desired[name], seen, inventory))
            details.update(self._details({name: head_loaded.desired[name]}, {name: seen}, inventory,
                                         {name: base_loaded.desired[name]}))
        try:
            ordered = sequence(actions)
        except CycleError as err:
            return PlanReport(head_loaded.snapshot.revision, base_loaded.snapshot.revision, (),
                              (Problem(err.what, hint=err.hint),), (), admission)
        return PlanReport(head_loaded.snapshot.revision, base_loaded.snapshot.revision, tuple(ordered),
                          admission.problems, (), admission, details)

    # the run -----------------------------------------------------------------------------------------
    def run(self, revision: str, trigger: str = "manual", incremental: bool = False) -> RunResult:
        """Apply one revision end to end; always returns a finalized result.

        `incremental` (runs a new commit triggers): resources whose spec is unchanged since it was applied
        are not read from the target; finding drift on them is the periodic drift check's job.
        """
        revision = self.source.resolve(revision)
        base = self.index.get_state("last_applied_revision")
        run_id = self.index.start_run(revision, trigger, base)
        started = time.time()
        logger = log.get(run_id=run_id, revision=revision[:12], trigger=trigger)
        status, message = "failed", ""
        problems: tuple[Problem, ...] = ()
        done: tuple[tuple[str, str], ...] = ()
        try:
            status, message, problems, done = self._run(run_id, revision, base, logger, incremental)
        except RunInterrupted as err:
            self._landed = None
            # Left `running` on purpose, with its checkpoints: resolve_interrupted finishes it at next start.
            logger.warning("run_interrupted", message=str(err))
            self.index.set_state("stopped_run", run_id)     # stopped on purpose: owed a fresh run at next start
            self.index.sync()
            return RunResult(run_id, revision, "interrupted", (time.time() - started) * 1000, str(err))
        except StratumError as err:
            status, message = "failed", err.render()
        except Exception as err:
            logger.exception("run_crashed")
            status, message = "failed", f"internal error: {type(err).__name__}: {err}"
        return self._finish(run_id, revision, status, message, problems, done, started, logger)

    def _run(self, run_id: str, revision: str, base: str | None, logger: Any, incremental: bool = False,
             ) -> tuple[str, str, tuple[Problem, ...], tuple[tuple[str, str], ...]]:
        # 1-3. snapshot, load, validate; then admission: signature and change control
        self._phase("loading")
        loaded = self.load(revision)
        problems = loaded.problems
        if not problems:
            admission = self._admit(loaded)
            problems = admission.problems
            logger = logger.bind(principal=admission.principal, signed=admission.signed)
            logger.debug("admission", control=admission.control, decisions=len(admission.decisions))
        if problems:
            with self.index.transaction():
                self._index(loaded, base)
            return "rejected", f"{len(problems)} problem(s); the last good revision stays in force", \
                problems, ()
        # 4. index: only an admitted revision reaches the reconcilers' own index (what MCP and search serve)
        self._phase("indexing")
        self._index_hooks(loaded)
        # 5. plan, then index the revision and its plan in one commit
        self._phase("planning")
        try:
            actions = self._plan(loaded, incremental=incremental)
        except CycleError as err:
            return "rejected", err.what, (Problem(err.what, hint=err.hint),), ()
        with self.index.transaction():
            self._index(loaded, base)
            self.index.set_run_plan(run_id, actions)
        # 6. apply
        ctx = ApplyContext(run_id=run_id, revision=revision)
        # The repo may ask for less parallelism than the host allows, never more.
        wanted = loaded.repo_settings.get("infra", {}).get("parallelism", self.parallelism)
        executor = self._executor(min(self.parallelism, int(wanted)))
        executor.stop = self.stop
        self._phase("applying", len(actions))
        result = executor.execute(run_id, actions, ctx)
        done = tuple((a.id, "done") for a, _ in result.completed)
        if result.interrupted:
            raise RunInterrupted(f"shutdown after {len(done)} of {len(actions)} action(s); the next start "
                                 "rolls the run back or resumes it (on_interrupted)")
        if result.failed is None:
            self.commit_good(loaded)
            # An outcome that is not ok without an error is waiting (the vault sealed or off): say so, and why.
            waiting = [o.message for _, o in result.completed if not o.ok]
            applied = f"{len(result.completed) - len(waiting)} action(s) applied"
            applied += f"; {len(waiting)} not yet, first: {waiting[0]}" if waiting else ""
            return "succeeded", applied, (), done
        failed_action, error = result.failed
        done += ((failed_action.id, "failed"),)
        self._landed = None        # the target moved under this run: carry nothing from before it (carry.py)
        ok, note = self.rollback(run_id, [a for a, _ in result.completed], result.next_seq)
        status = "rolled_back" if ok else "failed"
        return status, f"{failed_action.id} failed: {error}; {note}", (), done

    def _phase(self, step: str, actions: int = 0) -> None:
        if self.on_phase is not None:
            self.on_phase(step, actions)

    def _executor(self, parallelism: int | None = None) -> Executor:
        return Executor(self.reconcilers, self.index, parallelism or self.parallelism, on_done=self.on_action,
                        retry=self.retry, metrics=self.metrics if self.keep_metrics else None)

    def _index(self, loaded: Loaded, base: str | None) -> None:
        """The revision's resources and changed files (callers group these writes into one commit)."""
        rows: list[ResourceRow] = []
        for name, rec in self.reconcilers.items():
            if name in loaded.desired:
                rows.extend(rec.resource_rows(loaded.desired[name]))
        revision = loaded.snapshot.revision
        # Patched from the rows of the revision that landed last, when that is sound (daemon/run/carry.py).
        landed = self._landed if self.carry_forward else None
        self.carry_note = carry.record_resources(self.index, revision, rows, landed, base)
        self._recorded = (revision, tuple(rows))
        self.index.record_changed_files(loaded.snapshot.revision, self._changes(loaded.snapshot, base))

    def _index_hooks(self, loaded: Loaded) -> None:
        """Reconcilers' own index writes (knowledge nodes, embeddings), each in its own transactions."""
        for name, rec in self.reconcilers.items():
            if name in loaded.desired:
                try:
                    rec.index(loaded.desired[name], self.index, loaded.snapshot.revision)
                except Exception:  # noqa: BLE001 indexing is a courtesy; it never blocks an apply
                    log.get().exception("index_hook_failed", reconciler=name)

    def _changes(self, snap: Snapshot, base: str | None) -> list[tuple[str, str, str]]:
        if snap.revision.startswith("staged:"):
            return []
        if base is None:
            return [(e.path, e.blob_id, "added") for e in snap.entries()][:10_000]
        return self.source.changes(base, snap.revision)

    def commit_good(self, loaded: Loaded) -> None:
        """Make `loaded` the last good revision: inventory follows its desired state (one commit)."""
        with self.index.transaction():
            self._commit_good(loaded)

    def _commit_good(self, loaded: Loaded) -> None:
        revision = loaded.snapshot.revision
        for name, rec in self.reconcilers.items():
            self.index.set_state(f"last_applied_revision:{name}", revision)
            items = rec.inventory_items(loaded.desired[name])
            if items is None:                 # its inventory follows its actions' outcomes only
                continue
            wanted = {i.resource_id: i for i in items}
            current = self.index.inventory_map(name)
            for rid in current.keys() - wanted.keys():
                self.index.drop_inventory(name, rid)
            for rid, item in wanted.items():
                held = current.get(rid)
                if held is item:                  # the reconciler's own object for an unchanged resource
                    continue
                if held == item:                  # equal: held as this object from now on (nothing written)
                    self.index.adopt_inventory(item)
                else:                             # only what changed is written
                    self.index.put_inventory(item, revision)
        self.index.set_state("last_applied_revision", revision)
        self.index.set_state("last_good_revision", revision)
        # A ref keeps the commit (and its policies) reachable: a force push plus `git gc` cannot erase the
        # base that change control judges the next commit against.
        self.source.keep(revision, LAST_GOOD_REF)
        self._good = {revision: loaded}
        # Landed: what the next run may carry forward (the rows recorded for this very revision, if any).
        rows = self._recorded[1] if self._recorded is not None and self._recorded[0] == revision else None
        self._landed = carry.Landed(revision, rows) if rows is not None else None

    # rollback ----------------------------------------------------------------------------------------
    def _admit(self, loaded: Loaded) -> Admission:
        """Admission against the last good revision. One that is recorded but can no longer be read (history
        rewritten and collected) must not turn into "no base": its policies would stop guarding policies/."""
        good = self._last_good()
        recorded = self.index.get_state("last_good_revision")
        if good is None and recorded is not None:
            return Admission("", False, None, problems=(Problem(
                f"the last good revision {recorded[:12]} can no longer be read from the repository, so changes "
                "cannot be checked against its policies", reconciler="policy",
                hint=f"restore commit {recorded} (e.g. push it to refs/stratum/last-good), then retry"),))
        return admit(self.source, loaded, good, self.reconcilers, self.admission)

    def _last_good(self) -> Loaded | None:
        revision = self.index.get_state("last_good_revision")
        if revision is None:
            return None
        if revision not in self._good:
            try:
                self._good = {revision: self.load(revision)}
            except StratumError:
                return None
        return self._good[revision]

    def rollback(self, run_id: str, completed: list[Action], seq: int) -> tuple[bool, str]:
        """Compensate `completed` in reverse, then reconcile the target to the last good revision."""
        executor = self._executor()
        ctx = ApplyContext(run_id=run_id, revision="rollback")
        seq, errors = executor.compensate(run_id, completed, ctx, seq)
        good = self._last_good()
        desired: dict[str, Any] = {}
        for name, rec in self.reconcilers.items():
            if good is not None and name in good.desired:
                desired[name] = good.desired[name]
            elif (empty := rec.empty()) is not None:
                desired[name] = empty
        inventory = self.index.inventory()
        actions: list[Action] = []
        for name, want in desired.items():
            rec = self.reconcilers[name]
            actions.extend(rec.plan(want, rec.observe(want, inventory), inventory))
        result = executor.execute(run_id, [_as_rollback(a) for a in actions], ctx, seq)
        target = good.snapshot.revision[:12] if good else "the empty state"
        if result.failed is not None or errors:
            detail = result.failed[1] if result.failed else "; ".join(errors)
            return False, f"rollback to {target} incomplete: {detail}"
        if good is not None:
            self.commit_good(good)
        else:
            for name in desired:
                for item in self.index.inventory(name):
                    self.index.drop_inventory(name, item.resource_id)
        return True, f"rolled back to {target} ({len(result.completed)} action(s))"

    def resolve_interrupted(self, mode: str) -> list[RunResult]:
        """Finish runs a killed daemon left `running`: roll back (default) or resume."""
        results = []
        for run in self.index.interrupted_runs():
            run_id, revision = str(run["id"]), str(run["revision"])
            started = time.time()
            logger = log.get(run_id=run_id, revision=revision[:12], trigger="restart")
            try:
                results.append(self._resolve_one(run_id, revision, mode, started, logger))
            except Exception as err:  # noqa: BLE001 whatever recovery raises, the daemon must come up
                results.append(self._recovery_failed(run_id, revision, err, started, logger))
        return results

    def _recovery_failed(self, run_id: str, revision: str, err: Exception, started: float,
                         logger: Any) -> RunResult:
        """Finalize a run recovery could not finish as `recovery_failed`, with the reason: a crash that
        recovery cannot undo must not become a crash loop."""
        message = (f"interrupted by a daemon restart; recovery failed ({type(err).__name__}: {err}); the target "
                   "may be partly applied: check `stratum drift`, then apply a good revision")
        logger.exception("recovery_failed", message=message)
        with contextlib.suppress(Exception):
            self.index.event("recovery_failed", message, revision=revision, subject=run_id)
        return self._finish(run_id, revision, "recovery_failed", message, (), (), started, logger)

    def _resolve_one(self, run_id: str, revision: str, mode: str, started: float,
                     logger: Any) -> RunResult:
        """Roll back (or resume) one interrupted run from its checkpoints."""
        checkpoints = self.index.run_actions(run_id)
        compensated = {a.id.removesuffix("#compensate") for a, st in checkpoints if a.id.endswith("#compensate")}
        # `started` = in flight when the daemon died: possibly applied, so compensated too.
        completed = [a for a, st in checkpoints
                     if st in ("done", "started") and not a.id.endswith("#compensate")
                     and a.id not in compensated]
        seq = len(checkpoints)
        if mode == "resume":
            self.index.finish_run(run_id, "failed", "interrupted by a daemon restart; resumed in a new run")
            return self.run(revision, trigger="resume")
        ok, note = self.rollback(run_id, completed, seq)
        status = "rolled_back" if ok else "failed"
        return self._finish(run_id, revision, status, f"interrupted by a daemon restart; {note}", (),
                            tuple((a.id, "done") for a in completed), started, logger)

    # 7. record ----------------------------------------------------------------------------------------
    def _finish(self, run_id: str, revision: str, status: str, message: str, problems: tuple[Problem, ...],
                done: tuple[tuple[str, str], ...], started: float, logger: Any) -> RunResult:
        with self.index.transaction():
            duration = self.index.finish_run(run_id, status, message, problems)
            self.index.set_revision_status(revision, {"succeeded": "applied"}.get(status, status), run_id)
            self.index.set_state("last_attempted_revision", revision)
        self.index.sync()
        if self.notes:
            lines = [f"stratum: {status}", f"run: {run_id}", f"duration_ms: {duration:.0f}",
                     f"actions: {len(done)}"]
            lines += [f"problem: {p}" for p in problems[:50]]
            if message:
                lines.append(f"message: {message[:2000]}")
            self.source.add_note(revision, "\n".join(lines) + "\n")
        if self.keep_metrics:
            self.metrics.record_run(status, duration / 1000, revision)
            for _, status_ in done:
                self.metrics.actions.labels("all", status_).inc()
        logger.info("run", outcome=status, duration_ms=round(duration, 1), actions=len(done),
                    problems=len(problems), message=message[:500],
                    **({"first_problem": str(problems[0])} if problems else {}))
        record = RunRecord(run_id, revision, status, started, time.time(),
                           tuple((a, "", s) for a, s in done), tuple(a for a, _ in done), message)
        # Extras (the knowledge graph's execution node: embedding text takes a while) run after the run is
        # finalized, one at a time, off the path from a push to the next run.
        self._hooks.submit(self._run_hooks, record)
        return RunResult(run_id, revision, status, duration, message, problems, done)

    def _run_hooks(self, record: RunRecord) -> None:
        for name, rec in self.reconcilers.items():
            try:
                rec.on_run_finished(record, self.index)
            except Exception:  # noqa: BLE001 recording extras never changes the run's outcome
                log.get().exception("run_hook_failed", reconciler=name)
        if self.settle_memory:
            gcpolicy.settle()     # the full collection between runs, not inside the next (gcpolicy.py)

    def wait_hooks(self) -> None:
        """Block until every queued run hook has finished (shutdown, tests)."""
        self._hooks.submit(lambda: None).result()

    def close(self) -> None:
        """Finish the queued run hooks."""
        self._hooks.shutdown(wait=True)


def _as_rollback(action: Action) -> Action:
    return Action(id=action.id + "@rollback", reconciler=action.reconciler, kind=action.kind,
                  target=action.target, summary="rollback: " + action.summary, change=action.change,
                  depends_on=tuple(d + "@rollback" for d in action.depends_on), compensation=None)


def load_snapshot(snap: Snapshot, reconcilers: Mapping[str, AnyReconciler], evaluator: Evaluator,
                  max_files: int = MAX_FILES) -> Loaded:
    """Load a snapshot (a commit or a staged tree) through every reconciler: steps 1-4 of a run, which need no
    index (`stratum validate` opens none)."""
    revision = snap.revision
    # File names and the file count first: a tree over the host's cap is refused before anything loads.
    scan = snap.scan(max_files)
    problems: list[Problem] = tree_problems(scan, max_files)
    if scan.over_cap:
        return Loaded(snap, {}, {}, tuple(problems), None)
    repo_settings: Mapping[str, Any] = {}
    _prefetch(snap, reconcilers, evaluator)
    if snap.entry("stratum.ncl") is not None:
        res = evaluator.evaluate(snap, ["stratum.ncl"], SETTINGS_CONTRACT)
        problems.extend(res.problems)
        repo_settings = res.values.get("stratum.ncl", {})
        problems.extend(repo_cap_problems(scan, repo_settings, max_files))
    policies, policy_problems = load_policies(snap)
    problems.extend(policy_problems)
    desired: dict[str, Any] = {}
    for name, rec in reconcilers.items():
        try:
            # Each reconciler gets its section of *this* revision's stratum.ncl (checked by the contract
            # above) before it loads, so its desired state carries the settings it was loaded with.
            section = repo_settings.get(name) if isinstance(repo_settings, Mapping) else None
            rec.configure(section if isinstance(section, Mapping) else {})
            desired[name] = rec.load(snap)
            problems.extend(rec.validate(desired[name]))
        except InputError as err:
            file, _, line = err.where.partition(":")
            problems.append(Problem(err.what, file, int(line) if line.isdigit() else 0, reconciler=name,
                                    hint=err.hint))
        except Exception as err:  # noqa: BLE001 one broken reconciler rejects the revision, never the daemon
            log.get().exception("reconciler_crashed", reconciler=name, revision=revision)
            problems.append(Problem(f"internal error in the {name} reconciler: {type(err).__name__}: {err}",
                                    reconciler=name, hint="report this bug; the revision was not applied"))
    return Loaded(snap, repo_settings, desired, tuple(problems), policies)


def _prefetch(snap: Snapshot, reconcilers: Mapping[str, AnyReconciler], evaluator: Evaluator) -> None:
    """Evaluate the settings and the Nickel files every reconciler declares ahead (`nickel_inputs`) in one
    Nickel run: the template asked for eight runs, each paying for the standard library and a contract
    library again (~0.3 s of its validate). An optimisation only: a failure here is left to the loads."""
    prefetch = getattr(evaluator, "prefetch", None)
    if prefetch is None:
        return
    groups: list[tuple[list[str], str | None]] = []
    if snap.entry("stratum.ncl") is not None:
        groups.append((["stratum.ncl"], SETTINGS_CONTRACT))
    for name, rec in reconcilers.items():
        try:
            groups.extend(rec.nickel_inputs(snap))
        except Exception:  # noqa: BLE001 a hint that cannot be made is no hint; its load reports the cause
            log.get().debug("nickel_inputs_failed", reconciler=name)
    prefetch(snap, groups)


def _new_metrics() -> Metrics:
    """The process's metrics (imported on first use: prometheus_client costs a CLI verb that records no run)."""
    from daemon.service.metrics import Metrics

    return Metrics()
