"""Helpers shared by the tests: the device the lowerings run on, poisoning, comparisons, sm_90 compilation."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lowering_path() -> contextlib.AbstractContextManager:
    """Where the registered ops run the Triton lowerings for tensors on DEVICE (the interpreter on CPU)."""
    from eagle_ops._library import triton_on_cpu

    return triton_on_cpu() if DEVICE.type == "cpu" else contextlib.nullcontext()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

INT_POISON = -7777


def poisoned_like(t: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like ``t`` whose every element is an obvious never-written value."""
    if t.dtype.is_floating_point:
        return torch.full_like(t, float("nan"))
    if t.dtype == torch.bool:
        # No bool value is invalid: alternate both values so that an unwritten element fails half the time
        # at least once per row, whatever the true value.
        flat = torch.arange(t.numel(), device=t.device) % 2 == 0
        return flat.view(t.shape).clone()
    return torch.full_like(t, INT_POISON)


def assert_exact(name: str, actual: torch.Tensor, expected: torch.Tensor, *, shown: int = 5) -> None:
    """Exact equality with a message listing how many elements differ and the first few."""
    assert actual.shape == expected.shape, f"{name}: shape {list(actual.shape)} != {list(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.cpu(), expected.cpu()
    differ = a != e
    if a.dtype.is_floating_point:
        differ &= ~(a.isnan() & e.isnan())
    if differ.any():
        where = differ.nonzero()[:shown]
        rows = ", ".join(f"{tuple(i.tolist())}: got {a[tuple(i)].item()} want {e[tuple(i)].item()}" for i in where)
        raise AssertionError(f"{name}: {int(differ.sum())} of {a.numel()} elements differ; first {rows}")


def assert_close_rel(name: str, actual: torch.Tensor, expected: torch.Tensor, bound: float) -> None:
    """Relative L2 error bound (see each call site for why its bound is what it is); NaN never passes."""
    assert actual.shape == expected.shape, f"{name}: shape {list(actual.shape)} != {list(expected.shape)}"
    a, e = actual.double().cpu(), expected.double().cpu()
    assert not a.isnan().any(), f"{name}: {int(a.isnan().sum())} NaN elements (unwritten or invalid)"
    err = (a - e).norm() / e.norm().clamp_min(1e-30)
    assert err <= bound, f"{name}: relative error {err:.3e} > {bound:.1e}; max abs diff {(a - e).abs().max():.3e}"


_TRITON_DTYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "i1",
}


@contextlib.contextmanager
def recorded_launches() -> Iterator[list[dict]]:
    """Record every Triton kernel launch (under the interpreter) as a compilable specification."""
    from triton.runtime.interpreter import InterpretedFunction

    launches: list[dict] = []
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        params = list(inspect.signature(self.fn).parameters.values())
        values = dict(zip([p.name for p in params], args, strict=False)) | kwargs
        signature, constexprs = {}, {}
        for p in params:
            value = values.get(p.name, p.default)
            if "constexpr" in str(p.annotation):
                signature[p.name] = "constexpr"
                constexprs[p.name] = value
            elif isinstance(value, torch.Tensor):
                signature[p.name] = "*" + _TRITON_DTYPES[value.dtype]
            elif isinstance(value, bool):
                signature[p.name] = "i1"
            elif isinstance(value, int):
                signature[p.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            elif isinstance(value, float):
                signature[p.name] = "fp32"
            elif value is None:
                signature[p.name] = "constexpr"
                constexprs[p.name] = None
            else:
                raise TypeError(f"cannot describe argument {p.name}={value!r} of {self.fn.__name__}")
        launches.append(
            {
                "module": self.fn.__module__,
                "kernel": self.fn.__name__,
                "signature": signature,
                "constexprs": constexprs,
                "num_warps": kwargs.get("num_warps", 4),
                "num_stages": kwargs.get("num_stages", 3),
            }
        )
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield launches
    finally:
        InterpretedFunction.run = original


_COMPILE_FOR_SM90 = r"""
import json, sys, importlib
import triton
from triton.backends.compiler import GPUTarget
for spec in json.load(sys.stdin):
    kernel = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    source = triton.compiler.ASTSource(fn=kernel, signature=spec["signature"], constexprs=spec["constexprs"])
    options = {"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    assert compiled.asm["cubin"], spec["kernel"]
    # What the launch would check on the H200: an sm_90 block gets at most 227 KiB of shared memory.
    assert compiled.metadata.shared <= 227 * 1024, f"{spec['kernel']}: {compiled.metadata.shared} B of shared memory"
    print(spec["kernel"], "ok")
"""


def assert_compiles_for_sm90(launch: Callable[[], object]) -> None:
    """Run ``launch`` under the interpreter, then compile every kernel it launched for sm_90 (no GPU needed).

    The interpreter accepts code the compiler rejects (a block-valued ``if``, a loop-carried dtype change,
    ``break``), so interpreter tests alone can pass on kernels that never build on the H200.
    """
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine every test already compiles the kernels for the device")
    with recorded_launches() as launches:
        launch()
    assert launches, "the launch ran no Triton kernel"
    unique = list({json.dumps(s, sort_keys=True): s for s in launches}.values())
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90],
        input=json.dumps(unique),
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, f"sm_90 compilation failed:\n{result.stderr[-4000:]}"


HOST_SYNC_OPS = ("_local_scalar_dense", "nonzero", "multinomial", "unique", "masked_select", "aten.item")


def traced_aten_graph(fn: Callable, *args) -> torch.fx.GraphModule:
    """Compile ``fn`` with fullgraph=True and return the ATen graph that AOT autograd traced for it."""
    from torch._dynamo.backends.common import aot_autograd

    graphs: list[torch.fx.GraphModule] = []

    def keep(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=aot_autograd(fw_compiler=keep), fullgraph=True)
    compiled(*args)
    assert len(graphs) == 1, f"expected one graph, got {len(graphs)}"
    return graphs[0]


def assert_no_host_sync(gm: torch.fx.GraphModule) -> None:
    """The traced graph holds no op that waits for the device or has a data-dependent output shape."""
    bad = [
        str(n.target)
        for n in gm.graph.nodes
        if n.op == "call_function" and any(s in str(n.target) for s in HOST_SYNC_OPS)
    ]
    assert not bad, f"host syncs or data-dependent ops in the graph: {bad}"
    for node in gm.graph.nodes:
        value = node.meta.get("val")
        values = value if isinstance(value, (tuple, list)) else [value]
        for v in values:
            if isinstance(v, torch.Tensor):
                assert all(isinstance(s, int) for s in v.shape), f"data-dependent shape at {node}: {v.shape}"
