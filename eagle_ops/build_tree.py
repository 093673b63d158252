"""`build_tree`: the next draft tree, the best `T - 1` expanded candidates in flat order under the new root."""

from __future__ import annotations

import torch

from eagle_ops._checks import INDEX_DTYPES, Signature
from eagle_ops._library import define_op
from eagle_ops.lowering.build_tree import build_tree_triton
from eagle_ops.reference.build_tree import build_tree_reference


def _validate(scores: object, tokens: object, parents: object, root: object, tree_size: object) -> None:
    check = Signature("build_tree")
    check.tensor("scores", scores, "B Nc", (torch.float32,))
    check.tensor("tokens", tokens, "B Nc", INDEX_DTYPES)
    check.tensor("parents", parents, "B Np", INDEX_DTYPES)
    check.tensor("root", root, "B", INDEX_DTYPES)
    check.nonempty()
    candidates, parent_rows = check.sizes["Nc"], check.sizes["Np"]
    # Nc = K + D*K*K and Np = 1 + D*K give Nc = K * Np: one K, and one D, fit both sizes or none does.
    width = candidates // parent_rows
    if width < 1 or candidates != width * parent_rows or (parent_rows - 1) % width != 0:
        raise check.error(
            f"`scores` and `parents` must have Nc = K + D*K*K candidates and Np = 1 + D*K parent rows for some "
            f"K >= 1 and D >= 0, got Nc = {candidates} and Np = {parent_rows}"
        )
    check.positive("tree_size", tree_size, at_most=candidates + 1)


def _fake(
    scores: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, root: torch.Tensor, tree_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = scores.shape[0]
    return tokens.new_empty((batch, tree_size)), tokens.new_empty((batch, tree_size))


define_op(
    "build_tree",
    "(Tensor scores, Tensor tokens, Tensor parents, Tensor root, int tree_size) -> (Tensor tree_tokens, "
    "Tensor tree_parent)",
    validate=_validate,
    fake=_fake,
    reference=build_tree_reference,
    lowering=build_tree_triton,
)


def build_tree(
    scores: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, root: torch.Tensor, tree_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the best ``T - 1`` draft candidates, ordered parent before child, under a new root.

    Args:
        scores: ``[B, Nc]`` float32, cumulative log-probabilities of the candidates: the ``level_scores`` of the
            root expansion (``K``) and of ``D`` further levels (``K * K`` each) concatenated, ``Nc = K + D*K*K``.
        tokens: ``[B, Nc]`` int64, the candidates' tokens (the levels' ``level_tokens``, concatenated alike).
        parents: ``[B, Np]`` int64, ``Np = 1 + D*K``: ``parents[b, r]`` is ``1 +`` the flat index of the
            candidate expanded to make the candidates of row ``r`` (flat indices ``r*K .. r*K + K - 1``), ``0``
            for row 0, the root's. ``K`` is read off the shapes as ``Nc / Np``.
        root: ``[B]`` int64, the new root's token (the bonus token of the step).
        tree_size: ``T``, the tree's node count including the root, ``1 <= T <= Nc + 1``.

    Returns:
        ``tree_tokens``: ``[B, T]`` int64, the root's token, then the chosen candidates' tokens by flat index.
        ``tree_parent``: ``[B, T]`` int64, ``-1`` at the root, else the tree index of the node's parent, always
        smaller than the node's own.

    The chosen candidates are the ``T - 1`` with the highest scores, ties going to the smaller flat index; NaN
    ranks as -inf. A candidate hangs off the tree node of its parent candidate when that parent is chosen too;
    with scores that never grow from parent to child (log-probabilities only add non-positive terms), every
    chosen candidate's parent is chosen, ties included, since a parent's flat index is below its children's.
    For other inputs, a candidate whose parent is not chosen, whose parent entry lies outside ``[1, Nc]``, or
    whose parent is not before it by flat index, hangs off the root (tree index 0).
    """
    return torch.ops.eagle_ops.build_tree(scores, tokens, parents, root, tree_size)
