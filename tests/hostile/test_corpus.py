"""A corpus of hostile repository contents, each pushed to one real `stratumd` (issue 16, items 1-5 and more).

For every case the daemon must end the run as `rejected` with a located problem (the offending path shown,
and its line when the case has one), stay alive and responsive, keep the last good state applied on the host,
and apply the next good commit. Each case is bounded: its run must finish within CASE_TIMEOUT_S, and the
daemon's resident memory (with its workers) must stay under RSS_LIMIT_MB. The daemon runs with a 3 s Nickel
deadline and a cap of 1,500 files per revision so the slow cases stay short.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures import WorkRepo, bare_repo, infra_file
from tests.proc import DaemonProc, wait_for

CASE_TIMEOUT_S = 90.0
RSS_LIMIT_MB = 1500
HOST_MAX_FILES = 1500


@dataclass(frozen=True)
class Case:
    """Files committed on top of the good state; the problem expected (path, and line when not 0)."""

    name: str
    files: dict[str | bytes, str | bytes | None]
    path: str
    line: int = 0
    words: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _res(rid: str, body: str) -> str:
    return infra_file(f"    {rid} = {{ {body} }},")


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))

CASES = [
    Case("jinja nested range loops", {
        "templates/loop.j2": "x\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "infra/t.ncl": _res("t", "kind = 'file, path = \"t.conf\", template = \"templates/loop.j2\""),
    }, "templates/loop.j2", 2, "did not finish"),
    Case("jinja two-gigabyte string", {
        "templates/big.j2": "{{ 'x' * 2000000000 }}",
        "infra/t.ncl": _res("t", "kind = 'file, path = \"t.conf\", template = \"templates/big.j2\""),
    }, "templates/big.j2", 1, "would build"),
    Case("jinja sandbox escape", {
        "templates/esc.j2": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "infra/t.ncl": _res("t", "kind = 'file, path = \"t.conf\", template = \"templates/esc.j2\""),
    }, "infra/t.ncl", 3, "unsafe"),
    Case("template outside the repository", {
        "infra/t.ncl": _res("t", "kind = 'file, path = \"t.conf\", template = \"../../../etc/passwd\""),
    }, "infra/t.ncl", 3, "template"),
    Case("yaml bomb in knowledge front matter", {
        "knowledge/bomb.md": "---\n" + LAUGHS + "---\nboom\n",
    }, "knowledge/bomb.md", 3, "aliases"),
    # The vault reconciler puts the manifest's line in its message ("2: malformed YAML: ..."), not in `line`.
    Case("yaml bomb in a secret manifest", {"secrets/app.yaml": LAUGHS}, "secrets/app.yaml", 0, "aliases"),
    Case("yaml nested 1,500 deep in front matter", {
        "knowledge/deep.md": "---\nid: deep\ntype: note\ntitle: Deep\nx: " + "[" * 1500 + "]" * 1500 + "\n---\n",
    }, "knowledge/deep.md", 0, "nest"),
    Case("nickel nested 1,500 deep", {
        "infra/deep.ncl": "let d =\n" + "[" * 1500 + "]" * 1500 + " in\n"
                          + _res("x", "kind = 'directory, path = \"x\""),
    }, "infra/deep.ncl", 2, "nest"),
    Case("nickel nested 150,000 deep", {
        "infra/deep.ncl": "let d =\n" + "{a=" * 150_000 + "1" + "}" * 150_000 + " in\n"
                          + _res("x", "kind = 'directory, path = \"x\""),
    }, "infra/deep.ncl", 2, "nest"),
    Case("json nested 150,000 deep imported by nickel", {
        "infra/d.json": "[" * 150_000 + "]" * 150_000,
        "infra/j.ncl": "let d = import \"d.json\" in\n" + _res("x", "kind = 'directory, path = \"x\""),
    }, "infra/d.json", 1, "nested"),
    Case("nickel endless recursion", {
        "infra/loop.ncl": "let rec f = fun x => f (x + 1) in\n{ resources = f 0 }\n",
    }, "infra/loop.ncl", 0, "did not finish|crashed the nickel worker"),   # the deadline or the stack, first wins
    Case("nickel imports a host file", {
        "infra/steal.ncl": "let s = import \"/etc/hostname\" as 'Text in\n"
                           + _res("x", "kind = 'file, path = \"x\", content = s"),
    }, "infra/steal.ncl", 1, "import"),
    Case("symlink resource leaving the root", {
        "infra/l.ncl": _res("l", "kind = 'symlink, path = \"l\", target = \"../../../etc\""),
    }, "infra/l.ncl", 3, ".."),
    Case("file path leaving the root", {
        "infra/p.ncl": _res("p", "kind = 'file, path = \"../../outside\", content = \"x\""),
    }, "infra/p.ncl", 3, ".."),
    Case("non-utf-8 file name", {b"notes/bad\xff\xfe.txt": "x"}, "notes/bad\\xff\\xfe.txt", 0, "UTF-8"),
    Case("control character in a file name", {"notes/evil\nname.txt": "x"}, "notes/evil\\x0aname.txt", 0,
         "control"),
    Case("huge nickel file", {"infra/huge.ncl": "# " + "x" * (5 * 1024 * 1024) + "\n{ resources = {} }\n"},
         "infra/huge.ncl", 0, "byte"),
    Case("more files than the host allows", {f"notes/n{i:04d}.txt": str(i) for i in range(HOST_MAX_FILES + 10)},
         "", 0, f"over {HOST_MAX_FILES} files"),
]


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the Nickel and template workers), in MB."""
    total = 0
    pids = [pid]
    for child_pid in pids:
        try:
            status = Path(f"/proc/{child_pid}/status").read_text()
            children = Path(f"/proc/{child_pid}/task/{child_pid}/children").read_text().split()
        except OSError:
            continue
        total += next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")), 0)
        pids.extend(int(c) for c in children)
    return total / 1024


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProc, WorkRepo, Path]]:
    """One real daemon over a bare repo with a good revision applied."""
    base = tmp_path_factory.mktemp("hostile")
    remote = bare_repo(base / "remote.git")
    work = WorkRepo(base / "work", remote)
    good = work.commit({"infra/good.ncl": _res("good", "kind = 'file, path = \"etc/good.conf\", content = \"v0\\n\"")})
    work.push()
    d = DaemonProc(str(remote), base / "data", base / "root",
                   env={"STRATUM_NICKEL_TIMEOUT": "3", "STRATUM_MAX_FILES": str(HOST_MAX_FILES)})
    try:
        assert d.wait_run(good, 120)["status"] == "succeeded"
        yield d, work, base / "root"
    finally:
        d.stop()


def _reset(work: WorkRepo) -> None:
    """Leave only the good revision's files in the work tree (a failed case must not leak into the next)."""
    for entry in os.scandir(os.fsencode(work.path)):
        if entry.name not in (b".git", b"infra"):
            shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
    for entry in os.scandir(os.fsencode(work.path / "infra")):
        if entry.name != b"good.ncl":
            shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)


def _write(work: WorkRepo, files: dict[str | bytes, str | bytes | None]) -> None:
    for rel, content in files.items():
        raw = rel if isinstance(rel, bytes) else rel.encode()
        target = os.path.join(os.fsencode(work.path), raw)
        assert content is not None
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(content if isinstance(content, bytes) else content.encode())


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_content_is_a_located_rejection(daemon: tuple[DaemonProc, WorkRepo, Path], case: Case) -> None:
    """The run is rejected with the path (and line) shown, within the time and memory bounds; the daemon stays
    up with the last good state applied, and the next good commit applies."""
    d, work, root = daemon
    _reset(work)
    before = work.commit(message=f"before {case.name}")
    work.push()
    assert d.wait_run(before, CASE_TIMEOUT_S)["status"] in ("succeeded", "rejected")
    wait_for(lambda: d.call("status")["status"]["last_applied_revision"] == before, CASE_TIMEOUT_S)
    _write(work, case.files)
    rev = work.commit(message=case.name)
    work.push()
    run = d.wait_run(rev, CASE_TIMEOUT_S)
    assert run["status"] == "rejected", run
    problems = run["problems"]
    located = [p for p in problems if p["path"] == case.path and (not case.line or p["line"] == case.line)]
    assert located, problems
    said = " ".join(str(p["message"]) for p in located).lower()
    assert any(words in said for words in case.words.lower().split("|")), located
    assert "Traceback" not in str(problems) and "internal error" not in str(problems)
    assert d.proc.poll() is None, d.log()[-3000:]
    assert _rss_mb(d.proc.pid) < RSS_LIMIT_MB
    assert d.call("status")["status"]["last_applied_revision"] == before
    assert (root / "etc/good.conf").read_text() == "v0\n"
    # Undo the case; the next good commit applies (the daemon still works).
    _reset(work)
    fixed = work.commit(message=f"undo {case.name}")
    work.push()
    assert d.wait_run(fixed, CASE_TIMEOUT_S)["status"] == "succeeded"
    wait_for(lambda: d.call("status")["status"]["last_applied_revision"] == fixed, 10)
