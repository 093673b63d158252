"""Eager definition of `build_tree`: keep the best `T - 1` draft candidates, in flat order, under the new root."""

from __future__ import annotations

import torch


def build_tree_reference(
    scores: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, root: torch.Tensor, tree_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tree_tokens, tree_parent)``, both ``[B, T]``; see :func:`eagle_ops.build_tree` for the contract.

    NaN scores rank as -inf and -0.0 ties with 0.0. A chosen candidate hangs off the tree node of its parent
    candidate when that parent is chosen too and comes before it; otherwise (root row, parent not chosen, parent
    entry out of range or not before the candidate) it hangs off the root.
    """
    batch, candidates = scores.shape
    width = candidates // parents.shape[1]  # K: the candidates made by expanding one node
    picks = tree_size - 1
    key = torch.where(scores.isnan(), float("-inf"), torch.where(scores == 0, 0.0, scores))
    # A stable descending sort keeps equal keys in flat order: ties go to the smaller flat index.
    best = key.sort(dim=1, descending=True, stable=True).indices[:, :picks]
    chosen = best.sort(dim=1).values  # [B, T - 1] flat indices, in tree order
    nodes = torch.arange(1, tree_size, device=scores.device).expand(batch, picks)
    node_of = torch.zeros_like(tokens).scatter(1, chosen, nodes)  # [B, Nc] tree index, 0 where not chosen
    parent_flat = parents.gather(1, chosen // width) - 1
    linked = (parent_flat >= 0) & (parent_flat < chosen)
    parent_node = torch.where(linked, node_of.gather(1, torch.where(linked, parent_flat, 0)), 0)
    tree_tokens = torch.cat([root[:, None], tokens.gather(1, chosen)], dim=1)
    tree_parent = torch.cat([torch.full_like(root[:, None], -1), parent_node], dim=1)
    return tree_tokens, tree_parent
