"""llama.cpp's own model step on the same GGUF, through llama-cpp-python's low-level API.

Used by `step_bench.py` as the bar for our CPU path: the same three cases (one token, 8 tokens
of one request, 8 requests x 1 token) at the same context, each request its own sequence id in
one llama.cpp context, logits for every row the case asks for. Optional: needs
``llama-cpp-python`` (a source build, ~7 minutes on the 2-core dev machine: see
docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


class LlamaCppStep:
    """One llama.cpp context holding ``num_seqs`` sequences; `step` appends tokens and
    returns the requested rows' logits, `roll_back` drops everything past ``context``."""

    def __init__(self, gguf: Path, threads: int, num_seqs: int, n_ctx: int) -> None:
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        params = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(gguf).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx * num_seqs
        cp.n_batch = cp.n_ubatch = 512
        cp.n_threads = cp.n_threads_batch = threads
        cp.n_seq_max = num_seqs
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.mem = L.llama_get_memory(self.ctx)
        self.vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(512, 0, num_seqs)

    def decode(self, rows: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """rows: (token, position, sequence, wants_logits); returns [wanted rows, vocab]."""
        b = self.batch
        b.n_tokens = len(rows)
        for i, (tok, pos, seq, logits) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        out = [
            np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, i), (self.vocab,)).copy()
            for i, row in enumerate(rows)
            if row[3]
        ]
        return np.stack(out) if out else np.empty((0, self.vocab), np.float32)

    def prefill(self, prompts: list[list[int]]) -> None:
        for seq, ids in enumerate(prompts):
            for start in range(0, len(ids), 512):
                part = ids[start : start + 512]
                self.decode([(t, start + i, seq, False) for i, t in enumerate(part)])

    def case(self, new_ids: list[list[int]], context: int) -> Callable[[], np.ndarray]:
        """A step appending ``new_ids[seq]`` at ``context`` for each listed sequence, with
        logits for every appended row."""
        rows = [
            (tok, context + i, seq, True)
            for seq, ids in enumerate(new_ids)
            for i, tok in enumerate(ids)
        ]
        return lambda: self.decode(rows)

    def roll_back(self, num_seqs: int, context: int) -> None:
        for seq in range(num_seqs):
            self.L.llama_memory_seq_rm(self.mem, seq, context, -1)

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def gguf_weight_bytes(gguf: Path) -> int:
    """Bytes a step reads: every tensor of the file but the embedding table (unless it is
    also the output matrix, i.e. there is no ``output.weight``)."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf)
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    return sum(int(t.n_bytes) for t in reader.tensors if tied or t.name != "token_embd.weight")
