"""How many more tokens a request is expected to emit: the horizon over which a one-time cost
is shared. A drafter that has not run on a request must first catch up on its tokens (a model
drafter prefills the whole prompt), once; `spin` charges each step of it the catch-up times
the step's share of the tokens still to come, so a switch pays only if the drafter's gain
over the rest of the request covers it.

The estimate is the mean residual length of recently finished requests: among those whose
output outlived this request's so far, how many tokens they went on to emit. A default length
counts as one more such request, so it is the answer before anything finished, and for a
request that has outlived all of them.

>>> horizon = RemainingOutput(default=100.0)
>>> horizon.remaining(0)
100.0
>>> for n in (10, 50, 90):
...     horizon.learn(n)
>>> horizon.remaining(0), horizon.remaining(40), horizon.remaining(95)
(62.5, 53.333333333333336, 100.0)
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from itertools import accumulate


class RemainingOutput:
    """Mean residual output length over the last ``memory`` finished requests."""

    def __init__(self, default: float, memory: int = 256) -> None:
        if default <= 0:
            raise ValueError(f"default must be positive, got {default}")
        if memory < 1:
            raise ValueError(f"memory must be >= 1 request, got {memory}")
        self.default = default
        self._recent: deque[int] = deque(maxlen=memory)
        self._sorted: list[int] = []
        self._tail_sums: list[int] = [0]  # _tail_sums[i] = sum(_sorted[i:])

    def learn(self, num_output_tokens: int) -> None:
        """A request finished after emitting ``num_output_tokens``."""
        self._recent.append(num_output_tokens)
        self._sorted = sorted(self._recent)
        self._tail_sums = list(accumulate(reversed(self._sorted), initial=0))[::-1]

    def remaining(self, num_output_tokens: int) -> float:
        """Expected tokens still to come after ``num_output_tokens`` (always > 0)."""
        i = bisect_right(self._sorted, num_output_tokens)
        longer = len(self._sorted) - i
        beyond = self._tail_sums[i] - longer * num_output_tokens
        return (beyond + self.default) / (longer + 1)
