"""A GGUF's metadata read with its types checked, and its tensor list checked against the
config the metadata implies, all before a model is built.

Every refusal is a one-line `ModelLoadError` that starts with the file and names the key or
tensor as the file spells it (``qwen2.attention.head_count``, ``blk.3.attn_q.weight``).
"""

from __future__ import annotations

from typing import Any

from gguf import GGUFReader

from spinserve.config.model import ModelConfig, check_dimensions, positive_number, token_ids
from spinserve.loading.gguf_names import gguf_tensor_name, hf_tensor_name, layer_of
from spinserve.loading.shapes import weight_shapes
from spinserve.types.errors import ModelLoadError

# GGUF keys (after "<arch>.") of the `spinserve.config.model.DIMENSION_LIMITS` fields
_DIMENSION_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "embedding_length",
    "intermediate_size": "feed_forward_length",
    "num_layers": "block_count",
    "num_heads": "attention.head_count",
    "num_kv_heads": "attention.head_count_kv",
    "head_dim": "attention.key_length",
    "max_position_embeddings": "context_length",
}
_DEFAULT_CONTEXT = 2048


def source(reader: GGUFReader) -> str:
    """The file ``reader`` reads, for messages."""
    return str(reader.data.filename)


def refuse(reader: GGUFReader, message: str) -> ModelLoadError:
    return ModelLoadError(f"{source(reader)}: {message}")


def metadata_value(reader: GGUFReader, key: str, default: Any = KeyError) -> Any:
    """The value of metadata ``key`` (``default`` if absent; absent with no default refused)."""
    field = reader.fields.get(key)
    if field is None:
        if default is KeyError:
            raise refuse(reader, f"GGUF metadata lacks {key!r}")
        return default
    try:
        return field.contents()
    except (ValueError, IndexError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise refuse(reader, f"cannot read GGUF metadata {key!r}: {exc}") from exc


def number(reader: GGUFReader, key: str, default: float) -> float:
    """A positive finite number under ``key``."""
    try:
        return positive_number(metadata_value(reader, key, default), key)
    except ValueError as exc:
        raise refuse(reader, str(exc)) from None


def token_id(reader: GGUFReader, key: str) -> int | None:
    try:
        ids = token_ids(metadata_value(reader, key, None), key)
    except ValueError as exc:
        raise refuse(reader, str(exc)) from None
    return ids[0] if ids else None


def dimensions(reader: GGUFReader, arch: str) -> dict[str, int]:
    """The model's dimensions (`DIMENSION_LIMITS` fields), each checked under its GGUF key;
    ``head_dim`` derived from the width and heads when the file does not give it."""
    names = {field: f"{arch}.{key}" for field, key in _DIMENSION_KEYS.items()}
    dims = {field: metadata_value(reader, name, None) for field, name in names.items()}
    for field in ("hidden_size", "intermediate_size", "num_layers", "num_heads"):
        if dims[field] is None:
            raise refuse(reader, f"GGUF metadata lacks {names[field]!r}")
    if dims["vocab_size"] is None:
        tokens = metadata_value(reader, "tokenizer.ggml.tokens", None)
        if not isinstance(tokens, list) or not tokens:
            raise refuse(reader, "GGUF metadata gives no vocabulary size")
        dims["vocab_size"], names["vocab_size"] = len(tokens), "tokenizer.ggml.tokens' length"
    if dims["num_kv_heads"] is None:
        dims["num_kv_heads"] = dims["num_heads"]
    if dims["max_position_embeddings"] is None:
        dims["max_position_embeddings"] = _DEFAULT_CONTEXT
    try:
        check_dimensions(dims, names)
    except ValueError as exc:
        raise refuse(reader, str(exc)) from None
    if dims["head_dim"] is None:
        dims["head_dim"] = dims["hidden_size"] // dims["num_heads"]
    return dims


def check_vocabulary(reader: GGUFReader) -> None:
    """The token list is strings and the token types (if any) one integer per token."""
    tokens = metadata_value(reader, "tokenizer.ggml.tokens", None)
    types = metadata_value(reader, "tokenizer.ggml.token_type", None)
    if tokens is not None and not (
        isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
    ):
        raise refuse(reader, "tokenizer.ggml.tokens must be an array of strings")
    if types is None:
        return
    if not isinstance(types, list) or not all(isinstance(t, int) for t in types):
        raise refuse(reader, "tokenizer.ggml.token_type must be an array of integers")
    if len(types) != len(tokens or ()):
        raise refuse(
            reader,
            f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens or ())} tokens",
        )


def check_tensors(reader: GGUFReader, arch: str, config: ModelConfig) -> None:
    """Every tensor is one ``config`` implies, with the shape it implies, and none is missing:
    ``<arch>.block_count`` must match the ``blk.N`` tensors present."""
    block_count = f"{arch}.block_count"
    hf_names = {t.name: _hf_name(reader, t.name, arch) for t in reader.tensors}
    if len(set(hf_names.values())) != len(hf_names):
        twice = [n for n in hf_names.values() if list(hf_names.values()).count(n) > 1]
        raise refuse(reader, f"two GGUF tensors are both {gguf_tensor_name(twice[0], arch)}")
    layers = {layer for name in hf_names.values() if (layer := layer_of(name)) is not None}
    for gguf_name, name in hf_names.items():
        if (layer := layer_of(name)) is not None and layer >= config.num_layers:
            raise refuse(
                reader,
                f"tensor {gguf_name} is for layer {layer} but {block_count} is {config.num_layers}",
            )
    if len(layers) != config.num_layers:
        raise refuse(
            reader,
            f"{block_count} is {config.num_layers} but the file has tensors for "
            f"{len(layers)} layers",
        )
    expected = weight_shapes(config)
    for t in reader.tensors:
        name, shape = hf_names[t.name], [int(d) for d in reversed(t.shape.tolist())]
        if name not in expected:
            raise refuse(reader, f"unexpected GGUF tensor {t.name!r} for a {arch} model")
        if shape != list(expected[name]):
            raise refuse(
                reader,
                f"tensor {t.name} has shape {shape} but the metadata implies "
                f"{list(expected[name])}",
            )
    missing = sorted(set(expected) - set(hf_names.values()))
    if missing:
        raise refuse(reader, f"the file lacks tensor {gguf_tensor_name(missing[0], arch)}")


def _hf_name(reader: GGUFReader, gguf_name: str, arch: str) -> str:
    try:
        return hf_tensor_name(gguf_name, arch)
    except ModelLoadError as exc:
        raise refuse(reader, str(exc)) from None
