"""The builders of the tiny checkpoints: each writes one family's real on-disk layout (``config.json`` with the
published ``architectures`` and extra fields, safetensors with the published tensor names, its tokenizer) into a
directory, with random but seeded weights spread wide enough that wrong math shows."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer

from .tokenizers import (
    QWEN3_CHAT_TEMPLATE,
    QWEN25_CHAT_TEMPLATE,
    build_chatml_tokenizer,
    build_deberta_tokenizer,
    build_gemma_tokenizer,
    build_llama3_tokenizer,
    build_mistral_tokenizer,
    build_published_llama3_tokenizer,
    build_published_mistral_tokenizer,
)


# ----------------------------------------------------------------------------- configs and weights
def _llama_config(vocab_size: int, max_position_embeddings: int = 2048, **extra):
    """Two query heads sharing one key/value head (GQA), head_dim 32: the smallest head size vLLM's CPU attention
    accepts, so vLLM can load the same tiny checkpoints as an independent reference."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_position_embeddings,
                      rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.08,
                      **extra)
    return cfg


def _spread(module: torch.nn.Module, std: float) -> None:
    """Re-draw every weight with a wide, seeded spread so that a wrong index or formula changes the scores."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            torch.nn.init.normal_(p, std=std)
        elif name.endswith("bias"):
            torch.nn.init.normal_(p, std=0.1)


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})


def _write_identity(path: Path, **identity: str) -> None:
    """What the files of a pair-PM or PairRM checkpoint cannot say (``loading.IDENTITY_FILE``), as a user writes it
    beside a local copy of the published model."""
    (path / "rmplugins.json").write_text(json.dumps(identity, sort_keys=True))


def _write_config(cfg_dict: dict, path: Path) -> None:
    cfg_dict = {k: v for k, v in cfg_dict.items() if not k.startswith("_")}
    (path / "config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True))


def causal_lm_step(model, optimizer, rows: list[list[int]], labels: list[list[int]], pad: int,
                   by_length: bool = False) -> torch.Tensor:
    """One supervised step of a tiny causal LM (the demo policy's and the trained judges' warm-ups), the labels -100
    where nothing is learnt; returns the loss. The rows are padded to one width; with ``by_length``, rows of similar
    length are padded together, a forward and backward each, their gradients summed over the whole step's label
    tokens: the same step up to rounding, without the cost of padding short rows to the longest (the judge's three
    prompt formats, 190-420 tokens: half the time)."""
    groups = [list(range(len(rows)))]
    options = {}
    if by_length:
        groups = []
        for i in sorted(range(len(rows)), key=lambda i: len(rows[i])):
            if groups and len(rows[i]) <= 1.2 * len(rows[groups[-1][0]]):
                groups[-1].append(i)
            else:
                groups.append([i])
        options["num_items_in_batch"] = sum(sum(x != -100 for x in lb[1:]) for lb in labels)  # after the shift
    optimizer.zero_grad()
    loss = torch.zeros(())
    for group in groups:
        width = max(len(rows[i]) for i in group)
        ids = torch.tensor([rows[i] + [pad] * (width - len(rows[i])) for i in group])
        lab = torch.tensor([labels[i] + [-100] * (width - len(labels[i])) for i in group])
        mask = torch.tensor([[1] * len(rows[i]) + [0] * (width - len(rows[i])) for i in group])
        part = model(input_ids=ids, attention_mask=mask, labels=lab, **options).loss
        part.backward()
        loss += part.detach()
    optimizer.step()
    return loss


def _llama_backbone_state(cfg, seed: int) -> dict[str, torch.Tensor]:
    from transformers import LlamaModel

    torch.manual_seed(seed)
    backbone = LlamaModel(cfg)
    _spread(backbone, 0.2)  # wide enough that the last hidden state depends clearly on the content
    return {f"model.{k}": v.to(torch.bfloat16) for k, v in backbone.state_dict().items()}


def _positions(vocab: str) -> int:
    """Llama-3's 8,192-token context on the published vocabulary (2-4k-token prompts are tested there)."""
    return 2048 if vocab == "tiny" else 8192


def _llama3_tokenizer(path: Path, vocab: str) -> int:
    if vocab == "tiny":
        return build_llama3_tokenizer(path)
    return build_published_llama3_tokenizer(path, {"llama3": "3", "llama3.1": "3.1"}[vocab])


def _ids(path: Path, *tokens: str) -> list[int]:
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    return [tok.token_to_id(t) for t in tokens]


def build_bt(path: Path, seed: int = 0, vocab: str = "tiny") -> None:
    """RM-Mistral-7B layout: MistralForSequenceClassification, score.weight [1, hidden], added [PAD] token."""
    from transformers import MistralConfig, MistralForSequenceClassification

    vocab = build_mistral_tokenizer(path) if vocab == "tiny" else build_published_mistral_tokenizer(path)
    bos, eos, pad = _ids(path, "<s>", "</s>", "[PAD]")
    cfg = MistralConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                        sliding_window=4096, rope_theta=10000.0, bos_token_id=bos, eos_token_id=eos,
                        pad_token_id=pad, num_labels=1, tie_word_embeddings=False, initializer_range=0.08)
    torch.manual_seed(seed)
    model = MistralForSequenceClassification(cfg)
    _spread(model, 0.2)
    torch.nn.init.normal_(model.score.weight, std=0.5)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    _save(state, path)
    cfg_dict = cfg.to_dict()
    cfg_dict.update(architectures=["MistralForSequenceClassification"], torch_dtype="bfloat16",
                    id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    _write_config(cfg_dict, path)


def build_bt_llama3(path: Path, seed: int = 1, vocab: str = "tiny") -> None:
    """FsfairX-LLaMA3-RM layout: LlamaForSequenceClassification on the Llama-3 tokenizer."""
    positions, vocab = _positions(vocab), _llama3_tokenizer(path, vocab)
    bos, eos = _ids(path, "<|begin_of_text|>", "<|eot_id|>")
    cfg = _llama_config(vocab, positions, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    state = _llama_backbone_state(cfg, seed)
    g = torch.Generator().manual_seed(seed + 100)
    state["score.weight"] = (torch.randn(1, cfg.hidden_size, generator=g) * 0.5).to(torch.bfloat16)
    _save(state, path)
    cfg_dict = cfg.to_dict()
    cfg_dict.update(architectures=["LlamaForSequenceClassification"], torch_dtype="bfloat16",
                    id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    _write_config(cfg_dict, path)


def _save_bt(path: Path, model, cfg, architecture: str) -> None:
    """A ``*ForSequenceClassification`` with one label, weights spread and stored in bf16, as the hub's."""
    _spread(model, 0.2)
    torch.nn.init.normal_(model.score.weight, std=0.5)
    _save({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}, path)
    cfg_dict = cfg.to_dict()
    cfg_dict.update(architectures=[architecture], torch_dtype="bfloat16", id2label={"0": "LABEL_0"},
                    label2id={"LABEL_0": 0})
    _write_config(cfg_dict, path)


def build_bt_qwen(path: Path, version: str, seed: int = 7) -> None:
    """Skywork-Reward-V2-Qwen3 (``version`` "3": q/k norms, explicit head_dim, the Qwen3 template) or a Qwen2.5
    reward model ("2.5": biased q/k/v, the Qwen2.5 template with its default system message) layout:
    ``Qwen{3,2}ForSequenceClassification``, pad <|endoftext|>, EOS <|im_end|>, no BOS."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification, Qwen3Config, Qwen3ForSequenceClassification

    qwen3 = version == "3"
    vocab = build_chatml_tokenizer(path, QWEN3_CHAT_TEMPLATE if qwen3 else QWEN25_CHAT_TEMPLATE, thinking=qwen3)
    pad, eos = _ids(path, "<|endoftext|>", "<|im_end|>")
    shape = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6,
                 bos_token_id=pad, eos_token_id=eos, pad_token_id=pad, num_labels=1, tie_word_embeddings=False)
    torch.manual_seed(seed)
    if qwen3:
        cfg = Qwen3Config(head_dim=32, **shape)
        _save_bt(path, Qwen3ForSequenceClassification(cfg), cfg, "Qwen3ForSequenceClassification")
    else:
        cfg = Qwen2Config(use_sliding_window=False, **shape)
        _save_bt(path, Qwen2ForSequenceClassification(cfg), cfg, "Qwen2ForSequenceClassification")


def build_bt_gemma2(path: Path, seed: int = 8) -> None:
    """Skywork-Reward-Gemma-2-27B layout: ``Gemma2ForSequenceClassification`` with attention-logit soft-capping,
    sliding-window layers alternating with global ones (a 128-token window here, so the tests cross it), query
    scaling by ``query_pre_attn_scalar``, <pad> = 0, the Gemma template (BOS, no system role)."""
    from transformers import Gemma2Config, Gemma2ForSequenceClassification

    vocab = build_gemma_tokenizer(path)
    pad, eos, bos = _ids(path, "<pad>", "<eos>", "<bos>")
    cfg = Gemma2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                       sliding_window=128, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                       max_position_embeddings=4096, pad_token_id=pad, eos_token_id=eos, bos_token_id=bos,
                       num_labels=1)
    torch.manual_seed(seed)
    _save_bt(path, Gemma2ForSequenceClassification(cfg), cfg, "Gemma2ForSequenceClassification")


def _mlp_head_state(hidden: int, labels: int, seed: int) -> dict[str, torch.Tensor]:
    """``score.0`` (Linear(hidden, hidden)) and ``score.2`` (Linear(hidden, labels)) of a Linear-ReLU-Linear head."""
    g = torch.Generator().manual_seed(seed)
    return {"score.0.weight": torch.randn(hidden, hidden, generator=g) * hidden ** -0.5,
            "score.0.bias": torch.randn(hidden, generator=g) * 0.1,
            "score.2.weight": torch.randn(labels, hidden, generator=g) * 0.5,
            "score.2.bias": torch.randn(labels, generator=g) * 0.1}


def build_bt_inform(path: Path, seed: int = 9) -> None:
    """INF-ORM-Llama3.1-70B layout: a Llama-3.1 backbone (llama3 RoPE scaling, the published Llama-3.1 vocabulary
    and template) with INF-ORM's score head ``Linear(h, h) -> ReLU -> Linear(h, 1)`` stored as ``score.0.*`` and
    ``score.2.*`` (weights and biases); pad = <|finetune_right_pad_id|>, which chat text never contains."""
    vocab = _llama3_tokenizer(path, "llama3.1")
    bos, eos, pad = _ids(path, "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>")
    cfg = _llama_config(vocab, 131072, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, num_labels=1,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    state = _llama_backbone_state(cfg, seed)
    state.update(_mlp_head_state(cfg.hidden_size, 1, seed + 100))
    _save({k: v.to(torch.bfloat16) for k, v in state.items()}, path)
    cfg_dict = cfg.to_dict()
    cfg_dict.update(architectures=["INFORMForSequenceClassification"], torch_dtype="bfloat16",
                    id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    _write_config(cfg_dict, path)


def build_bt_llama32(path: Path, seed: int = 11) -> None:
    """Skywork-Reward-V2-Llama-3.2 layout: ``LlamaForSequenceClassification`` on a Llama-3.2 backbone (llama3 RoPE
    scaling with factor 32, 131,072 positions), the published Llama-3.1/3.2 vocabulary and template (the date
    block), pad = <|finetune_right_pad_id|>."""
    vocab = _llama3_tokenizer(path, "llama3.1")
    bos, eos, pad = _ids(path, "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>")
    cfg = _llama_config(vocab, 131072, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, num_labels=1,
                        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    _save_bt(path, LlamaForSequenceClassification(cfg), cfg, "LlamaForSequenceClassification")


def build_prm(path: Path, seed: int = 10) -> None:
    """Qwen2.5-Math-PRM layout: ``Qwen2ForProcessRewardModel`` (a Qwen2 backbone, biased q/k/v) with the head
    ``Linear(h, h) -> ReLU -> Linear(h, 2)`` as ``score.0.*`` / ``score.2.*``, the ChatML tokenizer with the
    ``<extra_0>`` step marker as an added special token, and the Qwen2.5 template."""
    from transformers import Qwen2Config, Qwen2Model

    build_chatml_tokenizer(path, QWEN25_CHAT_TEMPLATE, thinking=False)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.add_special_tokens([AddedToken("<extra_0>", special=True, normalized=False)])
    tok.save(str(path / "tokenizer.json"))
    tcfg = json.loads((path / "tokenizer_config.json").read_text())
    tcfg["added_tokens_decoder"][str(tok.token_to_id("<extra_0>"))] = {
        "content": "<extra_0>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
        "special": True}
    (path / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2))
    pad, eos = _ids(path, "<|endoftext|>", "<|im_end|>")
    cfg = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                      rope_theta=10000.0, rms_norm_eps=1e-6, use_sliding_window=False, bos_token_id=pad,
                      eos_token_id=eos, pad_token_id=pad, num_labels=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    backbone = Qwen2Model(cfg)
    _spread(backbone, 0.2)
    state = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    state.update(_mlp_head_state(cfg.hidden_size, 2, seed + 100))
    _save({k: v.to(torch.bfloat16) for k, v in state.items()}, path)
    cfg_dict = cfg.to_dict()
    cfg_dict.update(architectures=["Qwen2ForProcessRewardModel"], torch_dtype="bfloat16")
    _write_config(cfg_dict, path)


def build_armorm(path: Path, seed: int = 2, vocab: str = "tiny") -> None:
    """ArmoRM-Llama3-8B-v0.1 layout: LlamaModel + regression_layer [19, h] + gating MLP + transform matrix."""
    positions, vocab = _positions(vocab), _llama3_tokenizer(path, vocab)
    bos, eos = _ids(path, "<|begin_of_text|>", "<|eot_id|>")
    gate_dim, n_obj = 32, 19
    cfg = _llama_config(vocab, positions, bos_token_id=bos, eos_token_id=eos)  # Llama-3 configs carry no pad id
    state = _llama_backbone_state(cfg, seed)
    g = torch.Generator().manual_seed(seed + 100)
    h = cfg.hidden_size
    state["regression_layer.weight"] = torch.randn(n_obj, h, generator=g) * 0.3
    dims = [h, gate_dim, gate_dim, gate_dim, n_obj]
    for i in range(4):
        state[f"gating.layers.{i}.weight"] = torch.randn(dims[i + 1], dims[i], generator=g) * (3.0 / dims[i] ** 0.5)
        state[f"gating.layers.{i}.bias"] = torch.randn(dims[i + 1], generator=g) * 0.5
    state["gating.logit_scale"] = torch.tensor([1.7])
    state["reward_transform_matrix"] = torch.eye(n_obj) + torch.randn(n_obj, n_obj, generator=g) * 0.2
    _save(state, path)
    cfg_dict = cfg.to_dict()
    cfg_dict.update(architectures=["LlamaForRewardModelWithGating"], torch_dtype="bfloat16",
                    auto_map={"AutoModelForSequenceClassification": "modeling_custom.LlamaForRewardModelWithGating"},
                    num_objectives=n_obj, gating_temperature=10, gating_hidden_dim=gate_dim, gating_n_hidden=3,
                    id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    _write_config(cfg_dict, path)


def _causal_lm_state(path: Path, seed: int, pad_is_eos: bool, vocab: str = "tiny") -> tuple[dict, object]:
    positions, vocab = _positions(vocab), _llama3_tokenizer(path, vocab)
    bos, eos = _ids(path, "<|begin_of_text|>", "<|eot_id|>")
    cfg = _llama_config(vocab, positions, bos_token_id=bos, eos_token_id=eos,
                        pad_token_id=eos if pad_is_eos else None)
    state = _llama_backbone_state(cfg, seed)
    g = torch.Generator().manual_seed(seed + 100)
    state["lm_head.weight"] = (torch.randn(vocab, cfg.hidden_size, generator=g) * 0.3).to(torch.bfloat16)
    return state, cfg


def build_pair_pm(path: Path, seed: int = 3, vocab: str = "tiny") -> None:
    """RLHFlow pair-preference-model-LLaMA3-8B layout: a plain LlamaForCausalLM, pad = eos."""
    state, cfg = _causal_lm_state(path, seed, pad_is_eos=True, vocab=vocab)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    answers = [tok.encode("A", add_special_tokens=False).ids[0], tok.encode("B", add_special_tokens=False).ids[0]]
    state["lm_head.weight"][answers] *= 3  # a sharper judge, so that swapping or mixing up A/B shows
    _save(state, path)
    cfg_dict = cfg.to_dict()
    cfg_dict.update(architectures=["LlamaForCausalLM"], torch_dtype="bfloat16")
    _write_config(cfg_dict, path)
    _write_identity(path, kind="pair_pm")


def build_gpm(path: Path, seed: int = 4, value_head_dim: int = 6, vocab: str = "tiny") -> None:
    """GPM-Llama-3.1-8B layout: LlamaForCausalLM tensors + value_head [d, h] + prompt_head [d/2, h]; d not in config."""
    state, cfg = _causal_lm_state(path, seed, pad_is_eos=False, vocab=vocab)
    g = torch.Generator().manual_seed(seed + 200)
    state["value_head.weight"] = (torch.randn(value_head_dim, cfg.hidden_size, generator=g) * 0.5).to(torch.bfloat16)
    state["prompt_head.weight"] = (torch.randn(value_head_dim // 2, cfg.hidden_size, generator=g) * 0.5
                                   ).to(torch.bfloat16)
    _save(state, path)
    cfg_dict = cfg.to_dict()
    cfg_dict.update(architectures=["LlamaForCausalLM"], torch_dtype="bfloat16")
    _write_config(cfg_dict, path)
    tcfg = json.loads((path / "tokenizer_config.json").read_text())
    tcfg["padding_side"] = "left"
    (path / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2))


def build_policy(path: Path, seed: int = 5) -> None:
    """A tiny Llama-3-style chat policy (LlamaForCausalLM + generation_config) for the recipes and TRL tests."""
    state, cfg = _causal_lm_state(path, seed, pad_is_eos=False)
    _save(state, path)
    cfg_dict = cfg.to_dict()
    cfg_dict.update(architectures=["LlamaForCausalLM"], torch_dtype="bfloat16")
    _write_config(cfg_dict, path)
    eos = cfg.eos_token_id
    (path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg.bos_token_id, "eos_token_id": [eos], "do_sample": True, "temperature": 1.0,
         "top_p": 1.0}, indent=2))


def build_pairrm(path: Path, seed: int = 6, variant: str = "pairrm") -> None:
    """llm-blender PairRM layout: DebertaV2PairRM = pretrained_model.* (DeBERTa-v3) + head_layer.{1,4}."""
    from transformers import DebertaV2Config, DebertaV2Model

    ids = build_deberta_tokenizer(path)
    cfg = DebertaV2Config(vocab_size=ids["vocab_size"], hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=512, relative_attention=True,
                          position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                          pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
                          max_relative_positions=-1, layer_norm_eps=1e-7, hidden_act="gelu", pad_token_id=0,
                          initializer_range=0.1)
    torch.manual_seed(seed)
    backbone = DebertaV2Model(cfg)
    _spread(backbone, 0.1)
    state = {f"pretrained_model.{k}": v for k, v in backbone.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 100)
    h = cfg.hidden_size
    state["head_layer.1.weight"] = torch.randn(h, 2 * h, generator=g) * (2.0 / (2 * h) ** 0.5)
    state["head_layer.1.bias"] = torch.randn(h, generator=g) * 0.1
    state["head_layer.4.weight"] = torch.randn(1, h, generator=g) * (12.0 / h ** 0.5)
    state["head_layer.4.bias"] = torch.randn(1, generator=g) * 0.1
    _save(state, path)
    cfg_dict = cfg.to_dict()
    cfg_dict.update(architectures=["DebertaV2PairRM"], torch_dtype="float32", n_tasks=1, drop_out=0.05,
                    source_prefix_id=ids["<|source|>"], cand1_prefix_id=ids["<|candidate1|>"],
                    cand2_prefix_id=ids["<|candidate2|>"], cand_prefix_id=ids["<|candidate|>"], sep_token_id=2)
    _write_config(cfg_dict, path)
    _write_identity(path, kind="pairrm", variant=variant)
