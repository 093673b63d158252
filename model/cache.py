"""The static KV cache and the attention function that writes to it.

One buffer holds the keys and values of every layer, ``[L, 2, B, Hkv, S, Dh]``, allocated once for the largest
batch; a run over ``b`` sequences uses a contiguous view of its first ``b`` rows' worth of memory, so the ops see
a contiguous ``[L, 2, b, Hkv, S, Dh]`` cache. Per-sequence lengths (``cache_len``) live with the model, shared by
the target and the draft caches.

The target reaches :func:`cached_attention` through ``transformers``' public ``AttentionInterface``: the model
runs with ``attn_implementation=ATTENTION_NAME`` and gets the cache, the lengths and the tree mask as extra
keyword arguments of its forward, which ``transformers`` hands to every attention call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

import eagle_ops

ATTENTION_NAME = "eagle_ops_tree"


class KVCache(nn.Module):
    """``layers`` layers of keys and values for up to ``max_batch_size`` sequences of ``capacity`` slots."""

    def __init__(
        self,
        layers: int,
        max_batch_size: int,
        kv_heads: int,
        capacity: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        super().__init__()
        self.shape = (layers, 2, max_batch_size, kv_heads, capacity, head_dim)
        numel = layers * 2 * max_batch_size * kv_heads * capacity * head_dim
        self.register_buffer("storage", torch.zeros(numel, dtype=dtype, device=device), persistent=False)

    def view(self, batch: int) -> torch.Tensor:
        """The cache of the first ``batch`` sequences, ``[L, 2, batch, Hkv, S, Dh]``, contiguous."""
        layers, _, _, kv_heads, capacity, head_dim = self.shape
        return self.storage[: layers * 2 * batch * kv_heads * capacity * head_dim].view(
            layers, 2, batch, kv_heads, capacity, head_dim
        )


def attend(
    layer_kv: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor | None,
    scale: float,
    offset: int = 0,
) -> torch.Tensor:
    """Write ``k, v`` (``[B, Hkv, N, Dh]``) to slots ``cache_len + offset + i`` of ``layer_kv`` and attend.

    With a ``tree_mask`` (``[B, N, offset + N]``) the queries see the committed prefix and the masked slots from
    ``cache_len`` on (``eagle_ops.tree_attention``). Without one the batch is a prefill from an empty cache
    (``cache_len == 0``): plain causal attention over the N new tokens. Returns ``[B, Hq, N, Dh]``.
    """
    _, batch, kv_heads, capacity, head_dim = layer_kv.shape
    n = k.shape[2]
    slots = cache_len[:, None] + offset + torch.arange(n, device=k.device)
    # A finished sequence keeps running with its cache full; its junk writes land on its own last slot.
    index = slots.clamp_max(capacity - 1)[:, None, :, None].expand(batch, kv_heads, n, head_dim)
    layer_kv[0].scatter_(2, index, k)
    layer_kv[1].scatter_(2, index, v)
    if tree_mask is None:
        group = q.shape[1] // kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return eagle_ops.tree_attention(q.contiguous(), layer_kv[0], layer_kv[1], cache_len, tree_mask.contiguous(), scale)


def cached_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float,
    eagle_kv: torch.Tensor,
    eagle_cache_len: torch.Tensor,
    eagle_tree_mask: torch.Tensor | None,
    **_: object,
) -> tuple[torch.Tensor, None]:
    """The ``transformers`` attention function: layer ``module.layer_idx`` attends through the static cache."""
    out = attend(eagle_kv[module.layer_idx], query, key, value, eagle_cache_len, eagle_tree_mask, scaling)
    return out.transpose(1, 2), None


def register_attention() -> str:
    """Make :func:`cached_attention` available to ``transformers`` models (idempotent); returns its name."""
    AttentionInterface.register(ATTENTION_NAME, cached_attention)
    return ATTENTION_NAME
