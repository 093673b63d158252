"""The failing gpu-profile example of test_lowering_matches_reference[rows of one logit], on CUDA: reference on CPU
and CUDA, session 6's lowering and now, level scores as bits."""
import importlib.util, sys
from unittest import mock
import torch
from tests.ops.test_topk_expand import Level
from eagle_ops.reference.topk_expand import topk_expand_reference

lvl = Level(batch=1, frontier=2, vocab=153, k=1, dtype=torch.float32, with_d2t=False, logits="ties", dead_node=False, seed=0)
args = lvl.inputs()
print("input device", args[0].device)
cpu = [t.cpu() if isinstance(t, torch.Tensor) else t for t in args]
cuda = [t.cuda() if isinstance(t, torch.Tensor) else t for t in args]
for name, a in (("ref cpu", cpu), ("ref cuda", cuda)):
    out = topk_expand_reference(*a)
    print(name, out[0].view(torch.int32).tolist(), "next_parent", out[4].tolist())
for path in ("runs/topk_expand_main6.py", "eagle_ops/lowering/topk_expand.py"):
    spec = importlib.util.spec_from_file_location("m" + str(len(path)), path); m = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = m; spec.loader.exec_module(m)
    with mock.patch.multiple(m, ROW_BYTES=1, MAX_TILE=16, TARGET_PROGRAMS=1, MAX_TILES_PER_CHUNK=64):
        out = m.topk_expand_triton(*cuda)
    print(path, out[0].view(torch.int32).tolist(), "next_parent", out[4].tolist())
    with mock.patch.multiple(m, MAX_TILE=4096):
        out = m.topk_expand_triton(*cuda)
    print(path, "shipped", out[0].view(torch.int32).tolist(), "next_parent", out[4].tolist())
