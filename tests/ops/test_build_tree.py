"""build_tree: lowering against reference, reference against the contract, registration, compile, validation, and
no access outside the outputs whatever the scores and parents."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.ops.build_tree import BuildTreeSizes, cases
from eagle_ops.build_tree import build_tree
from eagle_ops.lowering.build_tree import build_tree_triton
from eagle_ops.reference.build_tree import build_tree_reference
from tests.support import (
    DEVICE,
    assert_compiles_for_sm90,
    assert_exact,
    assert_no_host_sync,
    lowering_path,
    poisoned_like,
    traced_aten_graph,
)

Tree = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]
NAN, INF = float("nan"), float("inf")
TOKENS_PER_SEQUENCE = 1000  # candidate j of sequence b has token 1000 * b + j, so a tree's tokens name its candidates


def tree_inputs(
    scores: list[list[float]], parents: list[list[int]], tree_size: int, device: torch.device | str = DEVICE
) -> Tree:
    """Arguments for these scores and parents; tokens name their candidates, roots are large int64 values."""
    scores_t = torch.tensor(scores, dtype=torch.float32, device=device)
    batch, candidates = scores_t.shape
    sequence = torch.arange(batch, device=device)
    tokens = TOKENS_PER_SEQUENCE * sequence[:, None] + torch.arange(candidates, device=device)
    root = 2**40 + sequence
    return scores_t, tokens, torch.tensor(parents, dtype=torch.int64, device=device), root, tree_size


# Non-positive log-probability steps, with ties (0) and -inf; and arbitrary scores, with NaN, ±inf and ±0.
STEPS = st.one_of(st.sampled_from([0.0, -1.0, -INF]), st.floats(-4, 0, width=32))
ANY_SCORE = st.one_of(st.sampled_from([0.0, -0.0, 1.0, INF, -INF, NAN]), st.floats(-4, 4, width=32))


@st.composite
def draft_levels(draw: st.DrawFn, width: int, depth: int) -> tuple[list[float], list[int]]:
    """One sequence's (scores, parents) as topk_expand makes them: every level expands K distinct candidates
    of the level before, and a child's score is its parent's plus a non-positive step."""
    scores = [draw(STEPS) for _ in range(width)]
    parents = [0]
    level_start, level_size = 0, width
    for _ in range(depth):
        expanded = draw(st.permutations(range(level_start, level_start + level_size)))[:width]
        parents += [1 + flat for flat in expanded]
        # Rounding to float32 is monotone, so a sum done in float64 keeps every child at or below its parent.
        scores += [scores[flat] + draw(STEPS) for flat in expanded for _ in range(width)]
        level_start, level_size = level_start + level_size, width * width
    return scores, parents


@st.composite
def trees(draw: st.DrawFn, *, consistent: bool | None = None) -> Tree:
    """Levels with ancestor-consistent scores, or (when not forced) arbitrary scores and parents half the time."""
    batch, width, depth = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(0, 3))
    candidates, rows = width + depth * width * width, 1 + depth * width
    if consistent is None:
        consistent = draw(st.booleans())
    if consistent:
        scores, parents = zip(*[draw(draft_levels(width, depth)) for _ in range(batch)], strict=True)
    else:
        scores = [[draw(ANY_SCORE) for _ in range(candidates)] for _ in range(batch)]
        any_parent = st.one_of(st.integers(-3, candidates + 3), st.sampled_from([-(2**63), 2**63 - 1]))
        parents = [[draw(any_parent) for _ in range(rows)] for _ in range(batch)]
    return tree_inputs(list(scores), list(parents), draw(st.integers(1, candidates + 1)))


def pinned(test):
    """The awkward inputs every property test also runs."""
    for tree in (
        tree_inputs([[0.5, -1.0]], [[0]], 1),  # T = 1: the root alone
        tree_inputs([[-1, -2, -1.5, -3, -2.5, -2.5]], [[0, 1, 2]], 7),  # T = Nc + 1: every candidate
        tree_inputs([[-1, -2, -3, -4, -5]], [[0, 1, 2, 3, 4]], 4),  # K = 1: a chain
        tree_inputs([[-2, -1, -1, -3]], [[0]], 3),  # D = 0: the root level alone (Nc = K, Np = 1)
        tree_inputs([[-1] * 6], [[0, 2, 1]], 4),  # ties everywhere: the smaller flat indices win
        tree_inputs([[0, -1, 0, 0, -1, -1]], [[0, 1, 2]], 4),  # zero steps tie children with parents
        tree_inputs([[NAN, -INF, -INF, NAN, -1, 0.5]], [[0, 1, 2]], 5),  # NaN ranks as -inf
        tree_inputs([[-5, -6, -1, -2, -1, -0.5]], [[0, 1, 2]], 4),  # chosen children of unchosen parents
        tree_inputs([[-1, -2, -1, -1, -3, -4]], [[0, 7, 6]], 6),  # parents out of range and after the child
        tree_inputs([[0, 0, 0, 0, 0, 0]], [[5, -(2**63), 2**63 - 1]], 7),  # huge entries, a parent in row 0
        tree_inputs([[-1, -2, -1, -3, -2, -2], [-3, -1, -4, -4, -1, -2]], [[0, 1, 2], [0, 2, 1]], 4),  # B > 1
        tree_inputs([[-0.01 * j for j in range(80)]], [[0, *range(1, 16)]], 40),  # Nc > 64: several rank blocks
    ):
        test = example(tree=tree)(test)
    return test


def by_the_contract(scores, tokens, parents, root, tree_size) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract, sequence by sequence in plain Python."""
    width = scores.shape[1] // parents.shape[1]
    tree_tokens, tree_parent = [], []
    for b in range(scores.shape[0]):
        key = [-INF if math.isnan(s) else s for s in scores[b].tolist()]
        best = sorted(range(len(key)), key=lambda j: (-key[j], j))[: tree_size - 1]
        chosen = sorted(best)
        node = {flat: i for i, flat in enumerate(chosen, start=1)}
        tree_tokens.append([root[b].item()] + [tokens[b, flat].item() for flat in chosen])
        tree_parent.append([-1])
        for flat in chosen:
            parent_flat = parents[b, flat // width].item() - 1
            tree_parent[-1].append(node.get(parent_flat, 0) if parent_flat < flat else 0)
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.int64).view(scores.shape[0], tree_size)
    return as_tensor(tree_tokens), as_tensor(tree_parent)


@given(tree=trees())
@pinned
def test_reference_follows_the_contract(tree):
    tree_tokens, tree_parent = build_tree_reference(*tree)
    want_tokens, want_parent = by_the_contract(*tree)
    assert_exact("tree_tokens", tree_tokens, want_tokens)
    assert_exact("tree_parent", tree_parent, want_parent)
    nodes = torch.arange(1, tree[4], device=tree_parent.device)
    assert (tree_parent[:, 1:] >= 0).all() and (tree_parent[:, 1:] < nodes).all(), "a parent after its node"


@given(tree=trees(consistent=True))
def test_consistent_scores_keep_every_parent(tree):
    """Scores that never grow from parent to child: every node hangs off its own parent candidate, ties included."""
    scores, parents = tree[0], tree[2]
    tree_tokens, tree_parent = build_tree_reference(*tree)
    width = scores.shape[1] // parents.shape[1]
    flat = tree_tokens[:, 1:] % TOKENS_PER_SEQUENCE
    parent_flat = parents.gather(1, flat // width) - 1
    parent_token = tree_tokens.gather(1, tree_parent[:, 1:]) % TOKENS_PER_SEQUENCE
    assert_exact("parent candidate", torch.where(parent_flat >= 0, parent_token, -1), parent_flat)
    assert_exact("root children", tree_parent[:, 1:] == 0, parent_flat < 0)


@given(tree=trees())
@pinned
def test_lowering_matches_reference(tree):
    want = build_tree_reference(*tree)
    tree_tokens, tree_parent = build_tree_triton(*tree, out=tuple(poisoned_like(t) for t in want))
    assert_exact("tree_tokens", tree_tokens, want[0])
    assert_exact("tree_parent", tree_parent, want[1])


TWO_SEQUENCES = ([[-1, -2, -1.5, NAN, -0.5, -3], [0, 0, -1, -1, -2, -INF]], [[0, 1, 9], [0, 2, 1]], 5)


def test_registered_op_runs_reference_and_lowering():
    tree = tree_inputs(*TWO_SEQUENCES, device="cpu")
    want_tokens, want_parent = build_tree_reference(*tree)
    tree_tokens, tree_parent = build_tree(*tree)
    assert_exact("tree_tokens", tree_tokens, want_tokens)
    assert_exact("tree_parent", tree_parent, want_parent)
    with lowering_path():
        tree_tokens, tree_parent = build_tree(*tree_inputs(*TWO_SEQUENCES))
    assert_exact("lowering tree_tokens", tree_tokens, want_tokens)
    assert_exact("lowering tree_parent", tree_parent, want_parent)


def test_opcheck_reference_path():
    torch.library.opcheck(torch.ops.eagle_ops.build_tree.default, tree_inputs(*TWO_SEQUENCES, device="cpu"))


def test_opcheck_lowering_path():
    with lowering_path():
        torch.library.opcheck(torch.ops.eagle_ops.build_tree.default, tree_inputs(*TWO_SEQUENCES))


def test_fake_outputs_match_real_shapes_dtypes_strides():
    tree = tree_inputs(*TWO_SEQUENCES)
    real = build_tree(*tree)
    with FakeTensorMode() as mode:
        fake = build_tree(*(mode.from_tensor(t) for t in tree[:4]), tree[4])
    for name, f, r in zip(("tree_tokens", "tree_parent"), fake, real, strict=True):
        assert (f.shape, f.dtype, f.stride()) == (r.shape, r.dtype, r.stride()), name


def test_compiles_whole_without_host_sync():
    scores, tokens, parents, root, tree_size = tree_inputs(*TWO_SEQUENCES)
    step = lambda scores, tokens, parents, root: build_tree(scores, tokens, parents, root, tree_size)
    assert_no_host_sync(traced_aten_graph(step, scores, tokens, parents, root))
    cpu = tree_inputs(*TWO_SEQUENCES, device="cpu")
    assert_no_host_sync(traced_aten_graph(build_tree_reference, *cpu))
    compiled = torch.compile(step, fullgraph=True)(scores, tokens, parents, root)
    eager = step(scores, tokens, parents, root)
    assert_exact("tree_tokens", compiled[0], eager[0])
    assert_exact("tree_parent", compiled[1], eager[1])


GOOD = tree_inputs([[-1, -2, -1.5, -3, -2.5, -2.5]], [[0, 1, 2]], 4)  # K = 2, D = 1: Nc = 6, Np = 3


def replaced(**changes) -> tuple:
    names = ("scores", "tokens", "parents", "root", "tree_size")
    return tuple(changes.get(name, value) for name, value in zip(names, GOOD, strict=True))


@pytest.mark.parametrize(
    ("args", "error", "named"),
    [
        (replaced(scores=GOOD[0][0]), ValueError, "scores"),  # rank
        (replaced(root=GOOD[3][:, None]), ValueError, "root"),
        (replaced(tokens=GOOD[1][:, :5]), ValueError, "tokens"),  # shape relation
        (replaced(root=GOOD[3].expand(2)), ValueError, "root"),
        (replaced(parents=GOOD[2].new_zeros(1, 4)), ValueError, "parents"),  # Nc = 6 is not K * 4
        (replaced(parents=GOOD[2][:, :2]), ValueError, "parents"),  # Nc = 3 * 2, but then Np = 2 is not 1 + D * 3
        (replaced(parents=GOOD[2].new_zeros(1, 7)), ValueError, "parents"),  # Np > Nc
        (replaced(parents=GOOD[2].new_zeros(1, 0)), ValueError, "parents"),  # no root row
        (replaced(scores=GOOD[0].double()), TypeError, "scores"),  # dtype
        (replaced(scores=GOOD[0].half()), TypeError, "scores"),
        (replaced(tokens=GOOD[1].int()), TypeError, "tokens"),
        (replaced(parents=GOOD[2].float()), TypeError, "parents"),
        (replaced(root=GOOD[3].to("meta")), ValueError, "root"),  # device
        (replaced(tokens=GOOD[1].repeat(1, 2)[:, ::2]), ValueError, "tokens"),  # layout
        (replaced(tree_size=0), ValueError, "tree_size"),
        (replaced(tree_size=8), ValueError, "tree_size"),  # more than Nc + 1
    ],
)
def test_rejects_bad_arguments(args, error, named):
    with pytest.raises(error, match=named):
        build_tree(*args)


@pytest.mark.parametrize(
    ("out", "named"),
    [
        ((GOOD[1].new_empty(1, 5), GOOD[1].new_empty(1, 4)), "tree_tokens"),  # shape relation
        ((GOOD[1].new_empty(1, 4), GOOD[1].new_empty(2, 4)), "tree_parent"),
        ((GOOD[1].new_empty(1, 4, device="meta"), GOOD[1].new_empty(1, 4)), "tree_tokens"),  # device
        ((GOOD[1].new_empty(1, 4), GOOD[1].new_empty(1, 4, dtype=torch.int32)), "tree_parent"),  # dtype
    ],
)
def test_lowering_rejects_bad_out(out, named):
    with pytest.raises((ValueError, TypeError), match=named):
        build_tree_triton(*GOOD, out=out)


def guarded(values: torch.Tensor, guard_value: float | int, guard: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(buffer, view)``: a copy of ``values`` as a view inside a buffer padded with ``guard_value`` both sides."""
    buffer = torch.full((values.numel() + 2 * guard,), guard_value, dtype=values.dtype, device=values.device)
    view = buffer[guard:-guard].view(values.shape)
    view.copy_(values)
    return buffer, view


def test_touches_only_its_inputs_and_outputs_whatever_the_values():
    """NaN, ±inf and malformed parents: inputs sit among values that would win if read (a top score, a parent
    entry pointing at a chosen candidate), outputs among values that must stay untouched."""
    scores = [[NAN, -INF, INF, 0, -1, NAN], [-INF] * 6, [NAN] * 6, [1, 2, 3, 4, 5, 6]]
    parents = [[7, -1, 6], [-(2**63), 2**63 - 1, 3], [0, 0, 0], [6, 5, 4]]
    tree = tree_inputs(scores, parents, 5)
    want = build_tree_reference(*tree)
    _, guarded_scores = guarded(tree[0], INF)
    _, guarded_parents = guarded(tree[2], 1)
    tokens_buffer, tree_tokens = guarded(poisoned_like(want[0]), 12345)
    parent_buffer, tree_parent = guarded(poisoned_like(want[1]), 12345)
    build_tree_triton(guarded_scores, tree[1], guarded_parents, tree[3], 5, out=(tree_tokens, tree_parent))
    assert_exact("tree_tokens", tree_tokens, want[0])
    assert_exact("tree_parent", tree_parent, want[1])
    for name, buffer in (("tree_tokens", tokens_buffer), ("tree_parent", parent_buffer)):
        assert (buffer[:64] == 12345).all() and (buffer[-64:] == 12345).all(), f"wrote outside {name}"


def test_kernels_compile_for_sm90():
    # Nc = 1, 6, 80, 1032: the smallest blocks, small blocks, several rank blocks, several place blocks.
    shapes = [(1, 0), (2, 1), (5, 3), (8, 16)]
    trees = []
    for width, depth in shapes:
        candidates, rows = width + depth * width * width, 1 + depth * width
        trees.append(tree_inputs([[-1.0] * candidates], [[0] * rows], min(candidates + 1, 60)))
    assert_compiles_for_sm90(lambda: [build_tree_triton(*tree) for tree in trees])


def test_benchmark_cases_run_on_tiny_shapes():
    for case in cases(DEVICE, sizes=BuildTreeSizes(batches=(1, 2), width=3, depth=2, tree_size=8, vocab=50)):
        case.check()
        for run in case.candidates.values():
            run()
        assert case.bytes_min > 0
