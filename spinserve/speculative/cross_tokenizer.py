"""Cross-tokenizer drafting: a model with another vocabulary drafts text for the target.

Each step the request's committed target tokens are decoded to text (special tokens kept as
text, so chat markup the drafter also knows stays markup) and encoded with the drafter's
tokenizer; `DraftModel` keeps the common prefix of its cache and feeds the rest, so the small
differences re-tokenization makes at the boundary cost a rollback of a few tokens, not a new
prefill. The drafter then decodes ahead; its new text is encoded with the target's tokenizer.

Boundary rules (why each exists):
- the drafted text is what the drafter's decode adds beyond the decoded context, so a token
  that merges with the context's last characters is handled by the tokenizers, not by us;
- drafting stops at the drafter's end-of-generation tokens, which have no target meaning;
- text after an incomplete UTF-8 character (U+FFFD) is dropped, and no draft is made while
  the context itself ends inside one;
- the last target token is dropped unless the text ends at whitespace: the drafter's last
  token may end mid-word, and its target tokenization would then be a prefix of a longer
  target token that the target would reject.
The proposals are deterministic (no distribution over the target vocabulary exists), so
verification treats them as point masses: the output is exactly the target's, greedy or
sampled.
"""

from __future__ import annotations

from collections.abc import Sequence

from spinserve.config.sampling import SamplingParams
from spinserve.loading.loader import LoadedModel
from spinserve.loading.tokenizer import Tokenizer
from spinserve.speculative.draft_model import DraftJob, DraftModel
from spinserve.speculative.drafter import Draft, DraftRequest

_GREEDY = SamplingParams(max_tokens=1)
# The drafter decodes one token past k: `retokenize` drops the last target token of text
# that may end mid-word, and the extra token usually makes up for it. Each extra round
# costs a whole drafter forward (two extra rounds: 0.80x the decode speed of one).
_EXTRA_DRAFTER_TOKENS = 1


def draft_text(tokenizer: Tokenizer, context_ids: list[int], drafted_ids: list[int]) -> str:
    """The text ``drafted_ids`` add after ``context_ids``, decoded in context."""
    base = tokenizer.decode(context_ids, skip_special_tokens=False)
    full = tokenizer.decode(context_ids + drafted_ids, skip_special_tokens=False)
    if full.startswith(base):
        text = full[len(base) :]
    else:  # the tokenizer normalised the boundary: fall back to the draft alone
        text = tokenizer.decode(drafted_ids, skip_special_tokens=False)
    cut = text.find("\ufffd")
    return text if cut < 0 else text[:cut]


def retokenize(text: str, target: Tokenizer, num_tokens: int) -> list[int]:
    """Target tokens for drafted ``text``, at most ``num_tokens``, without a last token that
    may be a fragment of a longer one."""
    if not text:
        return []
    ids = target.encode(text, add_special_tokens=False)
    if ids and not text[-1].isspace():
        ids = ids[:-1]
    return ids[:num_tokens]


class CrossTokenizerDrafter:
    is_lookup = False

    def __init__(
        self,
        name: str,
        drafter: LoadedModel,
        target_tokenizer: Tokenizer,
        kv_cache_gib: float,
        kv_cache_dtype: str = "float16",
        prefix_caching: bool = True,
    ) -> None:
        self.name = name
        self._model = DraftModel(
            drafter.model,
            kv_cache_gib,
            kv_cache_dtype=kv_cache_dtype,
            prefix_caching=prefix_caching,
        )
        self._drafter_tok = drafter.tokenizer
        self._target_tok = target_tokenizer
        self._stop_ids = frozenset(drafter.tokenizer.eos_token_ids)

    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        contexts = [self._drafter_context(r.token_ids) for r in requests]
        jobs = [
            DraftJob(
                r.request_id,
                ctx,
                r.num_draft_tokens + _EXTRA_DRAFTER_TOKENS if ctx else 0,
                _GREEDY,
            )
            for r, ctx in zip(requests, contexts, strict=True)
        ]
        outs = self._model.draft(jobs)
        drafts = []
        for r, ctx, out in zip(requests, contexts, outs, strict=True):
            ids = self._until_stop(out.token_ids)
            text = draft_text(self._drafter_tok, ctx, ids)
            drafts.append(Draft(retokenize(text, self._target_tok, r.num_draft_tokens)))
        return drafts

    def _drafter_context(self, target_ids: Sequence[int]) -> list[int]:
        """The context in drafter tokens; empty (no draft this step) while the context ends
        inside a multi-byte character, which text cannot carry across tokenizers."""
        text = self._target_tok.decode(list(target_ids), skip_special_tokens=False)
        return [] if text.endswith("\ufffd") else self._drafter_tok.encode(text)

    def _until_stop(self, ids: list[int]) -> list[int]:
        for i, token in enumerate(ids):
            if token in self._stop_ids:
                return ids[:i]
        return ids

    def finish(self, request_id: str, token_ids: Sequence[int]) -> None:
        self._model.release(request_id)
