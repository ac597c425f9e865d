"""Damaged copies of a tiny GGUF for the hostile-file tests: metadata rewritten through the
gguf package's writer, or single fields and bytes patched in place."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from tiny_models import VOCAB_SIZE, write_gguf

from spinserve.config.model import ModelConfig
from spinserve.loading.gguf_file import hf_config, iter_tensors, open_gguf
from spinserve.models.decoder import Decoder

DROP = object()  # an override value that removes the key or tensor
_HEADER_TENSOR_COUNT, _HEADER_KV_COUNT = 8, 16  # byte offsets of the header's two u64 counts


def tiny_gguf(folder: Path, arch: str = "qwen2", quant=GGMLQuantizationType.F32) -> Path:
    """The tiny model plus a token list and token types (so the file has string and integer
    arrays to damage)."""
    plain = write_gguf(arch, folder / "plain.gguf", quant)
    tokens = [f"<{i}>" for i in range(VOCAB_SIZE)]
    tokens[256:259] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [3 if i in (256, 257, 258) else 1 for i in range(VOCAB_SIZE)]
    out = rewrite(plain, folder / "tiny.gguf", {"tokenizer.ggml.tokens": tokens})
    return rewrite(out, out, {"tokenizer.ggml.token_type": types})


def rewrite(
    src: Path,
    dst: Path,
    metadata: dict[str, Any] | None = None,
    tensors: dict[str, Any] | None = None,
) -> Path:
    """``src`` written again with ``metadata`` keys set (or removed with `DROP`) and
    ``tensors`` replaced by fp32 arrays (or removed, or added)."""
    metadata, tensors = metadata or {}, tensors or {}
    reader = GGUFReader(src)
    arch = metadata.get("general.architecture", reader.fields["general.architecture"].contents())
    fields = {
        name: (field.contents(), field.types)
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.") and name != "general.architecture"
    }
    arrays = {t.name: (np.array(t.data), t.tensor_type) for t in reader.tensors}
    del reader  # the map must close before ``dst`` (maybe ``src``) is written
    writer = GGUFWriter(str(dst), arch)
    for name, (value, types) in fields.items():
        if name not in metadata:
            sub = types[-1] if types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(name, value, types[0], sub_type=sub)
    for name, value in metadata.items():
        if value is not DROP and name != "general.architecture":
            writer.add_key_value(name, value, *_value_type(value))
    for name, (data, qtype) in arrays.items():
        if name not in tensors:
            writer.add_tensor(name, data, raw_dtype=qtype)
    for name, data in tensors.items():
        if data is not DROP:
            writer.add_tensor(name, np.ascontiguousarray(data, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _value_type(value: Any) -> tuple[GGUFValueType, GGUFValueType | None]:
    if isinstance(value, list):
        return GGUFValueType.ARRAY, _value_type(value[0])[0]
    if isinstance(value, bool):
        return GGUFValueType.BOOL, None
    if isinstance(value, int):
        kind = GGUFValueType.UINT32 if 0 <= value < 2**32 else GGUFValueType.UINT64
        return (GGUFValueType.INT64 if value < 0 else kind), None
    if isinstance(value, float):
        return GGUFValueType.FLOAT32, None
    return GGUFValueType.STRING, None


def field_offsets(path: Path) -> dict[str, int]:
    """Where each metadata field starts (its key's u64 length) and, as ``<key>#value``, where
    its value starts; ``<tensor>#info`` where a tensor's info starts."""
    reader = GGUFReader(path)
    offsets: dict[str, int] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        offsets[name] = field.offset
        offsets[f"{name}#value"] = field.offset + 8 + len(name.encode()) + 4
    for t in reader.tensors:
        offsets[f"{t.name}#info"] = t.field.offset
    offsets["#data"] = reader.data_offset
    return offsets


def patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``data`` with the little-endian ``fmt`` value at ``offset`` replaced."""
    raw = bytearray(data)
    struct.pack_into("<" + fmt, raw, offset, value)
    return bytes(raw)


def with_counts(data: bytes, tensors: int | None = None, kvs: int | None = None) -> bytes:
    if tensors is not None:
        data = patch(data, _HEADER_TENSOR_COUNT, "Q", tensors)
    if kvs is not None:
        data = patch(data, _HEADER_KV_COUNT, "Q", kvs)
    return data


def read_model(path: Path) -> Decoder:
    """What the loader does with a GGUF, up to filled weights (no tokenizer): the part that
    must refuse a hostile file with `ModelLoadError` and nothing else."""
    reader = open_gguf(path)
    hf = hf_config(reader)
    model = Decoder(ModelConfig.from_hf_dict(hf))
    model.load_weights(iter_tensors(reader, hf))
    return model
