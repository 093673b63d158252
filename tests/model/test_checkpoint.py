"""The official EAGLE head format: configs, key names, both file types, strict loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import PYTORCH_FILE, SAFETENSORS_FILE, load_head, save_head
from model.config import DynamicTree
from model.eagle_model import EagleModel
from model.heads import Eagle1Head, Eagle3Head, HeadConfig, make_head
from tests.model.tiny import greedy_reference, head_config, save_random_head, save_target

# The key names of SafeAILab/EAGLE's cnets1.Model (EAGLE-1/2, one layer, fc bias) and cnets.Model (EAGLE-3).
EAGLE1_KEYS = {
    "fc.weight",
    "fc.bias",
    *(f"layers.0.self_attn.{p}_proj.weight" for p in "qkvo"),
    *(f"layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
    "layers.0.post_attention_layernorm.weight",
}
EAGLE3_KEYS = {
    "fc.weight",
    *(f"midlayer.self_attn.{p}_proj.weight" for p in "qkvo"),
    *(f"midlayer.mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
    "midlayer.hidden_norm.weight",
    "midlayer.input_layernorm.weight",
    "midlayer.post_attention_layernorm.weight",
    "norm.weight",
    "lm_head.weight",
    "d2t",
    "t2d",
}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoint")
    return root, save_target(root / "target")


def test_official_configs_parse():
    # Fields as in the official EAGLE-1 LLaMA3 head config (eagle/train/EAGLE-LLaMA3-Instruct-8B).
    eagle1 = HeadConfig.from_dict(
        {
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "num_hidden_layers": 1,
            "rms_norm_eps": 1e-05,
            "vocab_size": 128256,
            "rope_theta": 500000.0,
            "bias": False,
            "torch_dtype": "float16",
        }
    )
    assert (eagle1.kind, eagle1.head_dim, eagle1.fc_bias, eagle1.rope_theta) == ("eagle1", 128, False, 500000.0)
    assert eagle1.draft_vocab_size == eagle1.vocab_size == 128256
    # Fields as in the official EAGLE-3 training config (eagle/traineagle3/config.json).
    eagle3 = HeadConfig.from_dict(
        {
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "num_hidden_layers": 1,
            "vocab_size": 128256,
            "draft_vocab_size": 32000,
        }
    )
    assert (eagle3.kind, eagle3.draft_vocab_size, eagle3.target_hidden_size, eagle3.rms_norm_eps) == (
        "eagle3",
        32000,
        4096,
        1e-6,
    )
    # transformers-5 style rope fields.
    scaled = HeadConfig.from_dict(
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "vocab_size": 10,
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
        }
    )
    assert scaled.rope_theta == 1000.0 and scaled.rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_configs_round_trip():
    for config in (head_config("eagle1"), head_config("eagle3", draft_vocab=48, hidden=48)):
        again = HeadConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match=r"lacks required fields \['intermediate_size'\]"):
        HeadConfig.from_dict({"hidden_size": 8, "num_attention_heads": 2, "vocab_size": 10})
    base = {"hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 16, "vocab_size": 10}
    with pytest.raises(ValueError, match="one-layer"):
        HeadConfig.from_dict({**base, "num_hidden_layers": 2})
    with pytest.raises(ValueError, match="'dynamic' is not supported"):
        make_head(HeadConfig.from_dict({**base, "rope_scaling": {"type": "dynamic", "factor": 2.0}}))


def test_state_dicts_use_the_official_key_names():
    assert set(make_head(head_config("eagle1")).state_dict()) == EAGLE1_KEYS
    assert set(make_head(head_config("eagle3")).state_dict()) == EAGLE3_KEYS
    own = make_head(head_config("eagle3"), own_embedding=True)
    assert set(own.state_dict()) == EAGLE3_KEYS | {"embed_tokens.weight"}


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "pytorch_bin"])
@pytest.mark.parametrize("kind", ["eagle1", "eagle3"])
def test_both_file_types_load_and_generate(target, tmp_path, kind, safetensors):
    root, model = target
    head = save_random_head(tmp_path / "head", kind, seed=2, safetensors=safetensors)
    files = {p.name for p in (tmp_path / "head").iterdir()}
    assert files == {"config.json", SAFETENSORS_FILE if safetensors else PYTORCH_FILE}
    loaded = load_head(tmp_path / "head", target_config=model.config, dtype=torch.float32, device="cpu")
    assert type(loaded) is (Eagle1Head if kind == "eagle1" else Eagle3Head)
    for name, value in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    eagle = EagleModel.from_pretrained(
        root / "target",
        tmp_path / "head",
        tree=DynamicTree(top_k=2, depth=2, tree_size=6),
        max_seq_len=64,
        dtype=torch.float32,
        device="cpu",
    )
    prompt = [3, 1, 4, 1, 5]
    assert eagle.eagenerate([prompt], max_new_tokens=8).tokens == [greedy_reference(model, prompt, 8)]


def test_optional_keys(target, tmp_path):
    """d2t / t2d may be absent when the draft vocabulary is the target's; loading in bf16 keeps them integral."""
    _, model = target
    save_random_head(tmp_path, "eagle3")
    state = load_file(tmp_path / SAFETENSORS_FILE)
    save_file({k: v for k, v in state.items() if k not in ("d2t", "t2d")}, tmp_path / SAFETENSORS_FILE)
    head = load_head(tmp_path, target_config=model.config, dtype=torch.bfloat16, device="cpu")
    assert head.d2t.dtype == torch.int64 and not head.d2t.any() and head.t2d.all()
    assert head.fc.weight.dtype == torch.bfloat16 and head.rotary_emb.inv_freq.dtype == torch.float32


def broken(state: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    state = dict(state)
    if how == "missing":
        del state["fc.weight"]
    elif how == "extra":
        state["layers.1.mlp.up_proj.weight"] = torch.zeros(1)
    else:
        state["fc.weight"] = state["fc.weight"][:, :-1].contiguous()
    return state


MESSAGES = {
    "missing": r"missing keys \['fc.weight'\], unexpected keys \[\], wrong shapes \[\]",
    "extra": r"missing keys \[\], unexpected keys \['layers.1.mlp.up_proj.weight'\]",
    "shape": r"wrong shapes \['fc.weight \[32, 63\] \(expected \[32, 64\]\)'\]",
}


@pytest.mark.parametrize("how", MESSAGES)
@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "pytorch_bin"])
def test_broken_checkpoints_list_the_keys(target, tmp_path, how, safetensors):
    _, model = target
    head = save_random_head(tmp_path, "eagle1", safetensors=safetensors)
    state = broken(head.state_dict(), how)
    if safetensors:
        save_file(state, tmp_path / SAFETENSORS_FILE)
    else:
        torch.save(state, tmp_path / PYTORCH_FILE)
    with pytest.raises(ValueError, match=MESSAGES[how]):
        load_head(tmp_path, target_config=model.config, dtype=torch.float32, device="cpu")


def test_heads_that_do_not_fit_the_target(target, tmp_path):
    _, model = target
    save_head(make_head(head_config("eagle1", vocab=50)), tmp_path / "vocab")
    with pytest.raises(ValueError, match="vocab_size 50 != the target's 96"):
        load_head(tmp_path / "vocab", target_config=model.config, dtype=torch.float32, device="cpu")
    save_head(make_head(head_config("eagle1", hidden=48)), tmp_path / "hidden")
    with pytest.raises(ValueError, match="hidden_size 48 != the target's 32"):
        load_head(tmp_path / "hidden", target_config=model.config, dtype=torch.float32, device="cpu")
    save_head(make_head(head_config("eagle3", hidden=48)), tmp_path / "no-embedding")  # 48 wide, target 32
    with pytest.raises(ValueError, match=r"must carry its own embed_tokens\.weight"):
        load_head(tmp_path / "no-embedding", target_config=model.config, dtype=torch.float32, device="cpu")
    bad_d2t = make_head(head_config("eagle3", draft_vocab=48))
    bad_d2t.d2t.fill_(60)
    save_head(bad_d2t, tmp_path / "d2t")
    with pytest.raises(ValueError, match="d2t maps draft ids outside the target vocabulary"):
        load_head(tmp_path / "d2t", target_config=model.config, dtype=torch.float32, device="cpu")
    (tmp_path / "weightless").mkdir()
    (tmp_path / "weightless" / "config.json").write_text(json.dumps(head_config("eagle1").to_dict()))
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors or pytorch_model\.bin"):
        load_head(tmp_path / "weightless", target_config=model.config, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize(
    "rope",
    [
        None,
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ],
)
@pytest.mark.parametrize("kind", ["eagle1", "eagle3"])
def test_head_rotary_equals_the_llama_rotary_module(kind, rope):
    fields = head_config(kind).to_dict() | ({"rope_scaling": rope} if rope else {})
    head = make_head(HeadConfig.from_dict(fields))
    positions = torch.randint(0, 5000, (2, 7), generator=torch.Generator().manual_seed(0))
    x = torch.zeros(2, 7, head.config.hidden_size, dtype=torch.bfloat16)
    for ours, theirs in zip(head.rotary(x, positions), head.rotary_emb(x, positions), strict=True):
        assert ours.dtype == theirs.dtype == torch.bfloat16
        assert torch.equal(ours, theirs)
