"""Tokenizers: a thin wrapper over a Hugging Face fast tokenizer with the model's chat template."""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from spinserve.loading import special_text
from spinserve.types.errors import InvalidRequestError, ModelLoadError


class Tokenizer:
    """Text <-> token ids for one model, plus the ids that end generation.

    Built from a folder (tokenizer.json + tokenizer_config.json, as the cache stores them) or
    from a GGUF file's embedded vocabulary (slow: seconds; the cache avoids it).
    """

    def __init__(self, hf_tokenizer: Any, eos_token_ids: tuple[int, ...]) -> None:
        self._tok = hf_tokenizer
        ids = set(eos_token_ids)
        if hf_tokenizer.eos_token_id is not None:
            ids.add(hf_tokenizer.eos_token_id)
        self.eos_token_ids = tuple(sorted(ids))

    @classmethod
    def from_folder(cls, folder: Path, eos_token_ids: tuple[int, ...] = ()) -> Tokenizer:
        from transformers import AutoTokenizer

        if (
            not (folder / "tokenizer.json").is_file()
            and not (folder / "tokenizer_config.json").is_file()
        ):
            raise ModelLoadError(f"{folder} has no tokenizer files (tokenizer.json)")
        try:
            tok = AutoTokenizer.from_pretrained(folder)
        except Exception as exc:  # transformers raises many kinds
            raise ModelLoadError(f"cannot load the tokenizer in {folder}: {exc}") from exc
        return cls(tok, eos_token_ids + _generation_config_eos(folder))

    @classmethod
    def from_gguf(cls, path: Path, eos_token_ids: tuple[int, ...] = ()) -> Tokenizer:
        return cls(hf_tokenizer_from_gguf(path), eos_token_ids)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def vocab(self) -> dict[str, int]:
        """Token text -> id, special tokens included."""
        return self._tok.get_vocab()

    @property
    def has_chat_template(self) -> bool:
        return bool(self._tok.chat_template)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok(text, add_special_tokens=add_special_tokens).input_ids)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: list[dict[str, str]], special_in_messages: bool = False
    ) -> list[int]:
        """Token ids of ``messages`` rendered with the model's template, ready for the reply.

        Special-token text inside the messages (``<|im_end|>`` in a user's message) is plain
        text, so that only the template writes turn markers; ``special_in_messages`` reads it
        as control tokens instead. Messages without such text are encoded as one string.
        """
        pattern, _ = self._specials
        if special_in_messages or not any(
            pattern.search(v) for message in messages for v in message.values()
        ):
            return self.encode(self._render(messages), add_special_tokens=False)
        return self._encode_as_data(messages)

    def _encode_as_data(self, messages: list[dict[str, str]]) -> list[int]:
        """The template's specials as their ids, the messages' special text as plain text.

        The rendered text is cut at the template's specials and the pieces encoded alone, as
        the tokenizer itself does (a tokenizer that marks the start of a text, such as a
        SentencePiece ``▁``, marks each piece here: only messages holding special text
        take this path)."""
        pattern, strips = self._specials
        try:
            escaped, stand_ins = special_text.escape(messages, pattern)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from exc
        ids: list[int] = []
        text = self._render(escaped)
        for piece, special in special_text.segments(text, pattern, stand_ins, strips):
            if special:
                ids.append(self._tok.convert_tokens_to_ids(piece))
            else:
                plain = self._tok(piece, add_special_tokens=False, split_special_tokens=True)
                ids += plain.input_ids
        return ids

    def _render(self, messages: list[dict[str, str]]) -> str:
        if not self.has_chat_template:
            raise InvalidRequestError("this model has no chat template; send a plain prompt")
        try:
            return self._tok.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja errors on malformed messages
            raise InvalidRequestError(f"cannot apply the chat template: {exc}") from exc

    @cached_property
    def _specials(self) -> tuple[re.Pattern[str], dict[str, tuple[bool, bool]]]:
        """A pattern of the special tokens' strings, and each one's (lstrip, rstrip)."""
        added = [t for t in self._tok.added_tokens_decoder.values() if t.special]
        strips = {t.content: (bool(t.lstrip), bool(t.rstrip)) for t in added}
        return special_text.alternation(strips), strips

    def save(self, folder: Path) -> None:
        self._tok.save_pretrained(folder)


def hf_tokenizer_from_gguf(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:
        raise ModelLoadError(f"cannot build a tokenizer from {path}: {exc}") from exc


def _generation_config_eos(folder: Path) -> tuple[int, ...]:
    path = folder / "generation_config.json"
    if not path.is_file():
        return ()
    eos = json.loads(path.read_text()).get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (eos,)
