"""Kind detection from what is on disk, and loading through the hub-id code path (offline cache)."""

import shutil

import pytest

import rmplugins
from rmplugins.checkpoints import detect_kind, read_config, tensor_shapes

EXPECTED = {"bt": "bt", "bt_llama3": "bt", "armorm": "armorm", "pair_pm": "pair_pm", "pairrm": "pairrm",
            "better_pairrm": "pairrm", "gpm": "gpm"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detects_every_family_from_the_checkpoint(tiny, name):
    from pathlib import Path

    path = Path(tiny(name))
    if name == "pair_pm":  # a plain causal LM: its files cannot say it is a judge; its rmplugins.json does
        with pytest.raises(ValueError, match="plain causal language model"):
            detect_kind(read_config(path), tensor_shapes(path))
    else:
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


def _copy(src, dst, identity=True):
    shutil.copytree(src, dst)
    if not identity:
        (dst / "rmplugins.json").unlink()
    return str(dst)


def test_pairrm_variant_comes_from_the_checkpoint_or_the_option_never_the_name(tiny, tmp_path, caplog):
    import logging

    # the same Better-PairRM files under a name that says nothing: still Better-PairRM, and the log says why
    with caplog.at_level(logging.INFO, logger="rmplugins"):
        renamed = rmplugins.load_reward_model(_copy(tiny("better_pairrm"), tmp_path / "better_pairrm_local"))
    assert renamed.variant == "better"
    assert "variant 'better' (from " in caplog.text and "rmplugins.json" in caplog.text
    assert rmplugins.load_reward_model(tiny("pairrm"), device="cpu").variant == "pairrm"
    assert rmplugins.load_reward_model(tiny("pairrm"), device="cpu", variant="better").variant == "better"
    # a PairRM-layout directory that says nothing, even named like Better-PairRM: refused, naming the option
    bare = _copy(tiny("better_pairrm"), tmp_path / "Better-PairRM", identity=False)
    with pytest.raises(ValueError, match="variant='pairrm'.*variant='better'"):
        rmplugins.load_reward_model(bare)
    assert rmplugins.load_reward_model(bare, variant="better").variant == "better"


def test_a_plain_causal_lm_is_not_taken_for_a_pair_preference_model(tiny, tmp_path):
    with pytest.raises(ValueError, match="plain causal language model.*kind='pair_pm'"):
        rmplugins.load_reward_model(tiny("policy"))  # the policy itself, passed by mistake
    bare = _copy(tiny("pair_pm"), tmp_path / "pair-preference-model-LLaMA3-8B", identity=False)
    with pytest.raises(ValueError, match="plain causal language model"):
        rmplugins.load_reward_model(bare)
    rm = rmplugins.load_reward_model(bare, kind="pair_pm")
    assert rm.kind == "pair_pm"
    reference = rmplugins.load_reward_model(tiny("pair_pm"))
    assert rm.compare(["hi"], ["a"], ["b"]) == reference.compare(["hi"], ["a"], ["b"])


def test_a_backbone_newer_than_the_installed_transformers_is_named_as_such(tiny, tmp_path):
    """A checkpoint whose model type the installed transformers does not know (a Qwen3.5 judge on transformers 5.0
    was called "not a reward-model family") is refused with the version and the upgrade, as a reward model and as a
    policy; a model type that comes with its own code (auto_map) is left to it."""
    import json

    import transformers

    for name, load in (("bt", rmplugins.load_reward_model), ("policy", rmplugins.checkpoints.check_policy)):
        newer = tmp_path / f"{name}-newer"
        _copy(tiny(name), newer)
        config = json.loads((newer / "config.json").read_text())
        (newer / "config.json").write_text(json.dumps({**config, "model_type": "llama9"}))
        with pytest.raises(ValueError, match=f"model type 'llama9' .* installed transformers "
                                             f"{transformers.__version__}: .* upgrade transformers"):
            load(newer)
    from pathlib import Path

    assert read_config(Path(tiny("armorm")))["auto_map"]  # ArmoRM's own code: its model type is its business


@pytest.mark.parametrize("name,kind,lacks", [("armorm", "gpm", "value_head.weight"), ("bt", "armorm", "regression"),
                                             ("gpm", "bt", "ForSequenceClassification"),
                                             ("pairrm", "pair_pm", "ForCausalLM")])
def test_a_wrong_kind_is_refused_with_the_reason(tiny, name, kind, lacks):
    with pytest.raises(ValueError, match=f"cannot be loaded as kind '{kind}'.*{lacks}"):
        rmplugins.load_reward_model(tiny(name), kind=kind)


def test_identity_file_is_validated(tiny, tmp_path):
    path = tmp_path / "pm"
    _copy(tiny("pair_pm"), path)
    (path / "rmplugins.json").write_text('{"kind": "pairpm"}')
    with pytest.raises(ValueError, match="rmplugins.json: expected"):
        rmplugins.load_reward_model(str(path))
    (path / "rmplugins.json").write_text('{"kind": ')
    with pytest.raises(ValueError, match="rmplugins.json: cannot read"):
        rmplugins.load_reward_model(str(path))


def test_unknown_option_names_the_kind_and_where_it_belongs(tiny, monkeypatch):
    import rmplugins.loading

    construct = rmplugins.loading._construct

    def never(*args, **kwargs):  # refused before the family loads anything
        raise AssertionError("loaded before the options were checked")

    monkeypatch.setattr(rmplugins.loading, "_construct", never)
    with pytest.raises(TypeError, match="kind 'bt' has no option 'tau' .*max_length.*option of kind 'gpm'"):
        rmplugins.load_reward_model(tiny("bt"), device="cpu", tau=0.5)
    with pytest.raises(TypeError, match="'max_lenght'.*did you mean 'max_length'"):
        rmplugins.load_reward_model(tiny("bt"), device="cpu", max_lenght=512)
    with pytest.raises(TypeError, match="'asynchronous'.*option of engine='vllm'"):
        rmplugins.load_reward_model(tiny("bt"), device="cpu", asynchronous=True)
    with pytest.raises(TypeError, match=r"field of the judge's spec: pass judge=rmplugins.PRESETS\['mt-bench'\]"
                                        r"\.with_options\(max_new_tokens=\.\.\.\)"):
        rmplugins.load_reward_model(tiny("genrm_qwen3"), kind="genrm", judge="mt-bench", max_new_tokens=64)
    with pytest.raises(TypeError, match="add \"temperature\" to my-judge.json"):  # a pair-PM option too: not named
        rmplugins.load_reward_model(tiny("genrm_qwen3"), kind="genrm", judge="my-judge.json", temperature=0.7)
    # what the message suggests loads
    monkeypatch.setattr(rmplugins.loading, "_construct", construct)
    rm = rmplugins.load_reward_model(tiny("genrm_qwen3"), kind="genrm", device="cpu",
                                     judge=rmplugins.PRESETS["mt-bench"].with_options(max_new_tokens=64))
    assert rm.spec.max_new_tokens == 64
    with pytest.raises(ValueError, match="variant='better' is a PairRM option.*kind 'bt'"):
        rmplugins.load_reward_model(tiny("bt"), device="cpu", variant="better")


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


def test_an_empty_name_and_a_chat_template_that_drops_the_text_are_refused(tiny):
    """Before: "" was read as the current directory, and chat_template="hello" scored every conversation as the
    text "hello" (one reward for everything); a template that writes each message is accepted."""
    for name in ("", "  ", None):
        with pytest.raises(ValueError, match="must be a checkpoint directory or a hub id"):
            rmplugins.load_reward_model(name)
    for template, message in [("hello", "leaves out the text of the user and the assistant message"),
                              ("{% for m in messages %}{{ m['role'] }}: {{ m['text'] }}\n{% endfor %}",
                               "leaves out the text of the user and the assistant message"),
                              ("{{ messages[0]['content'] }}", "leaves out the text of the assistant message"),
                              (5, "chat_template must be the text of a Jinja chat template"),
                              ("", "chat_template must be the text of a Jinja chat template")]:
        with pytest.raises(ValueError, match=message):
            rmplugins.load_reward_model(tiny("bt"), chat_template=template)
    own = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    rm = rmplugins.load_reward_model(tiny("bt"), chat_template=own)
    assert rm.score(["Hi"], ["Hello"]) != rm.score(["Hi"], ["Bye"])


def test_options_pairrm_takes_but_never_uses_are_refused(tiny):
    """max_length= and chat_template= were accepted by PairRM and ignored (its variant fixes both), and so was
    attn_implementation= (DeBERTa's attention is its own)."""
    for options in ({"max_length": 512}, {"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"},
                    {"attn_implementation": "sdpa"}):
        with pytest.raises(ValueError, match=f"{next(iter(options))}= does not apply to PairRM"):
            rmplugins.load_reward_model(tiny("pairrm"), **options)


def test_float32_stays_the_cpu_default_and_a_bf16_cpu_is_told_once(monkeypatch, caplog):
    """float32 is the reference's precision, so it stays the CPU default; where the CPU multiplies bf16 in hardware
    the user is told once that dtype='bfloat16' is there, and never where it is not; asked for where the CPU has no
    bf16 hardware, it is warned once that float32 is faster."""
    import logging

    import torch

    from rmplugins import placement

    assert isinstance(placement.cpu_has_fast_bf16(), bool)  # torch's own probes, on this CPU
    monkeypatch.setattr(placement, "_HINTED_BF16", [])
    monkeypatch.setattr(placement, "cpu_has_fast_bf16", lambda: False)
    with caplog.at_level(logging.INFO, logger="rmplugins"):
        assert placement.resolve_dtype(None, "cpu") == torch.float32
    assert "bfloat16" not in caplog.text
    monkeypatch.setattr(placement, "cpu_has_fast_bf16", lambda: True)
    with caplog.at_level(logging.INFO, logger="rmplugins"):
        assert placement.resolve_dtype(None, "cpu") == torch.float32
        assert placement.resolve_dtype("auto", "cpu") == torch.float32
        assert placement.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert caplog.text.count("dtype='bfloat16'") == 1
    assert "without AMX" not in caplog.text
    # asked for on a CPU that multiplies half precision in software (AVX2: bf16 7.6x slower than float32 here),
    # bf16 or fp16 is what the user gets, with a warning once (the README and --help say bf16 is the fast one)
    monkeypatch.setattr(placement, "_HINTED_SLOW_HALF", [])
    monkeypatch.setattr(placement, "cpu_has_fast_bf16", lambda: False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rmplugins"):
        assert placement.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
        assert placement.resolve_dtype(torch.float16, "cpu") == torch.float16
        assert placement.resolve_dtype("bfloat16", "cuda:0") == torch.bfloat16
        assert placement.resolve_dtype("float32", "cpu") == torch.float32
    slow = [r for r in caplog.records if "without AMX or AVX-512 BF16" in r.message]
    assert len(slow) == 1 and slow[0].levelname == "WARNING" and "dtype bfloat16" in slow[0].message, caplog.text


def test_weights_for_vllm_build_on_the_meta_device_on_every_transformers(tiny):
    """engine="vllm" builds the family with its weights on the meta device; transformers 5.25 fits the hub's kernels
    to every model by default and refuses to on meta ("Unsupported device type 'meta'"): the loader's keyword
    arguments leave them off there (``make compat`` runs this on 5.25)."""
    import torch
    import transformers

    from rmplugins.placement import model_kwargs

    kwargs = model_kwargs("meta", torch.float32, None, None)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny("bt"), **kwargs)
    assert model.score.weight.is_meta and not getattr(model, "use_kernels", False)
