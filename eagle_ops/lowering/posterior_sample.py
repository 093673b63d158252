"""Triton lowering of `posterior_sample`.

One program per ``(sequence, node)`` row finds, in passes over the row's logits, all that the walk may need from
it: the largest score, the top-k and top-p boundaries, the kept mass, and the bonus token the row gives if the walk
stops there, with its children rejected and without. A last launch has one program per sequence: it walks the tree
with one coin per depth, computing each offered child's probability from its parent's row statistics, and picks
the bonus of the row it stops at.

The top-k boundary is an exact radix select over the scores' order keys (four 8-bit digits, a histogram per pass).
When top-k (or a small vocabulary) leaves at most ``_MAX_CANDIDATES`` survivors, they are gathered in one more
pass and everything else, top-p included, is computed on them sorted in registers: the rows launch finishes them.
The other rows are streamed: two passes compute the kept mass and the bonus draws, touching a block's tokens one
by one only in the blocks holding a child or a draw. Their top-p boundary, when 0 < top_p < 1, is searched in
radix-16 rounds weighted by probability, one launch per round with each row split into chunks searched side by
side (at B = 1, one program per row would leave most SMs idle through eight passes); a last launch per row then
resolves the tie at the boundary and makes the streamed passes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eagle_ops.lowering.posterior_greedy import check_outputs, new_outputs, store_path

# Float comparisons appear only as `tl.where` conditions: the Triton interpreter (CPU tests) gives them float data,
# which its `&` and `|` reject.

# Lanes of a streaming pass (16 per thread with 8 warps: enough bytes in flight for one program per row).
_MAX_BLOCK_V = 4096
# Lanes of a top-p search round, whose [block, radix] tile is 64 per thread.
_MAX_SEARCH_BLOCK_V = 1024
# Top-k survivors handled by sorting in registers.
_MAX_CANDIDATES = 1024
_RADIX = 16
# A top-p search round splits each row into chunks searched side by side while there are few rows (60 at B = 1,
# where one program per row would leave most SMs idle through eight passes over the row).
_SEARCH_TARGET_PROGRAMS = 512
_MAX_SEARCH_CHUNKS = 16
# Every fp32 order key lies in [_order_key(-inf), _order_key(+inf)], fewer than 2**32 = _RADIX ** _ROUNDS keys.
_ROUNDS = 8
_NEG_INF_KEY = tl.constexpr(-2139095041)  # _order_key(-inf): the smallest key of any score
_SIGN_BIT = tl.constexpr(-2147483648)
_LOW_32_BITS = tl.constexpr(4294967295)
_NO_TOKEN = tl.constexpr(2147483647)


@triton.jit
def _scores(row_ptr, token, mask, temperature):
    """fp32 ``logits / temperature`` at ``token``, NaN ranked as -inf; -inf where masked (after the division, which
    a temperature <= 0 would turn into +inf or NaN)."""
    x = tl.load(row_ptr + token, mask=mask, other=0.0).to(tl.float32)
    scores = tl.math.div_rn(x, temperature)
    return tl.where(mask, tl.where(scores != scores, float("-inf"), scores), float("-inf"))


@triton.jit
def _order_key(scores):
    """An int64 ordered like the (NaN-free) fp32 scores; -0.0 and +0.0 share one key."""
    bits = tl.where(scores == 0.0, 0.0, scores).to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)


@triton.jit
def _score_of_key(key):
    """The fp32 score whose :func:`_order_key` is ``key`` (int32)."""
    return tl.where(key >= 0, key, key ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)


@triton.jit
def _weight(scores, top):
    """``exp(score - top)``, 1 for every maximal score: a row of -inf is uniform, +inf scores share the row.

    Both sides of the subtraction are zeroed where the score is maximal, so that no lane computes inf - inf."""
    maximal = scores == top
    return tl.exp(tl.where(maximal, 0.0, scores) - tl.where(maximal, 0.0, top))


@triton.jit
def _kept(key, token, kth_key, nucleus_key, nucleus_cut):
    """Top-k keeps keys >= kth_key; top-p keeps keys above nucleus_key, and equal ones from token nucleus_cut on."""
    return (key >= kth_key) & ((key > nucleus_key) | ((key == nucleus_key) & (token >= nucleus_cut)))


@triton.jit
def _kept_weight(row_ptr, token, vocab, temperature, top, kth_key, nucleus_key, nucleus_cut):
    """``exp(score - top)`` of the tokens top-k and top-p keep, 0 for the others and past the vocabulary."""
    scores = _scores(row_ptr, token, token < vocab, temperature)
    kept = (token < vocab) & _kept(_order_key(scores), token, kth_key, nucleus_key, nucleus_cut)
    return tl.where(kept, _weight(scores, top), 0.0)


@triton.jit
def _row_max(row_ptr, vocab, temperature, BLOCK_V: tl.constexpr):
    lanes = tl.arange(0, BLOCK_V)
    top = tl.full([BLOCK_V], float("-inf"), tl.float32)
    for start in range(0, vocab, BLOCK_V):
        top = tl.maximum(top, _scores(row_ptr, start + lanes, start + lanes < vocab, temperature))
    return tl.max(top, 0)


@triton.jit
def _top_k_key(row_ptr, vocab, temperature, top_k, BLOCK_V: tl.constexpr):
    """The order key of the k-th largest score, or -inf's key when top-k keeps every token.

    Radix select from the most significant of four 8-bit digits of the keys (as unsigned, sign bit flipped): each
    pass takes the histogram of the next digit among the keys that share the digits chosen so far, and keeps the
    largest digit at or above which at least the still-needed number of keys lie."""
    active = (top_k > 0) & (top_k < vocab)
    lanes = tl.arange(0, BLOCK_V)
    bins = tl.arange(0, 256)
    prefix = tl.zeros([], dtype=tl.uint32)
    needed = top_k.to(tl.int32)
    for digit_index in tl.static_range(4):
        shift = 24 - 8 * digit_index
        counts = tl.zeros([256], dtype=tl.int32)
        for start in range(0, tl.where(active, vocab, 0), BLOCK_V):
            token = start + lanes
            valid = token < vocab
            key = _order_key(_scores(row_ptr, token, valid, temperature)).to(tl.int32) ^ _SIGN_BIT
            key = key.to(tl.uint32, bitcast=True)
            # The first digit has no prefix (and a shift by 32 bits would be undefined).
            same_prefix = valid if digit_index == 0 else valid & ((key >> (shift + 8)) == (prefix >> (shift + 8)))
            counts += tl.histogram(((key >> shift) & 255).to(tl.int32), 256, mask=same_prefix)
        at_or_above = tl.sum(counts, 0) - tl.cumsum(counts, 0) + counts
        digit = tl.max(tl.where(at_or_above >= needed, bins, 0), 0)
        needed -= tl.sum(tl.where(bins > digit, counts, 0), 0)
        prefix = prefix | (digit.to(tl.uint32) << shift)
    key = prefix.to(tl.int32, bitcast=True) ^ _SIGN_BIT
    return tl.where(active, key.to(tl.int64), _NEG_INF_KEY)


@triton.jit
def _gather_survivors(
    row_ptr, vocab, temperature, kth_key, candidates_ptr, CANDIDATES: tl.constexpr, BLOCK_V: tl.constexpr
):
    """Store ``(key << 32) + token`` of the first CANDIDATES tokens scoring at least ``kth_key``; return how many
    there are in all."""
    lanes = tl.arange(0, BLOCK_V)
    count = tl.zeros([], dtype=tl.int32)
    for start in range(0, vocab, BLOCK_V):
        token = start + lanes
        valid = token < vocab
        key = _order_key(_scores(row_ptr, token, valid, temperature))
        survives = valid & (key >= kth_key)
        slot = count + tl.cumsum(survives.to(tl.int32), 0) - 1
        tl.store(candidates_ptr + slot, (key << 32) + token, mask=survives & (slot < CANDIDATES))
        count += tl.sum(survives.to(tl.int32), 0)
    return count


@triton.jit
def _is_child_token(token, tokens_ptr, parent_ptr, base, node, size):
    """Whether each of ``token`` is the token of a child of ``node`` (a draft this row's walk may reject)."""
    rejected = token < 0
    for child in range(node + 1, size):
        is_child = tl.load(parent_ptr + base + child) == node
        rejected = rejected | (is_child & (token == tl.load(tokens_ptr + base + child)))
    return rejected


@triton.jit
def _first_above(weights, token, carry, target, vocab):
    """The first token whose running sum ``carry + cumsum(weights)`` passes ``target``, else ``vocab``."""
    return tl.min(tl.where(carry + tl.cumsum(weights, 0) > target, token, vocab), 0)


@triton.jit
def _search_interval(
    partial_ptr, total_ptr, interval_ptr, row, rows, search_round, kth_key, top_key, drop_mass, CHUNKS, RADIX
):
    """``[low, high)``, the keys that round ``search_round`` of the top-p search splits into RADIX steps: all the
    top-k survivors' keys at round 0, then the previous round's interval narrowed by its sums (the chunks' partials,
    added in chunk order, so that every program of a row narrows it alike). The searched key is the smallest whose
    cumulative probability passes ``1 - top_p``; keys above the largest score stand for "no key passes"."""
    low = kth_key
    high = top_key + 1
    if search_round > 0:
        previous = ((search_round - 1) % 2) * rows + row
        low = tl.load(interval_ptr + 2 * previous)
        high = tl.load(interval_ptr + 2 * previous + 1)
        chunks = tl.arange(0, CHUNKS)
        digits = tl.arange(0, RADIX).to(tl.int64)
        at_or_below = tl.sum(tl.load(partial_ptr + (previous * CHUNKS + chunks[:, None]) * RADIX + digits[None, :]), 0)
        total = tl.sum(tl.load(total_ptr + row * CHUNKS + chunks), 0)
        step = (high - low) // RADIX + 1
        thresholds = low + digits * step
        first = tl.minimum(
            tl.min(tl.where(tl.math.div_rn(at_or_below, total) > drop_mass, digits, RADIX), 0),
            tl.min(tl.where(thresholds > top_key, digits, RADIX), 0),
        )
        next_low = tl.where(first == 0, low, low + (first - 1) * step + 1)
        high = tl.where(first == RADIX, high, tl.minimum(low + first * step, high))
        low = next_low
    return low, high


@triton.jit(do_not_specialize=["search_round"])
def posterior_sample_kernel_search(
    logits_ptr,  # [B * T, V]
    temperature_ptr,  # [B] f32
    top_p_ptr,  # [B] f32
    row_max_ptr,  # [B * T] f32
    kth_key_ptr,  # [B * T] i64
    searched_ptr,  # [B * T] i32: whether the search launches find the row's top-p boundary
    partial_ptr,  # [2, B * T, CHUNKS, RADIX] f32: a round's probability mass at or below each threshold, by chunk
    total_ptr,  # [B * T, CHUNKS] f32: the survivors' mass by chunk (round 0)
    interval_ptr,  # [2, B * T, 2] i64: each round's [low, high)
    size,
    vocab,
    rows,
    chunk_len,
    search_round,
    BLOCK_V: tl.constexpr,
    CHUNKS: tl.constexpr,
    RADIX: tl.constexpr,
):
    """One round of the top-p search of the searched rows: the masses (as ``exp(score - top)``) of one chunk of the
    row's survivors at or below RADIX thresholds. Rounds are launches, so a row's chunks run side by side."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    seq = row // size
    if tl.load(searched_ptr + row) != 0:
        top_p = tl.load(top_p_ptr + seq)
        temperature = tl.load(temperature_ptr + seq)
        top = tl.load(row_max_ptr + row)
        kth_key = tl.load(kth_key_ptr + row)
        low, high = _search_interval(
            partial_ptr, total_ptr, interval_ptr, row, rows, search_round, kth_key, _order_key(top), 1.0 - top_p,
            CHUNKS, RADIX,
        )  # fmt: skip
        if chunk == 0:
            current = (search_round % 2) * rows + row
            tl.store(interval_ptr + 2 * current, low)
            tl.store(interval_ptr + 2 * current + 1, high)
        digits = tl.arange(0, RADIX).to(tl.int64)
        thresholds = low + digits * ((high - low) // RADIX + 1)
        lanes = tl.arange(0, BLOCK_V)
        row_ptr = logits_ptr + row * vocab
        chunk_end = tl.minimum((chunk + 1) * chunk_len, vocab)
        # Summed per lane across the blocks, then across lanes once, not in a reduction per block.
        at_or_below = tl.zeros([BLOCK_V, RADIX], dtype=tl.float32)
        total = tl.zeros([BLOCK_V], dtype=tl.float32)
        for start in range(chunk * chunk_len, chunk_end, BLOCK_V):
            token = start + lanes
            scores = _scores(row_ptr, token, token < chunk_end, temperature)
            key = _order_key(scores)
            weight = tl.where((token < chunk_end) & (key >= kth_key), _weight(scores, top), 0.0)
            at_or_below += tl.where(key[:, None] <= thresholds[None, :], weight[:, None], 0.0)
            total += weight
        current = ((search_round % 2) * rows + row) * CHUNKS + chunk
        tl.store(partial_ptr + current * RADIX + digits, tl.sum(at_or_below, 0))
        if search_round == 0:
            tl.store(total_ptr + row * CHUNKS + chunk, tl.sum(total, 0))


@triton.jit
def _nucleus(row_ptr, vocab, temperature, top, kth_key, top_p, searched_key, survivors_sum, BLOCK_V: tl.constexpr):
    """``(nucleus_key, nucleus_cut)`` for :func:`_kept`; ``(-inf's key, 0)`` when top-p keeps every token.

    Ascending (score, token) order, the cumulative probability of the top-k survivors: the dropped tokens are
    those at or below ``1 - top_p``, a prefix. The search found ``searched_key``, the smallest key whose cumulative
    probability passes ``1 - top_p`` (or one above the largest: then the last token stays alone, as with
    ``top_p <= 0``, which is not searched); among the scores equal to it, the first ``n_drop`` (by token) are dropped,
    with ``n_drop`` the number of them whose own cumulative probability is still <= ``1 - top_p``.
    """
    lanes = tl.arange(0, BLOCK_V)
    top_key = _order_key(top)
    active = top_p < 1.0  # false for NaN
    drop_mass = 1.0 - top_p
    active_vocab = tl.where(active, vocab, 0)
    last_alone = tl.where(top_p <= 0.0, 1, searched_key > top_key) != 0
    nucleus_key = tl.where(last_alone, top_key, searched_key)

    tied = tl.zeros([BLOCK_V], dtype=tl.int64)
    tied_prob = tl.zeros([BLOCK_V], dtype=tl.float32)
    mass_below = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, active_vocab, BLOCK_V):
        token = start + lanes
        scores = _scores(row_ptr, token, token < vocab, temperature)
        key = _order_key(scores)
        prob = tl.where((token < vocab) & (key >= kth_key), tl.math.div_rn(_weight(scores, top), survivors_sum), 0.0)
        is_tied = (token < vocab) & (key == nucleus_key)
        tied += is_tied.to(tl.int64)
        tied_prob = tl.maximum(tied_prob, tl.where(is_tied, prob, 0.0))
        mass_below += tl.where(key < nucleus_key, prob, 0.0)
    tied = tl.sum(tied, 0)
    tied_prob = tl.max(tied_prob, 0)
    mass_below = tl.sum(mass_below, 0)
    room = tl.where(active, drop_mass - mass_below, 0.0)  # no NaN from an inactive top_p
    dropped = tl.floor(room / tl.maximum(tied_prob, 1e-38))
    n_drop = tl.where(last_alone, tied - 1, tl.minimum(tl.maximum(dropped, 0.0), tied - 1.0).to(tl.int64))

    # The cut is the token of the tied score with rank n_drop in token order.
    nucleus_cut = tl.zeros([], dtype=tl.int64)
    seen = tl.zeros([], dtype=tl.int64)
    for start in range(0, active_vocab, BLOCK_V):
        token = start + lanes
        key = _order_key(_scores(row_ptr, token, token < vocab, temperature))
        is_tied = (token < vocab) & (key == nucleus_key)
        rank = seen + tl.cumsum(is_tied.to(tl.int64), 0) - 1
        nucleus_cut = tl.maximum(nucleus_cut, tl.max(tl.where(is_tied & (rank == n_drop), token, 0), 0).to(tl.int64))
        seen += tl.sum(is_tied.to(tl.int64), 0)
    return tl.where(active, nucleus_key, _NEG_INF_KEY), nucleus_cut


@triton.jit
def _rejected_in_block(token, start, child_tokens, tokens_ptr, parent_ptr, base, node, size, BLOCK_V: tl.constexpr):
    """:func:`_is_child_token` for a block of tokens from ``start``, tested only when a child falls in the block."""
    if tl.sum(((child_tokens >= start) & (child_tokens < start + BLOCK_V)).to(tl.int32), 0) > 0:
        rejected = _is_child_token(token, tokens_ptr, parent_ptr, base, node, size)
    else:
        rejected = token < 0
    return rejected


@triton.jit
def _store_row(stats, row, top, kth_key, nucleus_key, nucleus_cut, kept_sum, bonus_rejected, bonus_untested):
    row_max_ptr, kth_key_ptr, nucleus_key_ptr, nucleus_cut_ptr, kept_sum_ptr, row_bonus_ptr = stats
    tl.store(row_max_ptr + row, top)
    tl.store(kth_key_ptr + row, kth_key)
    tl.store(nucleus_key_ptr + row, nucleus_key)
    tl.store(nucleus_cut_ptr + row, nucleus_cut)
    tl.store(kept_sum_ptr + row, kept_sum)
    tl.store(row_bonus_ptr + 2 * row, bonus_rejected.to(tl.int64))
    tl.store(row_bonus_ptr + 2 * row + 1, bonus_untested.to(tl.int64))


@triton.jit
def _candidate_row(
    candidates_ptr,
    count,
    top,
    kth_key,
    top_p,
    uniform,
    tokens_ptr,
    parent_ptr,
    base,
    node,
    size,
    vocab,
    stats,
    row,
    CANDIDATES: tl.constexpr,
):
    """Every statistic of a row from its ``count`` top-k survivors, sorted in registers."""
    slots = tl.arange(0, CANDIDATES)
    present = slots < count
    packed = tl.sort(tl.load(candidates_ptr + slots, mask=present, other=9223372036854775807))
    key = (packed >> 32).to(tl.int32)
    token = (packed & _LOW_32_BITS).to(tl.int32)
    weight = tl.where(present, _weight(_score_of_key(key), top), 0.0)

    # Top-p, in ascending (score, token) order: drop the prefix whose cumulative probability is <= 1 - top_p,
    # never the last survivor; top_p <= 0 keeps it alone.
    cumulative = tl.cumsum(tl.math.div_rn(weight, tl.sum(weight, 0)), 0)
    searched = tl.where(top_p < 1.0, 1, 0) != 0
    droppable = present & (slots < count - 1) & searched
    dropped = tl.where(tl.where(top_p <= 0.0, 1.0, cumulative) <= 1.0 - tl.maximum(top_p, 0.0), droppable, False)
    first_kept = tl.min(tl.where(present & ~dropped, slots, CANDIDATES), 0)
    nucleus_key = tl.where(searched, tl.sum(tl.where(slots == first_kept, key, 0), 0).to(tl.int64), _NEG_INF_KEY)
    nucleus_cut = tl.where(searched, tl.sum(tl.where(slots == first_kept, token, 0), 0), 0).to(tl.int64)
    kept = present & (slots >= first_kept)
    weight = tl.where(kept, weight, 0.0)
    kept_sum = tl.sum(weight, 0)

    # The bonus draws run in token order: sort again by token, the weight's bits riding in the low half.
    by_token = tl.where(kept, token, _NO_TOKEN).to(tl.int64) << 32
    by_token = tl.sort(by_token + weight.to(tl.int32, bitcast=True).to(tl.int64))
    token = (by_token >> 32).to(tl.int32)
    weight = (by_token & _LOW_32_BITS).to(tl.int32).to(tl.float32, bitcast=True)
    residual = tl.where(_is_child_token(token, tokens_ptr, parent_ptr, base, node, size), 0.0, weight)
    # No mass outside the children happens only through rounding or a coin >= 1: the draw then ignores them.
    reject = tl.max(tl.where(residual > 0.0, 1, 0), 0) > 0
    residual = tl.where(reject, residual, weight)
    residual_first = _first_above(residual, token, 0.0, uniform * tl.sum(residual, 0), vocab)
    full_first = _first_above(weight, token, 0.0, uniform * kept_sum, vocab)
    residual_last = tl.max(tl.where(residual > 0.0, token, -1), 0)
    full_last = tl.max(tl.where(weight > 0.0, token, -1), 0)
    _store_row(
        stats,
        row,
        top,
        kth_key,
        nucleus_key,
        nucleus_cut,
        kept_sum,
        tl.where(residual_first < vocab, residual_first, residual_last),
        tl.where(full_first < vocab, full_first, full_last),
    )


@triton.jit
def _streamed_row(
    row_ptr,
    top,
    kth_key,
    nucleus_key,
    nucleus_cut,
    temperature,
    uniform,
    tokens_ptr,
    parent_ptr,
    base,
    node,
    size,
    vocab,
    stats,
    row,
    BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """The kept mass and the bonus draws of a row with too many survivors to sort, in passes over the row."""
    nodes = tl.arange(0, BLOCK_T)
    parent = tl.load(parent_ptr + base + nodes, mask=nodes < size, other=-1)
    child_tokens = tl.load(tokens_ptr + base + nodes, mask=nodes < size, other=-1)
    child_tokens = tl.where((parent == node) & (node < nodes) & (nodes < size), child_tokens, -1)
    lanes = tl.arange(0, BLOCK_V)

    kept_sum = tl.zeros([BLOCK_V], dtype=tl.float32)
    residual_sum = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, vocab, BLOCK_V):
        token = start + lanes
        weight = _kept_weight(row_ptr, token, vocab, temperature, top, kth_key, nucleus_key, nucleus_cut)
        kept_sum += weight
        rejected = _rejected_in_block(token, start, child_tokens, tokens_ptr, parent_ptr, base, node, size, BLOCK_V)
        residual_sum += tl.where(rejected, 0.0, weight)
    kept_sum = tl.sum(kept_sum, 0)
    residual_sum = tl.sum(residual_sum, 0)

    # Inverse CDF draws by cumulative weight in token order: block sums find the block where each running sum
    # passes its target, and only that block is scanned token by token. No mass outside the children happens only
    # through rounding or a coin >= 1: the draw then ignores the rejection.
    reject = tl.where(residual_sum > 0.0, 1, 0) != 0
    residual_target = uniform * tl.where(reject, residual_sum, kept_sum)
    full_target = uniform * kept_sum
    residual_carry = 0.0
    full_carry = 0.0
    residual_first = vocab
    full_first = vocab
    residual_last = tl.full([BLOCK_V], -1, tl.int32)
    full_last = tl.full([BLOCK_V], -1, tl.int32)
    for start in range(0, vocab, BLOCK_V):
        token = start + lanes
        weight = _kept_weight(row_ptr, token, vocab, temperature, top, kth_key, nucleus_key, nucleus_cut)
        rejected = _rejected_in_block(token, start, child_tokens, tokens_ptr, parent_ptr, base, node, size, BLOCK_V)
        residual = tl.where(reject & rejected, 0.0, weight)
        residual_block = tl.sum(residual, 0)
        full_block = tl.sum(weight, 0)
        if tl.where(residual_carry + residual_block > residual_target, residual_first == vocab, False):
            residual_first = _first_above(residual, token, residual_carry, residual_target, vocab)
        if tl.where(full_carry + full_block > full_target, full_first == vocab, False):
            full_first = _first_above(weight, token, full_carry, full_target, vocab)
        residual_carry += residual_block
        full_carry += full_block
        residual_last = tl.maximum(residual_last, tl.where(residual > 0.0, token, -1))
        full_last = tl.maximum(full_last, tl.where(weight > 0.0, token, -1))
    _store_row(
        stats,
        row,
        top,
        kth_key,
        nucleus_key,
        nucleus_cut,
        kept_sum,
        tl.where(residual_first < vocab, residual_first, tl.max(residual_last, 0)),
        tl.where(full_first < vocab, full_first, tl.max(full_last, 0)),
    )


@triton.jit
def posterior_sample_kernel_streamed(
    logits_ptr,  # [B * T, V]
    tokens_ptr,  # [B, T] i64
    parent_ptr,  # [B, T] i64
    temperature_ptr,  # [B] f32
    top_p_ptr,  # [B] f32
    uniforms_ptr,  # [B, P + 1] f32
    searched_ptr,  # [B * T] i32
    partial_ptr,  # [2, B * T, CHUNKS, RADIX] f32
    total_ptr,  # [B * T, CHUNKS] f32
    interval_ptr,  # [2, B * T, 2] i64
    row_max_ptr,  # [B * T] f32
    kth_key_ptr,  # [B * T] i64
    nucleus_key_ptr,  # [B * T] i64
    nucleus_cut_ptr,  # [B * T] i64
    kept_sum_ptr,  # [B * T] f32
    row_bonus_ptr,  # [B * T, 2] i64
    size,
    vocab,
    path_len,
    rows,
    BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr,
    CHUNKS: tl.constexpr,
    RADIX: tl.constexpr,
    ROUNDS: tl.constexpr,
):
    """The searched rows, after the last round: top-p's boundary from the search, then the streamed passes."""
    row = tl.program_id(0).to(tl.int64)
    if tl.load(searched_ptr + row) != 0:
        seq = row // size
        row_ptr = logits_ptr + row * vocab
        temperature = tl.load(temperature_ptr + seq)
        top_p = tl.load(top_p_ptr + seq)
        top = tl.load(row_max_ptr + row)
        kth_key = tl.load(kth_key_ptr + row)
        searched_key, _ = _search_interval(
            partial_ptr, total_ptr, interval_ptr, row, rows, ROUNDS, kth_key, _order_key(top), 1.0 - top_p,
            CHUNKS, RADIX,
        )  # fmt: skip
        survivors_sum = tl.sum(tl.load(total_ptr + row * CHUNKS + tl.arange(0, CHUNKS)), 0)
        nucleus_key, nucleus_cut = _nucleus(
            row_ptr, vocab, temperature, top, kth_key, top_p, searched_key, survivors_sum, BLOCK_V
        )
        stats = (row_max_ptr, kth_key_ptr, nucleus_key_ptr, nucleus_cut_ptr, kept_sum_ptr, row_bonus_ptr)
        _streamed_row(
            row_ptr,
            top,
            kth_key,
            nucleus_key,
            nucleus_cut,
            temperature,
            tl.load(uniforms_ptr + seq * (path_len + 1) + path_len),
            tokens_ptr,
            parent_ptr,
            seq * size,
            row % size,
            size,
            vocab,
            stats,
            row,
            BLOCK_V,
            BLOCK_T,
        )


@triton.jit
def posterior_sample_kernel_rows(
    logits_ptr,  # [B * T, V]
    tokens_ptr,  # [B, T] i64
    parent_ptr,  # [B, T] i64
    temperature_ptr,  # [B] f32
    top_k_ptr,  # [B] i64
    top_p_ptr,  # [B] f32
    uniforms_ptr,  # [B, P + 1] f32
    candidates_ptr,  # [B * T, CANDIDATES] i64: (key << 32) + token of the top-k survivors
    row_max_ptr,  # [B * T] f32
    kth_key_ptr,  # [B * T] i64
    nucleus_key_ptr,  # [B * T] i64
    nucleus_cut_ptr,  # [B * T] i64
    kept_sum_ptr,  # [B * T] f32
    row_bonus_ptr,  # [B * T, 2] i64: (children rejected, children untested)
    searched_ptr,  # [B * T] i32: whether the row is left to the search and streamed launches
    size,
    vocab,
    path_len,
    BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr,
    CANDIDATES: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    seq = row // size
    node = row % size
    base = seq * size
    row_ptr = logits_ptr + row * vocab
    temperature = tl.load(temperature_ptr + seq)
    top_k = tl.load(top_k_ptr + seq)
    top_p = tl.load(top_p_ptr + seq)
    uniform = tl.load(uniforms_ptr + seq * (path_len + 1) + path_len)
    stats = (row_max_ptr, kth_key_ptr, nucleus_key_ptr, nucleus_cut_ptr, kept_sum_ptr, row_bonus_ptr)

    top = _row_max(row_ptr, vocab, temperature, BLOCK_V)
    kth_key = _top_k_key(row_ptr, vocab, temperature, top_k, BLOCK_V)
    top_k_active = (top_k > 0) & (top_k < vocab)
    warped = top_k_active | (tl.where(top_p < 1.0, 1, 0) != 0)
    count = CANDIDATES + 1
    if warped & (top_k_active | (vocab <= CANDIDATES)):
        count = _gather_survivors(
            row_ptr, vocab, temperature, kth_key, candidates_ptr + row * CANDIDATES, CANDIDATES, BLOCK_V
        )
    if count <= CANDIDATES:
        _candidate_row(
            candidates_ptr + row * CANDIDATES,
            count,
            top,
            kth_key,
            top_p,
            uniform,
            tokens_ptr,
            parent_ptr,
            base,
            node,
            size,
            vocab,
            stats,
            row,
            CANDIDATES,
        )
    searched = (count > CANDIDATES) & (tl.where((top_p > 0.0) & (top_p < 1.0), 1, 0) != 0)
    if searched:
        # Top-p's boundary among too many survivors to sort: the search launches find it, side by side in chunks of
        # the row, and the streamed launch finishes the row from its max and top-k key.
        tl.store(row_max_ptr + row, top)
        tl.store(kth_key_ptr + row, kth_key)
    elif count > CANDIDATES:
        # Not searched: top-p keeps every token or (top_p <= 0) the last alone; neither reads the key or the sum.
        nucleus_key, nucleus_cut = _nucleus(
            row_ptr, vocab, temperature, top, kth_key, top_p, kth_key, tl.full([], 1.0, tl.float32), BLOCK_V
        )
        _streamed_row(
            row_ptr,
            top,
            kth_key,
            nucleus_key,
            nucleus_cut,
            temperature,
            uniform,
            tokens_ptr,
            parent_ptr,
            base,
            node,
            size,
            vocab,
            stats,
            row,
            BLOCK_V,
            BLOCK_T,
        )
    tl.store(searched_ptr + row, searched.to(tl.int32))


@triton.jit
def posterior_sample_kernel_walk(
    logits_ptr,  # [B * T, V]
    tokens_ptr,  # [B, T] i64
    parent_ptr,  # [B, T] i64
    temperature_ptr,  # [B] f32
    uniforms_ptr,  # [B, P + 1] f32
    row_max_ptr,  # [B * T] f32
    kth_key_ptr,  # [B * T] i64
    nucleus_key_ptr,  # [B * T] i64
    nucleus_cut_ptr,  # [B * T] i64
    kept_sum_ptr,  # [B * T] f32
    row_bonus_ptr,  # [B * T, 2] i64
    accept_len_ptr,  # [B] i64
    accept_path_ptr,  # [B, P] i64
    emitted_ptr,  # [B, P] i64
    bonus_ptr,  # [B] i64
    size,
    vocab,
    steps,
    path_len,
    BLOCK_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    base = seq * size
    nodes = tl.arange(0, BLOCK_T)
    in_tree = nodes < size
    parent = tl.load(parent_ptr + base + nodes, mask=in_tree, other=-1)
    token = tl.load(tokens_ptr + base + nodes, mask=in_tree, other=-1)
    linked = in_tree & (parent >= 0) & (parent < nodes)
    # A draft repeating an earlier sibling's token adds no mass: that token was already offered.
    earlier_twin = (
        linked[None, :]
        & (parent[:, None] == parent[None, :])
        & (token[:, None] == token[None, :])
        & (nodes[None, :] < nodes[:, None])
    )
    fresh = linked & (token >= 0) & (token < vocab) & (tl.max(earlier_twin.to(tl.int32), 1) == 0)
    temperature = tl.load(temperature_ptr + seq)

    slots = tl.arange(0, BLOCK_P)
    path = tl.where(slots == 0, 0, -1).to(tl.int64)
    emitted = tl.full([BLOCK_P], -1, dtype=tl.int64)
    current = tl.zeros([], dtype=tl.int64)
    accept_len = tl.zeros([], dtype=tl.int64)
    walking = tl.full([], 1, tl.int1)
    for depth in range(steps):
        # The children of the current node, in index order; the first whose cumulative mass passes the coin wins.
        at = base + current
        offered = linked & (parent == current) & walking
        scores = _scores(logits_ptr + at * vocab, token, offered & fresh, temperature)
        kept = _kept(
            _order_key(scores),
            token,
            tl.load(kth_key_ptr + at),
            tl.load(nucleus_key_ptr + at),
            tl.load(nucleus_cut_ptr + at),
        )
        prob = tl.math.div_rn(_weight(scores, tl.load(row_max_ptr + at)), tl.load(kept_sum_ptr + at))
        mass = tl.where(offered & fresh & kept, prob, 0.0)
        coin = tl.load(uniforms_ptr + seq * (path_len + 1) + depth)
        child = tl.min(tl.where(tl.cumsum(mass, 0) > coin, tl.where(offered, nodes, BLOCK_T), BLOCK_T), 0)
        walking = walking & (child < BLOCK_T)
        current = tl.where(walking, child, current)
        accept_len += walking.to(tl.int64)
        path = tl.where(walking & (slots == depth + 1), current, path)
        emitted = tl.where(walking & (slots == depth), tl.sum(tl.where(nodes == current, token, 0), 0), emitted)

    # A walk that stopped rejected the children of its last node; one that ran out of depth never tested them.
    bonus = tl.load(row_bonus_ptr + 2 * (base + current) + walking.to(tl.int64))
    emitted = tl.where(slots == accept_len, bonus, emitted)
    store_path(accept_path_ptr, emitted_ptr, seq, path, emitted, path_len, BLOCK_P)
    tl.store(accept_len_ptr + seq, accept_len)
    tl.store(bonus_ptr + seq, bonus)


def _search_chunks(rows: int, vocab: int, block_v: int) -> int:
    """Chunks per row for the top-p search rounds: enough programs for the GPU, none without a block of tokens."""
    wanted = max(1, min(_SEARCH_TARGET_PROGRAMS // rows, triton.cdiv(vocab, block_v), _MAX_SEARCH_CHUNKS))
    return 1 << (wanted.bit_length() - 1)


def posterior_sample_triton(
    tree_tokens: torch.Tensor,
    tree_parent: torch.Tensor,
    target_logits: torch.Tensor,
    max_depth: int,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniforms: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the row and walk kernels; ``out`` takes preallocated ``(accept_len, accept_path, emitted, bonus)``."""
    batch, size, vocab = target_logits.shape
    out = new_outputs(tree_tokens, max_depth) if out is None else out
    check_outputs("posterior_sample", tree_tokens, max_depth, out)
    accept_len, accept_path, emitted, bonus = out
    rows = batch * size
    stats = {
        "row_max_ptr": target_logits.new_empty(rows, dtype=torch.float32),
        "kth_key_ptr": tree_tokens.new_empty(rows),
        "nucleus_key_ptr": tree_tokens.new_empty(rows),
        "nucleus_cut_ptr": tree_tokens.new_empty(rows),
        "kept_sum_ptr": target_logits.new_empty(rows, dtype=torch.float32),
        "row_bonus_ptr": tree_tokens.new_empty((rows, 2)),
    }
    block_t = triton.next_power_of_2(size)
    block_v = min(_MAX_BLOCK_V, triton.next_power_of_2(vocab))
    candidates = min(_MAX_CANDIDATES, triton.next_power_of_2(vocab))
    searched = tree_tokens.new_empty(rows, dtype=torch.int32)
    # What the rows, streamed and walk launches all read.
    tree = {
        "logits_ptr": target_logits,
        "tokens_ptr": tree_tokens,
        "parent_ptr": tree_parent,
        "temperature_ptr": temperature,
        "uniforms_ptr": uniforms,
        "size": size,
        "vocab": vocab,
        "path_len": max_depth + 2,
    }
    posterior_sample_kernel_rows[(rows,)](
        **tree,
        top_k_ptr=top_k,
        top_p_ptr=top_p,
        candidates_ptr=tree_tokens.new_empty((rows, candidates)),
        **stats,
        searched_ptr=searched,
        BLOCK_V=block_v,
        BLOCK_T=block_t,
        CANDIDATES=candidates,
        num_warps=8,
    )
    search_block_v = min(_MAX_SEARCH_BLOCK_V, block_v)
    chunks = _search_chunks(rows, vocab, search_block_v)
    search = {
        "partial_ptr": target_logits.new_empty((2, rows, chunks, _RADIX), dtype=torch.float32),
        "total_ptr": target_logits.new_empty((rows, chunks), dtype=torch.float32),
        "interval_ptr": tree_tokens.new_empty((2, rows, 2)),
    }
    for search_round in range(_ROUNDS):
        posterior_sample_kernel_search[(rows, chunks)](
            logits_ptr=target_logits,
            temperature_ptr=temperature,
            top_p_ptr=top_p,
            row_max_ptr=stats["row_max_ptr"],
            kth_key_ptr=stats["kth_key_ptr"],
            searched_ptr=searched,
            **search,
            size=size,
            vocab=vocab,
            rows=rows,
            chunk_len=triton.cdiv(triton.cdiv(vocab, chunks), search_block_v) * search_block_v,
            search_round=search_round,
            BLOCK_V=search_block_v,
            CHUNKS=chunks,
            RADIX=_RADIX,
            num_warps=8,
        )
    posterior_sample_kernel_streamed[(rows,)](
        **tree,
        top_p_ptr=top_p,
        searched_ptr=searched,
        **search,
        **stats,
        rows=rows,
        BLOCK_V=block_v,
        BLOCK_T=block_t,
        CHUNKS=chunks,
        RADIX=_RADIX,
        ROUNDS=_ROUNDS,
        num_warps=8,
    )
    posterior_sample_kernel_walk[(batch,)](
        **tree,
        **stats,
        accept_len_ptr=accept_len,
        accept_path_ptr=accept_path,
        emitted_ptr=emitted,
        bonus_ptr=bonus,
        # A walk moves to a larger index at every step, so it never takes more than size - 1 steps.
        steps=min(max_depth + 1, size - 1),
        BLOCK_T=block_t,
        # No path holds more than `size` nodes, nor emits more than `size` tokens: later slots are only padding.
        BLOCK_P=triton.next_power_of_2(min(max_depth + 2, size)),
    )
    return accept_len, accept_path, emitted, bonus
