"""spin's step gate in the engine: every lookup drafts every step, the gate plays what its
predicted pass chances say pays, learns from all of them, and the output stays the target's."""

from __future__ import annotations

import pytest

from spinserve.config.engine import EngineConfig
from spinserve.config.sampling import SamplingParams
from spinserve.config.selection import SelectionConfig
from spinserve.engine.builder import build_engine
from spinserve.speculative.drafter import Draft

PROMPTS = [list(range(10, 10 + n)) for n in (3, 17, 9, 30, 5, 12)]
GREEDY = SamplingParams(max_tokens=24, ignore_eos=True)


class Knowing:
    """A lookup that proposes the target's own continuation (it read the answers), scored as
    unsure as a weak suffix match: the gate must learn that these drafts pass."""

    is_lookup = True

    def __init__(self, name: str, answers: dict[tuple[int, ...], list[int]]) -> None:
        self.name, self.answers = name, answers

    def propose(self, requests):
        drafts = []
        for r in requests:
            ids = list(r.token_ids)
            for prompt, output in self.answers.items():
                done = len(ids) - len(prompt)
                if done >= 0 and ids == [*prompt, *output[:done]]:
                    tokens = output[done : done + r.num_draft_tokens]
                    drafts.append(Draft(tokens, scores=(0.3,) * len(tokens)))
                    break
            else:
                drafts.append(Draft([]))
        return drafts

    def finish(self, request_id, token_ids):
        pass


class Wrong:
    """A lookup whose drafts never pass, though it scores them high."""

    is_lookup = True
    name = "wrong"

    def propose(self, requests):
        return [
            Draft([3] * r.num_draft_tokens, scores=(0.9,) * r.num_draft_tokens) for r in requests
        ]

    def finish(self, request_id, token_ids):
        pass


@pytest.fixture(scope="module")
def answers(tiny_loaded):
    engine = build_engine(tiny_loaded["llama"], drafters={})
    outs = engine.generate(PROMPTS, GREEDY)
    return {tuple(p): o.token_ids for p, o in zip(PROMPTS, outs, strict=True)}


def test_the_gate_learns_to_play_good_lookups_and_drop_bad_ones(tiny_loaded, answers):
    drafters = {"knowing": Knowing("knowing", answers), "wrong": Wrong()}
    selection = SelectionConfig(step_gate=True)
    engine = build_engine(
        tiny_loaded["llama"], EngineConfig(selection=selection), drafters=drafters
    )
    first = engine.generate(PROMPTS[:3], GREEDY)
    later = engine.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in first + later] == [
        answers[tuple(p)] for p in PROMPTS[:3] + PROMPTS
    ]
    stats = engine.drafter_stats
    assert stats["knowing"].num_accepted_tokens > 0
    assert stats["knowing"].acceptance_rate == 1.0
    # the wrong lookup drafted every step (full information) but is played less and less
    assert stats["wrong"].draft_seconds > 0
    late_wrong = sum(
        o.choice_counts.get(k, 0) for o in later for k in o.choice_counts if k.startswith("wrong")
    )
    late_knowing = sum(
        o.choice_counts.get(k, 0) for o in later for k in o.choice_counts if k.startswith("knowing")
    )
    assert late_knowing > 5 * max(late_wrong, 1)
    # and the played drafts grow long once they are known to pass
    assert max(len(p) for p in [stats["knowing"].drafted_per_position]) >= 4


def test_without_the_gate_spin_plays_its_own_choice(tiny_loaded, answers):
    """The default: the step gate is off."""
    drafters = {"knowing": Knowing("knowing", answers), "wrong": Wrong()}
    engine = build_engine(tiny_loaded["llama"], EngineConfig(), drafters=drafters)
    outs = engine.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outs] == [answers[tuple(p)] for p in PROMPTS]
    assert engine.speculator.policy.gates_steps is False
