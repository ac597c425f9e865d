"""`VariantParams`: `SpinParams` plus the knobs of the alternatives `spin` was measured
against. Defaults reproduce the shipped policy exactly, so ``spin[KEY=VALUE]`` in the
benchmarks changes one thing at a time."""

from __future__ import annotations

from dataclasses import dataclass

from spinserve.config.selection import SpinParams

RULES = ("thompson", "ucb", "greedy")
MODELS = ("drafter", "flat")
REWARDS = ("factored", "direct")


@dataclass(frozen=True)
class VariantParams(SpinParams):
    """`SpinParams` and the research-only knobs:

    - ``model``: ``drafter`` (arms are drafters, k derived from their acceptance rates: the
      product's) or ``flat`` (each drafter x k its own arm, `flat_arms`).
    - ``rule``: ``thompson`` (the product's: draw from the beliefs, their spread times
      ``exploration``), ``ucb`` (``exploration`` standard deviations of optimism) or
      ``greedy`` (posterior means, a random arm with probability ``exploration``).
    - ``window`` > 0 (flat only): forget by keeping only the last ``window`` steps instead
      of by ``discount``.
    - ``reward`` (flat only): ``factored`` or ``direct`` (tokens / token-share seconds).
    - ``shared_prior``: teach finished requests to the prior (off: every request starts cold).
    - ``explore_under_load``: with other requests in the forward, whether a request may
      draft on a draw that its posterior means would not take. Off in the product: on the
      real models, 8 concurrent requests, the exploring form lost in three rounds out of
      three; in the simulator it lifted the worst category at batch 8 on the CPU model
      (0.967 against 0.938 of no speculation) but cost 0.4% (CPU) and 1.1% (GPU) overall.
    - ``streaks`` (drafter model): learn each drafter's rates apart right after a step (of
      any drafter) whose every draft token passed. Off in the product: on the replayed real
      drafts 1.43x the target against 1.42x without, side by side on the real engine 1.11x
      against 1.12x, and it slowed the simulator's switches (docs/design.md, "Streaks").
    - ``cap_after_reject`` (drafter model; 0: off): after a step in which a draft token was
      rejected, the next step drafts at most this many (a whole pass lifts it). Off in the
      product: replaying real drafts, 2 gave 1.463x the target against 1.433x, but side by
      side on the real engine at batch 1 both were 1.18x the target, and in the simulator
      (whose drafters' tokens pass or fail one by one) it cost 1-3%.
    """

    model: str = "drafter"
    rule: str = "thompson"
    window: int = 0
    reward: str = "factored"
    shared_prior: bool = True
    explore_under_load: bool = False
    streaks: bool = False
    cap_after_reject: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value, allowed in (
            ("model", self.model, MODELS),
            ("rule", self.rule, RULES),
            ("reward", self.reward, REWARDS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.window < 0:
            raise ValueError(f"window must be >= 0, got {self.window}")
        if self.cap_after_reject < 0:
            raise ValueError(f"cap_after_reject must be >= 0, got {self.cap_after_reject}")
        if self.model == "drafter" and (self.window or self.reward != "factored"):
            raise ValueError("window and reward='direct' need model='flat'")


def variant_params(params: SpinParams) -> VariantParams:
    """``params`` as the `VariantParams` a research arm model needs (a plain `SpinParams`
    has none of its knobs: build the policy with `variants.VariantPolicy`)."""
    if not isinstance(params, VariantParams):
        raise TypeError("research arm models need VariantParams; use variants.VariantPolicy")
    return params
