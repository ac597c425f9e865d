"""``--api-key``: OpenAI's bearer scheme on every route but /health and /metrics; the docs
pages only when enabled."""

from __future__ import annotations

import httpx2
import openai
import pytest
from conftest import MODEL, running_server, tiny_engine

from spinserve.server.auth import bearer_token

KEY = "sk-test-1234"


@pytest.fixture(scope="module")
def guarded(tiny_loaded):
    with running_server(tiny_engine(tiny_loaded["llama"]), api_key=KEY) as server:
        yield server


def test_the_right_key_is_served(guarded):
    client = guarded.client(api_key=KEY)
    out = client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert out.usage.completion_tokens <= 2
    assert [m.id for m in client.models.list().data] == [MODEL]


@pytest.mark.parametrize("key", ["wrong", KEY + "x", KEY[:-1], "none"])
def test_a_wrong_key_gets_401(guarded, key):
    with pytest.raises(openai.AuthenticationError) as info:
        guarded.client(api_key=key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert info.value.status_code == 401
    assert info.value.body == {
        "message": "Incorrect API key provided",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/v1/completions", {}),
        ("POST", "/v1/chat/completions", {"Authorization": "Basic " + KEY}),
        ("GET", "/v1/models", {"Authorization": "Bearer"}),
        ("GET", "/v1/models/" + MODEL, {}),
        ("GET", "/v1/nothing", {}),  # unknown routes too: no probing without the key
        ("GET", "/openapi.json", {}),
    ],
)
def test_every_route_but_health_and_metrics_wants_the_key(guarded, method, path, headers):
    response = httpx2.request(method, guarded.url + path, headers=headers, json={}, timeout=10)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_health_and_metrics_stay_open(guarded):
    assert httpx2.get(guarded.url + "/health").json() == {"status": "ok"}
    assert "spinserve:num_requests_running" in guarded.metrics()


def test_the_key_scheme_is_any_case_and_the_key_exact():
    assert bearer_token(b"Bearer " + KEY.encode()) == KEY.encode()
    assert bearer_token(b"BEARER  " + KEY.encode() + b" ") == KEY.encode()
    assert bearer_token(b"Token " + KEY.encode()) is None
    assert bearer_token(b"Bearer ") is None and bearer_token(None) is None


def test_docs_only_when_enabled(tiny_loaded):
    with running_server(tiny_engine(tiny_loaded["llama"])) as server:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx2.get(server.url + path).status_code == 404
    engine = tiny_engine(tiny_loaded["llama"])
    with running_server(engine, api_key=KEY, enable_docs=True) as server:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx2.get(server.url + path).status_code == 200  # open, as /health
        schema = httpx2.get(server.url + "/openapi.json").json()
        assert "/v1/chat/completions" in schema["paths"]
        assert httpx2.get(server.url + "/v1/models").status_code == 401
