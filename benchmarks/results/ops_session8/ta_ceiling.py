"""What a byte-floor target of 1.5x at B = 1, 8192 cached tokens asks of tree_attention on this stack: its own time
against torch's best attention kernels on the same shapes without a tree mask (flash, cuDNN, with GQA) and against
the two GEMMs alone (cuBLAS, no softmax). All graph-replayed, one run."""
import json
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from benchmarks.harness import read_bandwidth_gbps, time_graph_ms
from benchmarks.ops.tree_attention import random_tree_masks
from eagle_ops.lowering.tree_attention import tree_attention_triton

bw = read_bandwidth_gbps()
g = torch.Generator().manual_seed(0)
B, Hq, Hkv, Dh, T = 1, 32, 8, 128, 60
for L in (8192, 2048):
    S = L + 64
    q = torch.randn(B, Hq, T, Dh, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(B, Hkv, S, Dh, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(B, Hkv, S, Dh, dtype=torch.bfloat16, device="cuda")
    cl = torch.full((B,), L, dtype=torch.int64, device="cuda")
    m = random_tree_masks(B, T, g).cuda()
    floor_ms = 2 * k[:, :, : L + T].nbytes / (bw * 1e9) * 1e3
    rows = {"ours": lambda: tree_attention_triton(q, k, v, cl, m, Dh**-0.5)}
    ks, vs = k[:, :, : L + T], v[:, :, : L + T]
    for name, backend in (("flash_gqa", SDPBackend.FLASH_ATTENTION), ("cudnn_gqa", SDPBackend.CUDNN_ATTENTION),
                          ("efficient_gqa", SDPBackend.EFFICIENT_ATTENTION)):
        def run(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, ks, vs, enable_gqa=True)
        rows[name] = run
    qg = q.view(B * Hkv, Hq // Hkv * T, Dh)
    kt = ks.reshape(B * Hkv, L + T, Dh).transpose(1, 2)
    p = torch.randn(B * Hkv, Hq // Hkv * T, L + T, dtype=torch.bfloat16, device="cuda")
    vv = vs.reshape(B * Hkv, L + T, Dh)
    rows["two_gemms_cublas"] = lambda: (torch.bmm(qg, kt), torch.bmm(p, vv))
    flops = 4 * B * Hq * T * (L + T) * Dh
    for name, fn in rows.items():
        try:
            ms = time_graph_ms(fn)[1]
        except Exception as error:  # a backend that does not take these shapes
            print(json.dumps({"cache": L, "kernel": name, "error": str(error)[:160]}), flush=True)
            continue
        print(json.dumps({"cache": L, "kernel": name, "us": round(ms * 1e3, 2), "x_floor": round(ms / floor_ms, 2),
                          "tflops": round(flops / ms / 1e9, 1), "floor_us": round(floor_ms * 1e3, 2)}), flush=True)
