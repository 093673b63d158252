"""kv_copy_ benchmark points: an 8B-Llama-shaped bf16 cache (L = 32, Hkv = 8, Dh = 128), S in {2048, 8192},
B in {1, 16, 64}, every sequence accepting a full path of P = 9 nodes drawn from a 60-node tree, near S / 2."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.harness import Case
from eagle_ops.lowering.kv_copy_ import kv_copy_triton
from eagle_ops.reference.kv_copy_ import kv_copy_reference


@dataclass(frozen=True)
class KvCopySizes:
    layers: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    capacities: tuple[int, ...] = (2048, 8192)
    batches: tuple[int, ...] = (1, 16, 64)
    path_len: int = 9
    tree_size: int = 60
    dtype: torch.dtype = torch.bfloat16


GPU_SIZES = KvCopySizes()


def full_paths(batch: int, sizes: KvCopySizes, generator: torch.Generator) -> torch.Tensor:
    """``[batch, P]`` accepted paths with nothing rejected: the root, then P - 1 increasing tree indices."""
    drafts = torch.rand(batch, sizes.tree_size - 1, generator=generator).argsort(1)[:, : sizes.path_len - 1] + 1
    return torch.cat([torch.zeros(batch, 1, dtype=torch.int64), drafts.sort(1).values], 1)


def _case(cache: torch.Tensor, cache_len: torch.Tensor, accept_path: torch.Tensor, tree_size: int) -> Case:
    layers, _, batch, kv_heads, capacity, head_dim = cache.shape
    # Every slot either method may read or write; the check restores it so that the timed calls see fresh data.
    window = cache[:, :, :, :, int(cache_len.min()) : int(cache_len.max()) + tree_size]

    def check() -> None:
        saved = window.clone()
        kv_copy_reference(cache, cache_len, accept_path)
        want = window.clone()
        window.copy_(saved)
        kv_copy_triton(cache, cache_len, accept_path)
        agree = torch.equal(window, want)
        window.copy_(saved)
        assert agree, "kv_copy_: triton != reference"

    # The root is copied onto itself: only the other accepted slots move, each read once and written once.
    entry = torch.arange(accept_path.shape[1], device=accept_path.device)
    moved = int(((accept_path >= 0) & (accept_path != entry)).sum())
    return Case(
        op="kv_copy_",
        label=f"B={batch} S={capacity} L={layers} Hkv={kv_heads} Dh={head_dim}",
        # Timed in place on the same cache again and again: each call moves the same slots as the first did, and
        # restoring a cache of up to 69 GB between calls would cost far more than the op.
        candidates={
            "reference": lambda: kv_copy_reference(cache, cache_len, accept_path),
            "triton": lambda: kv_copy_triton(cache, cache_len, accept_path),
        },
        check=check,
        bytes_min=2 * moved * layers * 2 * kv_heads * head_dim * cache.element_size(),
        params={"B": batch, "S": capacity, "L": layers, "Hkv": kv_heads, "Dh": head_dim, "P": accept_path.shape[1]},
    )


def cases(device: torch.device | str, sizes: KvCopySizes = GPU_SIZES) -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    row = sizes.layers * 2 * sizes.kv_heads * sizes.head_dim  # elements of one slot of one sequence, all layers
    # One buffer sized for the largest case; every case views its start, so no two cases' caches coexist.
    buffer = torch.empty(row * max(sizes.batches) * max(sizes.capacities), dtype=sizes.dtype, device=device)
    buffer.normal_()
    result = []
    for capacity in sizes.capacities:
        for batch in sizes.batches:
            shape = (sizes.layers, 2, batch, sizes.kv_heads, capacity, sizes.head_dim)
            cache = buffer[: row * batch * capacity].view(shape)
            spread = min(64, capacity // 8)
            cache_len = capacity // 2 + torch.randint(-spread, spread + 1, (batch,), generator=generator)
            accept_path = full_paths(batch, sizes, generator)
            result.append(_case(cache, cache_len.to(device), accept_path.to(device), sizes.tree_size))
    return result
