"""Tiny random targets and heads for the model tests, saved in the formats the runtime reads."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from model.checkpoint import save_head
from model.heads import Eagle1Head, EagleHead, HeadConfig, make_head

ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}
HIDDEN, HEADS, KV_HEADS, INTERMEDIATE = 32, 4, 2, 64


def make_target(
    arch: str = "llama", *, layers: int = 4, vocab: int = 96, seed: int = 0, init: float = 0.15
) -> PreTrainedModel:
    """A random target whose greedy choices are clear (``init`` well above transformers' 0.02, so the top two
    logits differ by far more than float32 rounding between attention implementations)."""
    config_class, model_class = ARCHITECTURES[arch]
    config = config_class(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HIDDEN // HEADS,
        num_hidden_layers=layers,
        vocab_size=vocab,
        max_position_embeddings=512,
        initializer_range=init,
        tie_word_embeddings=False,
        sliding_window=None,
        bos_token_id=None,
        eos_token_id=None,  # so that transformers' generate never stops early in the references
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    return model_class(config).eval()


def save_target(path: Path, arch: str = "llama", **options: object) -> PreTrainedModel:
    model = make_target(arch, **options)
    model.save_pretrained(path)
    return model


def head_config(kind: str, *, vocab: int = 96, draft_vocab: int | None = None, hidden: int = HIDDEN) -> HeadConfig:
    fields: dict[str, object] = dict(
        hidden_size=hidden,
        intermediate_size=INTERMEDIATE,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=vocab,
        rms_norm_eps=1e-6,
    )
    if kind == "eagle1":
        fields["bias"] = True
    else:
        fields["draft_vocab_size"] = draft_vocab or vocab
        if hidden != HIDDEN:
            fields["target_hidden_size"] = HIDDEN
    return HeadConfig.from_dict(fields)


def save_random_head(path: Path, kind: str, *, seed: int = 0, safetensors: bool = True, **options: object) -> EagleHead:
    config = head_config(kind, **options)
    torch.manual_seed(seed)
    head = make_head(config, own_embedding=config.hidden_size != HIDDEN)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.15)
    if kind == "eagle3" and config.draft_vocab_size < config.vocab_size:
        # Draft id i is target id 2 i + 1 (an arbitrary but valid reduced vocabulary).
        draft = torch.arange(config.draft_vocab_size)
        head.d2t.copy_(draft + 1)
        head.t2d.zero_()
        head.t2d[2 * draft + 1] = True
    save_head(head, path, safetensors=safetensors)
    return head


def greedy_reference(target: PreTrainedModel, prompt: list[int], new_tokens: int) -> list[int]:
    """``transformers``' own greedy decoding of one prompt."""
    ids = torch.tensor([prompt])
    out = target.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


class OracleHead(Eagle1Head):
    """A cheating EAGLE-1 head that drafts the known greedy continuation, except at a few positions.

    Its hidden state carries the pair's token (channel 0) and position (channel 1): a pair at position p holds
    token ``truth[b, p + 1]``; if it does, the head proposes ``truth[b, p + 2]`` (unless ``(7 p + b) % miss == 0``,
    where it proposes a wrong token), so acceptance runs long but not always to the end of the tree.
    """

    def __init__(self, config: HeadConfig, truth: torch.Tensor, miss: int) -> None:
        super().__init__(config, own_embedding=True)
        self.truth = truth
        self.miss = miss
        with torch.no_grad():
            self.embed_tokens.weight.zero_()
            self.embed_tokens.weight[:, 0] = torch.arange(config.vocab_size, dtype=torch.float32)

    def forward(self, embeds, features, position_ids, attend):
        return torch.stack((embeds[..., 0], position_ids.to(embeds.dtype)), -1)

    def logits(self, hidden, target_lm_head):
        batch, n, _ = hidden.shape
        token, position = hidden[..., 0].round().long(), hidden[..., 1].round().long()
        rows = torch.arange(batch)[:, None].expand(-1, n)
        width = self.truth.shape[1]
        follows = self.truth[rows, (position + 1).clamp_max(width - 1)] == token
        proposal = self.truth[rows, (position + 2).clamp_max(width - 1)].clamp_min(0)
        wrong = (7 * position + rows) % self.miss == 0
        proposal = torch.where(follows & ~wrong, proposal, (proposal + 1) % self.config.vocab_size)
        logits = torch.zeros(batch, n, self.config.vocab_size)
        return logits.scatter(2, proposal[..., None], 10.0)
