"""Zero-size dimensions, every op: an empty batch gives empty outputs on both paths, any other empty dimension is
refused before anything runs, with the dimension named."""

import contextlib
from collections.abc import Callable

import pytest
import torch

import eagle_ops
from tests.support import DEVICE, lowering_path


def index(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.int64, device=DEVICE)


def floats(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, device=DEVICE)


def topk_expand(B=1, F=2, Vd=8):
    return eagle_ops.topk_expand(floats(B, F, Vd), floats(B, F), None, 2)


def build_tree(B=1):
    return eagle_ops.build_tree(floats(B, 6), index(B, 6), index(B, 3), index(B), 4)


def tree_mask(B=1, T=3):
    return eagle_ops.tree_mask(index(B, T) - 1, 2)


def tree_attention(B=1, Hq=2, Hkv=1, Tq=3, S=8, Dh=4):
    q, k = floats(B, Hq, Tq, Dh), floats(B, Hkv, S, Dh)
    mask = torch.ones(B, Tq, Tq, dtype=torch.bool, device=DEVICE)
    return eagle_ops.tree_attention(q, k, k.clone(), index(B), mask, 0.5)


def posterior_greedy(B=1, T=3, V=5):
    return eagle_ops.posterior_greedy(index(B, T), index(B, T) - 1, floats(B, T, V), 2)


def posterior_sample(B=1, T=3, V=5):
    warpers = (floats(B) + 1, index(B), floats(B) + 0.9, floats(B, 5))
    return eagle_ops.posterior_sample(index(B, T), index(B, T) - 1, floats(B, T, V), 2, *warpers)


def kv_copy_(L=1, B=1, Hkv=1, S=4, Dh=2, P=2):
    return eagle_ops.kv_copy_(floats(L, 2, B, Hkv, S, Dh), index(B), index(B, P) - 1)


OPS: dict[str, Callable] = {
    "topk_expand": topk_expand,
    "build_tree": build_tree,
    "tree_mask": tree_mask,
    "tree_attention": tree_attention,
    "posterior_greedy": posterior_greedy,
    "posterior_sample": posterior_sample,
    "kv_copy_": kv_copy_,
}
# (op, dimension, the argument that first has it)
EMPTY_DIMS = [
    ("topk_expand", "Vd", "logits"),
    ("tree_mask", "T", "tree_parent"),
    ("tree_attention", "Hq", "q"),
    ("tree_attention", "Tq", "q"),
    ("tree_attention", "S", "k_cache"),
    ("tree_attention", "Dh", "q"),
    ("posterior_greedy", "T", "tree_tokens"),
    ("posterior_greedy", "V", "target_logits"),
    ("posterior_sample", "T", "tree_tokens"),
    ("posterior_sample", "V", "target_logits"),
    ("kv_copy_", "L", "cache"),
    ("kv_copy_", "Hkv", "cache"),
    ("kv_copy_", "S", "cache"),
    ("kv_copy_", "Dh", "cache"),
    ("kv_copy_", "P", "accept_path"),
]
PATHS = {"reference": contextlib.nullcontext, "lowering": lowering_path}


def outputs(result: object) -> list[torch.Tensor]:
    return list(result) if isinstance(result, tuple) else [] if result is None else [result]


@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
@pytest.mark.parametrize("op", OPS.values(), ids=OPS.keys())
def test_an_empty_batch_gives_empty_outputs(op, path):
    full = outputs(op(B=1))
    with path():
        empty = outputs(op(B=0))
    assert [t.shape[1:] for t in empty] == [t.shape[1:] for t in full]
    assert [(t.dtype, t.device, t.numel()) for t in empty] == [(t.dtype, t.device, 0) for t in full]


@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
@pytest.mark.parametrize(("op", "dim", "argument"), EMPTY_DIMS, ids=[f"{op}-{dim}" for op, dim, _ in EMPTY_DIMS])
def test_any_other_empty_dimension_is_refused(op, dim, argument, path):
    message = f"every dimension but the batch must be at least 1, got {dim} = 0 \\(from `{argument}`\\)"
    with path(), pytest.raises(ValueError, match=message):
        OPS[op](**{dim: 0})
