"""Draft heads in the official EAGLE format: a folder with ``config.json`` and ``model.safetensors`` or
``pytorch_model.bin`` holding the head's state dict under the official key names (see ``heads.py``).

Loading is strict: a missing key, an unexpected key or a wrong shape is a ``ValueError`` that lists all of them.
Two keys are optional, as in the official loaders: ``embed_tokens.weight`` (the head then embeds with its own
table instead of the target's) and, when the draft vocabulary is the target's, ``d2t`` / ``t2d``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.heads import EagleHead, HeadConfig, eagle3_feature_layers, make_head

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"


def read_head_config(path: str | Path) -> HeadConfig:
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in the head folder {path}")
    return HeadConfig.from_dict(json.loads(file.read_text()))


def check_fits_target(config: HeadConfig, target_config: Any) -> None:
    """Raise ``ValueError`` naming every way the head's shape disagrees with the target's config."""
    problems = []
    if config.vocab_size != target_config.vocab_size:
        problems.append(f"vocab_size {config.vocab_size} != the target's {target_config.vocab_size}")
    if config.kind == "eagle1" and config.hidden_size != target_config.hidden_size:
        problems.append(f"hidden_size {config.hidden_size} != the target's {target_config.hidden_size}")
    if config.kind == "eagle3" and config.target_hidden_size != target_config.hidden_size:
        problems.append(f"target_hidden_size {config.target_hidden_size} != the target's {target_config.hidden_size}")
    if config.draft_vocab_size > config.vocab_size:
        problems.append(f"draft_vocab_size {config.draft_vocab_size} > vocab_size {config.vocab_size}")
    if problems:
        raise ValueError(f"the {config.kind} head does not fit the target: " + "; ".join(problems))
    if config.kind == "eagle3":
        eagle3_feature_layers(target_config.num_hidden_layers)


def load_head(path: str | Path, *, target_config: Any, dtype: torch.dtype, device: torch.device | str) -> EagleHead:
    """Read an official-format head folder into an ``Eagle1Head`` or ``Eagle3Head`` (eval mode, no grad)."""
    path = Path(path)
    config = read_head_config(path)
    check_fits_target(config, target_config)
    state = _read_state_dict(path)
    own_embedding = "embed_tokens.weight" in state
    if config.kind == "eagle3" and config.target_hidden_size != config.hidden_size and not own_embedding:
        raise ValueError(
            f"{path}: the head is {config.hidden_size} wide but its target {config.target_hidden_size}, so the "
            "checkpoint must carry its own embed_tokens.weight"
        )
    head = make_head(config, own_embedding, dtype=dtype, device=device)
    _check_keys(path, head, state)
    head.load_state_dict(state, strict=False)  # _check_keys allowed only the optional d2t / t2d to be absent
    if config.kind == "eagle3":
        _check_d2t(path, head.d2t, config.vocab_size)
    return head.eval().requires_grad_(False)


def save_head(head: EagleHead, path: str | Path, *, safetensors: bool = True) -> None:
    """Write ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``) in the official format."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(head.config.to_dict(), indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    if safetensors:
        save_file(state, str(path / SAFETENSORS_FILE), metadata={"format": "pt"})
    else:
        torch.save(state, path / PYTORCH_FILE)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if (path / SAFETENSORS_FILE).is_file():
        return load_file(str(path / SAFETENSORS_FILE))
    if (path / PYTORCH_FILE).is_file():
        return torch.load(path / PYTORCH_FILE, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no {SAFETENSORS_FILE} or {PYTORCH_FILE} in the head folder {path}")


def _check_keys(path: Path, head: EagleHead, state: dict[str, torch.Tensor]) -> None:
    expected = head.state_dict()
    config = head.config
    optional = {"d2t", "t2d"} if config.kind == "eagle3" and config.draft_vocab_size == config.vocab_size else set()
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {list(state[k].shape)} (expected {list(expected[k].shape)})"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} is not a {config.kind} head for this target: missing keys {missing}, unexpected keys "
            f"{unexpected}, wrong shapes {wrong}"
        )


def _check_d2t(path: Path, d2t: torch.Tensor, vocab_size: int) -> None:
    target_ids = torch.arange(d2t.numel(), device=d2t.device) + d2t
    if bool(((target_ids < 0) | (target_ids >= vocab_size)).any()):
        raise ValueError(f"{path}: d2t maps draft ids outside the target vocabulary [0, {vocab_size})")
