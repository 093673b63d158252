"""Tensor parallel on the CPU: two gloo processes shard the target with the plan transformers ships and emit
exactly the tokens of one process holding the whole model.

float32 and a target whose greedy choices are clear (``tiny.make_target``), so that summing the ranks' partial
products in another order cannot flip an argmax.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM

from model.config import DynamicTree, StaticTree
from model.eagle_model import EagleModel
from tests.model.tiny import KV_HEADS, save_random_head, save_target

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with the gloo backend"
)

WORLD = 2
PROMPTS = [[5, 17, 3, 88, 41, 9, 60], [12, 7, 33]]
NEW_TOKENS = 24
TREES = {
    "eagle3": DynamicTree(top_k=4, depth=2, tree_size=12),
    "eagle1": StaticTree([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]]),
}


def load(root, head: str, target: str = "target", **options) -> EagleModel:
    options = {"device": "cpu"} | options
    return EagleModel.from_pretrained(
        root / target, root / head, tree=TREES[head], max_batch_size=len(PROMPTS), max_seq_len=96, dtype=torch.float32,
        **options,
    )  # fmt: skip


def rank_main(rank: int, root) -> None:
    """One rank: greedy and sampled generation with each head, checking after each run that the ranks agree, then
    one disagreement on purpose and a wrong device; writes what it saw to ``rank<r>.json``."""
    torch.set_num_threads(1)
    store = f"file://{root / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        report = {}
        for head in TREES:
            model = load(root, head, tp_plan="auto")
            k_proj = model.target.model.model.layers[0].self_attn.k_proj.weight
            report[head] = {
                "tokens": model.eagenerate(PROMPTS, max_new_tokens=NEW_TOKENS).tokens,
                "cache_kv_heads": model.target_cache.shape[3],
                "k_proj_local_rows": k_proj.to_local().shape[0],
            }
            model.check_ranks_agree()
            sampled = model.eagenerate(PROMPTS, max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=0.9, seed=7)
            report[head]["sampled"] = sampled.tokens
            model.check_ranks_agree()
        if rank == 1:
            model.out_tokens[1, 4] += 1
        with pytest.raises(RuntimeError) as disagreement:
            model.check_ranks_agree()
        report["disagreement"] = str(disagreement.value)
        with pytest.raises(ValueError) as wrong_device:
            load(root, "eagle3", tp_plan="auto", device="cuda")
        report["wrong_device"] = str(wrong_device.value)
        (root / f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def test_two_ranks_emit_the_single_process_tokens(tmp_path):
    target = save_target(tmp_path / "target")
    for head in TREES:
        save_random_head(tmp_path / head, head)
    mp.spawn(rank_main, args=(tmp_path,), nprocs=WORLD)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    head_dim = target.config.head_dim
    for head in TREES:
        expected = load(tmp_path, head).eagenerate(PROMPTS, max_new_tokens=NEW_TOKENS).tokens
        for rank, report in enumerate(reports):
            got = report[head]
            assert got["cache_kv_heads"] == KV_HEADS // WORLD, f"rank {rank} caches {got['cache_kv_heads']} heads"
            assert got["k_proj_local_rows"] == KV_HEADS // WORLD * head_dim, f"rank {rank}: k_proj is not sharded"
            for i, want in enumerate(expected):
                assert got["tokens"][i] == want, f"{head}, rank {rank}, sequence {i}: {got['tokens'][i]} != {want}"
        # Sampling: the ranks draw the same coins and see the same gathered logits, so they sample alike.
        assert reports[1][head]["sampled"] == reports[0][head]["sampled"]
    last = reports[0]["eagle1"]["sampled"][1][4]  # out_tokens[1, 4] of the last run, which rank 1 then changed
    for report in reports:
        assert report["disagreement"] == (
            f"tensor-parallel ranks disagree: out_tokens: rank 1 differs from rank 0 at 1 elements "
            f"([1, 4] {last} vs {last + 1})"
        )
        assert report["wrong_device"] == "device cuda is not this rank's device cpu, where transformers put it"


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """A target folder holding only its config (2 query heads, 1 key/value head), a head, and no way to load
    weights."""
    save_target(tmp_path / "target")
    config = json.loads((tmp_path / "target" / "config.json").read_text())
    (tmp_path / "uneven").mkdir()
    uneven = config | {"num_attention_heads": 2, "num_key_value_heads": 1}
    (tmp_path / "uneven" / "config.json").write_text(json.dumps(uneven))
    save_random_head(tmp_path / "eagle3", "eagle3")

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the request was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    return tmp_path


def fake_world(monkeypatch, size: int) -> None:
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: size)


@pytest.mark.parametrize(
    ("world", "target", "plan", "message"),
    [
        (None, "target", "auto", "tp_plan needs torch.distributed initialised first"),
        (1, "target", "auto", "tp_plan needs more than one process; torch.distributed's world size is 1"),
        (2, "target", "colwise", "tp_plan must be None or 'auto'"),
        (2, "uneven", "auto", "the target's num_key_value_heads 1 do not divide by the world size 2"),
        (4, "uneven", "auto", "the target's num_attention_heads 2 and num_key_value_heads 1 do not divide by the wor"),
    ],
)
def test_a_plan_is_checked_before_loading(folders, monkeypatch, world, target, plan, message):
    if world is not None:
        fake_world(monkeypatch, world)
    with pytest.raises(ValueError, match=message):
        load(folders, "eagle3", target, tp_plan=plan)


def test_check_ranks_agree_needs_a_sharded_model(tmp_path):
    save_target(tmp_path / "target")
    save_random_head(tmp_path / "eagle3", "eagle3")
    model = load(tmp_path, "eagle3")
    model.eagenerate(PROMPTS, max_new_tokens=2)
    with pytest.raises(RuntimeError, match="this model is not sharded"):
        model.check_ranks_agree()
