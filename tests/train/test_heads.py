"""Training-time test matches drafting at inference; the draft vocabulary; the TTT attention mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from model.heads import HeadConfig, make_head
from train.heads import draft_vocabulary, run_target, shift, ttt_hidden_states, ttt_mask


def tiny_head(kind: str) -> torch.nn.Module:
    config = HeadConfig(
        kind=kind,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        vocab_size=50,
        draft_vocab_size=20 if kind == "eagle3" else 50,
        target_hidden_size=32,
    )
    torch.manual_seed(0)
    return make_head(config, dtype=torch.float64).eval()


class CachedAttention:
    """Inference-style attention: every call appends its K/V to a cache; queries see the cache causally."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.keys.append(k)
        self.values.append(v)
        keys = torch.cat(self.keys, dim=2).repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        values = torch.cat(self.values, dim=2).repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        n, s = q.shape[2], keys.shape[2]
        mask = torch.arange(s)[None, :] <= torch.arange(s - n, s)[:, None]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


@pytest.mark.parametrize("kind", ["eagle3", "eagle1"])
def test_training_time_test_equals_drafting(kind: str) -> None:
    """Step i at index t of the unroll is the i-th draft of a chain grown after the prefix 0..t, as at inference.

    Inference: the head reads the prefix with real features (positions 0..t, causal), then drafts one token at
    a time at positions t+1, t+2, ..., each seeing the prefix and the chain so far, fed its own hidden state and
    the embedding of the next (here: true) token.
    """
    head = tiny_head(kind)
    n, steps = 9, 4
    generator = torch.Generator().manual_seed(1)
    embeds = torch.randn(2, n, 32, generator=generator, dtype=torch.float64)
    first = torch.randn(2, n, 32, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        unrolled = list(ttt_hidden_states(head, embeds, first, steps))
        for t in range(n - 1):
            attend = CachedAttention()
            positions = torch.arange(t + 1).expand(2, t + 1)
            hidden = head(embeds[:, 1 : t + 2], first[:, : t + 1], positions, attend)[:, -1:]
            torch.testing.assert_close(hidden, unrolled[0][:, t : t + 1], rtol=0, atol=1e-12)
            for step in range(1, min(steps, n - 1 - t)):
                position = torch.full((2, 1), t + step)
                hidden = head(embeds[:, t + 1 + step : t + 2 + step], hidden, position, attend)
                # float64 throughout: the two paths differ only in summation order.
                torch.testing.assert_close(hidden, unrolled[step][:, t : t + 1], rtol=0, atol=1e-12)


def test_ttt_mask() -> None:
    mask = ttt_mask(3, 3, torch.device("cpu"))
    expected = torch.tensor(
        [
            [1, 0, 0, 1, 0, 0, 1, 0, 0],
            [1, 1, 0, 0, 1, 0, 0, 1, 0],
            [1, 1, 1, 0, 0, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_shift_pads_with_zeros() -> None:
    x = torch.arange(1, 6)[None, :, None]
    assert shift(x, 2)[0, :, 0].tolist() == [3, 4, 5, 0, 0]
    assert shift(x, 0) is x


def test_draft_vocabulary_keeps_the_most_frequent_ids() -> None:
    ids = np.array([5, 5, 5, 2, 2, 7, 7, 1, 9], dtype=np.uint16)  # counts: 5:3, 2:2, 7:2, then 1 and 9 once
    d2t, t2d = draft_vocabulary(ids, vocab=10, size=4)
    draft_ids = torch.arange(4) + d2t
    assert draft_ids.tolist() == [1, 2, 5, 7]  # the tie between 1 and 9 goes to the smaller id
    assert t2d.nonzero().flatten().tolist() == [1, 2, 5, 7]


def test_target_features_are_the_official_ones() -> None:
    """EAGLE-3: the inputs of decoder layers 2, L//2, L-3 in that order; EAGLE-1: the normed last hidden state."""
    config = LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=8, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    target = LlamaForCausalLM(config).eval()
    inputs = {}

    def keep_input(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inputs[module.self_attn.layer_idx] = args[0] if args else kwargs["hidden_states"]

    for layer in target.model.layers:
        layer.register_forward_pre_hook(keep_input, with_kwargs=True)
    tokens = torch.randint(0, 40, (2, 7))
    batch = run_target(target, tokens, "eagle3")
    torch.testing.assert_close(batch.features, torch.cat([inputs[2], inputs[4], inputs[5]], dim=-1), rtol=0, atol=0)
    torch.testing.assert_close(batch.embeds, target.model.embed_tokens(tokens), rtol=0, atol=0)
    reference = target(input_ids=tokens)
    torch.testing.assert_close(batch.logits, reference.logits, rtol=0, atol=0)
    eagle1 = run_target(target, tokens, "eagle1")
    torch.testing.assert_close(target.lm_head(eagle1.features), reference.logits, rtol=0, atol=0)
