"""The OpenAI-compatible API through the official client: completions and chat, streamed and
not, with and without speculation, n, stop strings, usage."""

from __future__ import annotations

import httpx2
import pytest
from conftest import MODEL

from spinserve.loading.tokenizer import Tokenizer

PROMPT = "The quick brown fox"
GREEDY = {"temperature": 0, "max_tokens": 12}
DRAFTERS = ("same", "other", "cross", "ngram")


@pytest.fixture(scope="module")
def tokenizer(tiny_folders) -> Tokenizer:
    """A tokenizer of our own: the server's belongs to its engine thread."""
    return Tokenizer.from_folder(tiny_folders["llama"])


def complete(live, prompt=PROMPT, **kw):
    fields = ("drafter", "num_draft_tokens", "ignore_eos", "top_k")
    extra = {k: kw.pop(k) for k in fields if k in kw}
    return live.client().completions.create(
        model=MODEL, prompt=prompt, extra_body=extra or None, **kw
    )


def stream_text(stream) -> tuple[str, list]:
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    return text, chunks


def test_models_and_health(live):
    models = live.client().models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_extra["spinserve"]["drafters"] == list(DRAFTERS)
    assert httpx2.get(live.url + "/health").json() == {"status": "ok"}
    assert live.client().models.retrieve(MODEL).id == MODEL


@pytest.mark.parametrize("drafter", DRAFTERS)
def test_greedy_with_speculation_equals_target_alone(live, drafter):
    alone = complete(live, drafter="none", ignore_eos=True, **GREEDY)
    spec = complete(live, drafter=drafter, ignore_eos=True, **GREEDY)
    assert spec.choices[0].text == alone.choices[0].text
    assert spec.usage.completion_tokens == alone.usage.completion_tokens == 12
    info = spec.choices[0].model_extra["spinserve"]
    assert info["drafter"] == drafter
    assert alone.choices[0].model_extra["spinserve"]["drafter"] is None
    if drafter == "same":  # the target drafting for itself: every draft is accepted
        assert info["speculation"]["num_draft_tokens"] > 0
        assert info["speculation"]["acceptance_rate"] == 1.0


def test_requests_naming_no_drafter_are_left_to_the_policy(live):
    """The selection policy picks drafter@k (or none) per step; the response says what."""
    info = complete(live, **GREEDY).choices[0].model_extra["spinserve"]
    assert info["choices"] and sum(info["choices"].values()) > 0
    loaded = {"same", "other", "cross", "ngram", "none"}
    assert {label.split("@")[0] for label in info["choices"]} <= loaded


@pytest.mark.parametrize(("drafter", "shown"), [("ngram", "ngram"), ("none", None)])
def test_a_request_may_name_its_drafter(live, drafter, shown):
    """A request fixes its drafter with ``drafter`` ("none": no speculation); the policy then
    makes no choice for it."""
    info = complete(live, drafter=drafter, **GREEDY).choices[0].model_extra["spinserve"]
    assert info["drafter"] == shown and info["choices"] is None
    baseline = complete(live, drafter="none", **GREEDY).choices[0].text
    assert complete(live, drafter=drafter, **GREEDY).choices[0].text == baseline


def test_num_draft_tokens_zero_means_no_speculation(live):
    info = complete(live, num_draft_tokens=0, **GREEDY).choices[0].model_extra["spinserve"]
    assert info["drafter"] is None and info["choices"] is None


def test_responses_carry_the_request_id(live):
    raw = live.client().completions.with_raw_response.create(model=MODEL, prompt="a", max_tokens=2)
    assert raw.headers["x-request-id"] == raw.parse().id


@pytest.mark.parametrize("drafter", ["none", "other"])
def test_completion_streamed_equals_not_streamed(live, drafter):
    params = dict(temperature=0.9, seed=11, max_tokens=10, drafter=drafter, ignore_eos=True)
    whole = complete(live, **params)
    text, chunks = stream_text(complete(live, stream=True, **params))
    assert text == whole.choices[0].text
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices[0].model_extra["spinserve"]["drafter"] == (
        None if drafter == "none" else drafter
    )


@pytest.mark.parametrize("drafter", ["none", "same"])
def test_chat_streamed_equals_not_streamed(live, drafter, tokenizer):
    messages = [{"role": "user", "content": "Say something."}]
    params = dict(
        model=MODEL,
        messages=messages,
        temperature=0.8,
        seed=3,
        max_completion_tokens=9,
        extra_body={"drafter": drafter, "ignore_eos": True},
    )
    client = live.client()
    whole = client.chat.completions.create(**params)
    chunks = list(
        client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **params
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    streamed = chunks[-1].usage
    assert chunks[-1].choices == []
    assert (streamed.prompt_tokens, streamed.completion_tokens, streamed.total_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
        whole.usage.total_tokens,
    )
    num_prompt = len(tokenizer.apply_chat_template(messages))
    # the same prompt again: its full blocks (16 tokens each) came from the prefix cache
    assert streamed.prompt_tokens_details.cached_tokens == (num_prompt - 1) // 16 * 16 > 0
    assert whole.usage.prompt_tokens == num_prompt
    assert whole.usage.completion_tokens == 9
    assert whole.usage.total_tokens == num_prompt + 9
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_use_seed_plus_index(live):
    params = dict(temperature=1.0, max_tokens=8, ignore_eos=True)
    many = complete(live, n=3, seed=5, **params)
    assert [c.index for c in many.choices] == [0, 1, 2]
    singles = [complete(live, seed=5 + i, **params).choices[0].text for i in range(3)]
    assert [c.text for c in many.choices] == singles
    assert len(set(singles)) > 1
    assert many.usage.completion_tokens == 24
    assert many.usage.prompt_tokens == complete(live, **params).usage.prompt_tokens


def test_n_choices_streamed(live):
    params = dict(temperature=1.0, max_tokens=6, ignore_eos=True, n=2, seed=1)
    whole = complete(live, **params)
    texts = {0: "", 1: ""}
    for chunk in complete(live, stream=True, **params):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]


def test_stop_strings(live):
    full = complete(live, drafter="none", ignore_eos=True, temperature=0, max_tokens=24)
    text = full.choices[0].text
    start = next(i for i in range(4, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    stop = text[start : start + 2]
    expected = text[: text.index(stop)]
    for stream in (False, True):
        out = complete(
            live,
            stop=[stop, "\x00never"],
            stream=stream,
            ignore_eos=True,
            **GREEDY | {"max_tokens": 24},
        )
        if stream:
            got, chunks = stream_text(out)
            reason = chunks[-1].choices[0].finish_reason
        else:
            got, reason = out.choices[0].text, out.choices[0].finish_reason
        assert (got, reason) == (expected, "stop")


def test_prompt_token_ids_and_batches(live, tokenizer):
    ids = tokenizer.encode(PROMPT)
    by_text = complete(live, ignore_eos=True, **GREEDY)
    by_ids = complete(live, prompt=ids, ignore_eos=True, **GREEDY)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)
    other = complete(live, prompt="Hello", ignore_eos=True, **GREEDY)
    batch = complete(live, prompt=[PROMPT, "Hello"], ignore_eos=True, **GREEDY)
    assert [c.text for c in batch.choices] == [by_text.choices[0].text, other.choices[0].text]
    assert batch.usage.prompt_tokens == len(ids) + other.usage.prompt_tokens
    batch_ids = complete(live, prompt=[ids, ids], ignore_eos=True, **GREEDY)
    assert [c.text for c in batch_ids.choices] == [by_text.choices[0].text] * 2


def test_chat_content_parts(live):
    client = live.client()
    params = dict(model=MODEL, max_tokens=5, temperature=0)
    plain = client.chat.completions.create(messages=[{"role": "user", "content": "ab"}], **params)
    parts = client.chat.completions.create(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ],
        **params,
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content
