"""Whole-step compilation and CUDA-graph capture of ``EagleModel.eagenerate_step``.

:func:`compile_step` compiles the step with ``torch.compile(fullgraph=True)`` and, on CUDA, captures it as one CUDA
graph; calling the :class:`CompiledStep` it returns runs one step. Nothing happens at import time.

One graph needs no copies: the step keeps all of its state (caches, lengths, tree, stop flags, statistics) in the
model's buffers, allocated once and updated in place, so the graph reads and writes them at fixed addresses. Its
outputs ``(tokens, counts)`` are static tensors in the graph's memory pool, overwritten by every replay: copy them to
keep them (``model.generate`` reads the buffers, not the outputs).

What a graph is specialised on: the tree (fixed when the model is built), the batch (``model.batch``) and greedy
versus sampling (``model.sampling``), both set by ``model.configure``. A :class:`CompiledStep` keeps one graph per
``(batch, sampling)`` pair. The first :data:`WARMUP_STEPS` calls with a new pair run the compiled step for real on a
side stream (dynamo compiles for the new pair there, and Triton's JIT, autotuning and cuBLAS's lazy set-up happen
outside capture); the next call captures the step, without running it, and replays it. So a new batch size or a
switch between greedy and sampling costs one compile and one capture; a new tree needs a new model. Dynamo keeps at
most ``torch._dynamo.config.recompile_limit`` (8) compiled versions of the step (over all models in the process); the
call that would need one more fails, so raise that limit to serve more batch sizes.

Sampling: the caller draws the coins of a step (``model.draw_coins(generator)``) before calling it, as
``model.generate`` does, so a sampling step costs one small kernel launch besides the graph.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from model.eagle_model import EagleModel

StepOutput = tuple[torch.Tensor, torch.Tensor]
MODES = ("default", "max-autotune-no-cudagraphs")  # inductor's own CUDA graphs would nest inside ours
WARMUP_STEPS = 2


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    output: StepOutput


class CompiledStep:
    """``eagenerate_step`` compiled whole and, with ``capture``, replayed from one CUDA graph per (batch, sampling).

    ``compiled`` is the ``torch.compile``'d step itself (never captured); calling the object returns what
    ``eagenerate_step`` returns: the emitted tokens ``[B, D + 2]`` and their counts ``[B]`` (static tensors once
    captured).
    """

    def __init__(self, model: EagleModel, *, mode: str, capture: bool) -> None:
        self.model = model
        self.capture = capture
        # The method of the class, not the attribute: EagleModel.compile shadows eagenerate_step with this object.
        step = type(model).eagenerate_step.__get__(model)
        self.compiled: Callable[[], StepOutput] = torch.compile(step, fullgraph=True, dynamic=False, mode=mode)
        self._graphs: dict[tuple[int, bool], _Captured] = {}
        self._warm_calls: Counter[tuple[int, bool]] = Counter()
        self._side_stream = torch.cuda.Stream(model.device) if capture else None

    @property
    def captures(self) -> int:
        """How many CUDA graphs this step has captured so far: one per (batch, sampling) pair it has run."""
        return len(self._graphs)

    def __call__(self) -> StepOutput:
        if self.model.batch == 0:  # the step's own check would surface as an opaque dynamo error
            raise RuntimeError("configure() and prefill() come before the first step")
        if not self.capture:
            return self.compiled()
        key = (self.model.batch, self.model.sampling)
        captured = self._graphs.get(key)
        if captured is None:
            if self._warm_calls[key] < WARMUP_STEPS:
                self._warm_calls[key] += 1
                return self._warm_up()
            captured = self._graphs[key] = self._capture(key)
        captured.graph.replay()
        return captured.output

    def _warm_up(self) -> StepOutput:
        """One real step on the side stream, ordered after and before the current stream's work."""
        current = torch.cuda.current_stream(self.model.device)
        self._side_stream.wait_stream(current)
        with torch.cuda.stream(self._side_stream):
            output = self.compiled()
        current.wait_stream(self._side_stream)
        return output

    def _capture(self, key: tuple[int, bool]) -> _Captured:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                output = self.compiled()
        except RuntimeError as error:
            batch, sampling = key
            raise RuntimeError(
                f"capturing the compiled step (batch {batch}, {'sampling' if sampling else 'greedy'}) failed: an op "
                "in it synchronises with the host or cannot be captured (see the error above)"
            ) from error
        return _Captured(graph, output)


def compile_step(model: EagleModel, *, mode: str = "default", capture: bool | None = None) -> CompiledStep:
    """Compile ``model.eagenerate_step`` whole (``torch.compile(fullgraph=True)``, inductor ``mode``) and, with
    ``capture`` (default: on CUDA devices), replay it from one CUDA graph per (batch, sampling).

    The work happens lazily, in the first calls after ``model.configure`` and ``model.prefill``. ``mode`` is
    ``"default"`` or ``"max-autotune-no-cudagraphs"``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (the step is captured here, not by inductor), got {mode!r}")
    on_cuda = model.device.type == "cuda"
    if capture is None:
        capture = on_cuda
    if capture and not on_cuda:
        raise ValueError(f"capture needs a CUDA device; the model is on {model.device}")
    return CompiledStep(model, mode=mode, capture=capture)
