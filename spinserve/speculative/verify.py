"""Lossless verification of draft tokens against one batched target forward.

A request that proposed k draft tokens owns k+1 consecutive logits rows: row j (0..k-1) is the
target's prediction for the position of draft token j, row k the prediction for the position
after the last draft. Requests are concatenated in order, each with its own k (k = 0 is a plain
decode: one row). Verification walks each request's drafts in order and emits:

- *accepted* tokens: the leading draft tokens the target keeps;
- a *recovered* token: at the first rejection, a token drawn from the adjusted distribution
  norm(max(p_j - q_j, 0)) at that position; verification of that request stops there;
- a *bonus* token: when all k drafts are accepted, a token drawn from row k.

So every request gets its accepted tokens plus exactly one recovered or bonus token: 1..k+1
tokens per target forward, never zero.

Worked example (greedy). Drafts [5, 7, 2]; the target's argmax per row is [5, 7, 9, 4]. 5 and
7 are accepted, 2 != 9 is rejected and 9 is the recovered token: token_ids = [5, 7, 9],
num_accepted = 2. Had row 2's argmax been 2, all three would be accepted and row 3's argmax
would be the bonus token: [5, 7, 2, 4], num_accepted = 3.

Why it is lossless (Leviathan et al. 2023; Chen et al. 2023). At one position let p be the
target's distribution and q the drafter's. Draw x ~ q, accept it with probability
min(1, p(x)/q(x)), and on rejection draw from norm(max(p - q, 0)). The rejection probability
is 1 - sum_x min(p(x), q(x)) = sum_y max(p(y) - q(y), 0), which is exactly the normaliser of
the adjusted distribution, so

    P(emit y) = min(p(y), q(y)) + max(p(y) - q(y), 0) = p(y).

Given an accepted prefix, the next row is the target's distribution conditioned on that prefix,
so by induction the emitted tokens follow the target's joint distribution. Greedy is the case
p = point mass on the argmax: "accept while equal, then emit the argmax". A draft without
probabilities (``Draft.probs`` is None) is the point mass q = one-hot(x): accept with
probability p(x), recover from p with x zeroed; that is exact for any way the drafter picked x.
The proof needs the draft tokens to have been drawn from exactly ``Draft.probs``.

Randomness. A sampled request draws exactly k uniforms and then one multinomial sample from
its own generator per verification, whatever it accepts, so a seeded request replays
identically alone or in any batch. Greedy requests draw nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import TypeVar

import torch

from spinserve.config.sampling import SamplingParams
from spinserve.ops.sampling import greedy, probabilities
from spinserve.speculative.drafter import Draft

T = TypeVar("T")


@dataclass(frozen=True)
class VerifyResult:
    """What one request emits from one verification.

    ``token_ids``: the ``num_accepted`` accepted draft tokens, then exactly one recovered or
    bonus token, so ``len(token_ids) == num_accepted + 1``.
    """

    token_ids: list[int]
    num_accepted: int
    num_draft_tokens: int

    @property
    def bonus(self) -> bool:
        """Every draft token was accepted, so the last token came from the extra row."""
        return self.num_accepted == self.num_draft_tokens


def verify_greedy(
    logits: torch.Tensor,  # [num_rows, vocab], num_rows = sum(len(d) + 1 for d in drafts)
    drafts: list[list[int]],
) -> list[VerifyResult]:
    """Accept the longest prefix of each draft that matches the target's argmax, then emit the
    argmax of the row after it. One argmax and one host transfer for the whole batch."""
    cu_num_rows = _cu_num_rows(logits, [len(d) for d in drafts])
    target_ids = greedy(logits).tolist()  # [num_rows] the only host sync
    results = []
    for draft_ids, start in zip(drafts, cu_num_rows, strict=False):
        row_ids = target_ids[start : start + len(draft_ids) + 1]
        num_accepted = _num_matching(draft_ids, row_ids)
        # Accepted drafts equal the target's tokens, so the emitted tokens are a prefix of rows.
        results.append(VerifyResult(row_ids[: num_accepted + 1], num_accepted, len(draft_ids)))
    return results


def verify_sampled(
    logits: torch.Tensor,  # [k + 1, vocab] one request's rows
    draft: Draft,
    params: SamplingParams,
    generator: torch.Generator | None,
) -> VerifyResult:
    """Speculative rejection sampling for one request sampled with ``params``.

    The target distribution of each row is `probabilities` under the request's temperature,
    top-k and top-p; ``draft.probs`` (or the point mass on each draft token) is the drafter's.
    ``generator`` None draws from torch's default generator (not reproducible per request).
    """
    if params.greedy:
        raise ValueError("verify_sampled needs temperature > 0; greedy requests use verify_greedy")
    _cu_num_rows(logits, [len(draft)])
    _check_draft(draft, logits.shape[-1])
    return _rejection_sample(_target_probs(logits, [params], [len(draft) + 1]), draft, generator)


def verify_batch(
    logits: torch.Tensor,  # [num_rows, vocab], num_rows = sum(len(d) + 1 for d in drafts)
    drafts: list[Draft],
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[VerifyResult]:
    """One `VerifyResult` per request, in order; raises the first request's error (see
    `verify_each` for the form that keeps one request's error to itself)."""
    results = verify_each(logits, drafts, params, generators)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results  # type: ignore[return-value]


def verify_each(
    logits: torch.Tensor,  # [num_rows, vocab], num_rows = sum(len(d) + 1 for d in drafts)
    drafts: list[Draft],
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[VerifyResult | Exception]:
    """One `VerifyResult` per request, in order, or the exception that request's verification
    raised: greedy requests in one `verify_greedy` call (their ``probs`` and generators
    unused), sampled ones by rejection sampling over one batched `probabilities` call, each
    drawing only from its own generator. When a batched call raises, its requests are
    verified one by one, so only the request at fault gets an error; that is exact, since
    neither batched call draws randomness."""
    if not len(drafts) == len(params) == len(generators):
        raise ValueError(
            f"one draft, params and generator per request: got {len(drafts)}, {len(params)}, "
            f"{len(generators)}"
        )
    num_rows = [len(d) + 1 for d in drafts]
    cu_num_rows = _cu_num_rows(logits, [len(d) for d in drafts])
    results: list[VerifyResult | Exception | None] = [None] * len(drafts)
    for i, draft in enumerate(drafts):
        results[i] = _draft_error(draft, logits.shape[-1])

    greedy_reqs = [i for i, p in enumerate(params) if p.greedy and results[i] is None]
    for i, result in _each_or_alone(
        greedy_reqs,
        lambda reqs: verify_greedy(
            logits[_rows_of(reqs, cu_num_rows)], [drafts[i].token_ids for i in reqs]
        ),
    ):
        results[i] = result

    sampled_reqs = [i for i, p in enumerate(params) if not p.greedy and results[i] is None]
    probs = _each_or_alone(
        sampled_reqs,
        lambda reqs: _split(
            _target_probs(
                logits[_rows_of(reqs, cu_num_rows)],
                [params[i] for i in reqs],
                [num_rows[i] for i in reqs],
            ),
            [num_rows[i] for i in reqs],
        ),
    )
    for i, target_probs in probs:
        try:
            if isinstance(target_probs, Exception):
                raise target_probs
            results[i] = _rejection_sample(target_probs, drafts[i], generators[i])
        except Exception as exc:
            results[i] = exc
    return results  # type: ignore[return-value]


def _each_or_alone(
    reqs: list[int], batched: Callable[[list[int]], list[T]]
) -> list[tuple[int, T | Exception]]:
    """``(i, batched([...])[j])`` for the requests ``reqs``, from one batched call, or when
    it raises, from one call per request (an exception in place of a failed one's value)."""
    if not reqs:
        return []
    try:
        return list(zip(reqs, batched(reqs), strict=True))
    except Exception:
        pass
    out: list[tuple[int, T | Exception]] = []
    for i in reqs:
        try:
            out.append((i, batched([i])[0]))
        except Exception as exc:
            out.append((i, exc))
    return out


def _split(rows: torch.Tensor, num_rows: list[int]) -> list[torch.Tensor]:
    return list(rows.split(num_rows))


def _rejection_sample(
    target_probs: torch.Tensor,  # [k + 1, vocab] p of each row
    draft: Draft,
    generator: torch.Generator | None,
) -> VerifyResult:
    """One host sync: everything stays a tensor until (num_accepted, token) come back."""
    k, vocab, device = len(draft), target_probs.shape[-1], target_probs.device
    draft_ids = torch.tensor(draft.token_ids, dtype=torch.int64, device=device)  # [k]
    positions = torch.arange(k, device=device)
    p_draft = target_probs[positions, draft_ids]  # [k] p_j(x_j)
    if draft.probs is None:
        accept_prob = p_draft  # q_j(x_j) = 1
    else:
        q_draft = draft.probs[positions, draft_ids].to(device, torch.float32)  # [k] q_j(x_j)
        # q_j(x_j) == 0 means the drafter proposed a token it gave no mass: never accept it.
        accept_prob = torch.where(q_draft > 0, p_draft / q_draft, 0.0).clamp(max=1.0)
    uniforms = torch.rand(k, generator=generator, device=device)  # [k]
    # Strict < so p_j(x_j) == 0 (filtered out by top-k / top-p) always rejects.
    accepted = (uniforms < accept_prob).to(torch.int64)
    row = accepted.cumprod(0).sum().view(1)  # [1] num_accepted: first rejected row, or k

    target_row = target_probs.index_select(0, row)  # [1, vocab]
    residual = (target_row - _draft_row(draft, draft_ids, row, vocab)).clamp(min=0.0)
    # p == q up to rounding can still reject; p itself is then the right law.
    residual = torch.where(residual.sum() > 0, residual, target_row)
    token = torch.multinomial(residual, 1, generator=generator)[0]  # [1]
    num_accepted, token_id = torch.cat([row, token]).tolist()
    return VerifyResult([*draft.token_ids[:num_accepted], token_id], num_accepted, k)


def _draft_row(
    draft: Draft,
    draft_ids: torch.Tensor,  # [k]
    row: torch.Tensor,  # [1] in 0..k
    vocab: int,
) -> torch.Tensor:
    """[1, vocab] q at ``row``; zeros at row k, where the bonus token is drawn from p alone."""
    device = draft_ids.device
    if draft.probs is not None:
        probs = draft.probs.to(device, torch.float32)  # [k, vocab]
        return torch.cat([probs, probs.new_zeros(1, vocab)]).index_select(0, row)
    # Point mass on the draft token: one-hot at x_row, weight 0 at the bonus row.
    padded_ids = torch.cat([draft_ids, draft_ids.new_zeros(1)])  # [k + 1]
    weight = (row < len(draft)).to(torch.float32).view(1, 1)
    index = padded_ids.index_select(0, row).view(1, 1)
    return torch.zeros(1, vocab, device=device).scatter_(1, index, weight)


def _target_probs(
    logits: torch.Tensor,  # [num_rows, vocab]
    params: list[SamplingParams],
    num_rows: list[int],  # rows per request, summing to num_rows
) -> torch.Tensor:
    """[num_rows, vocab] each row filtered with its request's temperature, top-k and top-p."""

    def per_row(values: list[float] | list[int], dtype: torch.dtype) -> torch.Tensor:
        repeated = [v for v, n in zip(values, num_rows, strict=True) for _ in range(n)]
        return torch.tensor(repeated, dtype=dtype, device=logits.device)

    vocab = logits.shape[-1]
    return probabilities(
        logits,
        per_row([p.temperature for p in params], torch.float32),
        # top-k past the vocabulary keeps every token (and must not overflow int64)
        per_row([min(p.top_k, vocab) for p in params], torch.int64),
        per_row([p.top_p for p in params], torch.float32),
    )


def _cu_num_rows(logits: torch.Tensor, num_draft_tokens: list[int]) -> list[int]:
    """[num_requests + 1] row offsets; checks ``logits`` has one row per draft plus one."""
    cu_num_rows = [0, *accumulate(k + 1 for k in num_draft_tokens)]
    if logits.dim() != 2 or logits.shape[0] != cu_num_rows[-1]:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be [{cu_num_rows[-1]}, vocab]: "
            "one row per draft token plus one per request"
        )
    return cu_num_rows


def _check_draft(draft: Draft, vocab: int) -> None:
    error = _draft_error(draft, vocab)
    if error is not None:
        raise error


def _draft_error(draft: Draft, vocab: int) -> ValueError | None:
    if any(not 0 <= t < vocab for t in draft.token_ids):
        return ValueError(f"draft token ids {draft.token_ids} must be in [0, {vocab})")
    if draft.probs is not None and tuple(draft.probs.shape) != (len(draft), vocab):
        return ValueError(
            f"draft probs {tuple(draft.probs.shape)} must be [{len(draft)}, {vocab}]: "
            "one distribution over the target's vocabulary per draft token"
        )
    return None


def _rows_of(reqs: list[int], cu_num_rows: list[int]) -> list[int]:
    """The logits rows of requests ``reqs``, in order."""
    return [row for i in reqs for row in range(cu_num_rows[i], cu_num_rows[i + 1])]


def _num_matching(draft_ids: list[int], target_ids: list[int]) -> int:
    """Length of the longest prefix where the draft equals the target."""
    num = 0
    for draft_id, target_id in zip(draft_ids, target_ids, strict=False):
        if draft_id != target_id:
            break
        num += 1
    return num
