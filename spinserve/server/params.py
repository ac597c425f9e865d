"""From a validated API request to engine sub-requests: one per prompt and choice.

Pure translation, no I/O: sampling values become `SamplingParams`, speculation fields
`SpecParams`, and a seeded request's choice i gets seed + i so that the n choices differ
yet each is reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from spinserve.config.sampling import SamplingParams
from spinserve.config.selection import parse_policy
from spinserve.config.speculative import NO_DRAFTER, SpecParams
from spinserve.server.errors import ApiError, bad_request
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


def completion_prompts(request: CompletionRequest) -> list[Prompt]:
    prompt = request.prompt
    for text in [prompt] if isinstance(prompt, str) else prompt:
        if isinstance(text, str):
            check_unicode(text, "prompt")
    if isinstance(prompt, str):
        return [Prompt(text=prompt)]
    if all(isinstance(p, int) for p in prompt):
        return [Prompt(token_ids=tuple(prompt))]  # type: ignore[arg-type]
    return [Prompt(text=p) if isinstance(p, str) else Prompt(token_ids=tuple(p)) for p in prompt]


def chat_prompt(request: ChatCompletionRequest) -> Prompt:
    try:
        messages = message_dicts(request.messages)
    except ValueError as exc:
        raise bad_request(str(exc), "messages") from exc
    for message in messages:
        for text in message.values():
            check_unicode(text, "messages")
    return Prompt(messages=messages)


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
    drafters: Sequence[str],
    prompt_param: str,
    policy: str = "spin",
) -> list[SubRequest]:
    """``len(prompts) * n`` sub-requests; choice ``p * n + i`` is prompt p's i-th."""
    check_supported(request, drafters)
    drafter = requested_drafter(request, policy)
    n = request.n or 1
    arrival = time.monotonic()
    return [
        SubRequest(
            request_id=f"{request_id}-{p * n + i}",
            index=p * n + i,
            prompt=prompt,
            params=sampling_params(request, max_tokens, i),
            spec=SpecParams(drafter, request.num_draft_tokens),
            max_tokens=max_tokens,
            arrival_time=arrival,
            prompt_param=prompt_param,
        )
        for p, prompt in enumerate(prompts)
        for i in range(n)
    ]


def requested_drafter(request: SamplingFields, server_policy: str) -> str | None:
    """The drafter a request names, through ``drafter`` or ``policy`` (None: the server's
    selection policy chooses, step by step)."""
    if request.policy is None or request.policy == server_policy:
        return request.drafter
    if request.drafter is not None:
        raise bad_request("give drafter or policy, not both", "policy")
    if request.policy == NO_DRAFTER:
        return NO_DRAFTER
    try:
        kind, arg = parse_policy(request.policy)
    except ValueError as exc:
        raise bad_request(str(exc), "policy") from exc
    if kind != "fixed":
        raise bad_request(
            f"a request may ask for the server's policy ({server_policy}), fixed:NAME or "
            f'"{NO_DRAFTER}", not {request.policy!r}',
            "policy",
        )
    return arg


def check_supported(request: SamplingFields, drafters: Sequence[str]) -> None:
    field = unsupported_field(request)
    if field is not None:
        raise bad_request(f"{field} is not supported by spinserve", field, "unsupported")
    named, param = request.drafter, "drafter"
    if request.policy and request.policy.startswith("fixed:"):
        named, param = request.policy.partition(":")[2], "policy"
    if named not in (None, NO_DRAFTER, *drafters):
        loaded = ", ".join(drafters) or "none"
        raise bad_request(
            f"unknown drafter {named!r}; loaded drafters: {loaded} "
            f'(or "{NO_DRAFTER}" for no speculation)',
            param,
        )


def sampling_params(request: SamplingFields, max_tokens: int | None, choice: int) -> SamplingParams:
    stop = request.stop or ()
    seed = request.seed
    try:
        return SamplingParams(
            max_tokens=max_tokens or 1,  # None: resolved once the prompt's length is known
            temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=max(0, request.top_k or 0),
            seed=None if seed is None else (seed + choice) % (MAX_SEED + 1),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            ignore_eos=bool(request.ignore_eos),
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
