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
speculating knew. The rule, the forgetting and the arm model are parameters so the simulator
could compare them; the defaults are what it chose, and the exploration and draft lengths
what replaying real drafts chose (`replay`; docs/design.md, "Drafter selection").
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from spinserve.config.speculative import MAX_DRAFT_TOKENS
from spinserve.selection.arms import DrafterArms, RequestState, Shared
from spinserve.selection.cost import DraftCost, ForwardCost, load_bucket
from spinserve.selection.flat_arms import FlatArms
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

RULES = ("thompson", "ucb", "greedy")
MODELS = ("drafter", "flat")
REWARDS = ("factored", "direct")


@dataclass(frozen=True)
class SpinParams:
    """The knobs of `spin`; the defaults are what the simulator chose, except where said.

    - ``draft_lengths``: the k a step may ask for. Up to 4: on the 2-core CPU a 9-token
      forward costs 3-4 decodes, and the acceptance model (a rate for every later token)
      overrates long lookup drafts, whose copies pass or fail as a whole; replaying real
      drafts, (1, 2, 3, 4) gave 1.26x the target's speed against 1.23x with 6 and 8 too.
      Where verification is nearly free (a GPU) longer drafts pay: pass them.
    - ``model``: ``drafter`` (arms are drafters, k derived from their acceptance rates) or
      ``flat`` (each drafter x k its own arm; for comparison).
    - ``rule``: ``thompson`` (draw from the beliefs, their spread times ``exploration``:
      0.35, replaying real drafts 1.26x the target against 1.24x with 0.5),
      ``ucb`` (``exploration`` standard deviations of optimism) or ``greedy`` (posterior
      means, a random arm with probability ``exploration``).
    - ``discount``: weight per step of a request's older observations (1: keep all);
      ``window`` > 0 (flat only): only the last ``window`` steps instead.
    - ``change_threshold``: CUSUM level at which a request's statistics restart because its
      text changed (drafter model; 0: off).
    - ``shared_prior``, ``max_prior_weight``, ``prior_memory``: learn a prior from finished
      requests, worth at most this many of a request's own observations, remembering about
      this many requests.
    - ``output_tokens``: a request's expected output length before any has finished (the
      horizon a drafter's catch-up is shared over, see `horizon`).
    - ``reward`` (flat only): ``factored`` or ``direct`` (tokens / token-share seconds).
    - ``streaks`` (drafter model): learn each drafter's rates apart right after a step
      (of any drafter) whose every draft token passed (`DrafterArms.key`). Off: on the
      replayed real drafts 1.43x the target against 1.42x without, side by side on the
      real engine 1.11x against 1.12x, and it slowed the simulator's switches
      (docs/design.md, "Streaks").
    - ``cap_after_reject`` (drafter model; 0: off): after a step in which a draft token was
      rejected, the next step drafts at most this many (a whole pass lifts it). Off:
      replaying real drafts, 2 gave 1.463x the target against 1.433x, but side by side on
      the real engine at batch 1 both were 1.18x the target, and in the simulator (whose
      drafters' tokens pass or fail one by one) it cost 1-3% (docs/design.md, "What bounds
      selection here").
    - ``explore_under_load``: with other requests in the forward, whether a request may
      draft on a draw that its posterior means would not take. Under load a draft token
      must be accepted far more often to pay, so such draws rarely find an arm that does;
      off, the rates come from batch 1 through the shared prior instead. Off by default:
      on the real models, 8 concurrent requests, side by side, it was 1.005-1.10x the
      exploring form's throughput in three rounds out of three (level with the target
      alone, where exploring was 0.96x); in the simulator it lifted the worst category at
      batch 8 on the CPU model (0.967 against 0.938 of no speculation) but cost 0.4% (CPU)
      and 1.1% (GPU) overall (docs/design.md).
    """

    draft_lengths: tuple[int, ...] = (1, 2, 3, 4)
    model: str = "drafter"
    rule: str = "thompson"
    exploration: float = 0.35
    discount: float = 0.99
    window: int = 0
    shared_prior: bool = True
    max_prior_weight: float = 4.0
    prior_memory: float = 200.0
    change_threshold: float = 6.5
    output_tokens: float = 64.0
    reward: str = "factored"
    explore_under_load: bool = False
    streaks: bool = False
    cap_after_reject: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        lengths = self.draft_lengths
        if not lengths or not all(1 <= k <= MAX_DRAFT_TOKENS for k in lengths):
            raise ValueError(f"draft_lengths must be in [1, {MAX_DRAFT_TOKENS}], got {lengths}")
        for name, value, allowed in (
            ("model", self.model, MODELS),
            ("rule", self.rule, RULES),
            ("reward", self.reward, REWARDS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.exploration < 0:
            raise ValueError(f"exploration must be >= 0, got {self.exploration}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if self.window < 0:
            raise ValueError(f"window must be >= 0, got {self.window}")
        if self.change_threshold < 0:
            raise ValueError(f"change_threshold must be >= 0, got {self.change_threshold}")
        if self.cap_after_reject < 0:
            raise ValueError(f"cap_after_reject must be >= 0, got {self.cap_after_reject}")
        if self.output_tokens < 1:
            raise ValueError(f"output_tokens must be >= 1, got {self.output_tokens}")
        if self.model == "drafter" and (self.window or self.reward != "factored"):
            raise ValueError("window and reward='direct' need model='flat'")


class SpinPolicy:
    name = "spin"
    wants_step_costs = True

    def __init__(self, drafters: Sequence[str], params: SpinParams | None = None) -> None:
        if not drafters:
            raise ValueError("spin needs at least one drafter")
        self.params = p = params or SpinParams()
        model_cls = DrafterArms if p.model == "drafter" else FlatArms
        prior = SharedPrior(model_cls.default_prior(p), p.max_prior_weight, p.prior_memory)
        horizon = RemainingOutput(p.output_tokens)
        self.shared = Shared(p, ForwardCost(), DraftCost(), horizon, prior, random.Random(p.seed))
        self.model = model_cls(drafters, self.shared)
        self._requests: dict[str, RequestState] = {}

    def choose(self, requests: Sequence[RequestView], load: LoadView) -> list[Choice]:
        bucket = load_bucket(load.num_running)
        no_spec = 1.0 / max(self.shared.forward.share(load.num_running, 1.0), 1e-12)
        choices = []
        for view in requests:
            state = self._requests.setdefault(view.request_id, RequestState())
            state.step += 1
            state.bucket = bucket
            state.num_tokens = view.num_prompt_tokens + view.num_output_tokens
            state.num_output_tokens = view.num_output_tokens
            choice = self._choose_one(state, load.num_running, no_spec)
            state.chose(choice)
            choices.append(choice)
        return choices

    def _choose_one(self, state: RequestState, num_running: int, no_spec: float) -> Choice:
        p, rng = self.params, self.shared.rng
        if p.rule == "greedy" and rng.random() < p.exploration:
            d = rng.choice([*self.model.drafters, None])
            return NO_SPECULATION if d is None else Choice(d, rng.choice(p.draft_lengths))
        choice, score = self.model.best(state, num_running)
        if p.model == "flat" and p.reward == "direct":  # no speculation is learned then
            return choice
        if score <= no_spec:
            return NO_SPECULATION
        if num_running > 1 and not p.explore_under_load:
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
            state = self._requests.setdefault(fb.request_id, RequestState())
            state.num_emitted = fb.num_emitted
            d, k = fb.choice.drafter, fb.choice.num_draft_tokens
            if d is not None and state.catchup:
                self.shared.draft.add_catchup(d, state.bucket, k, state.catchup, fb.draft_seconds)
            elif d is not None:
                self.shared.draft.add(d, state.bucket, k, fb.draft_seconds)
            self.model.record(state, fb, timing)

    def finish(self, request_id: str) -> None:
        state = self._requests.pop(request_id, None)
        if state is None:
            return
        self.shared.horizon.learn(state.num_output_tokens + state.num_emitted)
        if not self.params.shared_prior:
            return
        for key, (count, total, total_sq, drafted) in state.totals.items():
            self.shared.prior.learn(key, int(count), total, total_sq, drafted)
