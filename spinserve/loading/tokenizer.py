"""Tokenizers: a thin wrapper over a Hugging Face fast tokenizer with the model's chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered with the model's template, ready for the reply."""
        if not self.has_chat_template:
            raise InvalidRequestError("this model has no chat template; send a plain prompt")
        try:
            text = self._tok.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja errors on malformed messages
            raise InvalidRequestError(f"cannot apply the chat template: {exc}") from exc
        return self.encode(text, add_special_tokens=False)

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
