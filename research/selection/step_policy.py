"""A per-step policy over a step recording: predict each draft token's pass chance, then play
the drafter and k (none included) of the highest expected tokens per second.

Lookup drafts (n-gram, suffix) cost microseconds, so every step sees them before choosing and
scores them afterwards against the emitted tokens, played or not. A model drafter's draft is
known only once paid for: the policy first predicts its pass chances from what is known before
drafting (a ``pre`` model: the target's confidence, the request's recent steps, whether the
lookups agree) and starts it only if that beats the best lookup and no draft; then, round by
round, it reads the drafter's own confidence (a ``post`` model) and stops drafting where one
more round no longer raises the expected rate. Every round run is verified, so the replay
charges exactly the rounds spent.

``predictor``: ``learned`` (`OnlineLogistic` per drafter and stage, learning on every
labelled depth as the replay goes), ``oracle`` (the recorded outcome: the bound of this
decision rule) or a float AUC (a calibrated synthetic predictor of that AUC: what a better
predictor would buy).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence

from research.selection.replay import CostModel
from research.selection.step_features import (
    History,
    OnlineLogistic,
    StepRequest,
    common_features,
    logit,
    own_features,
    sigmoid,
)
from spinserve.selection.policy import (
    NO_SPECULATION,
    Choice,
    Feedback,
    LoadView,
    RequestView,
    StepTiming,
)
from spinserve.selection.step_gate import Lookup, RequestMemory, StepPredictor, best_draft

LOOKUPS = ("ngram", "suffix")


def base_rates(steps: Sequence[StepRequest]) -> dict[tuple[str, int], float]:
    """Per drafter and depth (1..4, 4 = 4 or more) the pass rate of conditional examples."""
    counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for step in steps:
        for name, rows in step.traced.drafts.items():
            for proposed, matched in rows:
                for d in range(1, min(proposed, matched + 1) + 1):
                    counts[(name, min(d, 4))][0] += matched >= d
                    counts[(name, min(d, 4))][1] += 1
    return {key: (passed + 1) / (total + 2) for key, (passed, total) in counts.items()}


class StepPolicy:
    """See the module docstring; a `SelectionPolicy` for `replay.replay` at batch 1."""

    wants_step_costs = False

    def __init__(
        self,
        steps: Mapping[str, StepRequest],
        cost: CostModel,
        predictor: str | float = "learned",
        seed: int = 0,
        max_draft: int | None = None,
        base: Mapping[tuple[str, int], float] | None = None,
        objective: str = "rate",
        without: frozenset[str] = frozenset(),
    ) -> None:
        """``without``: feature groups left out (``target``: the target's confidence;
        ``support``: what a lookup draft rests on), to measure what they are worth."""
        if objective not in ("rate", "profit"):
            raise ValueError(f"objective must be rate or profit, got {objective!r}")
        self.name = f"step[{predictor}]"
        self.objective = objective
        self.without = without
        # the long-run tokens/s so far (ratio of moving sums), the price of a second
        self._tokens, self._seconds_sum = 1.0, cost.forward_seconds(cost.contexts[0], 1)
        self.steps, self.cost, self.predictor = steps, cost, predictor
        self.max_draft = min(max_draft or cost.max_tokens - 1, cost.max_tokens - 1)
        self.drafters = list(cost.drafters)
        self.lookups = [d for d in self.drafters if d in LOOKUPS]
        # a model drafter learns only where played: start it hopeful (log-odds 2, p = 0.88)
        self.models = {
            (d, stage): OnlineLogistic(bias=2.0 if d not in self.lookups else 0.0)
            for d in self.drafters
            for stage in ("pre", "post")
        }
        self.history: dict[str, History] = defaultdict(History)
        self.seen: dict[str, dict[str, int]] = defaultdict(dict)
        self.pending: dict[str, tuple[int, dict]] = {}
        self.base = base or {}
        self.rng = random.Random(seed)
        # (request id, drafter, stage, depth, predicted, label, features): every labelled
        # prediction, made before learning from it
        self.log: list[tuple[str, str, str, int, float, float, list[float]]] = []

    def calibrate(self, steps: Sequence[StepTiming], drafts: Sequence) -> None:
        pass

    # ------------------------------------------------------------ prediction

    def _prob(self, step: StepRequest, drafter: str, stage: str, t: int, d: int, x) -> float:
        if self.predictor == "learned":
            return self.models[(drafter, stage)].predict(x)
        passed = step.matched(drafter, t) >= d
        if self.predictor == "oracle":
            return float(passed)
        # two unit-variance normals 2a apart have AUC Phi(sqrt(2) a); the posterior is exact
        a = _inverse_phi(float(self.predictor)) / math.sqrt(2)
        s = self.rng.gauss(a if passed else -a, 1.0)
        return sigmoid(logit(self.base.get((drafter, min(d, 4)), 0.5), 1e-4) + 2 * a * s)

    def _features(self, step: StepRequest, drafter: str, t: int, d: int, stage: str) -> list:
        history, target = self.history[step.request_id], "target" not in self.without
        x = common_features(step, drafter, t, d, history, self.lookups, target)
        if stage == "post":
            others = [o for o in self.lookups if o != drafter]
            x += own_features(step, drafter, t, d, others, "support" not in self.without)
        return x

    # ------------------------------------------------------------ choosing

    def _seconds(self, drafter: str | None, k: int, drafted: int, context: int, rid: str) -> float:
        if drafter is None:
            return self.cost.forward_seconds(context, 1)
        seen = self.seen[rid].get(drafter, 0)
        catchup = max(context - seen - 1, 0) if seen else context
        draft = self.cost.draft_seconds(drafter, k, context, catchup)
        return draft + self.cost.forward_seconds(context, drafted + 1)

    def value(self, expected: float, seconds: float) -> float:
        """``rate``: this step's expected tokens/s; ``profit``: expected tokens less the
        seconds priced at the long-run rate (Dinkelbach: what maximises the long-run rate,
        where a step's own ratio favours short safe drafts)."""
        if self.objective == "rate":
            return expected / seconds
        return expected - seconds * self._tokens / self._seconds_sum

    def _best_k(self, drafter: str, probs: Sequence[float], context: int, rid: str):
        best, expected, reach = (-math.inf, 0), 1.0, 1.0
        for k, p in enumerate(probs, start=1):
            reach *= p
            expected += reach
            best = max(best, (self.value(expected, self._seconds(drafter, k, k, context, rid)), k))
        return best

    def choose(self, requests: Sequence[RequestView], load: LoadView) -> list[Choice]:
        return [self._choose_one(view) for view in requests]

    def _choose_one(self, view: RequestView) -> Choice:
        rid, t = view.request_id, view.num_output_tokens
        step, context = self.steps[rid], view.num_prompt_tokens + t
        examples: dict[str, list] = {}
        best = (self.value(1.0, self._seconds(None, 0, 0, context, rid)), NO_SPECULATION)
        for name in self.lookups:
            proposal = step.proposal(name, t)[: self.max_draft]
            xs = [self._features(step, name, t, d, "post") for d in range(1, len(proposal) + 1)]
            probs = [self._prob(step, name, "post", t, d, x) for d, x in enumerate(xs, 1)]
            pairs = zip(xs, probs, strict=True)
            examples[name] = [("post", d, x, p) for d, (x, p) in enumerate(pairs, 1)]
            rate, k = self._best_k(name, probs, context, rid)
            if k and rate > best[0]:
                best = (rate, Choice(name, k))
        for name in self.drafters:
            if name not in self.lookups:
                best = self._model_option(step, name, t, context, best, examples)
        self.pending[rid] = (t, examples)
        return best[1]

    def _model_option(self, step, name: str, t: int, context: int, best, examples) -> tuple:
        """``best`` or the model drafter ``name`` drafting as far as its rounds keep paying."""
        rid, depths = step.request_id, range(1, self.max_draft + 1)
        pre_x = [self._features(step, name, t, d, "pre") for d in depths]
        pre = [self._prob(step, name, "pre", t, d, x) for d, x in zip(depths, pre_x, strict=True)]
        rate, k = self._best_k(name, pre, context, rid)
        proposal = step.proposal(name, t)[: self.max_draft]
        if not k or rate <= best[0] or not proposal:
            return best
        own = name in step.evidence["confidence"]
        chosen, expected, reach, rows = k, 1.0, 1.0, []
        if own:  # round by round: stop where one more round lowers the expected rate
            for d in range(1, len(proposal) + 1):
                x = self._features(step, name, t, d, "post")
                p = self._prob(step, name, "post", t, d, x)
                rows.append(("post", d, x, p))
                reach *= p
                expected += reach
                chosen = d
                now = self.value(expected, self._seconds(name, d, d, context, rid))
                if d == len(proposal) or d == self.max_draft:
                    break
                longer = self._seconds(name, d + 1, d + 1, context, rid)
                if self.value(expected + reach * pre[d], longer) <= now:
                    break
        chosen = min(chosen, len(proposal))
        examples[name] = rows + [("pre", d, pre_x[d - 1], pre[d - 1]) for d in depths]
        return (rate, Choice(name, chosen))

    # ------------------------------------------------------------ learning

    def observe(self, feedback: Sequence[Feedback], timing: StepTiming) -> None:
        for fb in feedback:
            self._learn(fb)
            decay = 0.99
            self._tokens = decay * self._tokens + fb.num_emitted
            self._seconds_sum = decay * self._seconds_sum + fb.draft_seconds
            self._seconds_sum += timing.forward_seconds

    def _learn(self, fb: Feedback) -> None:
        rid = fb.request_id
        t, examples = self.pending.pop(rid)
        step, history = self.steps[rid], self.history[rid]
        played = fb.choice.drafter
        for name, rows in examples.items():
            if name not in self.lookups and name != played:
                continue  # a model drafter's draft exists only when played
            matched = step.matched(name, t)
            limit = fb.num_drafted if name == played else self.max_draft
            for stage, d, x, p in rows:
                if d > min(matched + 1, fb.num_accepted + 1, limit):
                    continue
                label = float(matched >= d)
                self.log.append((rid, name, stage, d, p, label, x))
                if self.predictor == "learned":
                    self.models[(name, stage)].learn(x, label)
            if step.proposal(name, t):
                history.scored(name, matched >= 1)
        if played is not None:
            history.played(fb.num_drafted, fb.num_accepted)
            context = step.traced.num_prompt_tokens + t
            self.seen[rid][played] = context + fb.num_accepted

    def finish(self, request_id: str) -> None:
        self.history.pop(request_id, None)
        self.seen.pop(request_id, None)
        self.pending.pop(request_id, None)


def _inverse_phi(q: float) -> float:
    """The standard normal quantile, by bisection (only a few calls)."""
    low, high = -8.0, 8.0
    for _ in range(60):
        mid = (low + high) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < q:
            low = mid
        else:
            high = mid
    return (low + high) / 2


class ShippedGatePolicy(StepPolicy):
    """The step gate as shipped (`spinserve.selection.step_gate`: its features, its
    `StepPredictor`, its `best_draft` on this step's seconds), over the lookups only: the
    same replay tells what the served gate's form is worth against `StepPolicy`."""

    def __init__(
        self, steps: Mapping[str, StepRequest], cost: CostModel, learning_rate: float | None = None
    ) -> None:
        lookups = {d: cost.drafters[d] for d in cost.drafters if d in LOOKUPS}
        super().__init__(steps, CostModel(cost.contexts, cost.forward, lookups))
        self.name = "step-gate"
        self.gate = StepPredictor() if learning_rate is None else StepPredictor(learning_rate)
        self.memory: dict[str, RequestMemory] = defaultdict(RequestMemory)

    def _lookups(self, step: StepRequest, t: int) -> list[Lookup]:
        out = []
        for name in self.lookups:
            ids = step.proposal(name, t)[: self.max_draft]
            scores = (step.evidence["scores"][name][t] or [])[: len(ids)]
            if ids:
                out.append(Lookup(name, tuple(ids), (*scores, *[0.0] * (len(ids) - len(scores)))))
        return out

    def _choose_one(self, view: RequestView) -> Choice:
        rid, t = view.request_id, view.num_output_tokens
        step, context = self.steps[rid], view.num_prompt_tokens + t
        lookups, memory = self._lookups(step, t), self.memory[rid]
        options = {
            lk.drafter: self.gate.pass_probs(lk, [o for o in lookups if o is not lk], memory)
            for lk in lookups
        }
        seconds = self.cost.forward_seconds
        drafter, k, _ = best_draft(options, lambda n: seconds(context, n))
        self.pending[rid] = (t, {})
        return NO_SPECULATION if drafter is None else Choice(drafter, k)

    def _learn(self, fb: Feedback) -> None:
        rid = fb.request_id
        t, _ = self.pending.pop(rid)
        step, memory = self.steps[rid], self.memory[rid]
        emitted = step.evidence["output_ids"][t : t + fb.num_accepted + 1]
        lookups = self._lookups(step, t)
        for lk in lookups:
            self.gate.learn(lk, [o for o in lookups if o is not lk], memory, emitted)
        memory.learned(lookups, emitted)
        if fb.choice.drafter is not None:
            memory.observed(fb.num_drafted, fb.num_accepted)

    def finish(self, request_id: str) -> None:
        self.memory.pop(request_id, None)
        super().finish(request_id)
