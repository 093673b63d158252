"""Time topk_expand lowering variants (files) at B in {1, 16, 64}, both vocabularies, one process, graph-replayed."""
import sys, json, itertools
from pathlib import Path
import torch
from benchmarks.compare_revisions import load_lowering
from benchmarks.harness import time_graph_ms, read_bandwidth_gbps
from benchmarks.sweep_topk_expand import inputs
from benchmarks.ops.topk_expand import GPU_SIZES
from eagle_ops.lowering import topk_expand as work
from eagle_ops.reference.topk_expand import topk_expand_reference

variants = {"work": work} | {Path(p).stem: load_lowering(Path(p), "topk_expand") for p in sys.argv[1:]}
bw = read_bandwidth_gbps()
g = torch.Generator().manual_seed(0)
for (vocab, d2t), batch in itertools.product(GPU_SIZES.vocabularies, (1, 16, 64)):
    args = inputs(batch, vocab, d2t, GPU_SIZES, "cuda", g)
    want = topk_expand_reference(*args)
    floor = args[0].nbytes / (bw * 1e9) * 1e3
    row = {"B": batch, "Vd": vocab}
    for name, mod in variants.items():
        got = mod.topk_expand_triton(*args)
        ok = torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
        ms = time_graph_ms(lambda m=mod: m.topk_expand_triton(*args))[1]
        row[name] = f"{ms*1e3:.1f}us {ms/floor:.2f}x{'' if ok else ' WRONG'}"
    print(json.dumps(row), flush=True)
