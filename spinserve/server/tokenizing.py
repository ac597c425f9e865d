"""`TokenizerLanes`: prompts are tokenized off the event loop, short ones never behind long.

Two threads, each with its own copy of the tokenizer (a Hugging Face tokenizer must not be
shared between threads: each call resets its padding and truncation state). Requests whose
prompts are short (`SHORT_PROMPT_CHARS` characters in all, some milliseconds of work) take
the short lane; longer ones the long lane, so a request of a huge prompt delays other huge
prompts only. The tokenizer releases the GIL while it encodes: the event loop and the engine
thread run on meanwhile. The prompt-size bound (`limits.check_prompt_size`) caps each job.
"""

from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from spinserve.server.messages import SubRequest, tokenized

SHORT_PROMPT_CHARS = 16_384


@dataclass(frozen=True)
class _Lane:
    executor: ThreadPoolExecutor
    tokenizer: Any


class TokenizerLanes:
    def __init__(self, tokenizer: Any, special_in_messages: bool) -> None:
        """``tokenizer`` is the engine's: each lane gets a copy of its own."""
        self._short, self._long = (
            _Lane(
                ThreadPoolExecutor(1, thread_name_prefix=f"spinserve-tokenize-{name}"),
                copy.deepcopy(tokenizer),
            )
            for name in ("short", "long")
        )
        self._special_in_messages = special_in_messages

    async def tokenize(self, subrequests: list[SubRequest]) -> list[SubRequest]:
        """``subrequests`` with token-id prompts (raises the tokenizer's 400s)."""
        distinct = {id(s.prompt): s.prompt for s in subrequests}.values()
        num_chars = sum(prompt.num_chars for prompt in distinct)
        lane = self._short if num_chars <= SHORT_PROMPT_CHARS else self._long
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            lane.executor, tokenized, subrequests, lane.tokenizer, self._special_in_messages
        )

    def shutdown(self) -> None:
        for lane in (self._short, self._long):
            lane.executor.shutdown(wait=False, cancel_futures=True)
