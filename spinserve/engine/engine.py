"""The step loop: draft, schedule, run the target, verify, detokenize, retire.

One step::

    drafts  = drafters propose for every decoding request that speculates
    batch   = scheduler.schedule()          # prefill chunks, decodes, decodes + drafts
    logits  = runner.execute(batch)         # one padding-free forward of the target
    results = verify_batch(logits, ...)     # accepted + recovered/bonus tokens per request
    scheduler.update(batch, rejected)       # roll back rejected drafts
    append tokens, check stops, retire finished requests

A request that does not speculate is the k = 0 case of the same path: verification of no
drafts is plain sampling, so there is one code path for every request.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from spinserve.config.engine import EngineConfig
from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import NO_DRAFTER, SpecParams
from spinserve.engine.detokenizer import IncrementalDetokenizer
from spinserve.engine.outputs import RequestOutput
from spinserve.engine.request import FinishReason, Request
from spinserve.engine.scheduler import Scheduler
from spinserve.loading.loader import LoadedModel
from spinserve.runtime.backend import ModelBackend
from spinserve.runtime.block_manager import BlockManager, blocks_for
from spinserve.runtime.runner import ModelRunner
from spinserve.runtime.sampler import Generators
from spinserve.selection.policy import (
    CALIBRATION_DRAFT_TOKENS,
    CALIBRATION_TOKENS,
    Choice,
    DraftTiming,
    Feedback,
    LoadView,
    RequestView,
    StepTiming,
)
from spinserve.selection.registry import build_policy
from spinserve.spec.drafter import Draft, Drafter, DraftRequest
from spinserve.spec.stats import SpecStats
from spinserve.spec.verify import verify_batch
from spinserve.types.batch import SeqChunk, StepBatch
from spinserve.types.errors import InvalidRequestError

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_CALIBRATION_ID = "calibration"  # released before any request exists
# Ordinary code and prose, so that a cross-tokenizer drafter sees as many of its own tokens
# per target token as on real text (a run of one repeated id would merge into few).
_CALIBRATION_TEXT = (
    "def mean(values):\n"
    '    """The arithmetic mean of a list of numbers; raises on an empty list."""\n'
    "    return sum(values) / len(values)\n\n"
    "The committee met on Tuesday to review the budget, and agreed to publish its report "
    "before the end of the month, after the auditors have checked every figure in it.\n"
)


@dataclass
class _Tracked:
    request: Request
    detokenizer: IncrementalDetokenizer


class LLMEngine:
    """Runs many requests at once with continuous batching and speculative decoding.

    Typical use::

        engine = LLMEngine(load("smollm2-135m-instruct"))
        rid = engine.add_request("Hello", SamplingParams(max_tokens=16))
        while engine.has_unfinished():
            for out in engine.step():
                print(out.new_text, end="")

    ``drafters`` maps names to ready drafters; when None they are built from
    ``config.speculative.drafters`` (see `spinserve.spec.registry`), zoo models from
    ``cache_dir`` (default: the zoo's).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        config: EngineConfig | None = None,
        drafters: dict[str, Drafter] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.tokenizer = loaded.tokenizer
        model_config = loaded.model.config
        cache = self.config.cache
        kv_dtype = self.config.runtime.kv_dtype()
        per_token = model_config.kv_bytes_per_token(_BYTES[kv_dtype])
        num_blocks = cache.num_blocks(per_token)
        if num_blocks < 1:
            raise ValueError(f"kv_cache_gib={cache.kv_cache_gib} holds no block of this model")
        self.runner: ModelBackend = ModelRunner(
            loaded.model, num_blocks, cache.block_size, kv_dtype=getattr(torch, kv_dtype)
        )
        self.blocks = BlockManager(num_blocks, cache.block_size)
        self.scheduler = Scheduler(self.config.scheduler, self.blocks)
        self.generators = Generators()
        # A request must fit in the pool alone, or preemption could never make room for it.
        self.max_model_len = min(
            model_config.max_position_embeddings,
            self.config.scheduler.max_model_len or model_config.max_position_embeddings,
            num_blocks * cache.block_size,
        )
        self.drafters = (
            drafters if drafters is not None else self._build_drafters(loaded, cache_dir)
        )
        self.drafter_stats: dict[str, SpecStats] = {name: SpecStats() for name in self.drafters}
        self.policy = build_policy(
            self.config.selection, list(self.drafters), self.config.speculative.num_draft_tokens
        )
        self.choice_counts: dict[str, int] = defaultdict(int)
        self._choices: dict[str, Choice] = {}
        self._draft_share: dict[str, float] = {}
        self._eos = frozenset(self.tokenizer.eos_token_ids)
        self._vocab_size = model_config.vocab_size
        self._tracked: dict[str, _Tracked] = {}
        self._draft_probs: dict[str, torch.Tensor | None] = {}
        self._ids = itertools.count()
        if self.drafters and self.policy.wants_step_costs:
            self.policy.calibrate(self._measure_steps(), self._measure_drafters())

    def _measure_steps(self) -> list[StepTiming]:
        """Forwards of one scratch sequence of each length in `CALIBRATION_TOKENS`, timed
        after an untimed one (which also pages in memory-mapped weights). No request holds a
        block yet, so the pool's first blocks are free to write on."""
        table = list(range(blocks_for(max(CALIBRATION_TOKENS), self.blocks.block_size)))
        if len(table) > self.blocks.num_free_blocks:
            return []
        timings = []
        for i, n in enumerate((1, *CALIBRATION_TOKENS)):
            batch = StepBatch([SeqChunk(_CALIBRATION_ID, [0] * n, 0, table, n)])
            start = time.perf_counter()
            self.runner.execute(batch)
            if i:
                timings.append(StepTiming(time.perf_counter() - start, n, 1))
        self.runner.release(_CALIBRATION_ID)
        return timings

    def _measure_drafters(self) -> list[DraftTiming]:
        """Each drafter's call for one draft token on a scratch sequence of each length in
        `CALIBRATION_DRAFT_TOKENS`, after an untimed one (which pages in a model drafter's
        weights). Each is finished with no tokens, so a drafter that learns from finished
        sequences (suffix) learns nothing from the scratch text."""
        ids = self._calibration_ids(max(CALIBRATION_DRAFT_TOKENS))
        greedy = SamplingParams(max_tokens=1)
        timings = []
        for name, drafter in self.drafters.items():
            for i, n in enumerate((1, *CALIBRATION_DRAFT_TOKENS)):
                start = time.perf_counter()
                drafter.propose([DraftRequest(_CALIBRATION_ID, ids[:n], 1, greedy)])
                seconds = time.perf_counter() - start
                drafter.finish(_CALIBRATION_ID, [])
                if i:
                    timings.append(DraftTiming(name, n, seconds))
        return timings

    def _calibration_ids(self, num_tokens: int) -> list[int]:
        """``num_tokens`` target tokens of `_CALIBRATION_TEXT` (repeated as needed)."""
        ids = self.tokenizer.encode(_CALIBRATION_TEXT, add_special_tokens=False)
        ids = [t for t in ids if 0 <= t < self._vocab_size] or [0]
        return (ids * (num_tokens // len(ids) + 1))[:num_tokens]

    def _build_drafters(self, loaded: LoadedModel, cache_dir: Path | None) -> dict[str, Drafter]:
        from spinserve.spec.registry import build_drafters

        return build_drafters(self.config.speculative, loaded, self.config.runtime, cache_dir)

    # --- requests ----------------------------------------------------------------------------

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        spec: SpecParams | None = None,
    ) -> str:
        """Queue a request; returns its id. Raises InvalidRequestError for bad input."""
        params = params or SamplingParams()
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self._validate(prompt_ids, request_id)
        spec = spec or SpecParams()
        if spec.drafter is None and params.seed is not None and not params.greedy:
            # A seeded sample is reproducible only with the same drafts every time; the
            # policy adapts to what other requests taught it, so seeds get a fixed drafter.
            spec = SpecParams(next(iter(self.drafters), NO_DRAFTER), spec.num_draft_tokens)
        drafter, k = self._speculation(spec)
        request_id = request_id or f"req-{next(self._ids)}"
        request = Request(
            request_id,
            prompt_ids,
            params,
            eos_token_ids=frozenset() if params.ignore_eos else self._eos,
            drafter=drafter,
            num_draft_tokens=k,
            policy_managed=spec.drafter is None and bool(self.drafters),
            drafters_used={drafter} if drafter else set(),
        )
        self._tracked[request_id] = _Tracked(
            request, IncrementalDetokenizer(self.tokenizer, params.stop)
        )
        self.generators.add_request(request_id, params)
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

    def _speculation(self, spec: SpecParams) -> tuple[str | None, int]:
        """(drafter name or None, k) of a request that names its drafter; a request that
        names none is left to the selection policy, step by step."""
        name = spec.drafter
        if name is None or name == NO_DRAFTER:
            return None, 0
        if name not in self.drafters:
            loaded = ", ".join(self.drafters) or "none"
            raise InvalidRequestError(f"unknown drafter {name!r}; loaded drafters: {loaded}")
        k = self.config.speculative.num_draft_tokens
        k = spec.num_draft_tokens if spec.num_draft_tokens is not None else k
        return (name, k) if k > 0 else (None, 0)

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

    def running_request_ids(self) -> list[str]:
        """Ids of the requests the next step may run (those in the scheduler's running set)."""
        return [r.request_id for r in self.scheduler.running]

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # --- the step ----------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One target forward for every scheduled request; outputs for those that got tokens."""
        self._choose()
        self._propose()
        batch = self.scheduler.schedule()
        if not batch:
            return []
        start = time.perf_counter()
        logits = self.runner.execute(batch)
        rows = [c for c in batch.chunks if c.num_logits]
        drafts = [self._draft_of(c) for c in rows]
        requests = [self._tracked[c.request_id].request for c in rows]
        results = verify_batch(
            logits,
            drafts,
            [r.params for r in requests],
            [self.generators.get(r.request_id) for r in requests],
        )
        forward_seconds = time.perf_counter() - start
        self._charge_verify_time(batch.chunks, forward_seconds)
        # a prefill chunk's tokens beyond those that get logits are prompt tokens
        prefill = sum(c.num_tokens - c.num_logits for c in batch.chunks)
        timing = StepTiming(forward_seconds, batch.num_tokens, len(batch.chunks), prefill)
        self._observe(rows, drafts, results, timing)
        rejected = {
            c.request_id: len(d) - res.num_accepted
            for c, d, res in zip(rows, drafts, results, strict=True)
        }
        self.scheduler.update(batch, rejected)
        outputs = []
        for request, draft, result in zip(requests, drafts, results, strict=True):
            self._record(request, len(draft), result.num_accepted)
            outputs.append(self._advance(request.request_id, result.token_ids))
        return outputs

    def _choose(self) -> None:
        """Ask the selection policy for this step's drafter and k of each decoding request
        that left the choice to it."""
        self._choices.clear()
        self._draft_share.clear()
        running = self.scheduler.running
        decoding = [r for r in running if r.policy_managed and r.is_decoding]
        if not decoding:
            return
        views = [
            RequestView(r.request_id, r.num_prompt_tokens, r.num_output_tokens) for r in decoding
        ]
        choices = self.policy.choose(views, LoadView(len(running), len(self.scheduler.waiting)))
        for request, choice in zip(decoding, choices, strict=True):
            request.drafter, request.num_draft_tokens = choice.drafter, choice.num_draft_tokens
            if choice.drafter is not None:
                request.drafters_used.add(choice.drafter)
            request.choice_counts[choice.label] = request.choice_counts.get(choice.label, 0) + 1
            self.choice_counts[choice.label] += 1
            self._choices[request.request_id] = choice

    def _observe(
        self, rows: list[SeqChunk], drafts: list[Draft], results: list, timing: StepTiming
    ) -> None:
        """Tell the policy what each request it chose for got from this step."""
        feedback = []
        for chunk, draft, result in zip(rows, drafts, results, strict=True):
            choice = self._choices.get(chunk.request_id)
            if choice is None or (choice.speculates and chunk.request_id not in self._draft_share):
                continue  # not the policy's, or it had no room to draft this step
            share = self._draft_share.get(chunk.request_id, 0.0)
            feedback.append(
                Feedback(chunk.request_id, choice, len(draft), result.num_accepted, share)
            )
        if feedback:
            self.policy.observe(feedback, timing)

    def _propose(self) -> None:
        """Ask each drafter, in one batched call, for drafts for its decoding requests."""
        groups: dict[str, list[DraftRequest]] = defaultdict(list)
        for request in self.scheduler.running:
            k = self._draft_budget(request)
            if k > 0:
                groups[request.drafter].append(  # type: ignore[index]
                    DraftRequest(
                        request.request_id,
                        request.token_slice(0, request.num_tokens),
                        k,
                        request.params,
                    )
                )
        for name, draft_requests in groups.items():
            start = time.perf_counter()
            drafts = self.drafters[name].propose(draft_requests)
            seconds = time.perf_counter() - start
            self.drafter_stats[name].draft_seconds += seconds
            for dr, draft in zip(draft_requests, drafts, strict=True):
                request = self._tracked[dr.request_id].request
                request.spec_stats.draft_seconds += seconds / len(draft_requests)
                self._draft_share[dr.request_id] = seconds / len(draft_requests)
                ids = self._valid_prefix(draft.token_ids[: dr.num_draft_tokens])
                request.draft_ids = ids
                self._draft_probs[dr.request_id] = (
                    draft.probs[: len(ids)] if draft.probs is not None else None
                )

    def _draft_budget(self, request: Request) -> int:
        """k for this step: the request's own, but never past its max_tokens or the context."""
        if request.drafter is None or not request.is_decoding:
            return 0
        room_output = request.params.max_tokens - request.num_output_tokens - 1
        room_context = self.max_model_len - request.num_tokens - 1
        return max(0, min(request.num_draft_tokens, room_output, room_context))

    def _valid_prefix(self, ids: list[int]) -> list[int]:
        for i, token in enumerate(ids):
            if not 0 <= token < self._vocab_size:
                return ids[:i]
        return ids

    def _draft_of(self, chunk: SeqChunk) -> Draft:
        """The drafts this chunk carries (the scheduler may have cut them short)."""
        n = chunk.num_logits - 1
        probs = self._draft_probs.pop(chunk.request_id, None)
        if n == 0:
            return Draft([])
        return Draft(chunk.token_ids[-n:], probs[:n] if probs is not None else None)

    def _charge_verify_time(self, chunks: list[SeqChunk], seconds: float) -> None:
        """Share the forward's time among requests by their tokens in it."""
        total = sum(c.num_tokens for c in chunks)
        for chunk in chunks:
            request = self._tracked[chunk.request_id].request
            request.spec_stats.verify_seconds += seconds * chunk.num_tokens / total
            if request.drafter is not None:
                self.drafter_stats[request.drafter].verify_seconds += (
                    seconds * chunk.num_tokens / total
                )

    def _record(self, request: Request, num_drafted: int, num_accepted: int) -> None:
        request.spec_stats.record(num_drafted, num_accepted)
        if request.drafter is not None:
            self.drafter_stats[request.drafter].record(num_drafted, num_accepted)

    def _advance(self, request_id: str, tokens: list[int]) -> RequestOutput:
        """Append verified tokens one by one, stopping at the first that ends the request."""
        tracked = self._tracked[request_id]
        request = tracked.request
        delta, taken = "", []
        for token in tokens:
            request.append_output(token)
            taken.append(token)
            delta += tracked.detokenizer.add([token])
            reason = self._finish_reason(tracked, token)
            if reason is not None:
                request.finish(reason)
                if not tracked.detokenizer.stopped:
                    delta += tracked.detokenizer.flush()
                self._retire(request)
                break
        return self._output(tracked, taken, delta)

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
        self.runner.release(request.request_id)
        self.generators.remove_request(request.request_id)
        self._draft_probs.pop(request.request_id, None)
        token_ids = request.token_slice(0, request.num_tokens)
        for name in request.drafters_used:
            self.drafters[name].finish(request.request_id, token_ids)
        if request.policy_managed:
            self.policy.finish(request.request_id)
        del self._tracked[request.request_id]

    @staticmethod
    def _output(tracked: _Tracked, new_ids: list[int], delta: str) -> RequestOutput:
        r = tracked.request
        detok = tracked.detokenizer
        return RequestOutput(
            request_id=r.request_id,
            new_token_ids=new_ids,
            new_text=delta,
            token_ids=list(r.output_ids),
            text=detok.text if r.is_finished else detok.text[: detok.num_emitted],
            num_prompt_tokens=r.num_prompt_tokens,
            finished=r.is_finished,
            finish_reason=r.finish_reason.value if r.finish_reason else None,
            arrival_time=r.arrival_time,
            first_token_time=r.first_token_time,
            drafter=r.drafter,
            spec_stats=r.spec_stats.snapshot(),
            choice_counts=dict(r.choice_counts) if r.policy_managed else None,
        )

    def spec_summary(self) -> dict[str, dict]:
        """Per-drafter speculation statistics since start, as plain dicts."""
        return {name: stats.to_dict() for name, stats in self.drafter_stats.items()}

    def choice_summary(self) -> dict[str, int]:
        """How often the selection policy chose each drafter@k (or none), over all steps."""
        return dict(sorted(self.choice_counts.items()))

    def generate(
        self,
        prompts: list[str | list[int]],
        params: SamplingParams | list[SamplingParams],
        spec: SpecParams | list[SpecParams] | None = None,
    ) -> list[RequestOutput]:
        """Run ``prompts`` to completion together; final outputs in prompt order."""
        n = len(prompts)
        all_params = params if isinstance(params, list) else [params] * n
        all_spec = spec if isinstance(spec, list) else [spec] * n
        ids = [
            self.add_request(p, sp, spec=s)
            for p, sp, s in zip(prompts, all_params, all_spec, strict=True)
        ]
        final: dict[str, RequestOutput] = {}
        while any(rid not in final for rid in ids):
            for out in self.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[rid] for rid in ids]
