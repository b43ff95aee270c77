"""Opening a pull request (GitHub) or merge request (GitLab) for a form's branch, when the host configures one:

    [forms.forge]
    kind = "github"                      # or "gitlab"
    api = "https://api.github.com"       # GitLab: "https://gitlab.example.com/api/v4"
    repo = "octo/ops"                    # GitLab: the project id or "group/project"
    token_env = "STRATUM_FORGE_TOKEN"    # the variable holding the token (never in a file of the repo)

The branch must exist on the forge: a daemon that mirrors a remote pushes its branches there (the git writer
publishes them). A refusal is reported with the forge's message; the branch stays for a person to open the
request by hand.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconcilers.errors import SettingsError, TransientError

TIMEOUT_S = 30.0
MAX_REPLY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Forge:
    """Where and how to open review requests."""

    kind: str
    api: str
    repo: str
    token: str


def forge_from(settings: Mapping[str, Any]) -> Forge | None:
    """The `[forms.forge]` table, or None when the host configures no forge."""
    table = settings.get("forge")
    if not isinstance(table, Mapping):
        return None
    kind = str(table.get("kind", ""))
    if kind not in ("github", "gitlab") or not table.get("api") or not table.get("repo"):
        raise SettingsError("[forms.forge] needs kind (github or gitlab), api and repo",
                            where="stratumd.toml [forms.forge]")
    token_env = str(table.get("token_env") or "STRATUM_FORGE_TOKEN")
    token = os.environ.get(token_env, "")
    if not token:
        raise SettingsError(f"the forge token variable {token_env} is empty", where="stratumd.toml [forms.forge]",
                            hint=f"export {token_env}=<token with permission to open pull requests>")
    return Forge(kind, str(table["api"]).rstrip("/"), str(table["repo"]), token)


def open_review(forge: Forge, branch: str, base: str, title: str, body: str) -> str:
    """Open the request; its web address."""
    if forge.kind == "github":
        url = f"{forge.api}/repos/{forge.repo}/pulls"
        payload: dict[str, Any] = {"title": title, "head": branch, "base": base, "body": body}
        headers = {"Authorization": f"Bearer {forge.token}", "Accept": "application/vnd.github+json"}
        link = "html_url"
    else:
        url = f"{forge.api}/projects/{urllib.parse.quote(forge.repo, safe='')}/merge_requests"
        payload = {"title": title, "source_branch": branch, "target_branch": base, "description": body}
        headers = {"PRIVATE-TOKEN": forge.token}
        link = "web_url"
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            reply = json.loads(resp.read(MAX_REPLY))
    except urllib.error.HTTPError as err:
        detail = err.read(4096).decode("utf-8", "replace")
        raise TransientError(f"the forge refused the pull request ({err.code}): {detail[:300]}",
                             where=url.split("?")[0], hint=f"open it by hand from branch {branch}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise TransientError(f"the forge did not answer: {err}", where=url.split("?")[0],
                             hint=f"open it by hand from branch {branch}") from err
    return str(reply.get(link) or reply.get("url") or "")
