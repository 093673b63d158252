"""Seconds to the first result of topk_expand (compile included) for a few plans, for the lowering file given."""
import importlib.util, sys, time, json
from dataclasses import replace
import torch
from benchmarks.sweep_topk_expand import inputs
from benchmarks.ops.topk_expand import GPU_SIZES

spec = importlib.util.spec_from_file_location("tk", sys.argv[1]); mod = importlib.util.module_from_spec(spec)
sys.modules["tk"] = mod; spec.loader.exec_module(mod)
g = torch.Generator().manual_seed(0)
for batch, vocab, d2t, k, dtype in [(64, 32000, True, 10, torch.bfloat16), (1, 128256, False, 10, torch.bfloat16),
                                    (4, 32000, True, 4, torch.float32), (2, 1000, False, 3, torch.float16)]:
    args = list(inputs(batch, vocab, d2t, replace(GPU_SIZES, k=k), "cuda", g))
    args[0] = args[0].to(dtype)
    torch.cuda.synchronize(); t = time.perf_counter()
    mod.topk_expand_triton(*args); torch.cuda.synchronize()
    print(json.dumps({"file": sys.argv[1], "B": batch, "V": vocab, "k": k, "dtype": str(dtype), "first_call_s": round(time.perf_counter() - t, 2)}), flush=True)
