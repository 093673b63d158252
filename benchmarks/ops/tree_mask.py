"""tree_mask benchmark points: random trees of T = 60 nodes and depth at most 8, B in {1, 16, 64}."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.harness import Case
from eagle_ops.lowering.tree_mask import tree_mask_triton
from eagle_ops.reference.tree_mask import tree_mask_reference


@dataclass(frozen=True)
class TreeMaskSizes:
    batches: tuple[int, ...] = (1, 16, 64)
    tree_size: int = 60
    max_depth: int = 8


GPU_SIZES = TreeMaskSizes()


def random_trees(batch: int, size: int, max_depth: int, generator: torch.Generator) -> torch.Tensor:
    """``[batch, size]`` parents: each node hangs off a uniformly drawn earlier node of depth below ``max_depth``."""
    parent = torch.full((batch, size), -1, dtype=torch.int64)
    depth = torch.zeros((batch, size), dtype=torch.int64)
    for i in range(1, size):
        open_nodes = (depth[:, :i] < max_depth).double()
        parent[:, i] = torch.multinomial(open_nodes, 1, generator=generator)[:, 0]
        depth[:, i] = depth.gather(1, parent[:, i : i + 1])[:, 0] + 1
    return parent


def _case(tree_parent: torch.Tensor, max_depth: int) -> Case:
    batch, size = tree_parent.shape

    def check() -> None:
        want, got = tree_mask_reference(tree_parent, max_depth), tree_mask_triton(tree_parent, max_depth)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), "tree_mask: triton != reference"

    return Case(
        op="tree_mask",
        label=f"B={batch} T={size} max_depth={max_depth}",
        candidates={
            "reference": lambda: tree_mask_reference(tree_parent, max_depth),
            "triton": lambda: tree_mask_triton(tree_parent, max_depth),
        },
        check=check,
        # Read the parents, write the bool mask and the int64 depths.
        bytes_min=tree_parent.nbytes + batch * size * size + batch * size * 8,
        params={"B": batch, "T": size, "max_depth": max_depth},
    )


def cases(device: torch.device | str, sizes: TreeMaskSizes = GPU_SIZES) -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    return [
        _case(random_trees(batch, sizes.tree_size, sizes.max_depth, generator).to(device), sizes.max_depth)
        for batch in sizes.batches
    ]
