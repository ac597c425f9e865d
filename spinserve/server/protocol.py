"""Request bodies of the OpenAI-compatible API, as pydantic models (they make the schema).

Unknown fields are ignored, as OpenAI's own server and vLLM do. Fields of OpenAI's API that
spinserve cannot honour (log-probabilities, penalties, tools...) are accepted only at their
"off" values (`unsupported_field`), so a client never silently gets something it did not
ask for. Every number a client sends is bounded here, so that errors name the field and no
value can overflow further in (numbers are strict: ``true`` is not 1; ``NaN`` is refused);
the bounds that depend on the model (the context, the vocabulary) are checked in `params`,
and `SamplingParams` checks again. Extra fields: ``top_k``, ``ignore_eos`` (as in vLLM),
``drafter`` and ``num_draft_tokens`` (speculation per request).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt
from pydantic_core import PydanticCustomError

from spinserve.config.speculative import MAX_DRAFT_TOKENS

MAX_N = 16  # choices per prompt
MAX_PROMPTS = 16  # prompts in one completions request
MAX_STOP = 16
MAX_STOP_CHARS = 256  # characters of one stop string
MAX_SEED = 2**63 - 1
MAX_INT32 = 2**31 - 1  # max_tokens and top_k; the context and the vocabulary bound them again
# The roles every chat template renders; a template may print any role text it is given,
# so an open set would let a client write its own turn markers.
Role = Literal["system", "user", "assistant"]

StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
StopStrings = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]


def _prompt_shape(value: Any) -> Any:
    """Errors that say what is wrong with a list prompt, before the union below tries each
    of its forms (whose own errors would describe the wrong form)."""
    if not isinstance(value, list):
        return value
    for ids in [value, *(v for v in value if isinstance(v, list))]:
        scalars = [v for v in ids if not isinstance(v, str | list | dict)]
        if scalars and any(type(v) is not int for v in scalars):
            bad = next(v for v in scalars if type(v) is not int)
            raise PydanticCustomError(
                "token_id_type", "token ids must be integers, got {bad}", {"bad": repr(bad)}
            )
    if len(value) > MAX_PROMPTS and not all(type(v) is int for v in value):
        raise PydanticCustomError(
            "too_many_prompts",
            "a list holds at most {limit} prompts, got {num}",
            {"limit": MAX_PROMPTS, "num": len(value)},
        )
    return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = False


class SamplingFields(BaseModel):
    """What completions and chat share: sampling, streaming and speculation."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="the served model id (see GET /v1/models)")
    n: StrictInt | None = Field(1, ge=1, le=MAX_N)
    temperature: Number | None = Field(None, ge=0.0, le=100.0, description="default 1; 0 greedy")
    top_p: Number | None = Field(None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(
        None, ge=-1, le=MAX_INT32, description="-1, 0 or at least the vocabulary size: off"
    )
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED, description="choice i uses seed + i")
    stop: StopStrings | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = False
    drafter: str | None = Field(
        None, description='a loaded drafter (see GET /v1/models), or "none" for no speculation'
    )
    num_draft_tokens: StrictInt | None = Field(None, ge=0, le=MAX_DRAFT_TOKENS)
    policy: str | None = Field(
        None,
        description="not per request: the selection policy is the server's (--policy); "
        'name a drafter instead, or drafter "none" for no speculation',
    )
    user: str | None = None
    # OpenAI fields spinserve cannot honour: allowed only when off (see unsupported_field).
    logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None


class CompletionRequest(SamplingFields):
    """POST /v1/completions. ``prompt``: text, token ids, or a list of either (a batch)."""

    prompt: Annotated[
        str
        | TokenIds
        | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)],
        BeforeValidator(_prompt_shape),
    ]
    max_tokens: StrictInt | None = Field(
        16, ge=1, le=MAX_INT32, description="default 16, as OpenAI's"
    )
    echo: Any = None
    suffix: Any = None
    best_of: Any = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions; rendered with the model's chat template."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: StrictInt | None = Field(
        None, ge=1, le=MAX_INT32, description="default: up to the context length"
    )
    max_completion_tokens: StrictInt | None = Field(
        None, ge=1, le=MAX_INT32, description="overrides max_tokens"
    )
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    response_format: Any = None


_OFF_VALUES: dict[str, tuple[Any, ...]] = {
    "response_format": ({"type": "text"},),
    "tool_choice": ("none", "auto"),
    "best_of": (1,),
}
_UNSUPPORTED = (
    "logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "echo",
    "suffix",
    "best_of",
    "top_logprobs",
    "tools",
    "tool_choice",
    "response_format",
)


def unsupported_field(request: BaseModel) -> str | None:
    """The first field set to something spinserve cannot do, or None."""
    for name in _UNSUPPORTED:
        value = getattr(request, name, None)
        if value in (None, False, 0, "", [], {}) or value in _OFF_VALUES.get(name, ()):
            continue
        return name
    return None


def message_dicts(messages: list[ChatMessage]) -> tuple[dict[str, str], ...]:
    """Messages as the chat template takes them; text parts are joined, others refused."""
    out = []
    for message in messages:
        content = message.content
        if isinstance(content, list):
            if any(part.type != "text" or part.text is None for part in content):
                raise ValueError("only text content parts are supported")
            content = "".join(part.text or "" for part in content)
        entry = {"role": message.role, "content": content or ""}
        if message.name:
            entry["name"] = message.name
        out.append(entry)
    return tuple(out)
