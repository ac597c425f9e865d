"""A pure-Python simulator of speculative decoding steps, to test policies and choose among
them: arms of known acceptance and cost (`workloads`), requests whose best arm changes from
stretch to stretch, and a closed loop of ``concurrency`` requests (one leaves, the next
enters). Deterministic given the seed: each request draws acceptance from its own generator,
so two policies see the same luck for the same choices.

Per run: tokens/s (tokens emitted / simulated seconds), overall and per category (a request's
seconds: its drafting share and its marginal share of each forward), pseudo-regret (tokens
lost against the best arm of the current stretch: per step, the expected cost of the chosen
arm times the best goodput, minus the chosen arm's expected tokens; catching up after a
switch is not in it, but is in tokens/s) and which arm each category chose. A policy that
wants step costs is calibrated first, as the engine does at start (`calibration`).

    python -m research.selection.experiments         # the table in docs/design.md
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from research.selection.workloads import (
    TEXTS,
    Hardware,
    SimRequest,
    Skills,
    expected_emitted,
    expected_seconds,
    goodput,
)
from spinserve.selection.baselines import OraclePolicy, Stateless
from spinserve.selection.policy import (
    CALIBRATION_DRAFT_TOKENS,
    CALIBRATION_TOKENS,
    NO_SPECULATION,
    Choice,
    DraftTiming,
    Feedback,
    LoadView,
    RequestView,
    SelectionPolicy,
    StepTiming,
)


class TraceStep(NamedTuple):
    """One request's step: before it, ``num_output_tokens`` were out, in stretch ``text``."""

    request_id: str
    step: int
    num_output_tokens: int
    text: str
    choice: Choice


@dataclass
class SimResult:
    policy: str
    num_tokens: int = 0
    seconds: float = 0.0
    num_steps: int = 0  # request-steps
    regret: float = 0.0
    choices: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    category_tokens: Counter = field(default_factory=Counter)
    category_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    trace: list[TraceStep] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.seconds if self.seconds else 0.0

    def category_tokens_per_second(self) -> dict[str, float]:
        return {
            cat: self.category_tokens[cat] / seconds
            for cat, seconds in sorted(self.category_seconds.items())
            if seconds
        }

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "tokens_per_second": round(self.tokens_per_second, 4),
            "num_tokens": self.num_tokens,
            "seconds": round(self.seconds, 4),
            "regret": round(self.regret, 2),
            "choices": {cat: dict(c.most_common()) for cat, c in sorted(self.choices.items())},
        }


@dataclass
class _Running:
    request: SimRequest
    rng: random.Random
    num_output_tokens: int = 0
    num_steps: int = 0
    seen: dict[str, int] = field(default_factory=dict)  # drafter -> tokens it has processed
    last_drafter: str | None = None

    @property
    def num_tokens(self) -> int:
        return self.request.num_prompt_tokens + self.num_output_tokens

    def catchup(self, drafter: str) -> int:
        """Tokens ``drafter`` must process before drafting, beyond last step's new ones."""
        if drafter == self.last_drafter:
            return 0
        return self.num_tokens - self.seen.get(drafter, 0)


def simulate(
    policy: SelectionPolicy,
    requests: Sequence[SimRequest],
    hw: Hardware,
    arms: Sequence[Choice],
    concurrency: int = 1,
    seed: int = 0,
    trace: bool = False,
    skills: Skills = TEXTS,
) -> SimResult:
    """Run ``requests`` (in order, ``concurrency`` at a time) under ``policy``; ``arms`` is
    the set the regret's best arm is taken from; ``skills`` how each drafter does on each
    kind of text."""
    result = SimResult(policy.name)
    timing_rng = random.Random(f"{seed}/timing")
    if policy.wants_step_costs:
        policy.calibrate(*calibration(hw, random.Random(f"{seed}/calibration")))
    queue = list(reversed(requests))
    running: list[_Running] = []
    while queue or running:
        while queue and len(running) < concurrency:
            r = queue.pop()
            running.append(_Running(r, random.Random(f"{seed}/{r.request_id}")))
        views = [
            RequestView(s.request.request_id, s.request.num_prompt_tokens, s.num_output_tokens)
            for s in running
        ]
        choices = policy.choose(views, LoadView(len(running), len(queue)))
        feedback, step_seconds, num_tokens = _step(running, choices, hw, skills, timing_rng)
        forward = hw.forward_seconds(num_tokens) * timing_rng.lognormvariate(0.0, hw.noise)
        result.seconds += step_seconds + forward
        _account(result, running, choices, hw, arms, skills, trace)
        policy.observe(feedback, StepTiming(forward, num_tokens, len(running)))
        for state, fb in zip(running, feedback, strict=True):
            remaining = state.request.num_tokens - state.num_output_tokens
            emitted = min(fb.num_emitted, remaining)
            state.num_output_tokens += emitted
            state.num_steps += 1
            result.num_tokens += emitted
            share = hw.forward_fixed / len(running) + hw.forward_per_token * fb.num_verified_tokens
            category = state.request.category
            result.category_tokens[category] += emitted
            result.category_seconds[category] += (
                fb.draft_seconds + forward * share / hw.forward_seconds(num_tokens)
            )
        for state in [s for s in running if s.num_output_tokens >= s.request.num_tokens]:
            policy.finish(state.request.request_id)
            running.remove(state)
    return result


def calibration(hw: Hardware, rng: random.Random) -> tuple[list[StepTiming], list[DraftTiming]]:
    """What the engine measures at start, with this hardware's timing noise: forwards of one
    sequence, and each drafter's call for one draft token on an unseen sequence."""
    steps = [
        StepTiming(hw.forward_seconds(n) * rng.lognormvariate(0.0, hw.noise), n, 1)
        for n in CALIBRATION_TOKENS
    ]
    drafts = [
        DraftTiming(
            d.name,
            n,
            (d.call_seconds(1, 1) + d.catchup * n) * rng.lognormvariate(0.0, hw.noise),
        )
        for d in hw.drafters
        for n in CALIBRATION_DRAFT_TOKENS
    ]
    return steps, drafts


def _step(
    running: list[_Running],
    choices: list[Choice],
    hw: Hardware,
    skills: Skills,
    rng: random.Random,
) -> tuple[list[Feedback], float, int]:
    """Draft (one call per drafter) and verify: feedback, drafting seconds, forward tokens."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, choice in enumerate(choices):
        if choice.drafter is not None:
            groups[choice.drafter].append(i)
    share = [0.0] * len(running)
    draft_seconds = 0.0
    for name, members in groups.items():
        k = max(choices[i].num_draft_tokens for i in members)
        drafter = hw.drafter(name)
        catchup = sum(running[i].catchup(name) for i in members) * drafter.catchup
        call = (drafter.call_seconds(k, len(members)) + catchup) * rng.lognormvariate(0, hw.noise)
        draft_seconds += call
        for i in members:
            share[i] = call / len(members)
    feedback, num_tokens = [], 0
    for i, (state, choice) in enumerate(zip(running, choices, strict=True)):
        if choice.drafter is not None:
            state.seen[choice.drafter] = state.num_tokens
        state.last_drafter = choice.drafter
        drafted, accepted = _verify(state, choice, skills)
        feedback.append(Feedback(state.request.request_id, choice, drafted, accepted, share[i]))
        num_tokens += drafted + 1
    return feedback, draft_seconds, num_tokens


def _verify(state: _Running, choice: Choice, skills: Skills) -> tuple[int, int]:
    """(drafted, accepted) for one request: drafts never run past the request's end, as the
    engine's draft budget does."""
    if choice.drafter is None:
        return 0, 0
    room = state.request.num_tokens - state.num_output_tokens - 1
    skill = skills[state.request.text_at(state.num_output_tokens)][choice.drafter]
    if room <= 0 or state.rng.random() >= skill.propose:
        return 0, 0
    drafted = min(choice.num_draft_tokens, room)
    accepted = 0
    while accepted < drafted and state.rng.random() < skill.accept:
        accepted += 1
    return drafted, accepted


def _account(
    result: SimResult,
    running: list[_Running],
    choices: list[Choice],
    hw: Hardware,
    arms: Sequence[Choice],
    skills: Skills,
    trace: bool,
) -> None:
    n = len(running)
    for state, choice in zip(running, choices, strict=True):
        text = state.request.text_at(state.num_output_tokens)
        best = max(goodput(hw, text, a, n, skills) for a in arms)
        cost = expected_seconds(hw, text, choice, n, skills)
        result.regret += cost * best - expected_emitted(text, choice, skills)
        result.num_steps += 1
        result.choices[state.request.category][choice.label] += 1
        if trace:
            result.trace.append(
                TraceStep(
                    state.request.request_id, state.num_steps, state.num_output_tokens, text, choice
                )
            )


# --- reference policies that only a simulator can have ----------------------------------------


class StretchOraclePolicy(Stateless):
    """Knows each request's stretches: the best arm of the current one (an upper bound that
    no policy without the future reaches)."""

    name = "stretch-oracle"

    def __init__(
        self,
        requests: Sequence[SimRequest],
        hw: Hardware,
        arms: Sequence[Choice],
        skills: Skills = TEXTS,
    ) -> None:
        self._requests = {r.request_id: r for r in requests}
        self._hw, self._arms, self._skills = hw, list(arms), skills

    def choose(self, requests: Sequence[RequestView], load: LoadView) -> list[Choice]:
        return [self._best(view, load.num_running) for view in requests]

    def _best(self, view: RequestView, num_running: int) -> Choice:
        text = self._requests[view.request_id].text_at(view.num_output_tokens)
        return max(self._arms, key=lambda a: goodput(self._hw, text, a, num_running, self._skills))


def request_oracle(
    requests: Sequence[SimRequest],
    hw: Hardware,
    arms: Sequence[Choice],
    concurrency: int,
    skills: Skills = TEXTS,
) -> OraclePolicy:
    """The `oracle` policy as a benchmark fills it: every arm's tokens/s on every request
    (here expected, alone in its drafter's call), the best kept."""

    def seconds(r: SimRequest, arm: Choice) -> float:
        prefill = hw.drafter(arm.drafter).catchup * r.num_prompt_tokens if arm.drafter else 0.0
        return prefill + sum(
            n
            / expected_emitted(text, arm, skills)
            * expected_seconds(hw, text, arm, concurrency, skills)
            for text, n in r.segments
        )

    runs = {r.request_id: {a: r.num_tokens / seconds(r, a) for a in arms} for r in requests}
    return OraclePolicy.from_runs(runs)


def all_arms(hw: Hardware, draft_lengths: Sequence[int]) -> list[Choice]:
    return [NO_SPECULATION] + [Choice(d, k) for d in hw.drafter_names for k in draft_lengths]


# --- the comparison behind docs/design.md -----------------------------------------------------

PolicyFactory = Callable[[Hardware, Sequence[SimRequest], int, int], SelectionPolicy]


def compare(
    factories: dict[str, PolicyFactory],
    hw: Hardware,
    requests_of: Callable[[int], list[SimRequest]],
    concurrency: int,
    seeds: Sequence[int],
    arms: Sequence[Choice],
) -> dict[str, dict]:
    """Mean tokens/s and regret per policy over ``seeds`` (same requests for every policy)."""
    rows: dict[str, dict] = {}
    for seed in seeds:
        requests = requests_of(seed)
        for name, factory in factories.items():
            policy = factory(hw, requests, concurrency, seed)
            res = simulate(policy, requests, hw, arms, concurrency, seed)
            row = rows.setdefault(
                name, {"tokens_per_second": [], "regret": [], "choices": {}, "categories": []}
            )
            row["tokens_per_second"].append(res.tokens_per_second)
            row["categories"].append(res.category_tokens_per_second())
            row["regret"].append(res.regret / len(requests))
            for cat, counts in res.choices.items():
                row["choices"].setdefault(cat, Counter()).update(counts)
    return {
        name: {
            "tokens_per_second": sum(r["tokens_per_second"]) / len(seeds),
            "regret_per_request": sum(r["regret"]) / len(seeds),
            "choices": {c: dict(n.most_common(3)) for c, n in sorted(r["choices"].items())},
            "categories": {
                c: sum(per_seed[c] for per_seed in r["categories"]) / len(seeds)
                for c in r["categories"][0]
            },
        }
        for name, r in rows.items()
    }
