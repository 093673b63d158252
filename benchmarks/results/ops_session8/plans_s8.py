"""topk_expand at B = 64: one, two or four chunks a row (more programs than fit at once, so that some stream while
others rank), tiles 2048 / 4096, 4 warps; each plan checked against the reference first."""
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
    args = inputs(64, vocab, d2t, GPU_SIZES, "cuda", g)
    want = Expansion(*topk_expand_reference(*args))
    floor_ms = args[0].nbytes / (bw * 1e9) * 1e3
    for tile in (4096, 2048):
        for chunks in (1, 2, 4):
            ok = agrees(run_plan(args, 16, tile, 4, chunks), want)
            ms = time_graph_ms(lambda: run_plan(args, 16, tile, 4, chunks))[1]
            print(json.dumps({"Vd": vocab, "B": 64, "tile": tile, "chunks": chunks, "us": round(ms * 1e3, 2),
                              "x_floor": round(ms / floor_ms, 2), "ok": ok}), flush=True)
