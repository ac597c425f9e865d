"""The step loop: draft, schedule, run the target, verify, commit.

One step::

    proposals = speculator.propose(running)     # drafter and draft tokens per decoding request
    batch     = scheduler.schedule(drafts)      # prefill chunks, decodes, decodes + drafts
    verified  = verify(runner.execute(batch))   # accepted + recovered/bonus tokens per request
    scheduler.update(batch, rejected)           # roll back rejected drafts
    commit: append tokens, check stops, retire finished requests

A request that does not speculate is the k = 0 case of the same path: verification of no
drafts is plain sampling, so there is one code path for every request. A computation of one
request that fails (its verification, its detokenization, its drafter) fails that request
alone; only a failure of the shared forward or of the scheduler's bookkeeping fails the step.
"""

from __future__ import annotations

import itertools
import logging
import time

from spinserve.config.engine import EngineConfig
from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import SpecParams
from spinserve.engine.calibration import measure_costs
from spinserve.engine.compute_lane import ComputeLane
from spinserve.engine.messages import Proposal, Verified
from spinserve.engine.output_processor import Tracked, advance, output
from spinserve.engine.outputs import RequestOutput
from spinserve.engine.request import FinishReason, Request, check_prompt
from spinserve.engine.scheduler import PrefixCacheStats, Scheduler
from spinserve.engine.speculation import Speculator
from spinserve.engine.verification import verify_step, why
from spinserve.loading.tokenizer import Tokenizer
from spinserve.runtime.backend import ModelBackend
from spinserve.runtime.block_manager import BlockManager
from spinserve.runtime.sampler import Generators
from spinserve.selection.policy import DraftTiming, SelectionPolicy, StepTiming
from spinserve.speculative.drafter import Drafter
from spinserve.speculative.stats import SpecStats
from spinserve.types.batch import StepBatch
from spinserve.types.errors import InvalidRequestError

logger = logging.getLogger("spinserve.engine")


class LLMEngine:
    """Runs many requests at once with continuous batching and speculative decoding.

    Typical use (`spinserve.engine.builder.build_engine` makes the parts)::

        engine = build_engine(load("smollm2-135m-instruct"))
        rid = engine.add_request("Hello", SamplingParams(max_tokens=16))
        while engine.has_unfinished():
            for out in engine.step():
                print(out.new_text, end="")
    """

    def __init__(
        self,
        config: EngineConfig,
        tokenizer: Tokenizer,
        runner: ModelBackend,
        blocks: BlockManager,
        speculator: Speculator,
        max_model_len: int,
        eos_token_ids: frozenset[int],
        lane: ComputeLane,
    ) -> None:
        """``lane``: the thread of all model work (the drafters' calls run there too)."""
        self.config = config
        self.tokenizer = tokenizer
        self.runner = runner
        self.blocks = blocks
        self.scheduler = Scheduler(config.scheduler, blocks)
        self.speculator = speculator
        self.generators = Generators()
        # A request must fit in the pool alone, or preemption could never make room for it.
        self.max_model_len = max_model_len
        self._eos = eos_token_ids
        self._vocab_size = runner.vocab_size
        self._tracked: dict[str, Tracked] = {}
        self._ids = itertools.count()
        self.lane = lane
        if speculator.guards and speculator.policy.wants_step_costs:
            speculator.policy.calibrate(*self.measure_costs())

    def measure_costs(self) -> tuple[list[StepTiming], list[DraftTiming]]:
        """Target forwards and drafter calls on scratch sequences, while no request runs."""
        guards = self.speculator.guards
        return self.lane.run(measure_costs, self.runner, self.blocks, guards, self.tokenizer)

    @property
    def drafters(self) -> dict[str, Drafter]:
        """Loaded drafters by name (a copy: `Speculator` holds them). Their calls run on
        `lane`, `finish` queued without waiting: read their state there (`lane.run`)."""
        return {name: guard.drafter for name, guard in self.speculator.guards.items()}

    def replace_drafter(self, name: str, drafter: Drafter) -> None:
        """Put ``drafter`` in place of the loaded drafter ``name`` (benchmarks restore a
        learning drafter's earlier state this way)."""
        self.speculator.replace_drafter(name, drafter)

    @property
    def drafter_stats(self) -> dict[str, SpecStats]:
        return self.speculator.stats

    @property
    def policy(self) -> SelectionPolicy:
        return self.speculator.policy

    @policy.setter
    def policy(self, policy: SelectionPolicy) -> None:
        """Swap the selection policy (benchmarks wrap it to record its choices)."""
        self.speculator.policy = policy

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
        check_prompt(prompt_ids, self.max_model_len, self._vocab_size)
        if request_id is not None and request_id in self._tracked:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        drafter, k, managed = self.speculator.resolve(
            spec or SpecParams(), params, self.config.speculative.num_draft_tokens
        )
        request = Request(
            request_id or f"req-{next(self._ids)}",
            prompt_ids,
            params,
            eos_token_ids=frozenset() if params.ignore_eos else self._eos,
            drafter=drafter,
            num_draft_tokens=k,
            policy_managed=managed,
            drafters_used={drafter} if drafter else set(),
        )
        self._tracked[request.request_id] = Tracked.of(request, self.tokenizer)
        self.generators.add_request(request.request_id, params)
        self.scheduler.add(request)
        return request.request_id

    def abort(self, request_id: str) -> RequestOutput | None:
        """Cancel a request and free its KV blocks; None if it is unknown or finished."""
        tracked = self._tracked.get(request_id)
        if tracked is None:
            return None
        tracked.request.finish(FinishReason.ABORT)
        self._retire(tracked.request)
        return output(tracked, [], "")

    def has_unfinished(self) -> bool:
        return bool(self._tracked)

    def running_request_ids(self) -> list[str]:
        """Ids of the requests the next step may run (those in the scheduler's running set)."""
        return [r.request_id for r in self.scheduler.running]

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        """Prompt tokens looked up in the prefix cache and found, since start."""
        return self.scheduler.prefix_stats

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # --- the step ----------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One target forward for every scheduled request; outputs for those that got tokens."""
        proposals = self.speculator.propose(self.scheduler.running, self.num_waiting)
        batch = self.scheduler.schedule({r: p.draft.token_ids for r, p in proposals.items()})
        if not batch:
            return []
        requests = {rid: t.request for rid, t in self._tracked.items()}
        verified, timing = self._execute_and_verify(batch, proposals, requests)
        self.scheduler.update(batch, {v.request_id: v.num_rejected for v in verified})
        self.speculator.observe(requests, proposals, verified, timing)
        return [self._commit(v) for v in verified]

    def _execute_and_verify(
        self, batch: StepBatch, proposals: dict[str, Proposal], requests: dict[str, Request]
    ) -> tuple[list[Verified], StepTiming]:
        """One forward of the target over ``batch``, then every request's verification, on
        the lane (their parallel loops in its OpenMP pool)."""
        start = time.perf_counter()
        verified = self.lane.run(self._forward_and_verify, batch, proposals, requests)
        seconds = time.perf_counter() - start
        for chunk in batch.chunks:
            share = seconds * chunk.num_tokens / batch.num_tokens
            proposal = proposals.get(chunk.request_id)
            self.speculator.charge_verify_time(requests[chunk.request_id], proposal, share)
        # a prefill chunk's tokens beyond those that get logits are prompt tokens
        prefill = sum(c.num_tokens - c.num_logits for c in batch.chunks)
        timing = StepTiming(seconds, batch.num_tokens, len(batch.chunks), prefill)
        return verified, timing

    def _forward_and_verify(
        self, batch: StepBatch, proposals: dict[str, Proposal], requests: dict[str, Request]
    ) -> list[Verified]:
        logits = self.runner.execute(batch)  # [batch.num_logits, vocab]
        return verify_step(batch, proposals, logits, requests, self.generators)

    def _commit(self, verified: Verified) -> RequestOutput:
        """Append the request's verified tokens; a request whose step failed ends here."""
        tracked = self._tracked[verified.request_id]
        error = verified.error
        if verified.result is not None:
            try:
                out = advance(tracked, verified.result.token_ids, self.max_model_len)
                if tracked.request.is_finished:
                    self._retire(tracked.request)
                return out
            except Exception as exc:
                error = why(exc)
        return self._fail(tracked, error or "unknown error")

    def _fail(self, tracked: Tracked, error: str) -> RequestOutput:
        """End one request with an error; the step goes on for the others."""
        logger.error("%s failed: %s", tracked.request.request_id, error)
        tracked.request.finish(FinishReason.ERROR)
        self._retire(tracked.request)
        return output(tracked, [], "", error)

    def _retire(self, request: Request) -> None:
        self.scheduler.remove(request)
        self.runner.release(request.request_id)
        self.generators.remove_request(request.request_id)
        self.speculator.finish(request)
        del self._tracked[request.request_id]

    def spec_summary(self) -> dict[str, dict]:
        """Per-drafter speculation statistics since start, as plain dicts."""
        return {name: stats.to_dict() for name, stats in self.drafter_stats.items()}

    def choice_summary(self) -> dict[str, int]:
        """How often the selection policy chose each drafter@k (or none), over all steps."""
        return dict(sorted(self.speculator.choice_counts.items()))

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

    def close(self) -> None:
        """End the compute lane's thread (and a stalled drafter's)."""
        self.speculator.close()
        self.lane.close()
