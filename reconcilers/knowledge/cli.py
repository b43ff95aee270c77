"""`stratum kb`: create, show, search, list, graph, lint the knowledge nodes; serve them over MCP (stdio).

The knowledge plugin's verbs (reconcilers/knowledge/plugin.py). They reach the repository and the index through
the kernel's VerbHost in click's root `ctx.obj` (reconcilers/ports.py), so this package never imports the daemon;
errors are rendered by the `stratum` group's one error handler.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from reconcilers.base import Problem
from reconcilers.errors import InputError
from reconcilers.knowledge.node import TYPES
from reconcilers.ports import VerbHost
from reconcilers.verbs import verb_host

F = TypeVar("F", bound=Callable[..., Any])


def _common(fn: F) -> F:
    """--repo/--data-dir/--branch on every verb (they may also be given to the group)."""
    fn = click.option("--branch", default=None, help="Branch to read (default: the checked-out one).")(fn)
    fn = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                      help="Where the index lives (default: $STRATUM_DATA_DIR, else the daemon's default "
                           "data directory).")(fn)
    fn = click.option("--repo", default=None, help="Ops repo path or URL (default: the current directory).")(fn)
    return fn


def _output(fn: F) -> F:
    return click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
                        help="Output format.")(fn)


def _host(ctx: click.Context) -> VerbHost:
    return verb_host("kb")


def _kb(ctx: click.Context, repo: str | None, data_dir: Path | None, branch: str | None) -> Any:
    from reconcilers.knowledge.knowledge_base import KnowledgeBase

    obj = ctx.find_object(dict) or {}
    options = {"repo": repo or obj.get("repo") or ".", "data_dir": data_dir or obj.get("data_dir"),
               "branch": branch or obj.get("branch")}
    # The index closes when the verb ends; the embedding worker stops first (closers run last-in, first-out).
    base = KnowledgeBase(ctx.with_resource(_host(ctx).workspace(options)))
    ctx.call_on_close(base.close)
    return base


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _warn(text: str) -> None:
    if text:
        click.echo(f"warning: {text}", err=True)


@click.group("kb")
@click.option("--repo", default=None, help="Ops repo path or URL (default: the current directory).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Where the index lives.")
@click.option("--branch", default=None, help="Branch to read (default: the checked-out one).")
@click.pass_context
def kb(ctx: click.Context, repo: str | None, data_dir: Path | None, branch: str | None) -> None:
    """Operational knowledge: runbooks, ADRs, postmortems and guidelines in knowledge/**/*.md.

    \b
    Repository settings (stratum.ncl `knowledge`, contract nickel/knowledge.ncl), with their defaults:
      embedding.provider = "fastembed"   the shipped model, run locally; "none" for keywords only,
                                         or a provider the host declares by name (below)
      allow_dangling_links = false       a link to a node not committed yet is an error
      commit_notes = false               `kb new` only writes the file (--commit to commit it)
      executions.path = "executions"     where each run's execution node lives
      executions.branch (unset)          also commit execution nodes to this branch
      guidelines.bases = []              organisation guideline sources (a path or git repo)
    \b
    Host settings (stratumd.toml), with their defaults:
      [embedding.providers.<name>]       kind = "openai"|"ollama", url, model, api_key_env
      [knowledge] mcp_writes = false     MCP add_note/record_decision (commits to stratum/mcp/* branches)
      [knowledge] worker_idle_s = 30     the model's worker process exits after this idle time
      [knowledge] embed_in_background = true
    """
    ctx.ensure_object(dict)
    ctx.obj.update({"repo": repo, "data_dir": data_dir, "branch": branch})


NEW_HELP = """Write a new TYPE node titled TITLE with a fresh UUID into knowledge/<type dir>/.

\b
TYPE is one of:
  note        a runbook, how-to or anything else (knowledge/notes/)
  decision    an architecture decision record: context, decision, consequences (knowledge/decisions/)
  guideline   a rule the team follows, with language, category, priority (knowledge/guidelines/)
  pattern     a reusable solution: problem, solution, forces (knowledge/patterns/)
  journal     a dated entry: postmortems, incident logs (knowledge/journal/)
  execution   a run's record (the daemon writes these; knowledge/executions/)
"""


@kb.command("new", help=NEW_HELP)
@click.argument("ntype", metavar="TYPE", type=click.Choice(TYPES))
@click.argument("title")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable), e.g. --tag runbook.")
@click.option("--commit/--no-commit", default=None, help="Commit the file (default: knowledge.commit_notes).")
@_common
@_output
@click.pass_context
def new(ctx: click.Context, ntype: str, title: str, tags: tuple[str, ...], commit: bool | None, repo: str | None,
        data_dir: Path | None, branch: str | None, output: str) -> None:
    base = _kb(ctx, repo, data_dir, branch)
    path, node_id = base.new_node(ntype, title, tags=tags, commit=commit)
    if output == "json":
        _emit_json({"id": node_id, "path": str(path)})
    else:
        click.echo(f"{path}\n  id: {node_id}\n  edit it, then commit it to make it searchable")


@kb.command("show")
@click.argument("ref", metavar="ID")
@_common
@_output
@click.pass_context
def show(ctx: click.Context, ref: str, repo: str | None, data_dir: Path | None, branch: str | None,
         output: str) -> None:
    """Show one node (by id, title or file stem) with its links and backlinks."""
    from reconcilers.knowledge.mcp_server import _node_dict

    data = _node_dict(_kb(ctx, repo, data_dir, branch), ref)
    if output == "json":
        _emit_json(data)
        return
    click.echo(f"{data['title']}  [{data['type']}, {data['status']}]\n  id: {data['id']}\n  path: {data['path']}")
    if data["tags"]:
        click.echo(f"  tags: {', '.join(data['tags'])}")
    for link in data["links"]:
        click.echo(f"  {link['rel']} -> {link['resolved'] or link['target'] + ' (dangling)'}")
    for back in data["backlinks"]:
        click.echo(f"  <- {back['rel']} {back['source']}")
    click.echo("\n" + data["body"].strip())


def _filters(types: tuple[str, ...], tags: tuple[str, ...], status: tuple[str, ...], project: str | None,
             since: str | None = None, until: str | None = None) -> Any:
    from reconcilers.knowledge.search import Filters

    return Filters(types=types, tags=tags, status=status, project=project or "", since=since or "",
                   until=until or "")


@kb.command("search")
@click.argument("query")
@click.option("--type", "types", multiple=True, type=click.Choice(TYPES), help="Only this type (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Only nodes with this tag (repeatable: all must match).")
@click.option("--status", multiple=True, help="Only this status (repeatable).")
@click.option("--project", default=None, help="Only this project.")
@click.option("--since", default=None, help="Modified on or after this date (YYYY-MM-DD).")
@click.option("--until", default=None, help="Modified on or before this date (YYYY-MM-DD).")
@click.option("--mode", type=click.Choice(["hybrid", "lexical", "vector"]), default="hybrid")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 200))
@click.option("--json", "as_json", is_flag=True, help="Same as --output json.")
@_common
@_output
@click.pass_context
def search(ctx: click.Context, query: str, types: tuple[str, ...], tags: tuple[str, ...], status: tuple[str, ...],
           project: str | None, since: str | None, until: str | None, mode: str, limit: int, as_json: bool,
           repo: str | None, data_dir: Path | None, branch: str | None, output: str) -> None:
    """Search nodes: BM25 keywords and semantic similarity, fused by rank."""
    base = _kb(ctx, repo, data_dir, branch)
    result = base.search(query, mode=mode, limit=limit, filters=_filters(types, tags, status, project, since, until))
    _warn(result.warning)
    if as_json or output == "json":
        _emit_json({"query": query, "mode": result.mode, "warning": result.warning,
                    "results": [h.as_dict() for h in result.hits]})
        return
    if not result.hits:
        click.echo("no matches")
    for i, h in enumerate(result.hits, 1):
        n = h.node
        click.echo(f"{i:2}. {n['title']}  [{n['type']}]  {n['path']}")
        click.echo(f"    id {n['id']}  score {h.score:.2f}  (keyword #{h.lexical_rank or '-'}, "
                   f"semantic #{h.vector_rank or '-'}, similarity {h.similarity:.2f})")


@kb.command("list")
@click.option("--type", "types", multiple=True, type=click.Choice(TYPES))
@click.option("--tag", "tags", multiple=True)
@click.option("--status", multiple=True)
@click.option("--project", default=None)
@_common
@_output
@click.pass_context
def list_(ctx: click.Context, types: tuple[str, ...], tags: tuple[str, ...], status: tuple[str, ...],
          project: str | None, repo: str | None, data_dir: Path | None, branch: str | None, output: str) -> None:
    """List nodes (optionally filtered)."""
    nodes = _kb(ctx, repo, data_dir, branch).nodes(_filters(types, tags, status, project))
    if output == "json":
        _emit_json([n.summary() for n in nodes])
        return
    for n in nodes:
        click.echo(f"{n.id}  {n.type:<9} {n.status:<10} {n.title}  ({n.path})")


@kb.command("graph")
@click.argument("ref", metavar="[ID]", required=False)
@click.option("--depth", default=2, show_default=True, type=click.IntRange(1, 5))
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "json"]), default="text")
@_common
@_output
@click.pass_context
def graph(ctx: click.Context, ref: str | None, depth: int, fmt: str, repo: str | None, data_dir: Path | None,
          branch: str | None, output: str) -> None:
    """The relations around node ID, or of the whole graph without ID: text, Graphviz dot, or JSON."""
    base = _kb(ctx, repo, data_dir, branch)
    g = base.graph()
    if ref is None:
        _whole_graph(g, "json" if output == "json" else fmt)
        return
    node = base.node(ref)
    if fmt == "json" or output == "json":
        _emit_json(base.related(node.id, depth))
    elif fmt == "dot":
        ids, edges = g.neighbourhood(node.id, depth)
        click.echo(g.dot(ids, edges))
    else:
        click.echo(g.text_tree(node.id, depth))


def _whole_graph(g: Any, fmt: str) -> None:
    edges = [e for e in g.edges if e.resolved]
    ids = list(dict.fromkeys([*sorted(g.nodes, key=lambda i: g.nodes[i].path), *(e.resolved for e in edges)]))
    if fmt == "dot":
        click.echo(g.dot(ids, edges))
    elif fmt == "json":
        _emit_json({"nodes": [g.nodes[i].summary() if i in g.nodes else {"id": i, "type": "external"} for i in ids],
                    "edges": [{"source": e.source, "rel": e.rel, "target": e.resolved, "line": e.line}
                              for e in edges]})
    else:
        for node in sorted(g.nodes.values(), key=lambda n: n.path):
            click.echo(f"{node.title}  [{node.type}]  {node.path}")
            for e in dict.fromkeys((e.rel, e.resolved or f"{e.target} (dangling)") for e in g.out.get(node.id, [])):
                click.echo(f"  {e[0]} -> {g.label(e[1]) if e[1] in g.nodes else e[1]}")
        click.echo(f"{len(g.nodes)} nodes, {len(edges)} links")


def _infra_ids(ctx: click.Context, root: Path) -> set[str] | None:
    """The ids (`infra:<id>`) the staged infra/ declares, or None when it cannot be evaluated (validate says
    why): what `[[infra:...]]` links must name."""
    from reconcilers.registry import REGISTRY, factory

    if "infra" not in REGISTRY:
        return None
    with _host(ctx).open("infra", {"repo": str(root)}) as env:
        if env.revisions is None:
            return None
        infra = factory("infra")(env)
        try:
            desired = infra.load(env.revisions.staged_snapshot())
            if infra.validate(desired):
                return None
            return {f"infra:{row[1]}" for row in infra.resource_rows(desired)}
        finally:
            infra.close()


@kb.command("lint")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_common
@_output
@click.pass_context
def lint(ctx: click.Context, files: tuple[Path, ...], repo: str | None, data_dir: Path | None,
         branch: str | None, output: str) -> None:
    """Check node files in the work tree (all of knowledge/, or FILES as pre-commit passes them).

    The whole work tree is loaded so links and duplicate ids are checked against every node; problems in
    files other than FILES are not reported.
    """
    from reconcilers.knowledge.contract import Contract
    from reconcilers.knowledge.loader import Loader, check

    root = Path(repo or (ctx.find_object(dict) or {}).get("repo") or ".").resolve()
    loader = Loader()
    parsed = loader.load_dir(root)
    wanted = {f.resolve().relative_to(root).as_posix() for f in files if f.suffix == ".md"}
    checked = check(parsed, Contract())
    problems = list(checked.problems)
    infra_links = [e for e in checked.graph.edges
                   if e.resolved.startswith("infra:") and (not wanted or e.path in wanted)]
    known = _infra_ids(ctx, root) if infra_links else set()
    if known is not None:
        problems += [Problem(f"[[{e.target}]] names an infra resource that no infra/*.ncl declares", e.path,
                             e.line, reconciler="knowledge",
                             hint="fix the id (`stratum plan` lists the resources) or declare the resource")
                     for e in infra_links if e.resolved not in known]
    problems = [p for p in sorted(problems, key=lambda p: (p.path, p.line)) if not wanted or p.path in wanted]
    if output == "json":
        _emit_json({"files": len(parsed), "problems": [p.as_dict() for p in problems]})
    else:
        for p in problems:
            click.echo(str(p), err=True)
        click.echo(f"{len(parsed)} node files, {len(problems)} problems", err=True)
    if problems:
        raise InputError(f"{len(problems)} knowledge problems", where=str(root / "knowledge"),
                         hint="fix the files named above; `stratum kb new` writes valid skeletons")


@kb.command("guidelines")
@_common
@_output
@click.pass_context
def guidelines(ctx: click.Context, repo: str | None, data_dir: Path | None, branch: str | None,
               output: str) -> None:
    """The effective guidelines: project ones override organisation bases by id or category."""
    found, warnings = _kb(ctx, repo, data_dir, branch).guidelines()
    for w in warnings:
        _warn(w)
    if output == "json":
        _emit_json({"guidelines": [g.as_dict() for g in found], "warnings": warnings})
        return
    for g in found:
        extra = f"  overrides: {'; '.join(g.overrides)}" if g.overrides else ""
        click.echo(f"[{g.priority:>3.0f}] {g.node.title}  ({g.category or '-'}, from {g.source}){extra}")


@kb.command("mcp")
@_common
@click.pass_context
def mcp(ctx: click.Context, repo: str | None, data_dir: Path | None, branch: str | None) -> None:
    """Serve the knowledge base to an MCP client over stdio (point your assistant at `stratum kb mcp`)."""
    import structlog

    from reconcilers.knowledge.mcp_server import serve_stdio

    # stdout carries the protocol: every log line must go to stderr in this process.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    serve_stdio(_kb(ctx, repo, data_dir, branch))
