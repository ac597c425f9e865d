"""The weights a `ModelConfig` implies, by Hugging Face name, with their shapes.

Files are checked against this table before a model is built, so a tensor that does not fit
its config is refused by name, never discovered midway through a load. A test keeps it equal
to what `spinserve.models.Decoder.load_weights` takes.
"""

from __future__ import annotations

from spinserve.config.model import ModelConfig


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Hugging Face name -> shape of every weight a model of ``config`` loads (no
    ``lm_head.weight`` when the embeddings are tied)."""
    c = config
    hidden, q_rows, kv_rows = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    layer: dict[str, tuple[int, ...]] = {
        "self_attn.q_proj.weight": (q_rows, hidden),
        "self_attn.k_proj.weight": (kv_rows, hidden),
        "self_attn.v_proj.weight": (kv_rows, hidden),
        "self_attn.o_proj.weight": (hidden, q_rows),
        "mlp.gate_proj.weight": (c.intermediate_size, hidden),
        "mlp.up_proj.weight": (c.intermediate_size, hidden),
        "mlp.down_proj.weight": (hidden, c.intermediate_size),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
    }
    if c.attention_bias:
        layer |= {
            "self_attn.q_proj.bias": (q_rows,),
            "self_attn.k_proj.bias": (kv_rows,),
            "self_attn.v_proj.bias": (kv_rows,),
        }
    if c.qk_norm:
        layer |= {
            "self_attn.q_norm.weight": (c.head_dim,),
            "self_attn.k_norm.weight": (c.head_dim,),
        }
    if c.sandwich_norm:
        layer |= {
            "pre_feedforward_layernorm.weight": (hidden,),
            "post_feedforward_layernorm.weight": (hidden,),
        }
    shapes = {"model.embed_tokens.weight": (c.vocab_size, hidden), "model.norm.weight": (hidden,)}
    for i in range(c.num_layers):
        shapes |= {f"model.layers.{i}.{name}": shape for name, shape in layer.items()}
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, hidden)
    return shapes
