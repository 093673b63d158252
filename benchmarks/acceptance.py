"""Mean accepted length (tau) of the embedded heads on the held-out prompts, greedy, checked lossless.

    python -m benchmarks.acceptance [--out benchmarks/results] [--max-new-tokens 128] [--device cuda]

For each head (EAGLE-3, EAGLE-1) and tree (K=10 D=7 T=60, K=8 D=5 T=48), decodes every prompt of
``model/default/prompts.json`` with ``eagenerate`` and with the target alone, requires identical tokens, and
reports tau (tokens per step including the bonus) and the acceptance histogram.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.harness import stamp, write_csv
from model.cli import DEFAULT_MODEL
from model.config import DynamicTree
from model.eagle_model import EagleModel

TREES = (DynamicTree(top_k=10, depth=7, tree_size=60), DynamicTree(top_k=8, depth=5, tree_size=48))


def measure(head: str, tree: DynamicTree, prompts: list[list[int]], max_new_tokens: int, device: str) -> dict:
    # fp32: the lossless check compares token for token, and bf16 rounding differs between a 60-token verify
    # forward and a 1-token forward enough to flip near-tied argmaxes.
    dtype = torch.float32
    model = EagleModel.from_pretrained(
        DEFAULT_MODEL / "target", DEFAULT_MODEL / head, tree=tree, max_seq_len=1024, dtype=dtype, device=device
    )
    steps = accepted = 0
    eagle_seconds = target_seconds = eagle_tokens = target_tokens = 0.0
    histogram = [0] * (tree.max_depth + 2)
    mismatches = []
    for i, prompt in enumerate(prompts):
        eagle = model.eagenerate([prompt], max_new_tokens=max_new_tokens)
        target = model.generate_target_only([prompt], max_new_tokens=max_new_tokens)
        if eagle.tokens != target.tokens:
            mismatches.append(i)
        steps += eagle.steps
        eagle_seconds, eagle_tokens = eagle_seconds + eagle.decode_seconds, eagle_tokens + eagle.new_tokens - 1
        target_seconds, target_tokens = target_seconds + target.decode_seconds, target_tokens + target.new_tokens - 1
        accepted += eagle.mean_accepted * eagle.steps
        histogram = [a + b for a, b in zip(histogram, eagle.accept_histogram, strict=True)]
    return {
        "head": head,
        "tree": f"K={tree.top_k} D={tree.depth} T={tree.tree_size}",
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "dtype": str(dtype).removeprefix("torch."),
        "tau": round(accepted / max(steps, 1), 3),
        "histogram": " ".join(map(str, histogram)),
        "eager_eagle_tok_s": round(eagle_tokens / eagle_seconds, 1),
        "eager_target_tok_s": round(target_tokens / target_seconds, 1),
        "lossless": not mismatches,
        "mismatched_prompts": " ".join(map(str, mismatches)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--heads", default="eagle3,eagle1", help="comma-separated: eagle3, eagle1")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL / "target")
    texts = json.loads((DEFAULT_MODEL / "prompts.json").read_text())
    prompts = [tokenizer(p["text"])["input_ids"] for p in texts]
    rows = []
    for head in args.heads.split(","):
        for tree in TREES:
            row = measure(head, tree, prompts, args.max_new_tokens, args.device) | stamp()
            rows.append(row)
            print(
                f"{head} {row['tree']}: tau {row['tau']:.2f}, histogram {row['histogram']}, eager decode "
                f"{row['eager_eagle_tok_s']} tok/s vs target alone {row['eager_target_tok_s']} tok/s, "
                f"lossless {row['lossless']} {row['mismatched_prompts']}",
                flush=True,
            )
    write_csv(args.out / "acceptance.csv", rows)


if __name__ == "__main__":
    main()
