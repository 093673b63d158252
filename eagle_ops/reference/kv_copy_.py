"""Eager definition of `kv_copy_`: gather every source slot, then write each destination slot in place."""

from __future__ import annotations

import torch


def _per_row(positions: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """``[B, n]`` slot positions as a gather/scatter index into dim 4 of ``cache`` (``[L, 2, B, Hkv, S, Dh]``)."""
    layers, _, batch, kv_heads, _, head_dim = cache.shape
    return positions[None, None, :, None, :, None].expand(layers, 2, batch, kv_heads, positions.shape[1], head_dim)


def kv_copy_reference(cache: torch.Tensor, cache_len: torch.Tensor, accept_path: torch.Tensor) -> None:
    """Slot ``cache_len[b] + j`` receives slot ``cache_len[b] + accept_path[b, j]`` where the path entry is >= 0.

    Entries whose source or destination lies outside ``[0, S)`` are skipped.
    """
    batch, path_len = accept_path.shape
    capacity = cache.shape[4]
    destination = cache_len[:, None] + torch.arange(path_len, device=cache.device)
    source = cache_len[:, None] + accept_path
    keep = (accept_path >= 0) & (destination >= 0) & (destination < capacity) & (source >= 0) & (source < capacity)
    moved = cache.gather(4, _per_row(source.clamp(0, capacity - 1), cache))  # every source, before any write
    for j in range(path_len):
        slot = _per_row(destination[:, j : j + 1].clamp(0, capacity - 1), cache)
        # A skipped entry writes its slot's current value back: a clamped slot may be another entry's destination.
        kept = torch.where(keep[:, j].view(batch, 1, 1, 1), moved[:, :, :, :, j : j + 1], cache.gather(4, slot))
        cache.scatter_(4, slot, kept)
