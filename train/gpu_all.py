"""The GPU run: train the target, then the EAGLE-3 head, then the EAGLE-1/2 head, and pack the three folders.

    python -m train.gpu_all OUT [--data runs/data] [--tokenizer model/default/target] [--work runs/gpu]
                            [--stages target,eagle3,eagle1] [--target-budget-s 240] [--eagle3-budget-s 150]
                            [--eagle1-budget-s 90] [--toy]

Needs `runs/data` from `train.data` and `train.tokenizer`. Each stage trains into `<work>/<stage>` (a later
stage reads the target from there, so stages can also run in separate calls on one machine), then its folder is
packed as `OUT/<stage>.tar.NN`: a tar of `<stage>/` cut into parts of at most 15 MiB, written as soon as the
stage ends. Unpack into the package with `cat OUT/<stage>.tar.* | tar -x -C model/default`. `OUT/summary.json`
holds every stage's summary; the same is printed at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

from train import heads, target
from train.common import save_json

STAGES = ("target", "eagle3", "eagle1")
PART_BYTES = 15 * 2**20


def pack(folder: Path, out: Path) -> list[Path]:
    """Tar `folder` (as `<name>/...`, files sorted) and write it to `out` in parts of at most `PART_BYTES`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for file in sorted(folder.iterdir()):
            tar.add(file, arcname=f"{folder.name}/{file.name}")
    data = buffer.getvalue()
    parts = []
    for i, start in enumerate(range(0, len(data), PART_BYTES)):
        part = out / f"{folder.name}.tar.{i:02d}"
        part.write_bytes(data[start : start + PART_BYTES])
        parts.append(part)
    return parts


def run_stage(stage: str, ns: argparse.Namespace) -> dict:
    folder = ns.work / stage
    if stage == "target":
        args = target.target_args(ns.toy, {"budget_s": ns.target_budget_s})
        return target.train(args, ns.data, ns.tokenizer, folder)
    budget = ns.eagle3_budget_s if stage == "eagle3" else ns.eagle1_budget_s
    args = heads.head_args(stage, ns.toy, {"budget_s": budget})
    return heads.train(args, ns.work / "target", ns.data, folder)


def report(summaries: dict[str, dict]) -> str:
    lines = ["== summary =="]
    if "target" in summaries:
        s = summaries["target"]
        lines.append(
            f"target: val loss {s['val_loss']:.4f}, val ppl {s['val_ppl']:.2f} (saved bf16 weights; best of "
            f"{len(s['history'])} evals, "
            f"step {s['best_step']}/{s['steps']}), {s['train_tokens_seen'] / 1e6:.0f}M tokens, {s['wall_s']}s"
        )
    for kind in ("eagle3", "eagle1"):
        if kind in summaries:
            s = summaries[kind]
            train_acc = " ".join(f"{a:.3f}" for a in s["train_top1_per_step"])
            val_acc = " ".join(f"{a:.3f}" for a in s["val_top1_per_step"])
            lines.append(
                f"{kind}: {s['steps']} steps, {s['train_tokens_seen'] / 1e6:.0f}M tokens, final loss "
                f"{s['final_loss']:.4f}, {s['wall_s']}s\n  top-1 per TTT step, train: {train_acc}\n"
                f"  top-1 per TTT step, val:   {val_acc}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where the packed folders and summary.json go")
    parser.add_argument("--data", type=Path, default=Path("runs/data"))
    parser.add_argument("--tokenizer", type=Path, default=Path("model/default/target"))
    parser.add_argument("--work", type=Path, default=Path("runs/gpu"))
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--target-budget-s", type=float, default=240.0)
    parser.add_argument("--eagle3-budget-s", type=float, default=150.0)
    parser.add_argument("--eagle1-budget-s", type=float, default=90.0)
    parser.add_argument("--toy", action="store_true", help="tiny sizes and a few steps per stage, for CPU tests")
    ns = parser.parse_args(argv)
    stages = ns.stages.split(",")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"--stages: unknown {unknown}; choose from {STAGES}")

    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    ns.out.mkdir(parents=True, exist_ok=True)
    ns.work.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for stage in (s for s in STAGES if s in stages):
        summaries[stage] = run_stage(stage, ns)
        parts = pack(ns.work / stage, ns.out)
        print(f"{stage}: packed into {', '.join(p.name for p in parts)}", flush=True)
        summaries["total_wall_s"] = round(time.perf_counter() - start, 1)
        save_json(ns.out / "summary.json", summaries)
    print(report(summaries))
    sizes = {p.name: p.stat().st_size for p in sorted(ns.out.iterdir())}
    print(f"total {summaries['total_wall_s']}s; files in {ns.out}: {json.dumps(sizes)}", flush=True)


if __name__ == "__main__":
    main()
