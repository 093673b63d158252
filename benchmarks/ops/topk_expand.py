"""topk_expand benchmark points: F = k = 10 and bf16 logits, B in {1, 16, 64}, over Vd = 32000 with d2t (an
EAGLE-3 draft vocabulary) and Vd = 128256 without (EAGLE-1/2 heads over Llama 3's full vocabulary)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.harness import Case
from eagle_ops.lowering.topk_expand import topk_expand_triton
from eagle_ops.reference.topk_expand import topk_expand_reference
from eagle_ops.topk_expand import Expansion


@dataclass(frozen=True)
class TopkExpandSizes:
    batches: tuple[int, ...] = (1, 16, 64)
    frontier: int = 10
    k: int = 10
    vocabularies: tuple[tuple[int, bool], ...] = ((32000, True), (128256, False))  # (Vd, with d2t)
    target_vocab: int = 128256


GPU_SIZES = TopkExpandSizes()


def draft_to_target(vocab: int, target_vocab: int, generator: torch.Generator) -> torch.Tensor:
    """A ``d2t`` table as EAGLE-3 stores it: draft id ``t`` is target id ``t + d2t[t]``, ids kept in order."""
    target_ids = torch.randperm(target_vocab, generator=generator)[:vocab].sort().values
    return target_ids - torch.arange(vocab)


def _assert_agree(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    if got.dtype.is_floating_point:
        # Both are fp32 f + (x - logsumexp(x)); they differ in the order of the vocabulary sum only.
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"topk_expand {name}: {m}")
    else:
        assert torch.equal(got, want), f"topk_expand {name}: triton != reference"


def _assert_same_frontier(got: Expansion, want: Expansion, k: int) -> int:
    """The next frontier may differ from the reference's only where two level entries score the same within the
    float tolerance: which one wins such a near tie depends on the last bits of two rows' log-sum-exps, summed in
    different orders (the GPU's and torch's). Returns the number of sequences where the choice differs."""
    picked = want.level_scores.gather(1, got.next_index)
    _assert_agree("scores of the chosen entries", picked, want.next_scores)
    _assert_agree("next_scores", got.next_scores, want.next_scores)
    _assert_agree("next_tokens (against the level)", got.next_tokens, want.level_tokens.gather(1, got.next_index))
    _assert_agree("next_parent", got.next_parent, got.next_index // k)
    return int((got.next_index != want.next_index).any(1).sum())


def _case(batch: int, vocab: int, with_d2t: bool, sizes: TopkExpandSizes, device, generator) -> Case:
    frontier, k = sizes.frontier, sizes.k
    logits = (4 * torch.randn(batch, frontier, vocab, generator=generator)).to(device, torch.bfloat16)
    frontier_scores = (-10 * torch.rand(batch, frontier, generator=generator)).to(device)
    d2t = draft_to_target(vocab, sizes.target_vocab, generator).to(device) if with_d2t else None
    args = (logits, frontier_scores, d2t, k)

    def check() -> None:
        want, got = Expansion(*topk_expand_reference(*args)), Expansion(*topk_expand_triton(*args))
        for name in ("level_scores", "level_tokens"):
            _assert_agree(name, getattr(got, name), getattr(want, name))
        if near_ties := _assert_same_frontier(got, want, k):
            print(f"topk_expand B={batch} Vd={vocab}: the next frontier differs at near ties in {near_ties}/{batch}")

    level, top = batch * frontier * k, batch * k
    return Case(
        op="topk_expand",
        label=f"B={batch} F={frontier} k={k} Vd={vocab}{' d2t' if with_d2t else ''}",
        candidates={
            "reference": lambda: topk_expand_reference(*args),
            "triton": lambda: topk_expand_triton(*args),
            # For scale: torch's own reduction reading the same logits once (a row max). No floor: at Vd = 32000 it
            # reads at about half the bandwidth of the 1 GiB sum that sets the floor.
            "torch_amax": lambda: torch.amax(logits, -1),
        },
        check=check,
        # Read the logits and frontier scores once; write the level (f32 + i64) and the next frontier (f32 + 3 i64).
        bytes_min=logits.nbytes + frontier_scores.nbytes + level * (4 + 8) + top * (4 + 3 * 8),
        params={"B": batch, "F": frontier, "k": k, "Vd": vocab, "d2t": with_d2t, "dtype": "bf16"},
    )


def cases(device: torch.device | str, sizes: TopkExpandSizes = GPU_SIZES) -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    return [
        _case(batch, vocab, with_d2t, sizes, device, generator)
        for vocab, with_d2t in sizes.vocabularies
        for batch in sizes.batches
    ]
