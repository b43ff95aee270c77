"""Committed secret change -> the file that references it rewritten (issue 11 item 1; target p50 < 300 ms).

A real `stratumd` watches a bare repository holding rules, one sealed manifest (secrets/app/db.yaml) and an infra
file whose resource's content is `{ secret = "kv/app/db", key = "password" }`. A work clone re-seals the manifest
with a new value, commits and pushes it, N times, waiting for each run to finish (plus a short gap).

Times (wall clock, the same clock here and in the daemon):
- `before` = just before `git push` starts;
- `applied` = the daemon's checkpoint of the infra action (`actions.finished`, read from the index afterwards);
- `file seen` = when the new value was first read back from the file under the root (polled every 2 ms here).
Each push's run must be `succeeded` with two actions: the manifest's load, then the file's rewrite.
`--plain` is the control on the same repo and daemon: each push changes a plain file's content instead (one
action), so the difference between the two is what a secret adds (on a loaded machine, compare them only when
run back to back).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common
from common import DaemonProcess, Repo, ms, print_table, summary, verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reconcilers.vault import envelope, keys, manifest
from reconcilers.vault.backends import get_backend
from reconcilers.vault.keysource import FileKeySource

TARGET_P50_MS = 300.0
B = get_backend("openssl")
INFRA = ("{ resources = { pw = { kind = 'file, path = \"etc/app/pw\","
         " content = { secret = \"kv/app/db\", key = \"password\" } },"
         " motd = { kind = 'file, path = \"etc/motd\", content = \"%s\" } } }\n")


def _rules(user: keys.SigningKey, recipients: list[keys.Recipient]) -> str:
    listed = ", ".join(f'"{r.text}"' for r in recipients)
    return (f'{{ trusted_signers = [{{ name = "ops", key = "{user.signer.text}" }}],\n'
            f'  creation_rules = [{{ path_regex = "^secrets/", recipients = [{listed}] }}] }}\n')


class Sealer:
    """Seals successive values of secrets/app/db.yaml as a user would with `stratum secret edit`."""

    def __init__(self, data_dir: Path) -> None:
        self.identity, self.user = keys.generate(B)
        daemon = FileKeySource(data_dir / "vault" / "daemon.key").recipient()
        self.recipients = [self.identity.recipient, daemon]
        self.policy = envelope.Policy((tuple(self.recipients),))
        self.previous: envelope.Opened | None = None

    def seal(self, value: str) -> str:
        sealed = envelope.seal(B, {"password": value}, path="secrets/app/db.yaml", policy=self.policy,
                               key=self.user, previous=self.previous)
        self.previous = envelope.open_manifest(B, sealed, keys.KeyRing((self.identity,), ()), "secrets/app/db.yaml")
        return manifest.render(sealed)


def _watch(path: Path, value: str, since: float, out: dict[str, float], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if path.read_text() == value:
                out["seen"] = time.time()
                return
        except OSError:
            pass
        if time.time() - since > 30:
            return
        time.sleep(0.002)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with common.workspace("secret-ref", args.keep) as base:
        data_dir, root = base / "data", base / "root"
        root.mkdir()
        sealer = Sealer(data_dir)
        repo = Repo.create(base)
        repo.write({"secrets/rules.ncl": _rules(sealer.user, sealer.recipients), "infra/app.ncl": INFRA % "motd-0",
                    "secrets/app/db.yaml": sealer.seal("value-0")})
        head = repo.commit("initial")
        repo.push()
        pushes: list[dict[str, Any]] = []
        target = root / ("etc/motd" if args.plain else "etc/app/pw")
        with DaemonProcess(repo.bare, data_dir, root) as daemon:
            first = daemon.wait_run(head, timeout=300)
            if first.get("outcome") != "succeeded":
                raise SystemExit(f"the initial run did not succeed: {first}\n{daemon.stderr_tail()}")
            for i in range(1, args.warmup + args.pushes + 1):
                value = f"value-{i}-{os.urandom(4).hex()}"
                if args.plain:                # the control: the same daemon and repo, a plain content change
                    repo.write({"infra/app.ncl": INFRA % value})
                else:
                    repo.write({"secrets/app/db.yaml": sealer.seal(value)})
                commit = repo.commit(f"bench: new value {i}")
                time.sleep(args.gap)
                seen: dict[str, float] = {}
                stop = threading.Event()
                mark = len(daemon.events)
                watcher = threading.Thread(target=_watch, args=(target, value, time.time(), seen, stop))
                watcher.start()
                before, _ = repo.push()
                event = daemon.wait_run(commit, timeout=60, start=mark)
                watcher.join(5)
                stop.set()
                pushes.append({"i": i, "warmup": i <= args.warmup, "commit": commit, "before": before,
                               "file_seen": seen.get("seen"), "outcome": event.get("outcome"),
                               "actions": event.get("actions")})
        runs = {r["revision"]: r for r in common.read_index(data_dir, """
            SELECT r.revision, r.status, max(a.finished) AS applied, count(a.seq) AS n_actions
            FROM runs r LEFT JOIN actions a ON a.run_id = r.id GROUP BY ALL""")}
    measured = [p for p in pushes if not p["warmup"]]
    for p in measured:
        r = runs.get(p["commit"], {})
        p.update(applied=r.get("applied"), n_actions=r.get("n_actions"), status=r.get("status"))
    actions = 1 if args.plain else 2
    problems = [p for p in measured if p["status"] != "succeeded" or p["n_actions"] != actions or not p["file_seen"]]
    series = {
        "file rewritten (value read back) | from before push": [ms(p["file_seen"] - p["before"]) for p in measured
                                                               if p["file_seen"]],
        "applied (checkpoint) | from before push": [ms(p["applied"] - p["before"]) for p in measured
                                                    if p.get("applied")],
    }
    stats = {k: summary(v) for k, v in series.items()}
    rows = [[name, s.get("n", 0), s.get("p50", float("nan")), s.get("p99", float("nan")), s.get("max", float("nan")),
             f"p50 < {TARGET_P50_MS:g}", verdict(s["p50"], TARGET_P50_MS) if s.get("n") else ""]
            for name, s in stats.items()]
    what = "plain content change (control)" if args.plain else "secret change"
    print_table(f"Committed {what} -> file rewritten, ms ({len(measured)} pushes after {args.warmup} warm-up)",
                ["metric | basis", "n", "p50", "p99", "max", "target", ""], rows)
    if problems:
        print(f"\nWARNING: {len(problems)} push(es) did not end in one succeeded run of {actions} action(s) with "
              f"the file rewritten: {[(p['i'], p['status'], p['n_actions']) for p in problems][:5]}")
    return {"params": {"pushes": args.pushes, "warmup": args.warmup, "gap_s": args.gap, "plain": args.plain},
            "targets_ms": {"file_rewritten_p50": TARGET_P50_MS}, "stats_ms": stats, "problems": len(problems),
            "pushes": pushes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=30, help="measured pushes")
    parser.add_argument("--warmup", type=int, default=3, help="pushes before measuring (not counted)")
    parser.add_argument("--gap", type=float, default=0.3, help="idle seconds between a run's end and the next push")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument("--plain", action="store_true",
                        help="the control: change a plain file's content instead (results: secret_ref_plain.json)")
    args = parser.parse_args()
    common.write_result("secret_ref_plain" if args.plain else "secret_ref", run(args))


if __name__ == "__main__":
    main()
