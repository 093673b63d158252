"""The ``eagle-ops`` command: ``eagle-ops demo`` runs EAGLE on the embedded default model, ``eagle-ops bench NAME``
runs a benchmark (``python -m benchmarks.NAME``).

The demo loads the small Python-code model shipped inside the package (no network), continues a few held-out
prompts with speculative decoding while streaming the text, then decodes the same prompts with the target alone
on the same cache, and prints the mean accepted length, both speeds, the speedup and whether the outputs match.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import pkgutil
import runpy
import sys
from pathlib import Path

import torch

DEFAULT_MODEL = Path(__file__).parent / "default"


def parse_tree(text: str):
    """``K,D,T`` (top-k, depth, tree size) for a dynamic tree, or ``static`` for the EAGLE-1 default tree."""
    from model.config import DynamicTree, StaticTree

    if text == "static":
        return StaticTree([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0, 0]])
    try:
        top_k, depth, size = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tree takes K,D,T (e.g. 10,7,60) or 'static', got {text!r}") from None
    return DynamicTree(top_k=top_k, depth=depth, tree_size=size)


def describe(tree) -> str:
    from model.config import DynamicTree

    if isinstance(tree, DynamicTree):
        return f"top-k {tree.top_k}, depth {tree.depth}, {tree.tree_size} nodes"
    return f"static, {tree.tree_size} nodes"


def demo(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer, TextStreamer
    from transformers.utils import logging as hf_logging

    from model.eagle_model import EagleModel

    hf_logging.set_verbosity_error()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    # A CPU verifies a tree at the cost of its size in tokens, a GPU almost for free: small trees on the CPU.
    tree = args.tree or parse_tree("10,7,60" if on_gpu else "4,4,16")
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL / "target")
    prompts = json.loads((DEFAULT_MODEL / "prompts.json").read_text())[: args.prompts]
    encoded = [tokenizer(p["text"])["input_ids"] for p in prompts]
    # The reference attention on the CPU reads the whole static cache: size it to the longest request.
    max_seq_len = max(map(len, encoded)) + args.max_new_tokens + 2 * tree.tree_size
    print(f"loading the embedded model ({args.head} head, tree {describe(tree)}) on {device}...", flush=True)
    model = EagleModel.from_pretrained(
        DEFAULT_MODEL / "target",
        DEFAULT_MODEL / args.head,
        tree=tree,
        max_batch_size=1,
        max_seq_len=max_seq_len,
        dtype=dtype,
        device=device,
    )
    options = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "eos_token_id": tokenizer.eos_token_id,
        "seed": args.seed,
    }
    # One short warm-up run each, so that one-time costs (allocator, kernel caches) stay out of the timings.
    warm = encoded[0]
    model.eagenerate([warm], **(options | {"max_new_tokens": 8}))
    model.generate_target_only([warm], **(options | {"max_new_tokens": 8}))

    eagle_tokens = eagle_time = target_tokens = target_time = steps = accepted = 0
    all_match = True
    for i, (prompt, ids) in enumerate(zip(prompts, encoded, strict=True), 1):
        print(f"\n=== prompt {i}/{len(prompts)}: held-out module {prompt['module']} ({len(ids)} tokens) ===")
        print(prompt["text"][-200:], end="")
        print("\033[1m" if sys.stdout.isatty() else "", end="", flush=True)
        eagle = model.eagenerate([ids], streamer=TextStreamer(tokenizer, skip_prompt=True), **options)
        print("\033[0m" if sys.stdout.isatty() else "", end="")
        target = model.generate_target_only([ids], **options)
        same = eagle.tokens == target.tokens
        all_match &= same
        print(
            f"--- EAGLE: {eagle.new_tokens} tokens in {eagle.steps} steps, mean accepted length "
            f"{eagle.mean_accepted:.2f}, {eagle.tokens_per_second:.1f} tokens/s; target alone: "
            f"{target.tokens_per_second:.1f} tokens/s; outputs {'identical' if same else 'DIFFER'}",
            flush=True,
        )
        eagle_tokens += eagle.new_tokens - 1
        eagle_time += eagle.decode_seconds
        target_tokens += target.new_tokens - 1
        target_time += target.decode_seconds
        steps += eagle.steps
        accepted += eagle.mean_accepted * eagle.steps
    eagle_speed, target_speed = eagle_tokens / eagle_time, target_tokens / target_time
    print(
        f"\n=== summary over {len(prompts)} prompts on {device}: mean accepted length {accepted / max(steps, 1):.2f} "
        f"tokens per step; EAGLE {eagle_speed:.1f} tokens/s, target alone {target_speed:.1f} tokens/s, "
        f"speedup {eagle_speed / target_speed:.2f}x"
    )
    if args.temperature == 0:
        print("greedy outputs identical to the target's own: " + ("yes" if all_match else "NO"))
        return 0 if all_match else 1
    print("sampling: EAGLE's output follows the target's distribution; the texts themselves differ by design")
    return 0


def benchmark_names() -> dict[str, str]:
    """The runnable modules of the ``benchmarks`` package (a ``main``, or a package's ``__main__``), each with the
    first line of its docstring. Imports them all (and so torch and transformers): only for listing."""
    import benchmarks

    found = {}
    for info in pkgutil.iter_modules(benchmarks.__path__):
        name = f"benchmarks.{info.name}"
        if info.ispkg:
            if importlib.util.find_spec(f"{name}.__main__") is None:
                continue
            name += ".__main__"
        module = importlib.import_module(name)
        if info.ispkg or callable(getattr(module, "main", None)):
            found[info.name] = (module.__doc__ or "").strip().split("\n", 1)[0]
    return found


def bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run ``benchmarks.<name>`` as ``python -m`` would, with the remaining arguments; list the names without one."""
    if args.name is None or args.help:
        parser.print_help()
        print("\nbenchmarks (eagle-ops bench NAME --help for each one's options):")
        for name, summary in benchmark_names().items():
            print(f"  {name:12s} {summary}")
        return 0
    module = f"benchmarks.{args.name}"
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent is no package
        found = False
    if not found:
        print(f"eagle-ops bench: no benchmark {args.name!r}; `eagle-ops bench` lists them", file=sys.stderr)
        return 2
    argv, sys.argv = sys.argv, [f"eagle-ops bench {args.name}", *args.args]  # the benchmark parses sys.argv
    try:
        runpy.run_module(module, run_name="__main__")
    finally:
        sys.argv = argv
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eagle-ops", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="speculative decoding on the embedded default model")
    run_demo.add_argument("--head", choices=("eagle3", "eagle1"), default="eagle3")
    run_demo.add_argument(
        "--tree",
        type=parse_tree,
        default=None,
        help="K,D,T for a dynamic tree, or 'static' (default: 4,4,16 on the CPU, 10,7,60 on a GPU)",
    )
    run_demo.add_argument("--prompts", type=int, default=3, help="how many held-out prompts (at most 16)")
    run_demo.add_argument("--max-new-tokens", type=int, default=96)
    run_demo.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    run_demo.add_argument("--top-k", type=int, default=0)
    run_demo.add_argument("--top-p", type=float, default=1.0)
    run_demo.add_argument("--seed", type=int, default=0)
    run_demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    # Its own --help, so that `eagle-ops bench NAME --help` reaches the benchmark and `eagle-ops bench --help` lists.
    run_bench = commands.add_parser(
        "bench", help="run a benchmark (python -m benchmarks.NAME); without NAME, list them", add_help=False
    )
    run_bench.add_argument("-h", "--help", action="store_true", help="show this help and the benchmarks")
    run_bench.add_argument("name", nargs="?", help="the benchmark, e.g. baselines, e2e, soak, ops")
    run_bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own arguments")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench(run_bench, args)
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())
