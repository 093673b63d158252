"""Where a decode step's device time goes: the compiled step's kernels, by total CUDA time (``torch.profiler``).

    python -m benchmarks.profile_step --out DIR [--only default|8b] [--batch 1] [--steps 5] [--rows 40]

The models of ``benchmarks.e2e`` (the embedded one, or the 8B-shaped target and head with random weights), bf16,
greedy, the tree T = 60, K = 10, D = 7. The step is compiled whole but not captured: a replayed CUDA graph hides its
kernels from the profiler, and the compiled step launches the same kernels one by one. After two warm-up steps,
``--steps`` steps run under the profiler. Prints the ``--rows`` kernels with the most CUDA time (divide by
``--steps`` for the time per step) and writes the table to ``DIR/profile_<model>_<batch>.txt`` and the trace to
``DIR/profile_<model>_<batch>.json`` (chrome://tracing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.e2e import default_model, llama8b_model, random_prompts
from benchmarks.step_check import load_prompts, start
from model.graph import compile_step

WARMUP_STEPS = 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--only", choices=("default", "8b"), default="8b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.profile_step needs a CUDA device")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only == "default":
        model, prompts = default_model(args.batch), load_prompts(args.batch)
    else:
        model = llama8b_model(args.batch)
        prompts = random_prompts(args.batch, model.target.config.vocab_size)
    step = compile_step(model, capture=False)
    start(model, *prompts, sampling=False)
    began = time.perf_counter()
    for _ in range(WARMUP_STEPS):
        step()
    torch.cuda.synchronize()
    print(f"compiled and warmed up in {time.perf_counter() - began:.1f} s", flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    table = profiler.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=90)
    name = f"profile_{args.only}_{args.batch}"
    (args.out / f"{name}.txt").write_text(f"{args.steps} steps, {args.only} model, batch {args.batch}\n{table}")
    profiler.export_chrome_trace(str(args.out / f"{name}.json"))
    print(table)


if __name__ == "__main__":
    main()
