"""Pieces shared by the training stages: token windows, the wall-clock budget and schedule, progress lines."""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a CPU generator that drives every data draw."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; plain fp32 on CPU (the toy runs), where bf16 matmuls are slow."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def read_tokens(data: Path, split: str) -> np.ndarray:
    """The uint16 ids `train.tokenizer` wrote for a split."""
    return np.fromfile(data / f"{split}.bin", dtype="<u2")


def vocab_size(data: Path) -> int:
    return json.loads((data / "tokens.json").read_text())["vocab_size"]


class TokenWindows:
    """A split's token stream on the device, cut into windows of `length + 1` ids (inputs and next-token labels)."""

    def __init__(self, ids: np.ndarray, length: int, device: torch.device) -> None:
        if ids.size < length + 2:
            raise ValueError(f"a split of {ids.size} tokens is too short for windows of {length + 1}")
        self.ids = torch.from_numpy(ids.astype(np.int64)).to(device)
        self.length = length

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """`batch` windows at uniformly random offsets drawn from `generator`: `[batch, length + 1]`."""
        starts = torch.randint(0, self.ids.numel() - self.length, (batch,), generator=generator)
        offsets = starts[:, None] + torch.arange(self.length + 1)
        return self.ids[offsets.to(self.ids.device)]

    def sequential(self, batch: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        """Non-overlapping windows from the start, in batches (the last may be smaller); at most `limit` windows."""
        count = (self.ids.numel() - 1) // self.length
        if limit is not None:
            count = min(count, limit)
        offsets = torch.arange(count)[:, None] * self.length + torch.arange(self.length + 1)
        for i in range(0, count, batch):
            yield self.ids[offsets[i : i + batch].to(self.ids.device)]


@dataclass
class Budget:
    """A wall-clock budget and an optional step cap; `progress` in [0, 1] drives the learning-rate schedule."""

    seconds: float
    max_steps: int | None = None
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, step: int) -> float:
        by_time = self.elapsed() / self.seconds
        by_steps = step / self.max_steps if self.max_steps else 0.0
        return min(1.0, max(by_time, by_steps))

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0


def learning_rate(step: int, progress: float, *, peak: float, warmup_steps: int, floor: float = 0.1) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay on `progress` down to `floor * peak`."""
    warm = min(1.0, (step + 1) / warmup_steps)
    cosine = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * warm * cosine


class Progress:
    """Plain periodic log lines: step, metrics, tokens per second since the last line, elapsed time."""

    def __init__(self, name: str, every: int) -> None:
        self.name = name
        self.every = every
        self.start = self.last_time = time.perf_counter()
        self.tokens_since = 0

    def update(self, step: int, tokens: int, metrics: dict[str, float]) -> None:
        """Count `tokens`; every `every` steps print a line (metrics are read only then, so no sync otherwise)."""
        self.tokens_since += tokens
        if step % self.every:
            return
        now = time.perf_counter()
        rate = self.tokens_since / max(now - self.last_time, 1e-9)
        shown = " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        print(f"{self.name} step {step} | {shown} | {rate / 1e3:,.0f}k tok/s | {now - self.start:.0f}s", flush=True)
        self.last_time, self.tokens_since = now, 0


def _fmt(value: float | torch.Tensor) -> str:
    value = float(value)
    return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.4f}"


def save_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=1) + "\n")
