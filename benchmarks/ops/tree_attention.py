"""tree_attention benchmark points: the verify step of an 8B-Llama-shaped target (Hq = 32, Hkv = 8, Dh = 128,
bf16) over a tree of T = 60 tokens, every sequence holding 2048 or 8192 committed tokens, B in {1, 16, 64}.

Baselines: the eager reference, and what a Hugging Face model does today ("sdpa"): repeat K/V to every query head,
then ``scaled_dot_product_attention`` over the whole cache with a materialised ``[B, 1, Tq, S]`` boolean mask,
built once per forward and so outside the timed region.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.harness import Case
from eagle_ops.lowering.tree_attention import tree_attention_triton
from eagle_ops.reference.tree_attention import tree_attention_reference, visible_keys


@dataclass(frozen=True)
class TreeAttentionSizes:
    batches: tuple[int, ...] = (1, 16, 64)
    cache_lens: tuple[int, ...] = (2048, 8192)
    headroom: int = 64  # S = cache length + headroom: room for the tree
    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    tree_size: int = 60
    dtype: torch.dtype = torch.bfloat16


GPU_SIZES = TreeAttentionSizes()
# The embedded model's attention (Hq 6, Hkv 2, Dh 64) in float32, as the fp32 step checks run it: a configuration
# that was fast at the 8B shape was 20x slower here once, so both are timed.
SMALL_HEAD_FP32_SIZES = TreeAttentionSizes(
    batches=(1, 4), cache_lens=(1024,), q_heads=6, kv_heads=2, head_dim=64, dtype=torch.float32
)
# bf16 output and bf16 probabilities before P·V each round by at most 2^-8 relative (see the op's tests).
AGREEMENT = 1e-2


def random_tree_masks(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``[batch, size, size]`` ancestor-or-self masks of random trees, each node under a uniformly drawn earlier one."""
    mask = torch.zeros((batch, size, size), dtype=torch.bool)
    mask[:, 0, 0] = True
    rows = torch.arange(batch)
    for i in range(1, size):
        parent = torch.randint(0, i, (batch,), generator=generator)
        mask[:, i] = mask[rows, parent]
        mask[:, i, i] = True
    return mask


def repeat_kv_sdpa(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, attn_mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Hugging Face's sdpa attention: K/V repeated to every query head (``repeat_kv``), then one SDPA call."""
    batch, kv_heads, capacity, head_dim = k_cache.shape
    group = q.shape[1] // kv_heads

    def repeat_kv(x: torch.Tensor) -> torch.Tensor:
        return (
            x[:, :, None]
            .expand(batch, kv_heads, group, capacity, head_dim)
            .reshape(-1, kv_heads * group, capacity, head_dim)
        )

    return F.scaled_dot_product_attention(q, repeat_kv(k_cache), repeat_kv(v_cache), attn_mask=attn_mask, scale=scale)


def _assert_agrees(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    error = float((got.double() - want.double()).norm() / want.double().norm())
    assert error <= AGREEMENT, f"tree_attention: {name} differs from reference by {error:.2e} (relative L2)"


def _case(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
) -> Case:
    batch, q_heads, queries, head_dim = q.shape
    kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
    scale = head_dim**-0.5
    args = (q, k_cache, v_cache, cache_len, tree_mask, scale)
    attn_mask = visible_keys(cache_len, tree_mask, capacity)[:, None]  # [B, 1, Tq, S]

    def check() -> None:
        want = tree_attention_reference(*args)
        _assert_agrees("triton", tree_attention_triton(*args), want)
        _assert_agrees("sdpa", repeat_kv_sdpa(q, k_cache, v_cache, attn_mask, scale), want)

    # The visible K and V (prefix and tree), q and the output each cross memory once.
    visible_slots = int((cache_len.clamp(0, capacity) + tree_mask.shape[2]).clamp_max(capacity).sum())
    kv_bytes = 2 * visible_slots * kv_heads * head_dim * k_cache.element_size()
    return Case(
        op="tree_attention",
        label=(
            f"B={batch} cache={int(cache_len.max())} S={capacity} T={queries} "
            f"Hq={q_heads} Hkv={kv_heads} Dh={head_dim} {str(q.dtype).removeprefix('torch.')}"
        ),
        candidates={
            "reference": lambda: tree_attention_reference(*args),
            "triton": lambda: tree_attention_triton(*args),
            "sdpa": lambda: repeat_kv_sdpa(q, k_cache, v_cache, attn_mask, scale),
        },
        check=check,
        bytes_min=kv_bytes + 2 * q.nbytes,
        params={"B": batch, "S": capacity, "Hq": q_heads, "Hkv": kv_heads, "Dh": head_dim, "Tq": queries},
    )


def cases(device: torch.device | str, sizes: TreeAttentionSizes | None = None) -> list[Case]:
    """The cases of ``sizes``; by default those of GPU_SIZES, then of SMALL_HEAD_FP32_SIZES."""
    if sizes is None:
        return cases(device, GPU_SIZES) + cases(device, SMALL_HEAD_FP32_SIZES)
    generator = torch.Generator().manual_seed(0)
    capacities = [length + sizes.headroom for length in sizes.cache_lens]
    # One K/V buffer sized for the largest case; every case views its start (the inputs are only read).
    kv_shape = (2, max(sizes.batches), sizes.kv_heads, max(capacities), sizes.head_dim)
    buffer = torch.empty(torch.Size(kv_shape).numel(), dtype=sizes.dtype, device=device).normal_()
    result = []
    for length, capacity in zip(sizes.cache_lens, capacities, strict=True):
        for batch in sizes.batches:
            kv = buffer[: 2 * batch * sizes.kv_heads * capacity * sizes.head_dim]
            k_cache, v_cache = kv.view(2, batch, sizes.kv_heads, capacity, sizes.head_dim).unbind(0)
            q_shape = (batch, sizes.q_heads, sizes.tree_size, sizes.head_dim)
            q = torch.randn(q_shape, generator=generator).to(device=device, dtype=sizes.dtype)
            cache_len = torch.full((batch,), length, dtype=torch.int64, device=device)
            tree_mask = random_tree_masks(batch, sizes.tree_size, generator).to(device)
            result.append(_case(q, k_cache, v_cache, cache_len, tree_mask))
    return result
