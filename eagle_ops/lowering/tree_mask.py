"""Triton lowering of `tree_mask`: one program per (sequence, row block, column block) walks its rows' parents."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from eagle_ops._checks import INDEX_DTYPES, Signature


@triton.jit
def tree_mask_kernel(
    parent_ptr,  # [B, T] i64
    mask_ptr,  # [B, T, T] bool
    depth_ptr,  # [B, T] i64
    size,
    steps,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(2) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    in_tree = rows < size
    parents = parent_ptr + seq * size
    node = rows.to(tl.int64)  # where each row's walk is; -1 once it went past a root
    depth = tl.zeros([BLOCK_ROWS], dtype=tl.int64)
    seen = rows[:, None] == cols[None, :]
    for _ in range(steps):
        parent = tl.load(parents + node, mask=in_tree & (node >= 0), other=-1)
        # A parent outside [0, own index) is malformed: the walk ends there, as at a root.
        has_parent = (parent >= 0) & (parent < node)
        node = tl.where(has_parent, parent, -1)
        depth += has_parent.to(tl.int64)
        seen = seen | (node[:, None] == cols[None, :])
    cells = (seq * size + rows[:, None]) * size + cols[None, :]
    tl.store(mask_ptr + cells, seen, mask=in_tree[:, None] & (cols < size)[None, :])
    tl.store(depth_ptr + seq * size + rows, depth, mask=in_tree & (tl.program_id(2) == 0))


def _block_sizes(size: int) -> tuple[int, int]:
    """(rows, columns) of one program's mask tile: bounded, so that a large T still fits in registers."""
    block = triton.next_power_of_2(size)
    return min(block, 16), min(block, 128)


def _check_out(tree_parent: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Preallocated outputs must fit exactly: the kernel writes B * T * T mask cells and B * T depths."""
    check = Signature("tree_mask")
    check.tensor("tree_parent", tree_parent, "B T", INDEX_DTYPES)
    check.tensor("mask", out[0], "B T T", (torch.bool,))
    check.tensor("depth", out[1], "B T", INDEX_DTYPES)


def tree_mask_triton(
    tree_parent: torch.Tensor, max_depth: int, out: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch :func:`tree_mask_kernel`; ``out`` takes preallocated ``(mask, depth)``."""
    batch, size = tree_parent.shape
    if out is None:
        out = (tree_parent.new_empty((batch, size, size), dtype=torch.bool), torch.empty_like(tree_parent))
    else:
        _check_out(tree_parent, out)
    mask, depth = out
    block_rows, block_cols = _block_sizes(size)
    grid = (batch, triton.cdiv(size, block_rows), triton.cdiv(size, block_cols))
    tree_mask_kernel[grid](
        parent_ptr=tree_parent,
        mask_ptr=mask,
        depth_ptr=depth,
        size=size,
        # Every step moves to a smaller index, so no walk can take more than size - 1 steps.
        steps=min(max_depth, size - 1),
        BLOCK_ROWS=block_rows,
        BLOCK_COLS=block_cols,
    )
    return mask, depth
