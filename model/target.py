"""The target: a ``transformers`` causal LM of the Llama family, hooked only through public interfaces.

It runs with the attention function of ``cache.py`` (selected by ``attn_implementation``) and returns its last
hidden state (for the logits and EAGLE-1 features) and, for EAGLE-3, the inputs of the three feature layers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from model.cache import register_attention

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def read_target_config(path: str | Path) -> PretrainedConfig:
    return AutoConfig.from_pretrained(path)


def check_target_config(config: PretrainedConfig, max_seq_len: int) -> None:
    """Refuse what the runtime cannot run exactly: other architectures and a sliding window that would bind."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported target model_type {config.model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
    window = getattr(config, "sliding_window", None)
    if window is not None and window < max_seq_len:
        raise ValueError(
            f"the target uses sliding-window attention ({window} tokens) shorter than max_seq_len {max_seq_len}; "
            "the static cache attends to the whole prefix"
        )


class Target(nn.Module):
    """The hooked target. ``feature_layers`` names the layers whose inputs are EAGLE-3 features (None: EAGLE-1,
    whose feature is the last hidden state)."""

    def __init__(self, model: nn.Module, feature_layers: tuple[int, ...] | None) -> None:
        super().__init__()
        self.model = model
        self.feature_layers = feature_layers
        # Forward pre-hooks capture the layer inputs: `output_hidden_states` would break the compiled graph
        # (transformers' output recorder enters a lock) and keep every layer's output alive.
        self._layer_inputs: dict[int, torch.Tensor] = {}
        for index in sorted(set(feature_layers or ())):
            model.base_model.layers[index].register_forward_pre_hook(self._capture_hook(index), with_kwargs=True)

    def _capture_hook(self, index: int) -> Callable[[nn.Module, tuple, dict], None]:
        def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self._layer_inputs[index] = args[0] if args else kwargs["hidden_states"]

        return capture

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        feature_layers: tuple[int, ...] | None,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> Target:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=register_attention())
        return cls(model.to(device).eval().requires_grad_(False), feature_layers)

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    def embed_tokens(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        kv: torch.Tensor,
        cache_len: torch.Tensor,
        tree_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``input_ids [B, N]`` at ``position_ids`` writing K/V to ``kv`` from ``cache_len`` on.

        ``tree_mask`` ``[B, N, N]`` as in ``cache.attend`` (None: a prefill from an empty cache). Returns the last
        hidden state ``[B, N, H]`` (after the final norm) and the draft head's features: the same tensor for
        EAGLE-1, the feature layers' inputs concatenated, ``[B, N, 3 H]``, for EAGLE-3.
        """
        out = self.model.base_model(
            input_ids=input_ids,
            position_ids=position_ids,
            use_cache=False,
            eagle_kv=kv,
            eagle_cache_len=cache_len,
            eagle_tree_mask=tree_mask,
        )
        hidden = out.last_hidden_state
        if self.feature_layers is None:
            return hidden, hidden
        features = torch.cat([self._layer_inputs[i] for i in self.feature_layers], dim=-1)
        self._layer_inputs.clear()
        return hidden, features
