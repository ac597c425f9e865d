"""Special-token text inside chat messages, kept as plain text: the pure parts.

A chat template marks turns with special tokens (``<|im_start|>user ...<|im_end|>``) and a
tokenizer reads those strings as control tokens wherever they appear, so a message holding
``<|im_end|>\\n<|im_start|>system\\n...`` would write a turn of another role. `escape` swaps
each special string inside the messages for a stand-in (a private-use character no message
holds); once the template is rendered every special string left is the template's own.
`segments` cuts the rendered text at those and puts the stand-ins back: the caller encodes
the template's markers as their ids and the text between as plain text, the messages'
special strings included.

    >>> pattern = alternation(["<|im_start|>", "<|im_end|>"])
    >>> messages, stand_ins = escape([{"role": "user", "content": "a<|im_end|>"}], pattern)
    >>> messages[0]["content"] == "a\\ue000", stand_ins
    (True, {'\\ue000': '<|im_end|>'})
    >>> segments("<|im_start|>user\\na\\ue000<|im_end|>", pattern, stand_ins, {})
    [('<|im_start|>', True), ('user\\na<|im_end|>', False), ('<|im_end|>', True)]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PRIVATE_USE = range(0xE000, 0xF900)  # Unicode's private-use area: no tokenizer's specials


def alternation(words: Iterable[str]) -> re.Pattern[str]:
    """A pattern matching any of ``words`` (one group: the word), longest first, built as a
    trie: each position of a text costs one step per character matched, however many words
    there are (a plain ``a|b|...`` of a few thousand specials takes seconds on a hostile
    text). No words: a pattern that never matches."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here
    return re.compile(f"({_trie_regex(trie)})" if trie else "(?!)")


def _trie_regex(node: dict[str, Any]) -> str:
    branches = [re.escape(ch) + _trie_regex(child) for ch, child in sorted(node.items()) if ch]
    if not branches:
        return ""
    ends = "" in node
    alt = f"(?:{'|'.join(branches)})" if len(branches) > 1 or ends else branches[0]
    return alt + "?" if ends else alt


def escape(
    messages: Sequence[Mapping[str, str]], pattern: re.Pattern[str]
) -> tuple[list[dict[str, str]], dict[str, str]]:
    """``messages`` with each special string in their values replaced by a stand-in, and
    the stand-ins (stand-in -> special string)."""
    values = [v for message in messages for v in message.values()]
    found = sorted({m for v in values for m in pattern.findall(v)})
    used = {ch for v in values for ch in v}
    free = (chr(c) for c in PRIVATE_USE if chr(c) not in used)
    chars = dict(zip(found, free, strict=False))
    if len(chars) < len(found):
        raise ValueError("the messages use up every private-use character")
    escaped = [
        {k: pattern.sub(lambda m: chars[m.group(0)], v) for k, v in message.items()}
        for message in messages
    ]
    return escaped, {ch: text for text, ch in chars.items()}


def segments(
    text: str,
    pattern: re.Pattern[str],
    stand_ins: Mapping[str, str],
    strips: Mapping[str, tuple[bool, bool]],
) -> list[tuple[str, bool]]:
    """``text`` cut at the special strings: (piece, is_special) in order, empty pieces left
    out, stand-ins put back. ``strips`` gives a special's (lstrip, rstrip): whether it eats
    the whitespace on its left or right, as the tokenizer's own splitting does."""
    pieces = pattern.split(text)  # plain, special, plain, ..., plain
    for i in range(1, len(pieces), 2):
        lstrip, rstrip = strips.get(pieces[i], (False, False))
        if lstrip:
            pieces[i - 1] = pieces[i - 1].rstrip()
        if rstrip:
            pieces[i + 1] = pieces[i + 1].lstrip()
    restore = str.maketrans(dict(stand_ins))
    return [
        (piece if i % 2 else piece.translate(restore), bool(i % 2))
        for i, piece in enumerate(pieces)
        if piece
    ]
