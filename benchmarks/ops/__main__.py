"""Time every op's lowering against its eager reference (and extra baselines) on the GPU.

    python -m benchmarks.ops [--ops topk_expand,tree_attention] [--out benchmarks/results]

Each case is checked for agreement before it is timed. Rows go to ``<out>/ops.csv`` (appended) and a Markdown
table of this run to ``<out>/ops.md``, both as each case finishes, so that a run stopped by a time limit keeps the
cases it measured.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path

import torch

from benchmarks.harness import read_bandwidth_gbps, stamp, time_graph_ms, time_ms, write_csv

OPS = ("topk_expand", "build_tree", "tree_mask", "tree_attention", "posterior_greedy", "posterior_sample", "kv_copy_")


def run(ops: list[str], out: Path) -> list[dict]:
    stamped = stamp()
    bandwidth = read_bandwidth_gbps()
    print(f"{stamped['device']}: measured read bandwidth {bandwidth:.0f} GB/s", flush=True)
    rows = []
    for op in ops:
        module = importlib.import_module(f"benchmarks.ops.{op}")
        for case in module.cases("cuda"):
            case.check()
            floor_ms = case.bytes_min / (bandwidth * 1e9) * 1e3
            for method, fn in case.candidates.items():
                p20, median, p80 = time_ms(fn)
                _, graph_median, _ = time_graph_ms(fn)
                row = {
                    "op": case.op,
                    "case": case.label,
                    "method": method,
                    "median_ms": round(median, 4),
                    "p20_ms": round(p20, 4),
                    "p80_ms": round(p80, 4),
                    "graph_ms": round(graph_median, 4),
                    "floor_ms": round(floor_ms, 6),
                    "x_floor": round(graph_median / floor_ms, 2),
                    "read_gbps": round(bandwidth),
                } | stamped
                rows.append(row)
                print(
                    f"{case.op:18s} {case.label:34s} {method:10s} {median:9.4f} ms per call, "
                    f"{graph_median:9.4f} ms in a graph, {graph_median / floor_ms:8.2f}x floor"
                )
            write_csv(out / "ops.csv", rows[-len(case.candidates) :])
            (out / "ops.md").write_text(markdown_table(rows))
            torch.cuda.empty_cache()
    return rows


def markdown_table(rows: list[dict]) -> str:
    """One line per case: every method's median per call and in a graph, triton's speedups, the floor.

    A speedup in a graph is "n/a" where the reference cannot be captured (its graph time is NaN).
    """
    cases: dict[tuple[str, str], dict[str, dict]] = {}
    for row in rows:
        cases.setdefault((row["op"], row["case"]), {})[row["method"]] = row
    methods = sorted({row["method"] for row in rows}, key=lambda m: (m != "reference", m != "triton", m))
    header = ["op", "case", *[f"{m} ms call / graph" for m in methods], "triton speedup, call / graph", "floor ms"]
    header.append("triton graph / floor")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (op, label), by_method in cases.items():
        triton, reference = by_method.get("triton"), by_method.get("reference")
        speedup = ""
        if triton and reference:
            speedup = f"{_ratio(reference['median_ms'], triton['median_ms'])} / "
            speedup += _ratio(reference["graph_ms"], triton["graph_ms"])
        any_row = next(iter(by_method.values()))
        cells = [op, label]
        cells += [
            f"{by_method[m]['median_ms']:.4f} / {by_method[m]['graph_ms']:.4f}" if m in by_method else ""
            for m in methods
        ]
        cells += [speedup, f"{any_row['floor_ms']:.4g}", f"{triton['x_floor']:.2f}x" if triton else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ratio(baseline_ms: float, ms: float) -> str:
    ratio = baseline_ms / ms
    return f"{ratio:.1f}x" if math.isfinite(ratio) else "n/a"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated op names")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.ops needs a CUDA device")
    run(args.ops.split(","), args.out)


if __name__ == "__main__":
    main()
