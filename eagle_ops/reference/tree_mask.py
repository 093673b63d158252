"""Eager definition of `tree_mask`: walk every node's parents, at most `max_depth` steps."""

from __future__ import annotations

import torch


def tree_mask_reference(tree_parent: torch.Tensor, max_depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask[b, i, j]``: j is i or one of its ``max_depth`` nearest ancestors; ``depth[b, i]``: steps walked.

    A parent outside ``[0, i)`` at node ``i`` is malformed and means "no parent": the node is a root of its own.
    """
    batch, size = tree_parent.shape
    index = torch.arange(size, device=tree_parent.device)
    parent = torch.where((tree_parent >= 0) & (tree_parent < index), tree_parent, -1)
    node = index.expand(batch, size)  # where each row's walk is; -1 once it went past a root
    mask = node[:, :, None] == index
    depth = torch.zeros_like(tree_parent)
    # Every step moves to a smaller index, so no walk can take more than size - 1 steps.
    for _ in range(min(max_depth, size - 1)):
        node = torch.where(node >= 0, parent.gather(1, node.clamp(min=0)), -1)
        depth += node >= 0
        mask |= node[:, :, None] == index
    return mask, depth
