"""Cost lines and the split of a shared forward."""

from __future__ import annotations

import pytest

from spinserve.selection.cost import (
    CostLine,
    DraftCost,
    ForwardCost,
    fit_line,
    load_bucket,
)
from spinserve.selection.policy import StepTiming


def sums(points):
    return (
        len(points),
        sum(n for n, _ in points),
        sum(t for _, t in points),
        sum(n * n for n, _ in points),
        sum(n * t for n, t in points),
    )


@pytest.mark.parametrize(
    "points, fixed, per_token",
    [
        ([(1, 0.41), (8, 0.96)], 0.41 - 0.55 / 7, 0.55 / 7),  # step_bench's Qwen 1.5B on CPU
        ([(1, 2.0), (2, 3.0), (3, 4.0)], 1.0, 1.0),
        ([(4, 10.0)] * 3, 10.0, 0.0),  # no spread: all fixed
        ([(1, 5.0), (9, 1.0)], 3.0, 0.0),  # falling: slope clamped to 0
        ([(1, 0.0), (2, 10.0)], 0.0, 10.0 / 3.0),  # fixed would be < 0: all per token
    ],
)
def test_fit_line(points, fixed, per_token):
    assert fit_line(*sums(points)) == pytest.approx((fixed, per_token))


def test_cost_line_before_data_makes_extra_units_free():
    line = CostLine()
    assert not line.known and line.coefficients == (1.0, 0.0)
    line.add(2, 4.0)
    assert line.seconds(8) == 4.0


def test_forward_shares_add_up_to_the_forward():
    forward = ForwardCost(discount=1.0)
    for n in (1, 5, 9, 20, 40):
        forward.add_step(StepTiming(0.3 + 0.01 * n, n, 1))
    tokens = [5, 1, 1, 9]  # four requests, one speculating with 4 drafts, one with 8
    shares = [forward.share(len(tokens), n) for n in tokens]
    assert sum(shares) == pytest.approx(0.3 + 0.01 * sum(tokens))
    # 0.075 + 0.05: a quarter of the fixed part and its own 5 tokens, where a split by tokens
    # would charge it 5/16 of the forward (research/selection/flat_arms.py)
    assert shares[0] == pytest.approx(0.3 / 4 + 0.05)


def test_draft_cost_per_bucket_with_fallback():
    draft = DraftCost(discount=1.0)
    assert draft.seconds("qwen", 0, 4) == 0.0  # never tried: free, so it gets tried
    for k in (2, 4):
        draft.add("qwen", 0, k, 0.1 * k)
    assert draft.seconds("qwen", 0, 8) == pytest.approx(0.8)
    assert draft.seconds("qwen", 3, 8) == pytest.approx(0.8)  # nearest bucket measured
    draft.add("qwen", 2, 4, 0.1)
    assert draft.seconds("qwen", 3, 4) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "num_running, bucket", [(1, 0), (2, 1), (4, 1), (5, 2), (8, 2), (9, 3), (16, 3), (17, 4)]
)
def test_load_bucket(num_running, bucket):
    assert load_bucket(num_running) == bucket


def test_catchup_is_learned_apart_from_the_line():
    draft = DraftCost(discount=1.0)
    draft.add_catchup("qwen", 0, 4, 100, 0.5)  # line unknown yet: the step goes to the line
    assert draft.catchup("qwen") == 0.0 and draft.seconds("qwen", 0, 4) == pytest.approx(0.5)
    draft.add("qwen", 0, 2, 0.25)
    draft.add_catchup("qwen", 0, 4, 200, 0.5 + 200 * 0.01)
    assert draft.catchup("qwen") == pytest.approx(0.01)
    draft.add_catchup("qwen", 0, 4, 100, 0.1)  # faster than the line: no negative cost
    assert 0.0 <= draft.catchup("qwen") < 0.01


def test_calibration_prices_catchup_and_one_draft_token_before_first_use():
    """Calls for one draft token after unseen sequences of 1 and 64 tokens: the slope is the
    catch-up per token, the intercept one drafted token (the load-1 line, proportional to k);
    the first real catch-up step then teaches the line only its drafting part."""
    draft = DraftCost(discount=1.0)
    draft.calibrate("qwen", [(1, 0.03 + 0.01), (64, 0.03 + 0.64)])
    assert draft.catchup("qwen") == pytest.approx(0.01)
    assert draft.seconds("qwen", 0, 4) == pytest.approx(0.12)
    draft.calibrate("lookup", [(64, 0.5)])  # one length: no slope, nothing seeded
    assert draft.catchup("lookup") == 0.0 and draft.seconds("lookup", 0, 4) == 0.0


def test_forward_line_learns_from_decode_and_verify_steps_only():
    """A prefill step (hundreds of prompt tokens at a lower cost per token) would flatten
    the line and make draft tokens look cheap; it is left out."""
    forward = ForwardCost(discount=1.0)
    for n in (1, 3, 5, 9):
        forward.add_step(StepTiming(0.020 + 0.015 * n, n, 1))
    before = forward.coefficients
    forward.add_step(StepTiming(0.020 + 0.009 * 512, 513, 2, num_prefill_tokens=511))
    assert forward.coefficients == before
    assert before == pytest.approx((0.020, 0.015))
    with pytest.raises(ValueError, match="num_prefill_tokens"):
        StepTiming(0.1, 4, 1, num_prefill_tokens=5)


# The Qwen 1.5B's one-sequence step on 2 cores after the prefetch: flat, then steep.
CURVE = {1: 0.034, 3: 0.038, 5: 0.045, 9: 0.072}


def test_a_lone_sequence_is_priced_by_its_measured_curve():
    cost = ForwardCost()
    for n, seconds in CURVE.items():
        cost.add_step(StepTiming(seconds, n, 1))
    assert cost.share(1, 3) == pytest.approx(0.038)  # a count measured: its seconds
    assert cost.share(1, 2) == pytest.approx(0.036)  # between two: on the segment
    assert cost.share(1, 11) == pytest.approx(0.072 + 2 * (0.072 - 0.045) / 4)  # beyond
    assert cost.share(1, 0.5) == pytest.approx(0.034)  # never below the smallest count
    # the line through the same points prices 3 tokens at 1.32x 1 token, the curve at 1.12x
    fixed, per_token = cost.coefficients
    assert (fixed + 3 * per_token) / (fixed + per_token) > 1.3
    assert cost.share(1, 3) / cost.share(1, 1) < 1.15
    # more than one sequence: the line's marginal split, as before
    assert cost.share(4, 2) == pytest.approx(fixed / 4 + 2 * per_token)


def test_the_curve_follows_new_steps_and_needs_two_counts():
    cost = ForwardCost()
    cost.add_step(StepTiming(0.034, 1, 1))
    fixed, per_token = cost.coefficients
    assert cost.share(1, 3) == fixed + 3 * per_token  # one count: no curve yet
    cost.add_step(StepTiming(0.040, 3, 1))
    cost.add_step(StepTiming(0.050, 3, 2))  # two sequences: not the curve's
    cost.add_step(StepTiming(0.060, 3, 1, num_prefill_tokens=2))  # a prefill: neither
    assert cost.share(1, 3) == pytest.approx(0.040)
    cost.add_step(StepTiming(0.050, 3, 1))
    assert cost.share(1, 3) == pytest.approx(0.040 + ForwardCost.SINGLE_RATE * 0.010)
