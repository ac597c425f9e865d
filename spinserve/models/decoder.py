"""A decoder-only transformer for the llama, qwen2 and gemma3 families."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from spinserve.config.model import ModelConfig
from spinserve.models.embedding import EMBEDDING, QuantizedEmbedding
from spinserve.models.kv_cache import KVCache
from spinserve.models.layers import DecoderLayer, Linear, RMSNorm
from spinserve.ops import native
from spinserve.ops.attention import AttentionMetadata
from spinserve.ops.blocks import BlockWeight
from spinserve.ops.quant import Int4Weight, Int8Weight, QuantizedWeight
from spinserve.ops.rope import RopeTable


class DecoderBody(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # an fp32 table, or a `QuantizedEmbedding` when the weights give the GGUF's blocks
        self.embed_tokens: nn.Embedding | QuantizedEmbedding = dense_embedding(config)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.norm_weight_offset)


def dense_embedding(config: ModelConfig) -> nn.Embedding:
    """The embedding as a table to fill (on the meta device until `Decoder.load_weights`)."""
    embedding = nn.Embedding(config.vocab_size, config.hidden_size, device="meta")
    return embedding.requires_grad_(False)


class Decoder(nn.Module):
    """``forward(input_ids, positions, attn, kv_cache, logits_indices) -> logits``.

    Parameters start on the meta device and are filled by `load_weights`, so a model never
    holds two copies of its weights. ``dtype`` is the activations' and KV cache's dtype;
    ``linear_dtype`` that of dense linear weights (default: ``dtype``). A linear weight given as
    a quantized weight (`Int4Weight`, `Int8Weight`) is kept as it is; so is an embedding given
    as GGUF blocks (`QuantizedEmbedding`: each lookup dequantizes its rows).
    """

    def __init__(
        self,
        config: ModelConfig,
        dtype: torch.dtype = torch.float32,
        linear_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.linear_dtype = linear_dtype or dtype
        self.model = DecoderBody(config)
        # Several rows may take the multi-row bf16 kernel: `_refine_top` makes the argmax exact.
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, batched_ok=True)
        # Run the layers in one call of our kernel (`LayerStack`) when the model allows it;
        # tests turn this off to compare with the layer-by-layer torch path.
        self.fused = True
        self._stack: LayerStack | None = None
        self._stack_built = False  # whether `_stack` is known (None: the torch path)
        self._rope: dict[tuple[float, float], RopeTable] = {}
        for layer in range(config.num_layers):
            key = (config.layer_rope_theta(layer), config.layer_rope_factor(layer))
            if key not in self._rope:
                self._rope[key] = RopeTable(config.head_dim, *key)

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor | QuantizedWeight]]) -> None:
        """Take each named tensor (Hugging Face names) as a parameter, cast to ``self.dtype``
        (linear weights to ``self.linear_dtype``; a quantized weight stays as it is).

        Raises ValueError naming any unknown, missing or misshapen tensor.
        """
        self._stack, self._stack_built = None, False  # built again from the new weights
        self.model.embed_tokens = dense_embedding(self.config)  # until the weights say
        params = dict(self.named_parameters(remove_duplicate=False))
        linears = self.linear_weight_names()
        if self.config.tie_word_embeddings:
            params.pop("lm_head.weight")
        seen: set[str] = set()
        head_blocks = False  # a tied lm_head given as GGUF blocks (its own copy, or the
        # embedding's blocks): multiplied as they are, smaller than the embedding in bf16
        for name, tensor in tensors:
            if name not in params:
                if self.config.tie_word_embeddings and name == "lm_head.weight":
                    head_shape = (self.config.vocab_size, self.config.hidden_size)
                    if isinstance(tensor, BlockWeight) and tensor.shape == head_shape:
                        self.lm_head.set_quantized(tensor)
                        head_blocks = True
                    continue  # else a copy of the embedding: tied below
                raise ValueError(
                    f"unexpected tensor {name!r} for a {self.config.architecture} model"
                )
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(params[name].shape)}"
                )
            if name == EMBEDDING and isinstance(tensor, BlockWeight):
                self.model.embed_tokens = QuantizedEmbedding(tensor, self.dtype)
            elif isinstance(tensor, Int4Weight | Int8Weight | BlockWeight):
                if name not in linears:
                    raise ValueError(f"tensor {name!r} cannot be kept quantized")
                self.get_submodule(name.rpartition(".")[0]).set_quantized(tensor)
            else:
                self._set_param(
                    name, tensor.to(self.linear_dtype if name in linears else self.dtype)
                )
            seen.add(name)
        missing = sorted(set(params) - seen)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
        if self.config.tie_word_embeddings and not head_blocks:
            self._tie_dense_head()

    def _tie_dense_head(self) -> None:
        """A tied lm_head kept dense: the embedding's table itself where the dtypes agree, else
        a copy in the linear dtype (made from the blocks of a `QuantizedEmbedding`)."""
        self.lm_head.quantized = None
        embed = self.model.embed_tokens
        if isinstance(embed, QuantizedEmbedding):
            self._set_param("lm_head.weight", embed.dequantize().to(self.linear_dtype))
        elif self.linear_dtype == embed.weight.dtype:
            self.lm_head.weight = embed.weight
        else:
            self._set_param("lm_head.weight", embed.weight.to(self.linear_dtype))

    def linear_weight_names(self) -> frozenset[str]:
        """Names of the weights that linear layers multiply by (``lm_head.weight`` included)."""
        return frozenset(
            f"{name}.weight" for name, m in self.named_modules() if isinstance(m, Linear)
        )

    def weight_bytes(self) -> int:
        """Bytes of weights a forward reads for one row (embedding lookups aside)."""
        return sum(m.weight_bytes for m in self.modules() if isinstance(m, Linear)) + sum(
            p.nbytes for n, p in self.named_parameters() if n.endswith(("norm.weight", "bias"))
        )

    def _set_param(self, name: str, tensor: torch.Tensor) -> None:
        owner_name, _, leaf = name.rpartition(".")
        owner = self.get_submodule(owner_name)
        setattr(owner, leaf, nn.Parameter(tensor.contiguous(), requires_grad=False))

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens] int64
        positions: torch.Tensor,  # [num_tokens] int64
        attn: AttentionMetadata,
        kv_cache: KVCache,
        logits_indices: torch.Tensor,  # [num_logits] rows of the batch that need logits
    ) -> torch.Tensor:
        """[num_logits, vocab] fp32 logits for the chosen rows."""
        c = self.config
        x = self.model.embed_tokens(input_ids)
        if c.scale_embeddings:
            x = x * torch.tensor(c.embedding_multiplier, dtype=x.dtype)
        tables = {key: table.lookup(positions) for key, table in self._rope.items()}
        stack = self.layer_stack() if attn.full_rows is not None else None
        if stack is not None:
            (cos_sin,) = tables.values()
            x = stack(x, cos_sin, attn, kv_cache)
            return self.compute_logits(x[logits_indices])
        for i, layer in enumerate(self.model.layers):
            cos_sin = tables[(c.layer_rope_theta(i), c.layer_rope_factor(i))]
            x = layer(x, cos_sin, attn, kv_cache.k[i], kv_cache.v[i])
        return self.compute_logits(x[logits_indices])

    def layer_stack(self) -> LayerStack | None:
        """The layers as one call of our kernel, or None where they need the torch path."""
        if not self.fused:
            return None
        if not self._stack_built:
            self._stack, self._stack_built = LayerStack.of(self), True
        return self._stack

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] -> [rows, vocab] fp32, after the final norm and any soft-capping."""
        normed = self.model.norm(hidden)
        logits = self.lm_head(normed).float()
        weight = self.lm_head.weight
        if weight is not None and weight.dtype != torch.float32:
            _refine_top(logits, normed.float(), weight)
        cap = self.config.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


# Logits within this much of a row's maximum are recomputed in full precision (see
# `_refine_top`); bf16 rounding moves a logit of 30 by about 0.1.
REFINE_MARGIN = 1.0


def _refine_top(logits: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor) -> None:
    """Recompute in place, from the fp32 hidden state, the logits near each row's maximum.

    A bf16 lm_head returns bf16 logits (the kernel has no fp32 output), and at a logit of 25
    bf16 steps by 0.125: the top tokens tie or swap where fp32 would tell them apart (a
    SmolLM2 chat answered "L'Étoile" instead of "The capital of France is Paris"). The rows of
    the weight for the few candidates are multiplied in float64, whose products are exact and
    whose sums do not depend on how many candidates a step has, so the result stays
    batch-invariant.
    """
    top = logits.max(dim=-1, keepdim=True).values
    rows, cols = torch.nonzero(logits >= top - REFINE_MARGIN, as_tuple=True)
    exact = (weight[cols].double() * hidden[rows].double()).sum(dim=-1)
    logits[rows, cols] = exact.float()


class LayerStack:
    """All decoder layers in one call of ``csrc/decoder_layers.cpp``: the same arithmetic as
    `DecoderLayer` (norms, projections, rotary, cache writes, row attention, gated MLP) for
    every row of a step, with the small vector operations in C++ instead of ~25 torch calls
    per layer from Python. For models without sandwich or q/k norms, sliding windows or a
    GeGLU, with fp32 activations and every linear in a form the kernel multiplies (GGUF
    blocks, torch int4 or int8, dense fp32, bf16 or fp16); anything else takes the torch
    path.
    """

    def __init__(self, model: Decoder, weights: list[torch.Tensor], kinds: list[int]) -> None:
        c = model.config
        self.weights, self.kinds = weights, kinds
        self.heads, self.kv_heads = c.num_heads, c.num_kv_heads
        self.eps, self.scale = c.rms_norm_eps, c.softmax_scale
        self.op = getattr(torch.ops, native.load()).decoder_layers

    @staticmethod
    def of(model: Decoder) -> LayerStack | None:
        c = model.config
        layers = range(c.num_layers)
        if (
            model.dtype != torch.float32
            or c.sandwich_norm
            or c.qk_norm
            or c.norm_weight_offset
            or c.hidden_act != "silu"
            or any(map(c.is_sliding, layers))
            or len(model._rope) != 1
            or not native.available()
        ):
            return None
        none = torch.empty(0)
        weights: list[torch.Tensor] = []
        kinds: list[int] = []
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            weights += [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
            linears = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
            for linear in linears:
                form = _kernel_form(linear)
                if form is None:
                    return None
                weights += form[1:]
                kinds.append(form[0])
            weights += [none if p.bias is None else p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]
        return LayerStack(model, weights, kinds)

    def __call__(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        attn: AttentionMetadata,
        kv_cache: KVCache,
    ) -> torch.Tensor:
        rows = attn.full_rows
        assert rows is not None
        return self.op(
            x, *cos_sin, kv_cache.k, kv_cache.v, attn.slot_mapping, rows.slots, rows.offsets,
            self.weights, self.kinds, self.heads, self.kv_heads, self.eps, self.scale,
        )  # fmt: skip


# The kinds of linear ``decoder_layers.cpp`` multiplies besides GGUF blocks (whose kind is
# their ggml type number, >= 0): the same numbers as its kInt4, kInt8, kDense, kDenseRowwise.
_INT4, _INT8, _DENSE, _DENSE_ROWWISE = -1, -2, -3, -4


def _kernel_form(linear: Linear) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """(kind, a, b) of a linear's weight for ``decoder_layers``, None for other forms."""
    weight, none = linear.quantized, torch.empty(0)
    if isinstance(weight, BlockWeight):
        return weight.qtype, weight.blocks, none
    if isinstance(weight, Int4Weight):
        return _INT4, weight.packed, weight.scales_zeros
    if isinstance(weight, Int8Weight):
        return _INT8, weight.weight, weight.scales
    if weight is None and linear.weight.dtype == torch.float32:
        return _DENSE, linear.weight, none
    if weight is None and linear.weight.dtype in (torch.bfloat16, torch.float16):
        return _DENSE_ROWWISE, linear.weight, none  # as `rowwise_linear`
    return None
