"""Soak run of the captured step: repeated ``eagenerate`` calls must not grow memory, recompile or recapture.

    python -m benchmarks.soak --out DIR [--batch 16] [--tokens 10000] [--device cuda]

The embedded model with its EAGLE-3 head, greedy, ``--batch`` held-out prompts (cycled past the 16 there are), EOS
ignored. On CUDA: bf16, the tree K = 10, D = 7, T = 60 and the compiled step replayed from its CUDA graph
(``model.compile()``). On the CPU, a quick smoke run: fp32, the tree K = 4, D = 4, T = 16 and the eager step, with
nothing to compile or capture. The cache holds the longest prompt, the tree and one call's new tokens, at most the
model's 2048 positions; every call asks for as many new tokens as that leaves (``--tokens`` if fewer), and every
sequence produces all of them.

The first call warms up: it compiles the step and captures it. After it the script records the allocated and the
peak device memory (``torch.cuda.memory_allocated``, ``torch.cuda.max_memory_allocated``: never reset, so the peak
covers every call so far), the graphs dynamo has compiled (``torch._dynamo.utils.counters["stats"]
["unique_graphs"]``) and the CUDA graphs the step has captured (``CompiledStep.captures``). It then calls
``eagenerate`` on the same prompts until every sequence has at least ``--tokens`` new tokens from the calls after the
warm-up, and checks after each call that none of the four has grown and that the tokens equal the warm-up call's
(greedy on the same prompts: state left over from an earlier call would change them).

Prints a line per call; writes ``DIR/soak.json`` (every call and the problems found) and ``DIR/soak.md`` (a one-line
table); exits with status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from benchmarks.harness import stamp
from benchmarks.step_check import load_prompts
from model.cli import DEFAULT_MODEL, parse_tree
from model.eagle_model import EagleModel
from model.graph import CompiledStep
from model.target import read_target_config

MIB = 2**20


def state(model: EagleModel) -> dict[str, int | None]:
    """What must not grow after the warm-up call (device memory only on CUDA)."""
    on_gpu = model.device.type == "cuda"
    step = model.eagenerate_step
    return {
        "allocated_bytes": torch.cuda.memory_allocated(model.device) if on_gpu else None,
        "peak_bytes": torch.cuda.max_memory_allocated(model.device) if on_gpu else None,
        "compiled_graphs": counters["stats"]["unique_graphs"],
        "captured_graphs": step.captures if isinstance(step, CompiledStep) else 0,
    }


def describe(values: dict[str, int | None]) -> str:
    memory = (
        f"allocated {values['allocated_bytes'] / MIB:.1f} MiB, peak {values['peak_bytes'] / MIB:.1f} MiB; "
        if values["peak_bytes"] is not None
        else ""
    )
    return f"{memory}compiled graphs {values['compiled_graphs']}, captured graphs {values['captured_graphs']}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=10_000, help="new tokens per sequence after the warm-up call")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.tokens < 1:
        parser.error(f"--tokens must be at least 1, got {args.tokens}")
    on_gpu = args.device.startswith("cuda")
    ids, lengths = load_prompts(args.batch)
    prompts = [row[:n].tolist() for row, n in zip(ids, lengths.tolist(), strict=True)]
    tree = parse_tree("10,7,60" if on_gpu else "4,4,16")
    positions = read_target_config(DEFAULT_MODEL / "target").max_position_embeddings
    longest = max(map(len, prompts))
    max_seq_len = min(positions, longest + tree.tree_size + args.tokens)
    # A sequence's cache holds its prompt and all but its last new token; it stops once the next tree would not fit.
    per_call = max_seq_len - longest - tree.tree_size
    model = EagleModel.from_pretrained(
        DEFAULT_MODEL / "target",
        DEFAULT_MODEL / "eagle3",
        tree=tree,
        max_batch_size=args.batch,
        max_seq_len=max_seq_len,
        dtype=torch.bfloat16 if on_gpu else torch.float32,
        device=args.device,
    )
    if on_gpu:
        model.compile()
    print(f"B={args.batch} on {args.device}: {per_call} new tokens per sequence per call, cache {max_seq_len}")

    began = time.perf_counter()
    warm = model.eagenerate(prompts, max_new_tokens=per_call)
    after_warm_up = state(model)
    print(f"warm-up call: {time.perf_counter() - began:.1f} s; {describe(after_warm_up)}", flush=True)

    calls, problems, produced = [], [], 0
    while produced < args.tokens:
        began = time.perf_counter()
        result = model.eagenerate(prompts, max_new_tokens=per_call)
        seconds = time.perf_counter() - began
        now = state(model)
        produced += min(map(len, result.tokens))
        call = {
            "call": len(calls) + 1,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(result.new_tokens / seconds, 1),
            "tau": round(result.mean_accepted, 3),
            "ms_per_step": round(result.decode_seconds / max(result.steps, 1) * 1e3, 3),
            "same_tokens_as_warm_up": result.tokens == warm.tokens,
        } | now
        calls.append(call)
        grew = [key for key, value in now.items() if value is not None and value > after_warm_up[key]]
        problems += [f"call {call['call']}: {key} grew from {after_warm_up[key]} to {now[key]}" for key in grew]
        if not call["same_tokens_as_warm_up"]:
            problems.append(f"call {call['call']}: the tokens differ from the warm-up call's")
        print(
            f"call {call['call']}: {produced} new tokens per sequence so far, {seconds:.2f} s, "
            f"{call['tokens_per_s']:.0f} tokens/s, tau {call['tau']:.2f}, {call['ms_per_step']:.3f} ms per step; "
            f"{describe(now)}",
            flush=True,
        )

    seconds = sum(c["seconds"] for c in calls)
    summary = {
        "batch": args.batch,
        "device": args.device,
        "tree": f"K={tree.top_k} D={tree.depth} T={tree.tree_size}",
        "tokens_per_call": per_call,
        "calls_after_warm_up": len(calls),
        "new_tokens_per_sequence": produced,
        "tokens_per_s": round(args.batch * produced / seconds, 1),
        "after_warm_up": after_warm_up,
        "at_end": state(model),
        "calls": calls,
        "problems": problems,
        "ok": not problems,
    } | stamp()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "soak.md").write_text(markdown(summary))
    print(markdown(summary))
    print("soak OK" if not problems else "soak FAILED:\n" + "\n".join(problems))
    sys.exit(0 if not problems else 1)


def markdown(summary: dict) -> str:
    """One table line: what ran and what the counters read after the warm-up and at the end."""

    def mib(key: str) -> str:
        before, after = summary["after_warm_up"][key], summary["at_end"][key]
        return "n/a" if before is None else f"{before / MIB:.1f} / {after / MIB:.1f}"

    def count(key: str) -> str:
        return f"{summary['after_warm_up'][key]} / {summary['at_end'][key]}"

    header = [
        "B", "tree", "calls after warm-up", "new tokens per sequence", "tokens/s", "allocated MiB", "peak MiB",
        "compiled graphs", "captured graphs", "verdict",
    ]  # fmt: skip
    cells = [
        str(summary["batch"]),
        summary["tree"],
        str(summary["calls_after_warm_up"]),
        str(summary["new_tokens_per_sequence"]),
        str(summary["tokens_per_s"]),
        mib("allocated_bytes"),
        mib("peak_bytes"),
        count("compiled_graphs"),
        count("captured_graphs"),
        "ok" if summary["ok"] else f"FAILED ({len(summary['problems'])} problems)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(cells) + " |"]
    lines.append("")
    lines.append("Counters and memory: after the warm-up call / at the end.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
