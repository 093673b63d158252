"""The one benchmark harness: warm-up, CUDA-event medians with p20/p80, correctness before timing, stamped rows."""

from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Case:
    """One benchmark point of one op.

    ``candidates`` maps a method name ("reference", "triton", "sdpa", ...) to a zero-argument callable that runs
    it once on prepared inputs. ``check`` runs before any timing and raises if the methods disagree.
    ``bytes_min`` is the fewest bytes the op must move (each input read once, each output written once).
    """

    op: str
    label: str
    candidates: dict[str, Callable[[], object]]
    check: Callable[[], None]
    bytes_min: int
    params: dict[str, int | float | str] = field(default_factory=dict)


def stamp() -> dict[str, str]:
    """Device, versions, commit and date for every result row."""
    # A run on a copy of the work tree (the device machine's) passes the commit in: that copy's git metadata, if
    # any, is not the work tree's.
    commit = os.environ.get("EAGLE_OPS_COMMIT", "")
    if not commit:
        try:
            result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
            commit = result.stdout.strip()
        except OSError:
            pass
    commit = commit or "unknown"
    import transformers
    import triton

    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "commit": commit,
        "date": datetime.date.today().isoformat(),
    }


def time_ms(fn: Callable[[], object], *, warmup: int = 10, repeats: int = 50) -> tuple[float, float, float]:
    """(p20, median, p80) milliseconds of ``fn`` measured with CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 5], times[len(times) // 2], times[(4 * len(times)) // 5]


def time_graph_ms(fn: Callable[[], object], *, calls: int = 20, repeats: int = 20) -> tuple[float, float, float]:
    """(p20, median, p80) device milliseconds per call of ``fn``, replayed ``calls`` times from one CUDA graph.

    This is what a call costs inside the captured step: no Python, no dispatch, no launch gaps. Returns NaNs when
    ``fn`` cannot be captured (it syncs with the host or allocates in a way capture forbids).
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except RuntimeError:
        torch.cuda.synchronize()
        nan = float("nan")
        return nan, nan, nan
    p20, median, p80 = time_ms(graph.replay, warmup=3, repeats=repeats)
    return p20 / calls, median / calls, p80 / calls


def read_bandwidth_gbps(gib: float = 1.0) -> float:
    """Measured device read bandwidth in GB/s: a sum over ``gib`` GiB of bf16 (reads only, no copy)."""
    x = torch.randn(int(gib * 2**30) // 2, device="cuda", dtype=torch.bfloat16)
    _, median, _ = time_ms(lambda: x.sum(), warmup=5, repeats=20)
    return x.numel() * 2 / (median * 1e-3) / 1e9


def write_csv(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to ``path``, writing the header when the file is new.

    Rows whose columns differ from the file's header (a benchmark that gained a column) rewrite the file under the
    union of both headers, the file's columns first, with empty cells where a row has no value.
    """
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    mode = "w"
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            if header == columns:
                mode = "a"
            else:
                rows = list(reader) + rows
                columns = list(dict.fromkeys(header + columns))
    with path.open(mode, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        if mode == "w":
            writer.writeheader()
        writer.writerows(rows)
