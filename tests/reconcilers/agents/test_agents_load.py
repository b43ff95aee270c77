"""Loading and validating agents/ and tasks/: defaults from the contract, and every bad input refused at
validate with the file and line of the declaration (unknown role, a role with no agent, cron that never fires
or fires too often, negative budget caps, prompt template errors, pipelines that name nothing)."""

from __future__ import annotations

import pytest

from reconcilers.agents.model import AgentSettings
from reconcilers.agents.validate import cron_problem, validate
from tests.reconcilers.agents.conftest import LoadFn

TEAM = """{
  providers = {
    local = { kind = 'command },
    gpt = { kind = 'openai, base_url = "http://127.0.0.1:9/v1", model = "m", price_in = 0.5, price_out = 1.5,
            api_key = "secrets/llm.yaml#openai_key" },
  },
  agents = {
    ops-1 = { role = "devops", providers = ["gpt", "local"], tools = ["knowledge.search"] },
    sec-1 = { role = "security", providers = ["gpt"] },
  },
  budgets = {
    devops = { monthly = 50, weekly = 15 },
  },
}
"""


def tasks(body: str) -> dict[str, str]:
    """A repo with the team above and one tasks file."""
    return {"agents/team.ncl": TEAM, "tasks/t.ncl": body}


def messages(problems: list[object]) -> list[str]:
    """Problems as `path:line: message` strings, hints left out."""
    return [str(p).split(" (hint:")[0] for p in problems]


def test_declarations_load_with_contract_defaults(load_commit: LoadFn) -> None:
    """Providers, agents, budgets and tasks load with their defaults, each with its file and line."""
    d = load_commit(tasks("""{
  tasks = {
    drift-report = {
      title = "Nightly drift report",
      role = "devops",
      trigger = { kind = 'cron, schedule = "0 3 * * *" },
      command = ["stratum", "drift"],
    },
  },
}
"""))
    assert validate(d) == []
    t = d.tasks["drift-report"]
    assert (t.role, t.trigger.kind, t.trigger.schedule, t.command) == ("devops", "cron", "0 3 * * *",
                                                                        ("stratum", "drift"))
    assert (t.timeout, t.retries, t.lock, t.approval, t.task_type) == (300.0, 0, True, False, "drift-report")
    assert (t.where.path, t.where.line) == ("tasks/t.ncl", 3)
    assert d.agents["ops-1"].providers == ("gpt", "local")
    assert d.agents["ops-1"].where.line == 8
    assert d.providers["local"].free and not d.providers["gpt"].free
    assert d.budgets["devops"].monthly == 50.0 and d.budgets["devops"].over == "fallback"


def test_unknown_role_is_refused_at_its_line(load_commit: LoadFn) -> None:
    """An agent with a role outside the twelve is refused where it is declared."""
    d = load_commit({"agents/team.ncl": TEAM.replace('sec-1 = { role = "security"', 'sec-1 = { role = "hacker"')})
    assert messages(validate(d)) == ["agents/team.ncl:9: agent sec-1: unknown role 'hacker'"]


def test_a_task_for_a_role_with_no_agent_is_refused(load_commit: LoadFn) -> None:
    """A task whose role no agent has is refused at the task's line, saying what to declare."""
    d = load_commit(tasks('{\n  tasks = {\n    docs = { title = "Docs", role = "documenter", command = ["true"] },\n'
                          '  },\n}\n'))
    problems = validate(d)
    assert messages(problems) == ["tasks/t.ncl:3: task docs: no agent has the role 'documenter'"]
    assert 'role = "documenter"' in problems[0].hint


@pytest.mark.parametrize(("schedule", "why"), [
    ("0 0 30 2 *", "never fires"),
    ("* * * * * *", "fires every 1 s, more often than the minimum of 60 s"),
    ("*/10 * * * * *", "fires every 10 s"),
    ("61 * * * *", "is not valid"),
    ("0 3 * *", "has 4 fields"),
])
def test_bad_cron_is_refused(load_commit: LoadFn, schedule: str, why: str) -> None:
    """A cron that never fires, fires more often than the minimum, or does not parse, is refused."""
    d = load_commit(tasks('{\n  tasks = {\n    c = { title = "C", role = "devops", command = ["true"],\n'
                          f'          trigger = {{ kind = \'cron, schedule = "{schedule}" }} }},\n  }},\n}}\n'))
    found = messages(validate(d))
    assert len(found) == 1 and found[0].startswith("tasks/t.ncl:3: task c: cron expression"), found
    assert why in found[0]


def test_the_minimum_cron_interval_is_a_repo_setting() -> None:
    """The same cron passes or fails depending on `agents.min_cron_interval`."""
    assert cron_problem("*/5 * * * *", 300) == ""
    assert "more often" in cron_problem("*/5 * * * *", 301)
    assert AgentSettings.from_mapping({"min_cron_interval": 10}).min_cron_interval == 10.0


def test_negative_budget_caps_are_refused(load_commit: LoadFn) -> None:
    """A negative monthly or weekly cap is refused at the budget's line."""
    d = load_commit({"agents/team.ncl": TEAM.replace("monthly = 50, weekly = 15", "monthly = -1, weekly = -2")})
    assert messages(validate(d)) == ["agents/team.ncl:12: budget devops: the monthly cap is negative (-1)",
                                     "agents/team.ncl:12: budget devops: the weekly cap is negative (-2)"]


def test_prompt_template_syntax_error_points_at_the_template_line(load_commit: LoadFn) -> None:
    """A Jinja2 syntax error in a multi-line prompt is reported at its line in the Nickel file."""
    d = load_commit(tasks("""{
  tasks = {
    triage = {
      title = "Triage",
      role = "devops",
      prompt = m%"
        Look at the incident.
        {% if inputs.check %}The check {{ inputs.check }} failed.
      "%,
    },
  },
}
"""))
    found = messages(validate(d))
    assert len(found) == 1 and found[0].startswith("tasks/t.ncl:8: task triage: prompt template error:"), found


def test_an_api_key_in_the_repo_is_refused_without_echoing_it(load_commit: LoadFn) -> None:
    """`api_key` must be a secret reference; a literal key is refused and never repeated in the message."""
    d = load_commit({"agents/team.ncl": TEAM.replace("secrets/llm.yaml#openai_key", "sk-live-abcdef123456")})
    problems = validate(d)
    assert messages(problems) == ["agents/team.ncl:4: provider gpt: `api_key` must be a secret reference, not a key"]
    assert "sk-live" not in str(problems[0])


def test_contract_errors_are_located(load_commit: LoadFn) -> None:
    """A wrong type or unknown field is a Nickel contract error at the file (no crash, nothing loaded)."""
    d = load_commit(tasks('{\n  tasks = {\n    x = { title = "X", role = "devops", command = ["true"],'
                          ' timeout = -3 },\n  },\n}\n'))
    found = validate(d)
    assert found and all(p.path == "tasks/t.ncl" for p in found)
    assert "x" not in d.tasks


def test_pipeline_references_and_cycles_are_checked(load_commit: LoadFn) -> None:
    """Steps naming unknown tasks or steps, and steps waiting on each other, are refused."""
    d = load_commit(tasks("""{
  tasks = {
    a = { title = "A", role = "devops", command = ["true"] },
  },
  pipelines = {
    p = {
      steps = [
        { id = "one", task = "a", after = ["two"] },
        { id = "two", task = "a", after = ["one"] },
        { id = "three", task = "missing", compensate = "nope" },
      ],
    },
  },
}
"""))
    found = messages(validate(d))
    assert "tasks/t.ncl:6: pipeline p: step three names unknown task 'missing'" in found
    assert "tasks/t.ncl:6: pipeline p: step three names unknown compensation task 'nope'" in found
    assert any("steps form a cycle" in m for m in found)


def test_ordered_steps_follow_the_previous_one(load_commit: LoadFn) -> None:
    """Steps without `after` run in order; `after = []` makes a step a root."""
    d = load_commit(tasks("""{
  tasks = { a = { title = "A", role = "devops", command = ["true"] } },
  pipelines = { p = { steps = [ { id = "s1", task = "a" }, { id = "s2", task = "a" },
                                { id = "s3", task = "a", after = [] } ] } },
}
"""))
    assert validate(d) == []
    assert [s.after for s in d.pipelines["p"].steps] == [(), ("s1",), ()]


def test_duplicate_ids_across_files_name_both_places(load_commit: LoadFn) -> None:
    """A task id declared in two files is refused at the second, naming the first."""
    one = '{\n  tasks = {\n    dup = { title = "D", role = "devops", command = ["true"] },\n  },\n}\n'
    d = load_commit({"agents/team.ncl": TEAM, "tasks/a.ncl": one, "tasks/b.ncl": one})
    assert messages(validate(d)) == ["tasks/b.ncl:3: task 'dup' is declared twice: also in tasks/a.ncl:3"]


def test_on_check_must_name_a_declared_check(load_commit: LoadFn) -> None:
    """An on_check trigger naming no declared check is refused; a declared one passes."""
    body = """{
  checks = { pg = { kind = 'tcp, host = "127.0.0.1", port = 5432 } },
  tasks = { heal = { title = "Heal", role = "devops", command = ["true"],
                     trigger = { kind = 'on_check, check = "%s" } } },
}
"""
    assert validate(load_commit(tasks(body % "pg"))) == []
    assert messages(validate(load_commit(tasks(body % "db")))) == [
        "tasks/t.ncl:3: task heal: on_check names unknown check 'db'"]


def test_declarations_kept_in_duckdb_come_back_equal(load_commit: LoadFn) -> None:
    """What the service keeps for `stratum task run` (team_json) is rebuilt by load.py's own builders into
    the same declarations: every kind, every field, the template's line and the Cedar policies."""
    from reconcilers.agents.snapshot import team_from_json, team_json

    files = tasks("""{
  tasks = {
    triage = { title = "Triage", role = "devops", trigger = { kind = 'on_check, check = "pg" },
               prompt = m%"
                 Look at {{ inputs.check }}.
               "%, retries = 2, backoff = 3, idempotency_key = "k", approval = true, env = ["LANG"] },
    fix = { title = "Fix", role = "devops", command = ["true"], cwd = "fix",
            trigger = { kind = 'on_commit, paths = ["infra/**"] } },
  },
  checks = { pg = { kind = 'tcp, host = "127.0.0.1", port = 5432, failures = 2 },
             up = { kind = 'prometheus, url = "http://127.0.0.1:9/", query = "up", below = 1 } },
  pipelines = { incident = { trigger = { kind = 'manual },
                             steps = [ { id = "a", task = "triage" }, { id = "b", task = "fix", compensate = "fix" },
                                       { id = "c", task = "fix", after = [] } ] } },
}
""")
    files["agents/policies/vault.cedar"] = 'permit(principal == Agents::Role::"devops", ' \
        'action == Agents::Action::"vault.read", resource);\n'
    d = load_commit(files, AgentSettings(retention_count=7))
    assert validate(d) == []
    assert d.tasks["triage"].prompt_line > 0 and d.policies
    back = team_from_json(team_json(d))
    for section in ("providers", "agents", "budgets", "tasks", "pipelines", "checks", "policies"):
        assert dict(getattr(back, section)) == dict(getattr(d, section)), section
    assert (back.settings, back.revision) == (d.settings, d.revision)


def test_a_policy_that_does_not_fit_the_schema_is_refused(load_commit: LoadFn) -> None:
    """agents/policies/*.cedar is checked at validate: a parse error, and a policy written for another schema."""
    files = tasks("{ tasks = {} }\n")
    files["agents/policies/bad.cedar"] = "permit(principal"
    files["agents/policies/other.cedar"] = 'permit(principal == Vault::Token::"x", action, resource);\n'
    found = messages(validate(load_commit(files)))
    assert "agents/policies/bad.cedar: policy agents/policies/bad.cedar: does not parse as Cedar: unexpected end " \
           "of input" in found
    assert any(m.startswith("agents/policies/other.cedar: policy agents/policies/other.cedar: does not fit the "
                            "agents schema") for m in found)


def _sampled(expr: str, minimum: float) -> str:
    """The check as it was: the shortest gap among 400 firings from croniter (the reference)."""
    import itertools
    from datetime import UTC, datetime

    from croniter import croniter  # type: ignore[import-untyped]  # no types

    start = datetime(2024, 1, 1, tzinfo=UTC)
    it = croniter(expr, start, second_at_beginning=True) if len(expr.split()) == 6 else croniter(expr, start)
    times = [it.get_next(float) for _ in range(400)]
    gap = min(b - a for a, b in itertools.pairwise(times))
    return f"cron expression {expr!r} fires every {gap:g} s, more often than the minimum of {minimum:g} s" \
        if gap < minimum else ""


@pytest.mark.parametrize("expr", [
    "0 3 * * *", "*/5 * * * *", "*/10 * * * * *", "* * * * * *", "0 9-17/2 * * 1-5", "0,59 * * * *",
    "0 0,23 * * *", "15,45 * * * * *", "0 0 L * *", "30 2 * * 1#2", "0 */6 * * *", "59 23 * * *",
    "0,30 0 * * *", "59 0 * * * *", "0 0 1,2 * *", "5 4 * * sun", "0 12 * * 1,3", "*/7 * * * *",
])
@pytest.mark.parametrize("minimum", [1, 60, 300, 3600, 7200, 86_400, 90_000])
def test_the_cron_check_gives_the_sampled_answer(expr: str, minimum: float) -> None:
    """Reading the shortest gap from the fields (or sampling when they cannot tell) refuses exactly what
    sampling 400 firings refused, with the same figure, for crons whose 400 firings show their shortest gap."""
    assert cron_problem(expr, minimum) == _sampled(expr, minimum)
