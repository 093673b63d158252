"""Stage 3: train the Llama-architecture target on the tokenized standard library.

    python -m train.target [--data runs/data] [--tokenizer model/default/target] [--out runs/target]
                           [--budget-s 240] [--max-steps N] [--toy]

Random windows of the training stream, AdamW, linear warm-up then cosine decay on the wall-clock budget, bf16
autocast on CUDA, dropout on every residual branch (forward hooks, so the saved model is a plain Llama). The
validation split is evaluated every `--eval-every` steps; the best state by validation loss is kept and saved as a
standard `transformers` folder (bf16 safetensors, sharded below 16 MiB, tokenizer files beside it). Training
stops at the budget, at `--max-steps`, or after `--patience` evaluations without improvement.
"""

from __future__ import annotations

import argparse
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from train.common import (
    Budget,
    Progress,
    TokenWindows,
    autocast,
    default_device,
    learning_rate,
    read_tokens,
    save_json,
    seed_everything,
    vocab_size,
)

MAX_SHARD = "15MB"


@dataclass
class TargetArgs:
    hidden_size: int = 384
    num_hidden_layers: int = 8
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    intermediate_size: int = 896
    max_position_embeddings: int = 2048
    seq_len: int = 1024
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    dropout: float = 0.1
    budget_s: float = 240.0
    max_steps: int | None = None
    eval_every: int = 100
    eval_windows: int | None = None
    patience: int = 4
    log_every: int = 50
    seed: int = 0


TOY = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
    "seq_len": 64,
    "batch_size": 4,
    "warmup_steps": 2,
    "max_steps": 6,
    "eval_every": 3,
    "eval_windows": 8,
    "log_every": 2,
}


def llama_config(args: TargetArgs, vocab: int, end_of_text: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        head_dim=args.hidden_size // args.num_attention_heads,
        max_position_embeddings=args.max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
        pad_token_id=end_of_text,
    )


def add_residual_dropout(model: LlamaForCausalLM, p: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Dropout on the output of every attention and MLP branch while the model is in training mode."""

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return F.dropout(output, p, module.training)

    handles = []
    for layer in model.model.layers:
        handles.append(layer.self_attn.o_proj.register_forward_hook(hook))
        handles.append(layer.mlp.down_proj.register_forward_hook(hook))
    return handles


def next_token_loss(model: LlamaForCausalLM, windows: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=windows[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten())


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, val: TokenWindows, batch: int, limit: int | None) -> float:
    """Mean next-token loss over non-overlapping validation windows."""
    model.eval()
    device = val.ids.device
    total, count = torch.zeros((), device=device), 0
    for windows in val.sequential(batch, limit):
        with autocast(device):
            total += next_token_loss(model, windows) * windows[:, 1:].numel()
        count += windows[:, 1:].numel()
    model.train()
    return (total / count).item()


def optimizer_for(model: nn.Module, args: TargetArgs, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def train(args: TargetArgs, data: Path, tokenizer_dir: Path, out: Path) -> dict:
    """Train, keep the best state by validation loss, save it to `out`; returns the summary."""
    generator = seed_everything(args.seed)
    device = default_device()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = llama_config(args, vocab_size(data), tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).to(device)
    model.train()
    hooks = add_residual_dropout(model, args.dropout)
    train_windows = TokenWindows(read_tokens(data, "train"), args.seq_len, device)
    val_windows = TokenWindows(read_tokens(data, "val"), args.seq_len, device)
    optimizer = optimizer_for(model, args, device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"target: {n_params / 1e6:.2f}M parameters, {train_windows.ids.numel():,} train tokens, device {device}")

    budget = Budget(args.budget_s, args.max_steps)
    progress = Progress("target", args.log_every)
    best = {"val_loss": math.inf, "step": 0, "state": None}
    history, stale, step = [], 0, 0
    while not budget.done(step):
        lr = learning_rate(step, budget.progress(step), peak=args.lr, warmup_steps=args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        windows = train_windows.sample(args.batch_size, generator)
        with autocast(device):
            loss = next_token_loss(model, windows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress.update(step, windows[:, 1:].numel(), {"loss": loss.detach(), "lr": lr})
        if step % args.eval_every == 0 or budget.done(step):
            val_loss = evaluate(model, val_windows, args.batch_size, args.eval_windows)
            history.append({"step": step, "val_loss": val_loss, "elapsed_s": round(budget.elapsed(), 1)})
            print(f"target eval step {step} | val loss {val_loss:.4f} | ppl {math.exp(val_loss):.2f}", flush=True)
            if val_loss < best["val_loss"]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best, stale = {"val_loss": val_loss, "step": step, "state": state}, 0
            else:
                stale += 1
                if stale >= args.patience:
                    print(f"target: no improvement in {stale} evaluations, stopping", flush=True)
                    break

    for handle in hooks:
        handle.remove()
    model.load_state_dict(best["state"])
    model.to(torch.bfloat16).save_pretrained(str(out), max_shard_size=MAX_SHARD)
    for file in sorted(tokenizer_dir.glob("tokenizer*")):  # byte for byte, as `train.tokenizer` wrote them
        shutil.copyfile(file, out / file.name)
    val_loss = evaluate(model, val_windows, args.batch_size, args.eval_windows)  # the saved bf16 weights
    summary = {
        "val_loss": val_loss,
        "val_ppl": math.exp(val_loss),
        "val_loss_fp32": best["val_loss"],
        "best_step": best["step"],
        "steps": step,
        "train_tokens_seen": step * args.batch_size * args.seq_len,
        "parameters": n_params,
        "wall_s": round(budget.elapsed(), 1),
        "history": history,
        "args": asdict(args),
    }
    save_json(out.parent / f"{out.name}.summary.json", summary)
    print(
        f"target: val loss {val_loss:.4f} (ppl {summary['val_ppl']:.2f}) in bf16, {best['val_loss']:.4f} in fp32, "
        f"best at step {best['step']} of {step}; {summary['wall_s']}s -> {out}",
        flush=True,
    )
    return summary


def parse_args(argv: list[str] | None = None) -> tuple[TargetArgs, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/data"))
    parser.add_argument("--tokenizer", type=Path, default=Path("model/default/target"))
    parser.add_argument("--out", type=Path, default=Path("runs/target"))
    parser.add_argument("--toy", action="store_true", help="a tiny model and a few steps, for CPU tests")
    defaults = TargetArgs()
    for name, value in asdict(defaults).items():
        kind = int if name in ("max_steps", "eval_windows") else type(value)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=f"default {value}")
    ns = parser.parse_args(argv)
    return target_args(ns.toy, {k: v for k, v in vars(ns).items() if v is not None}), ns


def target_args(toy: bool, overrides: dict) -> TargetArgs:
    """Defaults, then the toy sizes, then explicit overrides."""
    values = asdict(TargetArgs()) | (TOY if toy else {})
    values |= {k: v for k, v in overrides.items() if k in values}
    return TargetArgs(**values)


def main(argv: list[str] | None = None) -> None:
    args, ns = parse_args(argv)
    hf_logging.disable_progress_bar()
    train(args, ns.data, ns.tokenizer, ns.out)


if __name__ == "__main__":
    main()
