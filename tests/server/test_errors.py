"""Bad input gets a 4xx with OpenAI's error body and never disturbs other requests; an engine
failure fails only the requests it was running (500) and the server goes on."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest
from conftest import MODEL, running_server, tiny_engine

from spinserve.speculative.ngram import NgramDrafter

CONTEXT = 64  # the server's max_model_len: long prompts are cheap to make
OK = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
CHAT_OK = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

# (path, body or raw bytes, status, param, code)
BAD = [
    ("/v1/completions", b'{"model": "tiny', 400, None, None),
    ("/v1/completions", b"[1, 2]", 400, None, None),
    ("/v1/completions", b"", 400, None, None),
    ("/v1/completions", b"not json at all", 400, None, None),
    ("/v1/completions", {"model": MODEL}, 400, "prompt", None),
    ("/v1/chat/completions", {"model": MODEL}, 400, "messages", None),
    ("/v1/completions", OK | {"max_tokens": "many"}, 400, "max_tokens", None),
    ("/v1/completions", OK | {"temperature": "hot"}, 400, "temperature", None),
    ("/v1/completions", OK | {"prompt": {"text": "hi"}}, 400, "prompt", None),
    ("/v1/completions", OK | {"stream": "sometimes"}, 400, "stream", None),
    ("/v1/chat/completions", CHAT_OK | {"messages": "hi"}, 400, "messages", None),
    ("/v1/chat/completions", CHAT_OK | {"messages": []}, 400, "messages", None),
    ("/v1/chat/completions", CHAT_OK | {"messages": [{"content": "x"}]}, 400, "messages", None),
    ("/v1/completions", OK | {"model": "gpt-4"}, 404, "model", "model_not_found"),
    ("/v1/chat/completions", CHAT_OK | {"model": "gpt-4"}, 404, "model", "model_not_found"),
    ("/v1/completions", OK | {"prompt": "x" * 100}, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", OK | {"prompt": "x" * CONTEXT}, 400, "prompt", "context_length_exceeded"),
    (
        "/v1/chat/completions",
        CHAT_OK | {"messages": [{"role": "user", "content": "y" * 80}]},
        400,
        "messages",
        "context_length_exceeded",
    ),
    ("/v1/completions", OK | {"max_tokens": 0}, 400, "max_tokens", None),
    ("/v1/completions", OK | {"max_tokens": -3}, 400, "max_tokens", None),
    ("/v1/completions", OK | {"max_tokens": CONTEXT}, 400, "max_tokens", "context_length_exceeded"),
    (
        "/v1/chat/completions",
        CHAT_OK | {"max_completion_tokens": 0},
        400,
        "max_completion_tokens",
        None,
    ),
    ("/v1/completions", OK | {"temperature": -0.5}, 400, "temperature", None),
    ("/v1/completions", OK | {"top_p": 0}, 400, "top_p", None),
    ("/v1/completions", OK | {"top_p": 1.5}, 400, "top_p", None),
    ("/v1/completions", OK | {"top_k": -2}, 400, "top_k", None),
    ("/v1/completions", OK | {"n": 0}, 400, "n", None),
    ("/v1/completions", OK | {"n": 1000}, 400, "n", None),
    ("/v1/completions", OK | {"seed": -1}, 400, "seed", None),
    ("/v1/completions", OK | {"stop": ""}, 400, "stop", None),
    ("/v1/completions", OK | {"stop": ["ok", ""]}, 400, "stop", None),
    ("/v1/completions", OK | {"drafter": "eagle"}, 400, "drafter", None),
    ("/v1/completions", OK | {"policy": "fixed:ngram"}, 400, "policy", "unsupported"),
    ("/v1/completions", OK | {"policy": "none"}, 400, "policy", "unsupported"),
    ("/v1/completions", OK | {"num_draft_tokens": 2}, 400, "num_draft_tokens", None),
    ("/v1/completions", OK | {"num_draft_tokens": 99}, 400, "num_draft_tokens", None),
    ("/v1/completions", OK | {"prompt": ""}, 400, "prompt", None),
    ("/v1/completions", OK | {"prompt": []}, 400, "prompt", None),
    ("/v1/completions", OK | {"prompt": [100000]}, 400, "prompt", None),
    ("/v1/completions", OK | {"prompt": [-1]}, 400, "prompt", None),
    ("/v1/completions", OK | {"prompt": [[1], [2**70]]}, 400, "prompt", None),
    ("/v1/completions", OK | {"prompt": [True, False]}, 400, "prompt", None),
    ("/v1/completions", OK | {"prompt": [1.0, 2]}, 400, "prompt", None),
    ("/v1/completions", OK | {"prompt": ["a"] * 17}, 400, "prompt", None),
    ("/v1/completions", OK | {"prompt": [[1]] * 17}, 400, "prompt", None),
    ("/v1/completions", OK | {"n": True}, 400, "n", None),
    ("/v1/completions", OK | {"max_tokens": 2.0}, 400, "max_tokens", None),
    ("/v1/completions", OK | {"max_tokens": 2**63}, 400, "max_tokens", None),
    (
        "/v1/chat/completions",
        CHAT_OK | {"max_tokens": None, "max_completion_tokens": 10**6},
        400,
        "max_completion_tokens",
        "context_length_exceeded",
    ),
    ("/v1/completions", OK | {"top_k": 2**63}, 400, "top_k", None),
    ("/v1/completions", OK | {"seed": 2**64}, 400, "seed", None),
    ("/v1/completions", OK | {"temperature": True}, 400, "temperature", None),
    ("/v1/completions", OK | {"stop": "s" * 257}, 400, "stop", None),
    ("/v1/completions", OK | {"stop": ["ok", "s" * 257]}, 400, "stop", None),
    (
        "/v1/chat/completions",
        CHAT_OK | {"messages": [{"role": "hacker", "content": "x"}]},
        400,
        "messages",
        None,
    ),
    ("/v1/completions", b'{"prompt": "a\\ud800b"}', 400, "prompt", None),
    ("/v1/completions", b'{"prompt": ["ok", "\\udfff"]}', 400, "prompt", None),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        "messages",
        None,
    ),
    ("/v1/completions", OK | {"stop": ["s"] * 17}, 400, "stop", None),
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}', 400, "temperature", None),
    ("/v1/completions", b'{"prompt": "x", "top_p": Infinity}', 400, "top_p", None),
    ("/v1/completions", OK | {"logprobs": 2}, 400, "logprobs", "unsupported"),
    ("/v1/completions", OK | {"presence_penalty": 0.5}, 400, "presence_penalty", "unsupported"),
    (
        "/v1/chat/completions",
        CHAT_OK | {"tools": [{"type": "function"}]},
        400,
        "tools",
        "unsupported",
    ),
    (
        "/v1/chat/completions",
        CHAT_OK | {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "messages",
        None,
    ),
]


@pytest.fixture(scope="module")
def small(tiny_loaded):
    engine = tiny_engine(tiny_loaded["llama"], {"ngram": NgramDrafter()}, max_model_len=CONTEXT)
    with running_server(engine) as server:
        yield server


def _post(server, path, body):
    if isinstance(body, bytes):
        return server.post(path, content=body, headers={"content-type": "application/json"})
    return server.post(path, json=body)


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), BAD)
def test_bad_input_gets_an_openai_error(small, path, body, status, param, code):
    response = _post(small, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)


def test_unknown_fields_are_ignored(small):
    response = small.post("/v1/completions", json=OK | {"frobnicate": 1, "user": "me"})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_unsupported_fields_at_their_off_values_are_fine(small):
    body = OK | {"logprobs": None, "presence_penalty": 0, "echo": False, "best_of": 1}
    assert small.post("/v1/completions", json=body).status_code == 200
    chat = CHAT_OK | {"tools": [], "response_format": {"type": "text"}, "logprobs": False}
    assert small.post("/v1/chat/completions", json=chat).status_code == 200


def test_unknown_routes_and_methods(small):
    response = httpx2.get(small.url + "/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    response = httpx2.get(small.url + "/v1/completions")
    assert response.status_code == 405 and "error" in response.json()
    response = httpx2.get(small.url + "/v1/models/gpt-4")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_chat_without_max_tokens_fills_the_context(small):
    response = small.post(
        "/v1/chat/completions", json=CHAT_OK | {"max_tokens": None, "ignore_eos": True}
    )
    body = response.json()
    assert body["usage"]["total_tokens"] == CONTEXT
    assert body["choices"][0]["finish_reason"] == "length"


def test_bad_requests_do_not_disturb_good_ones(small):
    """Good and bad requests at once: every good one completes in full."""
    good = OK | {"max_tokens": 8, "ignore_eos": True, "temperature": 0}

    async def run():
        async with httpx2.AsyncClient(base_url=small.url, timeout=60) as client:
            calls = []
            for i in range(24):
                if i % 3:
                    calls.append(client.post("/v1/completions", json=good))
                else:
                    path, body, *_ = BAD[i % len(BAD)]
                    calls.append(
                        client.post(
                            path,
                            content=json.dumps(body) if not isinstance(body, bytes) else body,
                            headers={"content-type": "application/json"},
                        )
                    )
            return await asyncio.gather(*calls)

    responses = asyncio.run(run())
    goods = [r for i, r in enumerate(responses) if i % 3]
    assert all(r.status_code == 200 for r in goods)
    assert len({r.json()["choices"][0]["text"] for r in goods}) == 1
    assert all(r.json()["usage"]["completion_tokens"] == 8 for r in goods)
    assert all(400 <= r.status_code < 500 for i, r in enumerate(responses) if not i % 3)
    assert small.wait_idle()["spinserve:kv_cache_usage_perc"] == 0


POISON = [263, 263, 263]  # a valid token id no text encodes to


@pytest.fixture
def failing(tiny_loaded):
    """A server whose engine step raises whenever a batch holds the poison prompt."""
    engine = tiny_engine(tiny_loaded["llama"])
    execute = engine.runner.execute

    def flaky(batch):
        if any(c.token_ids[:3] == POISON for c in batch.chunks):
            raise RuntimeError("injected failure")
        return execute(batch)

    engine.runner.execute = flaky
    with running_server(engine) as server:
        yield server


def test_engine_failure_fails_its_requests_and_the_server_goes_on(failing):
    body = {"model": MODEL, "prompt": POISON, "max_tokens": 4}
    response = failing.post("/v1/completions", json=body)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "cmpl-" in error["message"]
    with httpx2.stream("POST", failing.url + "/v1/completions", json=body | {"stream": True}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[0][6:])["error"]["type"] == "server_error"
    assert events[-1] == "data: [DONE]"
    good = failing.post("/v1/completions", json=OK | {"max_tokens": 4, "ignore_eos": True})
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 4
    metrics = failing.wait_idle()
    assert metrics['spinserve:request_success_total{finished_reason="error"}'] == 2
    assert httpx2.get(failing.url + "/health").status_code == 200


def test_error_message_of_a_union_field_names_the_right_branch(small):
    error = small.post("/v1/completions", json=OK | {"stop": ["s"] * 17}).json()["error"]
    assert error["message"].startswith("stop: List should have at most 16 items"), error


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (OK | {"prompt": ["a"] * 17}, "prompt: a list holds at most 16 prompts, got 17"),
        (OK | {"prompt": [[1]] * 17}, "prompt: a list holds at most 16 prompts, got 17"),
        (OK | {"prompt": [True, False]}, "prompt: token ids must be integers, got True"),
        (OK | {"prompt": [[1], [2, 0.5]]}, "prompt: token ids must be integers, got 0.5"),
        (b'{"prompt": "x", "temperature": NaN}', "temperature: Input should be a finite number"),
        (OK | {"prompt": [100000]}, "token id 100000 is outside the vocabulary (ids 0 to 263)"),
        (OK | {"stop": "s" * 257}, "stop: String should have at most 256 characters"),
    ],
)
def test_error_messages_name_the_real_problem(small, body, message):
    error = _post(small, "/v1/completions", body).json()["error"]
    assert error["message"] == message, error


def test_a_top_k_past_the_vocabulary_is_off(small):
    """top_k of the vocabulary size or more keeps every token: the same as no top_k."""
    seeded = OK | {"max_tokens": 6, "temperature": 1.0, "seed": 3, "ignore_eos": True}
    texts = {
        small.post("/v1/completions", json=seeded | extra).json()["choices"][0]["text"]
        for extra in ({}, {"top_k": 264}, {"top_k": 2**31 - 1})
    }
    assert len(texts) == 1
