"""Start-up cost of the CLI: `stratum --help`/`--version` import no heavy library, and the lazy verb table in
daemon/cli/main.py stays true to the verbs themselves.

Speed itself is measured by bench/cli.py; these tests check the cause (what gets imported), which does not
depend on the machine's load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from daemon.cli.main import all_verbs, cli, load_verb

HEAVY = ("duckdb", "pygit2", "numpy", "nickel", "mcp", "fastembed", "onnxruntime", "cryptography", "cedarpy",
         "structlog", "rich", "jinja2", "watchdog", "prometheus_client", "daemon.index.store", "daemon.run.pipeline",
         "daemon.run.runtime", "reconcilers.registry", "reconcilers.infra.reconciler", "reconcilers.vault.reconciler",
         "reconcilers.knowledge.reconciler")


def _imported_after(code: str, modules: tuple[str, ...] = HEAVY) -> set[str]:
    """The `modules` present in sys.modules after running `code` in a fresh interpreter."""
    probe = (f"import sys\n{code}\n"
             f"import json; print(json.dumps([m for m in {list(modules)!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_imports_no_heavy_library() -> None:
    """`import daemon.cli.main` (what both entry points do first) loads none of the heavy libraries."""
    assert _imported_after("import daemon.cli.main") == set()


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["-h"]])
def test_help_and_version_import_no_heavy_library(argv: list[str]) -> None:
    """`stratum --help` and `--version` print without importing a verb's dependencies."""
    code = ("from daemon.cli.main import main\n"
            f"try:\n    main.__globals__['cli'].main({argv!r}, prog_name='stratum', standalone_mode=False)\n"
            "except SystemExit:\n    pass")
    assert _imported_after(code) == set()


def test_help_lists_every_verb_with_its_own_summary() -> None:
    """The group's help shows each verb with the summary its own command declares."""
    result = CliRunner().invoke(cli, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in all_verbs():
        assert f"  {name} " in result.output


@pytest.mark.parametrize("name", sorted(all_verbs()))
def test_verb_table_matches_the_command(name: str) -> None:
    """Each lazy entry names the real command, and its summary is that command's own first sentence."""
    command = load_verb(name)
    assert isinstance(command, click.Command)
    assert command.get_short_help_str(limit=10_000) == all_verbs()[name][2]


def test_a_verb_still_runs_and_shows_its_own_help() -> None:
    """A lazily loaded verb parses its options as before (its own --help lists them)."""
    result = CliRunner().invoke(cli, ["plan", "--help"])
    assert result.exit_code == 0, result.output
    assert "--detailed-exitcode" in result.output or "--base" in result.output


def test_an_unknown_verb_is_a_usage_error() -> None:
    """A mistyped verb is refused with click's usage error (exit 2), not a traceback."""
    result = CliRunner().invoke(cli, ["aply"])
    assert result.exit_code == 2
    assert "No such command 'aply'" in result.output


def test_logging_does_not_drag_in_rich_and_rich_still_works_afterwards() -> None:
    """structlog (daemon.log) loads without rich, pygments and attrs; rich itself stays importable (the apply
    progress bar uses it) and console logs still show tracebacks, as plain text."""
    code = ("import sys, io\nimport daemon.log as log\n"
            "before = [m for m in ('rich', 'pygments', 'attr') if m in sys.modules]\n"
            "import rich.progress\n"
            "out = io.StringIO()\nlog.configure('console', out)\n"
            "try:\n    1 / 0\nexcept ZeroDivisionError:\n    log.get().exception('boom')\n"
            "import json; print(json.dumps([before, 'ZeroDivisionError' in out.getvalue()]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[], True]


@pytest.mark.parametrize("module", ["daemon.cli.run", "daemon.cli.status", "daemon.cli.control", "daemon.cli.daemon"])
def test_verbs_a_daemon_can_answer_load_no_engine_up_front(module: str) -> None:
    """plan/apply/rollback, status/log/events/drift, suspend/resume/windows and notify/daemon load the index,
    git, Nickel and the pipeline only when they do the work themselves: asking a running daemon over its
    socket (and `stratum notify`, which git hooks call on every push) stays cheap."""
    engines = {"duckdb", "pygit2", "nickel", "numpy", "cedarpy", "daemon.run.pipeline", "daemon.run.runtime",
               "daemon.index.store", "prometheus_client",
               # the control socket's server side: asyncio and the descriptor budget (with structlog) were
               # half of `stratum status`'s start-up while only the client is needed
               "asyncio", "daemon.service.control_socket", "structlog"}
    assert _imported_after(f"import {module}") & engines == set()


def test_completing_a_verb_name_imports_no_verb() -> None:
    """TAB after `stratum ` (bash completion protocol) lists the verbs with their summaries and imports none
    of their modules, so completion stays as quick as `--help`."""
    code = ("import os, sys\n"
            "os.environ.update({'_STRATUM_COMPLETE': 'bash_complete', 'COMP_WORDS': 'stratum st', 'COMP_CWORD': '1'})\n"
            "from daemon.cli.main import cli\n"
            "try:\n    cli.main([], prog_name='stratum', complete_var='_STRATUM_COMPLETE')\n"
            "except SystemExit:\n    pass\n"
            "print()\nimport json; print(json.dumps(sorted(m for m in sys.modules if m.startswith('daemon.cli.')"
            " and m not in ('daemon.cli.main', 'daemon.cli.errors'))))")   # errors: the group's handler, click only
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == []
    offered = [ln.split(",")[1] for ln in lines[:-1] if ln.startswith("plain,")]
    assert offered == ["status"]


def test_the_engine_and_the_daemon_load_structlog_without_rich() -> None:
    """Modules that log import structlog through daemon.log, whatever imports first: before, the descriptors
    module (imported by the control-socket client, hence by `stratum apply`) imported structlog directly,
    with rich, pygments and attrs behind it (~0.1 s of every apply, ~8 MB of the daemon)."""
    code = ("import daemon.service.control_socket, daemon.control.host_controls, daemon.run.runtime, daemon.cli.run\n"
            "import daemon.service.daemon\n"
            "from reconcilers.registry import REGISTRY, factory\n"
            "for name in REGISTRY:\n    factory(name)")
    probe = (f"import sys\n{code}\n"
             "import json; print(json.dumps([m for m in ('rich', 'pygments') if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_a_cli_apply_without_webhooks_loads_no_http_framework(tmp_path: Path) -> None:
    """What `stratum apply` loads to judge windows and admission (host_controls) and run (the runtime) brings
    no HTTP framework when no webhook receiver is declared: starlette came in through the webhook module."""
    code = ("import daemon.cli.run, daemon.run.runtime\n"
            "from daemon.control.host_controls import host_controls\n"
            "from daemon.settings import load_settings\n"
            f"controls = host_controls(load_settings({{'data_dir': {str(tmp_path)!r}}}))\n"
            "assert controls.receivers == {}")
    probe = (f"import sys\n{code}\n"
             "import json; print(json.dumps([m for m in ('starlette', 'uvicorn', 'daemon.git.webhook') "
             "if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def _validate_template(tmp_path: Path, argv: tuple[str, ...] = ("validate",)) -> str:
    """Code that runs `argv` (validate) on a fresh `stratum init` repository in the probe's process."""
    repo = tmp_path / "ops"
    subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", "init", str(repo)],
                   check=True, capture_output=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    return ("import os, sys\n"
            f"os.chdir({str(repo)!r})\n"
            "from daemon.cli.main import main\n"
            f"try:\n    main.__globals__['cli'].main({list(argv)!r}, prog_name='stratum', standalone_mode=False)\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n")


def test_plan_without_a_daemon_loads_no_metrics_library(tmp_path: Path) -> None:
    """`stratum plan` with no daemon builds the pipeline and plans, but records no run: the run metrics
    (prometheus_client, ~0.1 s) are made when a run records them, not with the pipeline."""
    code = _validate_template(tmp_path, ("plan", "--data-dir", str(tmp_path / "data")))
    imported = _imported_after(code, ("daemon.run.pipeline", "prometheus_client", "daemon.service.metrics"))
    assert imported == {"daemon.run.pipeline"}


def test_validate_loads_no_library_only_other_work_needs(tmp_path: Path) -> None:
    """Validating the template (forms with locales, knowledge with an embedding setting) parses Fluent bundles
    and checks settings, but neither formats messages (fluent.runtime, babel: ~0.1 s) nor embeds over HTTP
    (urllib.request, http.client, email): those load where they are used."""
    # ... nor loads the PostgreSQL driver (~0.5 s) or the vault engines' apply code for the template's
    # vault/database declaration: validate reads declarations, it connects to nothing.
    # ... nor loads an engine's handler for the declared PKI and database mounts: declarations are checked as
    # data, the engines load when a change is applied. ... nor cryptography.x509 (~40 ms, with the PKI's
    # renewal code): the template's infra/tls.ncl has certificate references, which validate locates through
    # the PKI, but nothing is issued or checked for renewal.
    only_elsewhere = ("fluent.runtime", "babel", "urllib.request", "http.client", "email.parser", "psycopg",
                      "reconcilers.vault.declared_apply", "reconcilers.vault.pki.api",
                      "reconcilers.vault.database.api", "cryptography.x509", "reconcilers.vault.pki.renewal",
                      # ... nor structlog and its asyncio (~40 ms): validate logs nothing (daemon.log and the
                      # reconcilers' loggers import it when something is logged)
                      "structlog", "asyncio")
    imported = _imported_after(_validate_template(tmp_path), ("reconcilers.forms.loader", *only_elsewhere))
    assert "reconcilers.forms.loader" in imported                # it did validate the forms
    assert imported & set(only_elsewhere) == set()


def test_validate_opens_no_index(tmp_path: Path) -> None:
    """`stratum validate` runs steps 1-4 of a run, which record nothing: it neither imports DuckDB nor the
    metrics library (a pre-commit hook pays for every import on every commit)."""
    repo = tmp_path / "ops"
    subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", "init", str(repo)],
                   check=True, capture_output=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    code = ("import os, sys\n"
            f"os.chdir({str(repo)!r})\n"
            "from daemon.cli.main import main\n"
            "try:\n    main.__globals__['cli'].main(['validate'], prog_name='stratum', standalone_mode=False)\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n")
    imported = _imported_after(code)
    assert "reconcilers.infra.reconciler" in imported          # it did validate
    assert {"duckdb", "daemon.index.store", "prometheus_client"} & imported == set()


def test_a_cli_apply_records_its_run_but_loads_no_metrics_library(tmp_path: Path) -> None:
    """`stratum apply` without a daemon ends after its run and serves no /metrics: the run is recorded in the
    index (and `stratum log` shows it), but prometheus_client (~0.1 s of start-up) is never imported."""
    data = tmp_path / "data"
    code = _validate_template(tmp_path, ("apply", "--data-dir", str(data), "--root", str(tmp_path / "root")))
    imported = _imported_after(code, ("daemon.run.pipeline", "prometheus_client", "daemon.service.metrics"))
    assert imported == {"daemon.run.pipeline"}
    log = subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", "log", "--data-dir",
                          str(data)], cwd=tmp_path / "ops", capture_output=True, text=True, timeout=120, check=True)
    assert "succeeded" in log.stdout, log.stdout + log.stderr


def test_applying_a_repo_without_policies_or_certificates_loads_neither_engine(tmp_path: Path) -> None:
    """`stratum apply` of a repository with infra files only (no policies/, no agents' policies, no certificate
    references, no tasks, no [[windows]]) applies them without importing cedarpy (~50 ms), the certificate
    issuer with cryptography.x509 (~40 ms, loaded after every run to prune renewals when none was ever issued),
    jinja2 (the agents' prompt sandbox), croniter (cron triggers, sync windows), the forms' model, or
    `cryptography` at all (~45 ms, ~10 MB resident for the daemon: only secret manifests, the vault service and
    its engines use it)."""
    from tests.fixtures import WorkRepo

    repo = WorkRepo(tmp_path / "ops")
    repo.commit({"infra/a.ncl": "{ resources = { a = { kind = 'file, path = \"a.conf\", content = \"x\\n\", "
                                "mode = \"0644\" } } }\n"})
    root = tmp_path / "root"
    code = ("import os\n"
            f"os.chdir({str(repo.path)!r})\n"
            "from daemon.cli.main import main\n"
            f"argv = ['apply', '--data-dir', {str(tmp_path / 'data')!r}, '--root', {str(root)!r}]\n"
            "try:\n    main.__globals__['cli'].main(argv, prog_name='stratum', standalone_mode=False)\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n")
    imported = _imported_after(code, ("daemon.run.pipeline", "cedarpy", "reconcilers.vault.pki.certrefs",
                                      "cryptography", "jinja2", "croniter", "reconcilers.forms.model"))
    assert imported == {"daemon.run.pipeline"}
    assert (root / "a.conf").read_text() == "x\n"


def test_loggers_that_import_structlog_late_still_log_through_the_configured_one() -> None:
    """daemon.log's structlog and the reconcilers' lazy loggers import structlog on first use; what they log
    still goes through the configuration made before (format, stream, level)."""
    code = ("import io, sys\n"
            "import daemon.log as log\n"
            "from reconcilers.lazylog import lazy_logger\n"
            "first = 'structlog' in sys.modules\n"
            "out = io.StringIO()\n"
            "log.configure('json', out)\n"
            "lazy_logger('stratum.agents').warning('agents.late', revision='abc')\n"
            "log.get().info('kernel.late', n=1)\n"
            "from daemon.log import structlog\n"
            "import json; print(json.dumps([first, out.getvalue().splitlines(), structlog.__name__]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    first, lines, name = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first is False and name == "structlog"
    events = [json.loads(line) for line in lines]
    assert [(e["event"], e["level"]) for e in events] == [("agents.late", "warning"), ("kernel.late", "info")]
    assert events[0]["revision"] == "abc"


def _collections_during(code: str) -> tuple[int, bool]:
    """(automatic collections counted while `code` ran main(), whether the collector was on at exit)."""
    probe = ("import gc, os, sys\n"
             "seen = []\n"
             "gc.callbacks.append(lambda phase, info: seen.append(1) if phase == 'start' else None)\n"
             "real_exit = os._exit\n"
             "def report(code=0):\n"
             "    print('GC', len(seen), gc.isenabled(), flush=True)\n"
             "    real_exit(code)\n"
             "os._exit = report\n"
             "import atexit\natexit.register(report)\n"
             f"{code}\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("GC "))
    _, count, enabled = line.split()
    return int(count), enabled == "True"


def test_validate_and_plan_run_without_automatic_collections(tmp_path: Path) -> None:
    """`stratum validate` and `stratum plan` (processes that end within seconds) run with the collector off:
    before, ~100 passes over the imported modules' objects (~0.1 s) freed nothing. Another verb (`log`) runs
    with it on."""
    repo = tmp_path / "ops"
    subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", "init", str(repo)],
                   check=True, capture_output=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    run = (f"os.chdir({str(repo)!r})\n"
           "sys.argv = ['stratum', *{argv!r}]\n"
           "from daemon.cli.main import main\n"
           "seen.clear()\n"                     # what importing the entry point itself met does not count
           "main()")
    data = str(tmp_path / "data")
    assert _collections_during(run.format(argv=["validate"])) == (0, False)
    assert _collections_during(run.format(argv=["plan", "--data-dir", data])) == (0, False)
    assert _collections_during(run.format(argv=["log", "--data-dir", data]))[1] is True


@pytest.mark.parametrize("verb", ["validate", "plan", "apply"])
def test_validate_plan_and_apply_start_the_template_worker_before_the_pipeline_loads(tmp_path: Path,
                                                                                    verb: str) -> None:
    """The template repository has templates/: `stratum validate`, `plan` and `apply` start the infra plugin's
    template worker (declared as `Ahead`) before importing the pipeline, and the render uses that very worker."""
    data = ("--data-dir", str(tmp_path / "data"))
    argv = {"validate": ("validate",), "plan": ("plan", *data),
            "apply": ("apply", *data, "--root", str(tmp_path / "root"))}[verb]
    code = _validate_template(tmp_path, argv)
    probe = ("import sys\n"
             "import reconcilers.workers as w\n"
             "events = []\n"
             "real_spare, real_start = w.start_spare, w.start_worker\n"
             "def spare(argv, env):\n"
             "    events.append(('spare', argv[2], 'daemon.run.pipeline' in sys.modules))\n"
             "    real_spare(argv, env)\n"
             "def start(argv, env):\n"
             "    events.append(('start', argv[2], w._key(argv, env) in w._spares))\n"
             "    return real_start(argv, env)\n"
             "w.start_spare = spare\n"
             "import daemon.cli.ahead, reconcilers.infra.templates\n"
             "daemon.cli.ahead.start_spare = spare\n"
             "reconcilers.infra.templates.start_worker = start\n"
             f"{code}\n"
             "import json; print(json.dumps(events))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    events = json.loads(proc.stdout.strip().splitlines()[-1])
    worker = "reconcilers.infra.template_worker"
    assert events == [["spare", worker, False], ["start", worker, True]]


def test_plan_without_a_daemon_loads_no_structlog(tmp_path: Path) -> None:
    """`stratum plan` quiets the pipeline's logs, but sets structlog up only when something imports it: a plan
    that logs nothing loads neither structlog nor its asyncio (~50 ms)."""
    code = _validate_template(tmp_path, ("plan", "--data-dir", str(tmp_path / "data")))
    imported = _imported_after(code, ("daemon.run.pipeline", "structlog", "asyncio", "rich"))
    assert imported == {"daemon.run.pipeline"}


def test_logs_quieted_before_structlog_loads_still_obey_that_setup() -> None:
    """Set up for warnings and up on stderr before structlog is imported: a reconciler's logger importing it
    directly later logs warnings there and drops info lines; rich stays out, and nothing goes to stdout."""
    code = ("import io, logging, sys, contextlib\n"
            "import daemon.log as log\n"
            "err, out = io.StringIO(), io.StringIO()\n"
            "log.configure_when_imported('console', err, logging.WARNING)\n"
            "before = 'structlog' in sys.modules\n"
            "from reconcilers.lazylog import lazy_logger\n"
            "with contextlib.redirect_stdout(out):\n"
            "    lazy_logger('stratum.knowledge').info('quiet.info')\n"
            "    lazy_logger('stratum.knowledge').warning('loud.warning', n=1)\n"
            "    log.get().info('kernel.info')\n"
            "import json\n"
            "print(json.dumps([before, 'rich' in sys.modules, err.getvalue(), out.getvalue()]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    before, rich, err, out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert before is False and rich is False
    assert "loud.warning" in err and "quiet.info" not in err and "kernel.info" not in err
    assert out == ""


def test_validate_imports_the_declared_libraries_on_a_thread_during_the_load(tmp_path: Path) -> None:
    """The template holds policies/, agents/, tasks/ and forms/: `stratum validate` imports cedarpy, jinja2,
    croniter and fluent.syntax (declared by the kernel and the plugins as Preload) on its "preload" thread
    while the load waits for Nickel, and that thread is over when the verb returns (the fast exit needs it)."""
    from daemon.cli.ahead import preload_modules

    code = _validate_template(tmp_path)
    repo = tmp_path / "ops"
    wanted = ["cedarpy", "jinja2", "croniter", "fluent.syntax"]
    assert preload_modules(str(repo)) == [m for m in wanted if m not in sys.modules]
    assert preload_modules(str(tmp_path)) == []                       # no such folders: nothing to import
    probe = ("import sys, threading\n"
             "importers = {}\n"
             "class Spy:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             f"        if name in {wanted!r}:\n"
             "            importers.setdefault(name, threading.current_thread().name)\n"
             "        return None\n"
             "sys.meta_path.insert(0, Spy())\n"
             f"{code}\n"
             "import json; print(json.dumps([importers, threading.active_count()]))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    importers, threads = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(importers) == sorted(wanted)
    assert "preload" in importers.values() and set(importers.values()) <= {"preload", "MainThread"}
    assert threads == 1
