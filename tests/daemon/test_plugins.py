"""Reconcilers are plugins (reconcilers/plugin.py): a third-party package that declares an entry point in the
group `stratum.reconcilers` is run by the daemon and offers its verbs in the CLI, with no change to Stratum.

The package is built and installed for real: a temporary venv (`--system-site-packages`, with this checkout's
environment on a .pth), `pip install --no-deps --no-build-isolation --no-index` of a package written to a temp
dir, then a real `stratum daemon` of that venv applies a commit through the plugin's reconciler."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from daemon.cli.main import all_verbs
from reconcilers.plugin import GROUP, discover
from tests.fixtures import WorkRepo
from tests.proc import DaemonProc, cli_env

PYPROJECT = f"""\
[build-system]
requires = ["setuptools", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "stratum-hello"
version = "0.0.1"

[project.entry-points."{GROUP}"]
hello = "stratum_hello.plugin:PLUGIN"

[tool.setuptools]
packages = ["stratum_hello"]
"""

PLUGIN = '''\
from reconcilers.plugin import Plugin, Verb

PLUGIN = Plugin(name="hello", reconciler="stratum_hello.reconciler:HelloReconciler",
                verbs=(Verb("hello", "stratum_hello.cli:hello", "Greet from a third-party plugin."),), order=50)
'''

RECONCILER = '''\
"""Copies hello/*.txt of the commit to <data_dir>/hello-out/: a reconciler written only against the contract."""
import json
from pathlib import Path

from reconcilers.base import Action, ApplyContext, Outcome, Reconciler, ReconcilerEnv, freeze


class HelloReconciler(Reconciler[dict, dict]):
    name = "hello"

    def __init__(self, env: ReconcilerEnv) -> None:
        self.out = Path(env.data_dir) / "hello-out"

    def load(self, snap):
        return {e.path.rsplit("/", 1)[-1]: snap.text(e) for e in snap.entries("hello/", (".txt",))}

    def observe(self, desired, inventory):
        return {p.name: p.read_text() for p in self.out.glob("*.txt")} if self.out.is_dir() else {}

    def plan(self, desired, observed, inventory):
        return [Action(id=f"hello:{n}", reconciler="hello", kind="create" if n not in observed else "update",
                       target=n, summary=f"write {n}", change=freeze({"text": t}))
                for n, t in sorted(desired.items()) if observed.get(n) != t]

    def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / action.target).write_text(json.loads(action.change)["text"])
        return Outcome(action.id, True, "written")
'''

CLI = '''\
import click


@click.command("hello")
@click.argument("who", default="world")
def hello(who: str) -> None:
    """Greet from a third-party plugin."""
    click.echo(f"hello, {who}")
'''


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv seeing this checkout's environment, with the third-party plugin package installed into it."""
    base = tmp_path_factory.mktemp("plugin")
    pkg = base / "stratum-hello"
    (pkg / "stratum_hello").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    (pkg / "stratum_hello" / "__init__.py").write_text("")
    (pkg / "stratum_hello" / "plugin.py").write_text(PLUGIN)
    (pkg / "stratum_hello" / "reconciler.py").write_text(RECONCILER)
    (pkg / "stratum_hello" / "cli.py").write_text(CLI)
    env_dir = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)],
                   check=True, timeout=120)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    # Our environment (Stratum installed editable, its dependencies, pip, setuptools) first on the new venv's path.
    ours = sysconfig.get_paths()["purelib"]
    (Path(site) / "stratum-test-env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    str(pkg)], check=True, capture_output=True, timeout=300)
    return python


def _stratum(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-c", "from daemon.cli.main import main; main()", *args],
                          capture_output=True, text=True, timeout=120, env=cli_env())


def test_the_cli_offers_the_plugins_verb(venv: Path) -> None:
    """`stratum --help` of the venv lists the plugin's verb with its summary, and the verb runs."""
    helped = _stratum(venv, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "hello" in helped.stdout and "Greet from a third-party plugin." in helped.stdout
    ran = _stratum(venv, "hello", "stratum")
    assert (ran.returncode, ran.stdout) == (0, "hello, stratum\n"), ran.stderr


def test_the_daemon_applies_a_commit_through_the_plugin(venv: Path, tmp_path: Path, repo: WorkRepo) -> None:
    """A real daemon of the venv finds the plugin by its entry point and applies a commit through it, next to
    Stratum's own reconcilers."""
    rev = repo.commit({"stratum.ncl": '{ name = "plugin-test" }\n', "hello/greeting.txt": "hi there\n"})
    data = tmp_path / "data"
    daemon = DaemonProc(str(repo.path), data, tmp_path / "root", python=str(venv))
    try:
        run = daemon.wait_run(rev, timeout=60)
        assert run["status"] == "succeeded", daemon.log()
        assert (data / "hello-out" / "greeting.txt").read_text() == "hi there\n"
        status = daemon.call("status")["status"]
        assert "hello" in status["reconcilers"]
    finally:
        assert daemon.stop() == 0


def test_this_environment_has_no_hello_plugin() -> None:
    """The plugin is installed only into the temporary venv: here the group holds Stratum's own (so the
    tests above see the plugin because of the entry point, not because the package leaked onto this path)."""
    assert [p.name for p in discover()[0]] == ["infra", "vault", "knowledge", "agents", "forms"]
    assert "hello" not in all_verbs()


@pytest.mark.parametrize("group", [GROUP, "console_scripts"])
def test_the_light_entry_point_scan_agrees_with_importlib_metadata(group: str) -> None:
    """reconcilers.plugin.entry_points reads what importlib.metadata would (without its import cost); extras
    (`module:attr [extra]`) are not part of the target."""
    from importlib.metadata import entry_points as library

    from reconcilers.plugin import entry_points

    expected = sorted((ep.name, ep.value.split("[")[0].strip()) for ep in library(group=group))
    assert sorted(entry_points(group)) == expected and expected
