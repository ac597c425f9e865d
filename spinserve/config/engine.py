"""Engine, scheduler and KV cache limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from spinserve.config.model import KV_CACHE_DTYPES
from spinserve.config.selection import SelectionConfig
from spinserve.config.speculative import SpeculativeConfig


@dataclass(frozen=True)
class CacheConfig:
    """The KV cache: a pool of fixed-size blocks shared by all running requests.

    The pool is reserved (not touched) up front; memory is committed as blocks fill.
    ``prefix_caching``: full blocks outlive their request, and a request whose prompt starts
    with blocks already in the pool (an earlier turn of its conversation, a shared document
    or system prompt) takes them instead of computing them (`spinserve.runtime.block_manager`).
    """

    block_size: int = 16
    kv_cache_gib: float = 1.0
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.kv_cache_gib <= 0:
            raise ValueError(f"kv_cache_gib must be positive, got {self.kv_cache_gib}")

    def num_blocks(self, bytes_per_token: int) -> int:
        return int(self.kv_cache_gib * 2**30) // (bytes_per_token * self.block_size)


@dataclass(frozen=True)
class SchedulerConfig:
    """How much work one step may do.

    ``max_num_batched_tokens`` bounds the tokens of one forward: long prompts are prefilled in
    chunks of at most this size, interleaved with the decodes of running requests.
    """

    max_num_seqs: int = 16
    max_num_batched_tokens: int = 256
    max_model_len: int | None = None  # None: the model's own context length

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")


WEIGHT_FORMS = ("auto", "int4", "int8", "bfloat16", "float32")


@dataclass(frozen=True)
class RuntimeConfig:
    """How the model runs: activation dtype, the form linear weights are kept in, CPU threads
    (0 = torch's default).

    ``weights`` (the target's): ``auto`` keeps a GGUF model's quantized blocks (Q4_K, Q6_K,
    Q8_0, Q5_0, Q4_0, Q4_1) as they are for our kernels (`spinserve.ops.blocks`; where they
    cannot be built: 4-bit blocks on torch's int4 kernel, the rest in bfloat16), other
    quantized linear weights in bfloat16 (the fast CPU path), and a model without a GGUF as
    stored; ``int4`` puts every
    4-bit block on torch's int4 kernel (no kernel of ours) and fails without a GGUF;
    ``bfloat16``/``float32`` dequantize every linear weight to that dtype (``float32`` is the
    reference); ``int8`` is ``auto`` with the non-4-bit linear weights re-quantized to
    per-row int8 (faster, not exact).
    ``drafter_weights``: the same for model drafters; ``int8`` by default, since a drafter's
    numerics only move its acceptance, never the output.
    ``kv_cache_dtype``: the target's cached keys and values: ``auto`` (the activation dtype:
    float32, exact) or ``float16`` (half the memory and half the bytes attention reads per
    step; the keys and values rounded to float16, llama.cpp's default).
    """

    dtype: str = "float32"
    weights: str = "auto"
    drafter_weights: str = "int8"
    kv_cache_dtype: str = "auto"
    num_threads: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        for name in ("weights", "drafter_weights"):
            if getattr(self, name) not in WEIGHT_FORMS:
                raise ValueError(
                    f"{name} must be one of {', '.join(WEIGHT_FORMS)}, got {getattr(self, name)!r}"
                )
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                f"got {self.kv_cache_dtype!r}"
            )
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {self.num_threads}")

    def kv_dtype(self) -> str:
        """The KV cache's dtype name (``auto``: the activation dtype)."""
        return self.dtype if self.kv_cache_dtype == "auto" else self.kv_cache_dtype


@dataclass(frozen=True)
class EngineConfig:
    """Everything an engine needs besides its model."""

    scheduler: SchedulerConfig = SchedulerConfig()
    cache: CacheConfig = CacheConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
