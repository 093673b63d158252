"""topk_expand: lowering against reference, reference against the contract, registration, compile, validation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from unittest import mock

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.ops.topk_expand import TopkExpandSizes, cases
from eagle_ops.lowering import topk_expand as lowering
from eagle_ops.lowering.topk_expand import topk_expand_triton
from eagle_ops.reference.topk_expand import topk_expand_reference
from eagle_ops.topk_expand import Expansion, topk_expand
from tests.support import (
    DEVICE,
    assert_compiles_for_sm90,
    assert_exact,
    assert_no_host_sync,
    lowering_path,
    poisoned_like,
    traced_aten_graph,
)

OUTPUTS = Expansion._fields
INF = float("inf")


@dataclass(frozen=True)
class Level:
    """One expansion's inputs, built from a seed: shapes, dtype and what the logits and frontier scores hold.

    ``logits``: "normal" (continuous); "descending" (every row sorted, largest first, so that a node's best children
    crowd into its first ids and the fewest groups); "ties" (ids 0..2 only, every node of a sequence sees the same
    row and the frontier scores are equal, so ties are exact both within and across rows); "neg_inf" (about half the
    logits -inf, the first row all -inf); "nan" (a NaN logit in the first row, +inf in the last). ``dead_node``: node 0
    of every sequence scores -inf. Frontier scores are otherwise continuous, so that rows with different
    log-sum-exps (whose last bits depend on the summation order) never tie exactly.
    """

    batch: int
    frontier: int
    vocab: int
    k: int
    dtype: torch.dtype = torch.float32
    with_d2t: bool = False
    logits: str = "normal"
    dead_node: bool = False
    seed: int = 0

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.batch, self.frontier, self.vocab)
        if self.logits == "ties":
            row = torch.randint(0, 3, (self.batch, 1, self.vocab), generator=generator)
            logits = row.float().expand(shape).clone()
            frontier_scores = torch.zeros(self.batch, self.frontier)
        else:
            logits = 3 * torch.randn(shape, generator=generator)
            frontier_scores = -8 * torch.rand(self.batch, self.frontier, generator=generator)
        rows = logits.view(-1, self.vocab)
        if self.logits == "descending":
            rows.copy_(rows.sort(dim=-1, descending=True).values)
        if self.logits == "neg_inf":
            logits[torch.rand(shape, generator=generator) < 0.5] = -INF
            rows[0] = -INF
        if self.logits == "nan":
            rows[0, torch.randint(0, self.vocab, (), generator=generator)] = float("nan")
            rows[-1, torch.randint(0, self.vocab, (), generator=generator)] = INF
        if self.dead_node:
            frontier_scores[:, 0] = -INF
        d2t = None
        if self.with_d2t:
            target_ids = torch.randperm(4 * self.vocab, generator=generator)[: self.vocab].sort().values
            d2t = (target_ids - torch.arange(self.vocab)).to(DEVICE)
        return logits.to(DEVICE, self.dtype), frontier_scores.to(DEVICE), d2t, self.k


@st.composite
def levels(draw: st.DrawFn) -> Level:
    vocab = draw(st.integers(1, 160))
    k = draw(st.integers(1, min(vocab, 5)))
    return Level(
        batch=draw(st.integers(1, 2)),
        frontier=draw(st.sampled_from([1, 2, 3, k])),
        vocab=vocab,
        k=k,
        dtype=draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16])),
        with_d2t=draw(st.booleans()),
        logits=draw(st.sampled_from(["normal", "descending", "ties", "neg_inf", "nan"])),
        dead_node=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def pinned(test):
    """The awkward levels every property test also runs."""
    for level in (
        Level(1, 1, 50, 4),  # root expansion (F = 1)
        Level(2, 3, 37, 3, torch.bfloat16, with_d2t=True),  # F = k, B > 1, Vd not a power of two, bf16, d2t
        Level(1, 3, 20, 1),  # k = 1
        Level(2, 4, 64, 4, logits="ties"),  # many equal logits, equal frontier scores
        Level(1, 3, 30, 3, logits="neg_inf"),  # -inf logits and an all -inf row
        Level(2, 2, 25, 2, torch.float16, logits="nan"),  # NaN and +inf logits
        Level(1, 3, 40, 3, with_d2t=True, dead_node=True),  # a -inf frontier score
        Level(1, 2, 6, 6),  # k = Vd
        Level(1, 1, 1, 1),  # Vd = 1
        Level(1, 2, 300, 2),  # several chunks of several tiles
        Level(2, 3, 150, 5, torch.bfloat16, logits="descending"),  # every row's best children in its first ids
        Level(1, 1, 70, 12, logits="neg_inf"),  # a chunk shorter than k
        Level(1, 2, 64, 64, logits="ties"),  # the largest k, all of the vocabulary
    ):
        test = example(level=level)(test)
    return test


def largest_finite(t: torch.Tensor) -> float:
    finite = t.float()[t.float().isfinite()]
    return finite.abs().max().item() if finite.numel() else 0.0


def assert_scores_close(name: str, got: torch.Tensor, want: torch.Tensor, args: tuple) -> None:
    """Equal -inf entries, no NaN, and finite entries within the rounding of fp32 evaluations on both sides.

    Both sides compute ``f + (x - logsumexp(x))`` in fp32 from the same fp32 values and differ in the log-sum-exp
    only: the order of the vocabulary sum (relative error below Vd * eps, which the log makes an absolute error in
    the log-sum-exp) and the exp / log implementations (a few eps). Then every subtraction rounds, at most eps
    times the magnitudes involved: the frontier score, the logit and the log-sum-exp (below max|x| + log(Vd)).
    """
    logits, frontier_scores, _, _ = args
    vocab = logits.shape[-1]
    magnitude = 1 + largest_finite(frontier_scores) + largest_finite(logits) + math.log(vocab)
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(got, want, rtol=0, atol=eps * (vocab + 8 * magnitude), msg=lambda m: f"{name}: {m}")


def on_cpu(args: tuple) -> tuple:
    """The reference runs on the CPU: CUDA's log_softmax can round equal rows differently (two equal rows of 153 fp32
    logits came out 1 ulp apart on the H200), which breaks the exact ties that the "ties" levels build."""
    return tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)


def assert_matches(got: tuple, want: tuple, args: tuple) -> None:
    for name, g, w in zip(OUTPUTS, got, want, strict=True):
        if w.dtype.is_floating_point:
            assert_scores_close(name, g, w, args)
        else:
            assert_exact(name, g, w)


# The plan as shipped (on these vocabularies one tile per row), and tiles of 16 logits in rows of 8 bytes: all in
# one chunk of many tiles, in chunks of two tiles, in segments of two tiles and in rows of one logit, so that the
# lane, row and logit rankings pick among many lanes, segments, tiles and chunks; and one chunk of many tiles whose
# 16-bit logits' lanes and rows rank int64 keys, as they do when a chunk has too many rows for int32 ones.
SMALL_TILES = {"ROW_BYTES": 8, "MAX_TILE": 16, "TARGET_PROGRAMS": 1}
PLANS = {
    "shipped plan": {"MAX_TILE": lowering.MAX_TILE},
    "one chunk": {**SMALL_TILES, "MAX_TILES_PER_CHUNK": 64},
    "chunks of two tiles": {**SMALL_TILES, "MAX_TILES_PER_CHUNK": 2},
    "segments of two tiles": {**SMALL_TILES, "MAX_TILES_PER_CHUNK": 64, "SEGMENT_TILES": 2},
    "rows of one logit": {**SMALL_TILES, "MAX_TILES_PER_CHUNK": 64, "ROW_BYTES": 1},
    "int64 row keys for 16-bit logits": {**SMALL_TILES, "MAX_TILES_PER_CHUNK": 64, "MAX_COMPACT_ROWS": 0},
}


@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
@given(level=levels())
@pinned
def test_lowering_matches_reference(plan, level):
    args = level.inputs()
    want = tuple(t.to(DEVICE) for t in topk_expand_reference(*on_cpu(args)))
    with mock.patch.multiple(lowering, **plan):
        got = topk_expand_triton(*args, out=tuple(poisoned_like(t) for t in want))
    assert_matches(got, want, args)


def test_log_softmax_stays_accurate_over_long_rows():
    # The running sum is rescaled tile after tile, so a rounding in the rescale compounds over the tiles: it once
    # drifted 1e-4 over 126 tiles on the H200, where the fused multiply-add rounds differently from the interpreter.
    # A correct float32 sum stays within a few units in the last place of scores below 64 in magnitude (2^-18 each).
    if DEVICE.type == "cuda":
        vocab, plan = 128256, {"MAX_TILE": lowering.MAX_TILE}
    else:
        vocab, plan = 4096, {**SMALL_TILES, "MAX_TILES_PER_CHUNK": 256}  # 256 tiles in one chunk
    generator = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(2, 3, vocab, generator=generator)).to(DEVICE, torch.bfloat16)
    frontier_scores = (-10 * torch.rand(2, 3, generator=generator)).to(DEVICE)
    with mock.patch.multiple(lowering, **plan):
        got = Expansion(*topk_expand_triton(logits, frontier_scores, None, 5))
    exact = logits.double()
    children = got.level_tokens.view(2, 3, 5)
    log_probs = exact.gather(-1, children) - exact.logsumexp(-1, keepdim=True)
    want = (frontier_scores.double()[:, :, None] + log_probs).flatten(1)
    error = (got.level_scores.double() - want).abs().max().item()
    assert error <= 2e-5, f"level scores off by {error:.2e} from float64"


def expanded_by_hand(logits, frontier_scores, d2t, k) -> tuple[torch.Tensor, ...]:
    """The contract, node by node in float64: log-softmax, NaN as -inf, sorted by (score, index)."""
    batch, frontier, _ = logits.shape
    level_scores = torch.empty(batch, frontier * k, dtype=torch.float64)
    level_tokens = torch.empty(batch, frontier * k, dtype=torch.int64)
    next_frontier = []
    for b in range(batch):
        for f in range(frontier):
            logp = torch.log_softmax(logits[b, f].double().cpu(), -1)
            logp = logp.masked_fill(logp.isnan(), -INF).tolist()
            children = sorted(range(len(logp)), key=lambda t: (-logp[t], t))[:k]
            for rank, t in enumerate(children):
                score = frontier_scores[b, f].item() + logp[t]
                level_scores[b, f * k + rank] = -INF if math.isnan(score) else score
                level_tokens[b, f * k + rank] = t if d2t is None else t + d2t[t].item()
        scores = level_scores[b].tolist()
        next_frontier.append(sorted(range(frontier * k), key=lambda i: (-scores[i], i))[:k])
    next_index = torch.tensor(next_frontier, dtype=torch.int64)
    return (
        level_scores,
        level_tokens,
        level_scores.gather(1, next_index),
        level_tokens.gather(1, next_index),
        next_index // k,
        next_index,
    )


@given(level=levels())
@pinned
def test_reference_follows_the_contract(level):
    args = on_cpu(level.inputs())
    got = topk_expand_reference(*args)
    want = [t.float() if t.dtype == torch.float64 else t for t in expanded_by_hand(*args)]
    assert_matches(got, want, args)


def test_registered_op_runs_reference_and_lowering():
    level = Level(2, 3, 40, 3, torch.bfloat16, with_d2t=True, logits="nan", dead_node=True)
    logits, frontier_scores, d2t, k = level.inputs()
    cpu_args = (logits.cpu(), frontier_scores.cpu(), d2t.cpu(), k)
    want = topk_expand_reference(*cpu_args)
    expansion = topk_expand(*cpu_args)
    assert isinstance(expansion, Expansion)
    assert_matches(expansion, want, cpu_args)
    with lowering_path():
        got = topk_expand(logits, frontier_scores, d2t, k)
    assert_matches(got, [t.to(DEVICE) for t in want], cpu_args)


OPCHECK_LEVEL = Level(2, 2, 20, 2, with_d2t=True, logits="neg_inf")


def test_opcheck_reference_path():
    logits, frontier_scores, d2t, k = OPCHECK_LEVEL.inputs()
    op = torch.ops.eagle_ops.topk_expand.default
    torch.library.opcheck(op, (logits.cpu(), frontier_scores.cpu(), d2t.cpu(), k))
    torch.library.opcheck(op, (logits.cpu(), frontier_scores.cpu(), None, k))


def test_opcheck_lowering_path():
    with lowering_path():
        torch.library.opcheck(torch.ops.eagle_ops.topk_expand.default, OPCHECK_LEVEL.inputs())


def test_fake_outputs_match_real_shapes_dtypes_strides():
    args = Level(2, 3, 17, 3, torch.bfloat16, with_d2t=True).inputs()
    real = topk_expand(*args)
    with FakeTensorMode() as mode:
        fake = topk_expand(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    for name, f, r in zip(OUTPUTS, fake, real, strict=True):
        assert (f.shape, f.dtype, f.stride()) == (r.shape, r.dtype, r.stride()), name


def test_compiles_whole_without_host_sync():
    logits, frontier_scores, d2t, k = Level(2, 3, 30, 3, with_d2t=True).inputs()
    step = lambda logits, frontier_scores, d2t: topk_expand(logits, frontier_scores, d2t, k)
    assert_no_host_sync(traced_aten_graph(step, logits, frontier_scores, d2t))
    assert_no_host_sync(traced_aten_graph(topk_expand_reference, logits.cpu(), frontier_scores.cpu(), d2t.cpu(), k))
    assert_no_host_sync(traced_aten_graph(topk_expand_reference, logits.cpu(), frontier_scores.cpu(), None, k))
    compiled = torch.compile(step, fullgraph=True)(logits, frontier_scores, d2t)
    for name, c, e in zip(OUTPUTS, compiled, step(logits, frontier_scores, d2t), strict=True):
        assert_exact(name, c, e)


LOGITS = torch.randn(2, 3, 10)
SCORES = torch.zeros(2, 3)
D2T = torch.zeros(10, dtype=torch.int64)


@pytest.mark.parametrize(
    ("args", "error", "named"),
    [
        ((LOGITS[0], SCORES, None, 2), ValueError, "logits"),  # rank
        ((LOGITS, SCORES[0], None, 2), ValueError, "frontier_scores"),
        ((LOGITS, SCORES[:, :2], None, 2), ValueError, "frontier_scores"),  # shape relation
        ((LOGITS, SCORES, D2T[:9], 2), ValueError, "d2t"),
        ((LOGITS[:, :0], SCORES[:, :0], None, 2), ValueError, "logits"),  # no frontier node
        ((LOGITS.int(), SCORES, None, 2), TypeError, "logits"),  # dtype
        ((LOGITS, SCORES.double(), None, 2), TypeError, "frontier_scores"),
        ((LOGITS, SCORES, D2T.int(), 2), TypeError, "d2t"),
        ((LOGITS, SCORES.to("meta"), None, 2), ValueError, "frontier_scores"),  # device
        ((LOGITS, SCORES, D2T.to("meta"), 2), ValueError, "d2t"),
        ((torch.randn(2, 10, 3).transpose(1, 2), SCORES, None, 2), ValueError, "logits"),  # layout
        ((LOGITS, SCORES, None, 0), ValueError, "k"),
        ((LOGITS, SCORES, None, 11), ValueError, "k"),  # k > Vd
        ((torch.randn(2, 3, 100), SCORES, None, 65), ValueError, "k"),  # k > 64
    ],
)
def test_rejects_bad_arguments(args, error, named):
    with pytest.raises(error, match=f"`{named}`"):
        topk_expand(*args)


def test_lowering_rejects_bad_out():
    logits, frontier_scores, _, k = Level(1, 2, 10, 2).inputs()
    good = topk_expand_reference(logits, frontier_scores, None, k)
    for position, bad in [
        (0, torch.empty(1, 5, device=DEVICE)),  # level_scores: shape relation
        (3, good[3].int()),  # next_tokens: dtype
        (5, torch.empty_like(good[5], device="meta")),  # next_index: device
    ]:
        out = tuple(bad if i == position else t.clone() for i, t in enumerate(good))
        with pytest.raises((ValueError, TypeError), match=f"`{OUTPUTS[position]}`"):
            topk_expand_triton(logits, frontier_scores, None, k, out=out)


def test_writes_only_its_outputs_whatever_the_values():
    """NaN / +-inf logits and scores, huge d2t offsets: every output lives inside guard zones that stay untouched."""
    level = Level(2, 3, 45, 3, with_d2t=True, logits="nan", dead_node=True, seed=7)
    logits, frontier_scores, d2t, k = level.inputs()
    logits[1, 1] = -INF
    frontier_scores[1, 2] = float("nan")
    d2t[::2] = 2**62
    d2t[1::2] = -(2**62)
    want = topk_expand_reference(logits, frontier_scores, d2t, k)
    guard, marker = 32, -12345
    buffers = [torch.full((w.numel() + 2 * guard,), marker, dtype=w.dtype, device=DEVICE) for w in want]
    out = tuple(b[guard:-guard].view(w.shape) for b, w in zip(buffers, want, strict=True))
    topk_expand_triton(logits, frontier_scores, d2t, k, out=out)
    assert_matches(out, want, (logits, frontier_scores, d2t, k))
    for name, buffer in zip(OUTPUTS, buffers, strict=True):
        assert (buffer[:guard] == marker).all() and (buffer[-guard:] == marker).all(), f"wrote outside {name}"
    assert not (out[0].isnan().any() or out[2].isnan().any()), "a score output holds NaN"


def test_kernels_compile_for_sm90():
    # Each logits dtype, with and without d2t, k = 1 and k > 8, one tile and chunks of several tiles (the GPU
    # benchmarks' plan at B = 64, Vd = 128256, has 32 tiles per chunk).
    shapes = [
        Level(1, 1, 5, 1),
        Level(1, 2, 300, 3, torch.bfloat16, with_d2t=True),
        Level(2, 3, 70, 12, torch.float16),
        Level(1, 1, 9000, 10, torch.bfloat16),
    ]
    many_tiles = Level(1, 2, 1200, 10, torch.bfloat16, with_d2t=True)

    def launch() -> None:
        for level in shapes:
            topk_expand_triton(*level.inputs())
        with mock.patch.multiple(lowering, ROW_BYTES=8, MAX_TILE=16, TARGET_PROGRAMS=1, MAX_TILES_PER_CHUNK=32):
            topk_expand_triton(*many_tiles.inputs())

    assert_compiles_for_sm90(launch)


def test_benchmark_cases_run_on_tiny_shapes():
    sizes = TopkExpandSizes(batches=(1, 2), frontier=2, k=2, vocabularies=((40, True), (33, False)), target_vocab=100)
    for case in cases(DEVICE, sizes=sizes):
        case.check()
        for run in case.candidates.values():
            run()
        assert case.bytes_min > 0
