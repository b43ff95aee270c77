"""An installed, non-editable Stratum works: the wheel carries the Nickel library and the repo template, and
`stratum init` / `stratum validate` run from a fresh venv outside the checkout. `import nickel` from the repo
root is py-nickel, never our nickel/ folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(
    argv: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _clean_env(home: Path) -> dict[str, str]:
    """An environment that cannot reach the checkout: no PYTHONPATH, no STRATUM_* settings."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("STRATUM_")}
    return {**env, "HOME": str(home), "XDG_STATE_HOME": str(home / "state")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout's files (the checkout itself is left untouched)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp / "dist", src], tmp)
    assert built.returncode == 0, built.stderr[-3000:]
    [whl] = list((tmp / "dist").glob("stratumops-*.whl"))
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed non-editable. Its dependencies come from the test venv's
    site-packages through a .pth line (a plain path entry: the editable finder there is not activated)."""
    tmp = tmp_path_factory.mktemp("venv")
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            wheel,
        ],
        tmp,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    site = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip()
    )
    (site / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_the_wheel_carries_the_library_and_template_and_no_nickel_package(wheel: Path) -> None:
    """daemon/_nickel and daemon/_template hold the shipped data; no top-level `nickel` or `tests` package."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "daemon/_nickel/stratum.ncl",
        "daemon/_nickel/infra.ncl",
        "daemon/_template/stratum.ncl",
        "daemon/_template/infra/motd.ncl",
        "daemon/_template/templates/app-config.toml.j2",
        "daemon/_template/.pre-commit-config.yaml",
        "reconcilers/infra/diff.py",
    ):
        assert required in names, required
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"daemon", "reconcilers"}




def test_installed_copy_imports_from_the_venv_not_the_checkout(venv: Path, tmp_path: Path) -> None:
    """From outside the checkout, daemon, the Nickel library and the template resolve inside the venv."""
    probe = _run(
        [
            venv / "bin/python",
            "-c",
            "import daemon, nickel; from daemon.package_data import nickel_dir, template_dir; "
            "print(daemon.__file__); print(nickel_dir()); print(template_dir()); print(nickel.__file__)",
        ],
        tmp_path,
        _clean_env(tmp_path),
    )
    assert probe.returncode == 0, probe.stderr
    daemon_file, lib, template, nickel_file = probe.stdout.split()
    for path in (daemon_file, lib, template):
        assert path.startswith(str(venv)), path
        assert not path.startswith(str(ROOT))
    assert not nickel_file.startswith(str(ROOT / "nickel") + "/"), "the checkout's nickel/ shadows py-nickel"
    assert nickel_file.endswith("site-packages/nickel/__init__.py"), nickel_file


def test_installed_stratum_init_lays_down_the_template(venv: Path, tmp_path: Path) -> None:
    """`stratum init` from the installed copy creates the example repo with its files."""
    init = _run([venv / "bin" / "stratum", "init", "ops"], tmp_path, _clean_env(tmp_path))
    assert init.returncode == 0, init.stderr
    for rel in ("stratum.ncl", "infra/motd.ncl", "infra/app.ncl", "templates/app-config.toml.j2"):
        assert (tmp_path / "ops" / rel).is_file(), rel


def test_installed_stratum_validates(venv: Path, tmp_path: Path) -> None:
    """`stratum validate` from the installed copy passes on the example and fails with file:line on a bad
    file."""
    env = _clean_env(tmp_path)
    stratum = venv / "bin" / "stratum"
    assert _run([stratum, "init", "ops"], tmp_path, env).returncode == 0
    ok = _run([stratum, "validate", "--repo", "ops", "--output", "json"], tmp_path, env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert str(venv) in ok.stdout  # the library the installed copy evaluated with
    motd = tmp_path / "ops/infra/motd.ncl"
    motd.write_text(motd.read_text().replace("kind = 'file", "kind = 'files"))
    subprocess.run(["git", "add", "-A"], cwd=tmp_path / "ops", check=True)
    bad = _run([stratum, "validate", "--repo", "ops"], tmp_path, env)
    assert bad.returncode == 1
    assert "infra/motd.ncl:" in bad.stderr


def test_import_nickel_from_the_repo_root_is_py_nickel() -> None:
    """With the repo root first on sys.path, `import nickel` still finds py-nickel (nickel/ has no
    __init__.py and must never get one)."""
    assert not (ROOT / "nickel" / "__init__.py").exists()
    probe = _run(
        [
            sys.executable,
            "-c",
            "import sys, nickel; print(sys.path[0] == ''); print(nickel.__file__); "
            "print(nickel.run('{ a = 1 + 1 }', []))",
        ],
        ROOT,
    )
    assert probe.returncode == 0, probe.stderr
    first_is_cwd, location, *value = probe.stdout.splitlines()
    assert first_is_cwd == "True"
    assert location and not location.startswith(str(ROOT / "nickel"))
    assert "".join(value).replace(" ", "") == '{"a":2}'
