"""``eagle-ops bench NAME [args...]`` runs ``benchmarks.NAME`` with the arguments; without a name it lists them."""

import json

import pytest

from model.cli import main

RUNNABLE = {
    "acceptance",
    "baselines",
    "compare_revisions",
    "e2e",
    "ops",
    "profile_step",
    "soak",
    "step_check",
    "sweep_topk_expand",
}
# The listing test imports every benchmark into this process, so runpy warns when it runs one again; a real
# `eagle-ops bench NAME` process imports it once.
RERUN = pytest.mark.filterwarnings("ignore:'benchmarks.soak' found in sys.modules:RuntimeWarning")


def test_bench_without_a_name_lists_the_benchmarks(capsys):
    assert main(["bench"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.split("benchmarks (", 1)[1].splitlines()[1:] if line.strip()}
    assert listed == RUNNABLE  # the helpers (harness, plots) have no main


def test_bench_help_lists_the_benchmarks(capsys):
    assert main(["bench", "--help"]) == 0
    assert "soak " in capsys.readouterr().out


@RERUN
def test_bench_passes_the_arguments_on(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "soak", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: eagle-ops bench soak")


def test_bench_refuses_an_unknown_name(capsys):
    assert main(["bench", "no_such_benchmark"]) == 2
    assert "no benchmark 'no_such_benchmark'" in capsys.readouterr().err


@RERUN
@pytest.mark.slow
def test_soak_smoke_run_on_the_cpu(tmp_path):
    """The soak script end to end on the embedded model, eager step, two calls of 16 tokens for 2 sequences."""
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "soak", "--device", "cpu", "--batch", "2", "--tokens", "16", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "soak.json").read_text())
    assert exit_.value.code == 0, summary["problems"]
    assert summary["ok"] and summary["problems"] == []
    assert summary["new_tokens_per_sequence"] >= 16
    assert summary["calls_after_warm_up"] == len(summary["calls"]) >= 1
    assert all(call["same_tokens_as_warm_up"] for call in summary["calls"])
    assert (tmp_path / "soak.md").read_text().count("\n| 2 | K=4 D=4 T=16 |") == 1
