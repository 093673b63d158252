"""Eager definition of `posterior_greedy`: accept the deepest draft path that the target's argmax agrees with."""

from __future__ import annotations

import torch


def target_choice(target_logits: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` argmax over the vocabulary; NaN ranks as -inf and ties go to the smaller token id."""
    return target_logits.masked_fill(target_logits.isnan(), float("-inf")).argmax(-1)


def linked_parents(tree_parent: torch.Tensor) -> torch.Tensor:
    """``tree_parent`` with every parent outside ``[0, own index)`` replaced by -1: such a node hangs nowhere."""
    index = torch.arange(tree_parent.shape[1], device=tree_parent.device)
    return torch.where((tree_parent >= 0) & (tree_parent < index), tree_parent, -1)


def emitted_tokens(
    tree_tokens: torch.Tensor, accept_path: torch.Tensor, accept_len: torch.Tensor, bonus: torch.Tensor
) -> torch.Tensor:
    """``[B, P]``: the tokens of the accepted path after the root, then the bonus, then -1."""
    slot = torch.arange(accept_path.shape[1], device=accept_path.device)
    next_node = torch.cat([accept_path[:, 1:], torch.full_like(accept_path[:, :1], -1)], dim=1)
    drafted = torch.where(slot < accept_len[:, None], tree_tokens.gather(1, next_node.clamp(min=0)), -1)
    return torch.where(slot == accept_len[:, None], bonus[:, None], drafted)


def posterior_greedy_reference(
    tree_tokens: torch.Tensor, tree_parent: torch.Tensor, target_logits: torch.Tensor, max_depth: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(accept_len, accept_path, emitted, bonus)``; see :func:`eagle_ops.posterior_greedy` for the contract."""
    batch, size = tree_tokens.shape
    path_len = max_depth + 2
    choice = target_choice(target_logits)
    parent = linked_parents(tree_parent)
    matches = (parent >= 0) & (tree_tokens == choice.gather(1, parent.clamp(min=0)))

    # Walk every node up towards the root: it is a candidate when it reaches the root within max_depth + 1 steps
    # and every node on the way matches. A walk moves to a smaller index, so it never takes more than size - 1.
    node = torch.arange(size, device=tree_tokens.device).expand(batch, size)
    path_matches = torch.ones_like(tree_tokens, dtype=torch.bool)
    depth = torch.zeros_like(tree_tokens)
    for _ in range(min(max_depth + 1, size - 1)):
        climbing = node > 0
        path_matches &= ~climbing | matches.gather(1, node.clamp(min=0))
        depth += climbing
        node = torch.where(climbing, parent.gather(1, node.clamp(min=0)), node)
    candidate = path_matches & (node == 0)

    # argmax returns the first maximum: the smallest index among the deepest candidates (the root always is one).
    accepted = torch.where(candidate, depth, -1).argmax(1, keepdim=True)
    accept_len = depth.gather(1, accepted)[:, 0]

    ancestors = [accepted]
    for _ in range(path_len - 1):
        ancestors.append(parent.gather(1, ancestors[-1].clamp(min=0)))
    ancestors = torch.cat(ancestors, dim=1)  # [B, P]: the accepted node, its parent, ...
    slot = torch.arange(path_len, device=tree_tokens.device)
    steps_up = accept_len[:, None] - slot
    accept_path = torch.where(steps_up >= 0, ancestors.gather(1, steps_up.clamp(min=0)), -1)

    bonus = choice.gather(1, accepted)[:, 0]
    return accept_len, accept_path, emitted_tokens(tree_tokens, accept_path, accept_len, bonus), bonus
