"""The fast infra contract (Nickel `Shape` + reconcilers/infra/contract.py) agrees with Nickel's `Config`.

Every sample is evaluated by the real Nickel engine twice: under `Config` (the judge) and under `Shape`, whose
value contract.py completes. A good sample must give the same value, byte for byte (defaults, key order); a
bad sample must be refused by the fast pass (Shape's error or contract.py's None), since Config refuses it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import nickel
from daemon.git.source import GitSource
from daemon.nickel.evaluator import Evaluator
from daemon.package_data import nickel_dir
from reconcilers.infra import contract
from reconcilers.infra.load import load_infra
from tests.fixtures import WorkRepo

SECRET = '{ secret = "kv/app/db", key = "password" }'
CERT = '{ certificate = "pki/issue/web", common_name = "web.internal", part = "certificate" }'

# kind -> (good resource bodies, bad resource bodies); a body is the inside of `{ kind = 'k, ... }`.
SAMPLES: dict[str, tuple[list[str], list[str]]] = {
    "file": ([
        'path = "etc/motd", content = "hi"',
        'path = "a/b", content = "x", mode = "600", prune = false, drift = \'detect, labels = { team = "ops" }',
        f'path = "a/s", content = {SECRET}',
        f'path = "a/c", content = {CERT}',
        'path = "a/t", template = "t.j2", vars = { x = 1, y = \'tag, z = { deep = [1, "a"] } }',
        'path = "a/d", content = "d", depends_on = ["x", "y.z-1"], description = "hello", provider = \'local',
        'path = "a/e", content = "e" ++ "f", mode = "0755"',
        f'path = "a/f", content = {CERT[:-2]}, alt_names = ["a.b", "c"], ip_sans = ["10.0.0.1"], ttl = "1h" }}',
    ], [
        'path = "/etc/motd", content = "hi"',
        'path = "a/../b", content = "hi"',
        'path = "..", content = "hi"',
        'path = "", content = "hi"',
        'path = \'motd, content = "hi"',
        'path = "a", content = \'hi',
        'path = "a", content = 1',
        'path = "a", content = "x", mode = "999"',
        'path = "a", content = "x", mode = "06444"',
        'path = "a", content = "x", mode = 644',
        'path = "a", content = "x", colour = "red"',
        'path = "a", content = "x", depends_on = ["Bad"]',
        'path = "a", content = "x", depends_on = "b"',
        'path = "a", content = "x", prune = "yes"',
        'path = "a", content = "x", drift = \'sometimes',
        'path = "a", content = "x", drift = "detect"',
        'path = "a", content = "x", labels = { a = 1 }',
        'path = "a", content = "x", labels = { a = \'b }',
        'path = "a", content = "x", provider = \'aws',
        'path = "a", content = "x", provider = "local"',
        'path = "a", content = "x", vars = [1]',
        'content = "x"',
        'path = "a", content = { secret = "kv/a" }',
        'path = "a", content = { secret = "kv/a", key = \'k }',
        'path = "a", content = { certificate = "pki/issue/web", common_name = "w" }',
        'path = "a", content = { certificate = "pki/web", common_name = "w", part = "certificate" }',
        'path = "a", content = { certificate = "pki/issue/web", common_name = "", part = "certificate" }',
        'path = "a", content = { certificate = "pki/issue/web", common_name = "w", part = "key" }',
        'path = "a", content = { certificate = "pki/issue/web", common_name = "w", part = "certificate", '
        'alt_names = ["a,b"] }',
        'path = "a", content = { certificate = "pki/issue/web", common_name = "w", part = "certificate", '
        'ttl = 72 }',
        'path = "a", content = { certificate = "pki/issue/web", common_name = "w", part = "certificate", x = "1" }',
    ]),
    "directory": ([
        'path = "d"',
        'path = "d/e", mode = "0700", prune = false',
    ], [
        'path = "d", mode = "0799"',
        'path = "d", content = "x"',
        'mode = "0755"',
    ]),
    "symlink": ([
        'path = "l", target = "t/u"',
    ], [
        'path = "l"',
        'path = "l", target = "/etc/passwd"',
        'path = "l", target = "../x"',
    ]),
    "command": ([
        'run = "true"',
        f'run = "make", creates = "out/bin", unless = "test -e x", compensate = "rm x", timeout = 5, '
        f'env = {{ A = "1", B = {SECRET} }}',
    ], [
        'run = \'true',
        'run = "x", timeout = 0',
        'run = "x", timeout = -1',
        'run = "x", timeout = 1.5',
        'run = "x", timeout = "5"',
        'run = "x", creates = "/abs"',
        'run = "x", env = { A = 1 }',
        'run = "x", env = { A = \'one }',
        'timeout = 5',
    ]),
    "systemd_unit": ([
        'name = "app.service", content = "[Unit]"',
        f'name = "app.service", content = "[Unit]", credentials = {{ db = {SECRET}, tls = {CERT} }}, mode = "0600"',
    ], [
        'name = "app.service"',
        'content = "[Unit]"',
        'name = \'app, content = "[Unit]"',
        'name = "app.service", content = "[Unit]", credentials = { db = "plain" }',
        'name = "app.service", content = "[Unit]", credentials = { db = { secret = \'a, key = "k" } }',
    ]),
    "server": ([
        'provider = \'aws, size = "t3.micro", image = "ami-1"',
        'provider = \'upcloud, size = "1xCPU-1GB", image = "img", zone = "fi-hel1", subnet = "sn", '
        'firewalls = ["fw"], ssh_key = "me", wait_ready = false, tags = { a = "b" }, timeout = 60',
        f'provider = \'aws, size = "s", image = "i", user_data = ["#!/bin/sh", {SECRET}]',
        f'provider = \'aws, size = "s", image = "i", user_data = {SECRET}',
    ], [
        'size = "s", image = "i"',
        'provider = \'local, size = "s", image = "i"',
        'provider = "aws", size = "s", image = "i"',
        'provider = \'AWS, size = "s", image = "i"',
        'provider = \'aws, size = \'s, image = "i"',
        'provider = \'aws, image = "i"',
        'provider = \'aws, size = "s", image = "i", user_data = [1]',
        f'provider = \'aws, size = "s", image = "i", user_data = {CERT}',
        'provider = \'aws, size = "s", image = "i", firewalls = ["Fw"]',
        'provider = \'aws, size = "s", image = "i", tags = { a = \'b }',
        'provider = \'aws, size = "s", image = "i", path = "x"',
    ]),
    "network": ([
        'provider = \'aws, cidr = "10.0.0.0/16"',
    ], [
        'provider = \'aws, cidr = "10.0.0.0"',
        'provider = \'aws, cidr = "10.0.0.0/16 "',
        'provider = \'aws',
    ]),
    "subnet": ([
        'provider = \'aws, network = "net", cidr = "10.0.1.0/24", zone = "a"',
    ], [
        'provider = \'aws, network = "Net", cidr = "10.0.1.0/24"',
        'provider = \'aws, cidr = "10.0.1.0/24"',
    ]),
    "firewall": ([
        'provider = \'aws',
        'provider = \'aws, network = "net", rules = [{ ports = "22" }, { protocol = \'udp, ports = "53", '
        'cidr = "10.0.0.0/8" }, {}]',
    ], [
        'provider = \'aws, rules = [{ ports = "22-" }]',
        'provider = \'aws, rules = [{ protocol = "tcp" }]',
        'provider = \'aws, rules = [{ protocol = \'sctp }]',
        'provider = \'aws, rules = [{ port = "22" }]',
        'provider = \'aws, rules = { ports = "22" }',
    ]),
    "volume": ([
        'provider = \'aws, size_gb = 10',
        'provider = \'aws, size_gb = 10, zone = "a", server = "web", device = "/dev/sdg", volume_type = "gp3"',
    ], [
        'provider = \'aws, size_gb = 0',
        'provider = \'aws',
        'provider = \'aws, size_gb = 10, server = "Web"',
    ]),
    "dns_record": ([
        'provider = \'aws, zone = "example.com", values = ["10.0.0.1"]',
        'provider = \'aws, zone = "example.com", name = "www", record_type = \'CNAME, ttl = 60, values = ["a"]',
    ], [
        'provider = \'aws, zone = "example.com", values = ["a"], record_type = "A"',
        'provider = \'aws, zone = "example.com", values = ["a"], record_type = \'SRV',
        'provider = \'aws, zone = "example.com"',
        'provider = \'aws, zone = "example.com", values = [\'a]',
    ]),
    "load_balancer": ([
        'provider = \'aws, listeners = [{ port = 80, instance_port = 8080 }]',
        'provider = \'aws, zones = ["a"], servers = ["web"], listeners = [{ protocol = \'http, port = 80, '
        'instance_port = 8080 }]',
    ], [
        'provider = \'aws',
        'provider = \'aws, listeners = [{ port = 80 }]',
        'provider = \'aws, listeners = [{ port = 80, instance_port = 0 }]',
        'provider = \'aws, listeners = [{ protocol = \'udp, port = 80, instance_port = 1 }]',
    ]),
}
OTHER_BAD = [
    "{ resources = { a = { path = \"x\" } } }",                       # no kind
    "{ resources = { a = { kind = 'bucket } } }",                     # unknown kind
    "{ resources = { a = { kind = \"file\", path = \"x\", content = \"c\" } } }",   # kind a string
    "{ resources = { a = 1 } }",
    "{ resources = [] }",
    "{ resources = {}, extra = 1 }",
    "[]",
]
OTHER_GOOD = [
    "{}",
    "{ resources = {} }",
    # Merge priorities other than `default` and computed values: the same value either way.
    "{ resources = { a = { kind = 'file, path = \"x\", content = \"c\", depends_on | optional } } }",
    "{ resources = { a = { kind = 'file, path = \"x\", content = \"c\", prune | force = false } } }",
    "{ resources = { a = { kind = 'file, path = \"x\", content = \"c\", labels | priority 3 = { b = \"c\" } } } }",
    "let x = { kind = 'file, content = \"c\" } in "
    "{ resources = { a = x & { path = \"x\" }, b = x & { path = \"y\" } } }",
    "{ resources = { a = { kind = std.string.to_enum \"file\", path = \"x\", content = std.string.uppercase \"c\", "
    "mode = \"0%{std.to_string 644}\" } } }",
]


def _ansi_free(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _run(source: str, contract_expr: str) -> str | None:
    """The JSON text of `source` under the contract, or None when Nickel refuses it."""
    try:
        return str(nickel.run(f"({source}) | {contract_expr}", [str(nickel_dir())]))  # type: ignore[attr-defined]
    except Exception as err:  # noqa: BLE001 nickel.NickelException: a refusal, which is what is asked
        assert "error" in _ansi_free(str(err))
        return None


def _file(kind: str, body: str, rid: str = "r1") -> str:
    return f"{{ resources = {{ {rid} = {{ kind = '{kind}, {body} }} }} }}"


def _cases(index: int) -> list[tuple[str, str]]:
    return [(kind, body) for kind, pair in SAMPLES.items() for body in pair[index]]


def _fast(source: str, shape: str = contract.SHAPE) -> str | None:
    """What the fast pass makes of `source` (under `shape`: Shape, or FileShape): the completed value's JSON,
    or None when it refuses."""
    shaped = _run(source, shape)
    if shaped is None:
        return None
    done = contract.complete_file(json.loads(shaped))
    return None if done is None else json.dumps(done)


@pytest.mark.parametrize(("kind", "body"), _cases(0))
def test_good_samples_give_configs_value(kind: str, body: str) -> None:
    """Config accepts every good sample, and the fast pass gives the very same value (defaults, key order)."""
    source = _file(kind, body)
    judged = _run(source, contract.CONFIG)
    assert judged is not None, f"Config refused a sample meant to be good: {source}"
    assert _fast(source) == json.dumps(json.loads(judged))


@pytest.mark.parametrize(("kind", "body"), _cases(1))
def test_bad_samples_are_refused_by_both(kind: str, body: str) -> None:
    """Config refuses every bad sample, and so does the fast pass (Shape's error or contract.py's None)."""
    source = _file(kind, body)
    assert _run(source, contract.CONFIG) is None, f"Config accepted a sample meant to be bad: {source}"
    assert _fast(source) is None


@pytest.mark.parametrize("source", OTHER_BAD)
def test_bad_files_are_refused_by_both(source: str) -> None:
    assert _run(source, contract.CONFIG) is None
    assert _fast(source) is None


@pytest.mark.parametrize("source", OTHER_GOOD)
def test_good_files_agree(source: str) -> None:
    judged = _run(source, contract.CONFIG)
    assert judged is not None and _fast(source) == json.dumps(json.loads(judged))


@pytest.mark.parametrize("source", [_file("file", body) for body in SAMPLES["file"][0]] + OTHER_GOOD)
def test_file_shape_gives_configs_value_for_files_of_file_resources(source: str) -> None:
    """FileShape (ResourceShape for `file` resources only) takes every good file sample to Config's value."""
    judged = _run(source, contract.CONFIG)
    assert judged is not None and _fast(source, contract.FILE_SHAPE) == json.dumps(json.loads(judged))


@pytest.mark.parametrize("source", [_file(kind, body) for kind, body in _cases(1)] + OTHER_BAD
                         + [_file(kind, body) for kind, body in _cases(0) if kind != "file"])
def test_file_shape_refuses_bad_samples_and_other_kinds(source: str) -> None:
    """What Config refuses, the FileShape pass refuses too; a good resource of another kind is refused (and
    evaluated with Config), never given a value of its own."""
    assert _fast(source, contract.FILE_SHAPE) is None


def test_files_only_reads_the_kinds_a_file_writes() -> None:
    """The guess that picks FileShape: `'file` and no other kind's tag anywhere in the text."""
    assert contract.files_only(_file("file", SAMPLES["file"][0][0]).encode())
    assert not contract.files_only(_file("directory", 'path = "d"').encode())
    assert not contract.files_only((_file("file", SAMPLES["file"][0][0]) + "# 'symlink").encode())
    assert not contract.files_only(b"{ resources = {} }")


def test_contract_py_mirrors_this_infra_ncl() -> None:
    """infra.ncl changed: mirror the change in reconcilers/infra/contract.py (and its Shape), add good and bad
    samples here, then set contract.LIBRARY_SHA256 to the new digest. Until then the fast pass is off."""
    digest = hashlib.sha256((nickel_dir() / "infra.ncl").read_bytes()).hexdigest()
    assert digest == contract.LIBRARY_SHA256, f"infra.ncl is now {digest}: see this test's docstring"
    assert contract.mirrors_library()


def test_every_kind_has_samples() -> None:
    """A kind added to infra.ncl gets samples here (and its fields in Shape and contract.py)."""
    assert set(SAMPLES) == set(contract.KINDS)
    assert all(good and bad for good, bad in SAMPLES.values())


def test_files_the_fast_pass_cannot_vouch_for_go_to_config() -> None:
    """A default-priority field meets the contract's default: Nickel refuses the merge, a value cannot show
    it. Such files (and files that import) are not eligible for the fast pass."""
    source = "{ resources = { a = { kind = 'directory, path = \"d\", mode | default = \"0700\" } } }"
    assert _run(source, contract.CONFIG) is None
    assert _run(source, contract.SHAPE) is not None          # Shape alone would accept it ...
    assert not contract.shape_eligible(source.encode())      # ... so it never takes the fast pass
    assert not contract.shape_eligible(b'import "common.ncl"')
    assert contract.shape_eligible(_file("file", SAMPLES["file"][0][0]).encode())
    # Words on comment lines do not count (the template's infra/app.ncl says "by default" in one); anywhere
    # else they do, inside a string too, and a `#` after code does not hide what follows it on the line.
    assert contract.shape_eligible(b"# 0600 by default; import nothing\n  # default\n{ resources = {} }\n")
    assert not contract.shape_eligible(
        b'{ resources = { a = { kind = \'file, content = "#", prune | default = true } } }')
    assert not contract.shape_eligible(b'{ resources = {} } # default\n')


# Through the loader: the same resources and the same located errors as Config alone gives. ---------------
@pytest.fixture(scope="module")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evaluator]:
    ev = Evaluator(tmp_path_factory.mktemp("nickel-cache"), keep_values=False)
    yield ev
    ev.close()


def _snapshot(tmp: Path, files: dict[str, str | bytes | None]) -> object:
    repo = WorkRepo(tmp / "repo")
    repo.commit(files)
    return GitSource(str(repo.path), "main", tmp / "data").snapshot("main")


def test_loader_takes_the_fast_pass_and_matches_config(tmp_path: Path, evaluator: Evaluator) -> None:
    """Good files are not re-evaluated with Config, and their values equal Config's."""
    files: dict[str, str | bytes | None] = {
        f"infra/k{i}.ncl": _file(kind, body) for i, (kind, body) in enumerate(_cases(0))}
    files["templates/t.j2"] = "x\n"
    snap = _snapshot(tmp_path, files)
    entries = snap.entries("infra", suffixes=(".ncl",))  # type: ignore[attr-defined]
    fast = contract.evaluate(snap, evaluator, entries)  # type: ignore[arg-type]
    assert fast.problems == () and fast.rechecked == ()
    judged = evaluator.evaluate(snap, [e.path for e in entries], contract.CONFIG, entries)  # type: ignore[arg-type]
    assert json.dumps(fast.values, sort_keys=True) == json.dumps(judged.values, sort_keys=True)


def test_loader_reports_configs_located_errors(tmp_path: Path, evaluator: Evaluator) -> None:
    """Bad files among good ones: each problem is the one Config reports (message, file, line), the good
    files load, and a default-priority clash (which Shape alone accepts) is still an error."""
    files: dict[str, str | bytes | None] = {f"infra/good{i}.ncl": _file("directory", f'path = "d{i}"', f"g{i}")
                                            for i in range(20)}
    files["infra/bad_mode.ncl"] = "{\n  resources = {\n    m = { kind = 'file, path = \"m\", content = \"x\",\n" \
                                  "          mode = \"999\" },\n  },\n}\n"
    files["infra/bad_kind.ncl"] = "{ resources = {\n  k = { kind = 'bucket },\n} }\n"
    files["infra/clash.ncl"] = "{ resources = {\n  c = { kind = 'directory, path = \"c\",\n" \
                               "    mode | default = \"0700\" },\n} }\n"
    snap = _snapshot(tmp_path, files)
    entries = snap.entries("infra", suffixes=(".ncl",))  # type: ignore[attr-defined]
    fast = contract.evaluate(snap, evaluator, entries)  # type: ignore[arg-type]
    judged = evaluator.evaluate(snap, [e.path for e in entries], contract.CONFIG, entries)  # type: ignore[arg-type]
    assert sorted(fast.problems, key=str) == sorted(judged.problems, key=str)
    where = {(p.path, p.line) for p in fast.problems}
    assert where == {("infra/bad_mode.ncl", 4), ("infra/bad_kind.ncl", 2), ("infra/clash.ncl", 3)}
    assert any("mode" in p.message for p in fast.problems)
    assert set(fast.values) == {f"infra/good{i}.ncl" for i in range(20)}
    desired = load_infra(snap, evaluator)  # type: ignore[arg-type]
    assert len(desired.resources) == 20 and len(desired.problems) == 3


def test_a_big_revision_takes_file_shape_for_file_only_files_and_matches_config(
        tmp_path: Path, evaluator: Evaluator) -> None:
    """Over FILE_SHAPE_AT bytes: files of `file` resources go through FileShape, the others through Shape, a
    file whose kind only a function makes (misread as files only) through Config; every value is Config's and
    every problem is Config's, located."""
    files: dict[str, str | bytes | None] = {
        f"infra/f{i:02d}.ncl": "{ resources = {\n" + "".join(
            f"  r{i}-{j} = {{ kind = 'file, path = \"f{i}/{j}\", content = \"{'x' * 200}\" }},\n"
            for j in range(20)) + "} }\n" for i in range(20)}
    files["infra/dirs.ncl"] = _file("directory", 'path = "d"', "dir1")
    files["infra/made.ncl"] = "{ resources = { m = { kind = std.string.to_enum \"symlink\", path = \"l\", " \
                              "target = \"t\" }, n = { kind = 'file, path = \"n\", content = \"n\" } } }\n"
    files["infra/bad.ncl"] = "{ resources = {\n  b = { kind = 'file, path = \"b\",\n    content = 42 },\n} }\n"
    snap = _snapshot(tmp_path, files)
    entries = snap.entries("infra", suffixes=(".ncl",))  # type: ignore[attr-defined]
    assert sum(e.size for e in entries) >= contract.FILE_SHAPE_AT
    seen: list[str | None] = []
    evaluate = evaluator.evaluate

    def noting(*args: object, **kwargs: object) -> object:
        seen.append(args[2])  # type: ignore[arg-type]
        return evaluate(*args, **kwargs)  # type: ignore[arg-type]

    evaluator.evaluate = noting  # type: ignore[assignment,method-assign]
    try:
        fast = contract.evaluate(snap, evaluator, entries)  # type: ignore[arg-type]
    finally:
        evaluator.evaluate = evaluate  # type: ignore[method-assign]
    assert seen == [contract.FILE_SHAPE, contract.SHAPE, contract.CONFIG]
    assert set(fast.rechecked) == {"infra/made.ncl", "infra/bad.ncl"}
    judged = evaluator.evaluate(snap, [e.path for e in entries], contract.CONFIG, entries)  # type: ignore[arg-type]
    assert json.dumps(fast.values, sort_keys=True) == json.dumps(judged.values, sort_keys=True)
    assert fast.problems == judged.problems and [(p.path, p.line) for p in fast.problems] == [("infra/bad.ncl", 3)]


def test_an_infra_ncl_this_module_does_not_mirror_turns_the_fast_pass_off(
        tmp_path: Path, evaluator: Evaluator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A library changed without contract.py following (a merge, a local edit): every file goes to Config."""
    monkeypatch.setattr(contract, "LIBRARY_SHA256", "0" * 64)
    contract.mirrors_library.cache_clear()
    try:
        snap = _snapshot(tmp_path, {"infra/a.ncl": _file("directory", 'path = "d"')})
        entries = snap.entries("infra", suffixes=(".ncl",))  # type: ignore[attr-defined]
        result = contract.evaluate(snap, evaluator, entries)  # type: ignore[arg-type]
        assert result.rechecked == ("infra/a.ncl",)
        assert result.values["infra/a.ncl"]["resources"]["r1"]["mode"] == "0755"
    finally:
        contract.mirrors_library.cache_clear()
