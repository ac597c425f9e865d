"""What a per-step predictor may read before verification, from a step recording, and the
online logistic regression that turns it into each draft token's pass chance.

A step recording (``benchmarks/selection_trace.py collect``, ``benchmarks/traces/step_trace.json``)
adds to each `TracedRequest` the evidence at every output position ``t`` (the first ``t``
output tokens committed): each drafter's proposal and per-token scores (`Draft.scores`), what
the suffix and n-gram drafts rest on (`SuffixDrafter.match_support`, `ngram_support`), and
teacher-forced confidences (top-1 probability, entropy, whether the argmax is the output token)
of the target and of the same-tokenizer model drafter at every position.

Labels are conditional: depth ``d`` of the draft made at ``t`` is an example only if depths
``< d`` passed, and it passed iff the recorded match is ``>= d``. A model drafter's own
confidence for its depth-``d`` token is its teacher-forced confidence at ``t + d - 1``: given
the earlier depths passed, its prefix there is the output's (exactly what its round computes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from research.selection.replay import TracedRequest

DEPTHS = 4  # depth one-hot: 1, 2, 3, 4 or more
TARGET = "target"


@dataclass(frozen=True)
class StepRequest:
    """A `TracedRequest` and the raw evidence the recording kept for it."""

    traced: TracedRequest
    evidence: Mapping

    @property
    def request_id(self) -> str:
        return self.traced.request_id

    def proposal(self, drafter: str, t: int) -> list[int]:
        return self.evidence["proposals"][drafter][t]

    def matched(self, drafter: str, t: int) -> int:
        return self.traced.drafts[drafter][t][1]

    def confidence(self, model: str, position: int) -> tuple[float, float]:
        """(top-1 probability, entropy) of ``model`` predicting output token ``position``."""
        rows = self.evidence["confidence"][model]
        top1, entropy, _ = rows[min(position, len(rows) - 1)]
        return top1, entropy


def load_steps(path: Path) -> list[StepRequest]:
    """The requests of a step recording, refused with its path if it has no evidence."""
    data = json.loads(Path(path).read_text())
    if "proposals" not in data["requests"][0]:
        raise SystemExit(f"{path}: no per-step evidence (record it with selection_trace collect)")
    return [StepRequest(TracedRequest.from_json(r), r) for r in data["requests"]]


def load_recordings(paths: Sequence[Path]) -> list[StepRequest]:
    """The requests of several step recordings, in order; a prompt recorded twice counts
    once, as its first recording has it."""
    steps: dict[str, StepRequest] = {}
    for path in paths:
        steps |= {s.request_id: s for s in load_steps(path) if s.request_id not in steps}
    return list(steps.values())


def logit(p: float, bound: float = 0.02) -> float:
    p = min(max(p, bound), 1 - bound)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -30 else 0.0


@dataclass
class History:
    """One request's recent steps: the played draft's outcome last step, and per drafter an
    average and the latest of its first token passing (lookups scored every step, model
    drafters when played)."""

    accepted_fraction: float = 0.5
    all_passed: float = 0.0
    first_pass: dict[str, float] = field(default_factory=dict)
    last_first: dict[str, float] = field(default_factory=dict)

    def played(self, num_drafted: int, num_accepted: int) -> None:
        if num_drafted:
            self.accepted_fraction = num_accepted / num_drafted
            self.all_passed = float(num_accepted == num_drafted)

    def scored(self, drafter: str, passed: bool, rate: float = 0.3) -> None:
        old = self.first_pass.get(drafter, 0.5)
        self.first_pass[drafter] = old + rate * (float(passed) - old)
        self.last_first[drafter] = float(passed)


def common_features(
    step: StepRequest,
    drafter: str,
    t: int,
    depth: int,
    history: History,
    lookups: Sequence[str],
    target: bool = True,
) -> list[float]:
    """What is known before drafting: depth, the target's confidence in the last committed
    token (zeros without ``target``), the request's recent steps, whether the lookups agree,
    the context length."""
    one_hot = [0.0] * DEPTHS
    one_hot[min(depth, DEPTHS) - 1] = 1.0
    top1, entropy = step.confidence(TARGET, t - 1) if target else (0.5, 0.0)
    firsts = [step.proposal(name, t)[:1] for name in lookups]
    agree = len(firsts) > 1 and firsts[0] != [] and all(f == firsts[0] for f in firsts)
    return [
        1.0,
        *one_hot,
        logit(top1),
        entropy,
        history.accepted_fraction,
        history.all_passed,
        logit(history.first_pass.get(drafter, 0.5)),
        history.last_first.get(drafter, 0.5),
        float(agree),
        math.log(step.traced.num_prompt_tokens + t) / 8,
    ]


def own_features(
    step: StepRequest,
    drafter: str,
    t: int,
    depth: int,
    others: Sequence[str],
    support: bool = True,
) -> list[float]:
    """What the drafter's draft itself says about its depth-``depth`` token (known after
    drafting): its score, what the score rests on (zeros without ``support``), and whether
    other drafters agree."""
    token = step.proposal(drafter, t)[depth - 1]
    votes = [step.proposal(o, t)[depth - 1 : depth] for o in others]
    agreement = sum(v == [token] for v in votes) - sum(v not in ([], [token]) for v in votes)
    scores = step.evidence["scores"][drafter][t]
    if drafter == "suffix":
        score = scores[depth - 1]
        before = scores[depth - 2] if depth > 1 else 1.0
        rests_on = step.evidence["support"]["suffix"][t] if support else [[0, 0], [0, 0]]
        (own_len, own_count), (seen_len, seen_count) = rests_on
        own = [
            logit(score),
            logit(score / before),
            own_len / 2,
            math.log1p(own_count) / 2,
            seen_len / 2,
            math.log1p(seen_count) / 2,
        ]
    elif drafter == "ngram":
        n, occurrences, agreeing = step.evidence["support"]["ngram"][t]
        occurrences, agreeing = (occurrences, agreeing) if support else (0, 0)
        own = [n, math.log1p(occurrences), agreeing / occurrences if occurrences else 0.0]
    elif drafter in step.evidence["confidence"]:
        top1, entropy = step.confidence(drafter, t + depth - 1)
        lowest = min(step.confidence(drafter, t + j)[0] for j in range(depth))
        own = [logit(top1), entropy, logit(lowest)]
    else:
        own = []
    return [float(agreement), *own]


class OnlineLogistic:
    """Logistic regression by stochastic gradient steps, one example at a time: microseconds a
    prediction, calibrated by the log loss it descends. The step size falls with the updates
    to a floor that keeps following a change of text; ``l2`` keeps the weights small."""

    def __init__(
        self,
        learning_rate: float = 0.05,
        floor: float = 0.005,
        l2: float = 1e-4,
        bias: float = 0.0,
    ) -> None:
        """``bias``: the starting log-odds (the first feature is the constant 1)."""
        self.learning_rate, self.floor, self.l2, self.bias = learning_rate, floor, l2, bias
        self.weights: list[float] = []
        self.num_updates = 0

    def predict(self, x: Sequence[float]) -> float:
        if not self.weights:
            self.weights = [self.bias] + [0.0] * (len(x) - 1)
        return sigmoid(sum(w * xi for w, xi in zip(self.weights, x, strict=True)))

    def learn(self, x: Sequence[float], label: float) -> None:
        g = self.predict(x) - label
        rate = max(self.floor, self.learning_rate / math.sqrt(1 + self.num_updates / 50))
        for i, xi in enumerate(x):
            self.weights[i] -= rate * (g * xi + self.l2 * self.weights[i])
        self.num_updates += 1


def auc(probs: Sequence[float], labels: Sequence[float]) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes.

    >>> auc([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    0.75
    """
    pairs = sorted(zip(probs, labels, strict=True))
    positives = sum(labels)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return None
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mean_rank = (i + j + 1) / 2  # ranks i+1..j
        rank_sum += mean_rank * sum(label for _, label in pairs[i:j])
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def log_loss(probs: Sequence[float], labels: Sequence[float]) -> float:
    eps = 1e-6
    return -sum(
        y * math.log(max(p, eps)) + (1 - y) * math.log(max(1 - p, eps))
        for p, y in zip(probs, labels, strict=True)
    ) / max(len(labels), 1)
