"""EAGLE draft heads: EAGLE-1/2 (``Eagle1Head``) and EAGLE-3 (``Eagle3Head``).

Module and parameter names follow the official EAGLE checkpoints (SafeAILab/EAGLE ``cnets1.py`` / ``cnets.py``,
SpecForge ``llama3_eagle.py``), so a state dict loads without renaming. The heads do not attend themselves: the
caller passes ``attend(q, k, v) -> out`` with ``q [B, Hq, N, Dh]`` and ``k, v [B, Hkv, N, Dh]`` after rotary
embedding, and decides what the queries see (causal SDPA in training, the draft cache and a tree mask in the step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Rotary types whose frequencies never change with the sequence; the dynamic ones rescale at run time
# from the data (a host sync), which a static-shape step cannot do.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass
class HeadConfig:
    """A draft head's shape, parsed from (and written back to) the official ``config.json``.

    ``kind`` is not an official field: a config with ``draft_vocab_size`` (or an ``...Eagle3`` architecture) is an
    EAGLE-3 head, any other Llama-style config an EAGLE-1/2 head, as the official loaders read them.
    """

    kind: Literal["eagle1", "eagle3"]
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    draft_vocab_size: int
    target_hidden_size: int
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    fc_bias: bool = True  # EAGLE-1 only: official key "bias"; EAGLE-3's fc never has one
    qkv_bias: bool = False  # EAGLE-1 only: official key "qkv_bias" (Qwen2 heads)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # other fields, written back unchanged

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        required = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"head config.json lacks required fields {missing}")
        if d.get("num_hidden_layers", 1) != 1:
            raise ValueError(f"only one-layer draft heads exist in the EAGLE format, got {d['num_hidden_layers']}")
        architectures = d.get("architectures") or []
        kind = "eagle3" if "draft_vocab_size" in d or any(a.endswith("Eagle3") for a in architectures) else "eagle1"
        rope_theta, rope_scaling = _rope_fields(d)
        hidden, heads = d["hidden_size"], d["num_attention_heads"]
        known = {
            "architectures", "model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size", "draft_vocab_size", "target_hidden_size", "rms_norm_eps", "hidden_act",
            "rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings", "bias", "qkv_bias",
            "num_hidden_layers",
        }  # fmt: skip
        return cls(
            kind=kind,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or hidden // heads,
            intermediate_size=d["intermediate_size"],
            vocab_size=d["vocab_size"],
            draft_vocab_size=d.get("draft_vocab_size", d["vocab_size"]),
            target_hidden_size=d.get("target_hidden_size", hidden),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            hidden_act=d.get("hidden_act", "silu"),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            fc_bias=d.get("bias", True),
            qkv_bias=d.get("qkv_bias", False),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra)
        d.update(
            architectures=["LlamaForCausalLM" if self.kind == "eagle1" else "LlamaForCausalLMEagle3"],
            model_type="llama",
            num_hidden_layers=1,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            rms_norm_eps=self.rms_norm_eps,
            hidden_act=self.hidden_act,
            rope_theta=self.rope_theta,
            rope_scaling=self.rope_scaling,
            max_position_embeddings=self.max_position_embeddings,
        )
        if self.kind == "eagle1":
            d.update(bias=self.fc_bias, qkv_bias=self.qkv_bias)
        else:
            d["draft_vocab_size"] = self.draft_vocab_size
            # The official loader takes the embedding from the target unless target_hidden_size is present.
            if self.target_hidden_size != self.hidden_size:
                d["target_hidden_size"] = self.target_hidden_size
        return d

    def llama_config(self) -> LlamaConfig:
        """The same shapes as a ``transformers`` LlamaConfig, for the MLP, norms and rotary embedding."""
        rope = {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta}
        rope["rope_type"] = rope.pop("type", rope["rope_type"])
        if rope["rope_type"] not in STATIC_ROPE_TYPES:
            raise ValueError(f"rope type {rope['rope_type']!r} is not supported; supported: {STATIC_ROPE_TYPES}")
        return LlamaConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act=self.hidden_act,
            rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            vocab_size=self.vocab_size,
            rope_parameters=rope,
            mlp_bias=False,
        )


def _rope_fields(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """``rope_theta`` and ``rope_scaling`` from an old-style or a transformers-5 style (``rope_parameters``) config."""
    params = dict(d.get("rope_parameters") or {})
    theta = d.get("rope_theta", params.pop("rope_theta", 10000.0))
    scaling = d.get("rope_scaling")
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = params
    return float(theta), scaling


def eagle3_feature_layers(num_hidden_layers: int) -> tuple[int, int, int]:
    """The target layers whose inputs EAGLE-3 concatenates: 2, L // 2 and L - 3, in ascending order.

    This is the official order whenever the three differ (L >= 7); tiny test models may repeat a layer.
    """
    if num_hidden_layers < 3:
        raise ValueError(f"EAGLE-3 needs a target with at least 3 layers, got {num_hidden_layers}")
    low, mid, high = sorted((2, num_hidden_layers // 2, num_hidden_layers - 3))
    return low, mid, high


class DraftAttention(nn.Module):
    """Q/K/V projections, rotary embedding and the output projection; the attention itself is ``attend``."""

    def __init__(self, config: HeadConfig, in_features: int, bias: bool) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(in_features, config.num_attention_heads * config.head_dim, bias=bias)
        self.k_proj = nn.Linear(in_features, config.num_key_value_heads * config.head_dim, bias=bias)
        self.v_proj = nn.Linear(in_features, config.num_key_value_heads * config.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_attention_heads * config.head_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out = attend(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class Eagle1Layer(nn.Module):
    """EAGLE-1's decoder layer: a Llama layer without the input norm (the fc output goes straight in)."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        llama = config.llama_config()
        self.self_attn = DraftAttention(config, config.hidden_size, bias=config.qkv_bias)
        self.mlp = LlamaMLP(llama)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        h = x + self.self_attn(x, cos, sin, attend)
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3Layer(nn.Module):
    """EAGLE-3's decoder layer: attention reads ``[input_layernorm(embeds), hidden_norm(hidden)]`` (2H wide), the
    residual is the hidden."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        llama = config.llama_config()
        self.self_attn = DraftAttention(config, 2 * config.hidden_size, bias=False)
        self.mlp = LlamaMLP(llama)
        self.hidden_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, embeds: torch.Tensor, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        x = torch.cat((self.input_layernorm(embeds), self.hidden_norm(hidden)), dim=-1)
        h = hidden + self.self_attn(x, cos, sin, attend)
        return h + self.mlp(self.post_attention_layernorm(h))


class _Head(nn.Module):
    """What both heads share: the config, the rotary embedding and an optional own token embedding.

    Official checkpoints usually carry no embedding (it is the target's); one that does (``embed_tokens.weight``,
    e.g. an EAGLE-3 head narrower than its target) gets ``own_embedding=True`` and the caller embeds with it.
    """

    def __init__(self, config: HeadConfig, own_embedding: bool) -> None:
        super().__init__()
        self.config = config
        self.rotary_emb = LlamaRotaryEmbedding(config.llama_config())
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size) if own_embedding else None

    def rotary(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin`` at ``position_ids`` (``[B, N]``) in ``x``'s dtype, as ``rotary_emb`` computes them.

        The frequencies are an elementwise product, which the compiler fuses with the cos and sin: some
        ``transformers`` versions form it as a float32 matmul, a GEMM launch of its own in every draft forward. The
        product is exact either way. Dynamic rope types update their frequencies per call, so they keep the module.
        """
        if "dynamic" in self.rotary_emb.rope_type:
            return self.rotary_emb(x, position_ids)
        freqs = position_ids[..., None].float() * self.rotary_emb.inv_freq.float()
        angles = torch.cat((freqs, freqs), dim=-1)
        scaling = self.rotary_emb.attention_scaling
        return (angles.cos() * scaling).to(x.dtype), (angles.sin() * scaling).to(x.dtype)


class Eagle1Head(_Head):
    """EAGLE-1/2: ``fc`` over ``[embedding, feature]`` (2H -> H), one decoder layer, logits via the target's lm_head.

    ``features`` are the target's last hidden states after its final norm (what the target's lm_head reads); the
    head predicts the next such feature, which goes to the target's lm_head with no further norm.
    """

    def __init__(self, config: HeadConfig, own_embedding: bool = False) -> None:
        if config.kind != "eagle1":
            raise ValueError(f"Eagle1Head needs an eagle1 config, got {config.kind}")
        super().__init__(config, own_embedding)
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=config.fc_bias)
        self.layers = nn.ModuleList([Eagle1Layer(config)])

    def forward(
        self, embeds: torch.Tensor, features: torch.Tensor, position_ids: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        """``embeds``, ``features`` ``[B, N, H]``, ``position_ids`` ``[B, N]`` -> the head's hidden ``[B, N, H]``."""
        x = self.fc(torch.cat((embeds, features.to(embeds.dtype)), dim=-1))
        cos, sin = self.rotary(x, position_ids)
        return self.layers[0](x, cos, sin, attend)

    def logits(self, hidden: torch.Tensor, target_lm_head: nn.Module) -> torch.Tensor:
        """``[B, N, H]`` -> ``[B, N, V]`` through the target's lm_head."""
        return target_lm_head(hidden)


class Eagle3Head(_Head):
    """EAGLE-3: ``fc`` over three target layers' inputs (3 H_t -> H), one decoder layer, own norm and lm_head.

    The lm_head covers ``draft_vocab_size`` tokens; ``d2t[i]`` is the offset from draft id ``i`` to its target id
    (target id = ``i + d2t[i]``) and ``t2d`` marks the target ids the draft vocabulary covers (kept for the format).
    """

    def __init__(self, config: HeadConfig, own_embedding: bool = False) -> None:
        if config.kind != "eagle3":
            raise ValueError(f"Eagle3Head needs an eagle3 config, got {config.kind}")
        super().__init__(config, own_embedding)
        self.fc = nn.Linear(3 * config.target_hidden_size, config.hidden_size, bias=False)
        self.midlayer = Eagle3Layer(config)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.int64))
        self.register_buffer("t2d", torch.ones(config.vocab_size, dtype=torch.bool))

    def project(self, target_layer_inputs: torch.Tensor) -> torch.Tensor:
        """``[B, N, 3 H_t]`` (the inputs of ``eagle3_feature_layers(L)`` concatenated in order) -> ``[B, N, H]``."""
        return self.fc(target_layer_inputs)

    def forward(
        self, embeds: torch.Tensor, hidden: torch.Tensor, position_ids: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        """``embeds`` ``[B, N, H]``; ``hidden`` ``[B, N, H]``: ``project(...)`` of the target's layer inputs, or
        the head's own previous output when drafting further; returns the head's hidden ``[B, N, H]`` (pre-norm)."""
        cos, sin = self.rotary(hidden, position_ids)
        return self.midlayer(embeds.to(hidden.dtype), hidden, cos, sin, attend)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, N, H]`` -> ``[B, N, Vd]`` over the draft vocabulary."""
        return self.lm_head(self.norm(hidden))


EagleHead = Eagle1Head | Eagle3Head


def make_head(
    config: HeadConfig,
    own_embedding: bool = False,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> EagleHead:
    """A randomly initialised head of the config's kind, built directly in ``dtype`` on ``device``.

    Building in place (rather than ``.to(dtype)`` afterwards) keeps the rotary frequencies in float32.
    """
    head_class = {"eagle1": Eagle1Head, "eagle3": Eagle3Head}[config.kind]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return head_class(config, own_embedding)
    finally:
        torch.set_default_dtype(previous)
