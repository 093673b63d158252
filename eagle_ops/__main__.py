"""A tour of the ops on one tiny draft tree: ``python -m eagle_ops [--device cuda]``.

Runs one EAGLE step's worth of ops by hand, with random logits standing in for the models, and prints what each
op produced. On CPU the ops run their PyTorch references; on CUDA, their Triton lowerings.
"""

from __future__ import annotations

import argparse

import torch

import eagle_ops


def tour(device: str, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    k, depth, tree_size, vocab = 3, 2, 8, 16
    batch, heads, head_dim, capacity, prefix = 1, 2, 8, 32, 5

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device)

    print(f"A draft tree: top-k {k}, {depth} levels after the root expansion, {tree_size} nodes, vocabulary {vocab}")
    root = torch.tensor([7], device=device)
    level = eagle_ops.topk_expand(random(batch, 1, vocab) * 3, torch.zeros(batch, 1, device=device), None, k)
    print(f"topk_expand (root): children {level.level_tokens.tolist()} log-probs {fmt(level.level_scores)}")
    scores, tokens, parents = [level.level_scores], [level.level_tokens], [torch.zeros(batch, 1, dtype=torch.long)]
    offset = 0
    for _ in range(depth):
        parents.append((offset + level.next_index + 1).cpu())
        offset += level.level_scores.shape[1]
        level = eagle_ops.topk_expand(random(batch, k, vocab) * 3, level.next_scores, None, k)
        scores.append(level.level_scores)
        tokens.append(level.level_tokens)
        print(f"topk_expand (level): frontier {level.next_tokens.tolist()} scores {fmt(level.next_scores)}")
    tree_tokens, tree_parent = eagle_ops.build_tree(
        torch.cat(scores, 1), torch.cat(tokens, 1), torch.cat(parents, 1).to(device), root, tree_size
    )
    print(f"build_tree: tokens {tree_tokens.tolist()} parents {tree_parent.tolist()}")
    mask, node_depth = eagle_ops.tree_mask(tree_parent, depth + 1)
    print(
        f"tree_mask: depths {node_depth.tolist()}; node {tree_size - 1} sees {mask[0, -1].nonzero().flatten().tolist()}"
    )

    cache = random(1, 2, batch, heads, capacity, head_dim)
    cache_len = torch.tensor([prefix], device=device)
    q = random(batch, heads, tree_size, head_dim)
    out = eagle_ops.tree_attention(q, cache[0, 0], cache[0, 1], cache_len, mask, head_dim**-0.5)
    print(f"tree_attention: output {list(out.shape)}, each node attends to the {prefix} cached tokens + its path")

    target_logits = random(batch, tree_size, vocab)
    # Make the target agree with the draft along the first child of the root, so something is accepted.
    first_child = 1
    target_logits[0, 0, tree_tokens[0, first_child]] = 10.0
    accept_len, accept_path, emitted, bonus = eagle_ops.posterior_greedy(tree_tokens, tree_parent, target_logits, depth)
    print(
        f"posterior_greedy: accepted {accept_len.tolist()} drafts, path {accept_path.tolist()}, "
        f"emits {emitted.tolist()} (bonus {bonus.tolist()})"
    )
    uniforms = torch.rand(batch, depth + 3, generator=generator).to(device)
    ones = torch.ones(batch, device=device)
    sampled = eagle_ops.posterior_sample(
        tree_tokens,
        tree_parent,
        target_logits,
        depth,
        ones,
        torch.zeros(batch, dtype=torch.long, device=device),
        ones,
        uniforms,
    )
    print(f"posterior_sample (temperature 1): accepted {sampled[0].tolist()} drafts, emits {sampled[2].tolist()}")

    before = cache[0, 0, 0, 0, prefix + accept_path[0, : accept_len[0] + 1]].clone()
    eagle_ops.kv_copy_(cache, cache_len, accept_path)
    moved = torch.equal(cache[0, 0, 0, 0, prefix : prefix + accept_len[0] + 1], before)
    print(f"kv_copy_: the accepted path's K/V now sits right after the prefix: {moved}")


def fmt(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in t.flatten().tolist()) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tour(args.device, args.seed)


if __name__ == "__main__":
    main()
