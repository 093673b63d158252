"""Sweep `topk_expand`'s launch plan at the benchmark shapes on the GPU: how its plan constants were chosen.

    python -m benchmarks.sweep_topk_expand --out DIR [--batch 64] [--vocab 32000]

Every plan (row width, tile, warps, chunks per row) at B in {1, 16, 64}, F = k = 10, bf16 logits over Vd = 32000
(with d2t) and 128256 is first checked against the reference (tokens exact, scores within 1e-5), then timed
replayed from a CUDA graph. One JSON row per plan goes to ``<out>/sweep_topk_expand.jsonl``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch
import triton

from benchmarks.harness import read_bandwidth_gbps, time_graph_ms
from benchmarks.ops.topk_expand import GPU_SIZES, TopkExpandSizes, draft_to_target
from eagle_ops.lowering import topk_expand as lowering
from eagle_ops.reference.topk_expand import topk_expand_reference
from eagle_ops.topk_expand import Expansion

CHUNKS = {1: (8, 16, 32), 16: (1, 2, 4, 8), 64: (1, 2, 4)}


def plans(batch: int) -> Iterator[tuple[int, int, int, int]]:
    """(row bytes, tile, warps, chunks per row), 8 to 64 logits per thread."""
    # Larger tiles put more bytes in flight: at B = 64 over Vd = 32000 the 640 programs are 5 an SM. Rows of 32
    # bytes were slower than rows of one 16-byte vector at B = 64 over both vocabularies (BENCHMARKS.md).
    grid = itertools.product((16,), (1024, 2048, 4096, 8192), (2, 4, 8), CHUNKS.get(batch, (1,)))
    for row_bytes, tile, warps, chunks in grid:
        if 8 <= tile // (32 * warps) <= 64:
            yield row_bytes, tile, warps, chunks


def run_plan(args: tuple, row_bytes: int, tile: int, warps: int, chunks: int) -> Expansion:
    """``topk_expand_triton`` launched with the given plan instead of its own."""
    logits = args[0]
    tiles = triton.cdiv(logits.shape[-1], tile)
    tiles_per_chunk = triton.cdiv(tiles, min(chunks, tiles))
    row = min(tile, max(1, row_bytes // logits.element_size()))
    plan = lowering._Plan(row, tile // row, tiles_per_chunk, triton.cdiv(tiles, tiles_per_chunk))
    with mock.patch.object(lowering, "_plan", lambda *_: plan), mock.patch.object(lowering, "NUM_WARPS", warps):
        return Expansion(*lowering.topk_expand_triton(*args))


def agrees(got: Expansion, want: Expansion) -> bool:
    return torch.equal(got.level_tokens, want.level_tokens) and torch.allclose(
        got.level_scores, want.level_scores, rtol=1e-5, atol=1e-5
    )


def inputs(batch: int, vocab: int, with_d2t: bool, sizes: TopkExpandSizes, device: str, generator) -> tuple:
    logits = (4 * torch.randn(batch, sizes.frontier, vocab, generator=generator)).to(device, torch.bfloat16)
    frontier_scores = (-10 * torch.rand(batch, sizes.frontier, generator=generator)).to(device)
    d2t = draft_to_target(vocab, sizes.target_vocab, generator).to(device) if with_d2t else None
    return logits, frontier_scores, d2t, sizes.k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--batch", type=int, nargs="+", default=GPU_SIZES.batches, help="only these batch sizes")
    parser.add_argument("--vocab", type=int, nargs="+", help="only these draft vocabularies (default: all)")
    parsed = parser.parse_args()
    out = parsed.out
    out.mkdir(parents=True, exist_ok=True)
    bandwidth = read_bandwidth_gbps()
    generator = torch.Generator().manual_seed(0)
    with (out / "sweep_topk_expand.jsonl").open("a") as sink:
        for (vocab, with_d2t), batch in itertools.product(GPU_SIZES.vocabularies, parsed.batch):
            if parsed.vocab and vocab not in parsed.vocab:
                continue
            args = inputs(batch, vocab, with_d2t, GPU_SIZES, "cuda", generator)
            want = Expansion(*topk_expand_reference(*args))
            floor_ms = args[0].nbytes / (bandwidth * 1e9) * 1e3
            for plan in plans(batch):
                ok = agrees(run_plan(args, *plan), want)
                _, ms, _ = time_graph_ms(lambda args=args, plan=plan: run_plan(args, *plan))
                row = dict(zip(("row_bytes", "tile", "warps", "chunks"), plan, strict=True))
                row |= {"B": batch, "Vd": vocab, "ms": round(ms, 5), "x_floor": round(ms / floor_ms, 2), "ok": ok}
                print(json.dumps(row), flush=True)
                sink.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
