"""Bad requests fail with a clear error before any work: before loading weights, before any forward."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model.config import DynamicTree, StaticTree
from model.eagle_model import EagleModel
from model.target import Target
from tests.model.tiny import save_random_head, save_target

TREE = DynamicTree(top_k=2, depth=2, tree_size=6)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    save_target(root / "target")
    save_target(root / "mistral", "mistral")
    save_random_head(root / "eagle1", "eagle1")
    save_random_head(root / "eagle3", "eagle3")
    save_random_head(root / "wide", "eagle1", hidden=48)
    save_random_head(root / "vocab", "eagle3", vocab=50)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=96)).save_pretrained(root / "gpt2")
    return root


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the request was checked")

    monkeypatch.setattr(Target, "from_pretrained", refuse)


def load(root, target="target", head="eagle1", **options):
    settings = dict(tree=TREE, max_batch_size=2, max_seq_len=32, dtype=torch.float32, device="cpu") | options
    return EagleModel.from_pretrained(root / target, root / head, **settings)


@pytest.mark.parametrize(
    ("target", "head", "options", "message"),
    [
        ("gpt2", "eagle1", {}, "unsupported target model_type 'gpt2'"),
        ("target", "wide", {}, "hidden_size 48 != the target's 32"),
        ("target", "vocab", {}, "vocab_size 50 != the target's 96"),
        ("mistral", "eagle1", {"max_seq_len": 32}, None),
        ("target", "eagle1", {"max_seq_len": 6}, "leaves no room for a prompt and a 6-node tree"),
        ("target", "eagle1", {"max_batch_size": 0}, "max_batch_size must be at least 1"),
        ("target", "eagle3", {"tree": StaticTree([[0], [99]])}, "branches 100 ways"),
    ],
)
def test_from_pretrained_checks_before_loading(root, no_loading, target, head, options, message):
    if message is None:  # the default Mistral window is 4096 > 32: it does not bind
        with pytest.raises(AssertionError, match="weights were loaded"):
            load(root, target, head, **options)
        return
    with pytest.raises(ValueError, match=message):
        load(root, target, head, **options)


def test_a_binding_sliding_window_is_refused(tmp_path, no_loading):
    save_target(tmp_path / "target", "mistral")
    config = (tmp_path / "target" / "config.json").read_text().replace('"sliding_window": null', '"sliding_window": 16')
    (tmp_path / "target" / "config.json").write_text(config)
    save_random_head(tmp_path / "eagle1", "eagle1")
    with pytest.raises(ValueError, match=r"sliding-window attention \(16 tokens\)"):
        load(tmp_path)


@pytest.mark.parametrize(
    ("prompts", "options", "message"),
    [
        ([[1, 2]] * 3, {}, "batch 3 > max_batch_size 2"),
        ([list(range(27))], {}, "longer than max_seq_len - tree_size = 26"),
        ([[1, 2]], {"temperature": -0.5}, "temperature must be >= 0"),
        ([[1, 2]], {"temperature": 1.0, "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ([[1, 2]], {"temperature": 1.0, "top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ([[1, 2]], {"top_k": -1}, "top_k must be >= 0"),
        ([[1, 2]], {"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ([[1, 2], []], {}, "every prompt needs at least one token"),
        ([[1, 96]], {}, r"prompt token ids must be in \[0, 96\)"),
        ([[1, 2]], {"eos_token_id": list(range(9))}, "at most 8 eos_token_id values"),
        ([[1, 2]], {"eos_token_id": 96}, "eos_token_id values must be token ids"),
        ([[1, 2], [3]], {"streamer": object()}, "a streamer takes a batch of one prompt"),
    ],
)
def test_eagenerate_checks_before_any_work(root, monkeypatch, prompts, options, message):
    model = load(root)

    def refuse(*args, **kwargs):
        raise AssertionError("the prefill ran before the request was checked")

    monkeypatch.setattr(model, "prefill", refuse)
    for generate in (model.eagenerate, model.generate_target_only):
        with pytest.raises(ValueError, match=message):
            generate(prompts, **({"max_new_tokens": 4} | options))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DynamicTree(top_k=0), "top_k and depth must be at least 1"),
        (lambda: DynamicTree(top_k=2, depth=1, tree_size=8), r"tree_size must be in \[2, 7\]"),
        (lambda: StaticTree([]), "non-empty paths"),
        (lambda: StaticTree([[0], [-1]]), "non-negative child ranks"),
        (lambda: StaticTree([[0], [0]]), "contain a path twice"),
        (lambda: StaticTree([[0], [1, 0], [0, 0, 1]]), r"lack the prefixes \[\[0, 0\], \[1\]\]"),
    ],
)
def test_bad_trees(make, message):
    with pytest.raises(ValueError, match=message):
        make()
