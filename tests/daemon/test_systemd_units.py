"""systemd/stratumd.service and systemd/stratumd@.service: the keys the daemon relies on, the sandbox, and what
systemd's own tools say about them (`systemd-analyze verify`, `systemd-analyze security --offline`)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "systemd" / "stratumd.service"
TEMPLATE = ROOT / "systemd" / "stratumd@.service"
UNITS = [MAIN, TEMPLATE]
ANALYZE = shutil.which("systemd-analyze")
# Not a skip: .ci/run installs systemd; a missing systemd-analyze must fail rather than hide the checks.
needs_analyze = pytest.mark.usefixtures("_analyze")


@pytest.fixture
def _analyze() -> None:
    assert ANALYZE is not None, "systemd-analyze is missing: apt-get install systemd"

Unit = dict[str, dict[str, list[str]]]


def parse(path: Path) -> Unit:
    """Sections -> key -> every value in order (systemd keys repeat: SystemCallFilter=, an empty value resets)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not key=value"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, key: str, section: str = "Service") -> str:
    """The single value of `key`."""
    values = unit[section].get(key, [])
    assert len(values) == 1, f"{key}= should appear once in [{section}], found {values}"
    return values[0]


@pytest.fixture(params=UNITS, ids=lambda p: p.name)
def unit(request: pytest.FixtureRequest) -> Unit:
    """Each unit file, parsed."""
    return parse(request.param)


# -- the protocol the daemon speaks -------------------------------------------------------------------------
def test_the_daemon_is_type_notify_with_a_watchdog_and_a_reload(unit: Unit) -> None:
    """Type=notify from the main process only, a watchdog, SIGHUP for reload (systemd 252 has no notify-reload)."""
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert re.fullmatch(r"\d+(s|min)", one(unit, "WatchdogSec"))
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Restart") == "on-failure"


def test_a_stop_is_graceful_then_forced(unit: Unit) -> None:
    """SIGTERM to the daemon alone (its workers finish the action in flight), SIGKILL to all after the timeout."""
    assert one(unit, "KillMode") == "mixed"
    assert re.fullmatch(r"\d+(s|min)", one(unit, "TimeoutStopSec"))
    assert "KillSignal" not in unit["Service"]          # the default, SIGTERM, is what the daemon handles


def test_exec_start_uses_flags_the_daemon_accepts(unit: Unit) -> None:
    """The command line is the installed `stratumd` script with options `stratum daemon` really has."""
    from daemon.cli.daemon import daemon

    argv = shlex.split(one(unit, "ExecStart"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(argv[0]).name in scripts
    daemon.make_context("stratumd", argv[1:])           # raises on an unknown or malformed option
    assert argv[argv.index("--log-format") + 1] == "json"


def test_state_lives_in_the_state_directory(unit: Unit) -> None:
    """--data-dir is the StateDirectory= systemd creates (private), and the config is named per unit."""
    argv = shlex.split(one(unit, "ExecStart"))
    state = one(unit, "StateDirectory")
    assert argv[argv.index("--data-dir") + 1] == f"%S/{state}"
    assert one(unit, "StateDirectoryMode") == "0700"
    config = "/etc/stratum/%i.toml" if "%i" in state else "/etc/stratum/stratumd.toml"
    assert argv[argv.index("--config") + 1] == config


def test_the_template_is_the_main_unit_per_instance() -> None:
    """stratumd@.service differs from stratumd.service only in the per-instance names and paths."""
    main, template = parse(MAIN), parse(TEMPLATE)
    per_instance = {"Description", "ExecStart", "StateDirectory", "ReadWritePaths"}
    assert {k: v for k, v in main["Service"].items() if k not in per_instance} == \
        {k: v for k, v in template["Service"].items() if k not in per_instance}
    assert main["Install"] == template["Install"]
    assert one(template, "StateDirectory") == "stratum/%i"
    assert one(template, "ReadWritePaths") == "-/srv/stratum/%i"


# -- the sandbox ------------------------------------------------------------------------------------------
HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "PrivateMounts": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
    "ProtectProc": "invisible", "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes", "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "SystemCallErrorNumber": "EPERM",
}


def test_the_sandbox_is_complete(unit: Unit) -> None:
    """Every hardening key is set as documented; the OS is read-only but for the provider's root."""
    assert {k: one(unit, k) for k in HARDENING} == HARDENING
    assert unit["Service"]["SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert one(unit, "ReadWritePaths").startswith("-/srv/stratum")


def test_capabilities_are_only_what_the_local_provider_uses(unit: Unit) -> None:
    """CAP_DAC_OVERRIDE and CAP_FOWNER only, none ambient: the provider writes and chmods but never chowns."""
    assert set(one(unit, "CapabilityBoundingSet").split()) == {"CAP_DAC_OVERRIDE", "CAP_FOWNER"}
    assert "AmbientCapabilities" not in unit["Service"]
    # The day the provider changes owners, CAP_CHOWN must come back into both units.
    for source in (ROOT / "reconcilers" / "infra").glob("local*.py"):
        assert not re.search(r"\b(os\.|shutil\.)?(l|f)?chown\(", source.read_text()), source


# -- what systemd says ------------------------------------------------------------------------------------
def _installable_copy(unit_file: Path, tmp: Path) -> Path:
    """The unit with ExecStart's binary replaced by an executable that exists (verify checks that it does)."""
    binary = tmp / "stratumd"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    copy = tmp / unit_file.name
    copy.write_text(unit_file.read_text().replace("/usr/local/bin/stratumd", str(binary)))
    return copy


@needs_analyze
@pytest.mark.parametrize("unit_file", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_reports_nothing(unit_file: Path, tmp_path: Path) -> None:
    """`systemd-analyze verify` prints no warning (it exits 0 even on unknown keys, so the output must be empty)."""
    copy = _installable_copy(unit_file, tmp_path)
    proc = subprocess.run([str(ANALYZE), "verify", str(copy)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def _offline_security() -> bool:
    if ANALYZE is None:
        return False
    return "--offline" in subprocess.run([ANALYZE, "--help"], capture_output=True, text=True, check=False).stdout


@pytest.mark.parametrize("unit_file", UNITS, ids=lambda p: p.name)
def test_security_exposure_stays_low(unit_file: Path) -> None:
    """`systemd-analyze security --offline` rates both units 2.5 or better (1.9 on systemd 252: root, network)."""
    assert _offline_security(), "systemd-analyze security --offline needs systemd >= 250 (Debian 12 has 252)"
    proc = subprocess.run([str(ANALYZE), "security", "--offline=true", "--no-pager", str(unit_file)],
                          capture_output=True, text=True, timeout=60, check=False)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= 2.5, proc.stdout
