"""The target: a ``transformers`` causal LM of the Llama family, hooked only through public interfaces.

It runs with the attention function of ``cache.py`` (selected by ``attn_implementation``) and returns its last
hidden state (for the logits and EAGLE-1 features) and, for EAGLE-3, the inputs of the three feature layers.

Tensor parallel: with ``tp_plan="auto"`` ``transformers`` shards the target over the ranks of ``torch.distributed``
with the plan it ships for the architecture (attention heads and MLP split, embedding split over the vocabulary,
lm_head gathered). Each rank's attention then sees its own ``1 / tp_size`` of the query and key/value heads, so its
cache holds only those; the residual stream, the feature layers' inputs and the logits are whole on every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from model.cache import KVCache, register_attention

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


def check_tensor_parallel(config: PretrainedConfig, tp_plan: str | None) -> int:
    """The tensor-parallel size of a load with ``tp_plan`` (1 without one), checked before any weight is read."""
    if tp_plan is None:
        return 1
    if tp_plan != "auto":
        raise ValueError(f"tp_plan must be None or 'auto' (the plan transformers ships for the model), got {tp_plan!r}")
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "tp_plan needs torch.distributed initialised first: launch with torchrun and call "
            "torch.distributed.init_process_group() before from_pretrained"
        )
    world = dist.get_world_size()
    if world == 1:
        raise ValueError("tp_plan needs more than one process; torch.distributed's world size is 1")
    heads = {"num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads}
    uneven = [f"{name} {count}" for name, count in heads.items() if count % world]
    if uneven:
        raise ValueError(
            f"the target's {' and '.join(uneven)} do not divide by the world size {world}: each rank must hold "
            "whole attention heads"
        )
    return world


class Target(nn.Module):
    """The hooked target. ``feature_layers`` names the layers whose inputs are EAGLE-3 features (None: EAGLE-1,
    whose feature is the last hidden state). ``tp_size`` is the number of ranks the model is sharded over."""

    def __init__(self, model: nn.Module, feature_layers: tuple[int, ...] | None, tp_size: int = 1) -> None:
        super().__init__()
        self.model = model
        self.feature_layers = feature_layers
        self.tp_size = tp_size
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
        tp_plan: str | None = None,
    ) -> Target:
        """Load the target on ``device``; with ``tp_plan`` sharded over the ranks of ``torch.distributed``, each on
        the device ``transformers`` binds it to (``cuda:LOCAL_RANK``, or the CPU), whose type ``device`` must name."""
        attention = register_attention()
        if tp_plan is None:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention)
            return cls(model.to(device).eval().requires_grad_(False), feature_layers)
        from transformers import DistributedConfig  # transformers >= 5.17, the `tp` extra

        tp_size = check_tensor_parallel(read_target_config(path), tp_plan)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attention, distributed_config=DistributedConfig(tp_size=tp_size)
        )
        target = cls(model.eval().requires_grad_(False), feature_layers, tp_size)
        wanted = torch.device(device)
        if wanted.type != target.device.type or wanted.index not in (None, target.device.index):
            raise ValueError(f"device {wanted} is not this rank's device {target.device}, where transformers put it")
        return target

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def kv_heads(self) -> int:
        """The key/value heads of this rank's attention (all of them without tensor parallelism)."""
        return self.config.num_key_value_heads // self.tp_size

    def embed_tokens(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        kv: KVCache,
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
