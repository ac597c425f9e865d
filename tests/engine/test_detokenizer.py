"""Streaming detokenization with the real byte-level tokenizer of the tiny models.

One token per byte, so "é" (2 bytes) and "🙂" (4 bytes) arrive split across tokens: a delta
must never show half a character (U+FFFD) nor any part of a stop string.
"""

from __future__ import annotations

import random

import pytest
from tiny_models import EOS_ID, byte_tokenizer

from spinserve.engine.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer, find_stop
from spinserve.loading.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(byte_tokenizer(), ())


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def stream(
    tokenizer: Tokenizer, text: str, stop: tuple[str, ...], per_call: int = 1
) -> tuple[list[str], IncrementalDetokenizer]:
    """Feed ``text``'s token ids ``per_call`` at a time; the deltas and the detokenizer."""
    detok = IncrementalDetokenizer(tokenizer, stop)
    ids = encode(tokenizer, text)
    deltas = [detok.add(ids[i : i + per_call]) for i in range(0, len(ids), per_call)]
    return deltas, detok


def test_byte_tokenizer_splits_characters(tokenizer):
    """The premise of this file: multi-byte characters take several tokens."""
    assert len(encode(tokenizer, "é")) == 2
    assert len(encode(tokenizer, "🙂")) == 4
    assert tokenizer.decode(encode(tokenizer, "🙂")[:2]) == REPLACEMENT_CHAR


@pytest.mark.parametrize(
    ("text", "stop", "search_from", "expected"),
    [
        ("a cat. The end", (".", "The"), 0, 5),
        ("a cat. The end", ("The", "."), 0, 5),  # earliest match, not first listed
        ("a cat. The end", (".", "The"), 6, 7),
        ("a cat. The end", ("dog",), 0, -1),
        ("a cat. The end", (), 0, -1),
        ("abcabc", ("abc",), 1, 3),
        ("xabcd", ("bcd", "abc"), 0, 1),  # overlapping: the one starting first wins
        ("stop", ("stop",), 0, 0),
        ("été🙂", ("🙂",), 0, 3),  # character indices, not bytes
    ],
)
def test_find_stop(text, stop, search_from, expected):
    assert find_stop(text, stop, search_from) == expected


TEXTS = [
    "plain ascii",
    "café au lait",
    "🙂🙂 smile 🙂",
    "日本語のテキスト",
    "mixed é🙂日 end",
    "é",
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("per_call", [1, 2, 3, 100])
def test_no_stop_streams_whole_characters(tokenizer, text, per_call):
    deltas, detok = stream(tokenizer, text, (), per_call)
    assert not any(REPLACEMENT_CHAR in d for d in deltas)
    assert "".join(deltas) == text  # nothing held back without stop strings
    assert detok.flush() == ""
    assert detok.text == text
    assert not detok.stopped


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        pytest.param("Hello world", ("world",), "Hello ", id="single"),
        pytest.param("a cat. The end", (".", "The"), "a cat", id="several-first-wins"),
        pytest.param("a cat The end.", (".", "The"), "a cat ", id="several-later-listed-wins"),
        pytest.param("xabcd", ("bcd", "abc"), "x", id="overlapping"),
        pytest.param("xababab", ("bab", "abab"), "x", id="overlapping-self-similar"),
        pytest.param("aaab", ("aab",), "a", id="partial-match-then-real-match"),
        pytest.param("stop here", ("stop",), "", id="at-the-very-start"),
        pytest.param("café! ok", ("é!",), "caf", id="multibyte-stop-split-across-tokens"),
        pytest.param("hi 🙂 there", ("🙂",), "hi ", id="emoji-stop"),
        pytest.param("été fin", ("fin",), "été ", id="multibyte-before-stop"),
        pytest.param("ab", ("b",), "a", id="one-char-stop-at-end"),
        pytest.param("end.\nmore", ("\n",), "end.", id="newline"),
        pytest.param("x 🙂🙂 y", ("🙂🙂", "🙂 y"), "x ", id="emoji-overlap"),
    ],
)
@pytest.mark.parametrize("per_call", [1, 2, 5, 100])
def test_stop_string_truncates_and_never_leaks(tokenizer, text, stop, expected, per_call):
    deltas, detok = stream(tokenizer, text, stop, per_call)
    assert "".join(deltas) == expected
    assert not any(REPLACEMENT_CHAR in d for d in deltas)
    assert detok.stopped
    assert detok.text == expected
    assert detok.num_emitted == len(expected)
    assert detok.flush() == ""
    assert detok.add(encode(tokenizer, "more text")) == ""
    assert detok.text == expected


@pytest.mark.parametrize(
    ("text", "stop", "streamed", "flushed"),
    [
        pytest.param("xyz", ("abc",), "x", "yz", id="holds-back-len-minus-one"),
        pytest.param("xyz", ("a", "abc"), "x", "yz", id="longest-stop-sets-holdback"),
        pytest.param("xyab", ("abc",), "xy", "ab", id="possible-start-held"),
        pytest.param("héllo", ("zz",), "héll", "o", id="holdback-counts-characters"),
        pytest.param("ab", ("abcdef",), "", "ab", id="text-shorter-than-holdback"),
    ],
)
def test_flush_returns_the_held_back_tail(tokenizer, text, stop, streamed, flushed):
    deltas, detok = stream(tokenizer, text, stop)
    assert "".join(deltas) == streamed
    assert detok.flush() == flushed
    assert detok.flush() == ""
    assert detok.text == text
    assert not detok.stopped


def test_flush_of_an_unfinished_character_gives_the_replacement(tokenizer):
    """A request cut off mid-character (e.g. max_tokens) ends with what the bytes decode to."""
    detok = IncrementalDetokenizer(tokenizer)
    ids = encode(tokenizer, "a🙂")
    assert detok.add(ids[:3]) == "a"
    assert detok.flush() == REPLACEMENT_CHAR


def test_special_tokens_are_skipped(tokenizer):
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.add([*encode(tokenizer, "ok"), EOS_ID]) == "ok"


def test_plain_decoder_without_wrapper():
    """Anything with ``decode(ids, skip_special_tokens=...)`` will do, e.g. the HF tokenizer."""
    hf = byte_tokenizer()
    detok = IncrementalDetokenizer(hf, ("!",))
    ids = hf("hé!", add_special_tokens=False).input_ids
    assert "".join(detok.add([i]) for i in ids) == "hé"


ALPHABET = ["a", "b", "é", "🙂", " ", "日"]


@pytest.mark.parametrize("seed", range(20))
def test_random_streams_match_reference(tokenizer, seed):
    """Deltas + flush == the text cut before the earliest stop match, for any split."""
    rng = random.Random(seed)
    text = "".join(rng.choices(ALPHABET, k=rng.randint(0, 30)))
    stop = tuple(
        "".join(rng.choices(ALPHABET, k=rng.randint(1, 3))) for _ in range(rng.randint(0, 3))
    )
    hits = [i for s in stop if (i := text.find(s)) >= 0]
    expected = text[: min(hits)] if hits else text
    detok = IncrementalDetokenizer(tokenizer, stop)
    ids = encode(tokenizer, text)
    deltas = []
    while ids:
        n = rng.randint(1, 4)
        deltas.append(detok.add(ids[:n]))
        ids = ids[n:]
    assert not any(REPLACEMENT_CHAR in d for d in deltas)
    emitted = "".join(deltas)
    assert expected.startswith(emitted)
    assert detok.stopped == bool(hits)
    if not hits:
        emitted += detok.flush()
    assert emitted == expected
