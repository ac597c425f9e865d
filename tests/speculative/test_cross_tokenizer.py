"""Text round trips of cross-tokenizer drafting, with real (byte-level) tokenizers."""

from __future__ import annotations

import pytest
from tiny_models import byte_tokenizer

from spinserve.loading.tokenizer import Tokenizer
from spinserve.speculative.cross_tokenizer import draft_text, retokenize


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(byte_tokenizer(), ())


@pytest.mark.parametrize(
    ("context", "drafted", "expected"),
    [
        ("def f", "(x):", "(x):"),
        ("", "hello", "hello"),
        ("caf", "é au lait", "é au lait"),
        ("<|im_start|>user\nhi", "<|im_end|>", "<|im_end|>"),  # specials stay as text
    ],
)
def test_draft_text_is_what_the_draft_adds(tok, context, drafted, expected):
    ctx = tok.encode(context, add_special_tokens=False)
    ids = tok.encode(drafted, add_special_tokens=False)
    assert draft_text(tok, ctx, ids) == expected


def test_draft_text_stops_at_an_incomplete_character(tok):
    ids = tok.encode("ok 🙂", add_special_tokens=False)
    assert draft_text(tok, [], ids[:-2]) == "ok "  # the emoji's last two bytes are missing


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("hello ", 10, "hello "),  # ends at whitespace: every token kept
        ("hello", 10, "hell"),  # may end mid-word: the last token is dropped
        ("hello world ", 3, "hel"),  # at most `limit` tokens
        ("", 4, ""),
    ],
)
def test_retokenize(tok, text, limit, expected):
    assert tok.decode(retokenize(text, tok, limit)) == expected
