"""Decode step time, eager vs compiled vs captured, against the weight-read floor and against the forwards alone.

    python -m benchmarks.e2e --out DIR [--only default|8b] [--batch 1,16]

Models, both with an EAGLE-3 head, bf16, greedy, the EAGLE-2/3 tree T = 60, K = 10, D = 7 (``DynamicTree()``):
- ``default``: the embedded model (``model/default``) on its held-out prompts;
- ``8b``: a Llama-3.1-8B-shaped target (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocabulary
  128256) and an 8B-shaped EAGLE-3 head (draft vocabulary 32000), random weights built in memory on the GPU, on
  prompts of 512 random tokens. Random drafts are never accepted; the step's cost does not depend on that.

Per model and batch, every method starts from the same prefill and is timed with CUDA events over ``STEPS`` steps
issued back to back (as ``model.generate`` issues them), median of ``REPEATS``:
- ``eager``: ``eagenerate_step``; ``compiled``: ``CompiledStep.compiled``; ``captured``: ``CompiledStep`` replays;
- ``verify`` and ``draft``: the step's model forwards alone, each compiled and replayed from a CUDA graph of its
  own the same way: the verify forward over T tokens and its logits; the draft's pass over the D + 2 accepted pairs
  and the root's logits, then D draft levels over K tokens and their logits. ``forwards`` is their sum, and
  ``captured / forwards`` is what the eagle_ops and the glue between the forwards cost (the target: at most 1.05);
- ``floor``: the weight bytes a step reads (the target's once, the draft head's once per draft forward: D + 1 of
  them), over the read bandwidth measured in the same run.

Rows are appended to ``DIR/e2e.csv``; ``DIR/e2e.md`` gets one table line per model and batch. The captured step by
phase (verify forward, draft forwards, everything else: the captured step less the two) goes to ``DIR/e2e_phases.md``
and, as a stacked bar per model and batch, to ``DIR/e2e_phases.png``.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.harness import read_bandwidth_gbps, stamp, time_graph_ms, time_ms, write_csv
from benchmarks.plots import stacked_bar
from benchmarks.step_check import load_prompts, start
from model.cache import register_attention
from model.cli import DEFAULT_MODEL
from model.config import DynamicTree
from model.eagle_model import EagleModel
from model.graph import WARMUP_STEPS, compile_step
from model.heads import Eagle3Head, HeadConfig, eagle3_feature_layers, make_head
from model.target import Target

STEPS, REPEATS = 10, 5
MAX_SEQ_LEN = 2048
PROMPT_8B = 512
LLAMA31_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}  # fmt: skip
LLAMA31_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    vocab_size=128256, rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=False,
    rope_parameters={**LLAMA31_ROPE, "rope_theta": 500000.0},
)  # fmt: skip
EAGLE3_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
    draft_vocab_size=32000, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=LLAMA31_ROPE,
    max_position_embeddings=131072,
)  # fmt: skip
_START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _START:6.1f} s] {message}", flush=True)


def default_model(max_batch_size: int) -> EagleModel:
    return EagleModel.from_pretrained(
        DEFAULT_MODEL / "target",
        DEFAULT_MODEL / "eagle3",
        tree=DynamicTree(),
        max_batch_size=max_batch_size,
        max_seq_len=MAX_SEQ_LEN,
        dtype=torch.bfloat16,
        device="cuda",
    )


def llama8b_model(max_batch_size: int) -> EagleModel:
    """The 8B-shaped target and EAGLE-3 head with random weights, built directly in bf16 on the GPU."""
    config = LlamaConfig(**LLAMA31_8B)
    config._attn_implementation = register_attention()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            llama = LlamaForCausalLM(config).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)
    target = Target(llama, eagle3_feature_layers(config.num_hidden_layers))
    head = make_head(HeadConfig.from_dict(EAGLE3_8B), dtype=torch.bfloat16, device="cuda").eval().requires_grad_(False)
    return EagleModel(
        target,
        head,
        DynamicTree(),
        max_batch_size=max_batch_size,
        max_seq_len=MAX_SEQ_LEN,
        dtype=torch.bfloat16,
        device="cuda",
    )


def random_prompts(batch: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, vocab, (batch, PROMPT_8B), generator=torch.Generator().manual_seed(0))
    return ids, torch.full((batch,), PROMPT_8B)


def module_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def weight_bytes_per_step(model: EagleModel) -> int:
    """Target: every weight once, except an untied input embedding (a forward reads only its tokens' rows).
    EAGLE-3 head: ``fc`` once (the accepted pairs' projection), the decoder layer, norm and lm_head once per draft
    forward (the pass over the accepted pairs, then D levels)."""
    llama = model.target.model
    embedding = llama.get_input_embeddings().weight
    tied = embedding is llama.get_output_embeddings().weight
    target = module_bytes(llama) - (0 if tied else embedding.numel() * embedding.element_size())
    head = model.drafter.head
    if not isinstance(head, Eagle3Head):
        raise TypeError(f"the floor is counted for EAGLE-3 heads, got {type(head).__name__}")
    per_forward = module_bytes(head.midlayer) + module_bytes(head.norm) + module_bytes(head.lm_head)
    return target + module_bytes(head.fc) + (model.tree.max_depth + 1) * per_forward


def forwards(model: EagleModel) -> dict[str, Callable[[], list[torch.Tensor]]]:
    """The model forwards of one step of the current batch, without the eagle_ops between them (the attention op
    inside the forwards stays), as two phases: ``verify`` (the target over the tree) and ``draft`` (the draft head's
    pass over the accepted pairs and its D levels). Writes K/V only past ``cache_len``, where the next step writes
    before it reads. Each returns every tensor it computes for the rest of the step, so that the compiler keeps all
    of the work; the draft phase reads target features computed once here, at a fixed address."""
    b, tree, drafter = model.batch, model.tree, model.drafter
    k, depth, width = tree.top_k, tree.depth, tree.max_depth + 2
    if tree.tree_size <= max(k, width):
        raise ValueError(
            f"the forwards reuse the tree's tokens: tree_size {tree.tree_size} must exceed {max(k, width)}"
        )
    eye = torch.eye(k, dtype=torch.bool, device=model.device)
    masks = [eye.repeat(1, level + 1).expand(b, -1, -1) for level in range(depth)]  # as the drafter's lineages

    def verify() -> list[torch.Tensor]:
        cache_len, tokens = model.cache_len[:b], model.tree_tokens[:b]
        hidden, features = model.target(
            tokens, cache_len[:, None] + model.tree_depth[:b], model.target_cache, cache_len, model.tree_mask[:b]
        )
        return [model.target.lm_head()(hidden), features]

    features = verify()[1][:, :width].clone()

    def draft() -> list[torch.Tensor]:
        cache_len, tokens = model.cache_len[:b], model.tree_tokens[:b]
        parent = drafter.consume(features, tokens[:, :width], cache_len, prefill=False)[:, :1]
        logits = [drafter.logits(parent)]
        parent, frontier = parent.expand(-1, k, -1), tokens[:, 1 : k + 1]
        for level, mask in enumerate(masks):
            positions = (cache_len + level)[:, None].expand(-1, k)
            parent = drafter.run(frontier, parent, positions, cache_len, mask, offset=level * k)
            logits.append(drafter.logits(parent))
        return logits

    return {"verify": verify, "draft": draft}


def steps_ms(step: Callable[[], object]) -> tuple[float, float, float]:
    """(p20, median, p80) milliseconds per step over ``STEPS`` steps issued back to back."""
    p20, median, p80 = time_ms(lambda: [step() for _ in range(STEPS)], warmup=1, repeats=REPEATS)
    return p20 / STEPS, median / STEPS, p80 / STEPS


def mean_accepted(model: EagleModel) -> float:
    b = model.batch
    return float(model.accepted[:b].sum()) / max(int(model.active_steps[:b].sum()), 1)


def bench_batch(
    name: str, model: EagleModel, prompts: tuple[torch.Tensor, torch.Tensor], bandwidth: float
) -> list[dict]:
    """Every method's rows for one model and batch."""
    batch = len(prompts[1])
    floor_ms = weight_bytes_per_step(model) / (bandwidth * 1e9) * 1e3
    timings: dict[str, tuple[tuple[float, float, float], float, float]] = {}  # method: (p20, median, p80), tau, compile

    start(model, *prompts, sampling=False)
    timings["eager"] = steps_ms(type(model).eagenerate_step.__get__(model)), mean_accepted(model), 0.0
    log(f"{name} B={batch}: eager {timings['eager'][0][1]:.3f} ms per step; compiling...")

    step = compile_step(model)
    start(model, *prompts, sampling=False)
    began = time.perf_counter()
    step.compiled()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - began
    start(model, *prompts, sampling=False)
    timings["compiled"] = steps_ms(step.compiled), mean_accepted(model), compile_s
    log(f"{name} B={batch}: compiled in {compile_s:.1f} s, {timings['compiled'][0][1]:.3f} ms per step; capturing...")

    start(model, *prompts, sampling=False)
    for _ in range(WARMUP_STEPS + 1):
        step()
    start(model, *prompts, sampling=False)
    timings["captured"] = steps_ms(step), mean_accepted(model), compile_s
    log(f"{name} B={batch}: captured {timings['captured'][0][1]:.3f} ms per step; compiling the forwards alone...")

    start(model, *prompts, sampling=False)
    for phase, run in forwards(model).items():
        began = time.perf_counter()
        phase_ms = time_graph_ms(torch.compile(run, fullgraph=True, dynamic=False), calls=STEPS)
        if math.isnan(phase_ms[1]):
            log(f"{name} B={batch}: the {phase} forwards could not be captured in a CUDA graph (NaN timings)")
        timings[phase] = phase_ms, float("nan"), time.perf_counter() - began
        log(f"{name} B={batch}: {phase} forwards {phase_ms[1]:.3f} ms")
    (verify, _, verify_s), (draft, _, draft_s) = timings["verify"], timings["draft"]
    forwards_ms = tuple(v + d for v, d in zip(verify, draft, strict=True))
    timings["forwards"] = forwards_ms, float("nan"), verify_s + draft_s
    log(f"{name} B={batch}: forwards {forwards_ms[1]:.3f} ms; floor {floor_ms:.3f} ms")

    rows = []
    for method, ((p20, median, p80), tau, compile_seconds) in timings.items():
        rows.append(
            {
                "model": name,
                "batch": batch,
                "method": method,
                "ms_per_step": round(median, 4),
                "p20_ms": round(p20, 4),
                "p80_ms": round(p80, 4),
                "tau": round(tau, 3),
                "tokens_per_s": round(batch * tau / median * 1e3, 1),
                "verify_ms": round(timings["verify"][0][1], 4),
                "draft_ms": round(timings["draft"][0][1], 4),
                "forwards_ms": round(forwards_ms[1], 4),
                "x_forwards": round(median / forwards_ms[1], 3),
                "floor_ms": round(floor_ms, 4),
                "x_floor": round(median / floor_ms, 2),
                "weight_gb_per_step": round(weight_bytes_per_step(model) / 1e9, 3),
                "read_gbps": round(bandwidth),
                "compile_s": round(compile_seconds, 1),
                "tree": f"T={model.tree.tree_size},K={model.tree.top_k},D={model.tree.depth}",
            }
        )
    return rows


def bench_model(name: str, batches: list[int], bandwidth: float, stamped: dict, out: Path) -> tuple[list[dict], bool]:
    """All batches of one model; a failing batch prints its traceback and the others still run."""
    log(f"{name}: building the model...")
    model = default_model(max(batches)) if name == "default" else llama8b_model(max(batches))
    rows, ok = [], True
    vocab = model.target.config.vocab_size
    for batch in batches:
        prompts = load_prompts(batch) if name == "default" else random_prompts(batch, vocab)
        try:
            batch_rows = [row | stamped for row in bench_batch(name, model, prompts, bandwidth)]
        except Exception:
            log(f"{name} B={batch} FAILED:\n{traceback.format_exc()}")
            ok = False
            continue
        write_csv(out / "e2e.csv", batch_rows)
        rows += batch_rows
    del model
    gc.collect()
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return rows, ok


def markdown_table(rows: list[dict]) -> str:
    """One line per model and batch."""
    header = [
        "model", "B", "eager ms", "compiled ms", "captured ms", "forwards ms", "floor ms", "captured / forwards",
        "captured / floor", "tau", "tokens/s (captured)", "compile s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups: dict[tuple[str, int], dict[str, dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["batch"]), {})[row["method"]] = row
    for (name, batch), by_method in groups.items():
        captured = by_method["captured"]
        cells = [name, str(batch)]
        cells += [f"{by_method[m]['ms_per_step']:.3f}" for m in ("eager", "compiled", "captured", "forwards")]
        cells += [f"{captured['floor_ms']:.3f}", f"{captured['x_forwards']:.3f}", f"{captured['x_floor']:.2f}"]
        cells += [f"{captured['tau']:.2f}", f"{captured['tokens_per_s']:.0f}", f"{captured['compile_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def phases(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per model and batch, the captured step's milliseconds by phase: the verify forward, the draft forwards and
    everything else (the captured step less the two, negative when the forwards timed alone take longer)."""
    found = {}
    for row in rows:
        if row["method"] == "captured":
            verify, draft = row["verify_ms"], row["draft_ms"]
            found[f"{row['model']} B={row['batch']}"] = {
                "verify forward": verify,
                "draft forwards": draft,
                "everything else": round(row["ms_per_step"] - verify - draft, 4),
            }
    return found


def phases_table(by_phase: dict[str, dict[str, float]]) -> str:
    header = ["model and batch", "captured ms", "verify forward ms", "draft forwards ms", "everything else ms"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, ms in by_phase.items():
        total = sum(ms.values())
        cells = [name, f"{total:.3f}"] + [f"{v:.3f} ({v / total:.0%})" for v in ms.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--only", choices=("default", "8b"), help="one model instead of both")
    parser.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.e2e needs a CUDA device")
    batches = [int(b) for b in args.batch.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    stamped = stamp()
    bandwidth = read_bandwidth_gbps()
    log(f"{stamped['device']}: measured read bandwidth {bandwidth:.0f} GB/s")
    rows, ok = [], True
    for name in [args.only] if args.only else ["default", "8b"]:
        model_rows, model_ok = bench_model(name, batches, bandwidth, stamped, args.out)
        rows += model_rows
        ok &= model_ok
    table = markdown_table(rows)
    (args.out / "e2e.md").write_text(table)
    print(table)
    by_phase = phases(rows)
    if by_phase:
        table = phases_table(by_phase)
        (args.out / "e2e_phases.md").write_text(table)
        print(table)
        # A stack cannot show a negative segment: the table keeps the sign, the picture shows it as 0.
        stacked = {name: {phase: max(v, 0.0) for phase, v in ms.items()} for name, ms in by_phase.items()}
        title = f"{stamped['device']}: the captured step by phase (T = 60, K = 10, D = 7, bf16)"
        stacked_bar(args.out / "e2e_phases.png", stacked, ylabel="ms per step", title=title)
    log("done" if ok else "done, with failures (see above)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
