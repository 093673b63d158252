"""Triton lowering of `topk_expand`: one kernel, one program per (frontier row, vocabulary chunk).

Each program reads its chunk once as tiles of rows of consecutive logits, each thread keeping, per row lane (row
r of every tile), an online softmax (the running max and the sum of ``exp(logit - max)``, rescaled as the max
grows) and the first row that reached the max. The chunk's top k logits lie in its k best lanes, and there in their
k best rows: it ranks those, read again from L2 (the top-k of the logits is the top-k of the log-probs). The last
program to finish a row's chunks merges them into the row's log-sum-exp and children; the last to finish a
sequence's F rows scores their children into the level and picks the next frontier among the F*k of them.
Log-softmax over the vocabulary is never materialised; splitting rows into chunks fills the GPU when B*F is small,
and the merges of early rows overlap the streaming of the others.

Every ranking compares integer keys packing (score, index), so that one max finds the best element and breaks
ties by the smaller index: int64 keys, but int32 ones for lanes and rows of 16-bit logits (their max and the row's
number in the chunk fit 16 bits each). The lanes are ranked in k rounds of (max, remove it); everything else by a
bitonic top-k network (``tl.topk``), whose compare-and-swaps each exchange keys between two threads at most. At
the lanes, whose keys come laid out one per row of a tile, the network moved them through shared memory and was
slower than the rounds. H200, B = 64, Vd = 32000 / V = 128256: 28.1 / 61.1 us with rounds everywhere, 24.7 /
58.0 with the network but at the lanes, 21.7 / 53.0 with int32 keys too, 22.7 / 61.9 with the network at the
lanes as well (BENCHMARKS.md, seventh session).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from eagle_ops._checks import Signature

INT32_MAX = 2**31 - 1
INDEX_FLIP = tl.constexpr(INT32_MAX)  # a key's low half is INDEX_FLIP - index: the smaller index, the larger key
LOG2E = tl.constexpr(1.4426950408889634)
NO_KEY = tl.constexpr(-(2**63))  # below every key of a real element: a removed or absent one
ROW_FLIP = tl.constexpr(0xFFFF)  # a row key's low half is ROW_FLIP - row
NO_ROW_KEY = tl.constexpr(-(2**31))


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
def _pack_row(score, row, DTYPE: tl.constexpr):
    """One int32 per (score, row) ordered as _pack's keys, for scores of a 16-bit float type DTYPE and a row's number
    within its chunk below ROW_FLIP: half as wide, so half the exchanges a ranking round."""
    bits = tl.where(score == 0.0, 0.0, score).to(DTYPE).to(tl.int16, bitcast=True).to(tl.int32)
    ordered = tl.where(bits < 0, bits ^ 0x7FFF, bits)
    return (ordered << 16) | -(row - ROW_FLIP)


@triton.jit
def _row_key(score, row_start, first, ROW: tl.constexpr, COMPACT: tl.constexpr, DTYPE: tl.constexpr):
    """The key of a row (or a lane) by its max: _pack_row's if COMPACT, else _pack's."""
    return _pack_row(score, (row_start - first) // ROW, DTYPE) if COMPACT else _pack(score, row_start)


@triton.jit
def _row_start(key, first, ROW: tl.constexpr, COMPACT: tl.constexpr):
    """The first logit's index of the row of a key from _row_key."""
    return first + -((key & ROW_FLIP) - ROW_FLIP) * ROW if COMPACT else _unpack_index(key)


@triton.jit
def _arrive(ticket_ptr, arrivals):
    """True in the program that arrives last of ``arrivals``; the stores of the others are then visible to it.

    Every thread's stores are issued before the barrier, and the atomic's release (acquire in the last program)
    orders them at GPU scope before what the last program reads next.
    """
    tl.debug_barrier()
    return tl.atomic_add(ticket_ptr, 1, sem="acq_rel") == arrivals - 1


@triton.jit
def _shift(max_):
    """The online softmax's shift: the max, or 0 while every logit is -inf (every exp is then 0, not NaN)."""
    return tl.where(max_ == float("-inf"), 0.0, max_)


@triton.jit
def _combine(maxes, sums):
    """``(max, sum of exp(logit - max))`` of the logits behind 1-D (max, sum) pairs."""
    max_ = tl.max(maxes, axis=0)
    return max_, tl.sum(sums * tl.exp(maxes - _shift(max_)), axis=0)


@triton.jit
def _log_sum_exp(max_, sum_):
    """log(sum_) + max_, or NaN where the row is not valid: every logit -inf (the sum is 0) or a NaN or +inf logit
    (the sum is NaN). A valid sum is >= 1."""
    valid = (max_ > float("-inf")) & (sum_ == sum_)
    return tl.where(valid, _shift(max_) + tl.log(tl.where(valid, sum_, 1.0)), float("nan"))


@triton.jit
def _top_k_rounds(keys, k, BLOCK_K: tl.constexpr, NONE: tl.constexpr):
    """``[BLOCK_K]``: the k largest of ``keys`` (any shape), largest first (then NONE), in k rounds of a max."""
    # Flattened, a round is one reduction: a max over one axis, then the other, exchanged every partial between
    # threads (396 instead of 68 instructions a round at the [16, 16] rows of pass 2, sm_90a).
    keys = tl.reshape(keys, [keys.numel], can_reorder=True)
    lanes = tl.arange(0, BLOCK_K)
    top = tl.full([BLOCK_K], NONE, keys.dtype)
    for rank in range(k):
        best = tl.max(keys, axis=0)
        top = tl.where(lanes == rank, best, top)
        keys = tl.where(keys == best, NONE, keys)
    return top


@triton.jit
def _top_k(keys, k, BLOCK_K: tl.constexpr, NONE: tl.constexpr):
    """``[BLOCK_K]``: the k largest of ``keys`` (any shape), largest first (then NONE), by a bitonic network
    (which needs at least two outputs and as many keys as outputs: else by rounds)."""
    keys = tl.reshape(keys, [keys.numel], can_reorder=True)
    if BLOCK_K > 1 and keys.numel >= BLOCK_K:
        top = tl.where(tl.arange(0, BLOCK_K) < k, tl.topk(keys, BLOCK_K), NONE)
    else:
        top = _top_k_rounds(keys, k, BLOCK_K, NONE)
    return top


@triton.jit
def _stream_tile(x, row_starts, lane_max, lane_sum, seg_max, seg_row):
    """Fold one ``[ROWS, ROW]`` tile of float32 logits into each row lane's online softmax and its segment's first
    best row. Every step stays inside one thread."""
    # A NaN or +inf logit turns the sum NaN (exp(NaN), or inf - inf once the max is +inf): the row is then not
    # valid and its ranking is not used, so such logits need no special case here.
    row_max = tl.max(x, axis=1)
    # Strict: among equal maxima the first row, of the smallest indices, stays.
    seg_row = tl.where(row_max > seg_max, row_starts, seg_row)
    seg_max = tl.maximum(seg_max, row_max)
    new_max = tl.maximum(lane_max, row_max)
    shift = _shift(new_max)
    # The rescale is exactly 1 while the max stands (a rounding there would compound over the tiles); each term is
    # one fused multiply-add and an exp2.
    rescale = tl.exp2((lane_max - shift) * LOG2E)
    lane_sum = lane_sum * rescale + tl.sum(tl.exp2(x * LOG2E - (shift * LOG2E)[:, None]), axis=1)
    return new_max, lane_sum, seg_max, seg_row


@triton.jit
def _rank_lane_rows(
    row_ptr, best_lanes, first, num_tiles, vocab_size, k, ROW, ROWS, SEGMENT_TILES, BLOCK_K, COMPACT, NO_ROW
):
    """``[BLOCK_K]`` keys of the k best rows of the lanes ``best_lanes`` (keys of their first best rows)."""
    lane_present = best_lanes != NO_ROW
    tile_span = ROWS * ROW
    segment_span = SEGMENT_TILES * tile_span
    in_chunk = tl.where(lane_present, _row_start(best_lanes, first, ROW, COMPACT) - first, 0)
    segment_first = first + in_chunk // segment_span * segment_span
    lane_first = segment_first + in_chunk % tile_span
    tiles = tl.arange(0, SEGMENT_TILES)
    lane_tiles = tl.minimum(SEGMENT_TILES, num_tiles - (segment_first - first) // tile_span)
    row_starts = lane_first[:, None] + tiles[None, :] * tile_span  # [BLOCK_K, SEGMENT_TILES]
    row_ok = lane_present[:, None] & (tiles[None, :] < lane_tiles[:, None]) & (row_starts < vocab_size)
    # One row a thread, as in pass 1: the row max needs no other thread.
    row_starts = tl.reshape(row_starts, [BLOCK_K * SEGMENT_TILES])
    row_ok = tl.reshape(row_ok, [BLOCK_K * SEGMENT_TILES])
    vocab = row_starts[:, None] + tl.arange(0, ROW)[None, :]
    x = tl.load(row_ptr + vocab, mask=row_ok[:, None] & (vocab < vocab_size), other=float("-inf"))
    row_max = tl.max(x.to(tl.float32), axis=1)
    row_keys = tl.where(row_ok, _row_key(row_max, row_starts, first, ROW, COMPACT, row_ptr.dtype.element_ty), NO_ROW)
    return _top_k(row_keys, k, BLOCK_K, NO_ROW)


@triton.jit
def _rank_chunk(
    row_ptr, first, num_tiles, vocab_size, k, ROW, ROWS, SEGMENT_TILES, BLOCK_SEGMENTS, BLOCK_K, COMPACT: tl.constexpr
):
    """``(max, sum of exp(logit - max), top keys [BLOCK_K])`` of the chunk of ``num_tiles`` tiles from ``first``.

    A tile is ROWS rows of ROW consecutive logits. Row r of the tiles of one segment (SEGMENT_TILES tiles) make a
    lane. Any partition of rows will do: the chunk's top k logits lie in its k best parts ranked by (max, index of
    the first row reaching it), since a logit of any other part ranks below that part's first best row's max, and
    so below the k parts' ones. Here: within the k best lanes they lie in the k best rows, and there they are ranked
    themselves.
    """
    lanes = tl.arange(0, ROWS)
    in_row = tl.arange(0, ROW)
    offsets = lanes[:, None] * ROW + in_row[None, :]
    tile_span = ROWS * ROW
    segment_span = SEGMENT_TILES * tile_span
    segment_slots = tl.arange(0, BLOCK_SEGMENTS)
    # Pass 1 streams the chunk tile by tile; tiles wholly inside the vocabulary load without a mask, pipelined
    # (62 against 66 us at B = 64 over 128256 logits on the H200).
    lane_max = tl.full([ROWS], float("-inf"), tl.float32)
    lane_sum = tl.zeros([ROWS], tl.float32)
    NO_ROW: tl.constexpr = NO_ROW_KEY if COMPACT else NO_KEY
    lane_keys = tl.full([ROWS, BLOCK_SEGMENTS], NO_ROW, tl.int32 if COMPACT else tl.int64)
    for segment in range(tl.cdiv(num_tiles, SEGMENT_TILES)):
        segment_first = first + segment * segment_span
        segment_tiles = tl.minimum(SEGMENT_TILES, num_tiles - segment * SEGMENT_TILES)
        seg_max = tl.full([ROWS], float("-inf"), tl.float32)
        seg_row = segment_first + lanes * ROW  # a lane that never beats -inf: its first row reached its max
        full_tiles = tl.minimum(segment_tiles, (vocab_size - segment_first) // tile_span)
        for tile in tl.range(full_tiles, num_stages=3):
            start = segment_first + tile * tile_span
            x = tl.load(row_ptr + start + offsets).to(tl.float32)
            lane_max, lane_sum, seg_max, seg_row = _stream_tile(
                x, start + lanes * ROW, lane_max, lane_sum, seg_max, seg_row
            )
        for tile in range(full_tiles, segment_tiles):
            start = segment_first + tile * tile_span
            vocab = start + offsets
            x = tl.load(row_ptr + vocab, mask=vocab < vocab_size, other=float("-inf")).to(tl.float32)
            lane_max, lane_sum, seg_max, seg_row = _stream_tile(
                x, start + lanes * ROW, lane_max, lane_sum, seg_max, seg_row
            )
        keys = _row_key(seg_max, seg_row, first, ROW, COMPACT, row_ptr.dtype.element_ty)
        keys = tl.where(segment_first + lanes * ROW < vocab_size, keys, NO_ROW)
        lane_keys = tl.where(segment_slots[None, :] == segment, keys[:, None], lane_keys)
    chunk_max, chunk_sum = _combine(lane_max, lane_sum)

    # Pass 2 ranks the lanes, then reads the rows of the k best again (from L2: the chunk was just read) and ranks
    # them; pass 3 reads the k best rows' logits and ranks those. Fewer than k lanes, rows or logits in the chunk
    # leave NO_ROW or NO_KEY keys. Segments of one tile make lanes of one row: pass 2 then has nothing to rank.
    best_lanes = _top_k_rounds(lane_keys, k, BLOCK_K, NO_ROW)
    if SEGMENT_TILES == 1:
        best_rows = best_lanes  # a lane is one row
    else:
        best_rows = _rank_lane_rows(
            row_ptr, best_lanes, first, num_tiles, vocab_size, k, ROW, ROWS, SEGMENT_TILES, BLOCK_K, COMPACT, NO_ROW
        )

    row_present = best_rows != NO_ROW
    vocab = tl.where(row_present, _row_start(best_rows, first, ROW, COMPACT), 0)[:, None] + in_row[None, :]
    readable = row_present[:, None] & (vocab < vocab_size)
    x = tl.load(row_ptr + vocab, mask=readable, other=float("-inf")).to(tl.float32)
    top = _top_k(tl.where(readable, _pack(x, vocab), NO_KEY), k, BLOCK_K, NO_KEY)
    return chunk_max, chunk_sum, top


@triton.jit
def _merge_row(chunk_max_ptr, chunk_sum_ptr, chunk_key_ptr, row, k, num_chunks, BLOCK_C, BLOCK_N, BLOCK_K):
    """``(log-sum-exp or NaN, top keys [BLOCK_K])`` of a row from its chunks' results."""
    chunks = tl.arange(0, BLOCK_C)
    stats = row * num_chunks + chunks
    in_row = chunks < num_chunks
    # .cg: read at L2, where the other programs' stores are (this SM's L1 is not coherent with them).
    chunk_max = tl.load(chunk_max_ptr + stats, mask=in_row, other=float("-inf"), cache_modifier=".cg")
    chunk_sum = tl.load(chunk_sum_ptr + stats, mask=in_row, other=0.0, cache_modifier=".cg")
    row_max, row_sum = _combine(chunk_max, chunk_sum)
    candidates = tl.arange(0, BLOCK_N)
    keys = tl.load(
        chunk_key_ptr + row * num_chunks * k + candidates,
        mask=candidates < num_chunks * k,
        other=NO_KEY,
        cache_modifier=".cg",
    )
    return _log_sum_exp(row_max, row_sum), _top_k(keys, k, BLOCK_K, NO_KEY)


@triton.jit
def _expand_sequence(
    seq,
    row_lse_ptr,
    row_key_ptr,
    frontier_ptr,
    d2t_ptr,
    level_scores_ptr,
    level_tokens_ptr,
    next_scores_ptr,
    next_tokens_ptr,
    next_parent_ptr,
    next_index_ptr,
    frontier_size,
    vocab_size,
    k,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Score the children of a sequence's F rows into the level, then pick its next frontier."""
    nodes = tl.arange(0, BLOCK_F)
    rows = seq * frontier_size + nodes
    in_frontier = nodes < frontier_size
    ranks = tl.arange(0, BLOCK_K)[None, :]
    in_level = in_frontier[:, None] & (ranks < k)
    log_sum_exp = tl.load(row_lse_ptr + rows, mask=in_frontier, other=0.0, cache_modifier=".cg")
    children = tl.load(row_key_ptr + rows[:, None] * k + ranks, mask=in_level, other=NO_KEY, cache_modifier=".cg")
    valid = log_sum_exp == log_sum_exp
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

    chosen = _top_k(tl.where(in_level, _pack(scores, flat), NO_KEY), k, BLOCK_K, NO_KEY)
    lanes = tl.arange(0, BLOCK_K)
    in_top = lanes < k
    next_index = tl.where(in_top, _unpack_index(chosen), 0)
    out = seq * k + lanes
    # The level was stored by other threads of this program: make their stores visible before reading them back.
    tl.debug_barrier()
    tl.store(next_scores_ptr + out, tl.load(level_scores_ptr + level + next_index, mask=in_top), mask=in_top)
    tl.store(next_tokens_ptr + out, tl.load(level_tokens_ptr + level + next_index, mask=in_top), mask=in_top)
    tl.store(next_parent_ptr + out, (next_index // k).to(tl.int64), mask=in_top)
    tl.store(next_index_ptr + out, next_index.to(tl.int64), mask=in_top)


@triton.jit
def topk_expand_kernel(
    logits_ptr,  # [B*F, Vd] fp32 / fp16 / bf16
    frontier_ptr,  # [B, F] f32
    d2t_ptr,  # [Vd] i64, or None
    chunk_max_ptr,  # [B*F, C] f32, or None with one chunk
    chunk_sum_ptr,  # [B*F, C] f32, or None
    chunk_key_ptr,  # [B*F, C*k] i64, or None
    row_lse_ptr,  # [B*F] f32
    row_key_ptr,  # [B*F, k] i64
    tickets_ptr,  # [B*F + B] i32, zero: arrivals per row, then per sequence
    level_scores_ptr,  # [B, F*k] f32
    level_tokens_ptr,  # [B, F*k] i64
    next_scores_ptr,  # [B, k] f32
    next_tokens_ptr,  # [B, k] i64
    next_parent_ptr,  # [B, k] i64
    next_index_ptr,  # [B, k] i64
    num_rows,
    frontier_size,
    vocab_size,
    k,
    num_chunks,
    tiles_per_chunk,
    ROW: tl.constexpr,
    ROWS: tl.constexpr,
    SEGMENT_TILES: tl.constexpr,
    BLOCK_SEGMENTS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
    COMPACT_ROW_KEYS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    first = chunk * tiles_per_chunk * ROWS * ROW
    num_tiles = tl.minimum(tiles_per_chunk, tl.cdiv(vocab_size - first, ROWS * ROW))
    chunk_max, chunk_sum, top = _rank_chunk(
        logits_ptr + row * vocab_size,
        first,
        num_tiles,
        vocab_size,
        k,
        ROW,
        ROWS,
        SEGMENT_TILES,
        BLOCK_SEGMENTS,
        BLOCK_K,
        COMPACT_ROW_KEYS,
    )
    lanes = tl.arange(0, BLOCK_K)
    # The last program to finish a row's chunks merges the row, and the last to finish a sequence's rows expands
    # the sequence: one launch, and the merges of early rows overlap the streaming of others.
    log_sum_exp = _log_sum_exp(chunk_max, chunk_sum)  # the row's, when the row is one chunk
    if chunk_key_ptr is None:
        row_done = True
    else:
        stat = row * num_chunks + chunk
        tl.store(chunk_max_ptr + stat, chunk_max)
        tl.store(chunk_sum_ptr + stat, chunk_sum)
        tl.store(chunk_key_ptr + stat * k + lanes, top, mask=lanes < k)
        row_done = _arrive(tickets_ptr + row, num_chunks)
        if row_done:
            log_sum_exp, top = _merge_row(
                chunk_max_ptr, chunk_sum_ptr, chunk_key_ptr, row, k, num_chunks, BLOCK_C, BLOCK_N, BLOCK_K
            )
    if row_done:
        tl.store(row_lse_ptr + row, log_sum_exp)
        tl.store(row_key_ptr + row * k + lanes, top, mask=lanes < k)
        seq = row // frontier_size
        if _arrive(tickets_ptr + num_rows + seq, frontier_size):
            _expand_sequence(
                seq, row_lse_ptr, row_key_ptr, frontier_ptr, d2t_ptr, level_scores_ptr, level_tokens_ptr,
                next_scores_ptr, next_tokens_ptr, next_parent_ptr, next_index_ptr, frontier_size, vocab_size, k,
                BLOCK_F, BLOCK_K,
            )  # fmt: skip


# A program reads tiles of up to MAX_TILE logits (32 per thread of its NUM_WARPS warps), as rows of ROW_BYTES (one
# vector load a thread). Rows split into chunks until about TARGET_PROGRAMS programs run (more only for chunks of
# over MAX_TILES_PER_CHUNK tiles, at most MAX_CHUNKS): on the H200 (132 SMs) one chunk per row was fastest at
# B*F = 640 and two at 160. Lanes restart every SEGMENT_TILES tiles, so that pass 2 reads at most that many rows
# of a lane. Measured at B = 1, 16, 64, F = 10, Vd = 32000 and 128256 (runs in BENCHMARKS.md).
MAX_TILE = 4096
ROW_BYTES = 16
NUM_WARPS = 4
TARGET_PROGRAMS = 320
MAX_TILES_PER_CHUNK = 64
MAX_CHUNKS = 16
SEGMENT_TILES = 16
MAX_COMPACT_ROWS = ROW_FLIP.value  # int32 row keys hold a row's number in its chunk below this


@dataclass(frozen=True)
class _Plan:
    row: int
    rows_per_tile: int
    tiles_per_chunk: int
    num_chunks: int


def _plan(rows: int, vocab: int, element_size: int) -> _Plan:
    """Row and tile sizes and chunking, from the shapes alone (deterministic launches)."""
    tile = min(MAX_TILE, triton.next_power_of_2(vocab))
    row = min(tile, max(1, ROW_BYTES // element_size))
    tiles = triton.cdiv(vocab, tile)
    wanted = max(triton.cdiv(TARGET_PROGRAMS, rows), triton.cdiv(tiles, MAX_TILES_PER_CHUNK))
    tiles_per_chunk = triton.cdiv(tiles, min(wanted, MAX_CHUNKS, tiles))
    return _Plan(row, tile // row, tiles_per_chunk, triton.cdiv(tiles, tiles_per_chunk))


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
    """Preallocated outputs must fit exactly: the kernel writes every element of each."""
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
    """Launch the kernel; ``out`` takes the six preallocated outputs, in the op's order."""
    batch, frontier, vocab = logits.shape
    if vocab > INT32_MAX - MAX_TILE:
        raise ValueError(f"eagle_ops.topk_expand: the lowering indexes the vocabulary with int32, got Vd = {vocab}")
    if out is None:
        out = empty_outputs(logits, k)
    else:
        _check_out(logits, k, out)
    rows = batch * frontier
    plan = _plan(rows, vocab, logits.element_size())
    segment_tiles = min(SEGMENT_TILES, triton.next_power_of_2(plan.tiles_per_chunk))
    device = logits.device
    chunk_max = chunk_sum = chunk_key = None
    if plan.num_chunks > 1:
        chunk_max = torch.empty((rows, plan.num_chunks), dtype=torch.float32, device=device)
        chunk_sum = torch.empty_like(chunk_max)
        chunk_key = torch.empty((rows, plan.num_chunks * k), dtype=torch.int64, device=device)
    row_lse = torch.empty((rows,), dtype=torch.float32, device=device)
    row_key = torch.empty((rows, k), dtype=torch.int64, device=device)
    tickets = torch.zeros((rows + batch,), dtype=torch.int32, device=device)
    topk_expand_kernel[(rows, plan.num_chunks)](
        logits,
        frontier_scores,
        d2t,
        chunk_max,
        chunk_sum,
        chunk_key,
        row_lse,
        row_key,
        tickets,
        *out,
        num_rows=rows,
        frontier_size=frontier,
        vocab_size=vocab,
        k=k,
        num_chunks=plan.num_chunks,
        tiles_per_chunk=plan.tiles_per_chunk,
        ROW=plan.row,
        ROWS=plan.rows_per_tile,
        SEGMENT_TILES=segment_tiles,
        BLOCK_SEGMENTS=triton.next_power_of_2(triton.cdiv(plan.tiles_per_chunk, segment_tiles)),
        BLOCK_C=triton.next_power_of_2(plan.num_chunks),
        BLOCK_N=triton.next_power_of_2(plan.num_chunks * k),
        BLOCK_F=triton.next_power_of_2(frontier),
        BLOCK_K=triton.next_power_of_2(k),
        COMPACT_ROW_KEYS=logits.element_size() == 2 and plan.tiles_per_chunk * plan.rows_per_tile <= MAX_COMPACT_ROWS,
        num_warps=NUM_WARPS,
    )
    return out
