"""The step loop: schedule, run the model, sample, detokenize, retire finished requests."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from spinserve.config.engine import EngineConfig
from spinserve.config.sampling import SamplingParams
from spinserve.engine.detokenizer import IncrementalDetokenizer
from spinserve.engine.outputs import RequestOutput
from spinserve.engine.request import FinishReason, Request
from spinserve.engine.scheduler import Scheduler
from spinserve.loading.loader import LoadedModel
from spinserve.runtime.block_manager import BlockManager
from spinserve.runtime.runner import ModelRunner
from spinserve.runtime.sampler import Sampler
from spinserve.types.errors import InvalidRequestError

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class _Tracked:
    request: Request
    detokenizer: IncrementalDetokenizer


class LLMEngine:
    """Runs many requests at once with continuous batching.

    Typical use::

        engine = LLMEngine(load("smollm2-135m-instruct"))
        rid = engine.add_request("Hello", SamplingParams(max_tokens=16))
        while engine.has_unfinished():
            for out in engine.step():
                print(out.new_text, end="")
    """

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.tokenizer = loaded.tokenizer
        model_config = loaded.model.config
        cache = self.config.cache
        per_token = model_config.kv_bytes_per_token(_BYTES[self.config.runtime.dtype])
        num_blocks = cache.num_blocks(per_token)
        if num_blocks < 1:
            raise ValueError(f"kv_cache_gib={cache.kv_cache_gib} holds no block of this model")
        self.runner = ModelRunner(loaded.model, num_blocks, cache.block_size)
        self.blocks = BlockManager(num_blocks, cache.block_size)
        self.scheduler = Scheduler(self.config.scheduler, self.blocks)
        self.sampler = Sampler()
        # A request must fit in the pool alone, or preemption could never make room for it.
        self.max_model_len = min(
            model_config.max_position_embeddings,
            self.config.scheduler.max_model_len or model_config.max_position_embeddings,
            num_blocks * cache.block_size,
        )
        self._eos = frozenset(self.tokenizer.eos_token_ids)
        self._vocab_size = model_config.vocab_size
        self._tracked: dict[str, _Tracked] = {}
        self._ids = itertools.count()

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queue a request; returns its id. Raises InvalidRequestError for bad input."""
        params = params or SamplingParams()
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self._validate(prompt_ids, request_id)
        request_id = request_id or f"req-{next(self._ids)}"
        request = Request(
            request_id,
            prompt_ids,
            params,
            eos_token_ids=frozenset() if params.ignore_eos else self._eos,
        )
        self._tracked[request_id] = _Tracked(
            request, IncrementalDetokenizer(self.tokenizer, params.stop)
        )
        self.sampler.add_request(request_id, params)
        self.scheduler.add(request)
        return request_id

    def _validate(self, prompt_ids: list[int], request_id: str | None) -> None:
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty")
        if len(prompt_ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"the prompt has {len(prompt_ids)} tokens but the context holds "
                f"{self.max_model_len} (prompt and output together)"
            )
        bad = [t for t in prompt_ids if not 0 <= t < self._vocab_size]
        if bad:
            raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary")
        if request_id is not None and request_id in self._tracked:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")

    def abort(self, request_id: str) -> RequestOutput | None:
        """Cancel a request and free its KV blocks; None if it is unknown or finished."""
        tracked = self._tracked.get(request_id)
        if tracked is None:
            return None
        tracked.request.finish(FinishReason.ABORT)
        self._retire(tracked.request)
        return self._output(tracked, [], "")

    def has_unfinished(self) -> bool:
        return bool(self._tracked)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def step(self) -> list[RequestOutput]:
        """One forward for every scheduled request; outputs for those that got a token."""
        batch = self.scheduler.schedule()
        if not batch:
            return []
        logits = self.runner.execute(batch)
        self.scheduler.update(batch)
        rows = [
            (c.request_id, self._tracked[c.request_id].request.params)
            for c in batch.chunks
            if c.num_logits
        ]
        tokens = self.sampler.sample(logits, rows)
        return [self._advance(rid, token) for (rid, _), token in zip(rows, tokens, strict=True)]

    def _advance(self, request_id: str, token: int) -> RequestOutput:
        tracked = self._tracked[request_id]
        request = tracked.request
        request.append_output(token)
        delta = tracked.detokenizer.add([token])
        reason = self._finish_reason(tracked, token)
        if reason is not None:
            request.finish(reason)
            if reason is not FinishReason.STOP or not tracked.detokenizer.stopped:
                delta += tracked.detokenizer.flush()
            self._retire(request)
        return self._output(tracked, [token], delta)

    def _finish_reason(self, tracked: _Tracked, token: int) -> FinishReason | None:
        request = tracked.request
        if token in request.eos_token_ids or token in request.params.stop_token_ids:
            return FinishReason.STOP
        if tracked.detokenizer.stopped:
            return FinishReason.STOP
        if len(request.output_ids) >= request.params.max_tokens:
            return FinishReason.LENGTH
        if request.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _retire(self, request: Request) -> None:
        self.scheduler.remove(request)
        self.sampler.remove_request(request.request_id)
        del self._tracked[request.request_id]

    @staticmethod
    def _output(tracked: _Tracked, new_ids: list[int], delta: str) -> RequestOutput:
        r = tracked.request
        return RequestOutput(
            request_id=r.request_id,
            new_token_ids=new_ids,
            new_text=delta,
            token_ids=list(r.output_ids),
            text=tracked.detokenizer.text[: tracked.detokenizer.num_emitted]
            if not r.is_finished
            else tracked.detokenizer.text,
            num_prompt_tokens=r.num_prompt_tokens,
            finished=r.is_finished,
            finish_reason=r.finish_reason.value if r.finish_reason else None,
            arrival_time=r.arrival_time,
            first_token_time=r.first_token_time,
        )

    def generate(
        self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[RequestOutput]:
        """Run ``prompts`` to completion together; final outputs in prompt order."""
        all_params = params if isinstance(params, list) else [params] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, all_params, strict=True)]
        final: dict[str, RequestOutput] = {}
        while any(rid not in final for rid in ids):
            for out in self.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[rid] for rid in ids]
