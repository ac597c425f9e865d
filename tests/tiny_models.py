"""Tiny random models for tests: Hugging Face folders and GGUF files of each architecture.

Every parameter (biases and norms included) is random, so a wrong layout or a missed term
shows up in the logits. The folders carry a real byte-level BPE tokenizer and a chat
template, so the whole engine and CLI run on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from spinserve.loading.gguf_file import hf_config, iter_tensors, open_gguf

ARCHITECTURES = ("llama", "qwen2", "gemma3")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
VOCAB_SIZE = 264  # 256 bytes + 3 specials, rounded up
EOS_ID = 258  # <|im_end|>
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SLIDING_WINDOW = 8

_COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=256,
    eos_token_id=EOS_ID,
)


# Widths for k-quant models (Q4_K/Q6_K blocks span 256 input columns).
_WIDE = dict(hidden_size=256, intermediate_size=512)
KQUANTS = (GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K)


def hf_model(arch: str, seed: int = 0, wide: bool = False) -> torch.nn.Module:
    """A transformers model of ``arch`` with every parameter random (``wide``: k-quant widths)."""
    torch.manual_seed(seed)
    common = {**_COMMON, **(_WIDE if wide else {})}
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, rope_theta=10000.0))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, rope_theta=50000.0))
    else:
        config = Gemma3TextConfig(
            **common,
            head_dim=16,
            sliding_window=SLIDING_WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            query_pre_attn_scalar=16,
        )
        model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn_like(p) * 0.1 + (0.0 if arch == "gemma3" else 1.0))
            else:
                p.copy_(torch.randn_like(p) * 0.15)
    return model.eval()


def byte_tokenizer(specials_first: bool = False) -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer: one token per byte, plus chat specials.

    ``specials_first`` numbers the specials 0..2 and the bytes after them: the same text, a
    different vocabulary (for cross-tokenizer drafting tests).
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    offset = len(SPECIAL_TOKENS) if specials_first else 0
    vocab = {ch: offset + i for i, ch in enumerate(alphabet)}
    for i, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = i if specials_first else 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        chat_template=CHAT_TEMPLATE,
    )


def write_hf_folder(
    arch: str, folder: Path, seed: int = 0, specials_first: bool = False, wide: bool = False
) -> Path:
    """A tiny model folder. With ``specials_first`` the token ids are renumbered to match
    ``byte_tokenizer(specials_first=True)``: the same model over a different vocabulary."""
    model = hf_model(arch, seed, wide)
    if specials_first:
        n = len(SPECIAL_TOKENS)
        old_of_new = list(range(256, 256 + n)) + list(range(256)) + list(range(256 + n, VOCAB_SIZE))
        with torch.no_grad():
            for matrix in {
                id(m): m
                for m in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)
            }.values():
                matrix.copy_(matrix[old_of_new])
        model.config.bos_token_id, model.config.eos_token_id = 0, 2
    model.save_pretrained(folder)
    byte_tokenizer(specials_first).save_pretrained(folder)
    return folder


_GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_feedforward_layernorm": "post_ffw_norm",
    "pre_feedforward_layernorm": "ffn_norm",
}


def _gguf_name(hf_name: str, arch: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    stem, kind = rest.rsplit(".", 1)
    if stem == "post_attention_layernorm":
        part = "post_attention_norm" if arch == "gemma3" else "ffn_norm"
    else:
        part = _GGUF_NAMES[stem]
    return f"blk.{layer}.{part}.{kind}"


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter permutation of llama q/k rows."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def write_gguf(arch: str, path: Path, quant: GGMLQuantizationType, seed: int = 0) -> Path:
    """The tiny model as llama.cpp's converter would write it, matrices in ``quant``.

    ``Q4_K`` writes a Q4_K_M-like file of the wide model: Q4_K matrices, Q6_K for the MLP down
    projections and the output matrix, as llama.cpp's Q4_K_M mixes them.
    """
    model = hf_model(arch, seed, wide=quant in KQUANTS)
    cfg = model.config
    w = GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_bos_token_id(256)
    w.add_eos_token_id(EOS_ID)
    if arch == "gemma3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_sliding_window(SLIDING_WINDOW)
        w.add_uint32("gemma3.attention.sliding_window_pattern", 2)
        w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    else:
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    for name, tensor in model.state_dict().items():
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue
        data = tensor.float().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
            data = _permute(data, heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            data = data + 1.0
        if data.ndim == 2 and quant in KQUANTS and data.shape[1] % 256:
            # llama.cpp falls back likewise where rows are not whole super-blocks
            q8 = GGMLQuantizationType.Q8_0
            w.add_tensor(_gguf_name(name, arch), quantize(data, q8), raw_dtype=q8)
        elif data.ndim == 2 and quant in KQUANTS:
            kind = _gguf_name(name, arch)
            q6 = kind.endswith(("ffn_down.weight", "output.weight"))
            tensor_quant = GGMLQuantizationType.Q6_K if q6 else quant
            w.add_tensor(kind, quantize_k(data, tensor_quant), raw_dtype=tensor_quant)
        elif data.ndim == 2 and quant != GGMLQuantizationType.F32:
            w.add_tensor(_gguf_name(name, arch), quantize(data, quant), raw_dtype=quant)
        else:
            w.add_tensor(_gguf_name(name, arch), np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize_k(data: np.ndarray, quant: GGMLQuantizationType) -> np.ndarray:
    """``data`` [rows, cols] (cols % 256 == 0) in Q4_K or Q6_K blocks, [rows, bytes] uint8.

    gguf-py cannot quantize to k-quants; this is a plain min/max quantizer (not llama.cpp's
    search for the best scales) writing the exact bit layouts its dequantizer reads.
    """
    rows, cols = data.shape
    x = data.astype(np.float32).reshape(-1, 256)
    if quant == GGMLQuantizationType.Q4_K:
        return _q4_k(x).reshape(rows, cols // 256 * 144)
    return _q6_k(x).reshape(rows, cols // 256 * 210)


def _half(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = v.astype(np.float16)
    return h.view(np.uint8).reshape(-1, 2), h.astype(np.float32)


def _q4_k(x: np.ndarray) -> np.ndarray:
    sub = x.reshape(-1, 8, 32)
    low = np.minimum(sub.min(-1), 0.0)
    scale, mins = (sub.max(-1) - low) / 15.0, -low
    d_bytes, d = _half(scale.max(-1) / 63.0)
    m_bytes, dmin = _half(mins.max(-1) / 63.0)
    sc = np.clip(
        np.round(np.divide(scale, d[:, None], where=d[:, None] > 0, out=np.zeros_like(scale))),
        0,
        63,
    )
    m = np.clip(
        np.round(np.divide(mins, dmin[:, None], where=dmin[:, None] > 0, out=np.zeros_like(mins))),
        0,
        63,
    )
    step, offset = d[:, None] * sc, dmin[:, None] * m
    q = np.divide(
        sub + offset[..., None], step[..., None], where=step[..., None] > 0, out=np.zeros_like(sub)
    )
    q = np.clip(np.round(q), 0, 15).astype(np.uint8)
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    packed_scales = np.concatenate(
        [
            sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
            m[:, :4] | ((m[:, 4:] >> 4) << 6),
            (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4),
        ],
        axis=1,
    )
    nibbles = q[:, 0::2] | (q[:, 1::2] << 4)  # sub-blocks 2i (low) and 2i+1 (high)
    return np.concatenate([d_bytes, m_bytes, packed_scales, nibbles.reshape(-1, 128)], axis=1)


def _q6_k(x: np.ndarray) -> np.ndarray:
    sub = x.reshape(-1, 16, 16)
    scale = np.abs(sub).max(-1) / 31.0
    d_bytes, d = _half(scale.max(-1) / 127.0)
    sc = np.clip(
        np.round(np.divide(scale, d[:, None], where=d[:, None] > 0, out=np.zeros_like(scale))),
        -128,
        127,
    )
    step = d[:, None] * sc
    q = np.divide(sub, step[..., None], where=step[..., None] > 0, out=np.zeros_like(sub))
    q = (np.clip(np.round(q), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # half, part
    ql = np.concatenate(  # low nibbles: parts 0 and 1; high nibbles: parts 2 and 3
        [(q[:, :, 0] & 0xF) | (q[:, :, 2] << 4), (q[:, :, 1] & 0xF) | (q[:, :, 3] << 4)], axis=2
    )
    qh = (
        (q[:, :, 0] >> 4)
        | ((q[:, :, 1] >> 4) << 2)
        | ((q[:, :, 2] >> 4) << 4)
        | ((q[:, :, 3] >> 4) << 6)
    )
    return np.concatenate(
        [ql.reshape(-1, 128), qh.reshape(-1, 64), sc.astype(np.int8).view(np.uint8), d_bytes],
        axis=1,
    )


def write_zoo_folder(arch: str, root: Path, quant: GGMLQuantizationType) -> Path:
    """A folder in the zoo's older layout (cache format 2, still read as it is): an fp32 copy,
    tokenizer, and a marker naming the GGUF kept in ``../../gguf``."""
    (root / "gguf").mkdir(parents=True)
    reader = open_gguf(write_gguf(arch, root / "gguf" / "m.gguf", quant))
    # for its config and tokenizer
    folder = write_hf_folder(arch, root / "models" / "m", wide=quant in KQUANTS)
    for shard in folder.glob("*.safetensors"):
        shard.unlink()
    save_file(dict(iter_tensors(reader, hf_config(reader))), folder / "model.safetensors")
    (folder / "spinserve.json").write_text(json.dumps({"gguf_file": "m.gguf"}))
    return folder
