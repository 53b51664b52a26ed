"""Tiny generative judges: causal chat LMs in their real layouts (Qwen3 with its think block, Gemma-2 with its
soft-capping, Mistral-Instruct, a Qwen3 whose template takes Nemotron GenRM's response roles), random but seeded,
and one trained briefly to answer in the judge presets' formats (a think block, then a verdict) with a preference
that can be checked: more warm words (the demo's) beat fewer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from .builders import _ids, _save, _spread, _write_config, causal_lm_step
from .tokenizers import QWEN3_CHAT_TEMPLATE, build_chatml_tokenizer, build_gemma_tokenizer, build_mistral_tokenizer


def _save_causal_lm(path: Path, model, cfg, architecture: str, stops: list[int]) -> None:
    _spread(model, 0.2)
    _save({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}, path)
    cfg_dict = cfg.to_dict()
    cfg_dict.update(architectures=[architecture], torch_dtype="bfloat16")
    _write_config(cfg_dict, path)
    text = cfg.get_text_config(decoder=True)  # a vision-language model's ids are its language model's
    (path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": text.bos_token_id, "eos_token_id": stops, "pad_token_id": text.pad_token_id}, indent=2))


def build_genrm_qwen3(path: Path, seed: int = 12, chat_template: str = QWEN3_CHAT_TEMPLATE) -> None:
    """A Qwen3 chat model (``Qwen3ForCausalLM``, q/k norms, the Qwen3 template with its think block and its
    ``enable_thinking`` switch) as a judge: the layout of Qwen3-Reranker and of Qwen3-based judges."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    vocab = build_chatml_tokenizer(path, chat_template, thinking=True)
    pad, eos = _ids(path, "<|endoftext|>", "<|im_end|>")
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=4096,
                      rope_theta=1000000.0, rms_norm_eps=1e-6, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    _save_causal_lm(path, Qwen3ForCausalLM(cfg), cfg, "Qwen3ForCausalLM", [eos, pad])


# A ChatML template that renders any role, as Nemotron GenRM's does for its response_1 / response_2 turns (a
# stand-in: the real checkpoint brings its own template, which rmplugins renders as it is).
NEMOTRON_STYLE_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")


def build_genrm_nemotron(path: Path, seed: int = 13) -> None:
    """A Qwen3 judge whose chat template takes the two responses as roles (the Nemotron GenRM interface)."""
    build_genrm_qwen3(path, seed, chat_template=NEMOTRON_STYLE_TEMPLATE)


def build_genrm_gemma2(path: Path, seed: int = 14) -> None:
    """A Gemma-2 chat model (``Gemma2ForCausalLM``: attention and final-logit soft-capping, sliding-window layers)
    as a judge."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    vocab = build_gemma_tokenizer(path)
    pad, eos, bos, end_of_turn = _ids(path, "<pad>", "<eos>", "<bos>", "<end_of_turn>")
    cfg = Gemma2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                       sliding_window=128, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                       max_position_embeddings=4096, pad_token_id=pad, eos_token_id=eos, bos_token_id=bos)
    torch.manual_seed(seed)
    _save_causal_lm(path, Gemma2ForCausalLM(cfg), cfg, "Gemma2ForCausalLM", [eos, end_of_turn])


def build_genrm_mistral(path: Path, seed: int = 15) -> None:
    """A Mistral-Instruct chat model (``MistralForCausalLM``, its template without a system role) as a judge."""
    from transformers import MistralConfig, MistralForCausalLM

    vocab = build_mistral_tokenizer(path)
    bos, eos = _ids(path, "<s>", "</s>")
    cfg = MistralConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=4096,
                        sliding_window=4096, rope_theta=10000.0, bos_token_id=bos, eos_token_id=eos,
                        tie_word_embeddings=False)
    torch.manual_seed(seed)
    _save_causal_lm(path, MistralForCausalLM(cfg), cfg, "MistralForCausalLM", [eos])


PAIRWISE_THOUGHT = "<think>\nI compare the two answers.\n</think>\n\n"
POINTWISE_THOUGHT = "<think>\nI rate the answer.\n</think>\n\n"


def _warm_examples(rng: random.Random, tokenizer) -> list[tuple[str, str]]:
    """(judge prompt, the answer the trained judge should write) for each preset format it learns: J1's pairwise
    verdict after a think block, J1's pointwise score, Qwen3-Reranker's yes/no. The better response is the one with
    more warm words."""
    from ..judges import PRESETS
    from ..recipes.demo_loop import TOPICS, sample_response, warm_fraction

    question = f"Tell me about {rng.choice(TOPICS)}."
    context = [{"role": "user", "content": question}]
    while True:
        a, b = sample_response(rng, rng.random()), sample_response(rng, rng.random())
        if warm_fraction(a) != warm_fraction(b):
            break
    better = "A" if warm_fraction(a) > warm_fraction(b) else "B"
    out = []
    spec = PRESETS["j1-pairwise"]
    text = tokenizer.apply_chat_template(spec.messages(context, a, b), tokenize=False, add_generation_prompt=True)
    out.append((text, f"{PAIRWISE_THOUGHT}[[{better}]]"))
    spec = PRESETS["j1-pointwise"]
    text = tokenizer.apply_chat_template(spec.messages(context, a), tokenize=False, add_generation_prompt=True)
    out.append((text, f"{POINTWISE_THOUGHT}<score>{round(10 * warm_fraction(a))}</score>"))
    spec = PRESETS["qwen3-reranker"]
    text = tokenizer.apply_chat_template(spec.messages(context, a), tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)
    out.append((text, "yes" if warm_fraction(a) >= 0.5 else "no"))
    return out


def build_genrm_trained(path: Path, seed: int = 16, steps: int = 300) -> None:
    """The tiny Qwen3 judge, fine-tuned (seeded, a few hundred steps on CPU) to answer in the presets' formats and to
    prefer the response with more warm words: generating judges then find their verdicts, and a judge's rewards
    can be checked to rank warm answers first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build_genrm_qwen3(path, seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id
    for _ in range(steps):
        rows, labels = [], []
        for _ in range(3):
            for prompt, answer in _warm_examples(rng, tokenizer):
                head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                tail = tokenizer(answer, add_special_tokens=False)["input_ids"] + [end]
                rows.append(head + tail)
                labels.append([-100] * len(head) + tail)
        loss = causal_lm_step(model, opt, rows, labels, pad, by_length=True)
    model.eval()
    model.to(torch.bfloat16).save_pretrained(str(path))
    (path / "training.json").write_text(json.dumps({"steps": steps, "final_loss": loss.item()}, indent=2))
