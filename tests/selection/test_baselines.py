"""The policies that do not learn, and the registry that builds every policy by name."""

from __future__ import annotations

import pytest

from spinserve.selection.baselines import (
    FixedPolicy,
    OraclePolicy,
    RandomPolicy,
    RoundRobinPolicy,
)
from spinserve.selection.policy import NO_SPECULATION, Choice, LoadView, RequestView
from spinserve.selection.registry import SelectionConfig, build_policy, parse_policy
from spinserve.selection.spin import SpinPolicy

DRAFTERS = ("qwen2.5-coder-0.5b-instruct", "ngram", "suffix")
LOAD = LoadView(3)


def views(*ids: str) -> list[RequestView]:
    return [RequestView(rid, 10, 0) for rid in ids]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("spin", ("spin", None)),
        ("random", ("random", None)),
        ("round-robin", ("round-robin", None)),
        ("oracle", ("oracle", None)),
        ("fixed:ngram", ("fixed", "ngram")),
        ("fixed:none", ("fixed", "none")),
        ("fixed:qwen2.5-coder-0.5b-instruct", ("fixed", "qwen2.5-coder-0.5b-instruct")),
        ("fixed:/models/x:y.gguf", ("fixed", "/models/x:y.gguf")),
    ],
)
def test_parse_policy(name, expected):
    assert parse_policy(name) == expected


@pytest.mark.parametrize(
    "name, message",
    [
        ("ucb", "unknown policy 'ucb'; policies: fixed:NAME, random, round-robin, spin, oracle"),
        ("fixed", "needs a drafter"),
        ("fixed:", "needs a drafter"),
        ("spin:fast", "takes no argument"),
        ("", "unknown policy"),
    ],
)
def test_parse_policy_errors(name, message):
    with pytest.raises(ValueError, match=message):
        parse_policy(name)


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(policy="oracle"), "needs oracle_table"),
        (dict(draft_lengths=(0, 4)), r"draft_lengths must be in \[1, 16\], got \[0\]"),
        (dict(policy="random:x"), "takes no argument"),
    ],
)
def test_config_errors(config, message):
    with pytest.raises(ValueError, match=message):
        SelectionConfig(**config)


@pytest.mark.parametrize(
    "policy, k, expected",
    [
        ("fixed:ngram", 4, [Choice("ngram", 4)] * 3),
        ("fixed:none", 4, [NO_SPECULATION] * 3),
        ("fixed:qwen2.5-coder-0.5b-instruct", 2, [Choice(DRAFTERS[0], 2)] * 3),
        ("random", 0, [NO_SPECULATION] * 3),  # k = 0: nothing to draft
    ],
)
def test_build_and_choose(policy, k, expected):
    built = build_policy(SelectionConfig(policy), DRAFTERS, k)
    assert built.choose(views("a", "b", "c"), LOAD) == expected


def test_build_errors():
    with pytest.raises(ValueError, match=r"fixed:smollm: unknown drafter .smollm.; loaded"):
        build_policy(SelectionConfig("fixed:smollm"), DRAFTERS, 4)
    with pytest.raises(ValueError, match="never drafts"):
        build_policy(SelectionConfig("fixed:ngram"), DRAFTERS, 0)


@pytest.mark.parametrize("policy", ["spin", "random", "round-robin"])
def test_no_drafters_means_no_speculation(policy):
    built = build_policy(SelectionConfig(policy), (), 4)
    assert isinstance(built, FixedPolicy)
    assert built.choose(views("a"), LOAD) == [NO_SPECULATION]


def test_spin_gets_the_configured_lengths():
    built = build_policy(SelectionConfig("spin", draft_lengths=(2, 5)), DRAFTERS, 4)
    assert isinstance(built, SpinPolicy) and built.params.draft_lengths == (2, 5)


def test_random_is_seeded_and_uses_every_arm():
    arms = [Choice(d, 4) for d in DRAFTERS]
    a, b = RandomPolicy(arms, seed=7), RandomPolicy(arms, seed=7)
    picks = [a.choose(views("x", "y"), LOAD) for _ in range(50)]
    assert picks == [b.choose(views("x", "y"), LOAD) for _ in range(50)]
    assert {c for step in picks for c in step} == set(arms)


def test_round_robin_assigns_new_requests_in_turn_and_keeps_them():
    arms = [Choice(d, 4) for d in DRAFTERS]
    policy = RoundRobinPolicy(arms)
    assert policy.choose(views("a", "b"), LOAD) == arms[:2]
    assert policy.choose(views("b", "c", "a", "d"), LOAD) == [arms[1], arms[2], arms[0], arms[0]]
    policy.finish("a")
    assert policy.choose(views("a"), LOAD) == [arms[1]]  # a new request now


def test_oracle_from_runs_save_and_load(tmp_path):
    runs = {
        "r0": {Choice("ngram", 4): 9.0, Choice("suffix", 4): 7.5, NO_SPECULATION: 5.0},
        "r1": {Choice("ngram", 4): 2.0, NO_SPECULATION: 3.0},
    }
    oracle = OraclePolicy.from_runs(runs)
    assert oracle.choose(views("r1", "r0"), LOAD) == [NO_SPECULATION, Choice("ngram", 4)]
    path = tmp_path / "oracle.json"
    oracle.save(path)
    built = build_policy(SelectionConfig("oracle", oracle_table=str(path)), DRAFTERS, 4)
    assert built.choose(views("r0", "r1"), LOAD) == [Choice("ngram", 4), NO_SPECULATION]
    # Built from config, a request the table does not name is not speculated on.
    assert built.choose(views("r9"), LOAD) == [NO_SPECULATION]
    with pytest.raises(ValueError, match="no entry for request 'r9'"):
        oracle.choose(views("r9"), LOAD)


def test_oracle_table_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected an object"):
        OraclePolicy.load(bad)
    with pytest.raises(ValueError, match="cannot read oracle table"):
        OraclePolicy.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="no measured arm"):
        OraclePolicy.from_runs({"r0": {}})
