"""Per step, per request: which lookup draft to play and how far, from what is known before
verification. No torch.

The lookup drafters (n-gram, suffix) propose for every decoding request every step: their
drafts cost microseconds. A `StepPredictor` turns each draft into the chance that each of its
tokens passes given the ones before did, from features known before verification: the
drafter's own score of the token (the suffix counts' path probability, the n-gram's match
length), the depth, whether the other lookup proposes the same token, and how the request's
recent steps went. `best_draft` then plays the drafter and k (none included) that maximise
expected tokens per second of the forward, so a step drafts exactly where a draft pays.

Learning is full-information: after verification every lookup draft made that step is
scored against the tokens the target emitted, played or not (HedgeSpec's observation that
choosing among drafters is not a bandit problem once all drafts are scored). Depth j of a
draft is labelled when the emitted tokens reach it: it passed iff it equals the emitted token
there, given every earlier one did.

Worked example. Suffix proposes [5, 7, 2] with path probabilities (0.9, 0.8, 0.3); the
predictor says the conditional pass chances are (0.85, 0.8, 0.35). Expected tokens for k =
0..3 are 1, 1.85, 2.53, 2.77; with a forward costing 1.0, 1.05, 1.10, 1.16 decodes for 1..4
rows, tokens per decode are 1, 1.76, 2.30, 2.39: play k = 3. A first pass chance of 0.03
would make k = 0 the best: one more row costs 5% of a decode, so one draft token pays from a
pass chance of 5% (on this CPU a 2-row step of the Qwen 1.5B costs ~1.07 decodes, 9 rows 2.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

MAX_LOOKUP_DRAFT = 8  # tokens asked of each lookup drafter per step
_DEPTHS = 4  # depth features: 1, 2, 3, 4 or more
_NUM_FEATURES = 8 + _DEPTHS


@dataclass(frozen=True)
class Lookup:
    """One lookup drafter's draft this step: tokens and the drafter's per-token scores."""

    drafter: str
    token_ids: tuple[int, ...]
    scores: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass
class RequestMemory:
    """What a request's recent steps say: the played draft's outcome last step, and per
    lookup drafter a moving average of its first token passing (scored every step)."""

    last_accepted_fraction: float = 0.5
    last_all_passed: float = 0.0
    first_pass: dict[str, float] = field(default_factory=dict)

    def observed(self, num_drafted: int, num_accepted: int) -> None:
        if num_drafted:
            self.last_accepted_fraction = num_accepted / num_drafted
            self.last_all_passed = float(num_accepted == num_drafted)

    def learned(self, lookups: Sequence[Lookup], emitted: Sequence[int], rate: float = 0.2) -> None:
        """Move each lookup's first-token pass average toward this step's outcome."""
        if not emitted:
            return
        for lk in lookups:
            passed = float(lk.token_ids[0] == emitted[0])
            old = self.first_pass.get(lk.drafter, 0.5)
            self.first_pass[lk.drafter] = old + rate * (passed - old)


def features(
    lookup: Lookup, depth: int, others: Sequence[Lookup], memory: RequestMemory
) -> list[float]:
    """The feature vector of ``lookup``'s token at ``depth`` (1-based)."""
    score = lookup.scores[depth - 1] if depth <= len(lookup.scores) else 0.0
    before = lookup.scores[depth - 2] if 1 < depth <= len(lookup.scores) + 1 else 1.0
    token = lookup.token_ids[depth - 1]
    agree = any(depth <= len(o) and o.token_ids[depth - 1] == token for o in others)
    disagree = any(depth <= len(o) and o.token_ids[depth - 1] != token for o in others)
    one_hot = [0.0] * _DEPTHS
    one_hot[min(depth, _DEPTHS) - 1] = 1.0
    return [
        1.0,
        score,
        _logit(score),
        _logit(score / before if before > 0 else 0.0),
        float(agree) - float(disagree),
        memory.last_accepted_fraction,
        memory.last_all_passed,
        _logit(memory.first_pass.get(lookup.drafter, 0.5)),
        *one_hot,
    ]


def _logit(p: float) -> float:
    p = min(max(p, 1e-3), 1 - 1e-3)
    return math.log(p / (1 - p))


def _dot(w: Sequence[float], x: Sequence[float]) -> float:
    return sum(a * b for a, b in zip(w, x, strict=True))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -30 else 0.0


class StepPredictor:
    """Online logistic regression per lookup drafter: P(token j passes | tokens < j passed).

    One weight vector per drafter, learned by stochastic gradient steps on every labelled
    depth of every draft, the step size falling from ``learning_rate`` with the drafter's
    updates to a floor (``min_learning_rate``) that keeps it following a change of text
    (replayed on recorded drafts, a start of 0.2 chased single steps: its held-out log loss
    was worse than a constant's);
    ``l2`` keeps the weights small. Starts from a prior that trusts the drafter's score and
    the last step, so its first steps are sensible before any data."""

    def __init__(
        self, learning_rate: float = 0.1, min_learning_rate: float = 0.01, l2: float = 1e-4
    ) -> None:
        self.learning_rate = learning_rate
        self.min_learning_rate = min_learning_rate
        self.l2 = l2
        self._weights: dict[str, list[float]] = {}
        self._updates: dict[str, int] = {}
        self.num_updates = 0

    def _w(self, drafter: str) -> list[float]:
        w = self._weights.get(drafter)
        if w is None:
            w = self._weights[drafter] = [0.0] * _NUM_FEATURES
            w[0], w[2], w[6] = -0.5, 0.8, 0.8  # bias, logit(score), last step passed whole
        return w

    def pass_probs(
        self, lookup: Lookup, others: Sequence[Lookup], memory: RequestMemory
    ) -> list[float]:
        """Conditional pass chance of each token of ``lookup``, in order."""
        w = self._w(lookup.drafter)
        return [
            _sigmoid(_dot(w, features(lookup, j, others, memory)))
            for j in range(1, len(lookup) + 1)
        ]

    def learn(
        self,
        lookup: Lookup,
        others: Sequence[Lookup],
        memory: RequestMemory,
        emitted: Sequence[int],
    ) -> None:
        """Gradient steps on each depth of ``lookup`` that ``emitted`` reaches."""
        w = self._w(lookup.drafter)
        for depth, label in labels(lookup.token_ids, emitted):
            x = features(lookup, depth, others, memory)
            g = _sigmoid(_dot(w, x)) - label
            n = self._updates.get(lookup.drafter, 0)
            rate = max(self.min_learning_rate, self.learning_rate / math.sqrt(1 + n / 50))
            for i, xi in enumerate(x):
                w[i] -= rate * (g * xi + self.l2 * w[i])
            self._updates[lookup.drafter] = n + 1
            self.num_updates += 1


def labels(draft: Sequence[int], emitted: Sequence[int]) -> list[tuple[int, float]]:
    """(depth, passed) for each depth of ``draft`` the emitted tokens decide: every depth up
    to and including the first mismatch, within the emitted tokens.

    >>> labels([5, 7, 2], [5, 7, 9]), labels([5, 7], [4]), labels([5, 7], [5])
    ([(1, 1.0), (2, 1.0), (3, 0.0)], [(1, 0.0)], [(1, 1.0)])
    """
    out = []
    for depth, (d, e) in enumerate(zip(draft, emitted, strict=False), start=1):
        out.append((depth, float(d == e)))
        if d != e:
            break
    return out


def best_draft(
    options: Mapping[str, Sequence[float]], step_seconds: Callable[[int], float]
) -> tuple[str | None, int, float]:
    """The drafter and k (``(None, 0)``: no draft) of the highest expected tokens per second,
    and that rate. ``options``: per drafter, the conditional pass chance of each draft
    token; ``step_seconds(n)``: this request's share of a forward with n of its tokens.

    >>> cost = {1: 1.0, 2: 1.05, 3: 1.1, 4: 1.16}.__getitem__
    >>> best_draft({"suffix": [0.85, 0.8, 0.35]}, cost)[:2]
    ('suffix', 3)
    >>> best_draft({"suffix": [0.03, 0.8]}, cost)[:2]
    (None, 0)
    """
    best: tuple[str | None, int, float] = (None, 0, 1.0 / step_seconds(1))
    for drafter, probs in options.items():
        expected, reach = 1.0, 1.0
        for k, p in enumerate(probs, start=1):
            reach *= p
            expected += reach
            rate = expected / step_seconds(1 + k)
            if rate > best[2]:
                best = (drafter, k, rate)
    return best
