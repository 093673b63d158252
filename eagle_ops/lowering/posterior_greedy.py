"""Triton lowering of `posterior_greedy`.

Two launches: a parallel argmax over every ``(sequence, node)`` row of the logits, with the vocabulary split
across programs when there are few rows, writing one ``(max, argmax)`` partial per split; then one program per
sequence that reduces the partials it needs and walks its tree.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eagle_ops._checks import INDEX_DTYPES, Signature

# Enough programs to keep every SM of an H100/H200 (132) busy with a few programs each.
_TARGET_PROGRAMS = 1024
_MAX_BLOCK_V = 1024


@triton.jit
def posterior_greedy_kernel_argmax(
    logits_ptr,  # [B * T, V]
    best_value_ptr,  # [B * T, splits] f32
    best_index_ptr,  # [B * T, splits] i64
    vocab,
    chunk,
    splits,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    start = split * chunk
    lanes = tl.arange(0, BLOCK_V)
    # Per lane, the largest value seen and where it was first seen; NaN ranks as -inf, masked lanes are -inf.
    best = tl.full([BLOCK_V], float("-inf"), tl.float32)
    best_at = start + lanes
    for offset in range(start, start + chunk, BLOCK_V):
        token = offset + lanes
        x = tl.load(logits_ptr + row * vocab + token, mask=token < vocab, other=float("-inf")).to(tl.float32)
        better = x > best  # false for NaN, and strict so that a lane keeps its first maximum
        best = tl.where(better, x, best)
        best_at = tl.where(better, token, best_at)
    top = tl.max(best, 0)
    # A chunk never starts past the vocabulary, so even an all -inf chunk answers a real token (its first).
    first = tl.min(tl.where(best == top, best_at, start + chunk), 0)
    tl.store(best_value_ptr + row * splits + split, top)
    tl.store(best_index_ptr + row * splits + split, first.to(tl.int64))


@triton.jit
def _target_choice(best_value_ptr, best_index_ptr, rows, mask, splits, BLOCK_S: tl.constexpr):
    """Argmax of the given rows from their per-split partials; ties go to the earlier split (smaller ids)."""
    parts = tl.arange(0, BLOCK_S)
    cells = rows[:, None] * splits + parts[None, :]
    loaded = mask[:, None] & (parts < splits)[None, :]
    value = tl.load(best_value_ptr + cells, mask=loaded, other=float("-inf"))
    index = tl.load(best_index_ptr + cells, mask=loaded, other=2**62)
    top = tl.max(value, 1)
    return tl.min(tl.where(value == top[:, None], index, 2**62), 1)


@triton.jit
def posterior_greedy_kernel_walk(
    tokens_ptr,  # [B, T] i64
    parent_ptr,  # [B, T] i64
    best_value_ptr,  # [B * T, splits] f32
    best_index_ptr,  # [B * T, splits] i64
    accept_len_ptr,  # [B] i64
    accept_path_ptr,  # [B, P] i64
    emitted_ptr,  # [B, P] i64
    bonus_ptr,  # [B] i64
    size,
    splits,
    steps,
    path_len,
    BLOCK_T: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    base = seq * size
    nodes = tl.arange(0, BLOCK_T)
    in_tree = nodes < size
    # The whole tree in registers: every walk below reads it with gathers, never with dependent loads.
    parent = tl.load(parent_ptr + base + nodes, mask=in_tree, other=-1)
    token = tl.load(tokens_ptr + base + nodes, mask=in_tree, other=-1)
    choice = _target_choice(best_value_ptr, best_index_ptr, base + nodes, in_tree, splits, BLOCK_S)
    # A node's step up is sound when its parent lies in [0, own index) and it is the parent's choice; a malformed
    # parent leads nowhere (-1). The root needs no step.
    linked = in_tree & (parent >= 0) & (parent < nodes)
    up = tl.where(linked, parent, -1).to(tl.int32)
    parent_choice = tl.gather(choice, tl.maximum(up, 0), 0)
    step_ok = (linked & (token == parent_choice)).to(tl.int32)

    # Walk every node up towards the root, at most `steps` steps: it is a candidate when it reaches the root and
    # every step on the way is sound.
    at = tl.where(in_tree, nodes, -1)  # where each node's walk is; -1 once it met a malformed parent
    path_matches = in_tree
    depth = tl.zeros([BLOCK_T], dtype=tl.int64)
    for _ in range(steps):
        climbing = at > 0
        here = tl.maximum(at, 0)
        path_matches = path_matches & (~climbing | (tl.gather(step_ok, here, 0) != 0))
        depth += climbing.to(tl.int64)
        at = tl.where(climbing, tl.gather(up, here, 0), at)
    score = tl.where(path_matches & (at == 0), depth, -1)
    accept_len = tl.max(score, 0)
    # The root is always a candidate, so `accepted` is a real node; ties go to the smaller index.
    accepted = tl.min(tl.where(score == accept_len, nodes, BLOCK_T), 0).to(tl.int64)
    bonus = tl.sum(tl.where(nodes == accepted, choice, 0), 0)

    # Climb from the accepted node back to the root, filling the path from its end.
    slots = tl.arange(0, BLOCK_P)
    path = tl.full([BLOCK_P], -1, dtype=tl.int64)
    emitted = tl.where(slots == accept_len, bonus, -1)
    node = accepted
    for step in range(steps + 1):
        slot = accept_len - step
        path = tl.where(slots == slot, node, path)
        at_node = nodes == node
        emitted = tl.where(slots == slot - 1, tl.sum(tl.where(at_node, token, 0), 0), emitted)
        node = tl.where(slot > 0, tl.sum(tl.where(at_node, parent, 0), 0), node)
    store_path(accept_path_ptr, emitted_ptr, seq, path, emitted, path_len, BLOCK_P)
    tl.store(accept_len_ptr + seq, accept_len)
    tl.store(bonus_ptr + seq, bonus)


@triton.jit
def store_path(accept_path_ptr, emitted_ptr, seq, path, emitted, path_len, BLOCK_P: tl.constexpr):
    """Store the first BLOCK_P slots of a sequence's path and emitted tokens, then -1 in the slots after them."""
    slots = tl.arange(0, BLOCK_P)
    row = seq * path_len
    tl.store(accept_path_ptr + row + slots, path, mask=slots < path_len)
    tl.store(emitted_ptr + row + slots, emitted, mask=slots < path_len)
    padding = tl.full([BLOCK_P], -1, dtype=tl.int64)
    for start in range(BLOCK_P, path_len, BLOCK_P):
        tl.store(accept_path_ptr + row + start + slots, padding, mask=start + slots < path_len)
        tl.store(emitted_ptr + row + start + slots, padding, mask=start + slots < path_len)


def argmax_split(rows: int, vocab: int) -> tuple[int, int, int]:
    """``(block, chunk, splits)``: split each row's vocabulary when there are too few rows to fill the GPU.

    ``chunk`` is a multiple of ``block`` and every split starts inside the vocabulary.
    """
    block = min(_MAX_BLOCK_V, triton.next_power_of_2(vocab))
    splits = min(triton.cdiv(_TARGET_PROGRAMS, rows), triton.cdiv(vocab, block))
    chunk = triton.cdiv(triton.cdiv(vocab, splits), block) * block
    return block, chunk, triton.cdiv(vocab, chunk)


def check_outputs(op: str, tree_tokens: torch.Tensor, max_depth: int, out: tuple[torch.Tensor, ...]) -> None:
    """Check preallocated ``(accept_len, accept_path, emitted, bonus)`` of a posterior op."""
    check = Signature(op)
    check.tensor("tree_tokens", tree_tokens, "B T", INDEX_DTYPES)
    check.tensor("accept_len", out[0], "B", INDEX_DTYPES)
    check.tensor("accept_path", out[1], f"B {max_depth + 2}", INDEX_DTYPES)
    check.tensor("emitted", out[2], f"B {max_depth + 2}", INDEX_DTYPES)
    check.tensor("bonus", out[3], "B", INDEX_DTYPES)


def new_outputs(tree_tokens: torch.Tensor, max_depth: int) -> tuple[torch.Tensor, ...]:
    """Uninitialised ``(accept_len, accept_path, emitted, bonus)`` for a batch of trees."""
    batch = tree_tokens.shape[0]
    path = tree_tokens.new_empty((batch, max_depth + 2))
    return tree_tokens.new_empty(batch), path, torch.empty_like(path), tree_tokens.new_empty(batch)


def posterior_greedy_triton(
    tree_tokens: torch.Tensor,
    tree_parent: torch.Tensor,
    target_logits: torch.Tensor,
    max_depth: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the argmax and walk kernels; ``out`` takes preallocated ``(accept_len, accept_path, emitted, bonus)``."""
    batch, size, vocab = target_logits.shape
    out = new_outputs(tree_tokens, max_depth) if out is None else out
    check_outputs("posterior_greedy", tree_tokens, max_depth, out)
    accept_len, accept_path, emitted, bonus = out
    block, chunk, splits = argmax_split(batch * size, vocab)
    best_value = target_logits.new_empty((batch * size, splits), dtype=torch.float32)
    best_index = tree_tokens.new_empty((batch * size, splits))
    posterior_greedy_kernel_argmax[(batch * size, splits)](
        logits_ptr=target_logits,
        best_value_ptr=best_value,
        best_index_ptr=best_index,
        vocab=vocab,
        chunk=chunk,
        splits=splits,
        BLOCK_V=block,
    )
    posterior_greedy_kernel_walk[(batch,)](
        tokens_ptr=tree_tokens,
        parent_ptr=tree_parent,
        best_value_ptr=best_value,
        best_index_ptr=best_index,
        accept_len_ptr=accept_len,
        accept_path_ptr=accept_path,
        emitted_ptr=emitted,
        bonus_ptr=bonus,
        size=size,
        splits=splits,
        # A walk moves to a smaller index at every step, so it never takes more than size - 1 steps.
        steps=min(max_depth + 1, size - 1),
        path_len=max_depth + 2,
        BLOCK_T=triton.next_power_of_2(size),
        BLOCK_S=triton.next_power_of_2(splits),
        # No path holds more than `size` nodes, nor emits more than `size` tokens: later slots are only padding.
        BLOCK_P=triton.next_power_of_2(min(max_depth + 2, size)),
    )
    return accept_len, accept_path, emitted, bonus
