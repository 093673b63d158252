"""build_tree benchmark points: K = 10, D = 7 (Nc = 710 candidates), T = 60, B in {1, 16, 64}."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.harness import Case
from eagle_ops.lowering.build_tree import build_tree_triton
from eagle_ops.reference.build_tree import build_tree_reference


@dataclass(frozen=True)
class BuildTreeSizes:
    batches: tuple[int, ...] = (1, 16, 64)
    width: int = 10  # K
    depth: int = 7  # D
    tree_size: int = 60
    vocab: int = 128_256


GPU_SIZES = BuildTreeSizes()


def draft_levels(
    batch: int, width: int, depth: int, vocab: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(scores, tokens, parents)`` as ``topk_expand`` makes them: each level expands the best ``K`` candidates
    of the one before, every child adding a negative log-probability (sorted, as a top-k is) to its parent's."""
    frontier = torch.zeros(batch, 1)
    offset = 0  # flat index of the first candidate of the level being expanded
    levels, parents = [], [torch.zeros(batch, 1, dtype=torch.int64)]
    for level in range(depth + 1):
        steps = torch.empty(batch, frontier.shape[1], width).exponential_(generator=generator)
        scores = (frontier[:, :, None] - steps.cumsum(dim=-1)).flatten(1)
        levels.append(scores)
        if level < depth:
            best = scores.topk(width, dim=1).indices
            parents.append(1 + offset + best)
            frontier = scores.gather(1, best)
            offset += scores.shape[1]
    scores = torch.cat(levels, dim=1)
    tokens = torch.randint(vocab, scores.shape, generator=generator)
    return scores, tokens, torch.cat(parents, dim=1)


def _case(scores: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, tree_size: int) -> Case:
    batch, candidates = scores.shape
    width = candidates // parents.shape[1]
    root = tokens[:, 0].clone()
    args = (scores, tokens, parents, root, tree_size)

    def check() -> None:
        want, got = build_tree_reference(*args), build_tree_triton(*args)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), "build_tree: triton != reference"

    return Case(
        op="build_tree",
        label=f"B={batch} K={width} Nc={candidates} T={tree_size}",
        candidates={"reference": lambda: build_tree_reference(*args), "triton": lambda: build_tree_triton(*args)},
        check=check,
        # Read every input once, write both int64 outputs.
        bytes_min=sum(t.nbytes for t in (scores, tokens, parents, root)) + 2 * batch * tree_size * 8,
        params={"B": batch, "K": width, "Nc": candidates, "T": tree_size},
    )


def cases(device: torch.device | str, sizes: BuildTreeSizes = GPU_SIZES) -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    points = []
    for batch in sizes.batches:
        levels = draft_levels(batch, sizes.width, sizes.depth, sizes.vocab, generator)
        points.append(_case(*(t.to(device) for t in levels), sizes.tree_size))
    return points
