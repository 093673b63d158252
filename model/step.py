"""The pieces of ``eagenerate_step`` that are not the target: the drafter and the stop rules.

Everything here has static shapes: sizes come from the batch and the tree, never from data, and nothing reads a
device value on the host, so ``torch.compile(fullgraph=True)`` and CUDA-graph capture can take the step whole.

Draft positions follow the official EAGLE layout: the head's input ``j`` pairs the target feature of token ``j``
with the embedding of token ``j + 1`` and sits at position (and draft cache slot) ``j``. So the draft cache holds
exactly ``cache_len`` committed pairs, like the target cache, and one ``cache_len`` serves both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import eagle_ops
from model.cache import KVCache, attend
from model.config import DynamicTree, StaticTree, Tree
from model.heads import Eagle1Head, EagleHead


@dataclass
class StaticLevel:
    """How the drafter fills depth ``d`` of a static tree and runs the head on the nodes that have children.

    ``child_pick`` indexes each depth-``d`` node in the ``topk_expand`` level over its parents (parent-major,
    ``ranks`` per parent). ``forward_pick`` lists the depth-``d`` nodes with children (positions within the
    depth), ``forward_parent`` their parents among the previous level's forwarded nodes, ``mask`` what each sees
    of the draft scratch (its forwarded ancestors and itself), ``offset`` where the level starts in the scratch.
    """

    ranks: int
    child_pick: torch.Tensor
    forward_pick: torch.Tensor
    forward_parent: torch.Tensor
    mask: torch.Tensor
    offset: int


def static_levels(tree: StaticTree, device: torch.device | str) -> list[StaticLevel]:
    paths = tree.choices
    forwarded: list[tuple[int, ...]] = [()]  # the previous depth's nodes with children; the root first
    ancestors: dict[tuple[int, ...], list[int]] = {(): []}  # scratch slots of each forwarded node's lineage
    levels, slots = [], 0
    for depth in range(1, tree.max_depth + 2):
        nodes = [p for p in paths if len(p) == depth]
        ranks = 1 + max(p[-1] for p in nodes)
        child_pick = [forwarded.index(p[:-1]) * ranks + p[-1] for p in nodes]
        with_children = [p for p in nodes if any(q[:-1] == p for q in paths)]
        for p in with_children:
            ancestors[p] = [*ancestors[p[:-1]], slots + with_children.index(p)]
        width = slots + len(with_children)
        mask = [[s in ancestors[p] for s in range(width)] for p in with_children]
        levels.append(
            StaticLevel(
                ranks=ranks,
                child_pick=torch.tensor(child_pick, device=device),
                forward_pick=torch.tensor([nodes.index(p) for p in with_children], device=device, dtype=torch.long),
                forward_parent=torch.tensor(
                    [forwarded.index(p[:-1]) for p in with_children], device=device, dtype=torch.long
                ),
                mask=torch.tensor(mask, device=device, dtype=torch.bool).view(len(with_children), width),
                offset=slots,
            )
        )
        forwarded, slots = with_children, width
    return levels


class Drafter(nn.Module):
    """The draft head with its own static cache and the tree expansion (dynamic EAGLE-2/3 or static EAGLE-1).

    ``embed_tokens`` is the token embedding the head reads (the target's, or the head's own), ``target_lm_head``
    the target's lm_head (EAGLE-1 heads predict through it; None for EAGLE-3).
    """

    def __init__(
        self,
        head: EagleHead,
        embed_tokens: nn.Module,
        target_lm_head: nn.Module | None,
        tree: Tree,
        *,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        super().__init__()
        self.head = head
        self.embed_tokens = embed_tokens
        self.target_lm_head = target_lm_head
        self.tree = tree
        config = head.config
        self.scale = config.head_dim**-0.5
        path_len = tree.max_depth + 2
        if isinstance(tree, DynamicTree):
            scratch = tree.depth * tree.top_k
            self.register_buffer("eye", torch.eye(tree.top_k, dtype=torch.bool, device=device), persistent=False)
        else:
            self.levels = static_levels(tree, device)
            scratch = sum(level.forward_pick.numel() for level in self.levels)
            self.register_buffer("parents", torch.tensor(tree.parents(), device=device), persistent=False)
        # The consume pass writes up to path_len slots past cache_len, the expansion `scratch` past the new one.
        capacity = max_seq_len + path_len + scratch
        self.cache = KVCache(
            1, max_batch_size, config.num_key_value_heads, capacity, config.head_dim, dtype=dtype, device=device
        )
        causal = torch.ones(path_len, path_len, dtype=torch.bool, device=device).tril()
        self.register_buffer("causal", causal, persistent=False)
        self.uses_d2t = config.kind == "eagle3" and config.draft_vocab_size != config.vocab_size

    @property
    def d2t(self) -> torch.Tensor | None:
        """The draft-to-target id offsets, when the head's vocabulary is reduced."""
        return self.head.d2t if self.uses_d2t else None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head's next-token logits over its vocabulary, ``[B, N, Vd]``."""
        if isinstance(self.head, Eagle1Head):
            return self.head.logits(hidden, self.target_lm_head)
        return self.head.logits(hidden)

    def run(
        self,
        tokens: torch.Tensor,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        cache_len: torch.Tensor,
        tree_mask: torch.Tensor | None,
        offset: int = 0,
    ) -> torch.Tensor:
        """One head forward over ``tokens [B, N]`` with input hidden ``[B, N, H]``, writing its K/V to draft slots
        ``cache_len + offset + i`` and attending as ``cache.attend`` does. Returns the head's hidden ``[B, N, H]``."""

        def attend_draft(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return attend(self.cache, 0, q, k, v, cache_len, tree_mask, self.scale, offset)

        return self.head(self.embed_tokens(tokens), hidden, positions, attend_draft)

    def consume(
        self, features: torch.Tensor, next_tokens: torch.Tensor, cache_len: torch.Tensor, *, prefill: bool
    ) -> torch.Tensor:
        """Commit draft pairs ``(features[:, j], next_tokens[:, j])`` at slots ``cache_len + j``.

        ``features`` are the target's (``Target.forward``); a decode step passes ``D + 2`` pairs (the accepted path,
        padded), attending causally after the committed prefix; a prefill starts from an empty draft cache.
        """
        hidden = features if isinstance(self.head, Eagle1Head) else self.head.project(features)
        width = next_tokens.shape[1]
        positions = cache_len[:, None] + torch.arange(width, device=next_tokens.device)
        mask = None if prefill else self.causal[None].expand(next_tokens.shape[0], -1, -1)
        return self.run(next_tokens, hidden, positions, cache_len, mask)

    def expand(
        self, last: torch.Tensor, root: torch.Tensor, cache_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft the next tree after ``root [B]`` (whose pair's head output is ``last [B, 1, H]``).

        ``cache_len`` is the committed length including the pair of ``root``; returns ``tree_tokens [B, T]`` and
        ``tree_parent [B, T]``.
        """
        if isinstance(self.tree, DynamicTree):
            return self._expand_dynamic(last, root, cache_len)
        return self._expand_static(last, root, cache_len)

    def _expand_dynamic(
        self, last: torch.Tensor, root: torch.Tensor, cache_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k, batch = self.tree.top_k, root.shape[0]
        root_scores = torch.zeros(batch, 1, dtype=torch.float32, device=root.device)
        expansion = eagle_ops.topk_expand(self.logits(last), root_scores, self.d2t, k)
        scores, tokens = [expansion.level_scores], [expansion.level_tokens]
        parents = [torch.zeros(batch, 1, dtype=torch.long, device=root.device)]
        parent_hidden = last.expand(-1, k, -1)  # the head output each frontier node's pair reads
        seen = self.eye[None].expand(batch, -1, -1)  # [B, K, slots]: the frontier's ancestors in the scratch
        level_start = 0  # flat index of the frontier's level among all candidates
        for level in range(self.tree.depth):
            parents.append(1 + level_start + expansion.next_index)
            positions = (cache_len + level)[:, None].expand(-1, k)
            hidden = self.run(expansion.next_tokens, parent_hidden, positions, cache_len, seen, offset=level * k)
            expansion = eagle_ops.topk_expand(self.logits(hidden), expansion.next_scores, self.d2t, k)
            scores.append(expansion.level_scores)
            tokens.append(expansion.level_tokens)
            chosen = expansion.next_parent[..., None]
            parent_hidden = hidden.gather(1, chosen.expand(-1, -1, hidden.shape[-1]))
            lineage = seen.gather(1, chosen.expand(-1, -1, seen.shape[-1]))
            seen = torch.cat((lineage, self.eye[None].expand(batch, -1, -1)), dim=2)
            level_start = k + level * k * k
        return eagle_ops.build_tree(
            torch.cat(scores, 1), torch.cat(tokens, 1), torch.cat(parents, 1), root, self.tree.tree_size
        )

    def _expand_static(
        self, last: torch.Tensor, root: torch.Tensor, cache_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = root.shape[0]
        tokens = [root[:, None]]
        parent_hidden = last  # head outputs of the previous depth's nodes with children (the root's pair first)
        for depth, level in enumerate(self.levels):
            no_scores = torch.zeros(batch, parent_hidden.shape[1], dtype=torch.float32, device=root.device)
            expansion = eagle_ops.topk_expand(self.logits(parent_hidden), no_scores, self.d2t, level.ranks)
            level_tokens = expansion.level_tokens[:, level.child_pick]
            tokens.append(level_tokens)
            if level.forward_pick.numel() == 0:  # the deepest level: no node has children
                break
            width = level.forward_pick.numel()
            parent_hidden = self.run(
                level_tokens[:, level.forward_pick],
                parent_hidden[:, level.forward_parent],
                (cache_len + depth)[:, None].expand(-1, width),
                cache_len,
                level.mask[None].expand(batch, -1, -1),
                offset=level.offset,
            )
        return torch.cat(tokens, 1), self.parents[None].expand(batch, -1)


def stop_tokens(
    emitted: torch.Tensor,
    emit_len: torch.Tensor,
    active: torch.Tensor,
    generated: torch.Tensor,
    max_new: torch.Tensor,
    eos: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply the stop rules to one step's tokens, on the device.

    ``emitted [B, W]`` holds ``emit_len [B]`` tokens; a sequence emits them up to and including its first EOS
    (any id in ``eos [E]``; ``-1`` entries match nothing) and up to ``max_new [B]`` tokens in all, and nothing once
    finished (``active`` false). Returns the tokens (``-1`` padded), their counts and which sequences finish now.
    """
    width = emitted.shape[1]
    j = torch.arange(width, device=emitted.device)
    is_eos = (emitted[:, :, None] == eos).any(-1) & (j < emit_len[:, None])
    first_eos = torch.where(is_eos, j, width).amin(1)
    counts = torch.minimum(torch.minimum(emit_len, first_eos + 1), max_new - generated)
    counts = torch.where(active, counts, 0)
    finished = active & ((first_eos < counts) | (generated + counts >= max_new))
    return torch.where(j < counts[:, None], emitted, -1), counts, finished
