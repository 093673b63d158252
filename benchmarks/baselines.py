"""End-to-end decoding speed on the embedded model against what users would pick instead, in one run.

    python -m benchmarks.baselines --out DIR [--prompts 8] [--max-new-tokens 128]

Batch 1, greedy, bf16, the held-out prompts of ``model/default/prompts.json``, EOS ignored so that every method
produces ``--max-new-tokens`` tokens. Methods: ``transformers`` ``generate`` with its default dynamic cache
(eager), with ``cache_implementation="static"`` (its automatic compile of the forward), with prompt lookup
(``prompt_lookup_num_tokens=10``), and eagle_ops' EAGLE-3 step eager and compiled + captured
(``model.compile()``). Each method runs every prompt once to warm up (compilation included there), then once
timed; tokens/s is new tokens over wall time with the device synchronised. Outputs are compared with the eager
``generate`` token for token; divergences are counted, not hidden (bf16: a verify forward over a tree and a
one-token forward round differently, so a near-tied argmax can flip).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.harness import stamp, write_csv
from model.cli import DEFAULT_MODEL, parse_tree
from model.eagle_model import EagleModel


def timed(run: Callable[[list[int]], list[int]], prompts: list[list[int]]) -> tuple[float, list[list[int]]]:
    """Seconds to decode every prompt once (after a warm-up pass over all of them) and the outputs."""
    for prompt in prompts:
        run(prompt)
    torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = [run(prompt) for prompt in prompts]
    torch.cuda.synchronize()
    return time.perf_counter() - start, outputs


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    new = args.max_new_tokens
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL / "target")
    texts = json.loads((DEFAULT_MODEL / "prompts.json").read_text())[: args.prompts]
    prompts = [tokenizer(p["text"])["input_ids"] for p in texts]

    hf = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL / "target", dtype=torch.bfloat16).cuda().eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = tokenizer.pad_token_id or 0

    def hf_run(**options) -> Callable[[list[int]], list[int]]:
        def run(prompt: list[int]) -> list[int]:
            ids = torch.tensor([prompt], device="cuda")
            out = hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **options)
            return out[0, len(prompt) :].tolist()

        return run

    eagle = EagleModel.from_pretrained(
        DEFAULT_MODEL / "target",
        DEFAULT_MODEL / "eagle3",
        tree=parse_tree("10,7,60"),
        max_seq_len=max(map(len, prompts)) + new + 128,
        dtype=torch.bfloat16,
        device="cuda",
    )

    def eagle_run(prompt: list[int]) -> list[int]:
        return eagle.eagenerate([prompt], max_new_tokens=new).tokens[0]

    methods: list[tuple[str, Callable[[], Callable[[list[int]], list[int]]]]] = [
        ("transformers generate, dynamic cache", lambda: hf_run()),
        ("transformers generate, static cache + compile", lambda: hf_run(cache_implementation="static")),
        ("transformers prompt lookup (10 tokens)", lambda: hf_run(prompt_lookup_num_tokens=10)),
        ("eagle_ops EAGLE-3, eager step", lambda: eagle_run),
        ("eagle_ops EAGLE-3, compiled + captured step", lambda: (eagle.compile(), eagle_run)[1]),
    ]
    rows, reference = [], None
    for name, make in methods:
        print(f"{name}...", flush=True)
        try:
            seconds, outputs = timed(make(), prompts)
        except Exception as error:  # a baseline that fails on this stack is reported, not fatal
            print(f"  failed: {type(error).__name__}: {str(error)[:300]}", flush=True)
            rows.append({"method": name, "tokens_per_s": "", "diverging_prompts": "", "error": type(error).__name__})
            continue
        reference = reference or outputs
        diverging = sum(o != r for o, r in zip(outputs, reference, strict=True))
        tokens = sum(len(o) for o in outputs)
        rows.append(
            {"method": name, "tokens_per_s": round(tokens / seconds, 1), "diverging_prompts": diverging, "error": ""}
        )
        print(
            f"  {tokens / seconds:.1f} tokens/s; {diverging} of {len(prompts)} prompts diverge from the first",
            flush=True,
        )
    stamped = stamp()
    rows = [row | {"prompts": len(prompts), "max_new_tokens": new, "batch": 1} | stamped for row in rows]
    write_csv(args.out / "baselines.csv", rows)


if __name__ == "__main__":
    main()
