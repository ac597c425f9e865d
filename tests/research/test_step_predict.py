"""The per-step predictor study: features from a step recording, the online logistic
regression, the policy that plays expected tokens per second, and the held-out replay."""

from __future__ import annotations

import json
import random

import pytest

from research.selection.replay import CostModel, DrafterCost, TracedRequest, hindsight, replay
from research.selection.step_features import (
    History,
    OnlineLogistic,
    auc,
    common_features,
    load_steps,
    log_loss,
    own_features,
)
from research.selection.step_policy import StepPolicy, base_rates
from research.selection.step_predict import folds, main, run
from spinserve.selection.baselines import FixedPolicy
from spinserve.selection.policy import NO_SPECULATION, Choice

# A forward of n tokens costs 20 + 2n ms; suffix is free, the model drafter 8 ms a round.
COST = CostModel(
    contexts=(0, 1000),
    forward=(tuple(0.020 + 0.002 * n for n in range(1, 10)),) * 2,
    drafters={
        "ngram": DrafterCost(call=1e-6, per_round=0.0, rounds=False),
        "suffix": DrafterCost(call=1e-6, per_round=0.0, rounds=False),
        "model": DrafterCost(call=0.0, per_round=0.008),
    },
)


def synthetic(rid: str, category: str, seed: int, n: int = 48) -> dict:
    """A step recording's request: the suffix's first score says exactly whether its draft
    passes (4 tokens when it does, none otherwise); the n-gram proposes garbage; the model
    drafter matches 2 of 4 and is confident (0.9) on the tokens that pass, not (0.3) else."""
    rng = random.Random(seed)
    output = [rng.randrange(100, 200) for _ in range(n)]
    good = [rng.random() < 0.5 for _ in range(n)]
    suffix = [output[t : t + 4] if good[t] else [7] * 8 for t in range(n)]
    drafts = {
        "ngram": [(2, 0)] * n,
        "suffix": [(len(p), len(p) if good[t] else 0) for t, p in enumerate(suffix)],
        "model": [(4, min(2, n - t - 1) if t < n - 1 else 0) for t in range(n)],
    }
    model = [[*output[t : t + 2], 5, 5] for t in range(n)]
    model_conf = [[0.9 if t % 4 < 2 else 0.3, 0.5, 1] for t in range(n)]
    return {
        **TracedRequest(rid, category, 20, n, drafts).to_json(),
        "output_ids": output,
        "proposals": {"ngram": [[1, 2]] * n, "suffix": suffix, "model": model},
        "scores": {
            "ngram": [[0.25, 0.25]] * n,
            "suffix": [[0.9] * len(p) if good[t] else [0.2] * 8 for t, p in enumerate(suffix)],
            "model": [None] * n,
        },
        "support": {"suffix": [[[3, 5], [0, 0]]] * n, "ngram": [[1, 3, 1]] * n},
        "confidence": {"target": [[0.8, 0.7, 1]] * n, "model": model_conf},
    }


@pytest.fixture
def trace_path(tmp_path):
    requests = [synthetic(f"{c}:{i}", c, 10 * i + j) for j, c in enumerate("ab") for i in range(4)]
    path = tmp_path / "step.json"
    path.write_text(json.dumps({"cost": COST.to_json(), "requests": requests}))
    return path


def test_auc_and_log_loss_on_known_cases():
    assert auc([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]) == 0.75
    assert auc([0.5, 0.5], [1, 0]) == 0.5
    assert auc([0.2, 0.9], [1, 1]) is None
    assert log_loss([0.5, 0.5], [1, 0]) == pytest.approx(0.6931, abs=1e-4)


def test_online_logistic_learns_a_separable_rule():
    model, rng = OnlineLogistic(), random.Random(0)
    for _ in range(2000):
        s = rng.uniform(-2, 2)
        model.learn([1.0, s], float(s > 0))
    assert model.predict([1.0, 1.5]) > 0.9
    assert model.predict([1.0, -1.5]) < 0.1


def test_features_read_the_evidence_before_verification(trace_path):
    step = load_steps(trace_path)[0]
    history = History()
    common = common_features(step, "suffix", 3, 2, history, ["ngram", "suffix"])
    assert len(common) == len(common_features(step, "model", 3, 6, history, []))
    own = own_features(step, "model", 3, 2, ["suffix"])
    # the model's depth-2 confidence is its teacher-forced one at position t + 1
    assert own[1] == pytest.approx(own_features(step, "model", 4, 1, ["suffix"])[1])


def test_load_steps_refuses_a_recording_without_evidence(tmp_path):
    path = tmp_path / "old.json"
    old = TracedRequest("r", "c", 4, 1, {"suffix": [(0, 0)]}).to_json()
    path.write_text(json.dumps({"requests": [old]}))
    with pytest.raises(SystemExit, match="no per-step evidence"):
        load_steps(path)


def test_oracle_predictor_drafts_exactly_where_the_suffix_passes(trace_path):
    steps = {s.request_id: s for s in load_steps(trace_path)}
    traced = [s.traced for s in steps.values()]
    target = replay(FixedPolicy(NO_SPECULATION), traced, COST).tokens_per_second()
    fixed = replay(FixedPolicy(Choice("suffix", 4)), traced, COST).tokens_per_second()
    lookups = CostModel(COST.contexts, COST.forward, {"suffix": COST.drafters["suffix"]})
    policy = StepPolicy(steps, lookups, "oracle")
    result = replay(policy, traced, lookups)
    assert result.tokens_per_second() > fixed > target
    # myopic: below the bound that also looks at where each draft lands
    assert result.tokens_per_second() < hindsight(traced, lookups, ["suffix"]).tokens_per_second()
    assert set(result.choices) <= {"none", "suffix@1", "suffix@2", "suffix@3", "suffix@4"}


def test_learned_predictor_separates_passing_drafts_and_beats_fixed(trace_path):
    steps = {s.request_id: s for s in load_steps(trace_path)}
    traced = [s.traced for s in steps.values()]
    policy = StepPolicy(steps, COST, "learned")
    result = replay(policy, traced, COST).tokens_per_second()
    fixed = replay(FixedPolicy(Choice("suffix", 4)), traced, COST).tokens_per_second()
    assert result > fixed
    late = [(r[4], r[5]) for r in policy.log if r[1] == "suffix" and r[0].endswith("3")]
    assert auc(*zip(*late, strict=True)) > 0.95


def test_synthetic_predictor_of_higher_auc_plays_faster(trace_path):
    steps = {s.request_id: s for s in load_steps(trace_path)}
    traced = [s.traced for s in steps.values()]
    base = base_rates(list(steps.values()))
    rates = [
        replay(StepPolicy(steps, COST, a, 0, base=base), traced, COST).tokens_per_second()
        for a in (0.6, 0.99)
    ]
    assert rates[1] > rates[0]


def test_folds_alternate_within_categories(trace_path):
    first, second = folds(load_steps(trace_path))
    assert [s.request_id for s in first] == ["a:0", "a:2", "b:0", "b:2"]
    assert [s.request_id for s in second] == ["a:1", "a:3", "b:1", "b:3"]


def test_held_out_report_bounds_every_policy(trace_path, tmp_path, capsys):
    report = run(load_steps(trace_path), COST, orders=1, seeds=1)
    ratios = report["ratios"]
    assert ratios["target"]["all"] == 1.0
    assert all(row["all"] <= ratios["hindsight"]["all"] + 1e-9 for row in ratios.values())
    out = tmp_path / "report.json"
    main([str(trace_path), "--orders", "1", "--seeds", "1", "--out", str(out)])
    assert json.loads(out.read_text())["requests"] == 8
    assert "| step |" in capsys.readouterr().out
