"""``EagleModel``: a hooked target, a draft head, their static caches and the static-shape decode step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import eagle_ops
from eagle_ops.topk_expand import MAX_K
from model.cache import KVCache
from model.checkpoint import check_fits_target, load_head, read_head_config
from model.config import DynamicTree, StaticTree, Tree
from model.generate import GenerationResult, Prompts, run
from model.graph import compile_step
from model.heads import EagleHead, eagle3_feature_layers
from model.step import Drafter, stop_tokens
from model.target import Target, check_target_config, read_target_config

MAX_EOS_IDS = 8


class EagleModel(nn.Module):
    """EAGLE speculative decoding over a ``transformers`` target with every buffer allocated up front.

    A run covers the first ``batch`` rows of every buffer (set by :meth:`configure`, filled by :meth:`prefill`).
    Between steps the state is the committed lengths ``cache_len``, the current draft tree (``tree_*``; node 0 is
    the last emitted token, whose K/V is not cached yet), the stop state and the statistics;
    :meth:`eagenerate_step` advances all sequences at once and :meth:`target_step` is the plain one-token target
    loop on the same cache. Everything lives on the device given at construction; the model is not moved later.
    """

    def __init__(
        self,
        target: Target,
        head: EagleHead,
        tree: Tree,
        *,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        super().__init__()
        config = target.config
        self.target = target
        self.tree = tree
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.sampling = False
        self.batch = 0
        embed = head.embed_tokens if head.embed_tokens is not None else target.embed_tokens()
        self.drafter = Drafter(
            head,
            embed,
            target.lm_head() if head.config.kind == "eagle1" else None,
            tree,
            max_batch_size=max_batch_size,
            max_seq_len=max_seq_len,
            dtype=dtype,
            device=device,
        )
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.target_cache = KVCache(
            config.num_hidden_layers,
            max_batch_size,
            target.kv_heads,
            max_seq_len,
            head_dim,
            dtype=dtype,
            device=device,
        )
        b, t, p = max_batch_size, tree.tree_size, tree.max_depth + 2

        def buffer(name: str, *shape: int, dtype: torch.dtype = torch.long, fill: Any = 0) -> None:
            self.register_buffer(name, torch.full(shape, fill, dtype=dtype, device=device), persistent=False)

        buffer("cache_len", b)
        buffer("tree_tokens", b, t)
        buffer("tree_parent", b, t, fill=-1)
        buffer("tree_mask", b, t, t, dtype=torch.bool, fill=False)
        buffer("tree_depth", b, t)
        buffer("done", b, dtype=torch.bool, fill=True)
        buffer("generated", b)
        buffer("max_new", b)
        buffer("eos", MAX_EOS_IDS, fill=-1)
        buffer("temperature", b, dtype=torch.float32, fill=1.0)
        buffer("top_k", b)
        buffer("top_p", b, dtype=torch.float32, fill=1.0)
        buffer("coins", b, p + 1, dtype=torch.float32)
        buffer("out_tokens", b, max_seq_len + p, fill=-1)  # every emitted token, at its index in the output
        buffer("active_steps", b)  # steps taken while unfinished
        buffer("accepted", b)  # sum over those steps of accept_len + 1
        buffer("accept_hist", b, p)  # how often each accept_len 0..D+1 occurred
        buffer("root_parent", b, 1, fill=-1)  # the one-node tree of the target-only loop and of the prefill
        buffer("root_mask", b, 1, 1, dtype=torch.bool, fill=True)
        if isinstance(tree, StaticTree):
            parent = self.drafter.parents[None].expand(b, -1)
            mask, depth = eagle_ops.tree_mask(parent.contiguous(), tree.max_depth + 1)
            self.tree_parent.copy_(parent)
            self.tree_mask.copy_(mask)
            self.tree_depth.copy_(depth)

    @classmethod
    def from_pretrained(
        cls,
        target_path: str | Path,
        head_path: str | Path,
        *,
        tree: Tree | None = None,
        max_batch_size: int = 1,
        max_seq_len: int = 2048,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cuda",
        tp_plan: str | None = None,
    ) -> EagleModel:
        """Load a target folder and an official-format head folder; everything is checked before loading.

        ``tree`` defaults to ``DynamicTree()`` (top_k 10, depth 7, 60 nodes, as official EAGLE-2/3).

        Tensor parallel: ``tp_plan="auto"`` shards the target over the processes of an initialised
        ``torch.distributed`` with the plan ``transformers`` ships for it (``pip install 'eagle-ops[tp]'``); its heads
        must divide by the world size. Each rank caches its own key/value heads, keeps the whole draft head and its
        cache, and runs the same tree ops on the same gathered logits, so every rank emits the same tokens
        (:meth:`check_ranks_agree` verifies it). ``device`` names the device type; each rank runs on the device
        ``transformers`` binds it to, ``cuda:LOCAL_RANK``. A script ``run.py`` holding ::

            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
            torch.distributed.init_process_group("nccl")
            model = EagleModel.from_pretrained(target_path, head_path, tp_plan="auto")
            result = model.eagenerate(prompts, max_new_tokens=256)
            model.check_ranks_agree()

        is meant for the GPUs of one host: ``torchrun --nproc_per_node 2 run.py``. Only the CPU version (gloo instead
        of nccl, ``device="cpu"``) is tested so far, in ``tests/model/test_tensor_parallel.py``; no GPU run yet.
        """
        tree = tree or DynamicTree()
        target_config = read_target_config(target_path)
        check_target_config(target_config, max_seq_len)
        head_config = read_head_config(head_path)
        check_fits_target(head_config, target_config)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if tree.tree_size >= max_seq_len:
            raise ValueError(f"max_seq_len {max_seq_len} leaves no room for a prompt and a {tree.tree_size}-node tree")
        widest = tree.top_k if isinstance(tree, DynamicTree) else 1 + max(max(p) for p in tree.choices)
        if widest > min(head_config.draft_vocab_size, MAX_K):
            raise ValueError(
                f"the tree branches {widest} ways; at most the draft vocabulary ({head_config.draft_vocab_size}) "
                f"and {MAX_K} are possible"
            )
        feature_layers = (
            eagle3_feature_layers(target_config.num_hidden_layers) if head_config.kind == "eagle3" else None
        )
        target = Target.from_pretrained(
            target_path, feature_layers=feature_layers, dtype=dtype, device=device, tp_plan=tp_plan
        )
        head = load_head(head_path, target_config=target.config, dtype=dtype, device=target.device)
        return cls(
            target,
            head,
            tree,
            max_batch_size=max_batch_size,
            max_seq_len=max_seq_len,
            dtype=dtype,
            device=target.device,
        )

    def compile(self, *, mode: str = "default", capture: bool | None = None) -> None:
        """Compile ``eagenerate_step`` whole (``torch.compile(fullgraph=True)``) and, on CUDA, replay it from one
        CUDA graph (``model/graph.py``); ``eagenerate`` then runs it. Compilation and capture happen in the first
        steps of the next run, and again for each new batch size or switch between greedy and sampling.
        ``del model.eagenerate_step`` undoes it."""
        self.eagenerate_step = compile_step(self, mode=mode, capture=capture)

    @property
    def device(self) -> torch.device:
        return self.cache_len.device

    def eagenerate(self, prompts: Prompts, **options: Any) -> GenerationResult:
        """EAGLE decoding of a ``[B, N]`` tensor or a list of prompts; options as :func:`model.generate.run`:
        ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``eos_token_id``, ``seed``, ``streamer``."""
        return run(self, prompts, speculative=True, **options)

    def generate_target_only(self, prompts: Prompts, **options: Any) -> GenerationResult:
        """The baseline: the target alone, one token per step, on the same cache, stop rules and sampling."""
        return run(self, prompts, speculative=False, **options)

    def configure(
        self,
        batch: int,
        *,
        max_new_tokens: int,
        temperature: float,
        top_k: int,
        top_p: float,
        eos_token_ids: Sequence[int],
    ) -> None:
        """Set the stop rules and the sampling parameters of the next run (checked by the caller)."""
        self.batch = batch
        self.sampling = temperature > 0
        self.max_new[:batch] = max_new_tokens
        self.eos.fill_(-1)
        self.eos[: len(eos_token_ids)] = torch.tensor(list(eos_token_ids), dtype=torch.long)
        self.temperature[:batch] = temperature if self.sampling else 1.0
        self.top_k[:batch] = top_k
        self.top_p[:batch] = top_p

    def draw_coins(self, generator: torch.Generator) -> None:
        """Fresh uniforms for the next acceptance (sampling only; the step itself never draws)."""
        self.coins[: self.batch].uniform_(generator=generator)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, *, draft: bool = True) -> None:
        """Run the right-padded prompts ``input_ids [B, N]`` (``lengths [B]`` real tokens each), emit each
        sequence's first token and, with ``draft``, draft the first tree."""
        b = self.batch
        for name in ("cache_len", "generated", "active_steps", "accepted", "accept_hist"):
            getattr(self, name)[:b].zero_()
        self.out_tokens[:b].fill_(-1)
        self.done[:b] = False
        positions = torch.arange(input_ids.shape[1], device=self.device).expand(b, -1)
        hidden, features = self.target(input_ids, positions, self.target_cache, self.cache_len[:b], None)
        last = (lengths - 1)[:, None]
        root_logits = self.target.lm_head()(hidden.gather(1, last[..., None].expand(-1, -1, hidden.shape[-1])))
        _, _, emitted, bonus = self._accept(torch.zeros_like(last), self.root_parent[:b], root_logits)
        self._emit(emitted, torch.ones_like(lengths), torch.ones_like(self.done[:b]))
        self.cache_len[:b] = lengths
        if draft:
            # Pair j of the prompt: the target feature of token j and the embedding of token j + 1 (the first
            # emitted token after the last prompt token).
            shifted = torch.cat((input_ids[:, 1:], torch.zeros_like(input_ids[:, :1])), 1)
            shifted = shifted.scatter(1, last, bonus[:, None])
            draft_hidden = self.drafter.consume(features, shifted, torch.zeros_like(lengths), prefill=True)
            self._set_tree(draft_hidden.gather(1, last[..., None].expand(-1, -1, draft_hidden.shape[-1])), bonus)
        else:
            self.tree_tokens[:b, 0] = bonus
        self._stop_if_full(self.tree.tree_size if draft else 1)

    @torch.no_grad()
    def eagenerate_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Verify the current tree, accept, compact the cache, draft the next tree.

        Returns the emitted tokens ``[B, D + 2]`` (``-1`` padded) and their counts ``[B]``; a finished sequence
        emits nothing. Static shapes, no host sync, no allocation whose size depends on data.
        """
        b = self._prefilled_batch()
        cache_len = self.cache_len[:b]
        tokens, parent = self.tree_tokens[:b], self.tree_parent[:b]
        hidden, features = self.target(
            tokens, cache_len[:, None] + self.tree_depth[:b], self.target_cache, cache_len, self.tree_mask[:b]
        )
        accept_len, path, emitted, bonus = self._accept(tokens, parent, self.target.lm_head()(hidden))
        active = ~self.done[:b]
        self._count(accept_len, active)
        out = self._emit(emitted, accept_len + 1, active)
        eagle_ops.kv_copy_(self.target_cache.view(b), cache_len, torch.where(active[:, None], path, -1))
        # The draft commits the accepted path: pair j = (target feature at path[j], emitted token j).
        path_features = features.gather(1, path.clamp_min(0)[..., None].expand(-1, -1, features.shape[-1]))
        draft_hidden = self.drafter.consume(path_features, emitted.clamp_min(0), cache_len, prefill=False)
        last = draft_hidden.gather(1, accept_len[:, None, None].expand(-1, -1, draft_hidden.shape[-1]))
        cache_len += torch.where(active, accept_len + 1, 0)
        self._set_tree(last, bonus)
        self._stop_if_full(self.tree.tree_size)
        return out

    @torch.no_grad()
    def target_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The baseline: one target forward over the last token, on the same cache and stop rules."""
        b = self._prefilled_batch()
        cache_len = self.cache_len[:b]
        root = self.tree_tokens[:b, :1].contiguous()
        hidden, _ = self.target(root, cache_len[:, None], self.target_cache, cache_len, self.root_mask[:b])
        accept_len, _, emitted, bonus = self._accept(root, self.root_parent[:b], self.target.lm_head()(hidden))
        active = ~self.done[:b]
        self._count(accept_len, active)
        out = self._emit(emitted, accept_len + 1, active)
        cache_len += active.long()
        self.tree_tokens[:b, 0] = bonus
        self._stop_if_full(1)
        return out

    def check_ranks_agree(self) -> None:
        """Raise ``RuntimeError`` unless every tensor-parallel rank holds the same run state: the tokens emitted so
        far and their counts, the committed lengths, the stop flags and the current draft tree.

        One all-gather and a host sync, so it is not part of the step: call it after :meth:`eagenerate` or any step.
        """
        if self.target.tp_size == 1:
            raise RuntimeError("check_ranks_agree compares tensor-parallel ranks; this model is not sharded")
        b = self._prefilled_batch()
        state = {
            "out_tokens": self.out_tokens[:b],
            "generated": self.generated[:b],
            "cache_len": self.cache_len[:b],
            "done": self.done[:b],
            "tree_tokens": self.tree_tokens[:b],
            "tree_parent": self.tree_parent[:b],
        }
        local = torch.cat([t.reshape(-1).long() for t in state.values()])
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        sizes = [t.numel() for t in state.values()]
        problems = []
        for rank, other in enumerate(gathered[1:], 1):
            for (name, t), want, got in zip(state.items(), gathered[0].split(sizes), other.split(sizes), strict=True):
                want, got = want.view(t.shape), got.view(t.shape)
                differ = (want != got).nonzero().tolist()
                if differ:
                    first = ", ".join(f"{i} {int(want[tuple(i)])} vs {int(got[tuple(i)])}" for i in differ[:3])
                    problems.append(f"{name}: rank {rank} differs from rank 0 at {len(differ)} elements ({first})")
        if problems:
            raise RuntimeError("tensor-parallel ranks disagree: " + "; ".join(problems))

    def _prefilled_batch(self) -> int:
        if self.batch == 0:
            raise RuntimeError("configure() and prefill() come before the first step")
        return self.batch

    def _accept(
        self, tokens: torch.Tensor, parent: torch.Tensor, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        depth = self.tree.max_depth
        if not self.sampling:
            return eagle_ops.posterior_greedy(tokens, parent, logits, depth)
        b = self.batch
        return eagle_ops.posterior_sample(
            tokens, parent, logits, depth, self.temperature[:b], self.top_k[:b], self.top_p[:b], self.coins[:b]
        )

    def _emit(
        self, emitted: torch.Tensor, emit_len: torch.Tensor, active: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.batch
        generated = self.generated[:b]
        tokens, counts, finished = stop_tokens(emitted, emit_len, active, generated, self.max_new[:b], self.eos)
        # Writes past the counts are -1 and land after this step's tokens, where later steps write again.
        self.out_tokens[:b].scatter_(1, generated[:, None] + torch.arange(tokens.shape[1], device=self.device), tokens)
        generated += counts
        self.done[:b] |= finished
        return tokens, counts

    def _count(self, accept_len: torch.Tensor, active: torch.Tensor) -> None:
        b = self.batch
        self.active_steps[:b] += active.long()
        self.accepted[:b] += torch.where(active, accept_len + 1, 0)
        self.accept_hist[:b].scatter_add_(1, accept_len[:, None], active[:, None].long())

    def _set_tree(self, last: torch.Tensor, root: torch.Tensor) -> None:
        b = self.batch
        tokens, parent = self.drafter.expand(last, root, self.cache_len[:b])
        self.tree_tokens[:b] = tokens
        if isinstance(self.tree, DynamicTree):
            mask, depth = eagle_ops.tree_mask(parent, self.tree.max_depth + 1)
            self.tree_parent[:b] = parent
            self.tree_mask[:b] = mask
            self.tree_depth[:b] = depth

    def _stop_if_full(self, tree_size: int) -> None:
        """A sequence stops when the next verify would not fit in the cache."""
        b = self.batch
        self.done[:b] |= self.cache_len[:b] + tree_size > self.max_seq_len
