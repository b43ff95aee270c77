"""`stratum validate` on hostile content ends with a located error and exit 1, never hangs or balloons
(issue 16 item 1: validate hung or reached 6 GB on a template)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import WorkRepo, infra_file
from tests.proc import cli_env


@pytest.mark.parametrize("template, where", [
    ("x\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n", "templates/t.j2:2"),
    ("{{ 'x' * 2000000000 }}\n", "templates/t.j2:1"),
])
def test_validate_reports_a_runaway_template_and_exits(tmp_path: Path, template: str, where: str) -> None:
    """The CLI's validate renders in the bounded worker: exit 1 naming template:line, within the timeout."""
    work = WorkRepo(tmp_path / "repo")
    work.commit({"templates/t.j2": template,
                 "infra/a.ncl": infra_file('    t = { kind = \'file, path = "t", template = "templates/t.j2" },')})
    proc = subprocess.run(
        [sys.executable, "-c", "from daemon.cli.main import main; main()", "validate", "--rev", "HEAD",
         "--repo", str(work.path), "--data-dir", str(tmp_path / "data")],
        env=cli_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert where in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
