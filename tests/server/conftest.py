"""A real uvicorn server on a free loopback port, run in a background thread, in front of an
engine on the tiny random models (tests/tiny_models.py), and helpers to talk to it."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx2
import openai
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from tiny_models import write_hf_folder

from spinserve.config.engine import CacheConfig, EngineConfig, SchedulerConfig
from spinserve.engine.builder import build_engine
from spinserve.engine.engine import LLMEngine
from spinserve.loading.loader import LoadedModel, load
from spinserve.server.app import build_app
from spinserve.server.config import ServerConfig
from spinserve.server.http_server import DrainingServer, make_server
from spinserve.speculative.cross_tokenizer import CrossTokenizerDrafter
from spinserve.speculative.drafter import Drafter
from spinserve.speculative.model_drafter import ModelDrafter
from spinserve.speculative.ngram import NgramDrafter

MODEL = "tiny-llama"


@dataclass
class LiveServer:
    url: str
    app: FastAPI
    server: DrainingServer

    def client(self, api_key: str = "none", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kw)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def post(self, path: str, **kw) -> httpx2.Response:
        return httpx2.post(self.url + path, timeout=60, **kw)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as ``name{label="v",...}`` -> value (model_name left out)."""
        text = httpx2.get(self.url + "/metrics", timeout=10).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(
                    f'{k}="{v}"' for k, v in sorted(s.labels.items()) if k != "model_name"
                )
                samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return samples

    def wait_idle(self, timeout: float = 20.0) -> dict[str, float]:
        """Metrics once nothing runs or waits and the KV cache is empty."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            idle = (
                m["spinserve:num_requests_running"] == 0
                and m["spinserve:num_requests_waiting"] == 0
                and m["spinserve:kv_cache_usage_perc"] == 0
            )
            if idle or time.monotonic() > deadline:
                return m
            time.sleep(0.05)


def tiny_engine(
    target: LoadedModel,
    drafters: dict[str, Drafter] | None = None,
    max_model_len: int | None = None,
    max_num_seqs: int = 16,
) -> LLMEngine:
    config = EngineConfig(
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_model_len=max_model_len),
        cache=CacheConfig(kv_cache_gib=0.01),
    )
    return build_engine(target, config, drafters=drafters or {})


def model_drafter(name: str, drafter: LoadedModel, target: LoadedModel) -> ModelDrafter:
    return ModelDrafter(name, drafter, target.tokenizer, target.config.vocab_size, 0.01)


@contextmanager
def running_server(engine: LLMEngine, model: str = MODEL, **config) -> Iterator[LiveServer]:
    """Serve ``engine`` on 127.0.0.1 at a free port until the block ends (then drain)."""
    server_config = ServerConfig(log_level="warning", **config)
    app = build_app(engine, model, server_config)
    server = make_server(app, server_config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{sock.getsockname()[1]}", app, server)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


@pytest.fixture(scope="module")
def spec_engine(tiny_loaded, tiny_drafters) -> LLMEngine:
    """The llama target with drafters: ``same`` (the target itself: every draft accepted),
    ``other`` (a different random model: most drafts rejected), ``cross`` (another
    tokenizer's numbering: drafts re-tokenized) and ``ngram``. Requests that name no drafter
    use ``same``."""
    target = tiny_loaded["llama"]
    drafters = {
        "same": model_drafter("same", tiny_drafters["same"], target),
        "other": model_drafter("other", tiny_drafters["other"], target),
        "cross": CrossTokenizerDrafter("cross", tiny_drafters["cross"], target.tokenizer, 0.01),
        "ngram": NgramDrafter(),
    }
    return tiny_engine(target, drafters)


@pytest.fixture(scope="module")
def long_context_llama(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The tiny llama with 32k positions: with the tiny models' small KV cache its context
    is some 20k tokens, so prompts can be long enough to take the tokenizer a while."""
    folder = write_hf_folder("llama", tmp_path_factory.mktemp("long") / "llama")
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 32768
    (folder / "config.json").write_text(json.dumps(config))
    return load(str(folder))


@pytest.fixture(scope="module")
def live(spec_engine) -> Iterator[LiveServer]:
    with running_server(spec_engine) as server:
        yield server
