"""End-to-end decoding speed on the embedded model against what users would pick instead, in one run.

    python -m benchmarks.baselines --out DIR [--batch 1 16] [--trees 10,7,60 ...] [--prompts 16] [--max-new-tokens 128]

Greedy, bf16, the held-out prompts of ``model/default/prompts.json`` decoded in batches of each ``--batch`` size
(consecutive prompts, cycling through them when a batch needs more), EOS ignored so that every method produces
``--max-new-tokens`` tokens per sequence. Methods: ``transformers`` ``generate`` with its default dynamic cache
(eager), with ``cache_implementation="static"`` (its automatic compile of the forward), with prompt lookup
(``prompt_lookup_num_tokens=10``), and eagle_ops' EAGLE-3 step eager (first tree) and compiled + captured
(``model.compile()``, every tree of ``--trees``).
At B > 1 ``transformers`` gets left-padded prompts and their attention mask; prompt lookup runs through assisted
decoding, which ``transformers`` supports at batch 1 only (``_assisted_decoding`` raises "assisted generate is only
supported for batch_size = 1"), so its row reads "n/a (batch 1 only)" there.

Each method decodes every batch once to warm up (compilation and capture happen there), then once timed; tokens/s
is new tokens over the wall time of the timed pass with the device synchronised (prefills included). Per method
and batch size: the speedup over the static cache + compile baseline; the peak device memory of the timed pass
(``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: the method's own weights and caches, with
each method family's model loaded alone); the sequences whose tokens differ from the eager ``generate``'s at the
same batch size, and the first token index where one does (divergences are counted, not hidden: in bf16 a verify
forward over a tree, a padded batch and a one-token forward round differently, so a near-tied argmax can flip);
for the eagle_ops rows tau (tokens per step including the bonus), the acceptance histogram (steps by accepted
drafts 0 ... D + 1) and the time per decode step.

Writes ``DIR/baselines.csv`` (appended, stamped), ``DIR/baselines.md`` (one table per batch size) and
``DIR/baselines.png`` (tokens/s by method, one panel per batch size).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.harness import stamp, write_csv
from benchmarks.plots import bar_chart
from model.cli import DEFAULT_MODEL, parse_tree
from model.eagle_model import EagleModel
from model.generate import GenerationResult

DYNAMIC = "transformers generate, dynamic cache"
STATIC = "transformers generate, static cache + compile"
LOOKUP = "transformers prompt lookup (10 tokens)"
EAGER = "eagle_ops EAGLE-3 {tree}, eager step"
CAPTURED = "eagle_ops EAGLE-3 {tree}, compiled + captured step"
BATCH_ONE_ONLY = "n/a (batch 1 only)"
COLUMNS = (
    "batch", "method", "tokens_per_s", "x_static_compile", "tau", "accept_histogram", "ms_per_step", "peak_mib",
    "diverging_sequences", "first_divergence", "sequences", "note",
)  # fmt: skip

# A batch of prompts in, each sequence's new tokens out, with the eagle_ops result (None for transformers).
Run = Callable[[list[list[int]]], tuple[list[list[int]], GenerationResult | None]]


def hf_run(hf, new: int, pad: int, **options) -> Run:
    """``hf.generate`` on left-padded prompts with their attention mask."""

    def run(group: list[list[int]]) -> tuple[list[list[int]], None]:
        width = max(map(len, group))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in group], device="cuda")
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device="cuda")
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, **options)
        return out[:, width:].tolist(), None

    return run


def eagle_run(eagle: EagleModel, new: int) -> Run:
    def run(group: list[list[int]]) -> tuple[list[list[int]], GenerationResult]:
        result = eagle.eagenerate(group, max_new_tokens=new)
        return result.tokens, result

    return run


def measure(method: str, run: Run, groups: list[list[list[int]]]) -> tuple[dict, list[list[int]]]:
    """A warm-up pass over every batch, then the timed pass: the method's row and every sequence's tokens."""
    for group in groups:
        run(group)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    decoded = [run(group) for group in groups]
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    outputs = [tokens for out, _ in decoded for tokens in out]
    row = {
        "method": method,
        "tokens_per_s": round(sum(map(len, outputs)) / seconds, 1),
        "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }
    results = [result for _, result in decoded if result is not None]
    if results:
        histogram = [sum(counts) for counts in zip(*(r.accept_histogram for r in results), strict=True)]
        steps = sum(histogram)  # sequence-steps taken while unfinished; accept length a emits a + 1 tokens
        row["tau"] = round(sum((a + 1) * n for a, n in enumerate(histogram)) / steps, 3)
        row["accept_histogram"] = " ".join(map(str, histogram))
        row["ms_per_step"] = round(sum(r.decode_seconds for r in results) / sum(r.steps for r in results) * 1e3, 3)
    return row, outputs


def attempt(method: str, run: Run, groups: list[list[list[int]]]) -> tuple[dict, list[list[int]] | None]:
    """:func:`measure`, with a method that fails on this stack reported in its row instead of ending the run."""
    print(f"B={len(groups[0])} {method}...", flush=True)
    try:
        row, outputs = measure(method, run, groups)
    except Exception as error:
        print(f"  failed: {type(error).__name__}: {str(error)[:300]}", flush=True)
        return {"method": method, "note": f"failed: {type(error).__name__}"}, None
    print(f"  {row['tokens_per_s']} tokens/s, peak {row['peak_mib']} MiB", flush=True)
    return row, outputs


def release() -> None:
    """Free what a deleted model held (dynamo's compiled code included) before the next one is measured."""
    gc.collect()
    torch._dynamo.reset()
    torch.cuda.empty_cache()


def bench_batch(batch: int, prompts: list[list[int]], new: int, pad: int, trees: list[str]) -> list[dict]:
    """Every method's row at one batch size; the eager eagle_ops step with the first tree only."""
    from transformers import AutoModelForCausalLM

    count = math.ceil(len(prompts) / batch)
    groups = [[prompts[(g * batch + i) % len(prompts)] for i in range(batch)] for g in range(count)]
    measured = []
    hf = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL / "target", dtype=torch.bfloat16).cuda().eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = pad
    measured.append(attempt(DYNAMIC, hf_run(hf, new, pad), groups))
    measured.append(attempt(STATIC, hf_run(hf, new, pad, cache_implementation="static"), groups))
    if batch == 1:
        measured.append(attempt(LOOKUP, hf_run(hf, new, pad, prompt_lookup_num_tokens=10), groups))
    else:
        measured.append(({"method": LOOKUP, "note": BATCH_ONE_ONLY}, None))
    del hf
    release()

    for index, text in enumerate(trees):
        tree = parse_tree(text)
        eagle = EagleModel.from_pretrained(
            DEFAULT_MODEL / "target",
            DEFAULT_MODEL / "eagle3",
            tree=tree,
            max_batch_size=batch,
            max_seq_len=max(map(len, prompts)) + new + 2 * tree.tree_size,
            dtype=torch.bfloat16,
            device="cuda",
        )
        name = f"K={tree.top_k} D={tree.depth} T={tree.tree_size}"
        if index == 0:
            measured.append(attempt(EAGER.format(tree=name), eagle_run(eagle, new), groups))
        eagle.compile()
        measured.append(attempt(CAPTURED.format(tree=name), eagle_run(eagle, new), groups))
        del eagle
        release()

    reference = next((outputs for _, outputs in measured if outputs is not None), None)
    static = measured[1][0].get("tokens_per_s")
    rows = []
    for row, outputs in measured:
        if outputs is not None:
            differ = [first_difference(o, r) for o, r in zip(outputs, reference, strict=True)]
            differ = [i for i in differ if i is not None]
            row["diverging_sequences"] = len(differ)
            row["first_divergence"] = min(differ, default="")
            row["x_static_compile"] = round(row["tokens_per_s"] / static, 2) if static else ""
        rows.append(dict.fromkeys(COLUMNS, "") | row | {"batch": batch, "sequences": count * batch})
    return rows


def first_difference(tokens: list[int], reference: list[int]) -> int | None:
    """The first index where ``tokens`` and ``reference`` differ (or where one ends first), None when equal."""
    if tokens == reference:
        return None
    pairs = zip(tokens, reference, strict=False)  # a shorter output differs where it ends
    return next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(tokens), len(reference)))


def markdown(rows: list[dict], new: int) -> str:
    """One table per batch size."""
    header = [
        "method", "tokens/s", "vs static cache + compile", "tau", "acceptance histogram", "ms per step", "peak MiB",
        "diverging sequences (first index)",
    ]  # fmt: skip
    parts = []
    for batch in dict.fromkeys(row["batch"] for row in rows):
        lines = [f"B = {batch}, {new} new tokens per sequence:", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in (r for r in rows if r["batch"] == batch):
            speedup = f"{row['x_static_compile']:.2f}x" if row["x_static_compile"] != "" else ""
            diverging = ""
            if row["diverging_sequences"] != "":
                diverging = f"{row['diverging_sequences']} of {row['sequences']}"
                diverging += f" ({row['first_divergence']})" if row["diverging_sequences"] else ""
            cells = [
                f"`{row['method']}`",
                str(row["tokens_per_s"]) if row["tokens_per_s"] != "" else row["note"],
                speedup,
                str(row["tau"]),
                row["accept_histogram"],
                str(row["ms_per_step"]),
                str(row["peak_mib"]),
                diverging,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes, one table each")
    parser.add_argument("--trees", nargs="+", default=["10,7,60"], help="EAGLE trees K,D,T, one captured row each")
    parser.add_argument("--prompts", type=int, default=16, help="how many held-out prompts (at most 16)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL / "target")
    texts = json.loads((DEFAULT_MODEL / "prompts.json").read_text())[: args.prompts]
    prompts = [tokenizer(p["text"])["input_ids"] for p in texts]
    pad = tokenizer.pad_token_id or 0
    stamped = stamp()
    title = f"{stamped['device']}: embedded model, greedy, bf16, {args.max_new_tokens} new tokens per sequence"
    rows = []
    for batch in args.batch:  # outputs written after each batch size, so that a timeout keeps the finished ones
        batch_rows = bench_batch(batch, prompts, args.max_new_tokens, pad, args.trees)
        extra = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens} | stamped
        write_csv(args.out / "baselines.csv", [row | extra for row in batch_rows])
        rows += batch_rows
        table = markdown(rows, args.max_new_tokens)
        (args.out / "baselines.md").write_text(table)
        print(table, flush=True)
        panels = {
            f"B = {b}": {r["method"]: r["tokens_per_s"] or None for r in rows if r["batch"] == b}
            for b in dict.fromkeys(r["batch"] for r in rows)
        }
        bar_chart(args.out / "baselines.png", panels, xlabel="tokens/s", title=title)


if __name__ == "__main__":
    main()
