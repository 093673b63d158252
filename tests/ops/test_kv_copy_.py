"""kv_copy_: lowering against reference (the whole cache), reference against the contract, registration, compile,
validation, and no access outside the cache whatever the lengths and paths."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.ops.kv_copy_ import KvCopySizes, cases
from eagle_ops._checks import FLOAT_DTYPES
from eagle_ops.kv_copy_ import kv_copy_
from eagle_ops.lowering.kv_copy_ import kv_copy_triton
from eagle_ops.reference.kv_copy_ import kv_copy_reference
from tests.support import (
    DEVICE,
    assert_compiles_for_sm90,
    assert_exact,
    assert_no_host_sync,
    lowering_path,
    traced_aten_graph,
)

Copy = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def random_cache(shape: tuple[int, ...], dtype: torch.dtype, seed: int, device: torch.device = DEVICE) -> torch.Tensor:
    """Normal values with about one element in ten NaN, inf or -inf: a copy must move them bit for bit."""
    generator = torch.Generator().manual_seed(seed)
    cache = torch.randn(shape, generator=generator)
    special = torch.tensor([float("nan"), float("inf"), float("-inf")])[torch.randint(3, shape, generator=generator)]
    cache = torch.where(torch.rand(shape, generator=generator) < 0.1, special, cache)
    return cache.to(device=device, dtype=dtype)


def copy_case(
    cache_len: list[int],
    accept_path: list[list[int]],
    *,
    capacity: int,
    layers: int = 1,
    kv_heads: int = 2,
    head_dim: int = 4,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Copy:
    shape = (layers, 2, len(cache_len), kv_heads, capacity, head_dim)
    index = lambda values: torch.tensor(values, dtype=torch.int64, device=DEVICE)
    return random_cache(shape, dtype, seed), index(cache_len), index(accept_path)


@st.composite
def copies(draw: st.DrawFn) -> Copy:
    """Accepted paths (root first, increasing, -1 padded) after in-range lengths, or arbitrary lengths and paths."""
    batch, capacity, path_len = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 5))
    if draw(st.booleans()):
        cache_len = [draw(st.integers(-2, capacity + 1)) for _ in range(batch)]
        paths = [[draw(st.integers(-3, capacity + 2)) for _ in range(path_len)] for _ in range(batch)]
    else:
        cache_len = [draw(st.integers(0, capacity)) for _ in range(batch)]
        paths = []
        for _ in range(batch):
            path = [0]
            for _ in range(draw(st.integers(0, path_len - 1))):
                path.append(path[-1] + draw(st.integers(1, 3)))
            paths.append(path + [-1] * (path_len - len(path)))
    return copy_case(
        cache_len,
        paths,
        capacity=capacity,
        layers=draw(st.integers(1, 2)),
        kv_heads=draw(st.integers(1, 2)),
        head_dim=draw(st.integers(1, 9)),
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def pinned(test):
    """The awkward copies every property test also runs."""
    for copy in (
        copy_case([2], [[0, 1, 2, 3]], capacity=8),  # identity path
        copy_case([1], [[0, 2, 5, -1, -1]], capacity=10, dtype=torch.bfloat16),  # -1 padding
        copy_case([1], [[0, 2, 3, 5]], capacity=8),  # sources that are also destinations of other entries
        copy_case([0, 3, 6], [[0, 1, 3], [0, 2, -1], [0, 4, 5]], capacity=12, layers=2),  # B > 1, different lengths
        copy_case([6, 9], [[0, 3, 5, 7], [0, 1, 2, -1]], capacity=10),  # sources, then destinations, past S
        copy_case([-2], [[0, 1, 3, 4]], capacity=6, dtype=torch.float16),  # destinations before the cache
        copy_case([2], [[0, 3, 3, 1]], capacity=8),  # malformed: repeated source, a source behind its destination
        copy_case([1, 4], [[0, 1, 4], [0, 2, -1]], capacity=9, head_dim=6, dtype=torch.bfloat16),  # odd Dh
        copy_case([1], [[0, 3, 4]], capacity=6, kv_heads=1, head_dim=130),  # Dh past one 128-wide chunk
    ):
        test = example(copy=copy)(test)
    return test


def copied(cache: torch.Tensor, cache_len: torch.Tensor, accept_path: torch.Tensor) -> torch.Tensor:
    """The contract, slot by slot, on a copy of ``cache``: every source read from the cache as it was."""
    result = cache.clone()
    capacity = cache.shape[4]
    for b, (length, path) in enumerate(zip(cache_len.tolist(), accept_path.tolist(), strict=True)):
        for j, step in enumerate(path):
            if step >= 0 and 0 <= length + j < capacity and 0 <= length + step < capacity:
                result[:, :, b, :, length + j] = cache[:, :, b, :, length + step]
    return result


@given(copy=copies())
@pinned
def test_reference_follows_the_contract(copy):
    cache, cache_len, accept_path = copy
    want = copied(cache, cache_len, accept_path)
    kv_copy_reference(cache, cache_len, accept_path)
    assert_exact("cache", cache, want)


@given(copy=copies())
@pinned
def test_lowering_matches_reference(copy):
    cache, cache_len, accept_path = copy
    want = cache.clone()
    kv_copy_reference(want, cache_len, accept_path)
    kv_copy_triton(cache, cache_len, accept_path)
    assert_exact("cache", cache, want)  # the whole cache: slots outside the destinations must be unchanged


def test_registered_op_runs_reference_and_lowering():
    cache, cache_len, accept_path = (t.cpu() for t in copy_case([0, 3], [[0, 2, 3], [0, 1, -1]], capacity=8))
    want = cache.clone()
    kv_copy_reference(want, cache_len, accept_path)
    on_cpu = cache.clone()
    kv_copy_(on_cpu, cache_len, accept_path)
    assert_exact("reference path", on_cpu, want)
    lowered = cache.to(DEVICE)
    with lowering_path():
        kv_copy_(lowered, cache_len.to(DEVICE), accept_path.to(DEVICE))
    assert_exact("lowering path", lowered, want)


def test_opcheck_reference_path():
    args = tuple(t.cpu() for t in copy_case([1, 2], [[0, 2, -1], [0, 1, 3]], capacity=7))
    torch.library.opcheck(torch.ops.eagle_ops.kv_copy_.default, args)


def test_opcheck_lowering_path():
    args = copy_case([1, 2], [[0, 2, -1], [0, 1, 3]], capacity=7)
    with lowering_path():
        torch.library.opcheck(torch.ops.eagle_ops.kv_copy_.default, args)


def test_fake_returns_nothing_and_still_validates():
    cache, cache_len, accept_path = copy_case([1, 2], [[0, 2], [0, 1]], capacity=7)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (cache, cache_len, accept_path)]
        assert kv_copy_(*fake) is None
        with pytest.raises(ValueError, match="accept_path"):
            kv_copy_(fake[0], fake[1], fake[2][:1])


def test_compiles_whole_without_host_sync():
    cache, cache_len, accept_path = copy_case([1, 2], [[0, 2, 3], [0, 1, -1]], capacity=7)
    step = lambda cache, cache_len, accept_path: kv_copy_(cache, cache_len, accept_path)
    assert_no_host_sync(traced_aten_graph(step, cache.clone(), cache_len, accept_path))
    assert_no_host_sync(traced_aten_graph(kv_copy_reference, cache.cpu(), cache_len.cpu(), accept_path.cpu()))
    compiled, eager = cache.clone(), cache.clone()
    torch.compile(step, fullgraph=True)(compiled, cache_len, accept_path)
    step(eager, cache_len, accept_path)
    assert_exact("cache", compiled, eager)


CACHE, CACHE_LEN, PATH = copy_case([1, 2], [[0, 2], [0, 1]], capacity=7)


@pytest.mark.parametrize(
    ("args", "error", "named"),
    [
        ((CACHE[0], CACHE_LEN, PATH), ValueError, "cache"),  # rank
        ((torch.cat([CACHE, CACHE[:, :1]], 1), CACHE_LEN, PATH), ValueError, "cache"),  # K and V only
        ((CACHE.double(), CACHE_LEN, PATH), TypeError, "cache"),  # dtype
        ((CACHE.transpose(4, 5), CACHE_LEN, PATH), ValueError, "cache"),  # layout
        ((CACHE, CACHE_LEN[:1], PATH), ValueError, "cache_len"),  # B
        ((CACHE, CACHE_LEN, PATH[:1]), ValueError, "accept_path"),
        ((CACHE, CACHE_LEN.int(), PATH), TypeError, "cache_len"),
        ((CACHE, CACHE_LEN, PATH.float()), TypeError, "accept_path"),
        ((CACHE, CACHE_LEN, PATH[:, None]), ValueError, "accept_path"),
        ((CACHE, CACHE_LEN, PATH.to("meta")), ValueError, "accept_path"),  # device
    ],
)
def test_rejects_bad_arguments(args, error, named):
    with pytest.raises(error, match=named):
        kv_copy_(*args)


def test_touches_nothing_outside_the_cache_whatever_the_lengths_and_paths():
    """The cache lives between two guard zones; lengths and path entries far outside [0, S) must be skipped."""
    cache_len = torch.tensor([2**61, -(2**61), 5, 7, -1], dtype=torch.int64, device=DEVICE)
    accept_path = torch.tensor(
        [[0, 1, 2], [0, 2**61, 1], [0, 2**61, -(2**61)], [0, 1, 2], [2**61, 2, 3]], dtype=torch.int64, device=DEVICE
    )
    shape, guard = (2, 2, 5, 2, 8, 3), 64
    buffer = random_cache((2 * guard + torch.Size(shape).numel(),), torch.float32, seed=1)
    before = buffer.clone()
    cache = buffer[guard:-guard].view(shape)
    want = cache.clone()
    kv_copy_reference(want, cache_len, accept_path)
    kv_copy_triton(cache, cache_len, accept_path)
    assert_exact("cache", cache, want)
    assert_exact("guard before the cache", buffer[:guard], before[:guard])
    assert_exact("guard after the cache", buffer[-guard:], before[-guard:])


def test_kernels_compile_for_sm90():
    launches = [
        copy_case([1], [[0, 2, 3]], capacity=6, head_dim=6),
        copy_case([1], [[0, 2, 3, 4, -1]], capacity=8, head_dim=130, dtype=torch.bfloat16),
        copy_case([0, 1], [[0], [0]], capacity=3, head_dim=8, dtype=torch.float16),
    ]
    assert_compiles_for_sm90(lambda: [kv_copy_triton(*copy) for copy in launches])


def test_benchmark_cases_run_on_tiny_shapes():
    sizes = KvCopySizes(layers=2, kv_heads=2, head_dim=8, capacities=(32, 64), batches=(1, 2), path_len=3, tree_size=6)
    for case in cases(DEVICE, sizes=sizes):
        case.check()
        for run in case.candidates.values():
            run()
        assert case.bytes_min > 0
