"""The topk_expand plan sweep: its plans fit the kernel, and a swept launch agrees with the reference."""

import torch

from benchmarks.ops.topk_expand import TopkExpandSizes
from benchmarks.sweep_topk_expand import CHUNKS, agrees, inputs, plans, run_plan
from eagle_ops.reference.topk_expand import topk_expand_reference
from eagle_ops.topk_expand import Expansion
from tests.support import DEVICE


def test_plans_hold_8_to_64_logits_per_thread():
    for batch in CHUNKS:
        swept = list(plans(batch))
        assert swept
        assert all(8 <= tile // (32 * warps) <= 64 and chunks in CHUNKS[batch] for _, tile, warps, chunks in swept)


def test_a_swept_plan_agrees_with_the_reference():
    sizes = TopkExpandSizes(frontier=3, k=4, target_vocab=600)
    args = inputs(2, 300, True, sizes, DEVICE.type, torch.Generator().manual_seed(0))
    want = Expansion(*topk_expand_reference(*args))
    assert agrees(run_plan(args, row_bytes=4, tile=32, warps=1, chunks=3), want)
