"""Triton lowering of `posterior_sample`.

Two launches. The first has one program per ``(sequence, node)`` row and, in passes over the row's logits, finds
all that the walk may need from it: the largest score, the top-k threshold and the top-p boundary (exact
radix-16 searches over the scores' order keys, 8 passes each, so no sort), the kept mass, and the bonus token the
row gives if the walk stops there, with its children rejected and without. The second has one program per
sequence: it walks the tree with one coin per depth, computing each offered child's probability from its
parent's row statistics, and picks the bonus of the row it stops at.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eagle_ops.lowering.posterior_greedy import check_outputs, new_outputs, store_path

# Float comparisons appear only as `tl.where` conditions: the Triton interpreter (CPU tests) gives them float data,
# which its `&` and `|` reject.

# Lanes of one pass over a row: 4 per thread with 8 warps; a search round's [block, radix] tile is 64 per thread.
_MAX_BLOCK_V = 1024
_RADIX = 16
# Every fp32 order key lies in [_order_key(-inf), _order_key(+inf)], fewer than 2**32 = _RADIX ** _ROUNDS keys.
_ROUNDS = 8
_NEG_INF_KEY = tl.constexpr(-2139095041)  # _order_key(-inf): the smallest key of any score


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
def _row_max(row_ptr, vocab, temperature, BLOCK_V: tl.constexpr):
    lanes = tl.arange(0, BLOCK_V)
    top = tl.full([BLOCK_V], float("-inf"), tl.float32)
    for start in range(0, vocab, BLOCK_V):
        top = tl.maximum(top, _scores(row_ptr, start + lanes, start + lanes < vocab, temperature))
    return tl.max(top, 0)


@triton.jit
def _top_k_key(
    row_ptr, vocab, temperature, top_k, top_key, BLOCK_V: tl.constexpr, RADIX: tl.constexpr, ROUNDS: tl.constexpr
):
    """The order key of the k-th largest score, or -inf's key when top-k keeps every token.

    A search for the largest key with at least k scores at or above it; each round counts the scores above RADIX
    evenly spaced keys of the remaining range and keeps the sub-range between the last one that has enough and
    the next."""
    lanes = tl.arange(0, BLOCK_V)
    digits = tl.arange(0, RADIX).to(tl.int64)
    low = tl.full([], _NEG_INF_KEY, tl.int64)
    high = top_key
    for _ in range(tl.where((top_k > 0) & (top_k < vocab), ROUNDS, 0)):
        step = (high - low) // RADIX + 1
        thresholds = low + digits * step
        at_or_above = tl.zeros([RADIX], dtype=tl.int64)
        for start in range(0, vocab, BLOCK_V):
            token = start + lanes
            key = _order_key(_scores(row_ptr, token, token < vocab, temperature))
            counted = (key[:, None] >= thresholds[None, :]) & (token < vocab)[:, None]
            at_or_above += tl.sum(counted.to(tl.int64), 0)
        low += tl.max(tl.where(at_or_above >= top_k, digits, 0), 0) * step
        high = tl.minimum(low + step - 1, high)
    return low


@triton.jit
def _top_p_boundary(
    row_ptr,
    vocab,
    temperature,
    top,
    kth_key,
    top_p,
    BLOCK_V: tl.constexpr,
    RADIX: tl.constexpr,
    ROUNDS: tl.constexpr,
):
    """``(nucleus_key, nucleus_cut)`` for :func:`_kept`; ``(-inf's key, 0)`` when top-p keeps every token.

    Ascending (score, token) order, the cumulative probability of the top-k survivors: the dropped tokens are
    those at or below ``1 - top_p``, a prefix. A search like :func:`_top_k_key` finds the smallest key whose
    cumulative probability passes ``1 - top_p``; among the scores equal to it, the first ``n_drop`` (by token)
    are dropped, with ``n_drop`` the number of them whose own cumulative probability is still <= ``1 - top_p``.
    """
    lanes = tl.arange(0, BLOCK_V)
    digits = tl.arange(0, RADIX).to(tl.int64)
    top_key = _order_key(top)
    active = top_p < 1.0  # false for NaN
    drop_mass = 1.0 - top_p
    active_vocab = tl.where(active, vocab, 0)

    survivors_sum = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, active_vocab, BLOCK_V):
        token = start + lanes
        scores = _scores(row_ptr, token, token < vocab, temperature)
        survivors = (token < vocab) & (_order_key(scores) >= kth_key)
        survivors_sum += tl.where(survivors, _weight(scores, top), 0.0)
    survivors_sum = tl.sum(survivors_sum, 0)

    # Keys above the largest score stand for "no key passes": top-p then keeps the last token alone.
    low = kth_key
    high = top_key + 1
    for _ in range(tl.where(active, tl.where(top_p > 0.0, ROUNDS, 0), 0)):
        step = (high - low) // RADIX + 1
        thresholds = low + digits * step
        at_or_below = tl.zeros([RADIX], dtype=tl.float32)
        for start in range(0, vocab, BLOCK_V):
            token = start + lanes
            scores = _scores(row_ptr, token, token < vocab, temperature)
            key = _order_key(scores)
            prob = tl.where(
                (token < vocab) & (key >= kth_key), tl.math.div_rn(_weight(scores, top), survivors_sum), 0.0
            )
            at_or_below += tl.sum(tl.where(key[:, None] <= thresholds[None, :], prob[:, None], 0.0), 0)
        first = tl.minimum(
            tl.min(tl.where(at_or_below > drop_mass, digits, RADIX), 0),
            tl.min(tl.where(thresholds > top_key, digits, RADIX), 0),
        )
        next_low = tl.where(first == 0, low, low + (first - 1) * step + 1)
        high = tl.where(first == RADIX, high, tl.minimum(low + first * step, high))
        low = next_low
    last_alone = tl.where(top_p <= 0.0, 1, low > top_key) != 0
    nucleus_key = tl.where(last_alone, top_key, low)

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
def _is_rejected(token, child_tokens, start, BLOCK_V: tl.constexpr):
    """Whether each token of a block is one of ``child_tokens``; only blocks that hold a child compare all pairs."""
    if tl.sum(((child_tokens >= start) & (child_tokens < start + BLOCK_V)).to(tl.int32), 0) > 0:
        rejected = tl.max((token[:, None] == child_tokens[None, :]).to(tl.int32), 1) > 0
    else:
        rejected = token < 0
    return rejected


@triton.jit
def posterior_sample_kernel_rows(
    logits_ptr,  # [B * T, V]
    tokens_ptr,  # [B, T] i64
    parent_ptr,  # [B, T] i64
    temperature_ptr,  # [B] f32
    top_k_ptr,  # [B] i64
    top_p_ptr,  # [B] f32
    uniforms_ptr,  # [B, P + 1] f32
    row_max_ptr,  # [B * T] f32
    kth_key_ptr,  # [B * T] i64
    nucleus_key_ptr,  # [B * T] i64
    nucleus_cut_ptr,  # [B * T] i64
    kept_sum_ptr,  # [B * T] f32
    row_bonus_ptr,  # [B * T, 2] i64: (children rejected, children untested)
    size,
    vocab,
    path_len,
    BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr,
    RADIX: tl.constexpr,
    ROUNDS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    seq = row // size
    node = row % size
    row_ptr = logits_ptr + row * vocab
    temperature = tl.load(temperature_ptr + seq)
    lanes = tl.arange(0, BLOCK_V)

    top = _row_max(row_ptr, vocab, temperature, BLOCK_V)
    kth_key = _top_k_key(row_ptr, vocab, temperature, tl.load(top_k_ptr + seq), _order_key(top), BLOCK_V, RADIX, ROUNDS)
    nucleus_key, nucleus_cut = _top_p_boundary(
        row_ptr, vocab, temperature, top, kth_key, tl.load(top_p_ptr + seq), BLOCK_V, RADIX, ROUNDS
    )

    # The tokens of this node's children: the ones a stop here has rejected.
    nodes = tl.arange(0, BLOCK_T)
    parent = tl.load(parent_ptr + seq * size + nodes, mask=nodes < size, other=-1)
    child_tokens = tl.load(tokens_ptr + seq * size + nodes, mask=nodes < size, other=-1)
    child_tokens = tl.where((parent == node) & (node < nodes) & (nodes < size), child_tokens, -1)

    kept_sum = tl.zeros([BLOCK_V], dtype=tl.float32)
    residual_sum = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, vocab, BLOCK_V):
        token = start + lanes
        scores = _scores(row_ptr, token, token < vocab, temperature)
        kept = (token < vocab) & _kept(_order_key(scores), token, kth_key, nucleus_key, nucleus_cut)
        weight = tl.where(kept, _weight(scores, top), 0.0)
        kept_sum += weight
        residual_sum += tl.where(_is_rejected(token, child_tokens, start, BLOCK_V), 0.0, weight)
    kept_sum = tl.sum(kept_sum, 0)
    residual_sum = tl.sum(residual_sum, 0)

    # Inverse CDF draws, by cumulative weight in token order. No mass outside the children happens only through
    # rounding or a coin >= 1: the draw then ignores the rejection.
    reject = residual_sum > 0.0
    uniform = tl.load(uniforms_ptr + seq * (path_len + 1) + path_len)
    residual_target = uniform * tl.where(reject, residual_sum, kept_sum)
    full_target = uniform * kept_sum
    residual_carry = 0.0
    full_carry = 0.0
    residual_first = vocab
    full_first = vocab
    residual_last = -1
    full_last = -1
    for start in range(0, vocab, BLOCK_V):
        token = start + lanes
        scores = _scores(row_ptr, token, token < vocab, temperature)
        kept = (token < vocab) & _kept(_order_key(scores), token, kth_key, nucleus_key, nucleus_cut)
        weight = tl.where(kept, _weight(scores, top), 0.0)
        residual = tl.where(reject, tl.where(_is_rejected(token, child_tokens, start, BLOCK_V), 0.0, weight), weight)
        residual_cumulative = residual_carry + tl.cumsum(residual, 0)
        full_cumulative = full_carry + tl.cumsum(weight, 0)
        residual_first = tl.minimum(
            residual_first, tl.min(tl.where(residual_cumulative > residual_target, token, vocab), 0)
        )
        full_first = tl.minimum(full_first, tl.min(tl.where(full_cumulative > full_target, token, vocab), 0))
        residual_last = tl.maximum(residual_last, tl.max(tl.where(residual > 0.0, token, -1), 0))
        full_last = tl.maximum(full_last, tl.max(tl.where(weight > 0.0, token, -1), 0))
        residual_carry = tl.max(residual_cumulative, 0)
        full_carry = tl.max(full_cumulative, 0)

    tl.store(row_max_ptr + row, top)
    tl.store(kth_key_ptr + row, kth_key)
    tl.store(nucleus_key_ptr + row, nucleus_key)
    tl.store(nucleus_cut_ptr + row, nucleus_cut)
    tl.store(kept_sum_ptr + row, kept_sum)
    tl.store(row_bonus_ptr + 2 * row, tl.where(residual_first < vocab, residual_first, residual_last).to(tl.int64))
    tl.store(row_bonus_ptr + 2 * row + 1, tl.where(full_first < vocab, full_first, full_last).to(tl.int64))


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
    posterior_sample_kernel_rows[(rows,)](
        logits_ptr=target_logits,
        tokens_ptr=tree_tokens,
        parent_ptr=tree_parent,
        temperature_ptr=temperature,
        top_k_ptr=top_k,
        top_p_ptr=top_p,
        uniforms_ptr=uniforms,
        **stats,
        size=size,
        vocab=vocab,
        path_len=max_depth + 2,
        BLOCK_V=min(_MAX_BLOCK_V, triton.next_power_of_2(vocab)),
        BLOCK_T=block_t,
        RADIX=_RADIX,
        ROUNDS=_ROUNDS,
        num_warps=8,
    )
    posterior_sample_kernel_walk[(batch,)](
        logits_ptr=target_logits,
        tokens_ptr=tree_tokens,
        parent_ptr=tree_parent,
        temperature_ptr=temperature,
        uniforms_ptr=uniforms,
        **stats,
        accept_len_ptr=accept_len,
        accept_path_ptr=accept_path,
        emitted_ptr=emitted,
        bonus_ptr=bonus,
        size=size,
        vocab=vocab,
        # A walk moves to a larger index at every step, so it never takes more than size - 1 steps.
        steps=min(max_depth + 1, size - 1),
        path_len=max_depth + 2,
        BLOCK_T=block_t,
        # No path holds more than `size` nodes, nor emits more than `size` tokens: later slots are only padding.
        BLOCK_P=triton.next_power_of_2(min(max_depth + 2, size)),
    )
    return accept_len, accept_path, emitted, bonus
