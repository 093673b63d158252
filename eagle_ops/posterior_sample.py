"""`posterior_sample`: lossless acceptance of a draft tree under the target's sampling distribution."""

from __future__ import annotations

import torch

from eagle_ops._checks import INDEX_DTYPES
from eagle_ops._library import define_op
from eagle_ops.lowering.posterior_greedy import new_outputs
from eagle_ops.lowering.posterior_sample import posterior_sample_triton
from eagle_ops.posterior_greedy import OUTPUTS, check_tree
from eagle_ops.reference.posterior_sample import posterior_sample_reference


def _validate(
    tree_tokens: object,
    tree_parent: object,
    target_logits: object,
    max_depth: object,
    temperature: object,
    top_k: object,
    top_p: object,
    uniforms: object,
) -> None:
    check = check_tree("posterior_sample", tree_tokens, tree_parent, target_logits, max_depth)
    check.tensor("temperature", temperature, "B", (torch.float32,))
    check.tensor("top_k", top_k, "B", INDEX_DTYPES)
    check.tensor("top_p", top_p, "B", (torch.float32,))
    check.tensor("uniforms", uniforms, f"B {max_depth + 3}", (torch.float32,))


def _fake(
    tree_tokens: torch.Tensor,
    tree_parent: torch.Tensor,
    target_logits: torch.Tensor,
    max_depth: int,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniforms: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    return new_outputs(tree_tokens, max_depth)


define_op(
    "posterior_sample",
    "(Tensor tree_tokens, Tensor tree_parent, Tensor target_logits, int max_depth, Tensor temperature, "
    f"Tensor top_k, Tensor top_p, Tensor uniforms) -> {OUTPUTS}",
    validate=_validate,
    fake=_fake,
    reference=posterior_sample_reference,
    lowering=posterior_sample_triton,
)


def posterior_sample(
    tree_tokens: torch.Tensor,
    tree_parent: torch.Tensor,
    target_logits: torch.Tensor,
    max_depth: int,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniforms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lossless speculative sampling of a batch of draft trees against the target's logits.

    Args:
        tree_tokens, tree_parent, target_logits, max_depth: as for :func:`eagle_ops.posterior_greedy`
            (``[B, T]``, ``[B, T]``, ``[B, T, V]``, ``D``; paths have ``P = D + 2`` slots).
        temperature: ``[B]`` fp32, > 0. The op cannot check it without reading device data, so the caller must
            (greedy decoding is :func:`eagle_ops.posterior_greedy`); a value <= 0 gives defined but meaningless
            tokens.
        top_k: ``[B]`` int64; ``<= 0`` (or ``>= V``) disables top-k.
        top_p: ``[B]`` fp32; ``>= 1`` (or NaN) disables top-p, ``<= 0`` keeps the most likely token alone.
        uniforms: ``[B, P + 1]`` fp32 in ``[0, 1)``: ``uniforms[b, d]`` is the coin at depth ``d``,
            ``uniforms[b, P]`` draws the bonus. The caller owns the random numbers.

    Returns:
        ``(accept_len [B], accept_path [B, P], emitted [B, P], bonus [B])``, int64, as for
        :func:`eagle_ops.posterior_greedy`.

    The target's distribution ``p`` at a node is that of transformers' ``generate(do_sample=True)``:
    ``logits / temperature`` in fp32 (NaN ranked as -inf), then ``TopKLogitsWarper`` (keeps every token scoring
    at least the k-th largest score, ties included), then ``TopPLogitsWarper`` (ascending stable sort of the
    survivors' softmax, drops the tokens whose cumulative probability is <= ``1 - top_p``, keeps the last), then
    softmax. A row of only -inf (or NaN) is uniform; a row with +inf scores is uniform over them.

    The walk starts at the root. At a node of depth ``d`` with children ``x_1 .. x_m`` (in index order), the child
    ``x_j`` is accepted when ``sum_{i<j} p(x_i) <= uniforms[b, d] < sum_{i<=j} p(x_i)``: the sequential rule
    "accept ``x_j`` with probability ``p(x_j) / (1 - p(rejected siblings))``" realised with one coin. A child
    repeating an earlier sibling's token, or whose token is outside ``[0, V)``, has no mass. When no child is
    accepted, the bonus is drawn by inverse CDF with ``uniforms[b, P]`` from ``p`` without the children's tokens,
    renormalised (from ``p`` itself when the node has no children, or when the walk reached depth ``D + 1`` before
    testing them). The emitted tokens are then distributed exactly as sampling the target token by token.

    Malformed trees are handled as by :func:`eagle_ops.posterior_greedy`: a node whose parent is outside
    ``[0, own index)`` is never offered.
    """
    return torch.ops.eagle_ops.posterior_sample(
        tree_tokens, tree_parent, target_logits, max_depth, temperature, top_k, top_p, uniforms
    )
