"""`stratum form`: list the forms of the watched branch and run one (answers file, interactive prompts, AI).

Every backend ends in the same FormSession.check -> preview -> submit, so a value one backend refuses every
backend refuses. The verb reaches the daemon's ports (evaluator, revisions, git writer) through the kernel's
VerbHost in click's ctx.obj: a reconciler never imports the daemon.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from reconcilers import bounded_yaml
from reconcilers.base import ReconcilerEnv
from reconcilers.errors import InputError, SettingsError, StratumError
from reconcilers.forms.forge import forge_from
from reconcilers.forms.loader import load_forms
from reconcilers.forms.session import FormSession
from reconcilers.ports import VerbHost
from reconcilers.verbs import verb_host

if TYPE_CHECKING:
    from reconcilers.forms.output import Submission
    from reconcilers.forms.secrets import SealPasswords

MAX_ANSWERS_BYTES = 256 * 1024
_OPTIONS = ("repo", "data_dir", "config", "branch")


def _common(fn: Any) -> Any:
    for option in reversed([
        click.option("--repo", default=None, help="repository path or URL (default: the current directory)"),
        click.option("--data-dir", default=None, help="state directory (default: one per repository)"),
        click.option("--config", default=None, help="host settings file (default: <data-dir>/stratumd.toml)"),
        click.option("--branch", default=None, help="the watched branch the form starts from (default: main)"),
    ]):
        fn = option(fn)
    return fn


def _host() -> VerbHost:
    return verb_host("form")


@contextmanager
def _env(options: Mapping[str, Any]) -> Iterator[ReconcilerEnv]:
    with _host().open("forms", {k: options.get(k) for k in _OPTIONS}) as opened:
        env: ReconcilerEnv = opened
        yield env


@contextmanager
def open_session(options: Mapping[str, Any], name: str, locale: str | None = None,
                 ) -> Iterator[tuple[FormSession, ReconcilerEnv]]:
    """A session of form `name` over the head of the watched branch."""
    with _env(options) as env:
        if env.revisions is None or env.evaluator is None:
            raise SettingsError("the kernel handed no repository to `stratum form`", hint="report this bug")
        snap = env.revisions.snapshot(env.revisions.branch)
        loaded = load_forms(snap)
        form = loaded.forms.get(name)
        if form is None:
            broken = [str(p) for p in loaded.problems if p.path == f"forms/{name}.toml"]
            raise InputError(f"no form named {name!r} on {env.revisions.branch}" + (f": {broken[0]}" if broken else ""),
                             where="forms/", hint="`stratum form list` shows the forms; `stratum validate` "
                                                  "shows why one is broken")
        session = FormSession(form, snap, env.evaluator, watched=env.revisions.branch, writer=env.git_writer,
                              seal=_sealer(env) if any(e.type == "password" for e in form.elements) else None,
                              locale=locale, forge=forge_from(env.settings.get("forms", {})))
        try:
            yield session, env
        finally:
            session.close()


def _sealer(env: ReconcilerEnv) -> SealPasswords:
    """Passwords sealed with the keys of whoever runs the form (STRATUM_KEY_FILE, else ~/.config/stratum/keys)."""
    from reconcilers.forms.secrets import vault_sealer
    from reconcilers.vault.keys import load_keyring

    assert env.evaluator is not None
    return vault_sealer(env.evaluator, lambda: load_keyring(None))


def principal_of(repo_path: str | None) -> str:
    """Who submits from this terminal: git's user.email of the repository, else user@host."""
    try:
        import pygit2

        config = pygit2.Repository(repo_path or ".").config
        return str(config["user.email"])
    except (KeyError, pygit2.GitError, OSError, ValueError):
        return f"{getpass.getuser()}@{socket.gethostname()}"


def read_answers(path: Path) -> dict[str, Any]:
    """An answers file: YAML or JSON, a mapping of element name -> value (bounded)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read the answers file: {err.strerror}", where=str(path)) from err
    if len(raw) > MAX_ANSWERS_BYTES:
        raise InputError(f"the answers file is over {MAX_ANSWERS_BYTES} bytes", where=str(path))
    try:
        data = bounded_yaml.load(raw.decode("utf-8"), max_bytes=MAX_ANSWERS_BYTES, max_depth=16)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise InputError(f"the answers file is not YAML: {err}", where=str(path)) from err
    if not isinstance(data, dict):
        raise InputError("the answers file must be a mapping of element: value", where=str(path),
                         hint="for example `name: billing` on one line, `port: 9000` on the next")
    return {str(k): v for k, v in data.items()}


@click.group("form")
def form() -> None:
    """Forms that generate infrastructure: fill one, get a reviewable branch.

    \b
    Examples:
      stratum form list
      stratum form run local-service                       ask the questions in the terminal
      stratum form run local-service --answers a.yaml      non-interactive (CI, scripts)
      stratum form run local-service --from infra/services/billing.ncl   edit what the form made
    """


@form.command("list")
@_common
def list_cmd(**options: Any) -> None:
    """The forms on the watched branch."""
    with _env(options) as env:
        assert env.revisions is not None
        loaded = load_forms(env.revisions.snapshot(env.revisions.branch))
    for f in loaded.forms.values():
        click.echo(f"{f.name:24} {f.title}")
    for p in loaded.problems:
        click.echo(f"broken: {p}", err=True)


def _report(session: FormSession, errors: Mapping[str, str]) -> str:
    return "; ".join(f"{k}: {session.text.error(v)}" for k, v in errors.items())


@form.command("run")
@click.argument("name")
@click.option("--answers", "answers_file", type=click.Path(path_type=Path, dir_okay=False),
              help="answers as YAML or JSON (non-interactive)")
@click.option("--from", "from_file", default=None, help="a file this form generated: its answers become the defaults")
@click.option("--dry-run", is_flag=True, help="check and print the plan, commit nothing")
@click.option("--ai", "ai_request", default=None,
              help="a sentence for the host's language model ([forms.ai]); its proposal is checked like any answers")
@click.option("--tui", is_flag=True, help="the full-screen form (Textual) instead of one question at a time")
@click.option("--yes", "-y", is_flag=True, help="with --ai: take the checked proposal without asking each question")
@click.option("--locale", default=None, help="language of prompts and messages: en, es (default: from LANG)")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", help="output format")
@_common
def run_cmd(name: str, answers_file: Path | None, from_file: str | None, dry_run: bool, ai_request: str | None,
            tui: bool, yes: bool, locale: str | None, output: str, **options: Any) -> None:
    """Run the form NAME: its answers become Nickel checked by the contracts, committed to a new branch
    forms/NAME/<time> (never the watched branch) with the plan printed.

    \b
    Examples:
      stratum form run local-service --answers answers.yaml
      stratum form run local-service --from infra/services/billing.ncl
      stratum form run local-service --tui                 the full-screen form
      stratum form run local-service --ai "a billing API on port 9000 with 4 workers"
    """
    with open_session(options, name, locale) as (session, env):
        defaults = session.defaults(from_file)
        if ai_request is not None:
            from reconcilers.forms.ai import propose, provider_from

            proposal = propose(provider_from(env.settings.get("forms", {})), session.form, ai_request,
                               session.options())
            click.echo("the model proposes: " + json.dumps(proposal, sort_keys=True), err=True)
            defaults = {**defaults, **proposal}
        if tui and answers_file is None:
            from reconcilers.forms.tui import FormApp

            result = FormApp(session, defaults, principal_of(options.get("repo"))).run()
            if result is None:
                raise InputError("the form was closed before it was submitted: nothing was written")
            _print(_with_kernel_plan(result, options, session.snap.revision))
            return
        if answers_file is not None:
            raw = {**defaults, **read_answers(answers_file)}
        elif ai_request is not None and yes:
            raw = defaults
        elif sys.stdin.isatty():
            from reconcilers.forms.prompts import ask

            raw = ask(session, defaults)
        else:
            raise InputError("no answers: stdin is not a terminal",
                             hint="pass --answers FILE (YAML or JSON), or --ai TEXT --yes")
        checked = session.check(raw)
        if not checked.ok:
            refused = session.text.get("answers-refused", "the answers are refused")
            raise InputError(f"{refused}: {_report(session, checked.errors)}",
                             where=str(answers_file or f"form {name}"), hint="fix those answers and run it again")
        preview = session.preview(checked.answers)
        principal = principal_of(options.get("repo"))
        if dry_run:
            # The kernel plans the commit submitting would make (no branch points to it): the plan a reviewer
            # would read, without a branch.
            try:
                draft = session.draft(checked.answers, principal, preview)
                click.echo(_host().plan_markdown({k: options.get(k) for k in _OPTIONS}, session.snap.revision,
                                                 draft))
            except StratumError as err:
                click.echo(f"warning: the full plan could not be made ({err.what}); the form's own plan follows",
                           err=True)
                click.echo(preview.plan)
            return
        sub = session.submit(checked.answers, principal, preview, review=False)
        # The pull request carries the kernel's plan, the one CI posts for it (`stratum plan --base --head`).
        sub = session.review(_with_kernel_plan(sub, options, session.snap.revision), principal)
    if output == "json":
        click.echo(json.dumps({"branch": sub.branch, "commit": sub.commit, "files": list(sub.files),
                               "plan": sub.plan, "pull_request": sub.review, "pull_request_error": sub.review_error}))
        return
    _print(sub)


def _with_kernel_plan(sub: Submission, options: Mapping[str, Any], base: str) -> Submission:
    """The submission with the kernel's plan of its branch against the watched one (what a reviewer of the pull
    request reads); the form's own plan when the kernel cannot plan it (the branch stands either way)."""
    try:
        return replace(sub, plan=_host().plan_markdown({k: options.get(k) for k in _OPTIONS}, base, sub.commit))
    except StratumError as err:
        click.echo(f"warning: the full plan could not be made ({err.what}); the form's own plan follows", err=True)
        return sub


def _print(sub: Submission) -> None:
    click.echo(sub.plan)
    click.echo(f"committed {sub.commit[:12]} to branch {sub.branch}: review and merge it to apply")
    if "\n**Rejected**" in sub.plan:       # the kernel's marker of a plan that would apply nothing
        click.echo("warning: as it stands this branch would be rejected (the plan above says why): fix that "
                   "(a host setting, or run the form again with other answers) before merging", err=True)
    if sub.review:
        click.echo(f"pull request: {sub.review}")
    if sub.review_error:
        click.echo(f"warning: no pull request was opened: {sub.review_error}", err=True)
