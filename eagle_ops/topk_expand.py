"""`topk_expand`: one level of draft-tree expansion, the top-k children of every frontier node and the next frontier."""

from __future__ import annotations

from typing import NamedTuple

import torch

from eagle_ops._checks import FLOAT_DTYPES, INDEX_DTYPES, Signature
from eagle_ops._library import define_op
from eagle_ops.lowering.topk_expand import empty_outputs, topk_expand_triton
from eagle_ops.reference.topk_expand import topk_expand_reference

MAX_K = 64


def _validate(logits: object, frontier_scores: object, d2t: object, k: object) -> None:
    check = Signature("topk_expand")
    check.tensor("logits", logits, "B F Vd", FLOAT_DTYPES)
    check.tensor("frontier_scores", frontier_scores, "B F", (torch.float32,))
    if d2t is not None:
        check.tensor("d2t", d2t, "Vd", INDEX_DTYPES)
    check.nonempty()
    check.positive("k", k, at_most=min(check.sizes["Vd"], MAX_K))


def _fake(
    logits: torch.Tensor, frontier_scores: torch.Tensor, d2t: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, ...]:
    return empty_outputs(logits, k)


define_op(
    "topk_expand",
    "(Tensor logits, Tensor frontier_scores, Tensor? d2t, int k) -> (Tensor level_scores, Tensor level_tokens, "
    "Tensor next_scores, Tensor next_tokens, Tensor next_parent, Tensor next_index)",
    validate=_validate,
    fake=_fake,
    reference=topk_expand_reference,
    lowering=topk_expand_triton,
)


class Expansion(NamedTuple):
    """What :func:`topk_expand` returns; a tuple in this order."""

    level_scores: torch.Tensor
    level_tokens: torch.Tensor
    next_scores: torch.Tensor
    next_tokens: torch.Tensor
    next_parent: torch.Tensor
    next_index: torch.Tensor


def topk_expand(logits: torch.Tensor, frontier_scores: torch.Tensor, d2t: torch.Tensor | None, k: int) -> Expansion:
    """Expand every frontier node into its ``k`` most likely children, then keep the ``k`` best as the next frontier.

    Args:
        logits: ``[B, F, Vd]`` fp32, fp16 or bf16, the draft head's logits at the F frontier nodes (F = 1 at the
            root expansion, K afterwards).
        frontier_scores: ``[B, F]`` fp32, the cumulative log-probability of every frontier node.
        d2t: ``[Vd]`` int64 or None; when given, draft id ``t`` is target id ``t + d2t[t]`` (EAGLE-3 heads with a
            reduced draft vocabulary).
        k: children per node and size of the next frontier, ``1 <= k <= min(Vd, 64)``.

    Returns:
        ``level_scores``: ``[B, F*k]`` fp32, ``frontier_scores[b, f] + log_softmax(logits[b, f].float())[child]``,
        in (node, rank) order: entry ``f * k + r`` is the r-th best child of node f.
        ``level_tokens``: ``[B, F*k]`` int64, the children's (target) token ids.
        ``next_scores``, ``next_tokens``: ``[B, k]``, the k best entries of the level, best first.
        ``next_parent``: ``[B, k]`` int64, their frontier node (``next_index // k``).
        ``next_index``: ``[B, k]`` int64, their index into the level.

    Ties break by the smaller index: a node's children by the smaller vocabulary id, the next frontier by the
    smaller index into the level. Children are ranked by logit, the order of their log-probs. A NaN log-prob ranks
    as -inf and is reported as -inf: a row with a NaN or +inf logit, or with every logit -inf, has a NaN
    log-softmax everywhere, so its children are ids ``0..k-1`` (then mapped through ``d2t``) scored -inf. A
    frontier score of -inf gives children scored -inf (the children themselves are still its best tokens); a NaN
    sum (a NaN frontier score, or +inf plus -inf) is reported as -inf. No score output is ever NaN.
    """
    return Expansion(*torch.ops.eagle_ops.topk_expand(logits, frontier_scores, d2t, k))
