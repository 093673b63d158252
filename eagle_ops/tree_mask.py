"""`tree_mask`: the verify attention mask (ancestors and self) and the depth of every draft tree node."""

from __future__ import annotations

import torch

from eagle_ops._checks import INDEX_DTYPES, Signature
from eagle_ops._library import define_op
from eagle_ops.lowering.tree_mask import tree_mask_triton
from eagle_ops.reference.tree_mask import tree_mask_reference


def _validate(tree_parent: object, max_depth: object) -> None:
    check = Signature("tree_mask")
    check.tensor("tree_parent", tree_parent, "B T", INDEX_DTYPES)
    check.nonempty()
    check.positive("max_depth", max_depth)


def _fake(tree_parent: torch.Tensor, max_depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, size = tree_parent.shape
    return tree_parent.new_empty((batch, size, size), dtype=torch.bool), tree_parent.new_empty((batch, size))


define_op(
    "tree_mask",
    "(Tensor tree_parent, int max_depth) -> (Tensor mask, Tensor depth)",
    validate=_validate,
    fake=_fake,
    reference=tree_mask_reference,
    lowering=tree_mask_triton,
)


def tree_mask(tree_parent: torch.Tensor, max_depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestor mask and depth of every node of a batch of draft trees.

    Args:
        tree_parent: ``[B, T]`` int64, each node's parent as a tree index, ``-1`` at the root (node 0).
        max_depth: the largest depth a node can have (``D + 1`` in the step); no walk up the tree takes more
            steps than this.

    Returns:
        ``mask``: ``[B, T, T]`` bool, ``mask[b, i, j]`` is true when ``j`` is ``i`` or an ancestor of ``i``.
        ``depth``: ``[B, T]`` int64, the number of edges from the node up to its root (the root is at depth 0).

    A parent outside ``[0, i)`` at node ``i`` (not before the node, below ``-1``, or ``-1`` at a node other than
    0) is malformed and read as "no parent": the node is a root of its own, at depth 0. A node deeper than
    ``max_depth`` gets depth ``max_depth``, and its row holds only its ``max_depth`` nearest ancestors.
    """
    return torch.ops.eagle_ops.tree_mask(tree_parent, max_depth)
