"""Many clients at once, clients that leave, and a full queue."""

from __future__ import annotations

import asyncio
import time

import httpx2
import pytest
from conftest import MODEL, running_server, tiny_engine

from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import SpecParams
from spinserve.engine.builder import build_engine

NUM_CLIENTS = 32
MAX_TOKENS = 10


def prompt_of(i: int) -> str:
    return f"Request {i}: count to {i % 7 + 3}, then say {'ab' * (i % 5)}"


@pytest.fixture(scope="module")
def alone(tiny_loaded) -> list[str]:
    """Each prompt's greedy text, run alone on an engine of its own (no server)."""
    engine = build_engine(tiny_loaded["llama"])
    params = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
    none = SpecParams(drafter="none")
    return [engine.generate([prompt_of(i)], params, none)[0].text for i in range(NUM_CLIENTS)]


def test_concurrent_streaming_clients(live, alone):
    """32 streams at once with mixed drafters: each complete, none mixed up with another."""
    drafters = ("same", "other", "ngram", "none")

    async def one(client, i):
        stream = await client.completions.create(
            model=MODEL,
            prompt=prompt_of(i),
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True, "drafter": drafters[i % 4]},
        )
        text, ids, reasons = "", set(), []
        async for chunk in stream:
            ids.add(chunk.id)
            text += chunk.choices[0].text
            reasons.append(chunk.choices[0].finish_reason)
        return text, ids, reasons

    async def run():
        client = live.async_client()
        return await asyncio.gather(*(one(client, i) for i in range(NUM_CLIENTS)))

    before = live.metrics()
    results = asyncio.run(run())
    for i, (text, ids, reasons) in enumerate(results):
        assert text == alone[i], f"client {i}"
        assert len(ids) == 1 and reasons[-1] == "length" and reasons.count(None) == len(reasons) - 1
    assert len({next(iter(ids)) for _, ids, _ in results}) == NUM_CLIENTS
    after = live.wait_idle()
    assert after["spinserve:kv_cache_usage_perc"] == 0
    done = 'spinserve:request_success_total{finished_reason="length"}'
    assert after[done] - before[done] == NUM_CLIENTS
    assert httpx2.get(live.url + "/health").status_code == 200


def _long_request(stream: bool) -> dict:
    return {
        "model": MODEL,
        "prompt": "Tell me a long story.",
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": stream,
        "drafter": "none",
    }


def _wait_running(server, count: int = 1) -> dict[str, float]:
    deadline = time.monotonic() + 20
    while (m := server.metrics())["spinserve:num_requests_running"] < count:
        assert time.monotonic() < deadline, "the request never ran"
        time.sleep(0.02)
    return m


def test_stream_disconnect_aborts_and_frees_the_kv(live):
    aborted = 'spinserve:request_success_total{finished_reason="abort"}'
    before = live.metrics()[aborted]
    with httpx2.stream("POST", live.url + "/v1/completions", json=_long_request(True)) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        busy = live.metrics()
        assert busy["spinserve:kv_cache_usage_perc"] > 0
        assert busy["spinserve:num_requests_running"] == 1
    after = live.wait_idle()  # the client closed the connection mid-stream
    assert after["spinserve:kv_cache_usage_perc"] == 0
    assert after["spinserve:num_requests_running"] == 0
    assert after[aborted] == before + 1
    assert (
        after["spinserve:generation_tokens_total"] - busy["spinserve:generation_tokens_total"] < 400
    )


def test_non_streaming_disconnect_aborts_too(live):
    aborted = 'spinserve:request_success_total{finished_reason="abort"}'
    before = live.metrics()[aborted]

    async def leave_early():
        async with httpx2.AsyncClient(base_url=live.url) as client:
            task = asyncio.create_task(client.post("/v1/completions", json=_long_request(False)))
            await asyncio.to_thread(_wait_running, live)
            task.cancel()  # closes the connection
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(leave_early())
    after = live.wait_idle()
    assert after["spinserve:kv_cache_usage_perc"] == 0
    assert after[aborted] == before + 1


def test_full_queue_gets_429(tiny_loaded):
    engine = tiny_engine(tiny_loaded["llama"], max_num_seqs=1)
    with running_server(engine, max_queue=2) as server:

        async def run():
            async with httpx2.AsyncClient(base_url=server.url, timeout=60) as client:
                first = [
                    asyncio.create_task(client.post("/v1/completions", json=_long_request(False)))
                    for _ in range(2)
                ]
                await asyncio.to_thread(_wait_running, server)
                refused = await client.post("/v1/completions", json=_long_request(False))
                too_many = await client.post(
                    "/v1/completions", json=_long_request(False) | {"n": 3}
                )
                return refused, too_many, await asyncio.gather(*first)

        refused, too_many, first = asyncio.run(run())
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"
        assert [r.status_code for r in first] == [200, 200]
        assert (
            server.post(
                "/v1/completions", json=_long_request(False) | {"max_tokens": 2}
            ).status_code
            == 200
        )
        assert server.metrics()['spinserve:request_rejected_total{reason="queue_full"}'] == 1
