"""How an eagle_ops op is defined.

Every op is declared once through :func:`define_op`: an explicit schema in the ``eagle_ops`` namespace, a fake
(shapes only) for tracing, the eager reference as the CPU kernel and the Triton lowering as the CUDA kernel.
Validation runs first in every one of them, so bad input fails before any launch and also at trace time.

CPU tensors run the reference unless :func:`triton_on_cpu` is active; that switch exists for tests and for
users who want to execute the real kernels through the Triton interpreter (``TRITON_INTERPRET=1`` must be set
before any kernel module is imported, because ``triton.jit`` reads it when a kernel is defined).

The registration uses the low-level ``torch.library.Library`` API so it works from torch 2.3 on; torch 2.3
names the fake registration ``impl_abstract``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch

NAMESPACE = "eagle_ops"

_LIBRARY = torch.library.Library(NAMESPACE, "DEF")
_register_fake = getattr(torch.library, "register_fake", None) or torch.library.impl_abstract

_cpu_uses_triton = False


@contextlib.contextmanager
def triton_on_cpu() -> Iterator[None]:
    """Run the Triton lowerings (through the Triton interpreter) for CPU tensors inside this block."""
    global _cpu_uses_triton
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "triton_on_cpu() needs TRITON_INTERPRET=1 set before eagle_ops is imported "
            "(triton.jit reads it when the kernels are defined)"
        )
    previous, _cpu_uses_triton = _cpu_uses_triton, True
    try:
        yield
    finally:
        _cpu_uses_triton = previous


def define_op(
    name: str,
    schema: str,
    *,
    validate: Callable[..., None],
    fake: Callable,
    reference: Callable,
    lowering: Callable,
) -> Callable:
    """Register ``eagle_ops::<name>`` and return its ``torch.ops`` overload.

    ``schema`` is the part after the name, e.g. ``"(Tensor x, int k) -> Tensor"``; mutated arguments are
    declared there with ``Tensor(a!)``. ``validate`` receives the op's arguments and raises ``ValueError`` or
    ``TypeError``; it must not read tensor data, since it also runs on fake tensors.
    """

    def checked(impl: Callable) -> Callable:
        def run(*args):
            validate(*args)
            # Validation leaves only the batch free to be 0, so an empty input means an empty batch: nothing to
            # compute, launch or write, and the fake's (empty) outputs are the outputs.
            if impl is not fake and any(isinstance(arg, torch.Tensor) and arg.numel() == 0 for arg in args):
                return fake(*args)
            return impl(*args)

        run.__name__ = f"{name}_{getattr(impl, '__name__', 'impl')}"
        return run

    def on_cpu(*args):
        return lowering(*args) if _cpu_uses_triton else reference(*args)

    _LIBRARY.define(name + schema)
    _LIBRARY.impl(name, checked(on_cpu), "CPU")
    _LIBRARY.impl(name, checked(lowering), "CUDA")
    _register_fake(f"{NAMESPACE}::{name}", checked(fake), lib=_LIBRARY)
    return getattr(torch.ops.eagle_ops, name).default
