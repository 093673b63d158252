"""Time an op's lowering against an earlier version of the same lowering, in one run, on the GPU.

    git show a040e00:eagle_ops/lowering/posterior_sample.py > runs/posterior_sample_a040e00.py
    python -m benchmarks.compare_revisions --op posterior_sample --baseline runs/posterior_sample_a040e00.py

Each baseline file is loaded as a module of its own (the device machine's copy of the tree has no git history, so
the files are made where it has); several may be given, named by ``--label`` or else by their file names. Every
case of ``benchmarks.ops.OP`` is checked and timed inside a CUDA graph, one version after another: the eager
reference, the work tree's lowering and each baseline's (swapped in for the case's ``OP_triton``); a reference that
syncs with the host cannot be captured and times NaN (``topk_expand``'s). Rows go to ``<out>/compare.csv`` and
``<out>/compare.md`` as each case finishes.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

import torch

from benchmarks.harness import stamp, time_graph_ms, write_csv
from benchmarks.ops.__main__ import OPS


def load_lowering(path: Path, op: str, label: str = "baseline") -> ModuleType:
    """The module in ``path`` (a copy of ``eagle_ops/lowering/OP.py`` from another commit), under a name of its own."""
    spec = importlib.util.spec_from_file_location(f"{op}_{label}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--baseline: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there while the file runs
    spec.loader.exec_module(module)
    if not hasattr(module, f"{op}_triton"):
        raise ValueError(f"--baseline: {path} defines no {op}_triton (is it eagle_ops/lowering/{op}.py?)")
    return module


def run(op: str, baselines: dict[str, ModuleType], out: Path) -> list[dict]:
    stamped = stamp()
    cases = importlib.import_module(f"benchmarks.ops.{op}")
    lowering = f"{op}_triton"
    versions = {"work tree": getattr(cases, lowering)} | {
        label: getattr(module, lowering) for label, module in baselines.items()
    }
    rows = []
    for case in cases.cases("cuda"):
        timings = {"reference": time_graph_ms(case.candidates["reference"])[1]}
        for version, function in versions.items():
            with mock.patch.object(cases, lowering, function):
                case.check()
                timings[version] = time_graph_ms(case.candidates["triton"])[1]
        reference_ms = timings["reference"]
        for version, graph_ms in timings.items():
            rows.append(
                {"op": op, "case": case.label, "version": version, "graph_ms": round(graph_ms, 4)}
                | {"x_reference": round(reference_ms / graph_ms, 2)}
                | stamped
            )
        print(f"{op} {case.label}: " + ", ".join(f"{v} {t:.4f} ms" for v, t in timings.items()), flush=True)
        write_csv(out / "compare.csv", rows[-len(timings) :])
        (out / "compare.md").write_text(markdown_table(rows))
        torch.cuda.empty_cache()
    return rows


def markdown_table(rows: list[dict]) -> str:
    versions = list(dict.fromkeys(row["version"] for row in rows))
    by_case: dict[str, dict[str, float]] = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["version"]] = row["graph_ms"]
    lines = [
        "| case | " + " | ".join(f"{v} ms (graph)" for v in versions) + " |",
        "|---|" + "---|" * len(versions),
    ]
    lines += [f"| {case} | " + " | ".join(f"{t[v]:.4f}" for v in versions) + " |" for case, t in by_case.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", required=True, choices=OPS)
    parser.add_argument("--baseline", type=Path, nargs="+", required=True, help="copies of eagle_ops/lowering/OP.py")
    parser.add_argument("--label", nargs="+", help="the baselines' names in the rows (default: their file names)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    labels = args.label or [path.stem for path in args.baseline]
    if len(labels) != len(args.baseline) or len(set(labels)) != len(labels):
        parser.error(f"--label: one distinct name per baseline ({len(args.baseline)}), got {labels}")
    baselines = {label: load_lowering(path, args.op, label) for label, path in zip(labels, args.baseline, strict=True)}
    if not torch.cuda.is_available():
        sys.exit("benchmarks.compare_revisions needs a CUDA device")
    args.out.mkdir(parents=True, exist_ok=True)
    run(args.op, baselines, args.out)


if __name__ == "__main__":
    main()
