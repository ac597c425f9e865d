"""What a step costs a request: its drafter's share and its share of the target forward.

How to split a shared forward among its requests decides what speculation looks like under
load. A forward costs about ``fixed + per_token * num_tokens`` (weights are read once however
many tokens ride along). Splitting by tokens alone charges each draft token its share of the
fixed part too, so at batch 8 a request with 4 drafts pays 5/12 of a forward that it made only
slightly longer, and speculation looks worse than it is. We split by marginal cost instead:
each sequence pays ``fixed / num_seqs`` for being there and ``per_token`` per token it adds,
which sums to the forward's time and is what changes when one request changes its choice.
`ForwardCost` fits the line online; `token_share_seconds` is the naive split, kept for
comparison (the simulator measures both).
"""

from __future__ import annotations

from bisect import bisect_right
from spinserve.selection.policy import Feedback, StepTiming

LOAD_BUCKET_EDGES = (1, 2, 5, 9, 17)  # buckets: 1, 2-4, 5-8, 9-16, 17+ running requests


def load_bucket(num_running: int) -> int:
    """Index of the load bucket of ``num_running`` requests.

    >>> [load_bucket(n) for n in (1, 2, 4, 5, 8, 9, 16, 17, 64)]
    [0, 1, 1, 2, 2, 3, 3, 4, 4]
    """
    return max(0, bisect_right(LOAD_BUCKET_EDGES, num_running) - 1)


def fit_line(
    weight: float, sum_n: float, sum_t: float, sum_nn: float, sum_nt: float
) -> tuple[float, float]:
    """``(fixed, per_token)`` of the weighted least-squares line t = fixed + per_token * n.

    Both are kept >= 0 and the line passes through the mean point. Without spread in n the
    data cannot tell the two apart and the whole mean is taken as fixed: that makes extra
    tokens look free, so a policy tries them and the spread appears (a per-token guess would
    instead make speculation look dear and never be tried).

    >>> fit_line(2, 1 + 9, 5 + 13, 1 + 81, 5 + 117)  # points (1, 5), (9, 13)
    (4.0, 1.0)
    >>> fit_line(3, 12, 30, 48, 120)  # n = 4 three times, t = 10
    (10.0, 0.0)
    """
    if weight <= 0:
        return 0.0, 0.0
    mean_n, mean_t = sum_n / weight, sum_t / weight
    var_n = sum_nn / weight - mean_n * mean_n
    if var_n < 0.25:
        return mean_t, 0.0
    slope = (sum_nt / weight - mean_n * mean_t) / var_n
    slope = min(max(slope, 0.0), mean_t / mean_n)
    return mean_t - slope * mean_n, slope


class CostLine:
    """Seconds as a line in a count, fitted on discounted sums of (count, seconds)."""

    def __init__(self, discount: float = 0.995) -> None:
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.discount = discount
        self._sums = [0.0] * 5  # weight, n, t, nn, nt

    def add(self, n: float, seconds: float) -> None:
        g = self.discount
        for i, x in enumerate((1.0, n, seconds, n * n, n * seconds)):
            self._sums[i] = g * self._sums[i] + x

    @property
    def known(self) -> bool:
        return self._sums[0] > 0

    @property
    def coefficients(self) -> tuple[float, float]:
        """``(fixed, per_unit)``; before any data ``(1, 0)``: extra units look free (see
        `fit_line`), in a unit that other costs, unknown yet too, are measured in."""
        if not self.known:
            return 1.0, 0.0
        return fit_line(*self._sums)

    def seconds(self, n: float) -> float:
        fixed, per_unit = self.coefficients
        return fixed + per_unit * n


class ForwardCost(CostLine):
    """The target forward's line in its tokens, split by marginal cost (module docstring)."""

    def add_step(self, timing: StepTiming) -> None:
        self.add(timing.num_batched_tokens, timing.forward_seconds)

    def share(self, num_seqs: int, num_tokens: float) -> float:
        """A sequence's marginal share of a forward of ``num_seqs`` sequences."""
        fixed, per_token = self.coefficients
        return fixed / num_seqs + per_token * num_tokens


class DraftCost:
    """Drafting seconds per request as a line in k, per drafter and load bucket (a drafter's
    batched call is shared by the requests in it, so its cost per request falls with load; a
    model drafter's grows with k, one round per token)."""

    def __init__(self, discount: float = 0.98) -> None:
        self.discount = discount
        self._lines: dict[tuple[str, int], CostLine] = {}

    def add(self, drafter: str, bucket: int, k: int, seconds: float) -> None:
        key = (drafter, bucket)
        if key not in self._lines:
            self._lines[key] = CostLine(self.discount)
        self._lines[key].add(k, seconds)

    def seconds(self, drafter: str, bucket: int, k: int) -> float:
        """From this bucket's line, else the nearest bucket's, else 0 (not tried: free)."""
        known = [b for (name, b) in self._lines if name == drafter]
        if not known:
            return 0.0
        nearest = min(known, key=lambda b: (abs(b - bucket), b))
        return self._lines[(drafter, nearest)].seconds(k)


def token_share_seconds(feedback: Feedback, timing: StepTiming) -> float:
    """The naive split: drafting share plus the forward divided by tokens."""
    share = feedback.num_verified_tokens / timing.num_batched_tokens
    return feedback.draft_seconds + timing.forward_seconds * share

