"""tree_attention: lowering against the float64 reference, reference against the contract, registration, compile,
validation, and robustness to non-finite values and malformed lengths."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.ops.tree_attention import TreeAttentionSizes, cases
from eagle_ops._checks import FLOAT_DTYPES
from eagle_ops.lowering import tree_attention as lowering
from eagle_ops.lowering.tree_attention import tree_attention_triton
from eagle_ops.reference.tree_attention import tree_attention_reference
from eagle_ops.tree_attention import tree_attention
from tests.support import (
    DEVICE,
    assert_close_rel,
    assert_compiles_for_sm90,
    assert_exact,
    assert_no_host_sync,
    lowering_path,
    poisoned_like,
    traced_aten_graph,
)

# Relative L2 error of the lowering against the float64 reference, by input dtype.
# float32: every step rounds at 2^-24 ~ 6e-8; the dot products, exponentials and online rescaling compound a few
# dozen such roundings, far below 1e-5, while one wrongly masked key moves the output by O(1).
# float16 / bfloat16: the probabilities are rounded to the input dtype before the P·V product (as in every flash
# kernel) and the output is rounded to it, each by at most u = 2^-11 (fp16) or 2^-8 (bf16) relative per element.
# Together they stayed below 1.4u over 20k random small cases (inputs are exact in both, so nothing else counts);
# the bound is 2.5u. Under the interpreter the lowering rounds as the GPU does (see the lowering's _INTERPRETED).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2.5 * 2**-11, torch.bfloat16: 2.5 * 2**-8}


@dataclass(frozen=True)
class Problem:
    """One call's shapes and data: ``mask`` names the tree (``chain``, ``star``, ``random`` or ``none``)."""

    cache_len: tuple[int, ...]
    capacity: int
    queries: int
    tree_len: int
    kv_heads: int = 2
    group: int = 2
    head_dim: int = 16
    mask: str = "random"
    dtype: torch.dtype = torch.float32
    sharpness: float = 1.0  # multiplies q: large values make one key dominate and exercise the online rescaling
    seed: int = 0


Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]


def tree_mask_of(problem: Problem, generator: torch.Generator) -> torch.Tensor:
    """``[B, Tq, Tk]``: the queries are the last Tq tree slots; a chain sees every slot up to its own, a star the
    root and itself."""
    batch, queries, tree_len = len(problem.cache_len), problem.queries, problem.tree_len
    own = torch.arange(queries)[:, None] + tree_len - queries
    slot = torch.arange(tree_len)[None, :]
    masks = {
        "chain": slot <= own,
        "star": (slot == 0) | (slot == own),
        "random": torch.rand(batch, queries, tree_len, generator=generator) < 0.5,
        "none": torch.zeros(queries, tree_len, dtype=torch.bool),
    }
    return masks[problem.mask].expand(batch, queries, tree_len).contiguous()


def make_inputs(problem: Problem, device: torch.device = DEVICE) -> Inputs:
    generator = torch.Generator().manual_seed(problem.seed)
    batch, kv_heads, head_dim = len(problem.cache_len), problem.kv_heads, problem.head_dim
    q_shape = (batch, kv_heads * problem.group, problem.queries, head_dim)
    kv_shape = (batch, kv_heads, problem.capacity, head_dim)
    q = torch.randn(q_shape, generator=generator) * problem.sharpness
    k, v = torch.randn(kv_shape, generator=generator), torch.randn(kv_shape, generator=generator)
    cache_len = torch.tensor(problem.cache_len, dtype=torch.int64)
    tree_mask = tree_mask_of(problem, generator)
    floats = (t.to(device=device, dtype=problem.dtype) for t in (q, k, v))
    return (*floats, cache_len.to(device), tree_mask.to(device), head_dim**-0.5)


def exact_reference(inputs: Inputs) -> torch.Tensor:
    """The reference on the same values in float64."""
    q, k, v, cache_len, tree_mask, scale = inputs
    return tree_attention_reference(q.double(), k.double(), v.double(), cache_len, tree_mask, scale)


def lowered(inputs: Inputs) -> torch.Tensor:
    """The lowering, writing into a poisoned output so that an unwritten element shows as NaN."""
    out = poisoned_like(inputs[0])
    result = tree_attention_triton(*inputs, out=(out,))
    assert result is out
    return out


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    """Small shapes; cache lengths mostly leave room for the tree, otherwise anything from -2 to S + 2."""
    capacity, tree_len = draw(st.integers(1, 150)), draw(st.integers(1, 6))
    fitting = st.integers(0, max(capacity - tree_len, 0))
    length = st.one_of(fitting, fitting, st.integers(-2, capacity + 2))
    return Problem(
        cache_len=tuple(draw(st.lists(length, min_size=1, max_size=2))),
        capacity=capacity,
        queries=draw(st.integers(1, 6)),
        tree_len=tree_len,
        kv_heads=draw(st.integers(1, 2)),
        group=draw(st.sampled_from([1, 2, 4])),
        head_dim=draw(st.sampled_from([8, 16, 40, 64])),
        mask=draw(st.sampled_from(["random", "chain", "star"])),
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        sharpness=draw(st.sampled_from([1.0, 8.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def pinned(test):
    """The awkward calls every property test also runs."""
    for problem in (
        Problem(cache_len=(5,), capacity=8, queries=1, tree_len=1, kv_heads=1, group=1),  # Tq = Tk = 1
        Problem(cache_len=(7, 0), capacity=20, queries=6, tree_len=6, mask="chain"),  # B > 1, a length of 0
        Problem(cache_len=(3,), capacity=16, queries=5, tree_len=5, mask="star", dtype=torch.bfloat16),
        Problem(cache_len=(9, 30), capacity=40, queries=4, tree_len=9, group=4),  # draft: Tq = K != Tk; GQA 4
        Problem(cache_len=(2,), capacity=12, queries=3, tree_len=3, head_dim=40, dtype=torch.float16),  # odd Dh
        Problem(cache_len=(14,), capacity=20, queries=6, tree_len=6, kv_heads=1, group=1, mask="chain"),  # full
        Problem(cache_len=(100, 37), capacity=150, queries=4, tree_len=4, sharpness=8.0),  # 3 splits, ragged S
        Problem(cache_len=(120, 3), capacity=150, queries=2, tree_len=4, group=4),  # several splits beside one
        Problem(cache_len=(90,), capacity=140, queries=3, tree_len=3, head_dim=128, dtype=torch.bfloat16),  # wide
        Problem(cache_len=(0, 5), capacity=24, queries=3, tree_len=3, mask="none"),  # b=0 sees nothing: zeros
    ):
        test = example(problem=problem)(test)
    return test


@contextlib.contextmanager
def short_splits() -> Iterator[None]:
    """Split keys into slices of 16: the lowering's own minimum (512 keys, 128-key blocks) leaves the small shapes
    here in one slice. The combine reads the splits two at a time, so that it takes several groups, the last one
    ragged, as the GPU's long sequences do."""
    with mock.patch.multiple(
        lowering, _MIN_SPLIT_KEYS=16, _WIDE_MIN_SPLIT_KEYS=16, _WIDE_MAX_BLOCK_N=16, _COMBINE_MAX_SPLITS_IN_FLIGHT=2
    ):
        yield


@pytest.mark.parametrize("splits", [contextlib.nullcontext, short_splits], ids=["default", "short-splits"])
@given(problem=problems())
@pinned
def test_lowering_matches_reference(splits, problem):
    inputs = make_inputs(problem)
    with splits():
        got = lowered(inputs)
    assert_close_rel("out", got, exact_reference(inputs), TOLERANCE[problem.dtype])


@given(problem=problems())
@pinned
def test_reference_follows_the_contract(problem):
    """The reference against attention written query by query from the contract's wording, in float64."""
    q, k, v, cache_len, tree_mask, scale = make_inputs(problem, torch.device("cpu"))
    q, k, v = q.double(), k.double(), v.double()
    batch, q_heads, queries, _ = q.shape
    group, capacity = q_heads // k.shape[1], k.shape[2]
    want = torch.zeros_like(q)
    for b in range(batch):
        start = max(int(cache_len[b]), 0)
        for i in range(queries):
            seen = [
                p
                for p in range(capacity)
                if p < start or (0 <= p - start < problem.tree_len and tree_mask[b, i, p - start])
            ]
            if not seen:
                continue  # a query that sees nothing outputs zeros
            for h in range(q_heads):
                keys, values = k[b, h // group, seen], v[b, h // group, seen]
                want[b, h, i] = torch.softmax(keys @ q[b, h, i] * scale, 0) @ values
    assert_close_rel("reference", tree_attention_reference(q, k, v, cache_len, tree_mask, scale), want, 1e-12)


def test_registered_op_runs_reference_and_lowering():
    inputs = make_inputs(Problem(cache_len=(4, 0), capacity=12, queries=3, tree_len=3), torch.device("cpu"))
    assert_exact("reference path", tree_attention(*inputs), tree_attention_reference(*inputs))
    on_device = make_inputs(Problem(cache_len=(4, 0), capacity=12, queries=3, tree_len=3))
    with lowering_path():
        assert_exact("lowering path", tree_attention(*on_device), tree_attention_triton(*on_device))


def test_opcheck_reference_path():
    inputs = make_inputs(Problem(cache_len=(4, 1), capacity=10, queries=3, tree_len=3), torch.device("cpu"))
    torch.library.opcheck(torch.ops.eagle_ops.tree_attention.default, inputs)


def test_opcheck_lowering_path():
    inputs = make_inputs(Problem(cache_len=(4, 1), capacity=10, queries=3, tree_len=3))
    with lowering_path():
        torch.library.opcheck(torch.ops.eagle_ops.tree_attention.default, inputs)


def test_fake_gives_contiguous_output_and_still_validates():
    inputs = make_inputs(Problem(cache_len=(4, 1), capacity=10, queries=3, tree_len=5, dtype=torch.bfloat16))
    q, k, v, cache_len, tree_mask, scale = inputs
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (q, k, v, cache_len, tree_mask)]
        out = tree_attention(*fake, scale)
        assert (out.shape, out.dtype, out.stride()) == (q.shape, q.dtype, q.contiguous().stride())
        with pytest.raises(ValueError, match="tree_mask"):
            tree_attention(*fake[:4], fake[4][:, :1], scale)


def test_compiles_whole_without_host_sync():
    inputs = make_inputs(Problem(cache_len=(4, 1), capacity=10, queries=3, tree_len=3))
    *tensors, scale = inputs
    attend = lambda q, k, v, cache_len, tree_mask: tree_attention(q, k, v, cache_len, tree_mask, scale)
    assert_no_host_sync(traced_aten_graph(attend, *tensors))
    cpu = [t.cpu() for t in tensors]
    assert_no_host_sync(traced_aten_graph(lambda *t: tree_attention_reference(*t, scale), *cpu))
    assert_exact("compiled", torch.compile(attend, fullgraph=True)(*tensors), attend(*tensors))


ARGS = make_inputs(Problem(cache_len=(4, 1), capacity=10, queries=3, tree_len=3), torch.device("cpu"))
Q, K, V, CACHE_LEN, MASK, SCALE = ARGS


def replaced(**changes) -> tuple:
    names = ("q", "k_cache", "v_cache", "cache_len", "tree_mask", "scale")
    return tuple(changes.get(name, value) for name, value in zip(names, ARGS, strict=True))


@pytest.mark.parametrize(
    ("args", "error", "named"),
    [
        (replaced(q=Q[0]), ValueError, "`q`"),  # rank
        (replaced(k_cache=K[:, :, :, :8]), ValueError, "k_cache"),  # Dh differs from q's
        (replaced(v_cache=V[:, :, :5]), ValueError, "v_cache"),  # S differs from k_cache's
        (replaced(cache_len=CACHE_LEN[:1]), ValueError, "cache_len"),  # B
        (replaced(tree_mask=MASK[:, :2]), ValueError, "tree_mask"),  # Tq differs from q's
        (replaced(tree_mask=MASK[:, :, :0]), ValueError, "Tk"),  # no tree slot at all
        (replaced(q=Q[:, :3].contiguous()), ValueError, "Hq"),  # 3 query heads over 2 kv heads
        (replaced(q=Q.double(), k_cache=K.double(), v_cache=V.double()), TypeError, "`q`"),  # dtype
        (replaced(k_cache=K.half()), TypeError, "k_cache"),  # not the dtype of q
        (replaced(cache_len=CACHE_LEN.int()), TypeError, "cache_len"),
        (replaced(tree_mask=MASK.long()), TypeError, "tree_mask"),
        (replaced(tree_mask=MASK.to("meta")), ValueError, "tree_mask"),  # device
        (replaced(q=Q.mT.contiguous().mT), ValueError, "`q`"),  # layout: same shape, not contiguous
        (replaced(k_cache=K.mT.contiguous().mT), ValueError, "k_cache"),
        (replaced(scale=0.0), ValueError, "scale"),
        (replaced(scale=-1.0), ValueError, "scale"),
        (replaced(scale=math.nan), ValueError, "scale"),
        (replaced(scale=math.inf), ValueError, "scale"),
    ],
)
def test_rejects_bad_arguments(args, error, named):
    with pytest.raises(error, match=named):
        tree_attention(*args)


def test_slots_past_the_tree_are_never_read():
    """NaN and inf in every slot at or past cache_len + Tk leave both implementations' output unchanged."""
    problem = Problem(cache_len=(3, 90), capacity=100, queries=4, tree_len=4, mask="chain")
    clean = make_inputs(problem)
    q, k, v, cache_len, tree_mask, scale = clean
    unread = torch.arange(problem.capacity, device=DEVICE) >= (cache_len + problem.tree_len)[:, None]
    garbage = torch.tensor([math.nan, math.inf, -math.inf], device=DEVICE)[
        torch.arange(unread.numel(), device=DEVICE) % 3
    ]
    poison = lambda t: torch.where(unread[:, None, :, None], garbage.view(unread.shape)[:, None, :, None], t)
    dirty = (q, poison(k), poison(v), cache_len, tree_mask, scale)
    assert_exact("lowering", lowered(dirty), lowered(clean))
    assert_exact("reference", tree_attention_reference(*dirty), tree_attention_reference(*clean))


def test_malformed_lengths_stay_in_bounds():
    """Lengths far below 0 or past S: a negative one counts as 0, one past S makes every slot prefix."""
    problem = Problem(cache_len=(-(2**62), 2**62, 9, -1), capacity=10, queries=3, tree_len=4, mask="chain")
    inputs = make_inputs(problem)
    assert_close_rel("out", lowered(inputs), exact_reference(inputs), TOLERANCE[problem.dtype])


def test_non_finite_queries_spoil_only_their_own_rows():
    """A NaN or -inf in a query makes its own output row non-finite, as in the reference, and nothing else."""
    inputs = make_inputs(Problem(cache_len=(5, 2), capacity=16, queries=3, tree_len=3))
    q = inputs[0].clone()
    q[0, 0, 1, 2], q[1, 3, 0] = math.nan, -math.inf
    spoiled = (q, *inputs[1:])
    got, want = lowered(spoiled), exact_reference(spoiled)
    assert_exact("non-finite elements", got.isfinite(), want.isfinite())
    assert int((~want.isfinite()).sum()) == 2 * q.shape[-1]
    finite = want.isfinite()
    assert_close_rel("finite elements", got[finite], want[finite], TOLERANCE[q.dtype])


@given(num_splits=st.integers(1, 2 * lowering._SM_COUNT_OFF_GPU))
def test_combine_reads_splits_in_equal_groups_under_the_maximum(num_splits):
    in_flight = lowering._splits_in_flight(num_splits)
    groups = -(-num_splits // in_flight)
    assert in_flight <= lowering._COMBINE_MAX_SPLITS_IN_FLIGHT
    assert groups == -(-num_splits // lowering._COMBINE_MAX_SPLITS_IN_FLIGHT)  # no more groups than needed
    assert (groups - 1) * in_flight < num_splits  # and none of them empty


def test_kernels_compile_for_sm90(monkeypatch):
    unsplit = make_inputs(Problem(cache_len=(2,), capacity=12, queries=3, tree_len=3, head_dim=40))
    split = make_inputs(Problem(cache_len=(70,), capacity=100, queries=4, tree_len=4, dtype=torch.float16))
    # The bfloat16 variant the GPU runs, at its block sizes: without the interpreter's bfloat16 emulation.
    monkeypatch.setattr(lowering, "_INTERPRETED", False)
    gpu_bf16 = make_inputs(
        Problem(
            cache_len=(70,),
            capacity=100,
            queries=16,
            tree_len=16,
            kv_heads=1,
            group=4,
            head_dim=128,
            dtype=torch.bfloat16,
        )
    )
    assert_compiles_for_sm90(lambda: [tree_attention_triton(*inputs) for inputs in (unsplit, split, gpu_bf16)])


def test_benchmark_cases_run_on_tiny_shapes():
    sizes = TreeAttentionSizes(
        batches=(1, 2), cache_lens=(20, 40), headroom=8, q_heads=4, kv_heads=2, head_dim=16, tree_size=6
    )
    for case in cases(DEVICE, sizes=sizes):
        case.check()
        for run in case.candidates.values():
            run()
        assert case.bytes_min > 0
