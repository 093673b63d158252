"""tree_attention: the tree tokens attend to the committed cache prefix and, through a mask, to each other."""

from __future__ import annotations

import math

import torch

from eagle_ops._checks import FLOAT_DTYPES, INDEX_DTYPES, Signature
from eagle_ops._library import define_op
from eagle_ops.lowering.tree_attention import tree_attention_triton
from eagle_ops.reference.tree_attention import tree_attention_reference


def _validate(q, k_cache, v_cache, cache_len, tree_mask, scale) -> None:
    sig = Signature("tree_attention")
    sig.tensor("q", q, "B Hq Tq Dh", FLOAT_DTYPES)
    sig.tensor("k_cache", k_cache, "B Hkv S Dh", (q.dtype,))
    sig.tensor("v_cache", v_cache, "B Hkv S Dh", (q.dtype,))
    sig.tensor("cache_len", cache_len, "B", INDEX_DTYPES)
    sig.tensor("tree_mask", tree_mask, "B Tq Tk", (torch.bool,))
    sig.nonempty()
    if sig.sizes["Hq"] % sig.sizes["Hkv"] != 0:
        raise sig.error(
            f"the query heads of `q` (Hq = {sig.sizes['Hq']}) must be a multiple of the kv heads of `k_cache` "
            f"(Hkv = {sig.sizes['Hkv']})"
        )
    if not isinstance(scale, (float, int)) or isinstance(scale, bool):
        raise TypeError(f"eagle_ops.tree_attention: `scale` must be a float, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        raise sig.error(f"`scale` must be a finite positive float, got {scale}")


def _fake(q, k_cache, v_cache, cache_len, tree_mask, scale) -> torch.Tensor:
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


define_op(
    "tree_attention",
    "(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_len, Tensor tree_mask, float scale) -> Tensor",
    validate=_validate,
    fake=_fake,
    reference=tree_attention_reference,
    lowering=tree_attention_triton,
)


def tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of Tq tree queries over a static K/V cache holding a committed prefix and the tree's keys.

    Query i of sequence b sees cache slot p when ``p < cache_len[b]`` or ``p = cache_len[b] + j`` with
    ``tree_mask[b, i, j]``. Slots at or past ``S`` do not exist and ``cache_len < 0`` counts as 0; slots at or
    past ``cache_len + Tk`` are never read. A query that sees no slot at all outputs zeros. Query head h uses kv
    head ``h // (Hq / Hkv)`` (grouped-query attention, K/V never repeated); the softmax runs in float32.

    Args:
        q: ``[B, Hq, Tq, Dh]`` float32, float16 or bfloat16, contiguous.
        k_cache: ``[B, Hkv, S, Dh]`` dtype of ``q``, contiguous; the tree's keys already sit at
            ``[cache_len, cache_len + Tk)``. ``Hq`` must be a multiple of ``Hkv``.
        v_cache: ``[B, Hkv, S, Dh]`` like ``k_cache``.
        cache_len: ``[B]`` int64, committed tokens per sequence.
        tree_mask: ``[B, Tq, Tk]`` bool, ``tree_mask[b, i, j]``: query i sees tree slot j.
        scale: the softmax scale, usually ``Dh ** -0.5``.

    Returns:
        ``[B, Hq, Tq, Dh]`` in the dtype of ``q``.

    Every slot in ``[0, cache_len + Tk)`` is read for all the queries of a sequence: a NaN or inf in the
    ``v_cache`` of a tree slot reaches the queries that do not see it too (as 0 * inf), in both implementations.
    """
    return torch.ops.eagle_ops.tree_attention(q, k_cache, v_cache, cache_len, tree_mask, scale)
