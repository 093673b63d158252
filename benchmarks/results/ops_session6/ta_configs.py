"""tree_attention launch plans at the 8B shape (Hq 32, Hkv 8, Dh 128, bf16, T = 60), B = 1, 2048 and 8192 cached."""
import json
from unittest import mock
import torch
from benchmarks.harness import time_graph_ms, read_bandwidth_gbps
from benchmarks.ops.tree_attention import random_tree_masks
import eagle_ops.lowering.tree_attention as ta
from eagle_ops.reference.tree_attention import tree_attention_reference

C = ta._LaunchConfig
# (block_m, block_n, block_d, num_splits, num_warps, num_stages, min_split_keys)
plans = {
    "shipped": None,
    "m64 n64 s3 x8": C(64, 64, 128, 8, 4, 3, 512),
    "m64 n64 s2 x8": C(64, 64, 128, 8, 4, 2, 512),
    "m64 n64 s4 x4": C(64, 64, 128, 4, 4, 4, 512),
    "m64 n32 s4 x8": C(64, 32, 128, 8, 4, 4, 512),
    "m128 n64 w8 s3 x8": C(128, 64, 128, 8, 8, 3, 512),
    "m128 n128 w8 s2 x8": C(128, 128, 128, 8, 8, 2, 512),
    "m128 n64 w8 s2 x16": C(128, 64, 128, 16, 8, 2, 512),
    "m256 n64 w16 s3 x16": C(256, 64, 128, 16, 16, 3, 512),
    "m64 n128 w8 s3 x4": C(64, 128, 128, 4, 8, 3, 512),
}
bw = read_bandwidth_gbps()
g = torch.Generator().manual_seed(0)
for length in (8192, 2048):
    B, Hq, Hkv, Dh, T = 1, 32, 8, 128, 60
    S = length + 64
    q = torch.randn(B, Hq, T, Dh, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(B, Hkv, S, Dh, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    cl = torch.full((B,), length, dtype=torch.int64, device="cuda")
    m = random_tree_masks(B, T, g).cuda()
    args = (q, k, v, cl, m, Dh**-0.5)
    want = tree_attention_reference(*args).double()
    floor_ms = 2 * B * Hkv * (length + T) * Dh * 2 / (bw * 1e9) * 1e3
    for name, plan in plans.items():
        try:
            with mock.patch.object(ta, "_launch_config", (lambda *_, p=plan: p) if plan else ta._launch_config):
                got = ta.tree_attention_triton(*args)
                err = float((got.double() - want).norm() / want.norm())
                ms = time_graph_ms(lambda: ta.tree_attention_triton(*args))[1]
            print(json.dumps({"len": length, "plan": name, "us": round(ms * 1e3, 2), "x_floor": round(ms / floor_ms, 2), "err": round(err, 5)}), flush=True)
        except Exception as e:  # noqa: BLE001
            print(json.dumps({"len": length, "plan": name, "error": repr(e)[:200]}), flush=True)
