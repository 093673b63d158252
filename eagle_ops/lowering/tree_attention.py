"""Triton lowering of tree_attention: flash attention over the cache's visible slots, split over keys.

A program owns one (sequence, kv head) group: the G = Hq/Hkv query heads that share the kv head times the Tq
queries, ``G*Tq`` rows that lie contiguously in ``q`` (a block of them when there are many), so each K/V tile is
read once for all of them. It walks one slice of the readable keys ``[0, min(prefix + Tk, S))`` with an online
softmax. When ``B*Hkv`` programs cannot fill the GPU, the keys are split across programs (flash-decoding): each
writes its unnormalised partial (row max, row sum, accumulator) to a workspace and a second kernel combines them.
The split count comes from the shapes only (no host sync); the slices are cut from the actual readable length
inside the kernel, so all splits of a sequence do equal work whatever ``cache_len`` is. A sequence uses only as
many of them as give each a minimum of keys (the others return at once; 512 or 128, below): a partial costs about as
many bytes as a few hundred keys, so a short sequence is better served by one program per row block, which then
writes the output itself, and the combine kernel leaves its rows alone.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

_SM_COUNT_OFF_GPU = 132  # an H100/H200, so that interpreter runs pick the splits the GPU would pick
# Enough programs for the GPU (a batch of long sequences): two pipeline stages of K and V tiles of at most 16 KiB
# keep a program near 96 KiB of shared memory, so two programs fit on one SM.
_TILE_BYTES = 16 * 1024
_MAX_BLOCK_N = 64
_PROGRAMS_PER_SM = 2
# Too few programs (short batches) of 16-bit inputs with heads of 128 or more: the keys are split across programs,
# one per SM, each with K and V tiles of up to 32 KiB and three stages in flight while they fit the shared memory.
# Measured on the H200: at the 8B shape (Hq 32, Hkv 8, Dh 128, T = 60, B = 1) 10% faster than the tiles above at
# 8192 cached tokens and 15% at 600; but 2x slower at Hq 6, Hkv 2, Dh 64 (the embedded model) and 20x slower in
# float32, whose dot products run on the FMA units. Those keep the tiles above, split two programs per SM.
_WIDE_TILE_BYTES = 32 * 1024
_WIDE_MAX_BLOCK_N = 128
_SHARED_MEMORY_BUDGET = 208 * 1024
# A split's partial (Tq*G rows of Dh floats, written then read back) is worth its cost only over enough keys: 512
# with the wide tiles (17.6 against 18.3 us at 128 on the 8B shape over 600 keys), 128 otherwise (float32 at
# Dh 64: 60 against 125 us at 512).
_WIDE_MIN_SPLIT_KEYS = 512
_MIN_SPLIT_KEYS = 128
_COMBINE_ROWS = 16
_COMBINE_MAX_SPLITS_IN_FLIGHT = 32
# The Triton interpreter does not do bfloat16 arithmetic as the GPU does (triton-lang/triton#11584: "we just don't
# support it yet"): tl.dot multiplies the bit patterns and float32 -> bfloat16 casts truncate. Under it, bfloat16
# kernels emulate the GPU: dot operands are widened to the float32 values they hold (exact) and downcasts round
# to nearest even by hand, so CPU tests see the GPU's rounding.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class _LaunchConfig:
    block_m: int
    block_n: int
    block_d: int
    num_splits: int
    num_warps: int
    num_stages: int
    min_split_keys: int


@functools.lru_cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return _SM_COUNT_OFF_GPU
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch_config(
    groups: int, rows_per_group: int, capacity: int, head_dim: int, element_size: int, device: torch.device
) -> _LaunchConfig:
    # tl.dot needs every block dim >= 16: short rows (Tq*G < 16) are padded, odd head sizes masked.
    block_m = min(max(triton.next_power_of_2(rows_per_group), 16), 64)
    block_d = max(triton.next_power_of_2(head_dim), 16)
    num_warps = 8 if block_m * block_d > 64 * 128 else 4
    programs = triton.cdiv(rows_per_group, block_m) * groups
    wide = programs * _PROGRAMS_PER_SM <= _sm_count(device) and element_size <= 2 and block_d >= 128
    tile_bytes = _WIDE_TILE_BYTES if wide else _TILE_BYTES
    widest = max(tile_bytes // (block_d * element_size), 16)
    block_n = min(max(triton.next_power_of_2(capacity), 16), widest, _WIDE_MAX_BLOCK_N if wide else _MAX_BLOCK_N)
    if not wide:
        # Whole waves only: one program too many would run alone in a second wave and double the time.
        num_splits = max(1, min(_PROGRAMS_PER_SM * _sm_count(device) // programs, triton.cdiv(capacity, block_n)))
        return _LaunchConfig(block_m, block_n, block_d, num_splits, num_warps, 2, _MIN_SPLIT_KEYS)
    num_splits = max(1, min(_sm_count(device) // programs, triton.cdiv(capacity, block_n)))
    stage_bytes = 2 * block_n * block_d * element_size
    num_stages = 3 if block_m * block_d * element_size + 3 * stage_bytes <= _SHARED_MEMORY_BUDGET else 2
    return _LaunchConfig(block_m, block_n, block_d, num_splits, num_warps, num_stages, _WIDE_MIN_SPLIT_KEYS)


@triton.jit
def _dot_operand(x, EMULATE_BF16: tl.constexpr):
    if EMULATE_BF16:
        x = x.to(tl.float32)
    return x


@triton.jit
def _rounded(x, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """``x.to(dtype)``, rounding to nearest even like the GPU's conversion."""
    if EMULATE_BF16:
        bits = x.to(tl.int32, bitcast=True)
        x = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _softmax_shift(row_max):
    # A row that has seen no visible key keeps max -inf: shifting by 0 then makes exp2(-inf) = 0, not NaN.
    return tl.where(row_max == float("-inf"), 0.0, row_max)


@triton.jit
def _attend_key_block(
    acc,
    row_max,
    row_sum,
    q,
    k_head_ptr,
    v_head_ptr,
    mask_row_ptrs,
    row_ok,
    start,
    split_end,
    prefix_len,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One online-softmax step over keys ``[start, start + BLOCK_N)``; unmasked blocks lie wholly in the prefix."""
    keys = start + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    kv_offsets = keys.to(tl.int64)[:, None] * HEAD_DIM + dims[None, :]
    key_ok = keys < split_end
    # A mask that varies along the contiguous head dim stops the loads from being pipelined (cp.async): mask
    # dims only for head sizes that are not a power of two.
    kv_mask = key_ok[:, None]
    if HEAD_DIM != BLOCK_D:
        kv_mask = kv_mask & (dims < HEAD_DIM)[None, :]
    k = _dot_operand(tl.load(k_head_ptr + kv_offsets, mask=kv_mask, other=0.0), EMULATE_BF16)
    scores = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # [BLOCK_M, BLOCK_N], log2 units
    if MASKED:
        in_prefix = key_ok & (keys < prefix_len)
        in_tree = key_ok & (keys >= prefix_len)
        tree_slots = keys - prefix_len
        in_mask = tl.load(mask_row_ptrs + tree_slots[None, :], mask=row_ok[:, None] & in_tree[None, :], other=0)
        scores = tl.where(in_prefix[None, :] | (in_mask != 0), scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, 1))
    shift = _softmax_shift(new_max)
    probs = tl.exp2(scores - shift[:, None])
    rescale = tl.exp2(row_max - shift)
    v = tl.load(v_head_ptr + kv_offsets, mask=kv_mask, other=0.0)
    weights = _dot_operand(_rounded(probs, v.dtype, EMULATE_BF16), EMULATE_BF16)
    acc = tl.dot(weights, _dot_operand(v, EMULATE_BF16), acc * rescale[:, None], input_precision="ieee")
    return acc, new_max, row_sum * rescale + tl.sum(probs, 1)


@triton.jit
def _store_output(out_ptr, rows, dims, acc, row_sum, mask, HEAD_DIM: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """Normalise and store rows; a row that saw no key has sum 0 and acc 0, and dividing by 1 gives the zeros."""
    out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]
    out_ptrs = out_ptr + rows[:, None] * HEAD_DIM + dims[None, :]
    tl.store(out_ptrs, _rounded(out, out_ptr.dtype.element_ty, EMULATE_BF16), mask=mask)


@triton.jit
def _split_keys(key_end, NUM_SPLITS: tl.constexpr, MIN_SPLIT_KEYS: tl.constexpr, BLOCK_N: tl.constexpr):
    """``(chunk, used)``: a sequence's readable keys ``[0, key_end)`` cut into ``used <= NUM_SPLITS`` slices of
    ``chunk`` keys (a multiple of BLOCK_N, at least MIN_SPLIT_KEYS); ``used`` is 1 for an empty range."""
    chunk = tl.maximum(tl.cdiv(tl.cdiv(key_end, NUM_SPLITS), BLOCK_N) * BLOCK_N, MIN_SPLIT_KEYS)
    return chunk, tl.maximum(tl.cdiv(key_end, chunk), 1)


@triton.jit
def tree_attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    cache_len_ptr,
    tree_mask_ptr,
    out_ptr,
    partial_acc_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    qk_scale,
    kv_heads,
    rows_per_group,
    queries,
    tree_len,
    capacity,
    total_rows,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    MIN_SPLIT_KEYS: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row_block = tl.program_id(0)
    group = tl.program_id(1).to(tl.int64)  # batch * kv_heads + kv head
    split = tl.program_id(2)
    batch = group // kv_heads

    # Rows of a group: its G query heads x Tq queries, head-major, contiguous in q and out.
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < rows_per_group
    dims = tl.arange(0, BLOCK_D)
    row_dim_mask = row_ok[:, None] & (dims < HEAD_DIM)[None, :]
    global_rows = group * rows_per_group + rows
    q_ptrs = q_ptr + global_rows[:, None] * HEAD_DIM + dims[None, :]
    q = _dot_operand(tl.load(q_ptrs, mask=row_dim_mask, other=0.0), EMULATE_BF16)

    prefix_len = tl.minimum(tl.maximum(tl.load(cache_len_ptr + batch), 0), capacity).to(tl.int32)
    key_end = tl.minimum(prefix_len + tree_len, capacity)
    chunk, used_splits = _split_keys(key_end, NUM_SPLITS, MIN_SPLIT_KEYS, BLOCK_N)
    if split < used_splits:
        split_start = tl.minimum(split * chunk, key_end)
        split_end = tl.minimum(split_start + chunk, key_end)
        # Blocks wholly inside the prefix need no mask: the tree's slots and the split's ragged end come after them.
        prefix_span = tl.maximum(tl.minimum(prefix_len, split_end) - split_start, 0)
        prefix_blocks_end = split_start + prefix_span // BLOCK_N * BLOCK_N

        k_head_ptr = k_cache_ptr + group * capacity * HEAD_DIM
        v_head_ptr = v_cache_ptr + group * capacity * HEAD_DIM
        mask_row_ptrs = tree_mask_ptr + ((batch * queries + rows % queries) * tree_len)[:, None]

        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(split_start, prefix_blocks_end, BLOCK_N):
            acc, row_max, row_sum = _attend_key_block(
                acc, row_max, row_sum, q, k_head_ptr, v_head_ptr, mask_row_ptrs, row_ok, start, split_end,
                prefix_len, qk_scale, HEAD_DIM=HEAD_DIM, MASKED=False, EMULATE_BF16=EMULATE_BF16, BLOCK_N=BLOCK_N,
                BLOCK_D=BLOCK_D,
            )  # fmt: skip
        for start in range(prefix_blocks_end, split_end, BLOCK_N):
            acc, row_max, row_sum = _attend_key_block(
                acc, row_max, row_sum, q, k_head_ptr, v_head_ptr, mask_row_ptrs, row_ok, start, split_end,
                prefix_len, qk_scale, HEAD_DIM=HEAD_DIM, MASKED=True, EMULATE_BF16=EMULATE_BF16, BLOCK_N=BLOCK_N,
                BLOCK_D=BLOCK_D,
            )  # fmt: skip

        # One slice: the program owns its rows and stores the output. Several: it stores its partial for the combine
        # kernel; the constexpr test keeps those stores (whose pointers are None with NUM_SPLITS == 1) out of the
        # unsplit kernel.
        if used_splits == 1:
            _store_output(out_ptr, global_rows, dims, acc, row_sum, row_dim_mask, HEAD_DIM, EMULATE_BF16)
        if NUM_SPLITS > 1 and used_splits > 1:
            partial_rows = split.to(tl.int64) * total_rows + global_rows
            tl.store(partial_acc_ptr + partial_rows[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_dim_mask)
            tl.store(partial_max_ptr + partial_rows, row_max, mask=row_ok)
            tl.store(partial_sum_ptr + partial_rows, row_sum, mask=row_ok)


@triton.jit
def tree_attention_kernel_combine(
    partial_acc_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    cache_len_ptr,
    out_ptr,
    total_rows,
    rows_per_seq,
    tree_len,
    capacity,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_IN_FLIGHT: tl.constexpr,
    MIN_SPLIT_KEYS: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < total_rows
    dims = tl.arange(0, BLOCK_D)
    row_dim_mask = row_ok[:, None] & (dims < HEAD_DIM)[None, :]
    # Each row's sequence split its keys as the main kernel did; a sequence that used one split has its output.
    cache_len = tl.load(cache_len_ptr + rows // rows_per_seq, mask=row_ok, other=0)
    prefix_len = tl.minimum(tl.maximum(cache_len, 0), capacity).to(tl.int32)
    _, used_splits = _split_keys(tl.minimum(prefix_len + tree_len, capacity), NUM_SPLITS, MIN_SPLIT_KEYS, BLOCK_N)

    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    row_max = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_R], dtype=tl.float32)
    # Splits are read SPLITS_IN_FLIGHT at a time, unrolled, so that their loads overlap instead of each waiting for
    # the last: a plain loop over them took 17.4 against 15.6 us for the whole op at B = 1, 2048 cached tokens (H200).
    for first_split in range(0, NUM_SPLITS, SPLITS_IN_FLIGHT):
        for offset in tl.static_range(SPLITS_IN_FLIGHT):
            split = first_split + offset
            present = row_ok & (split < used_splits)
            partial_rows = split * total_rows + rows
            split_max = tl.load(partial_max_ptr + partial_rows, mask=present, other=float("-inf"))
            split_sum = tl.load(partial_sum_ptr + partial_rows, mask=present, other=0.0)
            split_acc = tl.load(
                partial_acc_ptr + partial_rows[:, None] * HEAD_DIM + dims[None, :],
                mask=present[:, None] & row_dim_mask,
                other=0.0,
            )
            new_max = tl.maximum(row_max, split_max)
            shift = _softmax_shift(new_max)
            old_weight = tl.exp2(row_max - shift)
            split_weight = tl.exp2(split_max - shift)
            acc = acc * old_weight[:, None] + split_acc * split_weight[:, None]
            row_sum = row_sum * old_weight + split_sum * split_weight
            row_max = new_max

    mask = row_dim_mask & (used_splits > 1)[:, None]
    _store_output(out_ptr, rows, dims, acc, row_sum, mask, HEAD_DIM, EMULATE_BF16)


def _splits_in_flight(num_splits: int) -> int:
    """Splits the combine reads at once: all of them up to the maximum, else as few equal groups as fit under it."""
    return triton.cdiv(num_splits, triton.cdiv(num_splits, _COMBINE_MAX_SPLITS_IN_FLIGHT))


def tree_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    scale: float,
    out: tuple[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Launch tree_attention on validated, contiguous inputs; ``out`` optionally holds the preallocated output."""
    batch, q_heads, queries, head_dim = q.shape
    kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
    tree_len = tree_mask.shape[2]
    rows_per_group = q_heads // kv_heads * queries
    total_rows = batch * q_heads * queries
    (output,) = out if out is not None else (torch.empty(q.shape, dtype=q.dtype, device=q.device),)
    emulate_bf16 = _INTERPRETED and q.dtype == torch.bfloat16
    config = _launch_config(batch * kv_heads, rows_per_group, capacity, head_dim, q.element_size(), q.device)

    partial_acc = partial_max = partial_sum = None
    if config.num_splits > 1:
        partial_acc = torch.empty((config.num_splits, total_rows, head_dim), dtype=torch.float32, device=q.device)
        partial_max = torch.empty((config.num_splits, total_rows), dtype=torch.float32, device=q.device)
        partial_sum = torch.empty_like(partial_max)

    grid = (triton.cdiv(rows_per_group, config.block_m), batch * kv_heads, config.num_splits)
    tree_attention_kernel[grid](
        q_ptr=q,
        k_cache_ptr=k_cache,
        v_cache_ptr=v_cache,
        cache_len_ptr=cache_len,
        tree_mask_ptr=tree_mask,
        out_ptr=output,
        partial_acc_ptr=partial_acc,
        partial_max_ptr=partial_max,
        partial_sum_ptr=partial_sum,
        qk_scale=scale * math.log2(math.e),
        kv_heads=kv_heads,
        rows_per_group=rows_per_group,
        queries=queries,
        tree_len=tree_len,
        capacity=capacity,
        total_rows=total_rows,
        HEAD_DIM=head_dim,
        NUM_SPLITS=config.num_splits,
        MIN_SPLIT_KEYS=config.min_split_keys,
        EMULATE_BF16=emulate_bf16,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_D=config.block_d,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if config.num_splits > 1:
        tree_attention_kernel_combine[(triton.cdiv(total_rows, _COMBINE_ROWS),)](
            partial_acc_ptr=partial_acc,
            partial_max_ptr=partial_max,
            partial_sum_ptr=partial_sum,
            cache_len_ptr=cache_len,
            out_ptr=output,
            total_rows=total_rows,
            rows_per_seq=q_heads * queries,
            tree_len=tree_len,
            capacity=capacity,
            HEAD_DIM=head_dim,
            NUM_SPLITS=config.num_splits,
            SPLITS_IN_FLIGHT=_splits_in_flight(config.num_splits),
            MIN_SPLIT_KEYS=config.min_split_keys,
            EMULATE_BF16=emulate_bf16,
            BLOCK_N=config.block_n,
            BLOCK_R=_COMBINE_ROWS,
            BLOCK_D=config.block_d,
            num_warps=4,
        )
    return output
