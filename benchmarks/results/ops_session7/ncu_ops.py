"""Run topk_expand (B=64, Vd=32000, bf16, d2t) and tree_attention (B=1, 8192 cached, 8B shape) 3 times each, for ncu."""
import sys
import torch
from benchmarks.sweep_topk_expand import inputs
from benchmarks.ops.topk_expand import GPU_SIZES
from benchmarks.ops.tree_attention import random_tree_masks
from eagle_ops.lowering.topk_expand import topk_expand_triton
from eagle_ops.lowering.tree_attention import tree_attention_triton

which = sys.argv[1]
g = torch.Generator().manual_seed(0)
if which == "topk":
    args = inputs(64, 32000, True, GPU_SIZES, "cuda", g)
    for _ in range(3):
        topk_expand_triton(*args)
else:
    B, Hq, Hkv, Dh, T, L = 1, 32, 8, 128, 60, 8192
    S = L + 64
    q = torch.randn(B, Hq, T, Dh, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(B, Hkv, S, Dh, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(B, Hkv, S, Dh, dtype=torch.bfloat16, device="cuda")
    cl = torch.full((B,), L, dtype=torch.int64, device="cuda")
    m = random_tree_masks(B, T, g).cuda()
    for _ in range(3):
        tree_attention_triton(q, k, v, cl, m, Dh ** -0.5)
torch.cuda.synchronize()
