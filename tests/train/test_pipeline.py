"""Every training stage at toy size, through the same commands the real run uses, on a small fake stdlib."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from model.checkpoint import load_head
from train.data import collect, is_validation, split
from train.gpu_all import pack

REPO = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRAIN_MODULES = ["textwrap.py", "string.py", "bisect.py", "heapq.py", "fnmatch.py", "glob.py", "shlex.py", "queue.py"]
VAL_MODULES = ["getopt.py", "secrets.py"]  # validation by the hash rule
EXCLUDED = ["test/test_x.py", "email/tests/test_y.py", "idlelib/idle_test/z.py", "site-packages/pkg/w.py"]


@pytest.fixture(scope="module")
def fake_stdlib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stdlib")
    for name in TRAIN_MODULES + VAL_MODULES:
        (root / name).write_text((STDLIB / name).read_text(encoding="utf-8"), encoding="utf-8")
    for name in EXCLUDED:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("excluded = True\n")
    (root / "latin1.py").write_bytes(b"s = '\xe9'\n")
    return root


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_holdout_rule_and_exclusions(fake_stdlib: Path) -> None:
    assert all(is_validation(m) for m in VAL_MODULES) and not any(is_validation(m) for m in TRAIN_MODULES)
    train, val = split(collect(fake_stdlib))
    assert [d.path for d in train] == sorted(TRAIN_MODULES)
    assert [d.path for d in val] == sorted(VAL_MODULES)


def test_pack_splits_and_reassembles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "thing"
    folder.mkdir()
    (folder / "a.bin").write_bytes(bytes(range(256)) * 40)
    (folder / "b.json").write_text("{}")
    monkeypatch.setattr("train.gpu_all.PART_BYTES", 4096)
    out = tmp_path / "out"
    out.mkdir()
    parts = pack(folder, out)
    assert len(parts) > 1 and all(p.stat().st_size <= 4096 for p in parts)
    (tmp_path / "whole.tar").write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(tmp_path / "whole.tar") as tar:
        assert tar.getnames() == ["thing/a.bin", "thing/b.json"]
        assert tar.extractfile("thing/a.bin").read() == bytes(range(256)) * 40


def test_all_stages_at_toy_size(fake_stdlib: Path, tmp_path: Path) -> None:
    data, tokenizer, work, out = tmp_path / "data", tmp_path / "tokenizer", tmp_path / "work", tmp_path / "out"
    run("train.data", "--stdlib", str(fake_stdlib), "--out", str(data))
    run("train.tokenizer", "--data", str(data), "--vocab-size", "512", "--tokenizer-out", str(tokenizer))
    stats = json.loads((data / "tokens.json").read_text())
    assert stats["vocab_size"] == 512 and stats["val"]["tokens"] > 1000

    log = run("train.gpu_all", str(out), "--data", str(data), "--tokenizer", str(tokenizer), "--work", str(work),
              "--toy")  # fmt: skip
    assert "== summary ==" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eagle3"]["args"]["ttt_steps"] == 7 and len(summary["eagle3"]["val_top1_per_step"]) == 7
    assert summary["eagle1"]["args"]["ttt_steps"] == 1

    # The stages' own commands, reading what the run above left in `work`.
    run("train.target", "--toy", "--max-steps", "2", "--data", str(data), "--tokenizer", str(tokenizer),
        "--out", str(tmp_path / "target2"))  # fmt: skip
    run("train.heads", "--kind", "eagle1", "--toy", "--max-steps", "2", "--target", str(work / "target"),
        "--data", str(data), "--out", str(tmp_path / "eagle1b"))  # fmt: skip

    unpacked = tmp_path / "default"
    unpacked.mkdir()
    for stage in ("target", "eagle3", "eagle1"):
        whole = tmp_path / f"{stage}.tar"
        whole.write_bytes(b"".join(p.read_bytes() for p in sorted(out.glob(f"{stage}.tar.*"))))
        with tarfile.open(whole) as tar:
            tar.extractall(unpacked, filter="data")
    target_dir = unpacked / "target"
    tok = AutoTokenizer.from_pretrained(str(target_dir))
    model = AutoModelForCausalLM.from_pretrained(str(target_dir))
    assert model.config.num_hidden_layers == 8 and tok.eos_token_id == model.config.eos_token_id
    prompt = tok("def main():\n", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt.input_ids.shape[1] + 4
    eagle3 = load_head(unpacked / "eagle3", target_config=model.config, dtype=torch.float32, device="cpu")
    eagle1 = load_head(unpacked / "eagle1", target_config=model.config, dtype=torch.float32, device="cpu")
    assert eagle3.config.draft_vocab_size == 256 and eagle1.config.kind == "eagle1"
    draft_ids = torch.arange(256) + eagle3.d2t
    assert bool((draft_ids.diff() > 0).all()) and torch.equal(eagle3.t2d.nonzero().flatten(), draft_ids)
