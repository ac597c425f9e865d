"""An embedding kept in its GGUF blocks looks up exactly the rows of the table dequantized in
full (both block layouts, every type our kernels keep), and a model loaded from a GGUF keeps
its embedding so and computes the same logits, bit for bit, as with the fp32 table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quantize
from tiny_models import KQUANTS, VOCAB_SIZE, quantize_k, write_zoo_folder
from torch import nn

from spinserve.config.engine import RuntimeConfig
from spinserve.loading import zoo
from spinserve.loading.loader import load
from spinserve.models.decoder import Decoder
from spinserve.models.embedding import QuantizedEmbedding, byte_map
from spinserve.ops import interleave
from spinserve.ops.blocks import BlockWeight, kernels_available
from spinserve.runtime.runner import ModelRunner
from spinserve.types.batch import SeqChunk, StepBatch

Q = GGMLQuantizationType
TYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q6_K]


def table_in_blocks(qtype: GGMLQuantizationType, hidden: int = 512) -> BlockWeight:
    data = np.random.default_rng(int(qtype)).standard_normal((VOCAB_SIZE, hidden))
    data = data.astype(np.float32)
    raw = quantize_k(data, qtype) if qtype in KQUANTS else quantize(data, qtype)
    return BlockWeight(torch.from_numpy(raw), int(qtype), (VOCAB_SIZE, hidden))


@pytest.mark.parametrize("layout", ["as stored", "interleaved"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_lookups_are_the_rows_of_the_table_dequantized_in_full(qtype, layout):
    weight = table_in_blocks(qtype)
    table = weight.dequantize()  # [vocab, hidden] by gguf's dequantizer, all rows at once
    if layout == "interleaved":
        weight = weight.interleaved()
        assert weight.qtype == interleave.INTERLEAVED[qtype]
    embedding = QuantizedEmbedding(weight, torch.float32)
    # first and last rows, a repeat, neighbours in one group of 8 and in the next
    ids = torch.tensor([0, VOCAB_SIZE - 1, 5, 5, 7, 8, 9, 100])
    assert torch.equal(embedding(ids), table[ids])
    assert torch.equal(embedding(ids[2:3]), table[5:6])  # a decode step's one row
    assert torch.equal(embedding(torch.arange(VOCAB_SIZE)), table)
    assert torch.equal(embedding(ids.view(2, 4)), table[ids.view(2, 4)])
    assert embedding(ids[:0]).shape == (0, 512)
    in_bf16 = QuantizedEmbedding(weight, torch.bfloat16)(ids)
    assert torch.equal(in_bf16, table[ids].bfloat16())


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_only_a_layout_that_moves_whole_bytes_is_read_through_a_byte_map(qtype):
    interleaved = interleave.INTERLEAVED[qtype]
    assert (byte_map(interleaved, 512) is not None) == (qtype == Q.Q8_0)
    assert byte_map(int(qtype), 512) is None  # rows as stored: read directly


def test_a_token_outside_the_vocabulary_is_refused():
    embedding = QuantizedEmbedding(table_in_blocks(Q.Q8_0), torch.float32)
    for bad in (VOCAB_SIZE, -1):
        with pytest.raises(IndexError, match="token id out of range"):
            embedding(torch.tensor([3, bad]))


def run_greedy(model: Decoder, ids: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    """Prefill ``ids``, then ``steps`` greedy decode steps: the tokens and every logit row."""
    runner = ModelRunner(model, num_blocks=16, block_size=16)
    blocks = list(range(16))
    rows = [runner.execute(StepBatch([SeqChunk("r", ids, 0, blocks, len(ids))]))]
    out: list[int] = []
    for _ in range(steps):
        out.append(int(rows[-1][-1].argmax()))
        chunk = SeqChunk("r", [out[-1]], len(ids) + len(out) - 1, blocks, 1)
        rows.append(runner.execute(StepBatch([chunk])))
    return out, torch.cat(rows)


def with_fp32_table(model: Decoder) -> Decoder:
    """``model`` looking up its embedding in the table dequantized in full, as before."""
    table = model.model.embed_tokens.dequantize()
    model.model.embed_tokens = nn.Embedding.from_pretrained(table, freeze=True)
    return model


def assert_same_outputs_as_with_the_fp32_table(model: Decoder, ids: list[int]) -> None:
    tokens, logits = run_greedy(model, ids, steps=6)
    dense_tokens, dense_logits = run_greedy(with_fp32_table(model), ids, steps=6)
    assert dense_tokens == tokens
    assert torch.equal(dense_logits, logits)


@pytest.mark.parametrize("quant", [Q.Q8_0, Q.Q4_K], ids=lambda q: q.name)
def test_a_gguf_model_keeps_its_embedding_in_blocks_with_the_same_outputs(arch, quant, tmp_path):
    """gemma3's lm_head is tied: where our kernels multiply it, it shares the blocks."""
    folder = write_zoo_folder(arch, tmp_path, quant)
    model = load(str(folder)).model
    embedding = model.model.embed_tokens
    assert isinstance(embedding, QuantizedEmbedding)
    shared = model.config.tie_word_embeddings and kernels_available()
    assert (embedding.table is model.lm_head.quantized) == shared
    if not shared:
        assert embedding.table.qtype == int(quant)  # rows as stored: the fastest lookups
    reference = load(str(folder), RuntimeConfig(weights="float32")).model
    assert isinstance(reference.model.embed_tokens, nn.Embedding)
    assert torch.equal(reference.model.embed_tokens.weight, embedding.dequantize())
    assert_same_outputs_as_with_the_fp32_table(model, [256, *range(40, 60)])


def test_a_tied_head_kept_dense_is_the_table_in_bfloat16(tmp_path):
    folder = write_zoo_folder("gemma3", tmp_path, Q.Q4_1)
    model = load(str(folder), RuntimeConfig(weights="int4")).model
    embedding = model.model.embed_tokens
    assert isinstance(embedding, QuantizedEmbedding) and model.lm_head.quantized is None
    assert torch.equal(model.lm_head.weight, embedding.dequantize().bfloat16())


@pytest.mark.real_model
def test_smollm2_keeps_the_same_logits_and_greedy_tokens():
    cache = zoo.resolve_cache_dir()
    zoo.fetch("smollm2-135m-instruct", cache)
    loaded = load(str(zoo.gguf_path("smollm2-135m-instruct", cache)))
    assert isinstance(loaded.model.model.embed_tokens, QuantizedEmbedding)
    ids = loaded.tokenizer.encode("The capital of France is")
    assert_same_outputs_as_with_the_fp32_table(loaded.model, ids)
