"""posterior_sample benchmark points: the posterior_greedy trees and logits, with the warpers off and on."""

from __future__ import annotations

import torch

from benchmarks.harness import Case
from benchmarks.ops.posterior_greedy import GPU_SIZES, PosteriorSizes, random_step
from eagle_ops.lowering.posterior_sample import posterior_sample_triton
from eagle_ops.reference.posterior_sample import posterior_sample_reference

# (temperature, top_k, top_p): plain sampling, a common chat setting where both searches run, and top-p alone (its
# search then runs over the whole vocabulary, not over the top-k survivors).
WARPERS = {"plain": (1.0, 0, 1.0), "top-k top-p": (0.7, 50, 0.9), "top-p": (0.7, 0, 0.9)}


def _case(step: tuple, warpers: str, generator: torch.Generator) -> Case:
    tokens, parent, logits, max_depth = step
    batch, size, vocab = logits.shape
    temperature, top_k, top_p = WARPERS[warpers]
    per_sequence = lambda value, dtype: torch.full((batch,), value, dtype=dtype, device=logits.device)
    uniforms = torch.rand((batch, max_depth + 3), generator=generator).to(logits.device)
    args = (
        tokens,
        parent,
        logits,
        max_depth,
        per_sequence(temperature, torch.float32),
        per_sequence(top_k, torch.int64),
        per_sequence(top_p, torch.float32),
        uniforms,
    )

    def check() -> None:
        want, got = posterior_sample_reference(*args), posterior_sample_triton(*args)
        for name, g, w in zip(("accept_len", "accept_path"), got[:2], want[:2], strict=True):
            assert torch.equal(g, w), f"posterior_sample: triton's {name} differs from the reference's"
        # The bonus is an inverse-CDF draw over V = 128256 near-flat probabilities: an fp32 sum in another order
        # moves each boundary by far more than the rounding bound the CPU tests use, so report, don't assert.
        differ = int((got[3] != want[3]).sum())
        if differ:
            print(f"posterior_sample check: {differ} of {batch} bonus draws differ from the reference's", flush=True)

    return Case(
        op="posterior_sample",
        label=f"B={batch} T={size} D={max_depth} V={vocab} {warpers}",
        candidates={
            "reference": lambda: posterior_sample_reference(*args),
            "triton": lambda: posterior_sample_triton(*args),
        },
        check=check,
        # Reading the logits once dominates; the trees, coins and outputs are a few KiB.
        bytes_min=logits.nbytes,
        params={"B": batch, "T": size, "D": max_depth, "V": vocab, "dtype": str(logits.dtype), "warpers": warpers},
    )


def cases(device: torch.device | str, sizes: PosteriorSizes = GPU_SIZES) -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    steps = [(*random_step(batch, sizes, device, generator), sizes.depth) for batch in sizes.batches]
    return [_case(step, warpers, generator) for step in steps for warpers in WARPERS]
