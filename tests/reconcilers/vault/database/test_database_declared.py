"""Database connections and roles declared in the repo (vault/database/*.ncl) against a real PostgreSQL: the
root password comes from a secret reference (resolved by a stand-in for the secrets port), plan/apply converge,
rotate-root is not undone by the next commit, and bad declarations are located problems."""

from __future__ import annotations

import time
from pathlib import Path

from daemon.git.source import GitSource
from daemon.nickel.evaluator import Evaluator
from reconcilers.vault.database import api, declared, leases, reaper
from reconcilers.vault.pki.storage import MemoryStore
from tests.fixtures import WorkRepo
from tests.reconcilers.vault.database.conftest import ADMIN, ADMIN_PASSWORD, can_login, url_template
from tests.servers import Postgres


def _file(pg: Postgres, roles: str, connection_extra: str = "") -> str:
    url = url_template(pg)
    return f"""{{
  connections = {{ main = {{ connection_url = "{url}", username = "{ADMIN}",
                             password_secret = "kv/db/main#password", allowed_roles = ["app", "reports"]
                             {connection_extra} }} }},
  {roles}
}}
"""


APP = """roles = { app = { db_name = "main", default_ttl = "30m",
    creation_statements = ["CREATE ROLE \\"{{name}}\\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
                           "GRANT SELECT ON items TO \\"{{name}}\\""] } },"""
STATIC = """static_roles = { reports = { db_name = "main", username = "decl_reports", rotation_period = "12h" } },"""


def _load(tmp: Path, repo: WorkRepo, evaluator: Evaluator, text: str, path: str = "vault/database/db.ncl",
          ) -> tuple[dict[str, declared.MountSpec], list[str]]:
    repo.commit({path: text})
    snap = GitSource(str(repo.path), "main", tmp / "data").snapshot("main")
    specs, problems = declared.load(evaluator, snap)
    return specs, [f"{p}" for p in problems]


def test_declared_connection_and_roles_converge_and_survive_rotate_root(
        tmp_path: Path, repo: WorkRepo, evaluator: Evaluator, pg: Postgres) -> None:
    """Apply makes the connection (password from the secret), the roles, and a working static password; the
    next plan is empty, also after rotate-root; removing a role deletes it; a connection with live leases is
    kept and reported."""
    pg.psql("DROP ROLE IF EXISTS decl_reports; DROP ROLE IF EXISTS decl_admin; "
            "CREATE ROLE decl_reports LOGIN PASSWORD 'x'; GRANT SELECT ON items TO decl_reports; "
            "CREATE ROLE decl_admin SUPERUSER LOGIN PASSWORD 'decl-admin-initial'")
    secrets = {"kv/db/main#password": "decl-admin-initial"}
    asked: list[str] = []

    def resolve(reference: str) -> str:             # stands in for the secrets port (built in parallel)
        asked.append(reference)
        return secrets[reference]

    text = _file(pg, APP + "\n  " + STATIC).replace(f'username = "{ADMIN}"', 'username = "decl_admin"')
    specs, problems = _load(tmp_path, repo, evaluator, text)
    assert problems == []
    store = MemoryStore()
    changes = declared.plan(specs["db"], store)
    assert [(c.action, c.target) for c in changes] == [("write-connection", "main"), ("write-role", "app"),
                                                       ("write-static-role", "reports")]
    done = declared.apply(specs["db"], store, changes, resolve)
    assert len(done) == 3 and asked == ["kv/db/main#password"]
    assert "decl-admin-initial" not in " ".join(str(c) for c in changes) + " ".join(done)
    assert declared.plan(specs["db"], store) == []
    made = api.handle("GET", "creds/app", {}, store)[1]
    assert can_login(pg, made["data"]["username"], made["data"]["password"])
    static = api.handle("GET", "static-creds/reports", {}, store)[1]["data"]
    assert can_login(pg, "decl_reports", static["password"])

    assert api.handle("POST", "rotate-root/main", {}, store)[0] == 204
    assert not can_login(pg, "decl_admin", "decl-admin-initial")
    assert declared.plan(specs["db"], store) == []              # the repo does not put the old password back

    specs, _ = _load(tmp_path, repo, evaluator, text.replace(APP, "roles = {},"))
    assert [(c.action, c.target) for c in declared.plan(specs["db"], store)] == [("delete-role", "app")]
    declared.apply(specs["db"], store, declared.plan(specs["db"], store), resolve)
    assert api.handle("GET", "roles/app", {}, store)[0] == 404

    store.put("config/old", store.get("config/main") or b"")   # a connection the repo no longer declares...
    lease = leases.Lease("app", "x1", "old", "v-none", 0, int(time.time()) + 3600, int(time.time()) + 3600)
    leases.save(store, lease)                                    # ...still used by a lease
    assert ("connection-in-use", "old") in [(c.action, c.target) for c in declared.plan(specs["db"], store)]
    declared.apply(specs["db"], store, declared.plan(specs["db"], store), resolve)
    assert store.get("config/old") is not None
    reaper.reap(store, time.time() + 7200)
    assert ("delete-connection", "old") in [(c.action, c.target) for c in declared.plan(specs["db"], store)]


def test_bad_database_declarations_are_located(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator,
                                               pg: Postgres) -> None:
    """A password in clear in the URL, a role on an undeclared or disallowing connection, and a contract
    error each name their file."""
    clear = _file(pg, "").replace("{{password}}", "hunter2")
    _, problems = _load(tmp_path, repo, evaluator, clear, "vault/database/a.ncl")
    assert any("vault/database/a.ncl" in p and "password in clear" in p for p in problems), problems
    assert not any("hunter2" in p for p in problems)
    bad_db = _file(pg, APP.replace('db_name = "main"', 'db_name = "other"'))
    _, problems = _load(tmp_path, repo, evaluator, bad_db, "vault/database/b.ncl")
    assert any("vault/database/b.ncl" in p and "'other' is not a connection" in p for p in problems), problems
    disallowed = _file(pg, APP).replace('allowed_roles = ["app", "reports"]', 'allowed_roles = ["reports"]')
    _, problems = _load(tmp_path, repo, evaluator, disallowed, "vault/database/c.ncl")
    assert any("does not allow role app" in p for p in problems), problems
    _, problems = _load(tmp_path, repo, evaluator, '{ roles = { x = { db_name = "m" } } }\n',
                        "vault/database/d.ncl")
    assert any("vault/database/d.ncl" in p and "creation_statements" in p for p in problems), problems
    assert ADMIN_PASSWORD not in " ".join(problems)
