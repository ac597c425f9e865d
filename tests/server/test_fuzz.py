"""A bounded schemathesis fuzz run of the app's OpenAPI schema: valid and invalid requests
generated from the schema never get a 5xx."""

from __future__ import annotations

import time

import pytest
import requests
import schemathesis
from conftest import MODEL, running_server, tiny_engine
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from spinserve.speculative.ngram import NgramDrafter

MAX_EXAMPLES = 120
TIME_CAP_SECONDS = 40  # past it the remaining examples are skipped


@pytest.fixture(scope="module")
def fuzz_server(tiny_loaded):
    """A short context keeps every generated request cheap (at most 32 tokens a choice)."""
    engine = tiny_engine(tiny_loaded["llama"], {"ngram": NgramDrafter()}, max_model_len=32)
    with running_server(engine, enable_docs=True) as server:
        yield server


def aim_at_the_engine(body: dict) -> None:
    """Half the cases: the served model, a short prompt, few tokens, so they reach the engine
    rather than stopping at a 404 or a context-length 400."""
    body["model"] = MODEL
    if isinstance(body.get("prompt"), str):
        body["prompt"] = body["prompt"][:8] or "x"
    if isinstance(body.get("max_tokens"), int):
        body["max_tokens"] = max(1, min(body["max_tokens"], 8))


def test_fuzzed_requests_never_get_a_5xx(fuzz_server):
    url = fuzz_server.url
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    strategy = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    session = requests.Session()
    deadline = time.monotonic() + TIME_CAP_SECONDS
    statuses: list[int] = []

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, steer=st.booleans())
    def fuzz(case, steer):
        if time.monotonic() > deadline:
            return
        if steer and isinstance(case.body, dict):
            aim_at_the_engine(case.body)
        response = case.call_and_validate(
            base_url=url, session=session, checks=[not_a_server_error], timeout=30
        )
        statuses.append(response.status_code)

    fuzz()
    assert statuses, "no request was sent"
    assert any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)
    assert fuzz_server.wait_idle()["spinserve:kv_cache_usage_perc"] == 0
