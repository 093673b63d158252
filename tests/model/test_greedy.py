"""Greedy EAGLE decoding is lossless: it emits exactly the target's own greedy tokens."""

from __future__ import annotations

import pytest
import torch

from model.config import DynamicTree, StaticTree
from model.eagle_model import EagleModel
from model.heads import HeadConfig
from model.target import Target
from tests.model.tiny import ARCHITECTURES, OracleHead, greedy_reference, head_config, save_random_head, save_target

PROMPTS = [[5, 17, 3, 88, 41, 9, 60], [12, 7], [33, 2, 71, 71, 15, 4, 28, 90, 1, 56, 19]]
NEW_TOKENS = 24
TREES = {
    "dynamic-wide": DynamicTree(top_k=4, depth=2, tree_size=12),
    "dynamic-deep": DynamicTree(top_k=2, depth=5, tree_size=9),
    "static": StaticTree([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0, 0]]),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A 4-layer llama target and random EAGLE-1 / EAGLE-3 heads (two seeds each)."""
    root = tmp_path_factory.mktemp("greedy")
    target = save_target(root / "target")
    for kind in ("eagle1", "eagle3"):
        for seed in (0, 1):
            save_random_head(root / f"{kind}-{seed}", kind, seed=seed)
    return root, target


def load(root, head: str, tree, *, max_batch_size: int = 3, max_seq_len: int = 96, target: str = "target"):
    return EagleModel.from_pretrained(
        root / target,
        root / head,
        tree=tree,
        max_batch_size=max_batch_size,
        max_seq_len=max_seq_len,
        dtype=torch.float32,
        device="cpu",
    )


def assert_greedy_matches(model: EagleModel, target, prompts: list[list[int]], new_tokens: int) -> None:
    expected = [greedy_reference(target, p, new_tokens) for p in prompts]
    result = model.eagenerate(prompts, max_new_tokens=new_tokens)
    baseline = model.generate_target_only(prompts, max_new_tokens=new_tokens)
    for i, want in enumerate(expected):
        assert result.tokens[i] == want, f"sequence {i}: eagenerate {result.tokens[i]} != greedy {want}"
        assert baseline.tokens[i] == want, f"sequence {i}: target-only {baseline.tokens[i]} != greedy {want}"
    assert baseline.mean_accepted == 1.0


@pytest.mark.parametrize("tree", TREES, ids=str)
@pytest.mark.parametrize("kind", ["eagle1", "eagle3"])
@pytest.mark.parametrize("seed", [0, 1])
def test_lossless_greedy(folders, kind, tree, seed):
    root, target = folders
    model = load(root, f"{kind}-{seed}", TREES[tree])
    prompts = PROMPTS if seed == 0 else [PROMPTS[2]]
    assert_greedy_matches(model, target, prompts, NEW_TOKENS)


@pytest.mark.parametrize("tree", TREES, ids=str)
def test_long_accepts_with_an_oracle_head(folders, tree):
    root, target = folders
    truth = [p + greedy_reference(target, p, NEW_TOKENS + 8) for p in PROMPTS]
    table = torch.full((len(truth), max(map(len, truth))), -1)
    for i, row in enumerate(truth):
        table[i, : len(row)] = torch.tensor(row)
    head = OracleHead(head_config("eagle1"), table, miss=13)
    shape = TREES[tree]
    model = EagleModel(
        Target.from_pretrained(root / "target", feature_layers=None, dtype=torch.float32, device="cpu"),
        head,
        shape,
        max_batch_size=3,
        max_seq_len=96,
        dtype=torch.float32,
        device="cpu",
    )
    result = model.eagenerate(PROMPTS, max_new_tokens=NEW_TOKENS)
    for i, row in enumerate(truth):
        assert result.tokens[i] == row[len(PROMPTS[i]) :][:NEW_TOKENS]
    longest = shape.max_depth + 1
    assert result.accept_histogram[longest] > 0, f"no step accepted a full path: {result.accept_histogram}"
    assert result.mean_accepted > 2.0, result.accept_histogram


def test_a_full_cache_stops_cleanly(folders):
    root, target = folders
    tree = TREES["dynamic-wide"]
    capacity = 48
    model = load(root, "eagle3-0", tree, max_seq_len=capacity)
    prompts = [PROMPTS[0], PROMPTS[2]]
    result = model.eagenerate(prompts, max_new_tokens=200)
    baseline = model.generate_target_only(prompts, max_new_tokens=200)
    for i, prompt in enumerate(prompts):
        reference = greedy_reference(target, prompt, capacity)
        got = result.tokens[i]
        # It stops once the next tree would not fit: cache_len + T > S, with the last token not cached.
        assert capacity - tree.tree_size - len(prompt) + 1 < len(got) <= capacity - len(prompt) + 1
        assert got == reference[: len(got)]
        assert baseline.tokens[i] == reference[: capacity - len(prompt) + 1]
    assert int(model.cache_len[: model.batch].max()) <= capacity


def test_eos_stops_each_sequence_at_its_first_eos(folders):
    root, target = folders
    model = load(root, "eagle1-0", TREES["dynamic-wide"])
    expected = [greedy_reference(target, p, NEW_TOKENS) for p in PROMPTS]
    eos = expected[0][5]
    result = model.eagenerate(PROMPTS, max_new_tokens=NEW_TOKENS, eos_token_id=[eos, 95])
    for got, want in zip(result.tokens, expected, strict=True):
        stop = want.index(eos) + 1 if eos in want else len(want)
        assert got == want[:stop]


def test_max_new_tokens_of_one_is_the_prefill_token(folders):
    root, target = folders
    model = load(root, "eagle1-0", TREES["static"])
    result = model.eagenerate(PROMPTS, max_new_tokens=1)
    assert result.tokens == [greedy_reference(target, p, 1) for p in PROMPTS]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_is_lossless(tmp_path, arch):
    target = save_target(tmp_path / "target", arch, seed=3)
    save_random_head(tmp_path / "head", "eagle3", seed=3)
    model = load(tmp_path, "head", TREES["dynamic-deep"])
    assert_greedy_matches(model, target, PROMPTS, 16)


def test_eagle3_with_distinct_feature_layers_reduced_vocabulary_and_own_embedding(tmp_path):
    """8 target layers (features from layers 2, 4, 5), a 48-token draft vocabulary, a 48-wide head."""
    target = save_target(tmp_path / "target", layers=8, seed=4)
    head = save_random_head(tmp_path / "head", "eagle3", seed=4, draft_vocab=48, hidden=48)
    assert isinstance(head.config, HeadConfig) and head.embed_tokens is not None
    model = load(tmp_path, "head", TREES["dynamic-wide"])
    assert model.target.feature_layers == (2, 4, 5)
    assert_greedy_matches(model, target, PROMPTS, 16)
