"""benchmarks.ops: a run stopped part-way (a time limit, a failing check) keeps the cases it measured."""

import csv
import types

import pytest

import benchmarks.ops.__main__ as ops_main
from benchmarks.harness import Case


def case(label: str, fail: bool = False) -> Case:
    def check() -> None:
        if fail:
            raise AssertionError(f"{label} disagrees")

    return Case(op="fake", label=label, candidates={"reference": lambda: None, "triton": lambda: None}, check=check,
                bytes_min=10**6)  # fmt: skip


def test_rows_reach_the_files_as_each_case_finishes(tmp_path, monkeypatch):
    fake_op = types.SimpleNamespace(cases=lambda device: [case("first"), case("second", fail=True)])
    monkeypatch.setattr(ops_main, "importlib", types.SimpleNamespace(import_module=lambda name: fake_op))
    monkeypatch.setattr(ops_main, "read_bandwidth_gbps", lambda: 1000.0)
    monkeypatch.setattr(ops_main, "time_ms", lambda fn: (1.0, 2.0, 3.0))
    monkeypatch.setattr(ops_main, "time_graph_ms", lambda fn: (0.5, 1.0, 1.5))
    with pytest.raises(AssertionError, match="second disagrees"):
        ops_main.run(["fake"], tmp_path)
    with (tmp_path / "ops.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["method"]) for r in rows] == [("first", "reference"), ("first", "triton")]
    assert "| fake | first |" in (tmp_path / "ops.md").read_text()


def test_table_gives_call_and_graph_speedups_and_na_for_an_uncapturable_reference():
    def row(method: str, median_ms: float, graph_ms: float) -> dict:
        return {"op": "fake", "case": "c", "method": method, "median_ms": median_ms, "graph_ms": graph_ms,
                "floor_ms": 0.00021, "x_floor": round(graph_ms / 0.00021, 2)}  # fmt: skip

    table = ops_main.markdown_table([row("reference", 2.0, float("nan")), row("triton", 0.5, 0.01)])
    assert "| 4.0x / n/a | 0.00021 | 47.62x |" in table
    table = ops_main.markdown_table([row("reference", 2.0, 0.3), row("triton", 0.5, 0.1)])
    assert "| 4.0x / 3.0x |" in table
