"""Incremental detokenization with stop strings. No torch.

Token ids arrive a few at a time; text must stream out without ever emitting half of a
multi-byte character or any part of a stop string. We decode the whole output each time (the
cost is linear in the output, small next to a model step) and emit only the stable part:
trailing U+FFFD (an incomplete UTF-8 sequence) and the last ``len(longest stop) - 1``
characters, which might start a stop string, are held back until they are settled.
"""

from __future__ import annotations

from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...


def find_stop(text: str, stop: tuple[str, ...], search_from: int) -> int:
    """Index of the earliest stop string in ``text[search_from:]``, or -1.

    >>> find_stop("a cat. The end", (".", "The"), 0)
    5
    """
    hits = [i for s in stop if (i := text.find(s, search_from)) >= 0]
    return min(hits) if hits else -1


class IncrementalDetokenizer:
    """Turns a growing list of output token ids into text deltas."""

    def __init__(self, tokenizer: Decoder, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._holdback = max((len(s) for s in stop), default=1) - 1
        self._ids: list[int] = []
        self.text = ""  # everything decoded so far (the final output once finished)
        self.num_emitted = 0  # characters of `text` already handed out
        self.stopped = False

    def add(self, token_ids: list[int]) -> str:
        """Feed new ids; return the text delta that is now safe to show."""
        if self.stopped:
            return ""
        self._ids.extend(token_ids)
        self.text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if self._stop:
            hit = find_stop(self.text, self._stop, max(0, self.num_emitted - self._holdback))
            if hit >= 0:
                self.text = self.text[:hit]
                self.stopped = True
                return self._emit(len(self.text))
        stable = len(self.text.rstrip(REPLACEMENT_CHAR)) - self._holdback
        return self._emit(stable)

    def flush(self) -> str:
        """The held-back rest, when the request ends for another reason than a stop string."""
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.num_emitted:
            return ""
        delta = self.text[self.num_emitted : upto]
        self.num_emitted = upto
        return delta
