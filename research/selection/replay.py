"""Replaying recorded drafts: a policy against what the real drafters proposed on real requests.

Under greedy decoding a draft's fate is fixed by the target's own output: a draft proposed after
the first ``t`` output tokens keeps the longest prefix that matches ``output[t:]``, and a model
drafter's draft matches exactly as far as its greedy choices, made on the true prefix, agree with
the output. So one pass over real requests that records, at every output position, how many
tokens each drafter proposes and how many of them match (`TracedRequest`, written by
``benchmarks/selection_trace.py``) lets any policy be replayed on them exactly, in milliseconds;
only time is modelled (`CostModel`, measured on the same machine in the same pass). The
simulator (`simulate`) invents its drafters; this replays the real ones, so the two disagree
where the invented world is wrong (docs/design.md, "Drafter selection").

Each replayed step: the policy chooses for the one running request; a draft of ``k`` tokens is
the first ``k`` of the recorded proposal (a lookup's shorter draft is a prefix of its longer
one; a model drafter's round ``i`` depends only on the prefix it drafted on), its accepted
tokens the recorded match capped at ``k``; the request advances by the accepted tokens and
one more; the step costs the drafter's call (rounds, and catching up on the tokens it has not
seen) and the target's forward of ``k + 1`` tokens at the request's context length. Batch 1
only: under load the interaction of requests in one forward is what the simulator models.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from spinserve.selection.baselines import FixedPolicy
from spinserve.selection.cost import interpolate
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


@dataclass(frozen=True)
class TracedRequest:
    """One request's greedy output length and, per drafter and output position ``t`` (the
    first ``t`` output tokens committed), ``(proposed, matched)``: how many tokens the drafter
    proposes when asked for the recorded maximum, and how many of them match the output."""

    request_id: str
    category: str
    num_prompt_tokens: int
    num_output_tokens: int
    drafts: Mapping[str, Sequence[tuple[int, int]]]

    def __post_init__(self) -> None:
        for name, steps in self.drafts.items():
            if len(steps) != self.num_output_tokens:
                raise ValueError(
                    f"{self.request_id}: {name} has {len(steps)} positions, "
                    f"expected {self.num_output_tokens}"
                )
            if any(not 0 <= m <= p for p, m in steps):
                raise ValueError(f"{self.request_id}: {name} matched more than it proposed")

    @staticmethod
    def from_json(data: Mapping) -> TracedRequest:
        return TracedRequest(
            data["request_id"],
            data["category"],
            data["num_prompt_tokens"],
            data["num_output_tokens"],
            {name: [tuple(s) for s in steps] for name, steps in data["drafts"].items()},
        )

    def to_json(self) -> dict:
        return {
            "request_id": self.request_id,
            "category": self.category,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_output_tokens": self.num_output_tokens,
            "drafts": {name: [list(s) for s in steps] for name, steps in self.drafts.items()},
        }


@dataclass(frozen=True)
class DrafterCost:
    """A drafter's call for one request: ``call`` seconds plus ``per_round`` per draft token
    for a model drafter (one round each), once for a lookup; ``per_context`` more per round
    and per token of context; ``catchup`` per token it has not seen yet."""

    call: float
    per_round: float
    per_context: float = 0.0
    catchup: float = 0.0
    rounds: bool = True

    def seconds(self, k: int, context: int, catchup_tokens: int) -> float:
        rounds = k if self.rounds else 1
        per = self.per_round + self.per_context * context
        return self.call + rounds * per + self.catchup * catchup_tokens


@dataclass(frozen=True)
class CostModel:
    """Seconds of the target's forward of ``n`` tokens of one sequence at each measured
    context length (``forward[i][n - 1]`` at ``contexts[i]``, linear between them) and of
    each drafter's call."""

    contexts: tuple[int, ...]
    forward: tuple[tuple[float, ...], ...]
    drafters: Mapping[str, DrafterCost]

    def __post_init__(self) -> None:
        if not self.contexts or len(self.contexts) != len(self.forward):
            raise ValueError("one row of forward times per context length")
        if list(self.contexts) != sorted(set(self.contexts)):
            raise ValueError("context lengths must increase")
        if len({len(row) for row in self.forward}) != 1:
            raise ValueError("every context needs the same forward lengths")

    @property
    def max_tokens(self) -> int:
        """The longest forward measured (so the longest draft replayed is one less)."""
        return len(self.forward[0])

    def forward_seconds(self, context: int, num_tokens: int) -> float:
        if not 1 <= num_tokens <= self.max_tokens:
            raise ValueError(f"forward of {num_tokens} tokens not measured")
        column = [row[num_tokens - 1] for row in self.forward]
        return interpolate(self.contexts, column, context)

    def draft_seconds(self, drafter: str, k: int, context: int, catchup_tokens: int) -> float:
        return self.drafters[drafter].seconds(k, context, catchup_tokens)

    @staticmethod
    def from_json(data: Mapping) -> CostModel:
        return CostModel(
            tuple(data["contexts"]),
            tuple(tuple(row) for row in data["forward"]),
            {name: DrafterCost(**d) for name, d in data["drafters"].items()},
        )

    def to_json(self) -> dict:
        return {
            "contexts": list(self.contexts),
            "forward": [list(row) for row in self.forward],
            "drafters": {name: vars(d).copy() for name, d in self.drafters.items()},
        }


@dataclass
class ReplayResult:
    """Per request, output tokens after the first (which a prefill makes whatever the
    policy) and the seconds they took; the choices made."""

    tokens: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    category: dict[str, str] = field(default_factory=dict)
    choices: Counter = field(default_factory=Counter)

    def tokens_per_second(self, category: str | None = None) -> float:
        ids = [r for r in self.tokens if category is None or self.category[r] == category]
        return sum(self.tokens[r] for r in ids) / max(sum(self.seconds[r] for r in ids), 1e-12)


def calibration(cost: CostModel) -> tuple[list[StepTiming], list[DraftTiming]]:
    """What the engine would measure at start (`CALIBRATION_TOKENS`, one draft token after
    unseen sequences of `CALIBRATION_DRAFT_TOKENS`), from the model."""
    context = cost.contexts[0]
    steps = [
        StepTiming(cost.forward_seconds(context, n), n, 1)
        for n in CALIBRATION_TOKENS
        if n <= cost.max_tokens
    ]
    drafts = [
        DraftTiming(name, n, cost.draft_seconds(name, 1, n, n))
        for name in cost.drafters
        for n in CALIBRATION_DRAFT_TOKENS
    ]
    return steps, drafts


def replay(
    policy: SelectionPolicy, requests: Sequence[TracedRequest], cost: CostModel
) -> ReplayResult:
    """Run ``requests`` one after another (batch 1) under ``policy``; see the module
    docstring for what a step is and costs."""
    if policy.wants_step_costs:
        policy.calibrate(*calibration(cost))
    result = ReplayResult()
    load = LoadView(1)
    for request in requests:
        seen: dict[str, int] = defaultdict(int)  # drafter -> committed tokens it has seen
        t, seconds = 1, 0.0
        while t < request.num_output_tokens:
            context = request.num_prompt_tokens + t
            view = RequestView(request.request_id, request.num_prompt_tokens, t)
            [choice] = policy.choose([view], load)
            result.choices[choice.label] += 1
            drafted = accepted = 0
            draft_seconds = 0.0
            room = request.num_output_tokens - t - 1  # the engine's max_tokens cap
            budget = min(choice.num_draft_tokens, room, cost.max_tokens - 1)
            if budget > 0:  # (with no room the engine calls no drafter, tells no policy)
                name = choice.drafter
                proposed, matched = request.drafts[name][t]
                drafted = min(budget, proposed)
                accepted = min(matched, drafted)
                # after its last step it saw all but the bonus token, fed in round one
                catchup = max(context - seen[name] - 1, 0) if seen[name] else context
                draft_seconds = cost.draft_seconds(name, budget, context, catchup)
                seen[name] = context + accepted
            forward = cost.forward_seconds(context, drafted + 1)
            seconds += draft_seconds + forward
            if budget > 0 or choice.drafter is None:
                policy.observe(
                    [Feedback(request.request_id, choice, drafted, accepted, draft_seconds)],
                    StepTiming(forward, drafted + 1, 1),
                )
            t += accepted + 1
        policy.finish(request.request_id)
        result.tokens[request.request_id] = request.num_output_tokens - 1
        result.seconds[request.request_id] = seconds
        result.category[request.request_id] = request.category
    return result


def oracle(
    requests: Sequence[TracedRequest], cost: CostModel, arms: Sequence[Choice]
) -> ReplayResult:
    """Per request the fastest of ``arms`` played for the whole request (each request
    replayed alone under each fixed arm): the bound on choosing one arm per request."""
    result = ReplayResult()
    for request in requests:
        runs = [(replay(FixedPolicy(arm), [request], cost), arm) for arm in arms]
        best, arm = min(runs, key=lambda run: run[0].seconds[request.request_id])
        result.tokens.update(best.tokens)
        result.seconds.update(best.seconds)
        result.category.update(best.category)
        result.choices[arm.label] += 1
    return result


def hindsight(
    requests: Sequence[TracedRequest], cost: CostModel, drafters: Sequence[str]
) -> ReplayResult:
    """Per step the best of no draft and every drafter in ``drafters`` at every k, chosen
    knowing how many tokens each draft will pass, and no drafter ever paying to catch up:
    a bound on any policy over these drafters, even one that switches every step (a
    shortest path over a request's output positions, solved backwards)."""
    result = ReplayResult()
    lengths = range(1, cost.max_tokens)
    for request in requests:
        n = request.num_output_tokens
        best = [0.0] * (n + cost.max_tokens + 1)  # seconds from position t to the end
        pick: dict[int, Choice] = {}
        for t in range(n - 1, 0, -1):
            context = request.num_prompt_tokens + t
            best[t] = cost.forward_seconds(context, 1) + best[t + 1]
            pick[t] = NO_SPECULATION
            for name in drafters:
                proposed, matched = request.drafts[name][t]
                for k in lengths:
                    if k > n - t - 1:
                        break
                    drafted = min(k, proposed)
                    seconds = cost.draft_seconds(name, k, context, 0)
                    seconds += cost.forward_seconds(context, drafted + 1)
                    seconds += best[t + min(matched, drafted) + 1]
                    if seconds < best[t]:
                        best[t], pick[t] = seconds, Choice(name, k)
        t = 1
        while t < n:  # count the choices on the best path
            choice = pick[t]
            result.choices[choice.label] += 1
            if choice.drafter is not None:
                proposed, matched = request.drafts[choice.drafter][t]
                t += min(matched, proposed, choice.num_draft_tokens)
            t += 1
        result.tokens[request.request_id] = n - 1
        result.seconds[request.request_id] = best[1]
        result.category[request.request_id] = request.category
    return result


def shuffled(requests: Sequence[TracedRequest], seed: int) -> list[TracedRequest]:
    """The requests in another order (a policy that learns across requests depends on it)."""
    order = list(requests)
    random.Random(seed).shuffle(order)
    return order
