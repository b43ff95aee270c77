"""Host settings: stratumd.toml, then environment (STRATUM_*), then flags -> one frozen Settings.

This is the only module that reads the environment. Repo content never sets host settings: the branch to
watch, the local provider's root and the listeners are the host's decision.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from daemon.errors import SettingsError

# daemon.git.source's test for a remote URL (not imported: that module loads pygit2, and every CLI verb reads settings)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://|^[\w.-]+@[\w.-]+:", re.IGNORECASE)
IDENTITY_FILE = "repository"            # in a data directory: the identity of the repository it belongs to


def repo_identity(repo: str) -> tuple[str, str] | None:
    """(short name, identity) of a repository: its remote URL without credentials, or the absolute path of
    the repository containing `repo` (its work tree, or the bare repository itself). None when `repo` is a
    local path inside no git repository."""
    if _URL.match(repo):
        url = re.sub(r"(://)[^/@]+@", r"\1", repo).rstrip("/")
        return url.rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".git") or "repo", url
    start = Path(repo).expanduser().resolve()
    for path in (start, *start.parents):
        if (path / ".git").exists():
            return path.name or "repo", str(path)
        if (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir():
            top = path.parent if path.name == ".git" else path
            return top.name.removesuffix(".git") or "repo", str(top)
    return None


def keyed_name(name: str, identity: str) -> str:
    """`<name>-<hash>`: a directory name per repository (readable, and distinct for same-named repos)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:40] or "repo"
    return f"{safe}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


def default_data_dir(env: Mapping[str, str], repo: str | None = None) -> Path:
    """systemd's StateDirectory when set (one unit, one repository), else one directory per repository:
    $XDG_STATE_HOME/stratum/<repo name>-<hash of its path or URL> (~/.local/state when XDG_STATE_HOME is unset).

    Raises SettingsError when `repo` is inside no git repository: there is then no way to tell which data
    directory is meant, and guessing would show another repository's state."""
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = Path(env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local" / "state"))
    found = repo_identity(repo or ".")
    if found is None:
        raise SettingsError(f"{Path(repo or '.').expanduser().resolve()} is not inside a git repository, so "
                            "there is no data directory to use",
                            hint="cd into your ops repository, or pass --repo PATH|URL (or --data-dir DIR)")
    return base / "stratum" / keyed_name(*found)


def check_owner(data_dir: Path, repo: str, *, claim: bool = False) -> None:
    """Refuse a data directory recorded as another repository's; with `claim`, record `repo` as its owner
    when nothing is recorded yet (what the daemon and an apply do: they write the index)."""
    found = repo_identity(repo)
    if found is None:
        return
    record = data_dir / IDENTITY_FILE
    try:
        owner = record.read_text().strip()
    except FileNotFoundError:
        owner = ""
    except OSError as err:
        raise SettingsError(f"cannot read {record}: {err.strerror}",
                            hint="check the data directory's permissions and mount") from err
    if owner and owner != found[1]:
        raise SettingsError(f"the data directory {data_dir} belongs to the repository {owner}, not {found[1]}",
                            hint=f"pass --data-dir for this repository (by default each repository has its own), "
                                 f"or --repo {owner} to work with that one")
    if claim and not owner:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f"{IDENTITY_FILE}.{os.getpid()}")
        tmp.write_text(found[1] + "\n")
        tmp.replace(record)


def recorded_repo(data_dir: Path) -> str | None:
    """The repository a data directory belongs to, as recorded there: what its daemon last ran with (when that
    is an absolute path or a URL), else the owner an apply recorded (IDENTITY_FILE). None when neither is."""
    found = read_effective(data_dir) or {}
    repo = found.get("repo", "")
    if repo and (_URL.match(repo) or Path(repo).is_absolute()):
        return repo
    try:
        owner = (data_dir / IDENTITY_FILE).read_text().strip()
    except OSError:
        return None
    return owner or None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon and CLI need to know about this host."""

    repo: str = "."
    branch: str = "main"
    data_dir: Path = Path(".")
    root: Path | None = None                  # the local provider's root; default <data_dir>/root
    interval: float = 60.0                    # seconds between fetches of a remote
    drift_interval: float = 300.0             # seconds between drift checks (0: off)
    on_interrupted: str = "rollback"          # rollback | resume
    parallelism: int = 4
    http_listen: str = "127.0.0.1:0"          # host:port for /metrics (port 0: pick a free one)
    log_format: str = "auto"                  # auto | json | console
    nickel_timeout: float = 10.0
    nickel_memory_mb: int = 1024
    max_files: int = 50_000                   # files per revision (a repo's stratum.ncl may ask for fewer)
    max_wait: float = 600.0                   # seconds an action waits on what it needs before it fails
    notes: bool = True
    idle_release: float = 2.0                 # quiet seconds before an idle daemon releases workers, index (0: never)
    sections: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    config_path: Path | None = None           # the stratumd.toml these came from (for messages and reloads)

    @property
    def socket_path(self) -> Path:
        """The daemon's control socket."""
        return self.data_dir / "stratumd.sock"

    @property
    def index_path(self) -> Path:
        """The DuckDB index file."""
        return self.data_dir / "index.duckdb"

    @property
    def local_root(self) -> Path:
        """Where the local provider keeps its resources."""
        return self.root or self.data_dir / "root"

    def reconciler_settings(self) -> dict[str, Any]:
        """Host settings per reconciler section, with the infra root filled in."""
        out = {k: dict(v) for k, v in self.sections.items() if isinstance(v, Mapping)}
        out.setdefault("infra", {})["root"] = str(self.local_root)
        # What cloud resources are tagged with when the host names no [infra] owner: the repository (remote
        # URL or absolute path) and branch, never a path every host shares such as /var/lib/stratum.
        found = repo_identity(self.repo)
        out["infra"]["repo_identity"] = f"{found[1] if found else self.repo}#{self.branch}"
        return out


EFFECTIVE_FILE = "effective-settings.json"   # what the daemon on a data directory runs with (no secrets)
_EFFECTIVE = ("repo", "branch", "root", "config_path")


def effective(settings: Settings) -> dict[str, str]:
    """The settings a CLI verb must judge with to agree with the daemon: where it applies (the root), which
    branch, which settings file. Never the sections: they can hold webhook secrets."""
    return {"repo": settings.repo, "branch": settings.branch, "root": str(settings.local_root),
            "config_path": str(settings.config_path or "")}


def write_effective(settings: Settings) -> None:
    """Persist `effective(settings)` in the data directory (the daemon, at start and after a reload)."""
    path = settings.data_dir / EFFECTIVE_FILE
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(effective(settings), indent=2) + "\n")
    tmp.replace(path)


def read_effective(data_dir: Path) -> dict[str, str] | None:
    """What a daemon persisted on `data_dir`, or None (no daemon ever ran there, or an unreadable record)."""
    try:
        data = json.loads((data_dir / EFFECTIVE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {k: str(v) for k, v in data.items() if k in _EFFECTIVE}


_SCALARS = {f.name: f.type for f in fields(Settings) if f.name not in ("sections", "config_path")}
RESTART_ONLY = ("repo", "branch", "data_dir", "root", "http_listen", "parallelism", "nickel_timeout",
                "nickel_memory_mb", "log_format", "notes", "max_wait")  # what a SIGHUP reload cannot change in place


def _coerce(name: str, value: Any) -> Any:
    kind = _SCALARS[name]
    try:
        if "Path" in str(kind):
            return None if value in (None, "") else Path(str(value)).expanduser()
        if kind in ("float", float):
            return float(value)
        if kind in ("int", int):
            return int(value)
        if kind in ("bool", bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        return str(value)
    except (TypeError, ValueError) as err:
        raise SettingsError(f"setting {name}: {value!r} is not a valid {kind}") from err


def load_settings(flags: Mapping[str, Any], env: Mapping[str, str] | None = None,
                  config: Path | None = None) -> Settings:
    """Build Settings from (lowest first) defaults, the TOML file, STRATUM_* variables, then flags."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    data_dir = (flags.get("data_dir") or env.get("STRATUM_DATA_DIR")
                or default_data_dir(env, str(flags.get("repo") or env.get("STRATUM_REPO") or ".")))
    config = config or (Path(env["STRATUM_CONFIG"]) if env.get("STRATUM_CONFIG") else Path(data_dir) / "stratumd.toml")
    sections: dict[str, Any] = {}
    if config.exists():
        try:
            raw = tomllib.loads(config.read_text())
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as err:
            raise SettingsError(f"cannot read host settings: {err}", where=str(config),
                                hint="fix the TOML syntax") from err
        for key, value in raw.items():
            # Tables (`[webhooks.gh]`, `[signing]`) and arrays of tables (`[[windows]]`) are sections the
            # components that own them validate.
            if isinstance(value, dict) or (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
                sections[key] = value
            elif key in _SCALARS:
                values[key] = value
            else:
                raise SettingsError(f"unknown setting {key!r}", where=str(config),
                                    hint=f"known: {', '.join(sorted(_SCALARS))}")
    for name in _SCALARS:
        if f"STRATUM_{name.upper()}" in env:
            values[name] = env[f"STRATUM_{name.upper()}"]
    values.update({k: v for k, v in flags.items() if v is not None and k in _SCALARS})
    values["data_dir"] = data_dir
    settings = Settings(**{k: _coerce(k, v) for k, v in values.items()},
                        sections=MappingProxyType(sections), config_path=config)
    if settings.on_interrupted not in ("rollback", "resume"):
        raise SettingsError(f"on_interrupted must be rollback or resume, not {settings.on_interrupted!r}")
    if settings.parallelism < 1:
        raise SettingsError("parallelism must be at least 1")
    if settings.max_wait < 0:
        raise SettingsError(f"max_wait must be 0 or more seconds, not {settings.max_wait}",
                            where=str(config), hint="how long an action may wait on what it needs (default 600)")
    if settings.max_files < 1:
        raise SettingsError("max_files must be at least 1", hint="the most files a revision may hold")
    return replace(settings, data_dir=Path(settings.data_dir).expanduser().resolve())
