"""Stage 4: train an EAGLE-3 or EAGLE-1/2 draft head on the trained target's own features and predictions.

    python -m train.heads --kind eagle3|eagle1 [--target runs/target] [--data runs/data] [--out runs/<kind>]
                          [--budget-s 150] [--max-steps N] [--toy]

Features are computed on the fly: every batch of training windows runs through the frozen target once (bf16 on
CUDA), giving the embeddings, the head's input features and the target's logits. As in the official EAGLE code,
the head at position t reads the feature of token t and the embedding of token t+1 and is trained to match the
target's distribution at t+1 (the next token after t+1):

- EAGLE-3: the features are the inputs of target layers 2, L//2 and L-3, concatenated and projected by the
  head's `fc`. The draft vocabulary is the `--draft-vocab-size` most frequent tokens of the training split
  (`d2t[i] = draft_ids[i] - i`, ids sorted). The loss is the cross-entropy against the target's softmax restricted
  to the draft vocabulary, at positions whose target argmax is in it.
- EAGLE-1/2: the feature is the target's last hidden state (after its final norm, the `lm_head` input). The loss
  is SmoothL1 to the target's next feature plus 0.1 x the cross-entropy against the target's softmax through the
  target's `lm_head`, with uniform noise on the input features.

Training-time test (`--ttt-steps`, official EAGLE-3 length 7): step i feeds the head its own output hidden states
of step i-1 with the embeddings shifted by i, at rope positions shifted by i. Queries attend causally to the
step-0 keys (computed from real features) and, at their own index only, to the keys of steps 1..i -- the chain of
draft tokens that grew from that position, as at inference. Step i's loss is weighted 0.8**i.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM
from transformers.utils import logging as hf_logging

from model.checkpoint import save_head
from model.heads import Eagle3Head, EagleHead, HeadConfig, eagle3_feature_layers, make_head
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
)

KINDS = ("eagle3", "eagle1")


@dataclass
class HeadArgs:
    kind: str = "eagle3"
    ttt_steps: int = 7
    step_weight: float = 0.8
    draft_vocab_size: int = 3584
    intermediate_size: int | None = None
    feature_noise: float = 0.0
    feature_loss_weight: float = 1.0
    token_loss_weight: float = 1.0
    seq_len: int = 1024
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    budget_s: float = 150.0
    max_steps: int | None = None
    eval_windows: int = 128
    log_every: int = 50
    seed: int = 0


KIND_DEFAULTS = {
    # The shipped head: a 4864-token draft vocabulary and a narrower MLP keep the three models within 40 MB.
    "eagle3": {"draft_vocab_size": 4864, "intermediate_size": 640},
    # The official EAGLE-1 recipe: one step, uniform feature noise, loss = feature SmoothL1 + 0.1 x token CE.
    "eagle1": {"ttt_steps": 1, "feature_noise": 0.2, "token_loss_weight": 0.1},
}
TOY = {
    "draft_vocab_size": 256,
    "intermediate_size": None,
    "seq_len": 32,
    "batch_size": 4,
    "warmup_steps": 2,
    "max_steps": 4,
    "eval_windows": 4,
    "log_every": 2,
}


def draft_vocabulary(train_ids: np.ndarray, vocab: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `size` most frequent token ids (ties: smaller id) as `d2t` offsets, and the target-side mask `t2d`."""
    counts = np.bincount(train_ids, minlength=vocab)
    order = np.argsort(-counts, kind="stable")[:size]
    draft_ids = torch.from_numpy(np.sort(order)).long()
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[draft_ids] = True
    return draft_ids - torch.arange(size), t2d


def head_config(kind: str, target: LlamaForCausalLM, args: HeadArgs) -> HeadConfig:
    tc = target.config
    return HeadConfig(
        kind=kind,
        hidden_size=tc.hidden_size,
        num_attention_heads=tc.num_attention_heads,
        num_key_value_heads=tc.num_key_value_heads,
        head_dim=tc.head_dim,
        intermediate_size=args.intermediate_size or tc.intermediate_size,
        rms_norm_eps=tc.rms_norm_eps,
        rope_theta=tc.rope_parameters["rope_theta"],
        vocab_size=tc.vocab_size,
        draft_vocab_size=args.draft_vocab_size if kind == "eagle3" else tc.vocab_size,
        target_hidden_size=tc.hidden_size,
        fc_bias=kind == "eagle1",
        hidden_act=tc.hidden_act,
        max_position_embeddings=tc.max_position_embeddings,
    )


def build_head(kind: str, target: LlamaForCausalLM, args: HeadArgs, train_ids: np.ndarray) -> EagleHead:
    """A fresh fp32 head on the target's device; EAGLE-3's draft vocabulary, norm and lm_head set from the target."""
    device = target.device
    head = make_head(head_config(kind, target, args), dtype=torch.float32, device=device)
    if kind == "eagle1":
        return head
    d2t, t2d = draft_vocabulary(train_ids, target.config.vocab_size, args.draft_vocab_size)
    with torch.no_grad():
        head.d2t.copy_(d2t)
        head.t2d.copy_(t2d)
        # The target's output layer restricted to the draft vocabulary, and its final norm: the head's hidden
        # starts in the target's feature space, a better start than random rows.
        head.lm_head.weight.copy_(target.lm_head.weight[t2d.to(device)])
        head.norm.weight.copy_(target.model.norm.weight)
    return head


@dataclass
class TargetBatch:
    """What the frozen target gives for a batch of windows `tokens [B, N]`."""

    embeds: torch.Tensor  # [B, N, H] embeddings of the tokens
    features: torch.Tensor  # [B, N, H] last hidden state (EAGLE-1) or [B, N, 3H] layer inputs (EAGLE-3)
    logits: torch.Tensor  # [B, N, V]
    last_hidden: torch.Tensor  # [B, N, H] the lm_head input, EAGLE-1's regression target


@torch.no_grad()
def run_target(target: LlamaForCausalLM, tokens: torch.Tensor, kind: str) -> TargetBatch:
    with autocast(tokens.device):
        out = target.model(input_ids=tokens, output_hidden_states=True, use_cache=False)
        logits = target.lm_head(out.last_hidden_state)
    # hidden_states[i] is the input of decoder layer i (hidden_states[0] the embeddings); the last entry is normed.
    states = out.hidden_states
    if kind == "eagle3":
        features = torch.cat([states[i] for i in eagle3_feature_layers(target.config.num_hidden_layers)], dim=-1)
    else:
        features = out.last_hidden_state
    return TargetBatch(states[0], features, logits, out.last_hidden_state)


def shift(x: torch.Tensor, by: int) -> torch.Tensor:
    """`x[:, t + by]` at index t along dim 1, zero past the end (the official `padding(..., left=False)`)."""
    if by == 0:
        return x
    return torch.cat([x[:, by:], torch.zeros_like(x[:, :by])], dim=1)


class TrainingTimeTestAttention:
    """The `attend` callable for one batch of a TTT unroll; call it once per step, steps in order.

    Step 0 is causal attention over its own keys. Step i > 0 attends causally to step 0's keys and, at the
    query's own index, to the keys of steps 1..i (stored from the earlier calls).
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.keys.append(k)
        self.values.append(v)
        groups = q.shape[1] // k.shape[1]
        keys = torch.cat(self.keys, dim=2).repeat_interleave(groups, dim=1)
        values = torch.cat(self.values, dim=2).repeat_interleave(groups, dim=1)
        if len(self.keys) == 1:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=ttt_mask(q.shape[2], len(self.keys), q.device))


def ttt_mask(n: int, steps: int, device: torch.device) -> torch.Tensor:
    """`[n, n * steps]` bool: a causal block for step 0's keys, then one identity block per later step."""
    index = torch.arange(n, device=device)
    causal = index[None, :] <= index[:, None]
    identity = index[None, :] == index[:, None]
    return torch.cat([causal, *[identity] * (steps - 1)], dim=1)


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy of `logits` against softmax(`target_logits`), both `[..., V]`, in fp32."""
    target_p = torch.softmax(target_logits.float(), dim=-1)
    return -(target_p * torch.log_softmax(logits.float(), dim=-1)).sum(-1)


def ttt_hidden_states(head: EagleHead, embeds: torch.Tensor, first: torch.Tensor, steps: int) -> Iterator[torch.Tensor]:
    """The head's hidden states `[B, N, H]` for TTT steps 0..steps-1.

    `embeds` are the window's token embeddings and `first` the step-0 input (EAGLE-3: projected target features;
    EAGLE-1: the target's last hidden states). Step i reads the embeddings shifted by i + 1, at positions shifted
    by i, and the hidden states of step i - 1.
    """
    b, n, _ = embeds.shape
    positions = torch.arange(n, device=embeds.device).expand(b, n)
    attend = TrainingTimeTestAttention()
    hidden = first
    for step in range(steps):
        hidden = head(shift(embeds, 1 + step), hidden, positions + step, attend)
        yield hidden


def unroll(
    head: EagleHead,
    batch: TargetBatch,
    args: HeadArgs,
    lm_head: torch.nn.Linear,
    noise: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """One TTT unroll; returns the weighted loss, and per step the loss and the number of top-1 matches.

    A match: the head's argmax (as a target id) equals the target's argmax at a position inside the window.
    """
    n = batch.embeds.shape[1]
    inside_window = torch.arange(n, device=batch.embeds.device).expand(batch.embeds.shape[:2])
    eagle3 = isinstance(head, Eagle3Head)
    choices = batch.logits.argmax(-1)
    if eagle3:
        draft_ids = torch.arange(head.d2t.numel(), device=head.d2t.device) + head.d2t
        draft_logits = batch.logits[..., draft_ids]
    first = head.project(batch.features) if eagle3 else noise(batch.features)
    total = torch.zeros((), device=batch.embeds.device)
    losses, matches = [], []
    for step, hidden in enumerate(ttt_hidden_states(head, batch.embeds, first, args.ttt_steps)):
        inside = inside_window + 1 + step < n
        target_choice = shift(choices, 1 + step)
        if eagle3:
            logits = head.logits(hidden)
            weight = (inside & head.t2d[target_choice]).float()
            token_loss = (soft_cross_entropy(logits, shift(draft_logits, 1 + step)) * weight).sum()
            loss = token_loss / weight.sum().clamp(min=1)
            choice = draft_ids[logits.argmax(-1)]
        else:
            logits = head.logits(hidden, lm_head)
            weight = inside.float()
            token_loss = (soft_cross_entropy(logits, shift(batch.logits, 1 + step)) * weight).sum()
            next_feature = shift(batch.last_hidden, 1 + step).float()
            feature_loss = (F.smooth_l1_loss(hidden.float(), next_feature, reduction="none").mean(-1) * weight).sum()
            loss = (args.feature_loss_weight * feature_loss + args.token_loss_weight * token_loss) / weight.sum()
            choice = logits.argmax(-1)
        total = total + args.step_weight**step * loss
        losses.append(loss.detach())
        matches.append(((choice == target_choice) & inside).sum())
    return total, losses, matches


def positions_per_step(batch: int, n: int, steps: int) -> list[int]:
    """How many positions step i scores in a `[batch, n]` window (those with t + 1 + i < n)."""
    return [batch * (n - 1 - i) for i in range(steps)]


@torch.no_grad()
def evaluate(head: EagleHead, target: LlamaForCausalLM, val: TokenWindows, args: HeadArgs) -> list[float]:
    """Top-1 accuracy per TTT step on validation windows (teacher-forced tokens, the head's own hidden states)."""
    head.eval()
    hits = torch.zeros(args.ttt_steps, device=val.ids.device)
    counts = np.zeros(args.ttt_steps)
    for windows in val.sequential(args.batch_size, args.eval_windows):
        tokens = windows[:, :-1]
        with autocast(tokens.device):
            _, _, matches = unroll(head, run_target(target, tokens, args.kind), args, target.lm_head, lambda x: x)
        hits += torch.stack(matches)
        counts += positions_per_step(*tokens.shape, args.ttt_steps)
    head.train()
    return (hits.cpu().numpy() / counts).tolist()


class RunningAccuracy:
    """Top-1 matches per TTT step since the last `take`; `take` returns the accuracies (the last ones when empty)."""

    def __init__(self, steps: int, device: torch.device) -> None:
        self.hits = torch.zeros(steps, device=device)
        self.counts = np.zeros(steps)
        self.last = [math.nan] * steps

    def add(self, matches: list[torch.Tensor], counts: list[int]) -> None:
        self.hits += torch.stack(matches)
        self.counts += counts

    def take(self) -> list[float]:
        if self.counts.any():
            self.last = (self.hits.cpu().numpy() / self.counts).tolist()
            self.hits.zero_()
            self.counts[:] = 0
        return self.last


def uniform_noise(width: float, generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """Adds U(-width/2, width/2) noise (official EAGLE-1 data augmentation); identity when width is 0."""

    def add(x: torch.Tensor) -> torch.Tensor:
        if width == 0:
            return x
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + (u - 0.5) * width

    return add


def train(args: HeadArgs, target_dir: Path, data: Path, out: Path) -> dict:
    """Train the head on the frozen target, save it in the official EAGLE format to `out`; returns the summary."""
    if args.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {args.kind!r}")
    generator = seed_everything(args.seed)
    device = default_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    target = LlamaForCausalLM.from_pretrained(str(target_dir), dtype=dtype).to(device).eval()
    target.requires_grad_(False)
    train_ids = read_tokens(data, "train")
    head = build_head(args.kind, target, args, train_ids).train()
    train_windows = TokenWindows(train_ids, args.seq_len, device)
    val_windows = TokenWindows(read_tokens(data, "val"), args.seq_len, device)
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay, fused=device.type == "cuda"
    )
    noise = uniform_noise(args.feature_noise, torch.Generator(device=device).manual_seed(args.seed))
    n_params = sum(p.numel() for p in head.parameters())
    print(f"{args.kind}: {n_params / 1e6:.2f}M trainable parameters, {args.ttt_steps} TTT steps, device {device}")

    budget = Budget(args.budget_s, args.max_steps)
    progress = Progress(args.kind, args.log_every)
    accuracy = RunningAccuracy(args.ttt_steps, device)
    step = 0
    while not budget.done(step):
        lr = learning_rate(step, budget.progress(step), peak=args.lr, warmup_steps=args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tokens = train_windows.sample(args.batch_size, generator)[:, :-1]
        batch = run_target(target, tokens, args.kind)
        with autocast(device):
            loss, losses, matches = unroll(head, batch, args, target.lm_head, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        accuracy.add(matches, positions_per_step(*tokens.shape, args.ttt_steps))
        metrics = {"loss": loss.detach(), "loss0": losses[0], "lr": lr}
        if step % args.log_every == 0:
            metrics |= {f"acc{i}": a for i, a in enumerate(accuracy.take())}
        progress.update(step, tokens.numel(), metrics)
    train_accuracy = accuracy.take()

    val_accuracy = evaluate(head, target, val_windows, args)
    save_head(head.to(dtype), out)
    summary = {
        "kind": args.kind,
        "steps": step,
        "train_tokens_seen": step * args.batch_size * args.seq_len,
        "parameters": n_params,
        "final_loss": loss.item(),
        "train_top1_per_step": train_accuracy,
        "val_top1_per_step": val_accuracy,
        "wall_s": round(budget.elapsed(), 1),
        "args": asdict(args),
    }
    save_json(out.parent / f"{out.name}.summary.json", summary)
    shown = " ".join(f"{a:.3f}" for a in val_accuracy)
    print(f"{args.kind}: {step} steps, {summary['wall_s']}s; val top-1 per TTT step: {shown} -> {out}", flush=True)
    return summary


def parse_args(argv: list[str] | None = None) -> tuple[HeadArgs, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--target", type=Path, default=Path("runs/target"))
    parser.add_argument("--data", type=Path, default=Path("runs/data"))
    parser.add_argument("--out", type=Path, default=None, help="default runs/<kind>")
    parser.add_argument("--toy", action="store_true", help="a few tiny steps, for CPU tests")
    defaults = HeadArgs()
    for name, value in asdict(defaults).items():
        if name == "kind":
            continue
        kind = int if name in ("max_steps", "intermediate_size") else type(value)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=f"default {value}")
    ns = parser.parse_args(argv)
    ns.out = ns.out or Path("runs") / ns.kind
    return head_args(ns.kind, ns.toy, {k: v for k, v in vars(ns).items() if v is not None}), ns


def head_args(kind: str, toy: bool, overrides: dict) -> HeadArgs:
    """Defaults, then the kind's defaults, then the toy sizes, then explicit overrides."""
    values = asdict(HeadArgs()) | KIND_DEFAULTS[kind] | (TOY if toy else {}) | {"kind": kind}
    values |= {k: v for k, v in overrides.items() if k in values and k != "kind"}
    return HeadArgs(**values)


def main(argv: list[str] | None = None) -> None:
    args, ns = parse_args(argv)
    hf_logging.disable_progress_bar()
    train(args, ns.target, ns.data, ns.out)


if __name__ == "__main__":
    main()
