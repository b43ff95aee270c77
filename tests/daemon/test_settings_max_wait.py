"""The waiting budget (how long an action may wait on what it needs: a sealed vault, a role not yet declared) is a
host setting, `max_wait` in stratumd.toml: it reaches the pipeline's retry policy; a negative value is refused
with the file named. Before, it was fixed at 600 s in code."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.errors import SettingsError
from daemon.run.runtime import build
from daemon.settings import load_settings
from tests.fixtures import WorkRepo


def test_max_wait_from_the_host_settings_reaches_the_pipeline(tmp_path: Path, repo: WorkRepo) -> None:
    """`max_wait = 30` in stratumd.toml: the runtime's pipeline waits at most 30 s; unset: 600 s."""
    data = tmp_path / "data"
    data.mkdir()
    default = load_settings({"repo": str(repo.path), "data_dir": str(data)})
    assert default.max_wait == 600.0
    (data / "stratumd.toml").write_text("max_wait = 30\n")
    settings = load_settings({"repo": str(repo.path), "data_dir": str(data)})
    rt = build(settings, ephemeral=True)
    try:
        assert rt.pipeline.retry.max_wait == 30.0
    finally:
        rt.close()


def test_a_negative_max_wait_is_refused_with_the_file(tmp_path: Path) -> None:
    (tmp_path / "stratumd.toml").write_text("max_wait = -1\n")
    with pytest.raises(SettingsError) as err:
        load_settings({"repo": str(tmp_path), "data_dir": str(tmp_path)})
    assert "max_wait" in err.value.what and err.value.where == str(tmp_path / "stratumd.toml")
