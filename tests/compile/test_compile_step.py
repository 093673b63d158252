"""The decode step compiled whole: one dynamo graph, no host sync, and inductor's code emits eager's tokens."""

from __future__ import annotations

import contextlib

import pytest
import torch

from eagle_ops import triton_on_cpu
from model.config import DynamicTree, StaticTree
from model.eagle_model import EagleModel
from model.graph import WARMUP_STEPS, compile_step
from tests.model.tiny import save_random_head, save_target
from tests.support import DEVICE, assert_exact, assert_no_host_sync, traced_aten_graph

PROMPTS = [[5, 17, 3, 88, 41, 9, 60], [12, 7]]
DYNAMIC = DynamicTree(top_k=2, depth=2, tree_size=6)
STATIC = StaticTree([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]])
CONFIGS = pytest.mark.parametrize(
    ("kind", "tree"),
    [("eagle1", DYNAMIC), ("eagle3", DYNAMIC), ("eagle1", STATIC)],
    ids=["eagle1-dynamic", "eagle3-dynamic", "eagle1-static"],
)
SAMPLING = pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampling"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")
    save_target(root / "target", layers=3)  # the fewest EAGLE-3 allows: fewer layers, faster inductor builds
    for kind in ("eagle1", "eagle3"):
        save_random_head(root / kind, kind)
    return root


def load(folder, kind: str, tree, device: torch.device = DEVICE) -> EagleModel:
    return EagleModel.from_pretrained(
        folder / "target",
        folder / kind,
        tree=tree,
        max_batch_size=2,
        max_seq_len=64,
        dtype=torch.float32,
        device=device,
    )


def start(model: EagleModel, *, sampling: bool) -> None:
    """Configure and prefill the two prompts, as eagenerate does before its first step."""
    model.configure(2, max_new_tokens=40, temperature=1.0 if sampling else 0.0, top_k=0, top_p=1.0, eos_token_ids=[])
    ids = torch.zeros(2, max(map(len, PROMPTS)), dtype=torch.long)
    for i, p in enumerate(PROMPTS):
        ids[i, : len(p)] = torch.tensor(p)
    if sampling:
        model.draw_coins(torch.Generator(model.device).manual_seed(0))
    model.prefill(ids.to(model.device), torch.tensor([len(p) for p in PROMPTS], device=model.device))


def original_step(model: EagleModel):
    return type(model).eagenerate_step.__get__(model)


@CONFIGS
@SAMPLING
def test_dynamo_traces_the_step_as_one_graph(folder, kind, tree, sampling):
    model = load(folder, kind, tree)
    start(model, sampling=sampling)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(original_step(model))()
    reasons = [f"{r.reason} at {r.user_stack[-1] if r.user_stack else '?'}" for r in explained.break_reasons]
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), f"graph breaks: {reasons}"


@CONFIGS
@SAMPLING
def test_the_traced_step_has_no_host_sync(folder, kind, tree, sampling):
    model = load(folder, kind, tree)
    start(model, sampling=sampling)
    assert_no_host_sync(traced_aten_graph(original_step(model)))


@pytest.fixture(scope="module")
def compiled(folder):
    """An EAGLE-3 model and its inductor-compiled step, captured on CUDA (compiled on first use, then shared)."""
    torch._dynamo.reset()
    model = load(folder, "eagle3", DYNAMIC)
    return model, compile_step(model)


def run_steps(model: EagleModel, step, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    start(model, sampling=False)
    return [tuple(t.clone() for t in step()) for _ in range(steps)]


def integer_state(model: EagleModel) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers() if not b.dtype.is_floating_point}


def lowering_context(lowerings: bool) -> contextlib.AbstractContextManager:
    """Where the registered ops run their Triton lowerings (CUDA tensors always do)."""
    if DEVICE.type == "cuda":
        if not lowerings:
            pytest.skip("CUDA tensors always run the lowerings")
        return contextlib.nullcontext()
    return triton_on_cpu() if lowerings else contextlib.nullcontext()


@pytest.mark.parametrize("lowerings", [False, True], ids=["reference", "triton"])
def test_inductor_step_emits_the_eager_tokens(compiled, lowerings):
    model, step = compiled
    # On CUDA: the warm-up steps, the capture and a replay. The Triton interpreter is slow: fewer steps on the CPU.
    steps = 2 if lowerings and DEVICE.type == "cpu" else WARMUP_STEPS + 2
    with lowering_context(lowerings):
        eager = run_steps(model, original_step(model), steps)
        eager_state = integer_state(model)
        ours = run_steps(model, step, steps)
    for i, ((tokens, counts), (want_tokens, want_counts)) in enumerate(zip(ours, eager, strict=True)):
        assert_exact(f"step {i} tokens", tokens, want_tokens)
        assert_exact(f"step {i} counts", counts, want_counts)
    for name, value in integer_state(model).items():
        assert_exact(name, value, eager_state[name])


def test_the_compiled_step_drives_eagenerate(compiled):
    model, step = compiled
    eager = model.eagenerate(PROMPTS, max_new_tokens=12)
    model.eagenerate_step = step  # what EagleModel.compile does: the instance attribute shadows the method
    try:
        ours = model.eagenerate(PROMPTS, max_new_tokens=12)
    finally:
        del model.eagenerate_step
    assert ours.tokens == eager.tokens and ours.accept_histogram == eager.accept_histogram
    assert ours.steps == eager.steps > 1


def test_compile_step_refuses_what_it_cannot_do(folder):
    model = load(folder, "eagle3", DYNAMIC, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="reduce-overhead"):
        compile_step(model, mode="reduce-overhead")
    with pytest.raises(ValueError, match="CUDA"):
        compile_step(model, capture=True)
    with pytest.raises(RuntimeError, match="prefill"):
        compile_step(model)()


def test_the_compiled_step_writes_the_kv_cache_in_place(folder):
    """Inductor's code for the step allocates no second KV cache: a write through views of the cache beside the
    in-place ``kv_copy_`` used to make it copy the whole cache every layer and copy it back at the end."""
    from torch._inductor.utils import run_and_get_code

    model = load(folder, "eagle3", DYNAMIC)
    start(model, sampling=False)
    torch._dynamo.reset()
    _, codes = run_and_get_code(torch.compile(original_step(model), fullgraph=True))
    sizes = {model.target_cache.storage.numel(), model.drafter.cache.storage.numel()}
    allocations = [line for code in codes for line in code.splitlines() if "empty_strided" in line]
    whole = [line.strip() for line in allocations if any(f"(({n}, )" in line or f"(({n},)" in line for n in sizes)]
    assert allocations, "no allocation found in inductor's code: the check would pass vacuously"
    assert not whole, f"the compiled step allocates a buffer the size of a KV cache: {whole}"
