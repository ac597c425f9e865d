"""What a step costs a request: its drafter's share and its share of the target forward.

How to split a shared forward among its requests decides what speculation looks like under
load. A forward costs about ``fixed + per_token * num_tokens`` (weights are read once however
many tokens ride along). Splitting by tokens alone charges each draft token its share of the
fixed part too, so at batch 8 a request with 4 drafts pays 5/12 of a forward that it made only
slightly longer, and speculation looks worse than it is. We split by marginal cost instead:
each sequence pays ``fixed / num_seqs`` for being there and ``per_token`` per token it adds,
which sums to the forward's time and is what changes when one request changes its choice.
`ForwardCost` fits the line online. (The naive split by tokens, kept for comparison, is
``research/selection/flat_arms.py``'s.)
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from spinserve.selection.policy import StepTiming

LOAD_BUCKET_EDGES = (1, 2, 5, 9, 17)  # buckets: 1, 2-4, 5-8, 9-16, 17+ running requests


def load_bucket(num_running: int) -> int:
    """Index of the load bucket of ``num_running`` requests.

    >>> [load_bucket(n) for n in (1, 2, 4, 5, 8, 9, 16, 17, 64)]
    [0, 1, 1, 2, 2, 3, 3, 4, 4]
    """
    return max(0, bisect_right(LOAD_BUCKET_EDGES, num_running) - 1)


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float, extend: bool = False) -> float:
    """Piecewise linear through (xs, ys), sorted by x; past the ends flat, or with ``extend``
    along the end segment (which needs two points).

    >>> interpolate([0, 10], [1.0, 2.0], 5), interpolate([0, 10], [1.0, 2.0], 20)
    (1.5, 2.0)
    >>> interpolate([0, 10], [1.0, 2.0], 20, extend=True)
    3.0
    """
    i = bisect_right(xs, x)
    if not extend and (i == 0 or i == len(xs)):
        return ys[0] if i == 0 else ys[-1]
    i = min(max(i, 1), len(xs) - 1)
    w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + w * (ys[i] - ys[i - 1])


def fit_line(
    weight: float,
    sum_n: float,
    sum_t: float,
    sum_nn: float,
    sum_nt: float,
    proportional: bool = False,
) -> tuple[float, float]:
    """``(fixed, per_unit)`` of the weighted least-squares line t = fixed + per_unit * n.

    Both are kept >= 0 and the line passes through the mean point. Without spread in n the
    data cannot tell the two apart, and the guess is the one that gets the spread measured:
    for the forward, all fixed (extra tokens look free, so a policy tries them); for a
    drafter (``proportional``), all per unit (shorter drafts look cheaper, so they get tried;
    guessing fixed would price k = 1 like the k = 8 measured and never try it).

    >>> fit_line(2, 1 + 9, 5 + 13, 1 + 81, 5 + 117)  # points (1, 5), (9, 13)
    (4.0, 1.0)
    >>> fit_line(3, 12, 30, 48, 120), fit_line(3, 12, 30, 48, 120, proportional=True)
    ((10.0, 0.0), (0.0, 2.5))
    """
    if weight <= 0:
        return 0.0, 0.0
    mean_n, mean_t = sum_n / weight, sum_t / weight
    var_n = sum_nn / weight - mean_n * mean_n
    if var_n < 0.25:
        return (0.0, mean_t / mean_n) if proportional and mean_n > 0 else (mean_t, 0.0)
    slope = (sum_nt / weight - mean_n * mean_t) / var_n
    slope = min(max(slope, 0.0), mean_t / mean_n)
    return mean_t - slope * mean_n, slope


class CostLine:
    """Seconds as a line in a count, fitted on discounted sums of (count, seconds)."""

    def __init__(self, discount: float = 0.995, proportional: bool = False) -> None:
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.discount = discount
        self.proportional = proportional  # the guess without spread, see `fit_line`
        self._sums = [0.0] * 5  # weight, n, t, nn, nt
        self._fit: tuple[float, float] | None = None  # cached until the next add

    def add(self, n: float, seconds: float) -> None:
        g = self.discount
        for i, x in enumerate((1.0, n, seconds, n * n, n * seconds)):
            self._sums[i] = g * self._sums[i] + x
        self._fit = None

    @property
    def known(self) -> bool:
        return self._sums[0] > 0

    @property
    def coefficients(self) -> tuple[float, float]:
        """``(fixed, per_unit)``; before any data ``(1, 0)``: extra units look free (see
        `fit_line`), in a unit that other costs, unknown yet too, are measured in."""
        if not self.known:
            return 1.0, 0.0
        if self._fit is None:
            self._fit = fit_line(*self._sums, proportional=self.proportional)
        return self._fit

    def seconds(self, n: float) -> float:
        fixed, per_unit = self.coefficients
        return fixed + per_unit * n


class ForwardCost(CostLine):
    """The target forward's line in its tokens, split by marginal cost (module docstring),
    and, for a forward of one sequence, its measured curve.

    One sequence's forward is not a line in its tokens on a CPU: a few tokens ride on the
    weights' memory traffic nearly free, more are bound by the multiplies (Qwen 1.5B on 2
    cores: 2 tokens 1.07x a decode, 3 1.12x, 5 1.30x, 9 2.08x; docs/benchmarks.md). The line
    fitted in the replay of real drafts priced 3 tokens at 1.24x a decode where the counts
    measured said 1.16x, and 9 at 1.95x where they said 2.28x. So steps of
    one sequence also keep a moving average of seconds per token count, and `share` of a lone
    sequence interpolates between the counts measured (the calibration measures 1, 3, 5 and
    9); the line stays for the rest, and wherever fewer than two counts are known."""

    SINGLE_RATE = 0.1  # weight of a new step in its token count's moving average

    def __init__(self, discount: float = 0.995, proportional: bool = False) -> None:
        super().__init__(discount, proportional)
        self._single: dict[int, float] = {}  # tokens -> seconds, steps of one sequence
        self._points: tuple[list[int], list[float]] | None = None  # sorted, cached

    def add_step(self, timing: StepTiming) -> None:
        """Learn from a step of decodes and verifications; a step that also prefilled is
        left out. The line is what a draft token adds to a step of a few tokens per
        sequence, and a forward's cost is not a line over all lengths: a prompt token of a
        long prefill costs less than a draft token in a short step (Qwen 1.5B on 2 cores:
        ~9.5 against ~15 ms), so prefill steps, with hundreds of tokens, would dominate the
        fit and make drafts look cheap (spin drafted in 60% of the steps of 8 concurrent
        requests and lost 13% of the throughput, docs/benchmarks.md)."""
        if timing.num_prefill_tokens == 0:
            self.add(timing.num_batched_tokens, timing.forward_seconds)
            if timing.num_seqs == 1:
                n, t = timing.num_batched_tokens, timing.forward_seconds
                old = self._single.get(n)
                self._single[n] = t if old is None else old + self.SINGLE_RATE * (t - old)
                self._points = None

    def share(self, num_seqs: int, num_tokens: float) -> float:
        """A sequence's marginal share of a forward of ``num_seqs`` sequences (alone: the
        seconds of a forward of ``num_tokens`` tokens)."""
        if num_seqs == 1 and len(self._single) >= 2:
            return self._single_seconds(num_tokens)
        fixed, per_token = self.coefficients
        return fixed / num_seqs + per_token * num_tokens

    def _single_seconds(self, num_tokens: float) -> float:
        """The one-sequence curve at ``num_tokens``: linear between the counts measured, and
        beyond them along the nearest segment (never below the smallest count's seconds)."""
        if self._points is None:
            counts = sorted(self._single)
            self._points = counts, [self._single[n] for n in counts]
        xs, ys = self._points
        return max(interpolate(xs, ys, num_tokens, extend=True), ys[0])


class DraftCost:
    """Drafting seconds per request as a line in k, per drafter and load bucket (a drafter's
    batched call is shared by the requests in it, so its cost per request falls with load; a
    model drafter's grows with k, one round per token), plus the cost of catching up.

    A drafter that did not draft for a request in its last step must first process what it
    has not seen (the whole prompt the first time: a prefill for a model drafter, an index
    for the suffix drafter). That is paid once per switch, so it is learned apart, as
    seconds per token caught up, from the steps that had to catch up; the line learns only
    from steps that did not."""

    def __init__(self, discount: float = 0.98, smoothing: float = 0.2) -> None:
        self.discount = discount
        self.smoothing = smoothing
        self._lines: dict[tuple[str, int], CostLine] = {}
        self._buckets: dict[str, list[int]] = {}  # drafter -> buckets with a line
        self._catchup: dict[str, float] = {}  # drafter -> seconds per token caught up

    def add(self, drafter: str, bucket: int, k: int, seconds: float) -> None:
        key = (drafter, bucket)
        if key not in self._lines:
            self._lines[key] = CostLine(self.discount, proportional=True)
            self._buckets.setdefault(drafter, []).append(bucket)
        self._lines[key].add(k, seconds)

    def calibrate(self, drafter: str, points: Sequence[tuple[int, float]]) -> None:
        """Seed the drafter from ``(num_tokens, seconds)``: calls for one draft token on
        unseen sequences of a few lengths, alone in the call (load bucket 0). The slope is
        the cost per token caught up, the intercept that of drafting one token, so neither
        looks free before the drafter's first use: an untried model drafter priced at
        nothing was tried on the first long prompt, paying its prefill. Without two
        lengths there is no slope and nothing is seeded."""
        if len({n for n, _ in points}) < 2:
            return
        line = CostLine(discount=1.0)
        for num_tokens, seconds in points:
            line.add(num_tokens, seconds)
        one_token, self._catchup[drafter] = line.coefficients
        self.add(drafter, 0, 1, one_token)

    def add_catchup(
        self, drafter: str, bucket: int, k: int, num_tokens: int, seconds: float
    ) -> None:
        """A step that first caught up on ``num_tokens`` tokens took ``seconds``. Before the
        drafter's line is known the step goes to the line, less the catch-up as priced now
        (unmeasured, catching up is taken as free: switching is learned from the next one)."""
        if drafter not in self._buckets:
            self.add(drafter, bucket, k, max(seconds - num_tokens * self.catchup(drafter), 0.0))
            return
        extra = max(seconds - self.seconds(drafter, bucket, k), 0.0) / num_tokens
        old = self._catchup.get(drafter)
        self._catchup[drafter] = extra if old is None else old + self.smoothing * (extra - old)

    def catchup(self, drafter: str) -> float:
        """Seconds per token caught up (0 until calibrated or measured: free)."""
        return self._catchup.get(drafter, 0.0)

    def seconds(self, drafter: str, bucket: int, k: int) -> float:
        """From this bucket's line, else the nearest bucket's, else 0 (not tried: free)."""
        fixed, per_token = self.line(drafter, bucket)
        return fixed + per_token * k

    def line(self, drafter: str, bucket: int) -> tuple[float, float]:
        """``(fixed, per draft token)`` seconds of ``drafter`` in ``bucket`` (see `seconds`)."""
        line = self._lines.get((drafter, bucket))
        if line is None:
            known = self._buckets.get(drafter)
            if not known:
                return 0.0, 0.0
            nearest = min(known, key=lambda b: (abs(b - bucket), b))
            line = self._lines[(drafter, nearest)]
        return line.coefficients
