"""topk_expand at B = 64 (and 16), one chunk a row: tiles 2048 / 4096 / 8192 x 4 / 8 warps, after the int32 keys and
the bitonic rankings (session 7). Each plan checked against the reference first."""
import json
import torch
from benchmarks.harness import read_bandwidth_gbps, time_graph_ms
from benchmarks.ops.topk_expand import GPU_SIZES
from benchmarks.sweep_topk_expand import inputs, run_plan, agrees
from eagle_ops.reference.topk_expand import topk_expand_reference
from eagle_ops.topk_expand import Expansion

bw = read_bandwidth_gbps()
g = torch.Generator().manual_seed(0)
for vocab, d2t in GPU_SIZES.vocabularies:
    for batch, chunks in ((64, 1), (16, 2)):
        args = inputs(batch, vocab, d2t, GPU_SIZES, "cuda", g)
        want = Expansion(*topk_expand_reference(*args))
        floor_ms = args[0].nbytes / (bw * 1e9) * 1e3
        for tile, warps in ((2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 4), (8192, 8)):
            ok = agrees(run_plan(args, 16, tile, warps, chunks), want)
            ms = time_graph_ms(lambda: run_plan(args, 16, tile, warps, chunks))[1]
            print(json.dumps({"Vd": vocab, "B": batch, "tile": tile, "warps": warps, "chunks": chunks, "us": round(ms * 1e3, 2), "x_floor": round(ms / floor_ms, 2), "ok": ok}), flush=True)
