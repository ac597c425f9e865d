"""/metrics scraped and parsed with prometheus-client's parser: names, types, and counters
that move by exactly what a request did."""

from __future__ import annotations

import httpx2
from conftest import MODEL, tiny_engine
from prometheus_client.parser import text_string_to_metric_families

from spinserve.server.app import build_app

TYPES = {
    "spinserve:num_requests_running": "gauge",
    "spinserve:num_requests_waiting": "gauge",
    "spinserve:kv_cache_usage_perc": "gauge",
    "spinserve:prompt_tokens": "counter",
    "spinserve:prefix_cache_queries": "counter",
    "spinserve:prefix_cache_hits": "counter",
    "spinserve:generation_tokens": "counter",
    "spinserve:request_success": "counter",
    "spinserve:time_to_first_token_seconds": "histogram",
    "spinserve:inter_token_latency_seconds": "histogram",
    "spinserve:e2e_request_latency_seconds": "histogram",
    "spinserve:spec_decode_num_drafts": "counter",
    "spinserve:spec_decode_num_draft_tokens": "counter",
    "spinserve:spec_decode_num_accepted_tokens": "counter",
    "spinserve:drafter_requests": "counter",
    "spinserve:drafter_draft_tokens": "counter",
    "spinserve:drafter_accepted_tokens": "counter",
    "spinserve:drafter_seconds": "counter",
}


def test_metric_families_and_types(live):
    text = httpx2.get(live.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in TYPES.items():
        assert families[name].type == kind, name
    for family in families.values():
        assert all(s.labels["model_name"] == MODEL for s in family.samples), family.name


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_counters_move_by_what_a_request_did(live):
    before = live.wait_idle()
    out = live.client().completions.create(
        model=MODEL,
        prompt="one two three",
        max_tokens=8,
        temperature=0,
        extra_body={"drafter": "same", "ignore_eos": True, "num_draft_tokens": 3},
    )
    after = live.wait_idle()
    d = lambda key: delta(after, before, key)  # noqa: E731
    assert d("spinserve:generation_tokens_total") == out.usage.completion_tokens == 8
    assert d("spinserve:prompt_tokens_total") == out.usage.prompt_tokens
    assert d('spinserve:request_success_total{finished_reason="length"}') == 1
    assert d("spinserve:time_to_first_token_seconds_count") == 1
    assert d("spinserve:e2e_request_latency_seconds_count") == 1
    # 7 tokens after the first, each observed (a step's latency shared by its tokens)
    assert d("spinserve:inter_token_latency_seconds_count") == 7
    stats = out.choices[0].model_extra["spinserve"]["speculation"]
    drafts, accepted = d("spinserve:spec_decode_num_drafts_total"), stats["num_accepted_tokens"]
    assert drafts == stats["num_draft_steps"] > 0
    assert d("spinserve:spec_decode_num_draft_tokens_total") == stats["num_draft_tokens"]
    assert d("spinserve:spec_decode_num_accepted_tokens_total") == accepted
    assert d('spinserve:spec_decode_num_accepted_tokens_per_pos_total{position="0"}') == drafts
    assert d('spinserve:drafter_requests_total{drafter="same"}') == 1
    assert d('spinserve:drafter_accepted_tokens_total{drafter="same"}') == accepted
    assert d('spinserve:drafter_drafts_total{drafter="same"}') == drafts
    assert d('spinserve:drafter_seconds_total{drafter="same"}') > 0
    assert after['spinserve:drafter_acceptance_rate{drafter="same"}'] == 1.0
    assert after['spinserve:drafter_goodput_tokens_per_second{drafter="same"}'] > 0
    # a request without speculation adds to no speculation counter
    live.client().completions.create(
        model=MODEL, prompt="x", max_tokens=4, extra_body={"drafter": "none"}
    )
    later = live.wait_idle()
    assert delta(later, after, "spinserve:spec_decode_num_drafts_total") == 0


def test_two_apps_in_one_process_have_their_own_registries(tiny_loaded):
    engine = tiny_engine(tiny_loaded["llama"])
    first, second = build_app(engine, MODEL), build_app(engine, MODEL)
    assert first.state.metrics.registry is not second.state.metrics.registry


def test_prefix_cache_counters_and_cached_tokens_agree(live):
    """A conversation's second turn finds its first turn cached: the response says how many
    prompt tokens came from the cache, and the counters move by the same amounts."""
    client = live.client()
    turn = [{"role": "user", "content": "Tell me about the sea and the wind, please."}]
    first = client.chat.completions.create(
        model=MODEL, messages=turn, max_tokens=6, temperature=0, extra_body={"drafter": "none"}
    )
    turn += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And the mountains?"},
    ]
    before = live.wait_idle()
    second = client.chat.completions.create(
        model=MODEL, messages=turn, max_tokens=6, temperature=0, extra_body={"drafter": "none"}
    )
    after = live.wait_idle()
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens // 16 * 16 > 0
    assert cached % 16 == 0 and cached < second.usage.prompt_tokens
    d = lambda key: delta(after, before, key)  # noqa: E731
    assert d("spinserve:prefix_cache_queries_total") == second.usage.prompt_tokens
    assert d("spinserve:prefix_cache_hits_total") == cached
