"""The decode step's static-shape promises, its building blocks, streaming and statistics."""

from __future__ import annotations

import pytest
import torch

from model.cache import KVCache
from model.config import DynamicTree, StaticTree
from model.eagle_model import EagleModel
from model.step import static_levels, stop_tokens
from tests.model.tiny import greedy_reference, save_random_head, save_target
from tests.support import assert_close_rel, assert_exact, assert_no_host_sync, traced_aten_graph

PROMPTS = [[5, 17, 3, 88, 41, 9, 60], [12, 7]]
STATIC = StaticTree([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("step")
    target = save_target(root / "target")
    for kind in ("eagle1", "eagle3"):
        save_random_head(root / kind, kind)
    return root, target


def load(root, kind: str, tree) -> EagleModel:
    return EagleModel.from_pretrained(
        root / "target", root / kind, tree=tree, max_batch_size=2, max_seq_len=64, dtype=torch.float32, device="cpu"
    )


def start(model: EagleModel, *, temperature: float = 0.0, speculative: bool = True) -> None:
    """What eagenerate does before its first step."""
    model.configure(2, max_new_tokens=40, temperature=temperature, top_k=0, top_p=1.0, eos_token_ids=[])
    ids = torch.zeros(2, max(map(len, PROMPTS)), dtype=torch.long)
    for i, p in enumerate(PROMPTS):
        ids[i, : len(p)] = torch.tensor(p)
    if model.sampling:
        model.draw_coins(torch.Generator().manual_seed(0))
    model.prefill(ids, torch.tensor([len(p) for p in PROMPTS]), draft=speculative)


def snapshot(model: EagleModel) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


def restore(model: EagleModel, state: dict[str, torch.Tensor]) -> None:
    for name, b in model.named_buffers():
        b.copy_(state[name])


@pytest.mark.parametrize("method", ["eagenerate_step", "target_step"])
@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampling"])
@pytest.mark.parametrize(
    ("kind", "tree"),
    [("eagle1", DynamicTree(top_k=2, depth=2, tree_size=6)), ("eagle3", DynamicTree(top_k=2, depth=2, tree_size=6)),
     ("eagle1", STATIC)],
    ids=["eagle1-dynamic", "eagle3-dynamic", "eagle1-static"],
)  # fmt: skip
def test_the_step_compiles_whole_without_host_syncs(root, kind, tree, sampling, method):
    model = load(root[0], kind, tree)
    start(model, temperature=1.0 if sampling else 0.0, speculative=method == "eagenerate_step")
    before = snapshot(model)
    getattr(model, method)()
    eager = snapshot(model)
    restore(model, before)
    graph = traced_aten_graph(getattr(model, method))  # one graph, fullgraph=True; runs the step once
    assert_no_host_sync(graph)
    for name, value in snapshot(model).items():
        if value.dtype.is_floating_point:
            # The traced graph runs the same ATen ops in the same order; only decompositions may reassociate.
            assert_close_rel(name, value, eager[name], 1e-5)
        else:
            assert_exact(name, value, eager[name])


def test_stop_tokens():
    emitted = torch.tensor([[4, 9, 7, -1], [4, 9, 7, 1], [4, 9, 7, 1], [3, 3, 3, -1]])
    emit_len = torch.tensor([3, 4, 4, 3])
    active = torch.tensor([True, True, True, False])
    generated = torch.tensor([0, 0, 8, 0])
    max_new = torch.tensor([10, 10, 10, 10])
    eos = torch.tensor([9, -1])
    tokens, counts, finished = stop_tokens(emitted, emit_len, active, generated, max_new, eos)
    # 0: stops at its EOS; 1: likewise; 2: two tokens left before max_new; 3: already finished.
    assert tokens.tolist() == [[4, 9, -1, -1], [4, 9, -1, -1], [4, 9, -1, -1], [-1, -1, -1, -1]]
    assert counts.tolist() == [2, 2, 2, 0]
    assert finished.tolist() == [True, True, True, False]
    _, counts, finished = stop_tokens(emitted, emit_len, active, generated, max_new, torch.tensor([-1]))
    assert counts.tolist() == [3, 4, 2, 0] and finished.tolist() == [False, False, True, False]


def test_cache_views_are_contiguous_prefixes_of_one_buffer():
    cache = KVCache(3, 4, 2, 16, 8, dtype=torch.float32, device="cpu")
    small, full = cache.view(2), cache.view(4)
    assert small.shape == (3, 2, 2, 2, 16, 8) and small.is_contiguous() and full.is_contiguous()
    assert small.data_ptr() == full.data_ptr() == cache.storage.data_ptr()


def test_static_levels():
    first, second, third = static_levels(STATIC, "cpu")
    assert (first.ranks, first.child_pick.tolist(), first.forward_pick.tolist(), first.offset) == (2, [0, 1], [0, 1], 0)
    assert first.mask.tolist() == [[True, False], [False, True]]
    assert (second.ranks, second.child_pick.tolist(), second.forward_pick.tolist()) == (2, [0, 1, 2], [0])
    assert (second.forward_parent.tolist(), second.offset, second.mask.tolist()) == ([0], 2, [[True, False, True]])
    assert (third.ranks, third.child_pick.tolist(), third.forward_pick.numel(), third.mask.shape) == (1, [0], 0, (0, 3))
    assert STATIC.parents() == [-1, 0, 0, 1, 1, 2, 3]


class RecordingStreamer:
    def __init__(self) -> None:
        self.puts: list[list[int]] = []
        self.ended = 0

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(value.tolist())

    def end(self) -> None:
        self.ended += 1


@pytest.mark.parametrize("read_every", [1, 3])
def test_streaming_and_statistics(root, read_every):
    folder, target = root
    model = load(folder, "eagle1", DynamicTree(top_k=2, depth=2, tree_size=6))
    streamer = RecordingStreamer()
    result = model.eagenerate([PROMPTS[0]], max_new_tokens=20, streamer=streamer, read_every=read_every)
    assert result.tokens == [greedy_reference(target, PROMPTS[0], 20)]
    assert streamer.puts[0] == PROMPTS[0] and streamer.ended == 1
    assert [t for chunk in streamer.puts[1:] for t in chunk] == result.tokens[0]
    assert len(streamer.puts) > 2  # tokens arrive while decoding, not all at the end
    steps_taken = sum(result.accept_histogram)
    assert steps_taken <= result.steps
    tau = sum((a + 1) * n for a, n in enumerate(result.accept_histogram)) / steps_taken
    assert result.mean_accepted == pytest.approx(tau)
    assert result.new_tokens == 20 and result.prefill_seconds > 0 and result.tokens_per_second > 0
