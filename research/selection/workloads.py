"""The simulated world: hardware cost profiles, how well each drafter predicts each kind of
text, and request types made of stretches of text. Data only, plus the expected values that
the simulator's oracles and regret are computed from.

The numbers are a model, not a measurement, anchored where we have one: the ``cpu`` profile's
target line (0.335 s + 0.078 s per token) and SmolLM2-135M's forward (72 ms) are
`benchmarks/step_bench.py` on the 2-core dev machine (Qwen2.5-Coder-1.5B fp32); the 0.5B's
is the 1.5B's scaled by parameters; a model drafter catches up on unseen tokens at its
per-token cost, the suffix drafter at its index-building rate (~30 us a token). ``gpu`` is
assumed, not measured: a memory-bound engine on one GPU (a forward costs about the same for
1 or 40 tokens; with CUDA graphs, so a drafter round costs in proportion to its weights).
Acceptance rates follow the usual ordering (a same-family model is best on code, prompt
lookup on text that copies its input, nothing on open prose) without claiming the exact
values; prompt lengths are long for summarization and RAG, short for chat.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from spinserve.selection.policy import Choice


@dataclass(frozen=True)
class DrafterModel:
    """Cost of one batched call for ``group`` requests and k draft tokens: a model drafter
    runs k rounds of one forward each, a model-free one a single pass over its requests.
    A drafter that did not draft for a request last step first catches up on the tokens it
    has not seen (the whole prompt the first time): ``catchup`` seconds per token."""

    name: str
    fixed: float  # seconds per round (model) or per call (model-free)
    per_request: float  # seconds per request per round
    rounds: bool = True
    catchup: float = 0.0

    def call_seconds(self, k: int, group: int) -> float:
        return (k if self.rounds else 1) * (self.fixed + self.per_request * group)


@dataclass(frozen=True)
class Hardware:
    name: str
    forward_fixed: float  # target forward: fixed + per_token * tokens
    forward_per_token: float
    drafters: tuple[DrafterModel, ...]
    noise: float = 0.05  # log-normal sigma of every measured time

    def forward_seconds(self, num_tokens: float) -> float:
        return self.forward_fixed + self.forward_per_token * num_tokens

    def drafter(self, name: str) -> DrafterModel:
        return next(d for d in self.drafters if d.name == name)

    @property
    def drafter_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.drafters)


QWEN_05B, SMOLLM, NGRAM, SUFFIX = "qwen-0.5b", "smollm-135m", "ngram", "suffix"

HARDWARE: Mapping[str, Hardware] = MappingProxyType(
    {
        "cpu": Hardware(
            "cpu",
            0.335,
            0.078,
            (
                DrafterModel(QWEN_05B, 0.110, 0.025, catchup=0.025),
                DrafterModel(SMOLLM, 0.072, 0.004, catchup=0.001),
                DrafterModel(NGRAM, 0.0, 0.0001, rounds=False),
                DrafterModel(SUFFIX, 0.0, 0.00005, rounds=False, catchup=0.00003),
            ),
        ),
        "gpu": Hardware(
            "gpu",
            0.006,
            0.00002,
            (
                DrafterModel(QWEN_05B, 0.0016, 0.00001, catchup=0.00001),
                DrafterModel(SMOLLM, 0.0010, 0.0003, catchup=0.00001),
                DrafterModel(NGRAM, 0.0, 0.0001, rounds=False),
                DrafterModel(SUFFIX, 0.0, 0.00005, rounds=False, catchup=0.00003),
            ),
        ),
    }
)


@dataclass(frozen=True)
class Skill:
    """A drafter on a kind of text: it proposes a draft with probability ``propose`` (model
    drafters always do), and each draft token passes with probability ``accept`` given the
    ones before it did (so accepted lengths are truncated geometric)."""

    propose: float
    accept: float

    def expected_accepted(self, k: int) -> float:
        a = self.accept
        return self.propose * sum(a**j for j in range(1, k + 1))


def _skills(qwen: float, smollm: float, ngram: Skill, suffix: Skill) -> Mapping[str, Skill]:
    return MappingProxyType(
        {QWEN_05B: Skill(1.0, qwen), SMOLLM: Skill(1.0, smollm), NGRAM: ngram, SUFFIX: suffix}
    )


TEXTS: Mapping[str, Mapping[str, Skill]] = MappingProxyType(
    {
        "code": _skills(0.90, 0.55, Skill(0.25, 0.75), Skill(0.30, 0.65)),
        "copy": _skills(0.75, 0.60, Skill(0.85, 0.92), Skill(0.70, 0.88)),
        "prose": _skills(0.55, 0.45, Skill(0.15, 0.45), Skill(0.20, 0.45)),
        "math": _skills(0.70, 0.50, Skill(0.40, 0.60), Skill(0.40, 0.60)),
    }
)


@dataclass(frozen=True)
class RequestType:
    """A category: its prompt length range and its stretches of output text, each (kind of
    text, min tokens, max tokens)."""

    name: str
    prompt: tuple[int, int]
    segments: tuple[tuple[str, int, int], ...]


REQUEST_TYPES: Mapping[str, RequestType] = MappingProxyType(
    {
        t.name: t
        for t in (
            RequestType(
                "code", (100, 250), (("prose", 10, 40), ("code", 80, 200), ("prose", 10, 40))
            ),
            RequestType("summarization", (300, 900), (("copy", 60, 160), ("prose", 20, 60))),
            RequestType("chat", (20, 120), (("prose", 100, 250),)),
            RequestType("math", (50, 150), (("prose", 10, 30), ("math", 80, 180))),
            RequestType("rag", (300, 900), (("copy", 20, 60), ("prose", 30, 80), ("copy", 20, 60))),
        )
    }
)


@dataclass(frozen=True)
class SimRequest:
    request_id: str
    category: str
    segments: tuple[tuple[str, int], ...]  # (kind of text, tokens)
    num_prompt_tokens: int = 100

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.segments)

    def text_at(self, num_output_tokens: int) -> str:
        """The kind of text the next token belongs to."""
        for text, n in self.segments:
            if num_output_tokens < n:
                return text
            num_output_tokens -= n
        return self.segments[-1][0]


def make_requests(
    num_requests: int, seed: int, categories: tuple[str, ...] | None = None
) -> list[SimRequest]:
    """``num_requests`` requests of the categories in turn (all by default), lengths drawn."""
    rng = random.Random(seed)
    names = categories or tuple(REQUEST_TYPES)
    requests = []
    for i in range(num_requests):
        rtype = REQUEST_TYPES[names[i % len(names)]]
        segments = tuple((text, rng.randint(lo, hi)) for text, lo, hi in rtype.segments)
        prompt = rng.randint(*rtype.prompt)
        requests.append(SimRequest(f"r{i}", rtype.name, segments, prompt))
    rng.shuffle(requests)
    return requests


Skills = Mapping[str, Mapping[str, Skill]]  # kind of text -> drafter -> skill


def expected_emitted(text: str, choice: Choice, skills: Skills = TEXTS) -> float:
    if choice.drafter is None:
        return 1.0
    return 1.0 + skills[text][choice.drafter].expected_accepted(choice.num_draft_tokens)


def expected_seconds(
    hw: Hardware, text: str, choice: Choice, num_running: int, skills: Skills = TEXTS
) -> float:
    """A request's expected cost of one step alone in its drafter's call, with the forward
    split by marginal cost among ``num_running`` requests."""
    if choice.drafter is None:
        return hw.forward_fixed / num_running + hw.forward_per_token
    skill = skills[text][choice.drafter]
    drafted = skill.propose * choice.num_draft_tokens
    draft = hw.drafter(choice.drafter).call_seconds(choice.num_draft_tokens, 1)
    return draft + hw.forward_fixed / num_running + hw.forward_per_token * (1 + drafted)


def goodput(
    hw: Hardware, text: str, choice: Choice, num_running: int, skills: Skills = TEXTS
) -> float:
    emitted = expected_emitted(text, choice, skills)
    return emitted / expected_seconds(hw, text, choice, num_running, skills)
