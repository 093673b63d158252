"""posterior_greedy: lowering against reference, reference against the contract, registration, compile, validation,
and no access outside the outputs whatever the trees and logits."""

from __future__ import annotations

import contextlib
import math
from unittest import mock

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.ops.posterior_greedy import PosteriorSizes, cases
from eagle_ops._checks import FLOAT_DTYPES
from eagle_ops.lowering import posterior_greedy as lowering
from eagle_ops.lowering.posterior_greedy import posterior_greedy_triton
from eagle_ops.posterior_greedy import posterior_greedy
from eagle_ops.reference.posterior_greedy import posterior_greedy_reference, target_choice
from tests.support import (
    DEVICE,
    assert_compiles_for_sm90,
    assert_exact,
    assert_no_host_sync,
    lowering_path,
    poisoned_like,
    traced_aten_graph,
)

Step = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]
OUTPUT_NAMES = ("accept_len", "accept_path", "emitted", "bonus")
NAN, INF = float("nan"), float("inf")


def index(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64, device=DEVICE)


def choosing(choices: list[list[int]], vocab: int) -> torch.Tensor:
    """``[B, T, vocab]`` logits whose argmax at node i of sequence b is ``choices[b][i]``."""
    logits = torch.zeros(len(choices), len(choices[0]), vocab, device=DEVICE)
    return logits.scatter_(2, index(choices)[:, :, None], 1.0)


def random_parents(batch: int, size: int, malformed: bool, generator: torch.Generator) -> torch.Tensor:
    """``[batch, size]`` CPU parents: each node below a uniformly drawn earlier node, or arbitrary values."""
    if malformed:
        return torch.randint(-3, size + 3, (batch, size), generator=generator)
    upper = torch.arange(size).clamp(min=1).expand(batch, size)
    parent = (torch.rand(batch, size, generator=generator) * upper).long()
    parent[:, 0] = -1
    return parent


def random_step(
    batch: int, size: int, vocab: int, max_depth: int, dtype: torch.dtype, malformed: bool, seed: int
) -> Step:
    """Small integer logits (many ties) with about one value in ten NaN or ±inf; about 70% of the drafts equal the
    target's choice at their parent so that long paths are accepted; parents well-formed or arbitrary."""
    generator = torch.Generator().manual_seed(seed)
    parent = random_parents(batch, size, malformed, generator)
    logits = torch.randint(-2, 3, (batch, size, vocab), generator=generator).float()
    special = torch.tensor([NAN, INF, -INF])[torch.randint(3, logits.shape, generator=generator)]
    logits = torch.where(torch.rand(logits.shape, generator=generator) < 0.1, special, logits).to(dtype)
    agreeing = target_choice(logits).gather(1, parent.clamp(0, size - 1))
    tokens = torch.randint(-2, vocab + 2, (batch, size), generator=generator)
    tokens = torch.where(torch.rand(batch, size, generator=generator) < 0.7, agreeing, tokens)
    return tokens.to(DEVICE), parent.to(DEVICE), logits.to(DEVICE), max_depth


@st.composite
def steps(draw: st.DrawFn) -> Step:
    return random_step(
        batch=draw(st.integers(1, 3)),
        size=draw(st.integers(1, 10)),
        vocab=draw(st.integers(1, 40)),
        max_depth=draw(st.integers(0, 6)),
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        malformed=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


CHAIN = (index([[9, 1, 2, 3, 4, 5]]), index([[-1, 0, 1, 2, 3, 4]]), choosing([[1, 2, 3, 4, 5, 6]], 8))
# Root choice 3: nodes 2 and 4 both match (node 4 is a duplicate draft); only node 4's subtree matches further.
DUPLICATES = (
    index([[0, 1, 3, 2, 3, 5]]),
    index([[-1, 0, 0, 0, 0, 4]]),
    choosing([[3, 0, 0, 0, 5, 0]], 6),
)
TIES_AND_SPECIALS = torch.tensor(
    [[[1.0, 3.0, 3.0, 0.0], [NAN, NAN, NAN, NAN], [-INF, -INF, -INF, -INF], [NAN, -INF, 2.0, NAN]]], device=DEVICE
)
# Node 2's parent is after it, node 3's is -1, node 4 hangs below node 2, node 5's parent is huge, 6 is a self loop.
MALFORMED = (index([[0, 0, 0, 0, 0, 0, 0]]), index([[5, 0, 4, 1, 2, 2**62, 6]]), choosing([[0] * 7], 3))


def pinned(test):
    """The awkward steps every property test also runs."""
    for step in (
        (index([[7]]), index([[-1]]), torch.randn(1, 1, 5, device=DEVICE), 3),  # T = 1: the root alone
        (*CHAIN, 1),  # a chain longer than max_depth + 1: the path stops at depth 2
        (*CHAIN, 7),  # max_depth beyond the tree: the whole chain, then the choice at its end
        (*CHAIN, 0),  # max_depth 0: one draft at most
        (index([[0, 4, 1, 2, 3, 1]]), index([[-1, 0, 0, 0, 0, 0]]), choosing([[1, 0, 0, 0, 0, 0]], 5), 2),  # star
        (*DUPLICATES, 3),
        # Ties at the root (choice 1), then a NaN row and a -inf row (choice 0), then NaN among numbers (choice 2).
        (index([[0, 1, 0, 0]]), index([[-1, 0, 1, 2]]), TIES_AND_SPECIALS, 2),
        (*MALFORMED, 5),
        (  # B > 1: different trees, accept lengths 2, 0 and 1
            index([[0, 1, 2, 7], [0, 5, 6, 7], [0, 3, 2, 2]]),
            index([[-1, 0, 1, 0], [-1, 0, 0, 1], [-1, 0, 0, 2]]),
            choosing([[1, 2, 0, 0], [4, 4, 4, 4], [2, 2, 0, 2]], 8),
            3,
        ),
    ):
        test = example(step=step)(test)
    return test


def contract(tree_tokens: torch.Tensor, tree_parent: torch.Tensor, target_logits: torch.Tensor, max_depth: int):
    """The contract, sequence by sequence in plain Python."""
    path_len = max_depth + 2
    accept_len, accept_path, emitted, bonus = [], [], [], []
    for tokens, parents, rows in zip(
        tree_tokens.tolist(), tree_parent.tolist(), target_logits.float().tolist(), strict=True
    ):
        ranked = [[-math.inf if math.isnan(x) else x for x in row] for row in rows]
        choice = [row.index(max(row)) for row in ranked]
        best = [0]
        for node in range(1, len(tokens)):
            path = [node]
            while path[-1] != 0 and len(path) <= max_depth + 1 and 0 <= parents[path[-1]] < path[-1]:
                if tokens[path[-1]] != choice[parents[path[-1]]]:
                    break
                path.append(parents[path[-1]])
            if path[-1] == 0 and len(path) > len(best):
                best = path
        path = best[::-1]
        accept_len.append(len(path) - 1)
        accept_path.append(path + [-1] * (path_len - len(path)))
        drafted = [tokens[node] for node in path[1:]] + [choice[path[-1]]]
        emitted.append(drafted + [-1] * (path_len - len(drafted)))
        bonus.append(choice[path[-1]])
    return tuple(torch.tensor(x, dtype=torch.int64) for x in (accept_len, accept_path, emitted, bonus))


def assert_outputs(label: str, actual: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...]) -> None:
    for name, a, e in zip(OUTPUT_NAMES, actual, expected, strict=True):
        assert_exact(f"{label} {name}", a.cpu(), e.cpu())


@given(step=steps())
@pinned
def test_reference_follows_the_contract(step):
    assert_outputs("reference", posterior_greedy_reference(*step), contract(*step))


# Blocks of 4 tokens: rows take several loop iterations in one program each (one program per row wanted) or in
# several chunks of a few blocks (64 programs wanted), which the default sizes only do with vocabularies of thousands.
SMALL_BLOCKS = {
    "default blocks": {},
    "long rows": {"_MAX_BLOCK_V": 4, "_TARGET_PROGRAMS": 1},
    "split rows": {"_MAX_BLOCK_V": 4, "_TARGET_PROGRAMS": 64},
}


@pytest.mark.parametrize("blocks", SMALL_BLOCKS.values(), ids=SMALL_BLOCKS.keys())
@given(step=steps())
@pinned
def test_lowering_matches_reference(blocks, step):
    want = posterior_greedy_reference(*step)
    with contextlib.ExitStack() as stack:
        for name, value in blocks.items():
            stack.enter_context(mock.patch.object(lowering, name, value))
        got = posterior_greedy_triton(*step, out=tuple(poisoned_like(t) for t in want))
    assert_outputs("lowering", got, want)


def small_step(device: torch.device | str = DEVICE) -> Step:
    tokens, parent, logits, max_depth = random_step(2, 6, 7, 3, torch.float32, malformed=False, seed=1)
    return tokens.to(device), parent.to(device), logits.to(device), max_depth


def test_registered_op_runs_reference_and_lowering():
    step = small_step("cpu")
    want = posterior_greedy_reference(*step)
    assert_outputs("reference path", posterior_greedy(*step), want)
    with lowering_path():
        assert_outputs("lowering path", posterior_greedy(*small_step()), want)


def test_opcheck_reference_path():
    torch.library.opcheck(torch.ops.eagle_ops.posterior_greedy.default, small_step("cpu"))


def test_opcheck_lowering_path():
    with lowering_path():
        torch.library.opcheck(torch.ops.eagle_ops.posterior_greedy.default, small_step())


def test_fake_outputs_match_real_shapes_dtypes_strides():
    step = small_step()
    real = posterior_greedy(*step)
    with FakeTensorMode() as mode:
        fake = posterior_greedy(*(mode.from_tensor(t) for t in step[:3]), step[3])
    for name, f, r in zip(OUTPUT_NAMES, fake, real, strict=True):
        assert (f.shape, f.dtype, f.stride()) == (r.shape, r.dtype, r.stride()), name


def test_compiles_whole_without_host_sync():
    tokens, parent, logits, max_depth = small_step()
    step = lambda tokens, parent, logits: posterior_greedy(tokens, parent, logits, max_depth)
    assert_no_host_sync(traced_aten_graph(step, tokens, parent, logits))
    reference = lambda tokens, parent, logits: posterior_greedy_reference(tokens, parent, logits, max_depth)
    assert_no_host_sync(traced_aten_graph(reference, tokens.cpu(), parent.cpu(), logits.cpu()))
    compiled, eager = torch.compile(step, fullgraph=True)(tokens, parent, logits), step(tokens, parent, logits)
    assert_outputs("compiled", compiled, eager)


TOKENS, PARENT, LOGITS = index([[0, 1, 2, 3]]), index([[-1, 0, 0, 1]]), torch.zeros(1, 4, 6, device=DEVICE)


@pytest.mark.parametrize(
    ("args", "error", "named"),
    [
        ((TOKENS[0], PARENT, LOGITS, 2), ValueError, "tree_tokens"),  # rank
        ((TOKENS, PARENT[:, :3], LOGITS, 2), ValueError, "tree_parent"),  # shape relation
        ((TOKENS, PARENT, LOGITS[:, :3], 2), ValueError, "target_logits"),
        ((TOKENS, PARENT, LOGITS[0], 2), ValueError, "target_logits"),
        ((TOKENS.int(), PARENT, LOGITS, 2), TypeError, "tree_tokens"),  # dtype
        ((TOKENS, PARENT.float(), LOGITS, 2), TypeError, "tree_parent"),
        ((TOKENS, PARENT, LOGITS.double(), 2), TypeError, "target_logits"),
        ((TOKENS, PARENT, LOGITS.to("meta"), 2), ValueError, "target_logits"),  # device
        ((TOKENS, PARENT, torch.zeros(1, 4, 12, device=DEVICE)[:, :, ::2], 2), ValueError, "target_logits"),  # layout
        ((TOKENS, PARENT, LOGITS, -1), ValueError, "max_depth"),
    ],
)
def test_rejects_bad_arguments(args, error, named):
    with pytest.raises(error, match=named):
        posterior_greedy(*args)


@pytest.mark.parametrize(
    ("position", "replacement", "named"),
    [
        (0, torch.empty(2, dtype=torch.int64, device=DEVICE), "accept_len"),  # shape relation
        (1, torch.empty(1, 5, dtype=torch.int64, device=DEVICE), "accept_path"),  # P = max_depth + 2
        (2, torch.empty(1, 4, dtype=torch.int64, device="meta"), "emitted"),  # device
        (3, torch.empty(1, dtype=torch.int32, device=DEVICE), "bonus"),  # dtype
    ],
)
def test_lowering_rejects_bad_out(position, replacement, named):
    out = list(posterior_greedy_reference(TOKENS, PARENT, LOGITS, 2))
    out[position] = replacement
    with pytest.raises((ValueError, TypeError), match=named):
        posterior_greedy_triton(TOKENS, PARENT, LOGITS, 2, out=tuple(out))


GUARD = 64


def guarded(values: torch.Tensor, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(buffer, view)``: a copy of ``values`` inside a buffer with GUARD elements of ``fill`` on each side."""
    buffer = torch.full((values.numel() + 2 * GUARD,), fill, dtype=values.dtype, device=values.device)
    view = buffer[GUARD:-GUARD].view(values.shape)
    view.copy_(values)
    return buffer, view


def test_touches_only_its_arguments_whatever_the_inputs():
    """Malformed parents, out-of-vocabulary tokens, NaN and ±inf logits. The inputs sit between +inf logits and
    zero tokens and parents, which would change the results if read; the outputs between sentinels that must stay."""
    tokens, parent, logits, max_depth = random_step(3, 9, 5, 100, torch.float32, malformed=True, seed=7)
    tokens[0] = index([[2**62, -(2**62), 5, -1, 0, 1, 2, 3, 4]])
    want = posterior_greedy_reference(tokens, parent, logits, max_depth)
    inputs = [guarded(tokens, 0)[1], guarded(parent, 0)[1], guarded(logits, INF)[1]]
    outputs = [guarded(poisoned_like(t), 12345) for t in want]
    got = posterior_greedy_triton(*inputs, max_depth, out=tuple(view for _, view in outputs))
    assert_outputs("guarded", got, want)
    for name, (buffer, _) in zip(OUTPUT_NAMES, outputs, strict=True):
        guards = torch.cat([buffer[:GUARD], buffer[-GUARD:]])
        assert (guards == 12345).all(), f"wrote outside {name}"


def test_kernels_compile_for_sm90():
    # T = 1; one split per row; several splits of several blocks (V > 1024 with few rows); bf16 and fp16 logits.
    launches = [
        (index([[3]]), index([[-1]]), torch.randn(1, 1, 5, device=DEVICE), 0),
        small_step(),
        (*small_step()[:2], torch.randn(2, 6, 2500, device=DEVICE, dtype=torch.bfloat16), 7),
        (*small_step()[:2], torch.randn(2, 6, 33, device=DEVICE, dtype=torch.float16), 2),
    ]
    assert_compiles_for_sm90(lambda: [posterior_greedy_triton(*step) for step in launches])


def test_benchmark_cases_run_on_tiny_shapes():
    sizes = PosteriorSizes(batches=(1, 2), tree_size=7, branching=2, depth=1, vocab=50)
    for case in cases(DEVICE, sizes=sizes):
        case.check()
        for run in case.candidates.values():
            run()
        assert case.bytes_min > 0
