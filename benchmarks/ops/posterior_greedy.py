"""posterior_greedy benchmark points: trees of T = 60 (K = 10, D = 7), V = 128256 bf16 logits, B in {1, 16, 64}."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.harness import Case
from eagle_ops.lowering.posterior_greedy import posterior_greedy_triton
from eagle_ops.reference.posterior_greedy import posterior_greedy_reference, target_choice


@dataclass(frozen=True)
class PosteriorSizes:
    batches: tuple[int, ...] = (1, 16, 64)
    tree_size: int = 60
    branching: int = 10
    depth: int = 7
    vocab: int = 128256
    dtype: torch.dtype = torch.bfloat16


GPU_SIZES = PosteriorSizes()


def random_trees(batch: int, sizes: PosteriorSizes, generator: torch.Generator) -> torch.Tensor:
    """``[batch, T]`` parents: each node hangs off a uniformly drawn earlier node that still has room for a child
    (fewer than K children, depth at most D), so every node is at depth D + 1 at most, as after ``build_tree``."""
    parent = torch.full((batch, sizes.tree_size), -1, dtype=torch.int64)
    depth = torch.zeros_like(parent)
    children = torch.zeros_like(parent)
    rows = torch.arange(batch)
    for i in range(1, sizes.tree_size):
        open_nodes = ((depth[:, :i] <= sizes.depth) & (children[:, :i] < sizes.branching)).double()
        parent[:, i] = torch.multinomial(open_nodes, 1, generator=generator)[:, 0]
        depth[:, i] = depth[rows, parent[:, i]] + 1
        children[rows, parent[:, i]] += 1
    return parent


def random_step(
    batch: int, sizes: PosteriorSizes, device: torch.device | str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tree_tokens, tree_parent, target_logits)`` where about half the drafts equal the target's choice at their
    parent, so that accepted paths are of realistic lengths."""
    parent = random_trees(batch, sizes, generator)
    # Drawn on the device: a CPU draw of B * T * V normals takes seconds at the GPU sizes.
    on_device = torch.Generator(device).manual_seed(int(torch.randint(2**62, (), generator=generator)))
    logits = torch.randn((batch, sizes.tree_size, sizes.vocab), generator=on_device, device=device).to(sizes.dtype)
    choice_at_parent = target_choice(logits).cpu().gather(1, parent.clamp(min=0))
    tokens = torch.randint(sizes.vocab, parent.shape, generator=generator)
    tokens = torch.where(torch.rand(parent.shape, generator=generator) < 0.5, choice_at_parent, tokens)
    return tokens.to(device), parent.to(device), logits


def _case(tokens: torch.Tensor, parent: torch.Tensor, logits: torch.Tensor, max_depth: int) -> Case:
    batch, size, vocab = logits.shape
    args = (tokens, parent, logits, max_depth)

    def check() -> None:
        want, got = posterior_greedy_reference(*args), posterior_greedy_triton(*args)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), "posterior_greedy: triton != reference"

    return Case(
        op="posterior_greedy",
        label=f"B={batch} T={size} D={max_depth} V={vocab}",
        candidates={
            "reference": lambda: posterior_greedy_reference(*args),
            "triton": lambda: posterior_greedy_triton(*args),
            # For scale: torch's own reduction reading the same logits once (a row max); not the floor, which is the
            # bytes over the bandwidth of a 1 GiB sum.
            "torch_amax": lambda: torch.amax(logits, -1),
        },
        check=check,
        # Reading the logits dominates; the trees and the outputs are a few KiB.
        bytes_min=logits.nbytes,
        params={"B": batch, "T": size, "D": max_depth, "V": vocab, "dtype": str(logits.dtype)},
    )


def cases(device: torch.device | str, sizes: PosteriorSizes = GPU_SIZES) -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    return [_case(*random_step(batch, sizes, device, generator), sizes.depth) for batch in sizes.batches]
