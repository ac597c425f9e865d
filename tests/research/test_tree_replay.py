"""The token-tree replay on a hand-made two-request step recording: trie rows and accepted
tokens, the step-by-step replay's seconds, the hindsight bound against the chain one, and the
command end to end."""

from __future__ import annotations

import json

from research.selection.replay import CostModel, DrafterCost, hindsight
from research.selection.tree_replay import (
    DRAFTERS,
    NGRAM,
    QWEN,
    SMOL,
    SUFFIX,
    Position,
    disagree,
    fallback,
    hindsight_tree,
    load,
    main,
    replay_request,
    shapes,
    to_request,
    verify,
)

OUTPUT = [10, 11, 12, 13, 14, 15, 16, 17]
# per drafter, the proposal at every output position
PROPOSALS = {
    SUFFIX: [[10, 11], [11, 12, 13], [12, 99], [], [14, 15, 16], [15], [], []],
    NGRAM: [[10, 98], [11, 97], [12, 13, 14], [13, 14], [14, 15], [], [], []],
    QWEN: [[10, 11, 12], [11, 12, 96], [12, 13], [13, 95], [14], [15, 16], [16], []],
    SMOL: [[94], [11], [93], [13], [92], [15], [16], []],
}
# forward of n rows: 10 + n ms; the 0.5B 2 ms a round; SmolLM2 one more round of 1 ms
COST = CostModel(
    contexts=(0,),
    forward=(tuple(0.010 + 0.001 * n for n in range(1, 10)),),
    drafters={
        SUFFIX: DrafterCost(0.0, 0.0, rounds=False),
        NGRAM: DrafterCost(0.0, 0.0, rounds=False),
        QWEN: DrafterCost(0.0, 0.002),
        SMOL: DrafterCost(0.001, 0.001),
    },
)


def recorded(rid: str, category: str) -> dict:
    """A step recording's request: the proposals above, their recorded match lengths."""

    def matched(draft: list[int], t: int) -> int:
        m = 0
        while m < len(draft) and OUTPUT[t + m : t + m + 1] == [draft[m]]:
            m += 1
        return m

    n = len(OUTPUT)
    drafts = {d: [[len(p), matched(p, t)] for t, p in enumerate(PROPOSALS[d])] for d in DRAFTERS}
    return {
        "request_id": rid,
        "category": category,
        "num_prompt_tokens": 20,
        "num_output_tokens": n,
        "drafts": drafts,
        "output_ids": OUTPUT,
        "proposals": PROPOSALS,
        "scores": {d: [None] * n for d in DRAFTERS},
        "support": {},
        "confidence": {},
    }


def trace_file(tmp_path):
    path = tmp_path / "trace.json"
    cost = {**COST.to_json(), "drafters": {d: vars(c) for d, c in COST.drafters.items()}}
    reqs = [recorded("a", "code"), recorded("b", "code")]
    path.write_text(json.dumps({"settings": {}, "requests": reqs, "cost": cost}))
    return path


def test_verify_counts_shared_prefixes_once_and_accepts_the_longest_branch():
    # suffix [1, 2, 3] and n-gram [1, 2, 9] share two nodes: 4 nodes, 5 rows with the root
    at = Position({SUFFIX: (0, 1, 2), NGRAM: (0, 1, 3)}, {SUFFIX: 1, NGRAM: 2})
    assert verify(at, ((SUFFIX, 3), (NGRAM, 3)), room=8) == (5, 2, {SUFFIX: 3, NGRAM: 3})
    assert verify(at, ((SUFFIX, 3), (NGRAM, 3)), room=1) == (2, 1, {SUFFIX: 1, NGRAM: 1})
    assert verify(at, ((SUFFIX, 3),), room=0) == (1, 0, {})


def test_replay_charges_rows_rounds_and_catchup_step_by_step(tmp_path):
    [step, _] = load([trace_file(tmp_path)])
    req = to_request(step)
    # suffix 2 deep: t=1 accepts 2 (3 rows), t=4 accepts 2 (3 rows), t=7 is the last token
    chain = replay_request(req, lambda at: ((SUFFIX, 2),), COST)
    assert abs(chain.seconds - (0.013 + 0.013 + 0.011)) < 1e-12
    assert chain.branched == 0
    # suffix + 0.5B, 2 deep: t=1 rows {11, 12} shared + {11, 12} = 3 rows, accepts 2, 2 rounds;
    # t=4 suffix {14, 15} and 0.5B {14}: 3 rows, accepts 2, 2 rounds; the 0.5B drafted only
    # 14, so at t=7 (no room, no draft) nothing more is charged
    tree = replay_request(req, lambda at: ((SUFFIX, 2), (QWEN, 2)), COST)
    assert abs(tree.seconds - (0.013 + 0.004 + 0.013 + 0.004 + 0.011)) < 1e-12


def test_model_drafter_catches_up_on_tokens_a_lookup_supplied(tmp_path):
    [step, _] = load([trace_file(tmp_path)])
    req = to_request(step)
    catching = CostModel(
        COST.contexts, COST.forward, {**COST.drafters, QWEN: DrafterCost(0.0, 0.002, catchup=0.1)}
    )
    plain = replay_request(req, lambda at: ((NGRAM, 3), (QWEN, 1)), COST).seconds
    # t=1: n-gram [11, 97] 1 passes, the 0.5B [11] passes; t=3: n-gram [13, 14] 2 pass, the
    # 0.5B [13] 1: one token ahead of it, paid at t=6
    assert (
        abs(replay_request(req, lambda at: ((NGRAM, 3), (QWEN, 1)), catching).seconds - plain - 0.1)
        < 1e-12
    )


def test_disagreement_adds_the_second_branch_only_on_a_different_first_token(tmp_path):
    [step, _] = load([trace_file(tmp_path)])
    positions = to_request(step).positions
    assert disagree(2)(positions[0]) == ((SUFFIX, 2),)  # both start with 10
    assert disagree(2)(positions[3]) == ((SUFFIX, 2), (NGRAM, 2))  # suffix has none
    assert fallback(QWEN, 2, 3, tree=False)(positions[6]) == ((QWEN, 3),)
    assert fallback(QWEN, 2, 3, tree=True)(positions[0]) == ((SUFFIX, 2), (NGRAM, 2))


def test_hindsight_over_trees_equals_hindsight_over_chains(tmp_path):
    steps = load([trace_file(tmp_path)])
    chains = hindsight([s.traced for s in steps], COST, DRAFTERS).seconds
    for step in steps:
        trees = hindsight_tree(to_request(step), COST, list(shapes(8)))
        assert abs(trees - chains[step.request_id]) < 1e-12


def test_command_writes_both_cost_models_and_the_decision(tmp_path, capsys):
    out = tmp_path / "tree.json"
    main([str(trace_file(tmp_path)), "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["requests"] == 2
    for model in ("cpu", "gpu"):
        assert set(report[model]["decision"]) == {
            "fixed, held out",
            "hindsight",
            "per-request oracle",
        }
        assert report[model]["decision"]["hindsight"]["gain"] == 0.0
        assert len(report[model]["held_out"]["best fixed tree"]["chosen"]) == 2
    assert "| tree vs chain |" in capsys.readouterr().out
