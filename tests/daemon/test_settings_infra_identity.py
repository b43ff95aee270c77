"""The infra section the kernel hands reconcilers names the repository and branch (`repo_identity`), so cloud
resources of two repositories never share a derived owner tag, whatever the data directory."""

from __future__ import annotations

from pathlib import Path

from daemon.settings import Settings


def test_reconciler_settings_carry_the_repository_identity(tmp_path: Path) -> None:
    """Two repositories with the same data directory get different identities; the branch is part of it."""
    a = Settings(repo="https://example.com/a/ops.git", data_dir=tmp_path, branch="main").reconciler_settings()
    b = Settings(repo="https://example.com/b/ops.git", data_dir=tmp_path, branch="main").reconciler_settings()
    c = Settings(repo="https://example.com/a/ops.git", data_dir=tmp_path, branch="prod").reconciler_settings()
    assert a["infra"]["repo_identity"] == "https://example.com/a/ops.git#main"
    assert len({a["infra"]["repo_identity"], b["infra"]["repo_identity"], c["infra"]["repo_identity"]}) == 3
