"""The architecture of a decoder-only model, read from a Hugging Face config.json dict.

One `ModelConfig` describes all three supported families. What differs between them is
data (flags and numbers), never code paths chosen by model name:

- ``llama`` (SmolLM2): RMSNorm, rotary embeddings, SwiGLU MLP.
- ``qwen2``: llama plus a bias on the q/k/v projections.
- ``gemma3``: GeGLU MLP, RMSNorm scaled by ``1 + weight``, q/k norms, norms after attention and
  MLP as well as before, embeddings scaled by ``sqrt(hidden_size)``, and sliding-window layers
  with their own rotary base.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"

# How each supported `model_type` differs from plain llama.
_ARCH_TRAITS: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {"attention_bias": True},
    "gemma3": {
        "hidden_act": "gelu_tanh",
        "qk_norm": True,
        "sandwich_norm": True,
        "norm_weight_offset": 1.0,
        "scale_embeddings": True,
        "tie_word_embeddings": True,
    },
}
_HF_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3", "gemma3_text": "gemma3"}
_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}
SUPPORTED_ARCHITECTURES = tuple(_ARCH_TRAITS)


# A KV cache's dtypes: ``auto`` (the model's compute dtype) or float16 (half the bytes).
KV_CACHE_DTYPES = ("auto", "float16")

# Upper bounds on a model's dimensions: far above any released model (vocabularies of 262k,
# 16k-wide and 126-layer models, 10M-token contexts), low enough that a file within them
# never asks for an absurd model before its tensors are checked against them.
DIMENSION_LIMITS: dict[str, int] = {
    "vocab_size": 1 << 22,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 19,
    "num_layers": 1 << 10,
    "num_heads": 1 << 10,
    "num_kv_heads": 1 << 10,
    "head_dim": 1 << 11,
    "max_position_embeddings": 1 << 24,
}
# How config.json spells each dimension.
HF_DIMENSION_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "max_position_embeddings": "max_position_embeddings",
}


def check_dimensions(dims: dict[str, Any], names: dict[str, str]) -> None:
    """Raise ValueError naming the first of ``dims`` (a `DIMENSION_LIMITS` field -> value;
    ``head_dim`` None when it is hidden_size / num_heads) that cannot describe a model, with the
    field spelled as in ``names`` (config.json or GGUF keys), e.g.
    ``qwen2.attention.head_count is 0; it must be a positive divisor of qwen2.embedding_length
    (1536)``."""
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers"):
        _check_range(dims[field], names[field], DIMENSION_LIMITS[field])
    hidden, heads, kv_heads = dims["hidden_size"], dims["num_heads"], dims["num_kv_heads"]
    if dims["head_dim"] is None:
        _check_divisor(heads, names["num_heads"], hidden, names["hidden_size"])
    _check_range(heads, names["num_heads"], DIMENSION_LIMITS["num_heads"])
    _check_divisor(kv_heads, names["num_kv_heads"], heads, names["num_heads"])
    head_dim = dims["head_dim"]
    if head_dim is None:
        head_dim, where = hidden // heads, f"{names['hidden_size']} / {names['num_heads']}"
    else:
        _check_range(head_dim, names["head_dim"], DIMENSION_LIMITS["head_dim"])
        where = names["head_dim"]
    if head_dim % 2 or head_dim > DIMENSION_LIMITS["head_dim"]:
        raise ValueError(
            f"{where} is {head_dim}; rotary embeddings need an even head dimension of at most "
            f"{DIMENSION_LIMITS['head_dim']:,}"
        )
    field = "max_position_embeddings"
    _check_range(dims[field], names[field], DIMENSION_LIMITS[field])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_range(value: Any, name: str, limit: int) -> None:
    if not _is_int(value) or not 1 <= value <= limit:
        raise ValueError(f"{name} is {value!r}; it must be an integer from 1 to {limit:,}")


def _check_divisor(value: Any, name: str, of: int, of_name: str) -> None:
    if not _is_int(value):
        raise ValueError(f"{name} is {value!r}; it must be an integer")
    if value < 1 or of % value:
        raise ValueError(f"{name} is {value!r}; it must be a positive divisor of {of_name} ({of})")


def positive_number(value: Any, name: str) -> float:
    """``value`` as a float, or ValueError naming ``name`` unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"{name} is {value!r}; it must be a positive number")
    return float(value)


def token_ids(value: Any, name: str) -> tuple[int, ...]:
    """A token id, a list of them or None as a tuple; ValueError naming ``name`` otherwise."""
    ids = value if isinstance(value, list) else [] if value is None else [value]
    if not all(_is_int(i) and i >= 0 for i in ids):
        raise ValueError(f"{name} is {value!r}; it must be a token id or a list of them")
    return tuple(ids)


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of one decoder. Built by `from_hf_dict`, never by model name."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_theta_sliding: float | None = None  # rotary base of sliding layers (gemma3)
    rope_linear_factor: float = 1.0  # "linear" rope scaling of full-attention layers
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    hidden_act: str = "silu"  # "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    qk_norm: bool = False
    sandwich_norm: bool = False  # extra norms after attention and after the MLP
    norm_weight_offset: float = 0.0  # RMSNorm multiplies by (offset + weight)
    scale_embeddings: bool = False  # multiply embeddings by sqrt(hidden_size)
    attention_scale: float | None = None  # None: head_dim ** -0.5
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    final_logit_softcapping: float | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.architecture not in _ARCH_TRAITS:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        try:
            check_dimensions(
                {name: getattr(self, name) for name in DIMENSION_LIMITS},
                {name: name for name in DIMENSION_LIMITS},
            )
        except ValueError as exc:
            raise ValueError(f"model config: {exc}") from None
        if self.hidden_act not in ("silu", "gelu_tanh"):
            raise ValueError(f"model config: unsupported activation {self.hidden_act!r}")
        if not self.layer_types:
            object.__setattr__(self, "layer_types", (FULL_ATTENTION,) * self.num_layers)
        if len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"model config: {len(self.layer_types)} layer types for {self.num_layers} layers"
            )
        bad = set(self.layer_types) - {FULL_ATTENTION, SLIDING_ATTENTION}
        if bad:
            raise ValueError(f"model config: unknown layer types {sorted(bad)}")
        if SLIDING_ATTENTION in self.layer_types and not self.sliding_window:
            raise ValueError("model config: sliding-attention layers need a sliding_window")

    @property
    def softmax_scale(self) -> float:
        return self.attention_scale if self.attention_scale is not None else self.head_dim**-0.5

    @property
    def embedding_multiplier(self) -> float:
        return math.sqrt(self.hidden_size) if self.scale_embeddings else 1.0

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING_ATTENTION

    def layer_rope_theta(self, layer: int) -> float:
        if self.is_sliding(layer) and self.rope_theta_sliding is not None:
            return self.rope_theta_sliding
        return self.rope_theta

    def layer_rope_factor(self, layer: int) -> float:
        return 1.0 if self.is_sliding(layer) else self.rope_linear_factor

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> ModelConfig:
        """Read a config.json dict (legacy ``rope_theta`` or v5 ``rope_parameters``)."""
        model_type = hf.get("model_type", "")
        if "text_config" in hf and model_type not in _HF_MODEL_TYPES:
            hf = {**hf["text_config"]}
            model_type = hf.get("model_type", "")
        arch = _HF_MODEL_TYPES.get(model_type)
        if arch is None:
            raise ValueError(
                f"unsupported model_type {model_type!r} in config.json; "
                f"supported: {', '.join(sorted(_HF_MODEL_TYPES))}"
            )
        traits = _ARCH_TRAITS[arch]
        missing = [
            k
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
            )
            if k not in hf
        ]
        if missing:
            raise ValueError(f"config.json lacks required keys: {', '.join(missing)}")
        dims = _hf_dimensions(hf)
        full_rope, sliding_rope = _rope_params(hf, arch)
        layer_types = tuple(hf.get("layer_types") or ())
        sliding_window = hf.get("sliding_window")
        if arch == "qwen2" and not hf.get("use_sliding_window", False):
            layer_types, sliding_window = (), None
        if arch == "llama":
            layer_types, sliding_window = (), None
        if arch == "gemma3" and not layer_types:
            pattern = hf.get("sliding_window_pattern", 6)
            _check_range(pattern, "sliding_window_pattern", DIMENSION_LIMITS["num_layers"])
            layer_types = tuple(
                FULL_ATTENTION if (i + 1) % pattern == 0 else SLIDING_ATTENTION
                for i in range(dims["num_layers"])
            )
        if SLIDING_ATTENTION in layer_types:
            _check_range(
                sliding_window, "sliding_window", DIMENSION_LIMITS["max_position_embeddings"]
            )
        scalar = hf.get("query_pre_attn_scalar")
        softcap = hf.get("final_logit_softcapping")
        return cls(
            architecture=arch,
            **dims,
            rms_norm_eps=positive_number(hf.get("rms_norm_eps", 1e-6), "rms_norm_eps"),
            rope_theta=full_rope[0],
            rope_linear_factor=full_rope[1],
            rope_theta_sliding=sliding_rope,
            tie_word_embeddings=bool(
                hf.get("tie_word_embeddings", traits.get("tie_word_embeddings", False))
            ),
            attention_bias=bool(hf.get("attention_bias", traits.get("attention_bias", False))),
            hidden_act=traits.get("hidden_act", "silu"),
            qk_norm=traits.get("qk_norm", False),
            sandwich_norm=traits.get("sandwich_norm", False),
            norm_weight_offset=traits.get("norm_weight_offset", 0.0),
            scale_embeddings=traits.get("scale_embeddings", False),
            attention_scale=(
                positive_number(scalar, "query_pre_attn_scalar") ** -0.5
                if scalar is not None
                else None
            ),
            sliding_window=sliding_window if layer_types else None,
            layer_types=layer_types,
            final_logit_softcapping=(
                positive_number(softcap, "final_logit_softcapping") if softcap is not None else None
            ),
            bos_token_id=(token_ids(hf.get("bos_token_id"), "bos_token_id") or (None,))[0],
            eos_token_ids=token_ids(hf.get("eos_token_id"), "eos_token_id"),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json that makes transformers build the same model (used by the cache)."""
        hf: dict[str, Any] = {
            "architectures": [_HF_ARCHITECTURES[self.architecture]],
            "model_type": "gemma3_text" if self.architecture == "gemma3" else self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) or None,
            "torch_dtype": "float32",
        }
        full = _hf_rope(self.rope_theta, self.rope_linear_factor)
        if self.architecture == "gemma3":
            hf["rope_parameters"] = {
                FULL_ATTENTION: full,
                SLIDING_ATTENTION: _hf_rope(self.rope_theta_sliding or self.rope_theta, 1.0),
            }
            hf["layer_types"] = list(self.layer_types)
            hf["sliding_window"] = self.sliding_window
            scalar = self.attention_scale**-2 if self.attention_scale else self.head_dim
            hf["query_pre_attn_scalar"] = (
                round(scalar) if abs(scalar - round(scalar)) < 1e-6 else scalar
            )
            hf["final_logit_softcapping"] = self.final_logit_softcapping
            hf["attn_logit_softcapping"] = None
            hf["hidden_activation"] = "gelu_pytorch_tanh"
        else:
            hf["rope_parameters"] = full
            hf["hidden_act"] = "silu"
            hf["attention_bias"] = self.attention_bias
        return hf

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def _hf_dimensions(hf: dict[str, Any]) -> dict[str, Any]:
    """The dimensions of a config.json dict, checked (`check_dimensions`) under its own keys."""
    dims = {field: hf.get(key) for field, key in HF_DIMENSION_KEYS.items()}
    if dims["num_kv_heads"] is None:
        dims["num_kv_heads"] = dims["num_heads"]
    if dims["max_position_embeddings"] is None:
        dims["max_position_embeddings"] = 2048
    check_dimensions(dims, HF_DIMENSION_KEYS)
    if dims["head_dim"] is None:
        dims["head_dim"] = dims["hidden_size"] // dims["num_heads"]
    return dims


def _hf_rope(theta: float, factor: float) -> dict[str, Any]:
    if factor == 1.0:
        return {"rope_type": "default", "rope_theta": theta}
    return {"rope_type": "linear", "rope_theta": theta, "factor": factor}


def _rope_params(hf: dict[str, Any], arch: str) -> tuple[tuple[float, float], float | None]:
    """((full theta, linear factor), sliding theta) from either config.json dialect."""
    params = hf.get("rope_parameters")
    if params and FULL_ATTENTION in params:
        full, sliding = params[FULL_ATTENTION], params.get(SLIDING_ATTENTION)
    else:
        full = params or {
            "rope_theta": hf.get("rope_theta", 10000.0),
            **(hf.get("rope_scaling") or {}),
        }
        sliding = None
        if arch == "gemma3":
            sliding = {"rope_theta": hf.get("rope_local_base_freq", 10000.0)}
    sliding_theta = (
        positive_number(sliding.get("rope_theta", 10000.0), "sliding rope_theta")
        if sliding
        else None
    )
    return _rope_factor(full), sliding_theta


def _rope_factor(rope: dict[str, Any]) -> tuple[float, float]:
    kind = rope.get("rope_type", rope.get("type", "default"))
    theta = positive_number(rope.get("rope_theta", 10000.0), "rope_theta")
    if kind in ("default", None):
        return theta, 1.0
    if kind == "linear":
        return theta, positive_number(rope.get("factor"), "rope_scaling.factor")
    raise ValueError(f"unsupported rope scaling {kind!r} (supported: default, linear)")
