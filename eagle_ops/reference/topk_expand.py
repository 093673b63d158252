"""Eager definition of `topk_expand`: the top-k children of every frontier node, then the top-k of the level."""

from __future__ import annotations

import torch


def _top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries along the last dim; equal scores keep index order (smaller first)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k].contiguous()


def topk_expand_reference(
    logits: torch.Tensor, frontier_scores: torch.Tensor, d2t: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One tree level: see :func:`eagle_ops.topk_expand` for shapes and the NaN / -inf rules.

    Children are ranked by logit, which orders them as ``log_softmax`` does without the rounding of subtracting
    the log-sum-exp (that rounding could merge two distinct logits into a tie). A row whose log-sum-exp is not
    finite (a NaN or +inf logit, or every logit -inf) has a NaN log-softmax everywhere: all its children rank as
    -inf, so they are the ``k`` smallest ids, scored -inf.
    """
    logits = logits.float()
    neg_inf = torch.tensor(float("-inf"), device=logits.device)
    log_sum_exp = torch.logsumexp(logits, dim=-1, keepdim=True)
    valid = log_sum_exp.isfinite()
    children = _top_k_indices(torch.where(valid, logits, neg_inf), k)  # [B, F, k]
    child_logp = torch.where(valid, logits.gather(-1, children) - log_sum_exp, neg_inf)
    cumulative = frontier_scores[:, :, None] + child_logp
    level_scores = torch.where(cumulative.isnan(), neg_inf, cumulative).flatten(1)  # [B, F*k], (node, rank) order
    tokens = children if d2t is None else children + d2t[children]
    level_tokens = tokens.flatten(1)
    next_index = _top_k_indices(level_scores, k)
    return (
        level_scores,
        level_tokens,
        level_scores.gather(1, next_index),
        level_tokens.gather(1, next_index),
        next_index // k,
        next_index,
    )
