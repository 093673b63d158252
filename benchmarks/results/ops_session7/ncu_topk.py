"""Run topk_expand (B=64, bf16) three times at the vocabulary given, for ncu."""
import sys
import torch
from benchmarks.sweep_topk_expand import inputs
from benchmarks.ops.topk_expand import GPU_SIZES
from eagle_ops.lowering.topk_expand import topk_expand_triton

vocab = int(sys.argv[1])
args = inputs(64, vocab, vocab == 32000, GPU_SIZES, "cuda", torch.Generator().manual_seed(0))
for _ in range(3):
    topk_expand_triton(*args)
torch.cuda.synchronize()
