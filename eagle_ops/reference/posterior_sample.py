"""Eager definition of `posterior_sample`: lossless acceptance of deterministic drafts, one coin per depth."""

from __future__ import annotations

import torch

from eagle_ops.reference.posterior_greedy import emitted_tokens, linked_parents


def scaled_scores(target_logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``[B, T, V]`` fp32 ``logits / temperature`` with NaN ranked as -inf."""
    scores = target_logits.float() / temperature[:, None, None]
    return scores.masked_fill(scores.isnan(), float("-inf"))


def shifted_exp(scores: torch.Tensor) -> torch.Tensor:
    """``exp(scores - max)`` with every maximal score weighing 1, so that a row of -inf is uniform and +inf scores
    share the row alone: a softmax's numerator, defined for every row."""
    top = scores.amax(-1, keepdim=True)
    return torch.where(scores == top, 0.0, scores - top).exp()


def kept_tokens(scores: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``[B, T, V]`` bool: the tokens transformers' ``TopKLogitsWarper`` then ``TopPLogitsWarper`` keep.

    Top-k keeps every score >= the k-th largest (ties at the boundary are kept); ``top_k <= 0`` keeps all.
    Top-p sorts the survivors' softmax ascending (stable: ties in index order), drops every token whose cumulative
    probability is <= ``1 - top_p`` and always keeps the last; ``top_p >= 1`` (or NaN) keeps all, and
    ``top_p <= 0`` keeps the last alone.
    """
    vocab = scores.shape[-1]
    ascending, order = scores.sort(dim=-1, stable=True)
    k = top_k.clamp(1, vocab)[:, None, None].expand(*scores.shape[:2], 1)
    keep = (scores >= ascending.gather(-1, vocab - k)) | (top_k <= 0)[:, None, None]

    # transformers sorts the top-k-filtered scores, with -inf for the dropped ones; sorting the scores themselves
    # gives the same cumulative probabilities: every dropped token scores below every survivor and weighs 0.
    survivors = shifted_exp(scores) * keep
    probs = survivors / survivors.sum(-1, keepdim=True)
    cumulative = probs.gather(-1, order).cumsum(-1)
    last = torch.arange(vocab, device=scores.device) == vocab - 1
    drop_sorted = ((cumulative <= (1 - top_p)[:, None, None]) | (top_p <= 0)[:, None, None]) & ~last
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return keep & ~(drop & (top_p < 1)[:, None, None])


def target_probs(
    target_logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """``[B, T, V]`` fp32: the target's sampling distribution at every node, temperature then top-k then top-p."""
    scores = scaled_scores(target_logits, temperature)
    weights = shifted_exp(scores) * kept_tokens(scores, top_k, top_p)
    return weights / weights.sum(-1, keepdim=True)


def inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """``[B]``: the first token whose cumulative weight exceeds ``uniform * total`` (the last token of positive
    weight when none does, as for ``uniform >= 1``)."""
    cumulative = weights.cumsum(-1)
    above = cumulative > (uniform * weights.sum(-1))[:, None]
    token = torch.arange(weights.shape[-1], device=weights.device)
    last_positive = torch.where(weights > 0, token, -1).amax(-1)
    return torch.where(above.any(-1), above.int().argmax(-1), last_positive)


def posterior_sample_reference(
    tree_tokens: torch.Tensor,
    tree_parent: torch.Tensor,
    target_logits: torch.Tensor,
    max_depth: int,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniforms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(accept_len, accept_path, emitted, bonus)``; see :func:`eagle_ops.posterior_sample` for the contract."""
    batch, size, vocab = target_logits.shape
    path_len = max_depth + 2
    probs = target_probs(target_logits, temperature, top_k, top_p)
    parent = linked_parents(tree_parent)
    node = torch.arange(size, device=tree_tokens.device)
    in_vocab = (tree_tokens >= 0) & (tree_tokens < vocab)

    # A draft's mass is its token's probability at its parent; a draft repeating an earlier sibling's token adds
    # nothing, since that token was already offered.
    repeats = (parent[:, :, None] == parent[:, None, :]) & (tree_tokens[:, :, None] == tree_tokens[:, None, :])
    repeated = (repeats & (node[:, None] > node[None, :])).any(-1)
    at_parent = probs.flatten(1).gather(1, parent.clamp(min=0) * vocab + tree_tokens.clamp(0, vocab - 1))
    mass = torch.where((parent >= 0) & in_vocab & ~repeated, at_parent, 0.0)

    # One coin per depth: the accepted child is the first whose cumulative mass (children in index order)
    # exceeds the coin; when none does, every child is rejected and the walk stops.
    current = torch.zeros(batch, dtype=torch.int64, device=tree_tokens.device)
    walking = torch.ones(batch, dtype=torch.bool, device=tree_tokens.device)
    accept_len = torch.zeros_like(current)
    accepted = []
    for depth in range(min(max_depth + 1, size - 1)):
        offered = (parent == current[:, None]) & walking[:, None]
        hit = offered & (torch.where(offered, mass, 0.0).cumsum(-1) > uniforms[:, depth, None])
        walking &= hit.any(-1)
        current = torch.where(walking, hit.int().argmax(-1), current)
        accept_len += walking
        accepted.append(torch.where(walking, current, -1))
    padding = [torch.full_like(current, -1)] * (path_len - 1 - len(accepted))
    accept_path = torch.stack([torch.zeros_like(current), *accepted, *padding], dim=1)

    # The bonus comes from the distribution at the last accepted node without the children the coin rejected
    # (none when the walk ran out of depth before testing them), renormalised.
    row = probs.gather(1, current[:, None, None].expand(batch, 1, vocab))[:, 0]
    rejected = (parent == current[:, None]) & in_vocab & ~walking[:, None]
    times_rejected = torch.zeros_like(row).scatter_add(1, tree_tokens.clamp(0, vocab - 1), rejected.float())
    residual = torch.where(times_rejected > 0, 0.0, row)
    # Only rounding can leave no mass outside the rejected children (their masses summed to 1 above the coin).
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, row)
    bonus = inverse_cdf(residual, uniforms[:, path_len])
    return accept_len, accept_path, emitted_tokens(tree_tokens, accept_path, accept_len, bonus), bonus
