"""GPU check of the captured decode step on the embedded default model (``model/default``).

    python -m benchmarks.step_check --out DIR

For each case (head, batch, greedy or sampling) the same prompts run ``STEPS`` steps three times from the same
prefill: eager, compiled (``CompiledStep.compiled``) and captured (``CompiledStep``), reading every step's tokens back
asynchronously into pinned memory, as ``model.generate`` does. The cases of one head share one ``CompiledStep``, so
the later ones also exercise recompiling and recapturing when the batch or the sampling mode changes. Checks:

- replay: the captured run emits exactly the compiled run's tokens at every step (the same kernels run);
- eager: greedy, the captured run's token sequences equal the eager run's (the tokens are the target's greedy choice
  whatever the drafts, so only a near-tie in the target's logits may differ). The weights are float32, so that such
  ties stay rare (inductor fuses bf16 ops in float32 and skips eager's intermediate roundings). How many leading
  steps agree exactly is reported, not required: a near-tie in the draft's scores changes the tree, and, when
  sampling, which coin each node gets;
- launches: under the torch profiler every captured step is one ``cudaGraphLaunch`` plus the one copy of its token
  readback, and launches no kernel (a sampling step also launches its coin draw, outside the graph);
- host time per step, Python included, for all three runs.

Writes ``DIR/step_check.json``, prints a summary and exits with status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks.harness import stamp
from model.cli import DEFAULT_MODEL
from model.config import DynamicTree
from model.eagle_model import EagleModel
from model.graph import WARMUP_STEPS, CompiledStep, StepOutput, compile_step

STEPS = 200
PROFILED = range(WARMUP_STEPS + 1, WARMUP_STEPS + 21)  # 20 steps after the capture
STEADY_FROM = PROFILED.stop  # host and device times are medians over the steps after the profiled ones
CASES = {"eagle3": [(4, False), (4, True), (2, False)], "eagle1": [(4, False)]}  # head: (batch, sampling) in order
SEED = 0


@dataclass
class Run:
    """One run of ``STEPS`` steps: every step's tokens ``[steps, B, D + 2]`` (host), host time per step, the CUDA
    runtime calls made in the profiled steps by name, the device time per step over the steady steps."""

    tokens: torch.Tensor
    host_ms: list[float]
    api_calls: Counter[str]
    device_ms: float


@dataclass
class CaseResult:
    head: str
    batch: int
    sampling: bool
    steps: int
    replay_equal: bool
    eager_sequences_equal: bool
    eager_steps_equal: int
    mean_accepted: float
    launches_per_step: dict[str, float]
    api_calls_captured: dict[str, int]
    host_ms_per_step: dict[str, float]
    device_ms_per_step: dict[str, float]
    compile_s: float
    capture_s: float
    problems: list[str] = field(default_factory=list)


def load_prompts(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` held-out prompts of the default model (repeated past the last), right-padded ``[B, N]``, and their
    lengths."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL / "target")
    prompts = json.loads((DEFAULT_MODEL / "prompts.json").read_text())
    texts = [prompts[i % len(prompts)]["text"] for i in range(batch)]
    rows = [tokenizer(t)["input_ids"] for t in texts]
    ids = torch.zeros(batch, max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, torch.tensor([len(r) for r in rows])


def start(model: EagleModel, ids: torch.Tensor, lengths: torch.Tensor, sampling: bool) -> torch.Generator:
    """What ``model.generate`` does before the first step; returns the coins' generator."""
    model.configure(
        len(lengths), max_new_tokens=model.max_seq_len, temperature=1.0 if sampling else 0.0, top_k=0, top_p=1.0,
        eos_token_ids=[],
    )  # fmt: skip
    generator = torch.Generator(model.device).manual_seed(SEED)
    if sampling:
        model.draw_coins(generator)
    model.prefill(ids.to(model.device), lengths.to(model.device))
    return generator


def run(
    model: EagleModel, step: Callable[[], StepOutput], ids: torch.Tensor, lengths: torch.Tensor, sampling: bool
) -> Run:
    generator = start(model, ids, lengths, sampling)
    width = model.tree.max_depth + 2
    readback = torch.full((STEPS, len(lengths), width), -2, dtype=torch.long, pin_memory=True)
    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    )
    steady_start, steady_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host_ms = []
    for i in range(STEPS):
        if i == PROFILED.start:
            profiler.start()
        if i == STEADY_FROM:
            steady_start.record()
        begin = time.perf_counter()
        if sampling:
            model.draw_coins(generator)
        tokens, _ = step()
        readback[i].copy_(tokens, non_blocking=True)
        host_ms.append((time.perf_counter() - begin) * 1e3)
        if i == PROFILED.stop - 1:
            torch.cuda.synchronize()
            profiler.stop()
    steady_end.record()
    torch.cuda.synchronize()
    device_ms = steady_start.elapsed_time(steady_end) / (STEPS - STEADY_FROM)
    return Run(readback.clone(), host_ms, cuda_api_calls(profiler), device_ms)


def cuda_api_calls(profiler: torch.profiler.profile) -> Counter[str]:
    """The CUDA runtime and driver calls the host made while profiling, by name."""
    return Counter(
        e.name for e in profiler.events() if e.device_type == torch.autograd.DeviceType.CPU and e.name.startswith("cu")
    )


def launches(calls: Counter[str]) -> Counter[str]:
    """Graph launches, kernel launches and copies (memcpy and memset) among ``calls``."""
    kinds: Counter[str] = Counter()
    for name, n in calls.items():
        if "GraphLaunch" in name:
            kinds["graph"] += n
        elif "LaunchKernel" in name or "LaunchCooperativeKernel" in name:
            kinds["kernel"] += n
        elif "Memcpy" in name or "Memset" in name:
            kinds["copy"] += n
    return kinds


def sequences(tokens: torch.Tensor) -> list[list[int]]:
    """Each row's emitted tokens over all steps (``tokens [steps, B, W]``, ``-1`` padded)."""
    return [[t for t in row.flatten().tolist() if t >= 0] for row in tokens.transpose(0, 1)]


def leading_equal_steps(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many first steps emitted exactly the same tokens in both runs."""
    same = (a == b).flatten(1).all(1).tolist()
    return same.index(False) if False in same else len(same)


def first_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    step = leading_equal_steps(a, b)
    row = int((a[step] != b[step]).any(1).nonzero()[0])
    return f"step {step}, row {row}: {a[step, row].tolist()} vs {b[step, row].tolist()}"


def check_case(model: EagleModel, compiled: CompiledStep, head: str, batch: int, sampling: bool) -> CaseResult:
    ids, lengths = load_prompts(batch)
    steps = {"eager": type(model).eagenerate_step.__get__(model), "compiled": compiled.compiled, "captured": compiled}
    runs = {name: run(model, step, ids, lengths, sampling) for name, step in steps.items()}
    eager, plain, captured = runs["eager"].tokens, runs["compiled"].tokens, runs["captured"].tokens
    profiled = len(PROFILED)
    result = CaseResult(
        head=head,
        batch=batch,
        sampling=sampling,
        steps=STEPS,
        replay_equal=torch.equal(captured, plain),
        eager_sequences_equal=all(
            a[: len(b)] == b[: len(a)] for a, b in zip(sequences(captured), sequences(eager), strict=True)
        ),
        eager_steps_equal=leading_equal_steps(captured, eager),
        mean_accepted=round(float(model.accepted[:batch].sum()) / max(int(model.active_steps[:batch].sum()), 1), 3),
        launches_per_step={
            f"{name} {kind}": round(n / profiled, 2)
            for name, r in runs.items()
            for kind, n in sorted(launches(r.api_calls).items())
        },
        api_calls_captured=dict(runs["captured"].api_calls),
        host_ms_per_step={name: round(statistics.median(r.host_ms[STEADY_FROM:]), 4) for name, r in runs.items()},
        device_ms_per_step={name: round(r.device_ms, 4) for name, r in runs.items()},
        compile_s=round(runs["compiled"].host_ms[0] / 1e3, 2),
        capture_s=round(runs["captured"].host_ms[WARMUP_STEPS] / 1e3, 2),
    )
    if not result.replay_equal:
        result.problems.append(f"replay differs from the compiled step at {first_difference(captured, plain)}")
    if not sampling and not result.eager_sequences_equal:
        result.problems.append(
            f"greedy tokens differ from eager's; first differing step: {first_difference(captured, eager)}"
        )
    counts = launches(runs["captured"].api_calls)
    expected = Counter(graph=profiled, copy=profiled, kernel=profiled if sampling else 0)
    if +counts != +expected:
        result.problems.append(
            f"the {profiled} profiled captured steps made {dict(counts)} launches, expected {dict(+expected)}; "
            f"CUDA calls: {result.api_calls_captured}"
        )
    return result


def check_head(head: str) -> list[dict]:
    """The cases of one head, on one model and one CompiledStep; a case that raises is reported and skipped."""
    model = EagleModel.from_pretrained(
        DEFAULT_MODEL / "target",
        DEFAULT_MODEL / head,
        tree=DynamicTree(),
        max_batch_size=max(b for b, _ in CASES[head]),
        max_seq_len=2048,
        dtype=torch.float32,
        device="cuda",
    )
    compiled = compile_step(model)
    results = []
    for batch, sampling in CASES[head]:
        mode = "sampling" if sampling else "greedy"
        print(f"{head}: batch {batch}, {mode}: {STEPS} steps eager, compiled, captured...", flush=True)
        try:
            result = check_case(model, compiled, head, batch, sampling)
        except Exception:
            error = traceback.format_exc()
            print(f"  FAILED with an exception:\n{error}", flush=True)
            results.append({"head": head, "batch": batch, "sampling": sampling, "problems": [error]})
            continue
        report(result)
        results.append(asdict(result))
    return results


def report(r: CaseResult) -> None:
    print(
        f"  {'OK' if not r.problems else 'FAILED'}: replay == compiled: {r.replay_equal}; token sequences == eager: "
        f"{r.eager_sequences_equal} (first {r.eager_steps_equal} of {r.steps} steps identical); tau {r.mean_accepted}"
    )
    print(f"  launches per step: {r.launches_per_step}")
    print(f"  host ms per step: {r.host_ms_per_step}; device ms per step: {r.device_ms_per_step}")
    print(f"  compile {r.compile_s} s, capture {r.capture_s} s")
    for problem in r.problems:
        print(f"  PROBLEM: {problem}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.step_check needs a CUDA device")
    stamped = stamp()
    print(f"{stamped['device']}, torch {stamped['torch']}, triton {stamped['triton']}", flush=True)
    results = [r for head in CASES for r in check_head(head)]
    ok = all(not r["problems"] for r in results)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "step_check.json"
    path.write_text(json.dumps({"ok": ok, **stamped, "cases": results}, indent=2) + "\n")
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'}; details in {path}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
