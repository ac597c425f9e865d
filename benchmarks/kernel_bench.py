"""One linear layer's cost by row count: our k-quant kernel against torch's kernels, on the Qwen
2.5-Coder 1.5B's own matrices.

Reproduce (from the repository root; ~1 minute on the quiet 2-core machine)::

    .venv/bin/python benchmarks/kernel_bench.py --threads 2 --out results/kernel_bench.json

For each matrix (taken from the GGUF in the spinserve cache: an MLP up projection (Q4_K,
8960x1536), a down projection (Q6_K, 1536x8960), the attention q projection (Q4_K, 1536x1536)
and the output matrix (Q6_K, 151936x1536)) and each row count, the forms are timed in turn,
``--repeats`` rounds, and each form's fastest round is reported (ms per call; the minimum is the
least disturbed by the shared machine). Forms: ``ours`` (`spinserve.ops.blocks.block_linear`
on the 8-row interleaved layout the loader makes, `BlockWeight.interleaved`), ``ours-rows``
(the same kernel on the GGUF's row-by-row layout),
``torch-int4`` (`aten._weight_int4pack_mm_for_cpu` on the same Q4_K blocks; Q4_K only),
``bf16-rowwise`` (the dequantized matrix in bf16 on torch's per-row kernel, our form for Q6_K
without our kernel), ``bf16-onednn`` (the same on oneDNN: fastest for many rows, not
batch-invariant). Also: each form's time for 8 rows over its time for 1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, GGUFReader

from spinserve.loading import zoo
from spinserve.loading.gguf_file import int4_blocks
from spinserve.ops.blocks import BlockWeight, block_linear
from spinserve.ops.quant import Int4Weight, int4_linear, rowwise_linear

MATRICES = ("blk.0.ffn_up.weight", "blk.1.ffn_down.weight", "blk.0.attn_q.weight", "output.weight")
ROWS = (1, 2, 4, 8, 16)


def forms(tensor) -> dict:
    out_features, in_features = int(tensor.shape[-1]), int(tensor.shape[0])
    raw = np.asarray(tensor.data).view(np.uint8).reshape(out_features, -1)
    weight = BlockWeight(
        torch.from_numpy(raw.copy()), int(tensor.tensor_type), (out_features, in_features)
    )
    dense = weight.dequantize().to(torch.bfloat16)
    interleaved = weight.interleaved()
    result = {
        "ours": lambda x: block_linear(x, interleaved),
        "ours-rows": lambda x: block_linear(x, weight),
        "bf16-rowwise": lambda x: rowwise_linear(x.to(torch.bfloat16), dense),
        "bf16-onednn": lambda x: F.linear(x.to(torch.bfloat16), dense),
    }
    if tensor.tensor_type == GGMLQuantizationType.Q4_K:
        parts = int4_blocks(tensor.data, tensor.tensor_type, out_features)
        q, scale, offset = (torch.from_numpy(np.ascontiguousarray(p)) for p in parts)
        int4 = Int4Weight.from_blocks(q, scale, offset)
        result["torch-int4"] = lambda x: int4_linear(x, int4)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", type=Path, default=Path("results/kernel_bench.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gguf = zoo.resolve_cache_dir() / "gguf" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    reader = GGUFReader(gguf)
    tensors = {t.name: t for t in reader.tensors}
    results = []
    print("| matrix | type | form | " + " | ".join(f"{r} rows" for r in ROWS) + " | 8 / 1 |")
    print("|---|---|---|" + "---:|" * (len(ROWS) + 1))
    for name in MATRICES:
        tensor = tensors[name]
        fns = forms(tensor)
        best = {form: {} for form in fns}
        with torch.inference_mode():
            for rows in ROWS:
                x = torch.randn(rows, int(tensor.shape[0]))
                calls = 1 if name == "output.weight" else 3
                for _ in range(args.repeats):
                    for form, fn in fns.items():
                        start = time.perf_counter()
                        for _ in range(calls):
                            fn(x)
                        ms = (time.perf_counter() - start) / calls * 1e3
                        best[form][rows] = min(best[form].get(rows, ms), ms)
        for form, times in best.items():
            ratio = times[8] / times[1]
            results.append(
                {
                    "matrix": name,
                    "type": tensor.tensor_type.name,
                    "form": form,
                    "ms": times,
                    "ratio_8_to_1": ratio,
                }
            )
            cells = " | ".join(f"{times[r]:.3f}" for r in ROWS)
            print(
                f"| {name} | {tensor.tensor_type.name} | {form} | {cells} | {ratio:.2f} |",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
