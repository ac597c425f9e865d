"""Response bodies and stream chunks in OpenAI's formats, for completions and chat.

Pure functions of the collected outputs; no I/O. Each choice may carry a ``spinserve``
object: the drafter it used and its speculation statistics (`SpecStats.to_dict()`), sent
once the choice is finished (in the non-streamed choice, or the streamed chunk with its
``finish_reason``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from spinserve.server.messages import Update

DONE = "data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens``: prompt tokens served from the prefix cache."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def spinserve_info(update: Update) -> dict[str, Any]:
    return {
        "drafter": update.drafter,
        "speculation": update.speculation,
        "choices": update.choices,
    }


@dataclass(frozen=True)
class Envelope:
    """What every body and chunk of one response repeats."""

    id: str
    created: int
    model: str
    chat: bool

    def body(self, choices: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
        obj = "chat.completion" if self.chat else "text_completion"
        return self._head(obj) | {"choices": choices, "usage": usage}

    def chunk(self, choices: list[dict[str, Any]], with_usage: bool) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return self._head(obj) | {"choices": choices} | ({"usage": None} if with_usage else {})

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return self._head(obj) | {"choices": [], "usage": usage}

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    # --- streamed choices ----------------------------------------------------------------

    def role_choice(self, index: int) -> dict[str, Any]:
        """The first chunk of a chat choice announces the role (as OpenAI's does)."""
        return _delta_choice(index, {"role": "assistant", "content": ""}, None)

    def text_choice(self, index: int, text: str) -> dict[str, Any]:
        if self.chat:
            return _delta_choice(index, {"content": text}, None)
        return {"index": index, "text": text, "logprobs": None, "finish_reason": None}

    def final_choice(self, update: Update) -> dict[str, Any]:
        """The chunk that ends a choice: no text, its finish_reason and statistics."""
        if self.chat:
            choice = _delta_choice(update.index, {}, None)
        else:
            choice = self.text_choice(update.index, "")
        return choice | {"finish_reason": update.finish_reason, "spinserve": spinserve_info(update)}


def _delta_choice(index: int, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


@dataclass
class Collected:
    """A non-streamed response being filled: the final update of each choice."""

    envelope: Envelope
    num_prompt_tokens: list[int]
    n: int
    finals: dict[int, Update] = field(default_factory=dict)

    def add(self, update: Update) -> None:
        if update.finished:
            self.finals[update.index] = update

    def body(self) -> dict[str, Any]:
        choices = [self._choice(self.finals[i]) for i in sorted(self.finals)]
        return self.envelope.body(choices, self.usage())

    def usage(self) -> dict[str, Any]:
        cached = {i: u.num_cached_tokens for i, u in self.finals.items()}
        return usage(
            prompt_tokens(self.num_prompt_tokens, self.n),
            self.completion_tokens(),
            cached_tokens(cached, len(self.num_prompt_tokens), self.n),
        )

    def completion_tokens(self) -> int:
        return sum(u.num_output_tokens for u in self.finals.values())

    def _choice(self, u: Update) -> dict[str, Any]:
        if self.envelope.chat:
            content = {"message": {"role": "assistant", "content": u.text}}
        else:
            content = {"text": u.text}
        return (
            {"index": u.index}
            | content
            | {"logprobs": None, "finish_reason": u.finish_reason, "spinserve": spinserve_info(u)}
        )


def prompt_tokens(per_choice: list[int], n: int) -> int:
    """Usage counts each prompt once, however many choices it has (as OpenAI does)."""
    return sum(per_choice[::n])


def cached_tokens(per_choice: dict[int, int], num_choices: int, n: int) -> int:
    """Cached prompt tokens, each prompt counted once as in `prompt_tokens`.
    ``per_choice``: choice index -> its cached tokens (a choice not finished: none)."""
    return prompt_tokens([per_choice.get(i, 0) for i in range(num_choices)], n)
