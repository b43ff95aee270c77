"""Host controls: what a SIGHUP reload puts in force, and the settings errors it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.control.host_controls import host_controls, merge_reload
from daemon.errors import SettingsError
from daemon.settings import Settings, load_settings


def _settings(tmp_path: Path, toml: str, name: str = "stratumd.toml") -> Settings:
    config = tmp_path / name
    config.write_text(toml)
    return load_settings({"repo": str(tmp_path), "data_dir": tmp_path / "data"}, env={}, config=config)


def test_reload_applies_live_settings_and_keeps_restart_only_ones(tmp_path: Path) -> None:
    """Intervals and windows change at once; the branch and a reconciler section keep their running values and
    are reported as needing a restart."""
    old = _settings(tmp_path, 'branch = "main"\ninterval = 60\n[infra]\nx = 1\n', "old.toml")
    new = _settings(tmp_path, 'branch = "prod"\ninterval = 5\n[infra]\nx = 2\n'
                              '[[windows]]\nkind = "deny"\nschedule = "0 0 * * *"\nduration = "1h"\n', "new.toml")
    merged, stuck = merge_reload(old, new)
    assert (merged.branch, merged.interval) == ("main", 5.0)
    assert dict(merged.sections["infra"]) == {"x": 1}
    assert len(merged.sections["windows"]) == 1
    assert sorted(stuck) == ["[infra]", "branch"]
    # Admission is built from what runs: the branch Cedar sees is still the watched one.
    assert host_controls(merged).admission.branch == "main"


def test_a_broken_live_section_is_refused_naming_the_file(tmp_path: Path) -> None:
    """A window with a bad cron expression fails host_controls with the settings file named (the reload then
    keeps the old settings)."""
    bad = _settings(tmp_path, '[[windows]]\nkind = "deny"\nschedule = "61 * * * *"\nduration = "1h"\n')
    with pytest.raises(SettingsError) as err:
        host_controls(bad)
    assert str(tmp_path / "stratumd.toml") in err.value.render()
