from pathlib import Path

import pytest

import eagle_ops.lowering.posterior_sample as shipped
import eagle_ops.lowering.tree_attention as shipped_attention
from benchmarks.compare_revisions import load_lowering, main, markdown_table


def test_a_baseline_loads_as_a_module_of_its_own():
    baseline = load_lowering(Path(shipped.__file__), "posterior_sample")
    assert baseline.posterior_sample_triton is not shipped.posterior_sample_triton
    assert baseline.posterior_sample_kernel_rows is not shipped.posterior_sample_kernel_rows


def test_baselines_load_as_modules_of_their_own():
    first, second = (load_lowering(Path(shipped.__file__), "posterior_sample", label) for label in ("a", "b"))
    assert first.posterior_sample_triton is not second.posterior_sample_triton


@pytest.mark.parametrize("labels", [["a"], ["a", "a"]], ids=["too few", "twice the same"])
def test_baseline_labels_must_name_each_baseline_once(labels, capsys):
    path = shipped.__file__
    with pytest.raises(SystemExit):
        main(["--op", "posterior_sample", "--baseline", path, path, "--label", *labels])
    assert "one distinct name per baseline (2)" in capsys.readouterr().err


def test_a_baseline_with_dataclasses_loads():
    baseline = load_lowering(Path(shipped_attention.__file__), "tree_attention")
    assert baseline._LaunchConfig is not shipped_attention._LaunchConfig


def test_a_baseline_without_the_lowering_is_refused(tmp_path):
    other = tmp_path / "other.py"
    other.write_text("def tree_mask_triton(): pass\n")
    with pytest.raises(ValueError, match="defines no posterior_sample_triton"):
        load_lowering(other, "posterior_sample")


def test_the_table_has_a_column_per_version():
    rows = [
        {"case": "B=1", "version": "reference", "graph_ms": 2.0},
        {"case": "B=1", "version": "work tree", "graph_ms": 1.0},
        {"case": "B=1", "version": "a040e00", "graph_ms": 1.5},
    ]
    assert markdown_table(rows).splitlines() == [
        "| case | reference ms (graph) | work tree ms (graph) | a040e00 ms (graph) |",
        "|---|---|---|---|",
        "| B=1 | 2.0000 | 1.0000 | 1.5000 |",
    ]
