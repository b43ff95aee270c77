"""`stratum kb` (reconcilers/knowledge/cli.py) through click's runner against real temp repos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon.cli.main import cli
from tests.fixtures import WorkRepo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def repo(tmp_path: Path) -> WorkRepo:
    r = WorkRepo(tmp_path / "ops")
    r.commit({str(p.relative_to(ROOT / "repo_template")): p.read_text()
              for p in (ROOT / "repo_template" / "knowledge").rglob("*.md")}, "knowledge")
    return r


def run(repo: WorkRepo, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["kb", "--repo", str(repo.path), "--data-dir", str(tmp_path / "data"), *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
def test_search_json_finds_the_template_runbook_for_a_paraphrase(repo: WorkRepo, tmp_path: Path) -> None:
    code, out, _ = run(repo, tmp_path, "search", "web app is unreachable, gateway error", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["mode"] == "hybrid" and data["results"][0]["title"].startswith("Runbook: hello service")
    code, out, _ = run(repo, tmp_path, "search", "permission", "--type", "guideline", "--output", "json")
    assert [r["title"] for r in json.loads(out)["results"]] == ["Review every permission change"]


def test_list_show_and_graph(repo: WorkRepo, tmp_path: Path) -> None:
    code, out, _ = run(repo, tmp_path, "list", "--type", "decision", "-o", "json")
    assert code == 0 and len(json.loads(out)) == 2
    code, out, _ = run(repo, tmp_path, "show", "ADR 0002: systemd restarts the app on failure")
    assert code == 0 and "implements -> infra:app-service" in out
    code, out, _ = run(repo, tmp_path, "graph", "5b0e7c3a-2f4d-4f6e-9a8b-1c2d3e4f5a11", "--format", "dot")
    assert code == 0 and out.startswith("digraph") and '"infra:app-config"' in out
    code, out, _ = run(repo, tmp_path, "graph", "5b0e7c3a-2f4d-4f6e-9a8b-1c2d3e4f5a11", "--depth", "1")
    assert "<- depends_on ADR 0002" in out
    code, out, _ = run(repo, tmp_path, "guidelines", "-o", "json")
    assert json.loads(out)["guidelines"][0]["source"] == "project"


def test_show_of_an_unknown_id_is_a_stratum_error(repo: WorkRepo, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["kb", "--repo", str(repo.path), "--data-dir", str(tmp_path / "d"), "show",
                                      "nope"])
    assert result.exit_code == 1 and "error: " in result.stderr and "no knowledge node 'nope'" in result.stderr


def test_new_writes_a_valid_node_that_lint_accepts(repo: WorkRepo, tmp_path: Path) -> None:
    code, out, _ = run(repo, tmp_path, "new", "decision", "Use PostgreSQL for state", "-o", "json")
    assert code == 0
    created = json.loads(out)
    text = Path(created["path"]).read_text()
    assert f"id: {created['id']}" in text and "status: proposed" in text
    result = CliRunner().invoke(cli, ["kb", "lint", "--repo", str(repo.path), created["path"]])
    assert result.exit_code == 0, result.output


def test_lint_fails_with_file_and_line(repo: WorkRepo, tmp_path: Path) -> None:
    bad = repo.path / "knowledge" / "notes" / "bad.md"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("---\nid: 5b0e7c3a-2f4d-4f6e-9a8b-1c2d3e4f5a01\ntype: note\ntitle: Dup\n---\n[[Nowhere]]\n")
    result = CliRunner().invoke(cli, ["kb", "lint", "--repo", str(repo.path), str(bad)])
    assert result.exit_code != 0
    assert "knowledge/notes/bad.md:2: duplicate node id" in result.stderr
    assert "knowledge/notes/bad.md:6: link to nowhere" in result.stderr


def test_new_help_lists_every_node_type() -> None:
    """`kb new --help` names each type a user may pass, with what it is for."""
    from reconcilers.knowledge.node import TYPES

    result = CliRunner().invoke(cli, ["kb", "new", "--help"])
    assert result.exit_code == 0
    for ntype in TYPES:
        assert f"\n    {ntype} " in result.output, ntype


def test_kb_help_states_the_contracts_defaults() -> None:
    """The defaults `stratum kb --help` states are those of nickel/knowledge.ncl's Settings."""
    import nickel
    from daemon.package_data import nickel_dir

    defaults = json.loads(nickel.run('(import "knowledge.ncl").Settings & {}',  # type: ignore[attr-defined]
                                     [str(nickel_dir())]))
    text = CliRunner().invoke(cli, ["kb", "--help"]).output
    assert f'embedding.provider = "{defaults["embedding"]["provider"]}"' in text
    assert f"allow_dangling_links = {str(defaults['allow_dangling_links']).lower()}" in text
    assert f"commit_notes = {str(defaults['commit_notes']).lower()}" in text
    assert f'executions.path = "{defaults["executions"]["path"]}"' in text
    assert "guidelines.bases = []" in text and defaults["guidelines"]["bases"] == []


def test_graph_without_an_id_shows_the_whole_graph(repo: WorkRepo, tmp_path: Path) -> None:
    """Every node and every resolved link, as text, dot and JSON."""
    code, out, _ = run(repo, tmp_path, "graph")
    assert code == 0 and "6 nodes" in out and "ADR 0002: systemd restarts the app on failure  [decision]" in out
    assert "  implements -> infra:app-service" in out
    code, out, _ = run(repo, tmp_path, "graph", "--format", "dot")
    assert out.startswith("digraph") and '"infra:app-config"' in out
    code, out, _ = run(repo, tmp_path, "graph", "-o", "json")
    data = json.loads(out)
    assert len([n for n in data["nodes"] if n["type"] != "external"]) == 6
    assert any(e["rel"] == "implements" and e["target"] == "infra:app-service" for e in data["edges"])


def test_lint_flags_a_link_to_an_infra_resource_nobody_declares(tmp_path: Path) -> None:
    """`[[infra:ghost]]` is a located problem when infra/ declares no `ghost`; `[[infra:motd]]` is fine."""
    repo = WorkRepo(tmp_path / "ops")
    repo.commit({str(p.relative_to(ROOT / "repo_template")): p.read_bytes().decode()
                 for p in (ROOT / "repo_template").rglob("*") if p.is_file() and ".stratum-data" not in p.name},
                "template")
    note = repo.path / "knowledge" / "notes" / "ghost.md"
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_text("---\nid: 9b0e7c3a-2f4d-4f6e-9a8b-1c2d3e4f5a99\ntype: note\ntitle: Ghost\n---\n"
                    "Restart [[infra:motd]] first.\nThen look at [[infra:ghost]].\n")
    result = CliRunner().invoke(cli, ["kb", "lint", "--repo", str(repo.path), str(note)],
                                env={"STRATUM_DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code != 0
    assert "knowledge/notes/ghost.md:7: [[infra:ghost]] names an infra resource that no infra/*.ncl declares" \
        in result.stderr
    assert "infra:motd" not in result.stderr.replace("[[infra:ghost]]", "")
