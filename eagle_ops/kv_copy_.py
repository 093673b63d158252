"""`kv_copy_`: compact the target KV cache after acceptance, moving the accepted path next to the prefix."""

from __future__ import annotations

import torch

from eagle_ops._checks import FLOAT_DTYPES, INDEX_DTYPES, Signature
from eagle_ops._library import define_op
from eagle_ops.lowering.kv_copy_ import kv_copy_triton
from eagle_ops.reference.kv_copy_ import kv_copy_reference


def _validate(cache: object, cache_len: object, accept_path: object) -> None:
    check = Signature("kv_copy_")
    check.tensor("cache", cache, "L 2 B Hkv S Dh", FLOAT_DTYPES)
    check.tensor("cache_len", cache_len, "B", INDEX_DTYPES)
    check.tensor("accept_path", accept_path, "B P", INDEX_DTYPES)
    check.nonempty()


def _fake(cache: torch.Tensor, cache_len: torch.Tensor, accept_path: torch.Tensor) -> None:
    """In place, no outputs: nothing to allocate."""


define_op(
    "kv_copy_",
    "(Tensor(a!) cache, Tensor cache_len, Tensor accept_path) -> ()",
    validate=_validate,
    fake=_fake,
    reference=kv_copy_reference,
    lowering=kv_copy_triton,
)


def kv_copy_(cache: torch.Tensor, cache_len: torch.Tensor, accept_path: torch.Tensor) -> None:
    """Move the K/V of every sequence's accepted path to the slots right after its committed prefix, in place.

    Args:
        cache: ``[L, 2, B, Hkv, S, Dh]`` fp32, fp16 or bf16, the keys (``[:, 0]``) and values (``[:, 1]``) of
            every layer in one buffer; mutated.
        cache_len: ``[B]`` int64, committed tokens per sequence; not changed (the step adds ``accept_len + 1``).
        accept_path: ``[B, P]`` int64, the accepted tree indices, root first, ``-1`` padded.

    For every layer, K and V, and head, slot ``cache_len[b] + j`` receives slot ``cache_len[b] + accept_path[b, j]``
    for each ``j`` with ``accept_path[b, j] >= 0``; every source is read before any slot is written. An entry whose
    source or destination lies outside ``[0, S)`` is skipped. One launch covers all layers.
    """
    torch.ops.eagle_ops.kv_copy_(cache, cache_len, accept_path)
