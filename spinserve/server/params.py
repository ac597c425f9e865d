"""From a validated API request to engine sub-requests: one per prompt and choice.

Pure translation, no I/O: sampling values become `SamplingParams`, speculation fields
`SpecParams`, and a seeded request's choice i gets seed + i so that the n choices differ
yet each is reproducible. The bounds that depend on the served model (`ModelBounds`) are
checked here, before any tokenizing: prompt characters, token ids, max_tokens, top_k.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import NO_DRAFTER, SpecParams, unknown_drafter
from spinserve.server.errors import ApiError, bad_request
from spinserve.server.limits import check_prompt_size
from spinserve.server.messages import Prompt, SubRequest
from spinserve.server.protocol import (
    MAX_SEED,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    message_dicts,
    unsupported_field,
)

DEFAULT_TEMPERATURE = 1.0  # OpenAI's default


@dataclass(frozen=True)
class ModelBounds:
    """What the served model allows: its context (prompt and output together, in tokens)
    and its vocabulary (the width of its logits)."""

    max_model_len: int
    vocab_size: int


def completion_prompts(request: CompletionRequest, bounds: ModelBounds) -> list[Prompt]:
    prompt = request.prompt
    if isinstance(prompt, str) or all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    for p in prompts:
        if isinstance(p, str):
            check_unicode(p, "prompt")
            check_prompt_size([p], bounds.max_model_len, "prompt")
        else:
            check_token_ids(p, bounds.vocab_size)  # type: ignore[arg-type]
    return [Prompt(text=p) if isinstance(p, str) else Prompt(token_ids=tuple(p)) for p in prompts]


def chat_prompt(request: ChatCompletionRequest, bounds: ModelBounds) -> Prompt:
    try:
        messages = message_dicts(request.messages)
    except ValueError as exc:
        raise bad_request(str(exc), "messages") from exc
    if len(messages) > bounds.max_model_len:  # each message takes a token at least
        raise bad_request(
            f"{len(messages)} messages cannot fit this model's context of "
            f"{bounds.max_model_len} tokens",
            "messages",
            "context_length_exceeded",
        )
    texts = [text for message in messages for text in message.values()]
    for text in texts:
        check_unicode(text, "messages")
    check_prompt_size(texts, bounds.max_model_len, "messages")
    return Prompt(messages=messages)


def check_token_ids(token_ids: Sequence[int], vocab_size: int) -> None:
    bad = next((t for t in token_ids if t >= vocab_size), None)
    if bad is not None:
        raise bad_request(
            f"token id {bad} is outside the vocabulary (ids 0 to {vocab_size - 1})", "prompt"
        )


def check_unicode(text: str, param: str) -> None:
    """JSON can carry lone surrogates (``"\\ud800"``), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise bad_request(f"{param} is not valid Unicode: {exc.reason}", param) from exc


def subrequests(
    request_id: str,
    prompts: Sequence[Prompt],
    request: SamplingFields,
    max_tokens: int | None,
    *,
    drafters: Sequence[str],
    bounds: ModelBounds,
    prompt_param: str,
) -> list[SubRequest]:
    """``len(prompts) * n`` sub-requests; choice ``p * n + i`` is prompt p's i-th."""
    check_supported(request, drafters)
    given = "max_completion_tokens" if getattr(request, "max_completion_tokens", None) else None
    check_max_tokens(max_tokens, bounds.max_model_len, given or "max_tokens")
    n = request.n or 1
    arrival = time.monotonic()
    return [
        SubRequest(
            request_id=f"{request_id}-{p * n + i}",
            index=p * n + i,
            prompt=prompt,
            params=sampling_params(request, max_tokens, i, bounds.vocab_size),
            spec=SpecParams(request.drafter, request.num_draft_tokens),
            max_tokens=max_tokens,
            arrival_time=arrival,
            prompt_param=prompt_param,
            stream=bool(request.stream),
        )
        for p, prompt in enumerate(prompts)
        for i in range(n)
    ]


def check_supported(request: SamplingFields, drafters: Sequence[str]) -> None:
    field = unsupported_field(request)
    if field is not None:
        raise bad_request(f"{field} is not supported by spinserve", field, "unsupported")
    if request.policy is not None:
        raise bad_request(
            "policy is the server's (--policy); a request names its drafter with drafter "
            f'("{NO_DRAFTER}": no speculation)',
            "policy",
            "unsupported",
        )
    if request.drafter is not None and (why := unknown_drafter(request.drafter, drafters)):
        raise bad_request(why, "drafter")  # early, before tokenizing; the engine checks too


def check_max_tokens(max_tokens: int | None, max_model_len: int, param: str) -> None:
    """Early, before tokenizing: the prompt takes a token at least. The engine thread checks
    prompt and output together once the prompt's length is known."""
    if max_tokens is not None and max_tokens >= max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens, prompt "
            f"included; {param} must be below it, got {max_tokens}",
            param,
            "context_length_exceeded",
        )


def sampling_params(
    request: SamplingFields, max_tokens: int | None, choice: int, vocab_size: int
) -> SamplingParams:
    """Engine parameters of choice ``choice``. A top_k of the vocabulary size or more keeps
    every token, which is top_k off (0), as -1 is."""
    stop = request.stop or ()
    seed = request.seed
    top_k = request.top_k or 0
    try:
        return SamplingParams(
            max_tokens=max_tokens or 1,  # None: resolved once the prompt's length is known
            temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=top_k if 0 < top_k < vocab_size else 0,
            seed=None if seed is None else (seed + choice) % (MAX_SEED + 1),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            ignore_eos=bool(request.ignore_eos),
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
