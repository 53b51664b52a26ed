"""Kind detection from what is on disk, and loading through the hub-id code path (offline cache)."""

import shutil

import pytest

import rmplugins
from rmplugins.loading import detect_kind, read_config, tensor_shapes

EXPECTED = {"bt": "bt", "bt_llama3": "bt", "armorm": "armorm", "pair_pm": "pair_pm", "pairrm": "pairrm",
            "better_pairrm": "pairrm", "gpm": "gpm"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detects_every_family_from_the_checkpoint(tiny, name):
    from pathlib import Path

    path = Path(tiny(name))
    assert detect_kind(read_config(path), tensor_shapes(path)) == EXPECTED[name]
    rm = rmplugins.load_reward_model(str(path), device="cpu")
    assert rm.kind == EXPECTED[name]


def test_real_layout_tensor_names(tiny):
    shapes = tensor_shapes(tiny("armorm"))
    assert shapes["regression_layer.weight"] == [19, 64]
    assert shapes["reward_transform_matrix"] == [19, 19]
    assert shapes["gating.logit_scale"] == [1]
    assert [shapes[f"gating.layers.{i}.weight"][0] for i in range(4)] == [32, 32, 32, 19]
    gpm = tensor_shapes(tiny("gpm"))
    assert gpm["value_head.weight"] == [6, 64] and gpm["prompt_head.weight"] == [3, 64]
    assert "lm_head.weight" in gpm
    pairrm = tensor_shapes(tiny("pairrm"))
    assert pairrm["head_layer.1.weight"] == [32, 64] and pairrm["head_layer.4.weight"] == [1, 32]
    assert any(k.startswith("pretrained_model.encoder.rel_embeddings") for k in pairrm)


def test_gpm_head_width_is_inferred_from_the_weights(tiny):
    rm = rmplugins.load_reward_model(tiny("gpm"), device="cpu")
    assert rm.value_head_dim == 6
    assert rm.model.prompt_head.out_features == 3


def test_better_pairrm_variant_follows_the_name(tiny):
    assert rmplugins.load_reward_model(tiny("better_pairrm"), device="cpu").variant == "better"
    assert rmplugins.load_reward_model(tiny("pairrm"), device="cpu").variant == "pairrm"
    assert rmplugins.load_reward_model(tiny("pairrm"), device="cpu", variant="better").variant == "better"


def test_unknown_option_names_the_kind(tiny):
    with pytest.raises(TypeError, match="not supported for kind 'bt'"):
        rmplugins.load_reward_model(tiny("bt"), device="cpu", tau=0.5)


def test_hub_id_loads_from_the_offline_cache(tiny, tmp_path, monkeypatch):
    """A hub id goes through huggingface_hub's snapshot resolution; here the cache is filled by hand."""
    repo = tmp_path / "hub" / "models--RLHFlow--ArmoRM-Llama3-8B-v0.1"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny("armorm"), snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    rm = rmplugins.load_reward_model("RLHFlow/ArmoRM-Llama3-8B-v0.1", device="cpu")
    local = rmplugins.load_reward_model(tiny("armorm"), device="cpu")
    assert rm.kind == "armorm"
    assert rm.score(["hi"], ["hello"]) == pytest.approx(local.score(["hi"], ["hello"]), abs=1e-6)


def test_missing_hub_id_says_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="Pass a local path"):
        rmplugins.load_reward_model("nobody/no-such-model", device="cpu")
