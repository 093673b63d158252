"""The user loop: check the request, prefill, run steps, read tokens back asynchronously, report statistics.

Every ``read_every`` steps the stop flags (and, for a streamer, the tokens) are copied into pinned host buffers
with ``non_blocking``; the host waits for that copy only after it has issued the next step, so the device keeps
working while the host reads. A run may take up to ``read_every`` steps more than it needs; finished sequences
emit nothing in those steps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from model.eagle_model import EagleModel

Prompts = torch.Tensor | Sequence[Sequence[int] | torch.Tensor]


class Streamer(Protocol):
    """The ``transformers`` streamer interface (e.g. ``TextStreamer``): the prompt first, then new tokens."""

    def put(self, value: torch.Tensor) -> None: ...

    def end(self) -> None: ...


@dataclass
class GenerationResult:
    """``tokens``: each sequence's new tokens (the stop token included). ``steps``: decode steps run after the
    prefill. ``mean_accepted``: tau, tokens per step and sequence including the bonus, over unfinished
    sequences' steps. ``accept_histogram[a]``: how often ``a`` drafts were accepted."""

    tokens: list[list[int]]
    steps: int
    mean_accepted: float
    accept_histogram: list[int]
    prefill_seconds: float
    decode_seconds: float

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def tokens_per_second(self) -> float:
        """Decode throughput: tokens emitted after the prefill's first one, per second of decoding."""
        decoded = self.new_tokens - sum(1 for t in self.tokens if t)
        return decoded / self.decode_seconds if self.decode_seconds > 0 else float("nan")


def run(
    model: EagleModel,
    prompts: Prompts,
    *,
    speculative: bool,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int = 0,
    streamer: Streamer | None = None,
    read_every: int | None = None,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` per prompt; greedy when ``temperature`` is 0, else sampling with the
    ``transformers`` warpers (``top_k`` 0 and ``top_p`` 1 disable them), coins from a device generator seeded
    with ``seed``. ``prompts``: a ``[B, N]`` tensor or a list of token-id sequences of any lengths.

    The host reads the device state back every ``read_every`` steps (default 4 on CUDA; 1 on the CPU, where
    nothing runs ahead of the host anyway).
    """
    read_every = read_every or (4 if model.device.type == "cuda" else 1)
    input_ids, lengths = _right_pad(prompts)
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    _check_request(model, input_ids, lengths, max_new_tokens, temperature, top_k, top_p, eos, streamer, read_every)
    input_ids = input_ids.to(model.device)
    model.configure(
        len(lengths), max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_token_ids=eos,
    )  # fmt: skip
    generator = torch.Generator(model.device).manual_seed(seed)
    if streamer is not None:
        streamer.put(input_ids[0, : lengths[0]].cpu())

    start = time.perf_counter()
    if model.sampling:
        model.draw_coins(generator)
    model.prefill(input_ids, torch.tensor(lengths, device=model.device), draft=speculative)
    reader = _Reader(model, streamer)
    reader.request()
    finished = reader.collect()  # waits for the prefill, timed apart
    prefill_done = time.perf_counter()

    step = model.eagenerate_step if speculative else model.target_step
    steps, pending = 0, False
    # Every unfinished sequence emits at least one token per step, so max_new_tokens - 1 steps always suffice.
    while not finished and steps < max_new_tokens - 1:
        if model.sampling:
            model.draw_coins(generator)
        step()
        steps += 1
        if pending:  # the copy was queued before the step just issued, which the device can run meanwhile
            finished, pending = reader.collect(), False
        if steps % read_every == 0 and not finished:
            reader.request()
            pending = True
    reader.finish()
    decode_done = time.perf_counter()

    b = model.batch
    generated = model.generated[:b].tolist()
    out = model.out_tokens[:b].tolist()
    hist = model.accept_hist[:b].sum(0)
    return GenerationResult(
        tokens=[row[:n] for row, n in zip(out, generated, strict=True)],
        steps=steps,
        mean_accepted=float(model.accepted[:b].sum()) / max(int(model.active_steps[:b].sum()), 1),
        accept_histogram=hist.tolist(),
        prefill_seconds=prefill_done - start,
        decode_seconds=decode_done - prefill_done,
    )


class _Reader:
    """Asynchronous read-back of the stop flags (and, for a streamer, of the tokens) through pinned buffers."""

    def __init__(self, model: EagleModel, streamer: Streamer | None) -> None:
        self.model = model
        self.streamer = streamer
        self.streamed = 0
        pin = model.device.type == "cuda"
        b = model.batch
        self.all_done = torch.zeros((), dtype=torch.bool, pin_memory=pin)
        self.generated = torch.zeros(b, dtype=torch.long, pin_memory=pin)
        self.tokens = torch.zeros(model.out_tokens[:b].shape, dtype=torch.long, pin_memory=pin) if streamer else None
        self.event = torch.cuda.Event() if model.device.type == "cuda" else None

    def request(self) -> None:
        """Start copying the current state to the host."""
        m, b = self.model, self.model.batch
        self.all_done.copy_(m.done[:b].all(), non_blocking=True)
        self.generated.copy_(m.generated[:b], non_blocking=True)
        if self.tokens is not None:
            self.tokens.copy_(m.out_tokens[:b], non_blocking=True)
        if self.event is not None:
            self.event.record()

    def collect(self) -> bool:
        """Wait for the last requested copy, stream its new tokens; True when every sequence had finished."""
        if self.event is not None:
            self.event.synchronize()
        if self.streamer is not None and self.tokens is not None:
            n = int(self.generated[0])
            if n > self.streamed:
                self.streamer.put(self.tokens[0, self.streamed : n].clone())
                self.streamed = n
        return bool(self.all_done)

    def finish(self) -> None:
        """Wait for the device and stream what is left."""
        self.request()
        self.collect()
        if self.streamer is not None:
            self.streamer.end()


def _right_pad(prompts: Prompts) -> tuple[torch.Tensor, list[int]]:
    """The prompts as one right-padded ``[B, N]`` CPU tensor, and their lengths."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"input_ids must be [B, N], got shape {list(prompts.shape)}")
        rows = list(prompts.long())
    else:
        rows = [torch.as_tensor(p, dtype=torch.long).flatten() for p in prompts]
    lengths = [int(r.numel()) for r in rows]
    if not rows or min(lengths) == 0:
        raise ValueError("every prompt needs at least one token")
    ids = torch.zeros(len(rows), max(lengths), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : r.numel()] = r.cpu()
    return ids, lengths


def _check_request(
    model: EagleModel,
    input_ids: torch.Tensor,
    lengths: list[int],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos: list[int],
    streamer: Streamer | None,
    read_every: int,
) -> None:
    limit = model.max_seq_len - model.tree.tree_size
    vocab = model.target.config.vocab_size
    if len(lengths) > model.max_batch_size:
        raise ValueError(f"batch {len(lengths)} > max_batch_size {model.max_batch_size}")
    if max(lengths) > limit:
        raise ValueError(f"a prompt of {max(lengths)} tokens is longer than max_seq_len - tree_size = {limit}")
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
        raise ValueError(f"prompt token ids must be in [0, {vocab})")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if len(eos) > model.eos.numel():
        raise ValueError(f"at most {model.eos.numel()} eos_token_id values, got {len(eos)}")
    if not all(0 <= e < vocab for e in eos):
        raise ValueError(f"eos_token_id values must be token ids in [0, {vocab}), got {eos}")
    if streamer is not None and len(lengths) != 1:
        raise ValueError("a streamer takes a batch of one prompt")
    if read_every < 1:
        raise ValueError(f"read_every must be at least 1, got {read_every}")
