"""The shared prior: what finished requests taught about each arm, for requests to come.

Each finished request contributes, per arm it tried, its mean value. Across requests these
means have a mean and a spread (variance); within a request, steps scatter around its mean
(the noise). Empirical Bayes: a new request starts from N(mean, spread) and its own steps
weigh noise / spread times more than the prior's "one observation". An arm that is good for
some requests and bad for others has a wide spread, so new requests still try it; an arm that
is the same for everyone has a narrow one, and its prior settles the question. Old requests
fade (``memory`` requests), so the prior follows a drifting workload.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class ArmPrior:
    """What earlier requests say about an arm before this request has tried it.

    ``mean`` and ``spread`` (variance) of the per-request mean value across requests;
    ``noise``: the variance of one step's value around its request's mean. The ratio
    noise / spread is how many of its own steps a request needs to outweigh the prior.
    """

    mean: float
    spread: float
    noise: float
    mean_drafted: float


# A request that tried an arm fewer times than this counts proportionally less.
FULL_WEIGHT_STEPS = 4

# One `SharedPrior.learn` call: (key, count, total, total_sq, drafted).
Learned = tuple[Hashable, int, float, float, float]


@dataclass
class _Sums:
    """Discounted sums over finished requests for one arm."""

    weight: float = 0.0  # sum of request weights w
    mean: float = 0.0  # sum w * request mean
    mean_sq: float = 0.0  # sum w * request mean^2
    inv_count: float = 0.0  # sum w / n (for the sampling variance of a request mean)
    drafted: float = 0.0  # sum w * request mean of num_drafted
    within_ss: float = 0.0  # pooled sum of squared deviations from request means
    within_dof: float = 0.0


class SharedPrior:
    """Per-arm priors learned from finished requests, blended with a default one.

    >>> p = SharedPrior(lambda key: ArmPrior(3.0, 1.0, 1.0, 4.0), max_weight=8.0)
    >>> for _ in range(50):
    ...     p.learn("ngram@4", count=10, total=45.0, total_sq=205.0, drafted=40.0)
    >>> prior = p.prior("ngram@4")
    >>> round(prior.mean, 2), round(prior.noise, 2), round(prior.noise / prior.spread, 1)
    (4.47, 0.28, 8.0)
    """

    def __init__(
        self,
        default: Callable[[Hashable], ArmPrior],
        max_weight: float = 8.0,
        memory: float = 200.0,
    ) -> None:
        if max_weight <= 0:
            raise ValueError(f"max_weight must be positive, got {max_weight}")
        if memory < 1:
            raise ValueError(f"memory must be >= 1 request, got {memory}")
        self._default = default
        self.max_weight = max_weight
        self.memory = memory
        self._keep = 1.0 - 1.0 / memory
        self._sums: dict[Hashable, _Sums] = {}
        self._cache: dict[Hashable, ArmPrior] = {}  # priors change only when a request ends
        # What `learn` was told since the last `take_journal`, kept only once asked for (by
        # a fleet of servers that merges what each learned); a lock because the fleet reads
        # and replaces the sums from another thread than the engine's.
        self._journal: list[Learned] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Copies and pickles (benchmarks snapshot a policy) carry the sums, not the lock."""
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def learn(
        self, key: Hashable, count: int, total: float, total_sq: float, drafted: float
    ) -> None:
        """A finished request's undiscounted sums of its ``count`` steps on arm ``key``."""
        if count < 1:
            return
        with self._lock:
            if self._journal is not None:
                self._journal.append((key, count, total, total_sq, drafted))
            self._learn(key, count, total, total_sq, drafted)

    def _learn(
        self, key: Hashable, count: int, total: float, total_sq: float, drafted: float
    ) -> None:
        self._cache.pop(key, None)
        s = self._sums.setdefault(key, _Sums())
        for name in vars(s):
            setattr(s, name, getattr(s, name) * self._keep)
        w = min(count, FULL_WEIGHT_STEPS) / FULL_WEIGHT_STEPS
        mean = total / count
        s.weight += w
        s.mean += w * mean
        s.mean_sq += w * mean * mean
        s.inv_count += w / count
        s.drafted += w * drafted / count
        s.within_ss += max(total_sq - total * mean, 0.0)
        s.within_dof += count - 1

    def prior(self, key: Hashable) -> ArmPrior:
        """The learned prior blended with the default as one pseudo-request (and its noise as
        two pseudo-steps), the spread floored so the prior never outweighs ``max_weight``
        of the request's own steps."""
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._compute(key)
            return self._cache[key]

    # --- sharing what was learned (a fleet of servers) ------------------------------------

    def take_journal(self) -> list[Learned]:
        """What `learn` was told since the last call (the first call starts the journal)."""
        with self._lock:
            taken, self._journal = self._journal or [], []
            return taken

    def replay(self, journal: list[Learned]) -> None:
        """Learn from finished requests in order, as if told one by one."""
        with self._lock:
            for entry in journal:
                self._learn(*entry)

    def state(self) -> dict[Hashable, tuple[float, ...]]:
        """The learned sums per arm, plain data to send to another process."""
        with self._lock:
            return {key: dataclasses.astuple(s) for key, s in self._sums.items()}

    def load(self, state: dict[Hashable, tuple[float, ...]]) -> None:
        """Replace what was learned by ``state`` (from `state`, of this or another prior)."""
        with self._lock:
            self._sums = {key: _Sums(*values) for key, values in state.items()}
            self._cache.clear()

    @property
    def total_weight(self) -> float:
        """The discounted weight of the finished requests behind the prior, summed over arms."""
        with self._lock:
            return sum(s.weight for s in self._sums.values())

    def _compute(self, key: Hashable) -> ArmPrior:
        d = self._default(key)
        s = self._sums.get(key)
        if s is None or s.weight <= 0:
            return d
        w = s.weight
        noise = (s.within_ss + 2.0 * d.noise) / (s.within_dof + 2.0)
        mean = s.mean / w
        sampling = noise * s.inv_count / w
        spread = max(s.mean_sq / w - mean * mean - sampling, 0.0)
        spread = (w * spread + d.spread) / (w + 1.0)
        return ArmPrior(
            mean=(w * mean + d.mean) / (w + 1.0),
            spread=max(spread, noise / self.max_weight),
            noise=noise,
            mean_drafted=(s.drafted + d.mean_drafted) / (w + 1.0),
        )
