"""tree_mask: lowering against reference, reference against the contract, registration, compile, validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.ops.tree_mask import TreeMaskSizes, cases
from eagle_ops.lowering.tree_mask import tree_mask_triton
from eagle_ops.reference.tree_mask import tree_mask_reference
from eagle_ops.tree_mask import tree_mask
from tests.support import (
    DEVICE,
    assert_compiles_for_sm90,
    assert_exact,
    assert_no_host_sync,
    lowering_path,
    poisoned_like,
    traced_aten_graph,
)


def parents(*rows: list[int], device: torch.device = DEVICE) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64, device=device)


CHAIN = parents(list(range(-1, 7)))
STAR = parents([-1, 0, 0, 0, 0, 0])
# A root with a parent, a parent after its node, -1 at a non-root, below -1, two valid links, a self loop, huge values.
MALFORMED = parents([3, 5, -1, -2, 2, 4, 6, -(2**62), 2**62])


@st.composite
def trees(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    """Well-formed trees (parent before child) or, half the time, arbitrary parents including malformed ones."""
    batch, size = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    malformed = draw(st.booleans())

    def parent(i: int) -> st.SearchStrategy[int]:
        if malformed:
            return st.integers(-3, size + 2)
        return st.integers(0, i - 1) if i else st.just(-1)

    rows = [[draw(parent(i)) for i in range(size)] for _ in range(batch)]
    return parents(*rows), draw(st.integers(1, size + 1))


def pinned(test):
    """The awkward trees every property test also runs."""
    for tree in (
        (parents([-1]), 1),  # T = 1: the root alone
        (CHAIN, 3),  # a chain deeper than max_depth: walks stop after max_depth steps
        (CHAIN, 7),
        (STAR, 1),
        (MALFORMED, 4),
        (parents([-1, 0, 1, 2, 3], [-1, 0, 0, 0, 0], [-1, 0, 0, 1, 2]), 4),  # B > 1, different trees
        (parents([-1, *range(129)]), 3),  # more than one row block and one column block
    ):
        test = example(tree=tree)(test)
    return test


def walked(tree_parent: torch.Tensor, max_depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract, node by node: walk up while the parent is before the node, at most max_depth steps."""
    batch, size = tree_parent.shape
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    depth = torch.zeros(batch, size, dtype=torch.int64)
    for b, row in enumerate(tree_parent.tolist()):
        for i in range(size):
            node = i
            mask[b, i, i] = True
            while depth[b, i] < max_depth and 0 <= row[node] < node:
                node = row[node]
                mask[b, i, node] = True
                depth[b, i] += 1
    return mask, depth


@given(tree=trees())
@pinned
def test_reference_follows_the_contract(tree):
    tree_parent, max_depth = tree
    mask, depth = tree_mask_reference(tree_parent, max_depth)
    want_mask, want_depth = walked(tree_parent, max_depth)
    assert_exact("mask", mask, want_mask)
    assert_exact("depth", depth, want_depth)


@given(tree=trees())
@pinned
def test_lowering_matches_reference(tree):
    tree_parent, max_depth = tree
    want = tree_mask_reference(tree_parent, max_depth)
    mask, depth = tree_mask_triton(tree_parent, max_depth, out=tuple(poisoned_like(t) for t in want))
    assert_exact("mask", mask, want[0])
    assert_exact("depth", depth, want[1])


def test_registered_op_runs_reference_and_lowering():
    tree_parent = parents([-1, 0, 1, 1, 3, 9], [-1, 0, 0, 2, -1, 4], device="cpu")
    want_mask, want_depth = tree_mask_reference(tree_parent, 3)
    mask, depth = tree_mask(tree_parent, 3)
    assert_exact("mask", mask, want_mask)
    assert_exact("depth", depth, want_depth)
    with lowering_path():
        mask, depth = tree_mask(tree_parent.to(DEVICE), 3)
    assert_exact("lowering mask", mask, want_mask)
    assert_exact("lowering depth", depth, want_depth)


def test_opcheck_reference_path():
    torch.library.opcheck(torch.ops.eagle_ops.tree_mask.default, (parents([-1, 0, 1, 0], device="cpu"), 2))


def test_opcheck_lowering_path():
    with lowering_path():
        torch.library.opcheck(torch.ops.eagle_ops.tree_mask.default, (parents([-1, 0, 1, 0]), 2))


def test_fake_outputs_match_real_shapes_dtypes_strides():
    tree_parent = parents([-1, 0, 1], [-1, 0, 0])
    real = tree_mask(tree_parent, 2)
    with FakeTensorMode() as mode:
        fake = tree_mask(mode.from_tensor(tree_parent), 2)
    for name, f, r in zip(("mask", "depth"), fake, real, strict=True):
        assert (f.shape, f.dtype, f.stride()) == (r.shape, r.dtype, r.stride()), name


def test_compiles_whole_without_host_sync():
    tree_parent = parents([-1, 0, 1, 1, 2], [-1, 0, 0, 1, 3])
    step = lambda tree_parent: tree_mask(tree_parent, 3)
    assert_no_host_sync(traced_aten_graph(step, tree_parent))
    assert_no_host_sync(traced_aten_graph(tree_mask_reference, tree_parent.cpu(), 3))
    compiled, eager = torch.compile(step, fullgraph=True)(tree_parent), step(tree_parent)
    assert_exact("mask", compiled[0], eager[0])
    assert_exact("depth", compiled[1], eager[1])


GOOD = parents([-1, 0, 0, 1])


@pytest.mark.parametrize(
    ("args", "error", "named"),
    [
        ((GOOD[0], 2), ValueError, "tree_parent"),  # rank
        ((GOOD.int(), 2), TypeError, "tree_parent"),  # dtype
        ((GOOD.float(), 2), TypeError, "tree_parent"),
        ((parents([-1, -1], [0, 0]).t(), 2), ValueError, "tree_parent"),  # layout
        ((GOOD, 0), ValueError, "max_depth"),
        ((GOOD, -3), ValueError, "max_depth"),
    ],
)
def test_rejects_bad_arguments(args, error, named):
    with pytest.raises(error, match=named):
        tree_mask(*args)


@pytest.mark.parametrize(
    ("out", "named"),
    [
        ((torch.empty(1, 4, 5, dtype=torch.bool, device=DEVICE), torch.empty_like(GOOD)), "mask"),  # shape relation
        ((torch.empty(1, 4, 4, dtype=torch.bool, device="meta"), torch.empty_like(GOOD)), "mask"),  # device
        ((torch.empty(1, 4, 4, dtype=torch.bool, device=DEVICE), torch.empty_like(GOOD).int()), "depth"),  # dtype
    ],
)
def test_lowering_rejects_bad_out(out, named):
    with pytest.raises((ValueError, TypeError), match=named):
        tree_mask_triton(GOOD, 2, out=out)


def test_writes_only_its_outputs_whatever_the_parents():
    """Huge and negative parents: both outputs live inside guard zones that must stay untouched."""
    tree_parent = torch.cat([MALFORMED, MALFORMED.flip(1), parents(list(range(-1, 8)))])
    batch, size = tree_parent.shape
    guard = 64
    mask_buffer = torch.ones(batch * size * size + 2 * guard, dtype=torch.bool, device=DEVICE)
    depth_buffer = torch.full((batch * size + 2 * guard,), 12345, dtype=torch.int64, device=DEVICE)
    mask = mask_buffer[guard:-guard].view(batch, size, size)
    depth = depth_buffer[guard:-guard].view(batch, size)
    tree_mask_triton(tree_parent, 2**40, out=(mask, depth))
    want = tree_mask_reference(tree_parent, 2**40)
    assert_exact("mask", mask, want[0])
    assert_exact("depth", depth, want[1])
    assert mask_buffer[:guard].all() and mask_buffer[-guard:].all(), "wrote before or after mask"
    assert (depth_buffer[:guard] == 12345).all() and (depth_buffer[-guard:] == 12345).all(), "wrote outside depth"


def test_kernels_compile_for_sm90():
    # T = 1 (steps = 0), one tile, several row blocks, several column blocks.
    trees = [parents([-1]), STAR, parents([-1, *range(59)]), parents([-1, *range(129)])]
    assert_compiles_for_sm90(lambda: [tree_mask_triton(tree_parent, 8) for tree_parent in trees])


def test_benchmark_cases_run_on_tiny_shapes():
    for case in cases(DEVICE, sizes=TreeMaskSizes(batches=(1, 2), tree_size=7, max_depth=3)):
        case.check()
        for run in case.candidates.values():
            run()
        assert case.bytes_min > 0
