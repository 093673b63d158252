"""Triton lowering of `topk_expand`: one streaming pass over vocabulary chunks, then one tiny merge per sequence.

Stage 1 (:func:`topk_expand_kernel_chunk`, one program per (frontier row, vocabulary chunk)) reads its chunk once,
keeping the running max, the sum of ``exp(logit - max)`` rescaled as the max grows (online softmax) and a running
top-k of the raw logits (the top-k of the logits is the top-k of the log-probs). Stage 2
(:func:`topk_expand_kernel_merge`, one program per sequence) merges the chunks of its F rows into log-sum-exps and
child lists, scores the children and picks the next frontier among the F*k of them. Log-softmax over the
vocabulary is never materialised; splitting rows into chunks fills the GPU when B*F is small.

Every ranking compares int64 keys packing (score, index) so that one max finds the best element and breaks ties
by the smaller index: stage 1 keeps an unordered running top-k whose minimum the tile's best elements replace,
stage 2 takes k rounds of (max, remove it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from eagle_ops._checks import Signature

INT32_MAX = 2**31 - 1
INDEX_FLIP = tl.constexpr(INT32_MAX)  # a key's low half is INDEX_FLIP - index: the smaller index, the larger key
# Keys (see `_pack`) below every key of a real element: a removed or absent element, and the base of the distinct
# placeholders that fill a running top-k before k elements arrived.
NO_KEY = tl.constexpr(-(2**63))
FREE_KEY = tl.constexpr(-(2**63) + 1)
FILLED = tl.constexpr(-(2**63) + 1 + 64)  # a running top-k whose minimum is at least this holds k real keys (k <= 64)
NEVER_MIN = tl.constexpr(2**63 - 1)


@triton.jit
def _pack(score, index):
    """One int64 per (score, index), ordered as the ranking: higher score first, then smaller index.

    High half: the float's bits made monotonic as a signed int (a negative float's magnitude bits are flipped),
    after -0.0 became +0.0 so that the two tie. Low half: INDEX_FLIP - index. A NaN packs to some key: only rows
    that are not valid hold one, and their ranking is never used.
    """
    bits = tl.where(score == 0.0, 0.0, score).to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    # -(index - INDEX_FLIP): the interpreter cannot subtract a tensor from a constexpr.
    return (ordered.to(tl.int64) << 32) | (-(index - INDEX_FLIP)).to(tl.int64)


@triton.jit
def _unpack_score(key):
    ordered = (key >> 32).to(tl.int32)
    return tl.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered).to(tl.float32, bitcast=True)


@triton.jit
def _unpack_index(key):
    return -(key.to(tl.int32) - INDEX_FLIP)  # the truncation keeps the low half, which is below 2**31


@triton.jit
def topk_expand_kernel_chunk(
    logits_ptr,  # [B*F, Vd] fp32 / fp16 / bf16
    chunk_max_ptr,  # [B*F, C] f32
    chunk_sum_ptr,  # [B*F, C] f32
    top_key_ptr,  # [B*F, C*k] i64
    vocab_size,
    k,
    num_chunks,
    tiles_per_chunk,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    lanes = tl.arange(0, BLOCK_V)
    k_lanes = tl.arange(0, BLOCK_K)
    # The running top-k as an unordered set of keys, started with distinct placeholders; lanes past k are never
    # its minimum, so they are never replaced.
    top = tl.where(k_lanes < k, FREE_KEY + k_lanes.to(tl.int64), NEVER_MIN)
    top_min = tl.min(top, axis=0)
    running_max = float("-inf")
    running_sum = 0.0
    first = chunk * tiles_per_chunk * BLOCK_V
    for tile in range(tl.minimum(tiles_per_chunk, tl.cdiv(vocab_size - first, BLOCK_V))):
        vocab = first + tile * BLOCK_V + lanes
        in_row = vocab < vocab_size
        x = tl.load(logits_ptr + row * vocab_size + vocab, mask=in_row, other=float("-inf")).to(tl.float32)
        # A NaN or +inf logit turns the sum NaN (exp(NaN), or inf - inf once the max is +inf): the row is then not
        # valid and the merge ignores its ranking, so such logits need no special case here.
        tile_max = tl.max(x, axis=0)
        new_max = tl.maximum(running_max, tile_max)
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # every logit so far -inf: every exp is 0
        running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(x - shift), axis=0)
        running_max = new_max
        # Only a tile whose max beats the running minimum can change the top-k (an equal score loses: its index is
        # larger), so most tiles skip the ranking. While fewer than k elements arrived, every tile is ranked.
        if (top_min < FILLED) | (tile_max > _unpack_score(top_min)):
            key = tl.where(in_row, _pack(x, vocab), NO_KEY)
            best = tl.max(key, axis=0)
            # The tile's elements in ranking order replace the running minimum while they beat it.
            while best > top_min:
                top = tl.where(top == top_min, best, top)
                top_min = tl.min(top, axis=0)
                key = tl.where(key == best, NO_KEY, key)
                best = tl.max(key, axis=0)
    stat = row * num_chunks + chunk
    tl.store(chunk_max_ptr + stat, running_max)
    tl.store(chunk_sum_ptr + stat, running_sum)
    tl.store(top_key_ptr + stat * k + k_lanes, top, mask=k_lanes < k)


@triton.jit
def _row_log_sum_exp(chunk_max_ptr, chunk_sum_ptr, rows, in_frontier, num_chunks, BLOCK_C: tl.constexpr):
    """``(log-sum-exp, valid)`` of every row from its chunks' (max, sum); 0 where the row is not valid."""
    chunks = tl.arange(0, BLOCK_C)
    present = in_frontier[:, None] & (chunks < num_chunks)[None, :]
    stats = rows[:, None] * num_chunks + chunks[None, :]
    chunk_max = tl.load(chunk_max_ptr + stats, mask=present, other=float("-inf"))
    chunk_sum = tl.load(chunk_sum_ptr + stats, mask=present, other=0.0)
    row_max = tl.max(chunk_max, axis=1)
    shift = tl.where(row_max == float("-inf"), 0.0, row_max)
    row_sum = tl.sum(chunk_sum * tl.exp(chunk_max - shift[:, None]), axis=1)
    # Not valid: every logit -inf (the sum is 0) or a NaN or +inf logit (the sum is NaN). A valid sum is >= 1.
    valid = (row_max > float("-inf")) & (row_sum == row_sum)
    return shift + tl.log(tl.where(valid, row_sum, 1.0)), valid


@triton.jit
def _top_k_of_rows(keys, k, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr):
    """``[BLOCK_F, BLOCK_K]``: the k largest keys of every row of ``keys``, largest first."""
    ranks = tl.arange(0, BLOCK_K)[None, :]
    top = tl.full([BLOCK_F, BLOCK_K], NO_KEY, tl.int64)
    for rank in range(k):
        best = tl.max(keys, axis=1)
        top = tl.where(ranks == rank, best[:, None], top)
        keys = tl.where(keys == best[:, None], NO_KEY, keys)
    return top


@triton.jit
def topk_expand_kernel_merge(
    chunk_max_ptr,  # [B*F, C] f32
    chunk_sum_ptr,  # [B*F, C] f32
    top_key_ptr,  # [B*F, C*k] i64
    frontier_ptr,  # [B, F] f32
    d2t_ptr,  # [Vd] i64, or None
    level_scores_ptr,  # [B, F*k] f32
    level_tokens_ptr,  # [B, F*k] i64
    next_scores_ptr,  # [B, k] f32
    next_tokens_ptr,  # [B, k] i64
    next_parent_ptr,  # [B, k] i64
    next_index_ptr,  # [B, k] i64
    frontier_size,
    vocab_size,
    k,
    num_chunks,
    BLOCK_F: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    nodes = tl.arange(0, BLOCK_F)
    rows = seq * frontier_size + nodes
    in_frontier = nodes < frontier_size
    log_sum_exp, valid = _row_log_sum_exp(chunk_max_ptr, chunk_sum_ptr, rows, in_frontier, num_chunks, BLOCK_C)
    candidates = tl.arange(0, BLOCK_N)
    present = in_frontier[:, None] & (candidates < num_chunks * k)[None, :]
    chunk_keys = tl.load(top_key_ptr + rows[:, None] * num_chunks * k + candidates[None, :], mask=present, other=NO_KEY)
    children = _top_k_of_rows(chunk_keys, k, BLOCK_F, BLOCK_K)

    ranks = tl.arange(0, BLOCK_K)[None, :]
    in_level = in_frontier[:, None] & (ranks < k)
    # A row that is not valid has a NaN log-softmax everywhere: all its children rank equal, so they are ids 0..k-1.
    tokens = tl.where(valid[:, None], _unpack_index(children), ranks).to(tl.int64)
    child_logp = tl.where(valid[:, None], _unpack_score(children) - log_sum_exp[:, None], float("-inf"))
    frontier = tl.load(frontier_ptr + rows, mask=in_frontier, other=float("-inf"))
    scores = frontier[:, None] + child_logp
    scores = tl.where(scores != scores, float("-inf"), scores)  # a NaN frontier score, or +inf plus -inf
    if d2t_ptr is not None:
        tokens += tl.load(d2t_ptr + tokens, mask=in_level & (tokens < vocab_size), other=0)
    flat = nodes[:, None] * k + ranks  # index into the level, (node, rank) order
    level = seq * frontier_size * k
    tl.store(level_scores_ptr + level + flat, scores, mask=in_level)
    tl.store(level_tokens_ptr + level + flat, tokens, mask=in_level)

    keys = tl.where(in_level, _pack(scores, flat), NO_KEY)
    lanes = tl.arange(0, BLOCK_K)
    chosen = tl.full([BLOCK_K], NO_KEY, tl.int64)
    for rank in range(k):
        best = tl.max(tl.max(keys, axis=1), axis=0)
        chosen = tl.where(lanes == rank, best, chosen)
        keys = tl.where(keys == best, NO_KEY, keys)
    in_top = lanes < k
    next_index = tl.where(in_top, _unpack_index(chosen), 0)
    out = seq * k + lanes
    # The level was stored by other threads of this program: make their stores visible before reading them back.
    tl.debug_barrier()
    tl.store(next_scores_ptr + out, tl.load(level_scores_ptr + level + next_index, mask=in_top), mask=in_top)
    tl.store(next_tokens_ptr + out, tl.load(level_tokens_ptr + level + next_index, mask=in_top), mask=in_top)
    tl.store(next_parent_ptr + out, (next_index // k).to(tl.int64), mask=in_top)
    tl.store(next_index_ptr + out, next_index.to(tl.int64), mask=in_top)


# Few rows (small batches): about eight 4-warp programs per SM of an H100 / H200 (132 SMs), the rows split into
# up to 16 chunks of wide tiles so that every SM has work.
TARGET_PROGRAMS = 1024
MAX_BLOCK_V = 2048
MAX_CHUNKS = 16
# Many rows (large batches): the rows alone fill the GPU, and a program is latency-bound on the dependent reductions
# of its running top-k. One-warp programs over 512-wide tiles keep those reductions within a warp, and chunks of
# about 32 tiles (at most 4 per row) keep the merge small: 1.4x faster than the wide plan at B = 64, F = 10 on the
# H200, for both Vd = 32000 and 128256.
NARROW_ROWS = 256
NARROW_BLOCK_V = 512
NARROW_TILES_PER_CHUNK = 32
NARROW_MAX_CHUNKS = 4
# Stage 2 holds every row's chunk candidates, [F, chunks * k] int64 keys, in registers at once.
MERGE_CANDIDATES = 4096


@dataclass(frozen=True)
class _Plan:
    block_v: int
    tiles_per_chunk: int
    num_chunks: int
    num_warps: int


def _plan(rows: int, frontier: int, vocab: int, k: int) -> _Plan:
    """Tile width, chunking and warps of stage 1, from the shapes alone (deterministic launches)."""
    merge_room = max(1, MERGE_CANDIDATES // (triton.next_power_of_2(frontier) * k))
    if rows >= NARROW_ROWS:
        block_v, num_warps = min(NARROW_BLOCK_V, triton.next_power_of_2(vocab)), 1
        tiles = triton.cdiv(vocab, block_v)
        chunks = min(triton.cdiv(tiles, NARROW_TILES_PER_CHUNK), NARROW_MAX_CHUNKS, merge_room)
    else:
        # At least 16 tiles per row when the row is long enough, so that a row can be split into chunks.
        block_v, num_warps = min(max(triton.next_power_of_2(triton.cdiv(vocab, 16)), 16), MAX_BLOCK_V), 4
        tiles = triton.cdiv(vocab, block_v)
        chunks = min(triton.cdiv(TARGET_PROGRAMS, rows), tiles, MAX_CHUNKS, merge_room)
    tiles_per_chunk = triton.cdiv(tiles, chunks)
    return _Plan(block_v, tiles_per_chunk, triton.cdiv(tiles, tiles_per_chunk), num_warps)


Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def empty_outputs(logits: torch.Tensor, k: int) -> Outputs:
    """The six outputs, uninitialised: level scores and tokens ``[B, F*k]``, next frontier ``[B, k]``."""
    batch, frontier, _ = logits.shape
    level, top = (batch, frontier * k), (batch, k)
    scores = dict(dtype=torch.float32, device=logits.device)
    index = dict(dtype=torch.int64, device=logits.device)
    return (
        torch.empty(level, **scores),
        torch.empty(level, **index),
        torch.empty(top, **scores),
        torch.empty(top, **index),
        torch.empty(top, **index),
        torch.empty(top, **index),
    )


def _check_out(logits: torch.Tensor, k: int, out: Outputs) -> None:
    """Preallocated outputs must fit exactly: the kernels write every element of each."""
    batch, frontier, _ = logits.shape
    check = Signature("topk_expand", B=batch, N=frontier * k, K=k)
    check.tensor("logits", logits, "B F Vd", (logits.dtype,))  # the device the outputs must be on
    names = ("level_scores", "level_tokens", "next_scores", "next_tokens", "next_parent", "next_index")
    dims = ("B N", "B N", "B K", "B K", "B K", "B K")
    for name, value, shape in zip(names, out, dims, strict=True):
        check.tensor(name, value, shape, (torch.float32,) if "scores" in name else (torch.int64,))


def topk_expand_triton(
    logits: torch.Tensor,
    frontier_scores: torch.Tensor,
    d2t: torch.Tensor | None,
    k: int,
    out: Outputs | None = None,
) -> Outputs:
    """Launch both stages; ``out`` takes the six preallocated outputs, in the op's order."""
    batch, frontier, vocab = logits.shape
    if vocab > INT32_MAX - MAX_BLOCK_V:
        raise ValueError(f"eagle_ops.topk_expand: the lowering indexes the vocabulary with int32, got Vd = {vocab}")
    if out is None:
        out = empty_outputs(logits, k)
    else:
        _check_out(logits, k, out)
    rows = batch * frontier
    plan = _plan(rows, frontier, vocab, k)
    chunk_max = torch.empty((rows, plan.num_chunks), dtype=torch.float32, device=logits.device)
    chunk_sum = torch.empty_like(chunk_max)
    top_key = torch.empty((rows, plan.num_chunks * k), dtype=torch.int64, device=logits.device)
    topk_expand_kernel_chunk[(rows, plan.num_chunks)](
        logits_ptr=logits,
        chunk_max_ptr=chunk_max,
        chunk_sum_ptr=chunk_sum,
        top_key_ptr=top_key,
        vocab_size=vocab,
        k=k,
        num_chunks=plan.num_chunks,
        tiles_per_chunk=plan.tiles_per_chunk,
        BLOCK_V=plan.block_v,
        BLOCK_K=triton.next_power_of_2(k),
        num_warps=plan.num_warps,
    )
    level_scores, level_tokens, next_scores, next_tokens, next_parent, next_index = out
    topk_expand_kernel_merge[(batch,)](
        chunk_max_ptr=chunk_max,
        chunk_sum_ptr=chunk_sum,
        top_key_ptr=top_key,
        frontier_ptr=frontier_scores,
        d2t_ptr=d2t,
        level_scores_ptr=level_scores,
        level_tokens_ptr=level_tokens,
        next_scores_ptr=next_scores,
        next_tokens_ptr=next_tokens,
        next_parent_ptr=next_parent,
        next_index_ptr=next_index,
        frontier_size=frontier,
        vocab_size=vocab,
        k=k,
        num_chunks=plan.num_chunks,
        BLOCK_F=triton.next_power_of_2(frontier),
        BLOCK_C=triton.next_power_of_2(plan.num_chunks),
        BLOCK_N=triton.next_power_of_2(plan.num_chunks * k),
        BLOCK_K=triton.next_power_of_2(k),
    )
    return out
