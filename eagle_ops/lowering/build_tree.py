"""Triton lowering of `build_tree`: rank candidates by pairwise counting, then place the chosen ones in flat order.

Stage `rank` (one program per sequence and block of candidates): a candidate is chosen when fewer than `T - 1`
candidates beat it, O(Nc^2) comparisons spread over the blocks. Stage `place` (one program per sequence): a
prefix count of the chosen flags gives every chosen candidate its tree index; a second pass, after a barrier,
looks up the tree index of each one's parent.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eagle_ops._checks import INDEX_DTYPES, Signature


@triton.jit
def _rank_key(scores):
    """NaN ranks as -inf; `==` already ties -0.0 with 0.0."""
    return tl.where(scores != scores, float("-inf"), scores)


@triton.jit
def build_tree_kernel_rank(
    scores_ptr,  # [B, Nc] f32
    chosen_ptr,  # [B, Nc] i32 scratch: 1 where the candidate is among the best T - 1
    candidates,
    picks,
    BLOCK_OWN: tl.constexpr,
    BLOCK_RIVALS: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    own = tl.program_id(1) * BLOCK_OWN + tl.arange(0, BLOCK_OWN)
    row = scores_ptr + seq * candidates
    own_key = _rank_key(tl.load(row + own, mask=own < candidates, other=float("-inf")))
    beaten = tl.zeros([BLOCK_OWN, BLOCK_RIVALS], dtype=tl.int32)
    for start in range(0, candidates, BLOCK_RIVALS):
        rivals = start + tl.arange(0, BLOCK_RIVALS)
        # A rival past the end is -inf with a larger index than any candidate: it never beats one.
        rival_key = _rank_key(tl.load(row + rivals, mask=rivals < candidates, other=float("-inf")))
        higher = rival_key[None, :] > own_key[:, None]
        tie_first = (rival_key[None, :] == own_key[:, None]) & (rivals[None, :] < own[:, None])
        beaten += (higher | tie_first).to(tl.int32)
    rank = tl.sum(beaten, axis=1)
    tl.store(chosen_ptr + seq * candidates + own, (rank < picks).to(tl.int32), mask=own < candidates)


@triton.jit
def build_tree_kernel_place(
    tokens_ptr,  # [B, Nc] i64
    parents_ptr,  # [B, Np] i64
    root_ptr,  # [B] i64
    chosen_ptr,  # [B, Nc] i32 scratch from the rank stage
    node_ptr,  # [B, Nc] i32 scratch: tree index of each chosen candidate, 0 for the others
    tree_tokens_ptr,  # [B, T] i64
    tree_parent_ptr,  # [B, T] i64
    candidates,
    parent_rows,
    width,
    tree_size,
    BLOCK: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    row = seq * candidates
    tree = seq * tree_size
    tl.store(tree_tokens_ptr + tree, tl.load(root_ptr + seq))
    tl.store(tree_parent_ptr + tree, -1)
    placed = 0
    for start in range(0, candidates, BLOCK):
        flat = start + tl.arange(0, BLOCK)
        chosen = tl.load(chosen_ptr + row + flat, mask=flat < candidates, other=0)
        node = tl.where(chosen != 0, placed + tl.cumsum(chosen, axis=0), 0)
        tl.store(node_ptr + row + flat, node, mask=flat < candidates)
        token = tl.load(tokens_ptr + row + flat, mask=chosen != 0)
        tl.store(tree_tokens_ptr + tree + node, token, mask=chosen != 0)
        placed += tl.sum(chosen, axis=0)
    # The parent lookups below read tree indices that other threads of this program stored above.
    tl.debug_barrier()
    for start in range(0, candidates, BLOCK):
        flat = start + tl.arange(0, BLOCK)
        node = tl.load(node_ptr + row + flat, mask=flat < candidates, other=0)
        entry = tl.load(parents_ptr + seq * parent_rows + flat // width, mask=node != 0, other=0)
        parent_flat = entry - 1
        # Only a parent before the candidate can be linked, which also keeps the lookup inside the row.
        linked = (node != 0) & (parent_flat >= 0) & (parent_flat < flat)
        parent_node = tl.load(node_ptr + row + parent_flat, mask=linked, other=0)
        tl.store(tree_parent_ptr + tree + node, parent_node.to(tl.int64), mask=node != 0)


def _rank_blocks(candidates: int) -> tuple[int, int]:
    """(own, rivals) candidates per comparison tile: 64 x 64 int32 counters are 32 registers a thread at 4 warps."""
    block = min(triton.next_power_of_2(candidates), 64)
    return block, block


def _place_block(candidates: int) -> int:
    """Candidates per prefix-count step: one step covers Nc = 710 (K = 10, D = 7)."""
    return min(triton.next_power_of_2(candidates), 1024)


def _check_out(scores: torch.Tensor, tree_size: int, out: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Preallocated outputs must fit exactly: the kernels write B * T tokens and B * T parents."""
    check = Signature("build_tree", T=tree_size)
    check.tensor("scores", scores, "B Nc", (torch.float32,))
    check.tensor("tree_tokens", out[0], "B T", INDEX_DTYPES)
    check.tensor("tree_parent", out[1], "B T", INDEX_DTYPES)


def build_tree_triton(
    scores: torch.Tensor,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    root: torch.Tensor,
    tree_size: int,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the rank and place kernels; ``out`` takes preallocated ``(tree_tokens, tree_parent)``."""
    batch, candidates = scores.shape
    parent_rows = parents.shape[1]
    if out is None:
        out = (tokens.new_empty((batch, tree_size)), tokens.new_empty((batch, tree_size)))
    else:
        _check_out(scores, tree_size, out)
    tree_tokens, tree_parent = out
    chosen, node = torch.empty((2, batch, candidates), dtype=torch.int32, device=scores.device)
    block_own, block_rivals = _rank_blocks(candidates)
    build_tree_kernel_rank[(batch, triton.cdiv(candidates, block_own))](
        scores_ptr=scores,
        chosen_ptr=chosen,
        candidates=candidates,
        picks=tree_size - 1,
        BLOCK_OWN=block_own,
        BLOCK_RIVALS=block_rivals,
    )
    build_tree_kernel_place[(batch,)](
        tokens_ptr=tokens,
        parents_ptr=parents,
        root_ptr=root,
        chosen_ptr=chosen,
        node_ptr=node,
        tree_tokens_ptr=tree_tokens,
        tree_parent_ptr=tree_parent,
        candidates=candidates,
        parent_rows=parent_rows,
        width=candidates // parent_rows,
        tree_size=tree_size,
        BLOCK=_place_block(candidates),
    )
    return tree_tokens, tree_parent
