"""GGUF tensor names <-> Hugging Face tensor names (``blk.3.attn_q.bias`` <->
``model.layers.3.self_attn.q_proj.bias``), refusing any name outside the scheme."""

from __future__ import annotations

import re

from spinserve.types.errors import ModelLoadError

# gguf names (after "blk.N.") -> Hugging Face names (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# The norm before the MLP: gemma3 names it differently from llama/qwen2.
_FFN_NORM = {"gemma3": "pre_feedforward_layernorm"}
_FFN_NORM_DEFAULT = "post_attention_layernorm"
_LAYER_TENSOR = re.compile(r"blk\.(0|[1-9][0-9]*)\.(\w+)\.(weight|bias)")
_GLOBAL_TENSOR = re.compile(r"(\w+)\.(weight|bias)")


def hf_tensor_name(gguf_name: str, arch: str) -> str:
    """``blk.3.attn_q.bias`` -> ``model.layers.3.self_attn.q_proj.bias``."""
    if match := _LAYER_TENSOR.fullmatch(gguf_name):
        layer, part, kind = match.groups()
        mapped = _FFN_NORM.get(arch, _FFN_NORM_DEFAULT) if part == "ffn_norm" else None
        mapped = mapped or _LAYER_NAMES.get(part)
        if mapped is not None:
            return f"model.layers.{layer}.{mapped}.{kind}"
    elif (match := _GLOBAL_TENSOR.fullmatch(gguf_name)) and match[1] in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[match[1]]}.{match[2]}"
    raise ModelLoadError(f"unexpected GGUF tensor {gguf_name!r} for {arch}")


def gguf_tensor_name(hf_name: str, arch: str) -> str:
    """The inverse of `hf_tensor_name` (for messages about a tensor a file lacks)."""
    stem, _, kind = hf_name.rpartition(".")
    if stem.startswith("model.layers."):
        _, _, layer, part = stem.split(".", 3)
        if part == _FFN_NORM.get(arch, _FFN_NORM_DEFAULT):
            return f"blk.{layer}.ffn_norm.{kind}"
        gguf = next(g for g, h in _LAYER_NAMES.items() if h == part)
        return f"blk.{layer}.{gguf}.{kind}"
    return next(g for g, h in _GLOBAL_NAMES.items() if h == stem) + f".{kind}"


def layer_of(hf_name: str) -> int | None:
    """The layer a Hugging Face tensor name belongs to, or None for a global tensor."""
    parts = hf_name.split(".")
    return int(parts[2]) if parts[:2] == ["model", "layers"] else None
