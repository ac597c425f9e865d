"""`spin`: each request a bandit over drafters (and no speculation), whose reward is goodput,
warm-started from a shared prior, restarted when its text changes.

Goodput of a choice is estimated as a ratio of means, E[tokens emitted] / E[seconds]: the
long-run tokens/s of playing it (renewal-reward), not the mean of per-step ratios. The two
halves are learned where they vary:

- tokens emitted depend on the request and the drafter (how predictable the text is to it),
  not on the load: per request and drafter, as three acceptance rates (`acceptance`) with
  Beta beliefs that start from a prior learned from finished requests (`prior`). One step
  of any k informs every k, and the step's k is the best for the rates;
- seconds depend on the drafter, k and the load, not on the request: drafting seconds as a
  line in k per drafter and load bucket, the cost of catching a drafter up on the tokens it
  has not seen (a model drafter's prefill of a long prompt), shared by the tokens the request
  is still expected to emit (`horizon`), and the request's marginal share of the forward
  (`cost`) at the current batch size (alone in the forward: the measured curve of a
  one-sequence step, which is far from a line on a CPU; the forward priced over the drafter
  proposing or not). Under a big batch each extra token's share grows
  against the fixed part, so shorter drafts or none win by themselves. The forward's line
  and each drafter's catch-up per token are measured when the engine starts (`calibrate`),
  so a cold request with a long prompt is not where spin learns that a prefill is dear.

Each step draws the rates from the beliefs (Thompson sampling, the spread narrowed to 0.35),
takes the (drafter, k) of the highest drawn goodput, and speculates only if that beats one
token per forward share (no speculation needs no learning). A CUSUM of the played drafter's tokens
against its prediction detects a new stretch of text (easy to hard, prose to code) and drops
the request's statistics; a slow discount (0.99 per step) retires what a request that stopped
speculating knew. Under load a request drafts only where its posterior means would too (see
`SpinPolicy._choose_one`). The defaults are what the simulator chose among the alternatives in
``research/selection`` (other rules and arm models, `variants`), and the exploration and draft
lengths what replaying real drafts chose (docs/design.md, "Drafter selection").
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from spinserve.config.selection import SpinParams
from spinserve.selection.arms import ArmModel, DrafterArms, RequestState, Shared
from spinserve.selection.cost import DraftCost, ForwardCost, load_bucket
from spinserve.selection.horizon import RemainingOutput
from spinserve.selection.policy import (
    NO_SPECULATION,
    Choice,
    DraftTiming,
    Feedback,
    LoadView,
    RequestView,
    StepTiming,
)
from spinserve.selection.prior import SharedPrior
from spinserve.selection.step_gate import (
    Lookup,
    RequestMemory,
    StepPredictor,
    best_draft,
)

__all__ = ["SpinParams", "SpinPolicy"]


class SpinPolicy:
    """The learning policy of the module docstring, one bandit state per running request."""

    name = "spin"
    wants_step_costs = True

    def __init__(
        self,
        drafters: Sequence[str],
        params: SpinParams | None = None,
        arms: type[ArmModel] = DrafterArms,
    ) -> None:
        """``arms``: the arm model (`DrafterArms`; research passes its alternatives)."""
        if not drafters:
            raise ValueError("spin needs at least one drafter")
        self.params = p = params or SpinParams()
        prior = SharedPrior(arms.default_prior(p), p.max_prior_weight, p.prior_memory)
        horizon = RemainingOutput(p.output_tokens)
        self.shared = Shared(p, ForwardCost(), DraftCost(), horizon, prior, random.Random(p.seed))
        self.model = arms(drafters, self.shared)
        self._requests: dict[str, RequestState] = {}
        self.predictor = StepPredictor()
        self.gates_steps = p.step_gate
        self._memory: dict[str, RequestMemory] = {}

    def _state(self, request_id: str) -> RequestState:
        state = self._requests.get(request_id)
        if state is None:
            state = self._requests[request_id] = self.model.new_state()
        return state

    def choose(self, requests: Sequence[RequestView], load: LoadView) -> list[Choice]:
        bucket = load_bucket(load.num_running)
        no_spec = 1.0 / max(self.shared.forward.share(load.num_running, 1.0), 1e-12)
        choices = []
        for view in requests:
            state = self._state(view.request_id)
            state.step += 1
            state.bucket = bucket
            state.num_tokens = view.num_prompt_tokens + view.num_output_tokens
            state.num_output_tokens = view.num_output_tokens
            choice = self._choose_one(state, load.num_running, no_spec)
            state.chose(choice)
            choices.append(choice)
        return choices

    def _choose_one(self, state: RequestState, num_running: int, no_spec: float) -> Choice:
        """The best drawn choice if it beats no speculation; with other requests in the
        forward, only if its posterior means would take it too. Under load a draft token
        must be accepted far more often to pay, so a draw the means would not take rarely
        finds an arm that does, and the rates come from batch 1 through the shared prior
        instead: on the real models under 8 concurrent requests this beat exploring in every
        round measured (docs/design.md, "Drafter selection")."""
        choice, score = self.model.best(state, num_running)
        if score <= no_spec:
            return NO_SPECULATION
        if num_running > 1:
            _, mean_score = self.model.best(state, num_running, explore=False)
            if mean_score <= no_spec:
                return NO_SPECULATION
        return choice

    def calibrate(
        self, timings: Sequence[StepTiming], draft_timings: Sequence[DraftTiming] = ()
    ) -> None:
        """Seed the forward's cost line and each drafter's catch-up per token. Without the
        line extra tokens look free and every request pays to learn otherwise, which under
        load is most of a short request's steps; without the catch-up the first switch to a
        model drafter on a long prompt looks free and pays its prefill (docs/design.md,
        "Drafter selection")."""
        for timing in timings:
            self.shared.forward.add_step(timing)
        points: dict[str, list[tuple[int, float]]] = {}
        for t in draft_timings:
            points.setdefault(t.drafter, []).append((t.num_tokens, t.seconds))
        for drafter, drafter_points in points.items():
            self.shared.draft.calibrate(drafter, drafter_points)

    def observe(self, feedback: Sequence[Feedback], timing: StepTiming) -> None:
        self.shared.forward.add_step(timing)
        for fb in feedback:
            state = self._state(fb.request_id)
            state.num_emitted = fb.num_emitted
            d, k = fb.choice.drafter, fb.choice.num_draft_tokens
            if d is not None and state.catchup:
                self.shared.draft.add_catchup(d, state.bucket, k, state.catchup, fb.draft_seconds)
            elif d is not None:
                self.shared.draft.add(d, state.bucket, k, fb.draft_seconds)
            self.model.record(state, fb, timing)

    def gate(
        self, request_id: str, lookups: Sequence[Lookup], choice: Choice, num_running: int
    ) -> Choice:
        """The lookup draft and k of the highest expected tokens per second this step, or
        none (`step_gate`): the request's own rates chose among drafters and none, the step's
        drafts and their scores decide whether and how far a lookup pays now. Under load the
        request's own check stands (no speculation stays none; see `_choose_one`) and drafts
        are at most spin's longest k: there a draft token must pass far more often to pay,
        and the predictor's errors cost every request in the forward."""
        if num_running > 1 and not choice.speculates:
            return choice
        memory = self._memory.setdefault(request_id, RequestMemory())
        longest = max(self.params.draft_lengths) if num_running > 1 else None
        options = {}
        for lk in lookups:
            probs = self.predictor.pass_probs(lk, [o for o in lookups if o is not lk], memory)
            options[lk.drafter] = probs[:longest]
        forward = self.shared.forward
        drafter, k, _ = best_draft(options, lambda n: forward.share(num_running, n))
        gated = NO_SPECULATION if drafter is None else Choice(drafter, k)
        state = self._requests.get(request_id)
        if state is not None and gated != choice:
            state.chose(gated)
        return gated

    def learn_lookups(
        self,
        request_id: str,
        lookups: Sequence[Lookup],
        emitted: Sequence[int],
        num_drafted: int,
        num_accepted: int,
    ) -> None:
        memory = self._memory.setdefault(request_id, RequestMemory())
        for lk in lookups:
            others = [o for o in lookups if o is not lk]
            self.predictor.learn(lk, others, memory, emitted)
        memory.learned(lookups, emitted)
        memory.observed(num_drafted, num_accepted)

    def finish(self, request_id: str) -> None:
        self._memory.pop(request_id, None)
        state = self._requests.pop(request_id, None)
        if state is None:
            return
        self.shared.horizon.learn(state.num_output_tokens + state.num_emitted)
        for key, (count, total, total_sq, drafted) in state.totals.items():
            self.shared.prior.learn(key, int(count), total, total_sq, drafted)
