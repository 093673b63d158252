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

    def write_(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        """Store ``k, v`` (``[B, Hkv, N, Dh]``) of ``layer`` at ``slots`` (``[B, N]``) of :meth:`view` ``(B)``.

        One ``index_put_`` on the storage itself, not a write through views: under ``torch.compile`` a write through
        views of a buffer that a custom op (``kv_copy_``) also mutates is functionalized into scatters that inductor
        does not turn back into in-place writes, and the compiled step then copies the whole cache every layer.
        """
        _, _, _, kv_heads, capacity, head_dim = self.shape
        batch = k.shape[0]
        b = torch.arange(batch, device=k.device)[:, None, None, None]
        h = torch.arange(kv_heads, device=k.device)[None, :, None, None]
        d = torch.arange(head_dim, device=k.device)
        keys = (((layer * 2 * batch + b) * kv_heads + h) * capacity + slots[:, None, :, None]) * head_dim + d
        values = keys + batch * kv_heads * capacity * head_dim
        index = torch.cat([keys.reshape(-1), values.reshape(-1)])
        self.storage.index_put_((index,), torch.cat([k.flatten(), v.flatten()]))


def attend(
    cache: KVCache,
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor | None,
    scale: float,
    offset: int = 0,
) -> torch.Tensor:
    """Write ``k, v`` (``[B, Hkv, N, Dh]``) to slots ``cache_len + offset + i`` of ``layer`` of ``cache`` and attend.

    With a ``tree_mask`` (``[B, N, offset + N]``) the queries see the committed prefix and the masked slots from
    ``cache_len`` on (``eagle_ops.tree_attention``). Without one the batch is a prefill from an empty cache
    (``cache_len == 0``): plain causal attention over the N new tokens. Returns ``[B, Hq, N, Dh]``.
    """
    batch, kv_heads, n, _ = k.shape
    capacity = cache.shape[4]
    # A finished sequence keeps running with its cache full; its junk writes land on its own last slot.
    slots = (cache_len[:, None] + offset + torch.arange(n, device=k.device)).clamp_max(capacity - 1)
    cache.write_(layer, k, v, slots)
    if tree_mask is None:
        group = q.shape[1] // kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    layer_kv = cache.view(batch)[layer]
    return eagle_ops.tree_attention(q.contiguous(), layer_kv[0], layer_kv[1], cache_len, tree_mask.contiguous(), scale)


def cached_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float,
    eagle_kv: KVCache,
    eagle_cache_len: torch.Tensor,
    eagle_tree_mask: torch.Tensor | None,
    **_: object,
) -> tuple[torch.Tensor, None]:
    """The ``transformers`` attention function: layer ``module.layer_idx`` attends through the static cache."""
    out = attend(eagle_kv, module.layer_idx, query, key, value, eagle_cache_len, eagle_tree_mask, scaling)
    return out.transpose(1, 2), None


def register_attention() -> str:
    """Make :func:`cached_attention` available to ``transformers`` models (idempotent); returns its name."""
    AttentionInterface.register(ATTENTION_NAME, cached_attention)
    return ATTENTION_NAME
