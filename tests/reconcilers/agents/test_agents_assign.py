"""Assignment (the Vapora rule): exact values from the issue's formula, and properties that must hold for any
team and history (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconcilers.agents.assign import DAY, Candidate, Record, by_agent, choose, expertise, score, weight

NOW = 1_800_000_000.0


def rec(agent: str, days_ago: float, ok: bool = True, quality: float = 1.0, kind: str = "t") -> Record:
    """A record of `agent` finished `days_ago` days before NOW."""
    return Record(agent, kind, NOW - days_ago * DAY, ok, quality)


def test_weights_follow_the_issue() -> None:
    """3 x e^(-d/7) inside the last 7 days, e^(-d/7) after."""
    assert weight(0) == pytest.approx(3.0)
    assert weight(3.5) == pytest.approx(3 * math.exp(-0.5))
    assert weight(7) == pytest.approx(math.exp(-1))
    assert weight(14) == pytest.approx(math.exp(-2))


def test_score_is_the_weighted_sum() -> None:
    """0.3 x (1 - load) + 0.5 x expertise + 0.2 x min(1, executions/20), on a worked example."""
    records = [rec("a", 1, True), rec("a", 10, False)]
    w1, w2 = 3 * math.exp(-1 / 7), math.exp(-10 / 7)
    exp = w1 / (w1 + w2)
    s = score(Candidate("a", running=1, max_concurrency=4), records, NOW)
    assert s.expertise == pytest.approx(exp)
    assert s.confidence == pytest.approx(2 / 20)
    assert s.total == pytest.approx(0.3 * 0.75 + 0.5 * exp + 0.2 * 0.1)


def test_quality_counts_only_for_successes() -> None:
    """A success scores its quality, a failure 0 whatever its quality."""
    assert expertise([rec("a", 0, True, 0.5)], NOW) == pytest.approx(0.5)
    assert expertise([rec("a", 0, False, 1.0)], NOW) == 0.0


def test_only_the_last_100_records_count() -> None:
    """Records beyond the newest 100 of an (agent, type) are ignored: old failures age out."""
    records = [rec("a", 1 + i / 1000, True) for i in range(100)] + [rec("a", 30 + i, False) for i in range(50)]
    assert expertise(records, NOW) == pytest.approx(1.0)
    assert score(Candidate("a"), records, NOW).executions == 100


def test_no_history_falls_back_to_least_loaded() -> None:
    """With no records for the type, the least-loaded agent wins, ties by id."""
    d = choose([Candidate("b", 1, 4), Candidate("a", 2, 4), Candidate("c", 1, 4)], {}, NOW)
    assert (d.winner, d.rule) == ("b", "least-loaded")


def test_agents_at_their_cap_are_not_chosen() -> None:
    """A full agent never wins; when all are full nobody does (the task waits)."""
    hist = {"a": [rec("a", 0)] * 30}
    d = choose([Candidate("a", 1, 1), Candidate("b", 0, 1)], hist, NOW)
    assert d.winner == "b"
    assert choose([Candidate("a", 1, 1)], hist, NOW).winner is None


def test_the_explanation_names_the_winner_and_the_parts() -> None:
    """`stratum agent profile` shows each candidate's parts with the winner first."""
    d = choose([Candidate("a"), Candidate("b")], {"b": [rec("b", 0)] * 20}, NOW)
    text = d.explain()
    assert text.splitlines()[0] == "winner: b (by score)"
    assert "b: total 1.000 = 0.3 x (1 - load 0.00) + 0.5 x expertise 1.000 + 0.2 x confidence 1.00" in text


def test_by_agent_keeps_one_task_type() -> None:
    """History is grouped per agent for the task type asked."""
    grouped = by_agent([rec("a", 0, kind="x"), rec("a", 0, kind="y"), rec("b", 0, kind="x")], "x")
    assert {k: len(v) for k, v in grouped.items()} == {"a": 1, "b": 1}


records_st = st.lists(st.builds(Record, agent=st.sampled_from(["a", "b", "c"]), task_type=st.just("t"),
                                finished=st.floats(NOW - 400 * DAY, NOW), succeeded=st.booleans(),
                                quality=st.floats(0, 1)), max_size=60)
candidates_st = st.lists(st.builds(Candidate, agent=st.sampled_from(["a", "b", "c", "d"]),
                                   running=st.integers(0, 5), max_concurrency=st.integers(1, 5)),
                         min_size=1, max_size=4, unique_by=lambda c: c.agent)


@settings(max_examples=300, deadline=None)
@given(candidates_st, records_st)
def test_scores_stay_in_bounds_and_the_winner_is_eligible_and_best(cands: list[Candidate],
                                                                   records: list[Record]) -> None:
    """Every part is in 0..1, the total in 0..1; the winner is eligible and no eligible agent scores higher."""
    d = choose(cands, by_agent(records, "t"), NOW)
    for s in d.scores:
        assert 0 <= s.load <= 1 and 0 <= s.expertise <= 1 + 1e-9 and 0 <= s.confidence <= 1
        assert 0 <= s.total <= 1 + 1e-9
    eligible = [s for s in d.scores if s.eligible]
    if not eligible:
        assert d.winner is None
        return
    won = next(s for s in d.scores if s.agent == d.winner)
    assert won.eligible
    if d.rule == "score":
        assert all(won.total >= s.total - 1e-12 for s in eligible)
    else:
        assert all(won.load <= s.load for s in eligible)


@settings(max_examples=200, deadline=None)
@given(records_st, st.floats(0, 1))
def test_one_more_success_never_lowers_expertise(records: list[Record], quality: float) -> None:
    """Adding a fresh perfect success to fewer than 100 records cannot lower the expertise."""
    mine = [r for r in records if r.agent == "a"]
    before = expertise(mine, NOW)
    after = expertise([*mine, Record("a", "t", NOW, True, 1.0)], NOW)
    assert after >= before - 1e-12


@settings(max_examples=200, deadline=None)
@given(candidates_st, records_st)
def test_the_decision_does_not_depend_on_candidate_order(cands: list[Candidate], records: list[Record]) -> None:
    """The same team in another order gets the same winner (a pure, reproducible decision)."""
    hist = by_agent(records, "t")
    assert choose(cands, hist, NOW).winner == choose(list(reversed(cands)), hist, NOW).winner
