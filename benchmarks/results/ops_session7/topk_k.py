"""topk_expand at B = 64, F = 10, Vd = 32000 (bf16, d2t) and V = 128256, k in {1, 2, 4, 10}: the k rounds' cost."""
import json
from dataclasses import replace
import torch
from benchmarks.harness import time_graph_ms, read_bandwidth_gbps
from benchmarks.sweep_topk_expand import inputs
from benchmarks.ops.topk_expand import GPU_SIZES
from eagle_ops.lowering.topk_expand import topk_expand_triton

bw = read_bandwidth_gbps()
g = torch.Generator().manual_seed(0)
for vocab, d2t in GPU_SIZES.vocabularies:
    for k in (1, 2, 4, 10):
        args = inputs(64, vocab, d2t, replace(GPU_SIZES, k=k), "cuda", g)
        floor = args[0].nbytes / (bw * 1e9) * 1e3
        ms = time_graph_ms(lambda: topk_expand_triton(*args))[1]
        print(json.dumps({"Vd": vocab, "k": k, "us": round(ms * 1e3, 2), "x_floor": round(ms / floor, 2), "floor_us": round(floor * 1e3, 2)}), flush=True)
