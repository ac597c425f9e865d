"""Verification: greedy tables, a slow reference from the papers' pseudo-code, and the lossless
property (emitted tokens follow the target's distribution, whatever the drafter proposes)."""

from __future__ import annotations

import random

import pytest
import torch

from spinserve.config.sampling import SamplingParams
from spinserve.ops.sampling import probabilities
from spinserve.speculative.drafter import Draft
from spinserve.speculative.verify import VerifyResult, verify_batch, verify_greedy, verify_sampled

GREEDY = SamplingParams()
SAMPLED = SamplingParams(temperature=1.0)

# Upper 0.999 quantiles of chi-square (standard tables); scipy is not a dependency.
CHI2_999 = {3: 16.266, 5: 20.515, 30: 59.703}

# The lossless tests: a 6-token vocabulary, a target p and a drafter q that disagrees with it.
P = torch.tensor([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
Q = torch.tensor([0.05, 0.10, 0.15, 0.20, 0.20, 0.30])
VOCAB = len(P)
# Trials cannot be vectorised through the API: each is one request of one verify_batch call
# (~0.1 ms of CPU per request), so 20,000 trials per test would take the file past 10 s;
# 10,000 still gives every chi-square cell an expected count >= 15. Every trial shares one
# generator, drawn from in sequence, as a request's steps would be.
NUM_TRIALS = 10_000


def argmax_rows(ids: list[int], vocab: int = 10) -> torch.Tensor:
    """[len(ids), vocab] logits whose row i has its argmax at ids[i]."""
    logits = torch.zeros(len(ids), vocab)
    logits[torch.arange(len(ids)), torch.tensor(ids, dtype=torch.int64)] = 1.0
    return logits


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def filtered_probs(
    logits: torch.Tensor,  # [num_rows, vocab]
    params: SamplingParams,
) -> torch.Tensor:
    """[num_rows, vocab] the distribution ``params`` samples each row from."""
    n = logits.shape[0]
    return probabilities(
        logits,
        torch.tensor([params.temperature] * n),
        torch.tensor([params.top_k] * n, dtype=torch.int64),
        torch.tensor([params.top_p] * n),
    )


def emitted(results: list[VerifyResult]) -> list[tuple[list[int], int]]:
    return [(r.token_ids, r.num_accepted) for r in results]


# --- greedy tables ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("draft_ids", "target_ids", "token_ids", "num_accepted"),
    [
        ([5, 7, 2], [5, 7, 2, 4], [5, 7, 2, 4], 3),  # all accepted + bonus
        ([5, 7, 2], [6, 7, 2, 4], [6], 0),  # first rejected: recovered only
        ([5, 7, 2], [5, 7, 9, 4], [5, 7, 9], 2),  # middle rejection
        ([5, 7, 2], [5, 1, 2, 4], [5, 1], 1),  # a later match after a rejection does not count
        ([], [3], [3], 0),  # k = 0: a plain decode, the one token is the bonus
    ],
    ids=["bonus", "first-rejected", "middle-rejected", "no-resume", "k=0"],
)
def test_greedy_table(draft_ids, target_ids, token_ids, num_accepted):
    logits = argmax_rows(target_ids)
    expected = VerifyResult(token_ids, num_accepted, len(draft_ids))
    assert verify_greedy(logits, [draft_ids]) == [expected]
    assert verify_batch(logits, [Draft(draft_ids)], [GREEDY], [None]) == [expected]
    assert expected.bonus == (num_accepted == len(draft_ids))


def test_greedy_mixed_batch():
    # k = 0, 3, 1: rows [0], [1..4], [5..6].
    drafts = [[], [4, 4, 8], [2]]
    logits = argmax_rows([6, 4, 4, 1, 0, 3, 9])
    assert verify_greedy(logits, drafts) == [
        VerifyResult([6], 0, 0),
        VerifyResult([4, 4, 1], 2, 3),
        VerifyResult([3], 0, 1),
    ]


def test_batch_routes_greedy_and_sampled_in_request_order():
    # top_k = 1 makes sampling deterministic, so sampled requests must agree with greedy.
    one_token = SamplingParams(temperature=0.7, top_k=1)
    drafts = [Draft([4, 4, 8]), Draft([]), Draft([2], torch.full((1, 10), 0.1)), Draft([3, 5])]
    logits = argmax_rows([4, 4, 1, 0, 6, 2, 9, 3, 5, 7])
    results = verify_batch(
        logits, drafts, [GREEDY, one_token, one_token, GREEDY], [None, generator(0), None, None]
    )
    assert results == verify_greedy(logits, [d.token_ids for d in drafts])
    assert emitted(results) == [([4, 4, 1], 2), ([6], 0), ([2, 9], 1), ([3, 5, 7], 2)]


# --- sampled edge cases: outcomes that no seed may change ----------------------------------

TOP1 = SamplingParams(temperature=1.0, top_k=1)


def no_mass_on(token: int, vocab: int = 10) -> torch.Tensor:
    """[1, vocab] a drafter distribution with q(token) == 0."""
    probs = torch.full((1, vocab), 1.0 / (vocab - 1))
    probs[0, token] = 0.0
    return probs


@pytest.mark.parametrize(
    ("draft", "params", "token_ids", "num_accepted"),
    [
        (Draft([4]), TOP1, [4, 7], 1),  # p(x) = 1: always accepted, bonus from row 1
        (Draft([5]), TOP1, [4], 0),  # top-k gives p(x) = 0: always rejected
        (Draft([4], no_mass_on(4)), TOP1, [4], 0),  # q(x) = 0: an impossible proposal, rejected
        # p(x) = 0 with q spread out: the recovered token is drawn from max(p - q, 0) = p.
        (Draft([2], torch.full((1, 10), 0.1)), TOP1, [4], 0),
    ],
    ids=["certain-accept", "filtered-out", "q-zero", "filtered-out-with-probs"],
)
def test_sampled_edge_cases(draft, params, token_ids, num_accepted):
    logits = argmax_rows([4, 7])
    assert emitted([verify_sampled(logits, draft, params, generator(0))]) == [
        (token_ids, num_accepted)
    ]
    # The same request under 20 seeds, batched (one probabilities call instead of 20).
    results = verify_batch(
        logits.repeat(20, 1), [draft] * 20, [params] * 20, [generator(s) for s in range(20)]
    )
    assert emitted(results) == [(token_ids, num_accepted)] * 20


def test_residual_all_zero_falls_back_to_target():
    # q = 2p (not normalised): every ratio is 1/2, and on rejection max(p - q, 0) is all zero.
    logits = torch.tensor([[0.0, 1.0, 2.0, -9.0], [0.0, 0.0, 0.0, 0.0]])
    q = 2 * filtered_probs(logits[:1], SAMPLED)
    results = verify_batch(
        logits.repeat(40, 1),
        [Draft([1], q)] * 40,
        [SAMPLED] * 40,
        [generator(s) for s in range(40)],
    )
    num_rejected = sum(r.num_accepted == 0 for r in results)  # multinomial would raise on zeros
    assert 0 < num_rejected < 40


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: verify_greedy(torch.zeros(3, 5), [[1, 2], []]), r"must be \[4, vocab\]"),
        (lambda: verify_greedy(torch.zeros(5), [[]]), r"must be \[1, vocab\]"),
        (lambda: verify_sampled(torch.zeros(2, 5), Draft([7]), SAMPLED, None), r"in \[0, 5\)"),
        (
            lambda: verify_sampled(torch.zeros(2, 5), Draft([1], torch.ones(1, 4)), SAMPLED, None),
            r"probs \(1, 4\) must be \[1, 5\]",
        ),
        (lambda: verify_sampled(torch.zeros(1, 5), Draft([]), GREEDY, None), "temperature > 0"),
        (lambda: verify_batch(torch.zeros(1, 5), [Draft([])], [], [None]), "one draft, params"),
    ],
    ids=["rows", "not-2d", "token-range", "probs-shape", "greedy-params", "lengths"],
)
def test_rejects_malformed_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- a slow reference, written from the papers' pseudo-code --------------------------------


def reference_verify(
    logits: torch.Tensor,  # [num_rows, vocab]
    drafts: list[Draft],
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[tuple[list[int], int]]:
    """One request and one position at a time. Sampled requests follow the module's draw order:
    k uniforms first, then one multinomial draw."""
    out, start = [], 0
    for draft, prm, gen in zip(drafts, params, generators, strict=True):
        k = len(draft)
        rows = logits[start : start + k + 1]
        start += k + 1
        if prm.greedy:
            out.append(reference_greedy(rows, draft.token_ids))
        else:
            out.append(reference_sampled(rows, draft, prm, gen))
    return out


def reference_greedy(rows: torch.Tensor, draft_ids: list[int]) -> tuple[list[int], int]:
    token_ids = []
    for j, x in enumerate(draft_ids):
        target = int(rows[j].argmax())
        token_ids.append(target)
        if x != target:
            return token_ids, j
    return [*token_ids, int(rows[-1].argmax())], len(draft_ids)


def reference_sampled(
    rows: torch.Tensor, draft: Draft, prm: SamplingParams, gen: torch.Generator | None
) -> tuple[list[int], int]:
    k, vocab = len(draft), rows.shape[-1]
    p = filtered_probs(rows, prm)
    if draft.probs is None:
        q = torch.zeros(k, vocab)
        q[torch.arange(k), torch.tensor(draft.token_ids, dtype=torch.int64)] = 1.0
    else:
        q = draft.probs
    u = torch.rand(k, generator=gen)
    for j, x in enumerate(draft.token_ids):
        ratio = p[j, x] / q[j, x] if q[j, x] > 0 else torch.tensor(0.0)
        if u[j] < ratio.clamp(max=1.0):
            continue
        residual = (p[j] - q[j]).clamp(min=0.0)
        if residual.sum() <= 0:
            residual = p[j]
        recovered = int(torch.multinomial(residual[None], 1, generator=gen))
        return [*draft.token_ids[:j], recovered], j
    bonus = int(torch.multinomial(p[k][None], 1, generator=gen))
    return [*draft.token_ids, bonus], k


def random_batch(seed: int) -> tuple[torch.Tensor, list[Draft], list[SamplingParams], list[int]]:
    """Logits, drafts (half following the target's argmax), params and generator seeds."""
    rng, gen = random.Random(seed), generator(seed)
    vocab = 11
    drafts, params, seeds, all_rows = [], [], [], []
    for i in range(rng.randint(1, 5)):
        k = rng.randint(0, 4)
        rows = 2 * torch.randn(k + 1, vocab, generator=gen)  # [k + 1, vocab]
        probs = (
            torch.softmax(torch.randn(k, vocab, generator=gen), -1) if rng.random() < 0.5 else None
        )
        draft_ids = [
            int(rows[j].argmax()) if rng.random() < 0.6 else rng.randrange(vocab) for j in range(k)
        ]
        drafts.append(Draft(draft_ids, probs))
        params.append(
            SamplingParams(
                temperature=rng.choice([0.0, 0.0, 0.5, 1.0, 1.5]),
                top_k=rng.choice([0, 0, 3]),
                top_p=rng.choice([1.0, 1.0, 0.8]),
            )
        )
        seeds.append(1000 * seed + i)
        all_rows.append(rows)
    return torch.cat(all_rows), drafts, params, seeds


@pytest.mark.parametrize("seed", range(40))
def test_matches_reference(seed):
    logits, drafts, params, seeds = random_batch(seed)
    results = verify_batch(logits, drafts, params, [generator(s) for s in seeds])
    expected = reference_verify(logits, drafts, params, [generator(s) for s in seeds])
    assert emitted(results) == expected
    assert all(len(r.token_ids) == r.num_accepted + 1 for r in results)
    # verify_sampled is verify_batch for one sampled request, so the lossless tests cover it.
    start = 0
    for draft, prm, s, want in zip(drafts, params, seeds, expected, strict=True):
        rows = logits[start : start + len(draft) + 1]
        start += len(draft) + 1
        if not prm.greedy:
            assert emitted([verify_sampled(rows, draft, prm, generator(s))]) == [want]


# --- reproducibility -----------------------------------------------------------------------


def test_same_seed_same_output():
    logits, drafts, _, _ = random_batch(3)
    params = [SamplingParams(temperature=1.0)] * len(drafts)

    def run(seed: int) -> list[tuple[list[int], int]]:
        gens = [generator(seed + i) for i in range(len(drafts))]
        return emitted(verify_batch(logits, drafts, params, gens))

    assert run(7) == run(7)
    assert len({str(run(seed)) for seed in range(10)}) > 1  # the generators are what vary


def test_batch_composition_does_not_change_a_seeded_request():
    mine = Draft([1, 2, 3], torch.softmax(torch.randn(3, 11, generator=generator(0)), -1))
    mine_params = SamplingParams(temperature=0.9, top_p=0.9, seed=5)
    mine_logits = torch.randn(4, 11, generator=generator(1))
    alone = verify_batch(mine_logits, [mine], [mine_params], [generator(5)])
    for seed in range(10):
        logits, drafts, params, seeds = random_batch(seed)
        # Put the request in the middle of someone else's batch.
        at = len(drafts) // 2
        rows = sum(len(d) + 1 for d in drafts[:at])
        batch_logits = torch.cat([logits[:rows], mine_logits, logits[rows:]])
        gens = [generator(s) for s in seeds]
        results = verify_batch(
            batch_logits,
            [*drafts[:at], mine, *drafts[at:]],
            [*params[:at], mine_params, *params[at:]],
            [*gens[:at], generator(5), *gens[at:]],
        )
        assert results[at] == alone[0]


def test_greedy_requests_draw_no_randomness():
    gen = generator(0)
    state = gen.get_state()
    verify_batch(argmax_rows([1, 2]), [Draft([1])], [GREEDY], [gen])
    assert torch.equal(gen.get_state(), state)


# --- the lossless property -----------------------------------------------------------------


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of ``counts`` [vocab] against ``probs`` [vocab] (cells with p > 0)."""
    support = probs > 0
    assert counts[~support].sum() == 0, "a token the target cannot emit was emitted"
    expected = counts.sum() * probs[support]
    return float(((counts[support] - expected) ** 2 / expected).sum())


def counts_of(token_ids: list[int]) -> torch.Tensor:
    return torch.bincount(torch.tensor(token_ids), minlength=VOCAB).double()


def assert_rate(num_hits: int, num_trials: int, rate: float) -> None:
    """Within three standard errors of the theoretical rate."""
    standard_error = (rate * (1 - rate) / num_trials) ** 0.5
    assert abs(num_hits / num_trials - rate) < 3 * standard_error, (num_hits / num_trials, rate)


def drafter_draws(probs: torch.Tensor, seed: int) -> list[int]:
    """NUM_TRIALS tokens drawn from ``probs`` [vocab]: the drafter's proposals."""
    return torch.multinomial(
        probs, NUM_TRIALS, replacement=True, generator=generator(seed)
    ).tolist()


def test_lossless_k1_with_drafter_probs():
    """(a) x ~ q, q given: the first emitted token ~ p, accepted with rate sum min(p, q)."""
    logits = torch.stack([P.log(), Q.log()])  # the second row only feeds the bonus token
    results = verify_batch(
        logits.repeat(NUM_TRIALS, 1),
        [Draft([x], Q[None]) for x in drafter_draws(Q, 11)],
        [SAMPLED] * NUM_TRIALS,
        [generator(10)] * NUM_TRIALS,
    )
    stat = chi_square(counts_of([r.token_ids[0] for r in results]), P)
    print(f"chi-square k=1 probs: {stat:.2f} (df 5)")
    assert stat < CHI2_999[5]
    assert_rate(sum(r.num_accepted for r in results), NUM_TRIALS, float(torch.minimum(P, Q).sum()))


def test_lossless_k1_point_mass():
    """(b) Draft.probs None: the output ~ p for each fixed draft token, so also for x ~ q."""
    logits = torch.stack([P.log(), Q.log()])
    draft_ids = drafter_draws(Q, 12)
    results = verify_batch(
        logits.repeat(NUM_TRIALS, 1),
        [Draft([x]) for x in draft_ids],
        [SAMPLED] * NUM_TRIALS,
        [generator(13)] * NUM_TRIALS,
    )
    first = [r.token_ids[0] for r in results]
    stat = chi_square(counts_of(first), P)
    per_draft = sum(
        chi_square(counts_of([t for t, x in zip(first, draft_ids, strict=True) if x == d]), P)
        for d in range(VOCAB)
    )
    print(f"chi-square k=1 point mass: {stat:.2f} (df 5); per draft token {per_draft:.2f} (df 30)")
    assert stat < CHI2_999[5]
    assert per_draft < CHI2_999[30]
    assert_rate(sum(r.num_accepted for r in results), NUM_TRIALS, float((P * Q).sum()))


def test_lossless_k1_filtered():
    """(c) temperature, top-k and top-p: the output follows the filtered p, and proposals the
    filters removed (q gives them half its mass) are always rejected."""
    params = SamplingParams(temperature=1.3, top_k=5, top_p=0.8)
    logits = torch.stack([P.log(), Q.log()])
    p = filtered_probs(logits[:1], params)[0]
    assert (p > 0).tolist() == [True] * 4 + [False] * 2  # top-k drops token 5, top-p token 4
    draft_ids = drafter_draws(Q, 15)
    results = verify_batch(
        logits.repeat(NUM_TRIALS, 1),
        [Draft([x], Q[None]) for x in draft_ids],
        [params] * NUM_TRIALS,
        [generator(14)] * NUM_TRIALS,
    )
    stat = chi_square(counts_of([r.token_ids[0] for r in results]), p)
    print(f"chi-square k=1 filtered: {stat:.2f} (df 3)")
    assert stat < CHI2_999[3]
    assert all(r.num_accepted == 0 for r, x in zip(results, draft_ids, strict=True) if p[x] == 0)
    assert_rate(sum(r.num_accepted for r in results), NUM_TRIALS, float(torch.minimum(p, Q).sum()))


def conditional_table(seed: int, *shape: int) -> torch.Tensor:
    """[*shape, VOCAB] random distributions, none too small for chi-square cells."""
    return torch.softmax(0.7 * torch.randn(*shape, VOCAB, generator=generator(seed)), -1)


def test_lossless_k2_conditional_rows():
    """k = 2 where row 1 is the target's distribution given the first draft token: the first
    emitted token ~ p, and after an accepted a the second ~ p'(. | a)."""
    p_next = conditional_table(20, VOCAB)  # [a, vocab] target at position 1 given a
    q_next = conditional_table(21, VOCAB)  # [a, vocab] drafter at position 1 given a
    p_bonus = conditional_table(22, VOCAB, VOCAB)  # [a, b, vocab] target at position 2
    first_ids = drafter_draws(Q, 23)
    second_ids = torch.multinomial(q_next[first_ids], 1, generator=generator(24))[:, 0].tolist()
    drafts, all_logits = [], []
    for a, b in zip(first_ids, second_ids, strict=True):
        drafts.append(Draft([a, b], torch.stack([Q, q_next[a]])))
        all_logits.append(torch.stack([P, p_next[a], p_bonus[a, b]]).log())
    results = verify_batch(
        torch.cat(all_logits), drafts, [SAMPLED] * NUM_TRIALS, [generator(25)] * NUM_TRIALS
    )
    stat = chi_square(counts_of([r.token_ids[0] for r in results]), P)
    kept = [r.token_ids[:2] for r in results if r.num_accepted >= 1]
    second = sum(
        chi_square(counts_of([t for f, t in kept if f == a]), p_next[a]) for a in range(VOCAB)
    )
    print(f"chi-square k=2: first {stat:.2f} (df 5); second given first {second:.2f} (df 30)")
    assert stat < CHI2_999[5]
    assert second < CHI2_999[30]
    assert_rate(len(kept), NUM_TRIALS, float(torch.minimum(P, Q).sum()))
