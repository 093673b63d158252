"""Argument validation shared by every op.

:class:`Signature` binds symbolic dimension names (``"B T V"``) to sizes as arguments are checked, so a
mismatch names the argument, the expected shape and the received one. Nothing here reads tensor data: it runs
on fake tensors during tracing too.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64,)


def _dtype_names(dtypes: tuple[torch.dtype, ...]) -> str:
    return " or ".join(str(d).removeprefix("torch.") for d in dtypes)


class Signature:
    """Checks one op call's arguments against symbolic shapes; all tensors must share one device."""

    def __init__(self, op: str, **known_sizes: int) -> None:
        self.op = op
        self.sizes: dict[str, int] = dict(known_sizes)
        self.bound_by: dict[str, str] = {}  # the first argument that gave each dimension its size
        self.device: torch.device | None = None
        self.device_source = ""

    def error(self, message: str) -> ValueError:
        return ValueError(f"eagle_ops.{self.op}: {message}")

    def tensor(
        self,
        name: str,
        value: object,
        dims: str,
        dtypes: tuple[torch.dtype, ...],
        *,
        contiguous: bool = True,
    ) -> None:
        """Check ``value`` is a tensor with dims like ``"B T V"`` (a number is a literal size)."""
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"eagle_ops.{self.op}: `{name}` must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype not in dtypes:
            raise TypeError(
                f"eagle_ops.{self.op}: `{name}` must have dtype {_dtype_names(dtypes)}, got "
                f"{str(value.dtype).removeprefix('torch.')}"
            )
        names = dims.split()
        if value.dim() != len(names):
            raise self.error(
                f"`{name}` must have {len(names)} dims [{', '.join(names)}], got shape {list(value.shape)}"
            )
        for axis, (dim, size) in enumerate(zip(names, value.shape, strict=True)):
            if not dim.isdigit() and dim not in self.sizes:
                self.bound_by[dim] = name
            expected = int(dim) if dim.isdigit() else self.sizes.setdefault(dim, size)
            if size != expected:
                wanted = [int(d) if d.isdigit() else self.sizes.get(d, d) for d in names]
                raise self.error(
                    f"`{name}` must have shape [{', '.join(names)}] = {wanted}, got {list(value.shape)} "
                    f"(dim {axis}, {dim})"
                )
        if self.device is None:
            self.device, self.device_source = value.device, name
        elif value.device != self.device:
            raise self.error(
                f"`{name}` is on {value.device} but `{self.device_source}` is on {self.device}; "
                "all tensors must be on one device"
            )
        if contiguous and not value.is_contiguous():
            raise self.error(f"`{name}` must be contiguous (call .contiguous()), got strides {list(value.stride())}")

    def nonempty(self) -> None:
        """Every dimension seen so far but the batch must be at least 1; an empty batch gives empty outputs."""
        for dim, size in self.sizes.items():
            if size < 1 and dim != "B":
                raise self.error(
                    f"every dimension but the batch must be at least 1, got {dim} = {size} "
                    f"(from `{self.bound_by.get(dim, dim)}`)"
                )

    def positive(self, name: str, value: object, *, at_most: int | None = None) -> None:
        """Check an int argument is >= 1 (and <= at_most when given)."""
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"eagle_ops.{self.op}: `{name}` must be an int, got {type(value).__name__}")
        if value < 1 or (at_most is not None and value > at_most):
            bound = f" and at most {at_most}" if at_most is not None else ""
            raise self.error(f"`{name}` must be at least 1{bound}, got {value}")

    def non_negative(self, name: str, value: object) -> None:
        """Check an int argument is >= 0."""
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"eagle_ops.{self.op}: `{name}` must be an int, got {type(value).__name__}")
        if value < 0:
            raise self.error(f"`{name}` must be at least 0, got {value}")
