"""Load generation: a fixed concurrency, a Poisson request rate, or side by side.

One endpoint at a fixed concurrency keeps that many requests in flight until the prompts run
out. Several endpoints (``--compare``) go in rounds of ``concurrency`` prompts: each round is
sent to every endpoint in turn, one endpoint at a time, the order rotated every round. So the
configurations see the same prompts under the same load, a machine's slow stretches fall on
all of them alike, and two servers on one machine never compete for it. A request rate sends
requests at exponentially distributed gaps (seeded) whether or not earlier ones finished.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import openai

from spinserve.bench.client import Endpoint, RequestRecord, Sampling, make_client, send
from spinserve.bench.datasets import BenchPrompt
from spinserve.bench.packages import BenchError
from spinserve.bench.stats import Run

# A prompt outside every dataset: a warm-up must not show a drafter a measured prompt.
WARMUP = BenchPrompt.user("warmup", "warmup", "Name three prime numbers.")
WARMUP_TOKENS = 8

OnDone = Callable[[RequestRecord], None]


@dataclass(frozen=True)
class Load:
    """Either ``concurrency`` requests in flight, or ``rate`` new requests per second."""

    concurrency: int | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise BenchError("give a concurrency or a request rate, not both")
        if self.concurrency is not None and self.concurrency < 1:
            raise BenchError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.rate is not None and not self.rate > 0:
            raise BenchError(f"--request-rate must be positive, got {self.rate}")

    @property
    def label(self) -> str:
        return f"concurrency={self.concurrency}" if self.rate is None else f"rate={self.rate:g}"


async def run_load(
    endpoints: Sequence[Endpoint],
    prompts: Sequence[BenchPrompt],
    sampling: Sampling,
    load: Load,
    seed: int,
    on_done: OnDone,
) -> list[Run]:
    """Every prompt to every endpoint at ``load``; one `Run` per endpoint, in their order."""
    clients = {e.name: make_client(e, sampling.timeout_s) for e in endpoints}
    try:
        request = _requester(clients, sampling, load, on_done)
        if load.rate is not None:
            if len(endpoints) > 1:
                raise BenchError("--request-rate measures one endpoint; --compare needs rounds")
            return [await _poisson(endpoints[0], prompts, load.rate, seed, request)]
        if len(endpoints) == 1:
            return [await _pool(endpoints[0], prompts, load.concurrency or 1, request)]
        return await _rounds(endpoints, prompts, load.concurrency or 1, request)
    finally:
        for client in clients.values():
            await client.close()


async def warm_up(endpoint: Endpoint, sampling: Sampling) -> str | None:
    """One short request outside the measurement; its error, if any."""
    warm = Sampling(sampling.endpoint, WARMUP_TOKENS, sampling.temperature, sampling.timeout_s)
    record = RequestRecord(endpoint.name, -1, WARMUP.prompt_id, WARMUP.category, "warmup")
    async with make_client(endpoint, sampling.timeout_s) as client:
        await send(client, endpoint, WARMUP, warm, record)
    return record.error


Request = Callable[[Endpoint, int, BenchPrompt], Awaitable[RequestRecord]]


def _requester(
    clients: dict[str, openai.AsyncOpenAI], sampling: Sampling, load: Load, on_done: OnDone
) -> Request:
    async def request(endpoint: Endpoint, index: int, prompt: BenchPrompt) -> RequestRecord:
        record = RequestRecord(endpoint.name, index, prompt.prompt_id, prompt.category, load.label)
        await send(clients[endpoint.name], endpoint, prompt, sampling, record)
        on_done(record)
        return record

    return request


async def _pool(
    endpoint: Endpoint, prompts: Sequence[BenchPrompt], concurrency: int, request: Request
) -> Run:
    slots = asyncio.Semaphore(concurrency)

    async def one(index: int, prompt: BenchPrompt) -> RequestRecord:
        async with slots:
            return await request(endpoint, index, prompt)

    started = time.monotonic()
    records = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return _run(endpoint, time.monotonic() - started, records)


async def _rounds(
    endpoints: Sequence[Endpoint],
    prompts: Sequence[BenchPrompt],
    concurrency: int,
    request: Request,
) -> list[Run]:
    records: dict[str, list[RequestRecord]] = {e.name: [] for e in endpoints}
    busy = dict.fromkeys(records, 0.0)
    for number, first in enumerate(range(0, len(prompts), concurrency)):
        batch = list(enumerate(prompts[first : first + concurrency], start=first))
        shift = number % len(endpoints)
        for endpoint in [*endpoints[shift:], *endpoints[:shift]]:
            started = time.monotonic()
            records[endpoint.name] += await asyncio.gather(
                *(request(endpoint, i, p) for i, p in batch)
            )
            busy[endpoint.name] += time.monotonic() - started
    return [_run(e, busy[e.name], records[e.name]) for e in endpoints]


async def _poisson(
    endpoint: Endpoint, prompts: Sequence[BenchPrompt], rate: float, seed: int, request: Request
) -> Run:
    gaps = random.Random(seed)
    tasks = []
    started = time.monotonic()
    for index, prompt in enumerate(prompts):
        if index:
            await asyncio.sleep(gaps.expovariate(rate))
        tasks.append(asyncio.create_task(request(endpoint, index, prompt)))
    records = await asyncio.gather(*tasks)
    return _run(endpoint, time.monotonic() - started, records)


def _run(endpoint: Endpoint, busy_s: float, records: Sequence[RequestRecord]) -> Run:
    load = records[0].load if records else ""
    return Run(endpoint.name, load, busy_s, tuple(sorted(records, key=lambda r: r.index)))
