"""From verified tokens to `RequestOutput`s: append, detokenize, stop. No torch.

Tokens are appended one by one and the request stops at the first that ends it (an end-of-
generation or stop token, a stop string, max_tokens or the context), so a step that emits
several tokens never runs past a stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from spinserve.engine.detokenizer import Decoder, IncrementalDetokenizer
from spinserve.engine.outputs import RequestOutput
from spinserve.engine.request import FinishReason, Request


@dataclass
class Tracked:
    """A request the engine runs, with the detokenizer of its output."""

    request: Request
    detokenizer: IncrementalDetokenizer

    @staticmethod
    def of(request: Request, tokenizer: Decoder) -> Tracked:
        return Tracked(request, IncrementalDetokenizer(tokenizer, request.params.stop))


def advance(tracked: Tracked, tokens: list[int], max_model_len: int) -> RequestOutput:
    """Append verified tokens one by one, stopping at the first that ends the request
    (`Request.is_finished` tells the caller to retire it)."""
    request = tracked.request
    delta, taken = "", []
    for token in tokens:
        request.append_output(token)
        taken.append(token)
        delta += tracked.detokenizer.add([token])
        reason = _finish_reason(tracked, token, max_model_len)
        if reason is not None:
            request.finish(reason)
            if not tracked.detokenizer.stopped:
                delta += tracked.detokenizer.flush()
            break
    return output(tracked, taken, delta)


def _finish_reason(tracked: Tracked, token: int, max_model_len: int) -> FinishReason | None:
    request = tracked.request
    if token in request.eos_token_ids or token in request.params.stop_token_ids:
        return FinishReason.STOP
    if tracked.detokenizer.stopped:
        return FinishReason.STOP
    if len(request.output_ids) >= request.params.max_tokens:
        return FinishReason.LENGTH
    if request.num_tokens >= max_model_len:
        return FinishReason.LENGTH
    return None


def output(
    tracked: Tracked, new_ids: list[int], delta: str, error: str | None = None
) -> RequestOutput:
    """The request's output after this step: ``new_ids``/``delta`` new, totals so far."""
    r = tracked.request
    detok = tracked.detokenizer
    return RequestOutput(
        request_id=r.request_id,
        new_token_ids=new_ids,
        new_text=delta,
        token_ids=list(r.output_ids),
        text=detok.text if r.is_finished else detok.text[: detok.num_emitted],
        num_prompt_tokens=r.num_prompt_tokens,
        num_cached_tokens=r.num_cached_tokens or 0,
        finished=r.is_finished,
        finish_reason=r.finish_reason.value if r.finish_reason else None,
        arrival_time=r.arrival_time,
        first_token_time=r.first_token_time,
        drafter=r.last_drafter if r.policy_managed else r.drafter,
        spec_stats=r.spec_stats.snapshot(),
        choice_counts=dict(r.choice_counts) if r.policy_managed else None,
        error=error,
    )
