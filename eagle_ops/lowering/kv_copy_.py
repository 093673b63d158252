"""Triton lowering of `kv_copy_`: one program per (layer, K or V, sequence, head) row, all layers in one launch."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def kv_copy_kernel(
    cache_ptr,  # [L, 2, B, Hkv, S, Dh]
    cache_len_ptr,  # [B] i64
    path_ptr,  # [B, P] i64
    batch,
    kv_heads,
    capacity,
    head_dim,
    path_len,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)
    seq = (row // kv_heads) % batch
    j = tl.arange(0, BLOCK_P)
    step = tl.load(path_ptr + seq * path_len + j, mask=j < path_len, other=-1)
    length = tl.load(cache_len_ptr + seq)
    destination = length + j
    source = length + step
    in_cache = (destination >= 0) & (destination < capacity) & (source >= 0) & (source < capacity)
    # A slot copied onto itself (the root, j = 0) needs no traffic; no other entry writes it.
    keep = (step >= 0) & (source != destination) & in_cache
    slots = cache_ptr + row.to(tl.int64) * capacity * head_dim
    for d0 in range(0, head_dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        copy = keep[:, None] & (d < head_dim)[None, :]
        values = tl.load(slots + source[:, None] * head_dim + d[None, :], mask=copy)
        # Every source is read before any slot is written: a source may be another entry's destination, and the
        # thread that writes it need not be the one that reads it.
        tl.debug_barrier()
        tl.store(slots + destination[:, None] * head_dim + d[None, :], values, mask=copy)


def _block_sizes(path_len: int, head_dim: int) -> tuple[int, int]:
    """(path entries, head-dim columns) of one program's tile; the head dim is walked in chunks past 128."""
    return triton.next_power_of_2(path_len), min(triton.next_power_of_2(head_dim), 128)


def kv_copy_triton(cache: torch.Tensor, cache_len: torch.Tensor, accept_path: torch.Tensor) -> None:
    """Launch :func:`kv_copy_kernel` over every (layer, K or V, sequence, head) row of ``cache``, in place."""
    layers, _, batch, kv_heads, capacity, head_dim = cache.shape
    path_len = accept_path.shape[1]
    block_p, block_d = _block_sizes(path_len, head_dim)
    kv_copy_kernel[(layers * 2 * batch * kv_heads,)](
        cache_ptr=cache,
        cache_len_ptr=cache_len,
        path_ptr=accept_path,
        batch=batch,
        kv_heads=kv_heads,
        capacity=capacity,
        head_dim=head_dim,
        path_len=path_len,
        BLOCK_P=block_p,
        BLOCK_D=block_d,
    )
