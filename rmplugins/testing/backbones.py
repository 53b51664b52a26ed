"""Reward models and judges on the 2026 backbones that are not plain attention stacks: Bradley-Terry classifiers as
``AutoModelForSequenceClassification`` makes them from a base model, and judges as the base models ship
(``*ForConditionalGeneration``: Qwen3.5 and Gemma-3 are vision-language models). Each is transformers' own class
saved in its own layout (bf16 weights, ``config.json`` with ``architectures``), so the engine meets exactly what a
hub checkpoint holds.

- Qwen3.5 (``Qwen3_5ForSequenceClassification``): vision-language, its text config inside ``text_config``; gated
  delta-rule (linear attention) layers between the attention ones, which keep a recurrent state, not keys/values.
- Gemma-3 (``Gemma3ForSequenceClassification``): vision-language; sliding-window layers (128 tokens here, so the
  tests cross the window) whose window lives in ``text_config`` too.
- Qwen3-MoE (``Qwen3MoeForSequenceClassification``): every MLP a sparse mixture of experts.
- GPT-OSS (``GptOssForSequenceClassification``): attention sinks (no SDPA path in transformers), sliding windows,
  a mixture of experts whose block also returns its router scores.
- DeepSeek-V3 (``DeepseekV3ForSequenceClassification``): multi-head latent attention (keys and values of other
  widths than the queries), dense first layer, then experts.
- GPM on Gemma (GPM-Gemma-2B's layout): ``GemmaForCausalLM`` tensors + ``value_head`` + ``prompt_head``; Gemma's
  embedding scale, GeGLU and (1 + w) norms, which a Llama reading of the same tensors loses.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .builders import _ids, _save, _save_bt, _write_config
from .judges import _save_causal_lm
from .tokenizers import QWEN3_CHAT_TEMPLATE, build_chatml_tokenizer, build_gemma_tokenizer

LAYER = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             head_dim=32,  # the smallest vLLM's CPU attention takes
             max_position_embeddings=4096, tie_word_embeddings=False)


def _chatml(path: Path) -> dict:
    """The Qwen3 chat template's tokenizer; its vocabulary size and special ids as config fields."""
    vocab = build_chatml_tokenizer(path, QWEN3_CHAT_TEMPLATE, thinking=True)
    pad, eos = _ids(path, "<|endoftext|>", "<|im_end|>")
    return dict(vocab_size=vocab, pad_token_id=pad, eos_token_id=eos, bos_token_id=pad)


def _qwen35_config(path: Path, **head):
    from transformers import Qwen3_5Config

    ids = _chatml(path)
    text = dict(LAYER, **ids, num_hidden_layers=4, layer_types=["linear_attention", "full_attention"] * 2,
                linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
                linear_conv_kernel_dim=4)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    return Qwen3_5Config(text_config=text, vision_config=vision, pad_token_id=ids["pad_token_id"],
                         tie_word_embeddings=False, **head)


def _gemma3_config(path: Path, **head):
    from transformers import Gemma3Config

    vocab = build_gemma_tokenizer(path)
    pad, eos, bos = _ids(path, "<pad>", "<eos>", "<bos>")
    text = dict(LAYER, vocab_size=vocab, num_hidden_layers=4, sliding_window=128, query_pre_attn_scalar=16,
                layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
                pad_token_id=pad, eos_token_id=eos, bos_token_id=bos)
    vision = dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2, image_size=28,
                  patch_size=14)
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, pad_token_id=pad,
                        eos_token_id=eos, bos_token_id=bos, **head)


def build_bt_qwen35(path: Path, seed: int = 11) -> None:
    from transformers import Qwen3_5ForSequenceClassification

    cfg = _qwen35_config(path, num_labels=1)
    torch.manual_seed(seed)
    _save_bt(path, Qwen3_5ForSequenceClassification(cfg), cfg, "Qwen3_5ForSequenceClassification")


def build_bt_gemma3(path: Path, seed: int = 12) -> None:
    from transformers import Gemma3ForSequenceClassification

    cfg = _gemma3_config(path, num_labels=1)
    torch.manual_seed(seed)
    _save_bt(path, Gemma3ForSequenceClassification(cfg), cfg, "Gemma3ForSequenceClassification")


def build_genrm_qwen35(path: Path, seed: int = 16) -> None:
    """Qwen3.5 as it ships (``Qwen3_5ForConditionalGeneration``), as a judge."""
    from transformers import Qwen3_5ForConditionalGeneration

    cfg = _qwen35_config(path)
    torch.manual_seed(seed)
    stops = _ids(path, "<|im_end|>", "<|endoftext|>")
    _save_causal_lm(path, Qwen3_5ForConditionalGeneration(cfg), cfg, "Qwen3_5ForConditionalGeneration", stops)


def build_genrm_gemma3(path: Path, seed: int = 17) -> None:
    """Gemma-3 as it ships (``Gemma3ForConditionalGeneration``), as a judge."""
    from transformers import Gemma3ForConditionalGeneration

    cfg = _gemma3_config(path)
    torch.manual_seed(seed)
    stops = _ids(path, "<end_of_turn>", "<eos>")
    _save_causal_lm(path, Gemma3ForConditionalGeneration(cfg), cfg, "Gemma3ForConditionalGeneration", stops)


def build_bt_qwen3_moe(path: Path, seed: int = 13) -> None:
    from transformers import Qwen3MoeConfig, Qwen3MoeForSequenceClassification

    cfg = Qwen3MoeConfig(**LAYER, **_chatml(path), num_hidden_layers=2, num_experts=4, num_experts_per_tok=2,
                         moe_intermediate_size=32, decoder_sparse_step=1, num_labels=1)
    torch.manual_seed(seed)
    _save_bt(path, Qwen3MoeForSequenceClassification(cfg), cfg, "Qwen3MoeForSequenceClassification")


def build_bt_gpt_oss(path: Path, seed: int = 14) -> None:
    from transformers import GptOssConfig, GptOssForSequenceClassification

    cfg = GptOssConfig(**LAYER, **_chatml(path), num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
                       sliding_window=128, layer_types=["sliding_attention", "full_attention"], num_labels=1)
    torch.manual_seed(seed)
    model = GptOssForSequenceClassification(cfg)
    for layer in model.model.layers:  # sinks spread wide, so that attending without them shows
        torch.nn.init.normal_(layer.self_attn.sinks, mean=1.0, std=1.0)
    _save_bt(path, model, cfg, "GptOssForSequenceClassification")


def build_bt_deepseek_v3(path: Path, seed: int = 15) -> None:
    from transformers import DeepseekV3Config, DeepseekV3ForSequenceClassification

    shape = {k: v for k, v in LAYER.items() if k != "head_dim"}  # MLA: the head widths below
    cfg = DeepseekV3Config(**dict(shape, num_key_value_heads=4), **_chatml(path), num_hidden_layers=2,
                           kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                           n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1,
                           moe_intermediate_size=32, n_group=1, topk_group=1, num_labels=1)
    torch.manual_seed(seed)
    _save_bt(path, DeepseekV3ForSequenceClassification(cfg), cfg, "DeepseekV3ForSequenceClassification")


def build_gpm_gemma(path: Path, seed: int = 18, value_head_dim: int = 6) -> None:
    from transformers import GemmaConfig, GemmaForCausalLM

    vocab = build_gemma_tokenizer(path)
    pad, eos, bos = _ids(path, "<pad>", "<eos>", "<bos>")
    cfg = GemmaConfig(**dict(LAYER, num_key_value_heads=1, head_dim=32), vocab_size=vocab, num_hidden_layers=2,
                      pad_token_id=pad, eos_token_id=eos, bos_token_id=bos)
    torch.manual_seed(seed)
    model = GemmaForCausalLM(cfg)
    for name, p in model.named_parameters():  # spread wide, the norms' weights too (Gemma scales by 1 + w)
        torch.nn.init.normal_(p, std=0.2 if p.dim() >= 2 else 0.3)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    g = torch.Generator().manual_seed(seed + 200)
    state["value_head.weight"] = (torch.randn(value_head_dim, cfg.hidden_size, generator=g) * 0.5).to(torch.bfloat16)
    state["prompt_head.weight"] = (torch.randn(value_head_dim // 2, cfg.hidden_size, generator=g) * 0.5
                                   ).to(torch.bfloat16)
    _save(state, path)
    _write_config(dict(cfg.to_dict(), architectures=["GemmaForCausalLM"], torch_dtype="bfloat16"), path)
