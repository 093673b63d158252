"""Eager reference of tree_attention: the definition of which keys a query sees and what it outputs."""

from __future__ import annotations

import torch


def key_window(cache_len: torch.Tensor, tree_len: int, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence, the prefix length and the end of the readable keys, both within ``[0, capacity]``.

    ``cache_len < 0`` counts as 0 and tree slots at or past ``capacity`` do not exist; a ``cache_len`` past the
    capacity makes every slot prefix.
    """
    prefix_len = cache_len.clamp(0, capacity)
    return prefix_len, (prefix_len + tree_len).clamp_max(capacity)


def visible_keys(cache_len: torch.Tensor, tree_mask: torch.Tensor, capacity: int) -> torch.Tensor:
    """``[B, Tq, S]`` bool: query i of sequence b sees cache slot p.

    Slot p is visible when ``p < cache_len[b]`` (the committed prefix) or when ``p = cache_len[b] + j`` with
    ``tree_mask[b, i, j]`` (the tree tokens the query may attend to).
    """
    batch, queries, tree_len = tree_mask.shape
    prefix_len, _ = key_window(cache_len, tree_len, capacity)
    slots = torch.arange(capacity, device=cache_len.device)
    in_prefix = slots < prefix_len[:, None]
    tree_slot = slots - prefix_len[:, None]
    in_tree = (tree_slot >= 0) & (tree_slot < tree_len)
    tree_index = tree_slot.clamp(0, tree_len - 1)[:, None, :].expand(batch, queries, capacity)
    tree_visible = torch.gather(tree_mask, 2, tree_index) & in_tree[:, None, :]
    return in_prefix[:, None, :] | tree_visible


def tree_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Softmax attention over the visible cache slots, in float32 at least; a query that sees nothing gets zeros.

    Slots at or past ``cache_len + Tk`` are never used, whatever they hold. Computes in the dtype of ``q``
    promoted to float32, so float64 inputs give a float64 result (the tests' exact baseline).
    """
    batch, q_heads, queries, head_dim = q.shape
    kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    compute = torch.promote_types(q.dtype, torch.float32)

    visible = visible_keys(cache_len, tree_mask, capacity)[:, None, None]  # [B, 1, 1, Tq, S]
    _, key_end = key_window(cache_len, tree_mask.shape[2], capacity)
    readable = torch.arange(capacity, device=cache_len.device) < key_end[:, None]  # [B, S]
    values = torch.where(readable[:, None, :, None], v_cache.to(compute), 0.0)

    # The G query heads sharing a kv head attend to it together: [B, Hkv, G*Tq, Dh] against [B, Hkv, S, Dh].
    grouped_q = q.to(compute).reshape(batch, kv_heads, group * queries, head_dim)
    scores = (grouped_q @ k_cache.to(compute).transpose(-1, -2)) * scale
    scores = scores.view(batch, kv_heads, group, queries, capacity).masked_fill(~visible, float("-inf"))
    sees_any = visible.any(-1, keepdim=True)
    probs = torch.where(sees_any, torch.softmax(scores, dim=-1), 0.0)
    out = probs.view(batch, kv_heads, group * queries, capacity) @ values
    return out.view(batch, q_heads, queries, head_dim).to(q.dtype)
