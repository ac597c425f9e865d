"""End to end on Ray Serve: a Ray instance of this machine (the endpoint on loopback), real
SmolLM2-135M on 2 replicas of one engine thread each, the official openai client.

One fleet serves the whole module (starting one takes some 25 s on 2 cores); the tests run
in order and the last two change it (a third replica, then one killed under load). Greedy
outputs are compared with a single server's, run first in this process on the same model.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import pytest

pytest.importorskip("ray.serve")  # spinserve[ray]; tests/ray alone would pass for a namespace
import ray
from prometheus_client.parser import text_string_to_metric_families

from spinserve.cli.serve_cmd import _load
from spinserve.config.engine import CacheConfig, EngineConfig, RuntimeConfig
from spinserve.config.speculative import SpeculativeConfig
from spinserve.loading import zoo
from spinserve.server.app import build_app
from spinserve.server.config import ServerConfig
from spinserve.server.fleet.config import FleetConfig
from spinserve.server.fleet.deploy import (
    APP_NAME,
    NAMESPACE,
    board_name,
    local_ray_options,
    scale_fleet,
    start_fleet,
    stop_fleet,
)
from spinserve.server.http_server import make_server

pytestmark = pytest.mark.real_model
NAME = "smollm2-135m-instruct"
MAX_QUEUE = 6  # per replica: the ingress admits 12 sub-requests over 2 replicas
SYSTEM = (
    "You are a patient geography teacher. Answer every question in one short sentence, "
    "naming the place first."
)
QUESTIONS = [
    "What is the capital of Japan?",
    "What is the capital of France?",
    "What is the longest river in Africa?",
    "Which ocean lies west of Portugal?",
    "What is the capital of Canada?",
    "Which desert covers most of northern Africa?",
    "What is the highest mountain on Earth?",
]


def chat_case(question: str, max_tokens: int = 40) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return {"model": NAME, "messages": messages, "max_tokens": max_tokens, "temperature": 0}


def load_case(question: str) -> dict[str, Any]:
    """A request that runs for 64 tokens whatever the answer (the load the tests put on)."""
    return chat_case(question, 64) | {"extra_body": {"ignore_eos": True}}


COMPLETION = {"model": NAME, "prompt": "def fibonacci(n):", "max_tokens": 24, "temperature": 0}


def ask(client: openai.OpenAI, case: dict[str, Any], stream: bool = False) -> str:
    """The text of a chat or completion request, read whole or as a stream."""
    if "messages" in case:
        if not stream:
            return client.chat.completions.create(**case).choices[0].message.content
        chunks = client.chat.completions.create(**case, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if not stream:
        return client.completions.create(**case).choices[0].text
    return "".join(c.choices[0].text for c in client.completions.create(**case, stream=True))


def engine_config() -> EngineConfig:
    return EngineConfig(
        cache=CacheConfig(kv_cache_gib=0.25),
        runtime=RuntimeConfig(num_threads=1),
        speculative=SpeculativeConfig(drafters=("ngram", "suffix")),
    )


def single_server_outputs(cases: list[dict[str, Any]]) -> list[str]:
    """Each case's greedy text from one plain server (the reference)."""
    engine = _load(NAME, None, engine_config())
    config = ServerConfig(log_level="warning")
    server = make_server(build_app(engine, NAME, config), config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        return [ask(client, case) for case in cases]
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


@dataclass
class Fleet:
    url: str
    reference: dict[str, str]  # case key -> the single server's text

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=180, **kw
        )

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = httpx2.get(self.url + "/metrics", timeout=10).text
        return {
            (
                s.name,
                tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name")),
            ): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def per_replica(self, name: str, **labels: str) -> dict[str, float]:
        """A metric summed per replica over its other labels (``labels`` must match)."""
        out: dict[str, float] = {}
        for (sample, pairs), value in self.metrics().items():
            d = dict(pairs)
            if sample == name and "replica" in d and all(d.get(k) == v for k, v in labels.items()):
                out[d["replica"]] = out.get(d["replica"], 0.0) + value
        return out

    def served(self) -> dict[str, float]:
        return self.per_replica("spinserve:request_success_total")

    def health(self) -> httpx2.Response:
        return httpx2.get(self.url + "/health", timeout=10)


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def served_by(client: openai.OpenAI, case: dict[str, Any]) -> tuple[str, str]:
    """(the answer, the replica that served it: the ingress's X-Spinserve-Replica header)."""
    raw = client.chat.completions.with_raw_response.create(**case)
    return raw.parse().choices[0].message.content, raw.headers["x-spinserve-replica"]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    zoo.fetch(NAME, zoo.resolve_cache_dir())
    cases = {"chat": chat_case(QUESTIONS[0], 24), "completion": COMPLETION}
    cases |= {f"load{i}": load_case(q) for i, q in enumerate(QUESTIONS)}
    reference = dict(zip(cases, single_server_outputs(list(cases.values())), strict=True))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    ray.init(namespace=NAMESPACE, **(local_ray_options() | {"num_cpus": 2}))
    server = ServerConfig(port=port, max_queue=MAX_QUEUE, log_level="warning")
    make_engine = functools.partial(_load, NAME, None, engine_config())

    fleet = FleetConfig(replicas=2, replica_cpus=0.5, prior_sync_s=1.0)
    try:
        url = start_fleet(make_engine, NAME, server, fleet, 1)
        yield Fleet(url, reference)
    finally:
        stop_fleet(own_ray=True)


def test_outputs_match_a_single_server(fleet):
    client = fleet.client()
    for key in ("chat", "completion"):
        case = {"chat": chat_case(QUESTIONS[0], 24), "completion": COMPLETION}[key]
        assert ask(client, case) == fleet.reference[key]
        assert ask(client, case, stream=True) == fleet.reference[key]
    models = client.models.list().data
    assert [m.id for m in models] == [NAME]
    assert models[0].model_extra["spinserve"]["drafters"] == ["ngram", "suffix"]


def test_errors_have_the_single_servers_shape(fleet):
    client = fleet.client()
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(**chat_case("Hi") | {"temperature": -1})
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(**chat_case("Hi") | {"model": "nope"})
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as long:  # refused by a replica, after tokenizing
        client.completions.create(model=NAME, prompt="hello " * 9000, max_tokens=4)
    assert long.value.body["param"] == "prompt"
    assert long.value.body["code"] == "context_length_exceeded"


def test_a_conversation_stays_on_its_replica(fleet):
    client = fleet.client()
    where_all: set[str] = set()
    for question in QUESTIONS[:3]:
        first = chat_case(question, 8)
        answer, where = served_by(client, first)
        follow_up = first | {
            "messages": [
                *first["messages"],
                {"role": "assistant", "content": answer},
                {"role": "user", "content": "Say it again in other words."},
            ]
        }
        assert served_by(client, follow_up)[1] == where, question
        where_all.add(where)
    assert where_all <= set(fleet.served())


def test_health_and_metrics_cover_every_replica(fleet):
    assert fleet.health().json() == {"status": "ok", "replicas": 2}
    tokens = fleet.per_replica("spinserve:generation_tokens_total")
    assert len(tokens) == 2 and sum(tokens.values()) > 0
    assert fleet.metrics()[("spinserve:fleet_replicas", ())] == 2


def test_429_when_every_replica_queue_is_full(fleet):
    async def scenario() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=fleet.url + "/v1", api_key="none", max_retries=0)
        case = chat_case(QUESTIONS[1], 200) | {"extra_body": {"ignore_eos": True}}
        streams = [
            await client.chat.completions.create(**case, stream=True) for _ in range(2 * MAX_QUEUE)
        ]
        refused = await asyncio.gather(
            *(client.chat.completions.create(**case) for _ in range(3)), return_exceptions=True
        )
        for stream in streams:
            await stream.close()
        await client.close()
        return refused

    refused = asyncio.run(scenario())
    assert all(isinstance(r, openai.RateLimitError) for r in refused), refused
    assert refused[0].body["code"] == "queue_full"
    assert refused[0].response.headers["retry-after"] == "1"
    wait_for(
        lambda: sum(fleet.per_replica("spinserve:fleet_replica_queue").values()) == 0,
        30,
        "the closed streams to be aborted",
    )


def test_a_new_replica_starts_with_the_fleets_prior(fleet):
    def weights() -> dict[str, float]:
        return fleet.per_replica("spinserve:fleet_prior_weight")

    learned = wait_for(lambda: weights().get("fleet", 0) > 0 and weights(), 20, "a prior")
    old = set(fleet.served())
    scale_fleet(3)
    wait_for(lambda: fleet.health().json().get("replicas") == 3, 120, "a third replica")
    assert old <= set(fleet.served()), "adding a replica must keep the others"
    new = wait_for(lambda: set(fleet.served()) - old, 10, "the new replica's metrics").pop()
    assert fleet.served()[new] == 0  # it has served nothing...
    assert weights()[new] >= 0.5 * learned["fleet"]  # ...and starts with what the fleet learned
    replicas = {r: w for r, w in weights().items() if r != "fleet"}
    assert all(w > 0 for w in replicas.values()), replicas


def test_a_replica_killed_under_load_loses_no_request(fleet):
    client = fleet.client()
    target = served_by(client, chat_case(QUESTIONS[0], 4))[1]
    before = set(fleet.served())
    streamed = [f"load{i}" for i in (0, 1)]  # sent first: they land on `target` with the rest
    whole = [f"load{i}" for i in range(2, len(QUESTIONS))]
    cases = {f"load{i}": load_case(q) for i, q in enumerate(QUESTIONS)}
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        futures = {k: pool.submit(ask, client, cases[k], True) for k in streamed}
        time.sleep(0.3)
        futures |= {k: pool.submit(ask, client, cases[k]) for k in whole}
        wait_for(
            lambda: fleet.per_replica("spinserve:fleet_replica_queue").get(target, 0) >= 3,
            20,
            "the conversation's replica to be busy",
        )
        board = ray.get_actor(board_name(APP_NAME), namespace=NAMESPACE)
        report = next(r for r in ray.get(board.reports.remote()) if r.replica == target)
        ray.kill(ray.get_actor(report.actor_name, namespace="serve"), no_restart=True)
        results = {k: _outcome(f) for k, f in futures.items()}
    for key in whole:
        assert results[key] == fleet.reference[key], key  # retried elsewhere: same greedy text
    cut = [k for k in streamed if isinstance(results[k], openai.APIError)]
    assert cut, "a stream on the killed replica must end with an error event"
    for key in streamed:
        assert key in cut or results[key] == fleet.reference[key]
    for key in cut:
        assert "stopped" in str(results[key])
    retried = fleet.metrics()[("spinserve:fleet_requests_retried_total", ())]
    assert retried >= 1

    def replaced() -> set[str]:
        now = set(fleet.served())
        return now - before if target not in now and len(now) == len(before) else set()

    replacement = wait_for(replaced, 120, "Ray Serve to replace the dead replica").pop()
    assert fleet.health().json() == {"status": "ok", "replicas": len(before)}
    weight = fleet.per_replica("spinserve:fleet_prior_weight")[replacement]
    assert weight > 0  # the replacement also starts with the fleet's prior
    assert ask(client, cases[whole[0]]) == fleet.reference[whole[0]]


def _outcome(future: Any) -> Any:
    try:
        return future.result(timeout=300)
    except openai.APIError as exc:
        return exc
