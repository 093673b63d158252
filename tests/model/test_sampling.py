"""Sampled EAGLE decoding is lossless: its first tokens follow the target's own sampling law (chi-square)."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from model.config import DynamicTree
from model.eagle_model import EagleModel
from tests.model.tiny import save_random_head, save_target

VOCAB = 8
PROMPT = [3, 1, 4, 1, 5]
BATCH, SEEDS = 64, 12  # 768 samples of the first three tokens per case
P_MIN = 1e-3  # the runs are seeded, so each test is deterministic; a lossy sampler fails by orders of magnitude


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampling")
    target = save_target(root / "target", vocab=VOCAB, init=0.3, seed=5)
    for kind in ("eagle1", "eagle3"):
        save_random_head(root / kind, kind, vocab=VOCAB, seed=5)
    return root, target


def target_law(target, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The exact law of the first three sampled tokens, ``[V, V, V]``, from the target and transformers'
    own warpers (temperature, then top-k, then top-p)."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    prefixes = torch.tensor([PROMPT + list(x) for x in itertools.product(range(VOCAB), repeat=2)])
    with torch.no_grad():
        logits = target(prefixes).logits[:, len(PROMPT) - 1 :].double()  # [V*V, 3, V]
    probs = torch.stack([warpers(prefixes, logits[:, i]).softmax(-1) for i in range(3)], 1)
    first = probs[0, 0]  # [V]: the same for every prefix
    second = probs[::VOCAB, 1]  # [V, V]: given the first token
    third = probs[:, 2].view(VOCAB, VOCAB, VOCAB)  # given the first two
    return first[:, None, None] * second[:, :, None] * third


def chi_square_p_value(observed: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Pearson's test; cells expected fewer than 5 times are pooled into one."""
    observed, expected = observed.flatten().double(), expected_probs.flatten() * observed.sum()
    small = expected < 5
    observed = torch.cat((observed[~small], observed[small].sum()[None]))
    expected = torch.cat((expected[~small], expected[small].sum()[None]))
    keep = expected > 0
    observed, expected = observed[keep], expected[keep]
    statistic = ((observed - expected) ** 2 / expected).sum()
    dof = torch.tensor(float(observed.numel() - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(dof / 2, statistic / 2))


CASES = {
    "plain": (1.0, 0, 1.0),
    "warped": (0.7, 5, 0.85),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", ["eagle1", "eagle3", "target-only"])
def test_first_tokens_follow_the_target_law(root, method, case):
    folder, target = root
    temperature, top_k, top_p = CASES[case]
    model = EagleModel.from_pretrained(
        folder / "target",
        folder / ("eagle1" if method == "target-only" else method),
        tree=DynamicTree(top_k=2, depth=2, tree_size=6),
        max_batch_size=BATCH,
        max_seq_len=32,
        dtype=torch.float32,
        device="cpu",
    )
    generate = model.generate_target_only if method == "target-only" else model.eagenerate
    counts = torch.zeros(VOCAB, VOCAB, VOCAB)
    for seed in range(SEEDS):
        result = generate(
            torch.tensor([PROMPT] * BATCH), max_new_tokens=3, temperature=temperature, top_k=top_k, top_p=top_p,
            seed=seed,
        )  # fmt: skip
        for a, b, c in result.tokens:
            counts[a, b, c] += 1
    law = target_law(target, temperature, top_k, top_p)
    for name, dims in (("first", (1, 2)), ("first two", (2,)), ("second and third", (0,))):
        p = chi_square_p_value(counts.sum(dims), law.sum(dims))
        assert p > P_MIN, f"{method} {case}: the {name} tokens do not follow the target (p = {p:.2e})"


def test_the_test_has_power(root):
    """A sampler that is off by a little (temperature 0.8 instead of 1) fails the same checks."""
    folder, target = root
    model = EagleModel.from_pretrained(
        folder / "target", folder / "eagle1", max_batch_size=BATCH, max_seq_len=32, dtype=torch.float32, device="cpu",
        tree=DynamicTree(top_k=2, depth=2, tree_size=6),
    )  # fmt: skip
    counts = torch.zeros(VOCAB, VOCAB, VOCAB)
    for seed in range(SEEDS):
        result = model.eagenerate(torch.tensor([PROMPT] * BATCH), max_new_tokens=3, temperature=0.8, seed=seed)
        for a, b, c in result.tokens:
            counts[a, b, c] += 1
    law = target_law(target, 1.0, 0, 1.0)
    p_values = [chi_square_p_value(counts.sum(dims), law.sum(dims)) for dims in ((1, 2), (2,), (0,))]
    assert min(p_values) < P_MIN, p_values
