"""The early-stop replay on a hand-made recording: rounds, rows and tokens of each step."""

from __future__ import annotations

import json

from research.selection.early_stop import QWEN, ROUND_OVER_DECODE, main, replay, step

# Output 10 11 12 13; the drafter's proposals at each position and its confidence there.
REQUEST = {
    "request_id": "r",
    "category": "qa",
    "num_prompt_tokens": 5,
    "num_output_tokens": 4,
    "output_ids": [10, 11, 12, 13],
    "drafts": {QWEN: [[4, 2], [4, 3], [2, 1], [1, 1]]},
    "proposals": {QWEN: [[10, 11, 99, 98], [11, 12, 13, 7], [12, 13, 7, 7], [13, 7, 7, 7]]},
    "confidence": {QWEN: [[0.9, 0, 1], [0.95, 0, 1], [0.6, 0, 0], [0.99, 0, 1]]},
}
FORWARD = [1.0, 1.1, 1.2, 1.3, 1.4]


def test_a_step_stops_at_the_first_unsure_token():
    assert step(REQUEST, 0, 4, 0.0, pessimistic=False) == (3, 3, 2)  # 99 drafted, rejected
    assert step(REQUEST, 0, 4, 0.0, pessimistic=True) == (4, 4, 2)  # drafts on to k
    assert step(REQUEST, 0, 4, 0.7, pessimistic=True) == (3, 2, 2)  # 0.6 < 0.7: stop, paid
    assert step(REQUEST, 1, 4, 0.7, pessimistic=True) == (2, 1, 1)


def test_the_replay_prices_rounds_and_rows():
    # k = 1 from t = 0: accept 10 (+11), then from t = 2: accept 12 (+13): 2 steps of 2 rows.
    ratios = replay([REQUEST], FORWARD, 1, 0.0)
    seconds = 2 * (ROUND_OVER_DECODE + 1.1)
    assert ratios["qa"] == round(4 * 1.0 / seconds, 3)
    assert ratios["all"] == ratios["qa"]


def test_the_command_writes_its_results(tmp_path):
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"cost": {"forward": [FORWARD]}, "requests": [REQUEST]}))
    out = tmp_path / "out.json"
    main([str(trace), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["requests"] == 1
    assert set(result["ratios"]["fixed k=2"]) == {"qa", "all"}
