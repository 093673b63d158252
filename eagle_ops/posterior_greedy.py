"""`posterior_greedy`: accept the longest draft path the target's argmax agrees with, and the bonus token."""

from __future__ import annotations

import torch

from eagle_ops._checks import FLOAT_DTYPES, INDEX_DTYPES, Signature
from eagle_ops._library import define_op
from eagle_ops.lowering.posterior_greedy import new_outputs, posterior_greedy_triton
from eagle_ops.reference.posterior_greedy import posterior_greedy_reference

OUTPUTS = "(Tensor accept_len, Tensor accept_path, Tensor emitted, Tensor bonus)"


def check_tree(
    op: str, tree_tokens: object, tree_parent: object, target_logits: object, max_depth: object
) -> Signature:
    """Check the arguments both posterior ops share; returns the signature to check further arguments with."""
    check = Signature(op)
    check.tensor("tree_tokens", tree_tokens, "B T", INDEX_DTYPES)
    check.tensor("tree_parent", tree_parent, "B T", INDEX_DTYPES)
    check.tensor("target_logits", target_logits, "B T V", FLOAT_DTYPES)
    check.nonempty()
    check.non_negative("max_depth", max_depth)
    return check


def _validate(tree_tokens: object, tree_parent: object, target_logits: object, max_depth: object) -> None:
    check_tree("posterior_greedy", tree_tokens, tree_parent, target_logits, max_depth)


def _fake(
    tree_tokens: torch.Tensor, tree_parent: torch.Tensor, target_logits: torch.Tensor, max_depth: int
) -> tuple[torch.Tensor, ...]:
    return new_outputs(tree_tokens, max_depth)


define_op(
    "posterior_greedy",
    f"(Tensor tree_tokens, Tensor tree_parent, Tensor target_logits, int max_depth) -> {OUTPUTS}",
    validate=_validate,
    fake=_fake,
    reference=posterior_greedy_reference,
    lowering=posterior_greedy_triton,
)


def posterior_greedy(
    tree_tokens: torch.Tensor, tree_parent: torch.Tensor, target_logits: torch.Tensor, max_depth: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy verification of a batch of draft trees against the target's logits.

    Args:
        tree_tokens: ``[B, T]`` int64, the token of every tree node; node 0 is the root (the last token the
            target produced; never emitted again).
        tree_parent: ``[B, T]`` int64, each node's parent as a tree index, ``-1`` at the root.
        target_logits: ``[B, T, V]`` fp32/fp16/bf16, the target's logits at every tree node.
        max_depth: ``D``, the number of expansion levels after the root expansion: a path holds at most
            ``D + 1`` draft tokens and the path outputs have ``P = D + 2`` slots.

    Returns:
        ``accept_len``: ``[B]`` int64, the number of accepted draft tokens, ``0 .. min(D + 1, T - 1)``.
        ``accept_path``: ``[B, P]`` int64, the tree indices of the accepted path, root first, ``-1`` padded.
        ``emitted``: ``[B, P]`` int64, the accepted draft tokens then the bonus, ``-1`` padded
        (``accept_len + 1`` tokens).
        ``bonus``: ``[B]`` int64, the target's choice at the last accepted node.

    The target's choice at node ``i`` is ``argmax(target_logits[b, i])``: NaN ranks as ``-inf`` and ties go to
    the smaller token id (a row of only NaN and ``-inf`` chooses token 0). Node ``i >= 1`` matches when its token
    is the choice at its parent. The accepted node is the deepest node whose whole path from the root matches
    (ties: the smaller index).

    Malformed trees never cause an out-of-bounds access: a node whose path up to the root holds a parent outside
    ``[0, own index)``, or that is deeper than ``D + 1``, is never accepted; ``tree_parent[b, 0]`` is not read.
    """
    return torch.ops.eagle_ops.posterior_greedy(tree_tokens, tree_parent, target_logits, max_depth)
