"""The whole iterative-DPO loop on built-in tiny models, on CPU, offline (``rmplugins demo``).

How the demo's models are made (once, cached next to the tiny checkpoints):

- **Reward model**: the tiny FsfairX-LLaMA3-RM-layout Bradley-Terry checkpoint
  (``tiny_checkpoint("bt_llama3", tiny_dir)``),
  trained for 400 steps with the Bradley-Terry loss on a synthetic preference: a response made of warm
  words (``good``, ``love``, ``thanks``, ...) beats one made of cold words (``hate``, ``cannot``, ``no``, ``not``),
  and the more warm words the better. It is saved as a normal ``LlamaForSequenceClassification`` checkpoint and
  loaded back through ``rmplugins.load_reward_model`` like any hub model.
- **Policy**: the tiny Llama-3-chat policy (``tiny_checkpoint("policy")``), fine-tuned briefly on six-word answers
  whose words are warm or cold with even odds, so it starts as a 50/50 mixture: a behaviour the reward can tell
  apart and that DPO can shift.

Then ``rmplugins iterative-dpo`` runs 2 iterations (4 candidates per prompt, chosen = best, rejected = worst by
reward, TRL's DPOTrainer against the initial policy) plus a final evaluation of the last policy, and the table
shows the mean reward of each policy's samples rising.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path

from ..testing import build_directory_atomically, tiny_checkpoint, tiny_root
from ..testing.builders import causal_lm_step

logger = logging.getLogger("rmplugins.demo")

DEMO_VERSION = "3"
WARM = ("good", "love", "thanks", "lovely", "helpful", "honest")
COLD = ("hate", "cannot", "no", "not")
TOPICS = ("books", "the weather", "python code", "paris", "math", "a poem", "the city", "music", "your day",
          "the world", "time", "people", "work", "a story", "the capital", "numbers")
TEMPLATES = ("Tell me about {}.", "What do you think of {}?")


def demo_prompts() -> list[str]:
    return [t.format(topic) for topic in TOPICS for t in TEMPLATES]


def sample_response(rng: random.Random, p_warm: float, words: int = 6) -> str:
    return " ".join(rng.choice(WARM) if rng.random() < p_warm else rng.choice(COLD) for _ in range(words))


def warm_fraction(text: str) -> float:
    tokens = text.split()
    return sum(t in WARM for t in tokens) / max(1, len(tokens))


def _root(tiny_dir: str | None = None) -> Path:
    return tiny_root(tiny_dir) / f"demo-{DEMO_VERSION}"


def train_reward_model(out: Path, steps: int = 400, seed: int = 0, tiny_dir: str | None = None) -> None:
    """Bradley-Terry training of the tiny bt_llama3 checkpoint on warm-vs-cold pairs, encoded exactly as
    ``rmplugins`` scores them (the family's chat rendering, reward at the last token)."""
    import torch

    from ..loading import load_reward_model

    torch.manual_seed(seed)
    rng = random.Random(seed)
    rm = load_reward_model(tiny_checkpoint("bt_llama3", tiny_dir), dtype=torch.float32)
    model = rm.model.float().train()
    prompts = demo_prompts()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    pad = rm.tokenizer.pad_token_id if rm.tokenizer.pad_token_id is not None else rm.tokenizer.eos_token_id

    def rewards(texts, prompt_list):
        seqs = [rm.encode([{"role": "user", "content": p}, {"role": "assistant", "content": t}])
                for p, t in zip(prompt_list, texts)]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = torch.tensor([len(s) - 1 for s in seqs])
        return model.score(hidden[torch.arange(len(seqs)), last])[:, 0]

    for _ in range(steps):
        ps = [rng.choice(prompts) for _ in range(16)]
        a, b = [], []
        for _ in ps:
            while True:
                x, y = sample_response(rng, rng.random()), sample_response(rng, rng.random())
                if warm_fraction(x) != warm_fraction(y):
                    break
            a.append(x if warm_fraction(x) > warm_fraction(y) else y)
            b.append(y if warm_fraction(x) > warm_fraction(y) else x)
        loss = -torch.nn.functional.logsigmoid(rewards(a, ps) - rewards(b, ps)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    logger.info("demo reward model: final Bradley-Terry loss %.3f", loss.item())
    model.eval()
    model.save_pretrained(str(out))
    rm.tokenizer.save_pretrained(str(out))


def train_policy(out: Path, steps: int = 120, seed: int = 0, tiny_dir: str | None = None) -> None:
    """Supervised warm-up of the tiny policy on answers whose words are warm or cold with even odds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed + 1)
    src = tiny_checkpoint("policy", tiny_dir)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    prompts = demo_prompts()
    pad = tok.eos_token_id
    for _ in range(steps):
        seqs, labels = [], []
        for _ in range(16):
            msgs = [{"role": "user", "content": rng.choice(prompts)}]
            head = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": sample_response(rng, 0.5)}],
                                           tokenize=False)
            h_ids = tok(head, add_special_tokens=False)["input_ids"]
            f_ids = tok(full, add_special_tokens=False)["input_ids"]
            seqs.append(f_ids)
            labels.append([-100] * len(h_ids) + f_ids[len(h_ids):])
        loss = causal_lm_step(model, opt, seqs, labels, pad)
    logger.info("demo policy: final SFT loss %.3f", loss.item())
    model.eval()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    gen = json.loads((Path(src) / "generation_config.json").read_text())
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))


def demo_models(tiny_dir: str | None = None) -> tuple[str, str]:
    """(policy, reward model) directories of the demo, built on first use (about a minute on CPU), cached."""
    root = _root(tiny_dir)
    t0 = time.time()
    if not (root / "reward" / "config.json").exists() or not (root / "policy" / "config.json").exists():
        logger.info("training the demo's tiny reward model and policy (once; cached in %s)", root)
    rm = build_directory_atomically(root / "reward", lambda p: train_reward_model(p, tiny_dir=tiny_dir))
    policy = build_directory_atomically(root / "policy", lambda p: train_policy(p, tiny_dir=tiny_dir))
    if time.time() - t0 > 1:
        logger.info("built the demo models in %.0f s (cached in %s)", time.time() - t0, root)
    return str(policy), str(rm)


def demo_config(output: str, prompts_file: str, policy: str, rm: str, **overrides):
    from .config import RecipeConfig

    options = {"recipe": "iterative-dpo", "policy": policy, "reward_model": rm, "prompts": prompts_file,
               "output": output, "iterations": 2, "num_candidates": 4, "max_new_tokens": 10, "learning_rate": 1e-3,
               "epochs": 2, "beta": 0.1, "label_smoothing": 0.0, "batch_size": 8, "max_length": 64,
               "eval_final": True, "device": "cpu", "rm_device": "cpu", "chunk_size": 16}
    options.update(overrides)
    return RecipeConfig(**options)


def quiet() -> None:
    """Keep the demo's output to its tables and the per-iteration log lines."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()


def tiny_recipe_options(output: str) -> dict:
    """``RecipeConfig`` options that point a recipe at the demo's tiny models and prompts (written to
    ``output/prompts.jsonl``), sized for CPU: what the examples' ``--tiny`` runs."""
    policy, rm = demo_models()
    Path(output).mkdir(parents=True, exist_ok=True)
    prompts = Path(output) / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in demo_prompts()), encoding="utf-8")
    return {"policy": policy, "reward_model": rm, "prompts": str(prompts), "backend": "hf", "iterations": 1,
            "num_candidates": 4, "max_new_tokens": 8, "learning_rate": 1e-4, "max_length": 64, "batch_size": 8,
            "gradient_accumulation_steps": 1, "epochs": 1, "device": "cpu", "rm_device": "cpu",
            "show_progress": False}


def check_output(output: str) -> None:
    """The demo's ``--output``: a new or empty directory, or one a demo ran in (resumed); anything else is refused
    before anything is written into it (another run's directory, a file, a folder of the user's)."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {output} is a file, not a directory: give a new directory (or a demo's to resume)")
    if not out.is_dir() or not any(out.iterdir()):
        return
    run_file, prompts = out / "run.json", out / "prompts.jsonl"
    if not run_file.exists() and not prompts.exists():
        raise ValueError(f"--output {output} is a directory that holds other files and no demo run; give a new "
                         "directory (or a demo's to resume)")
    if run_file.exists():
        run = json.loads(run_file.read_text())
        if run.get("prompts") != os.path.abspath(prompts) or run.get("recipe") != "iterative-dpo":
            raise ValueError(f"--output {output} holds another run ({run.get('recipe')} on {run.get('prompts')}), "
                             "not a demo: give a new directory, or the demo's own directory to resume it")


def run_demo_loop(output: str | None = None, show_progress: bool = True, tiny_dir: str | None = None,
                  **overrides) -> dict:
    """Run the demo loop into ``output`` (a fresh temporary directory by default); returns the summary."""
    from .cli import format_table
    from .loop import run_recipe

    if not show_progress:
        quiet()
    policy, rm = demo_models(tiny_dir)
    scratch = None if output else tempfile.TemporaryDirectory(prefix="rmplugins-demo-")  # removed at the end
    output = output or scratch.name
    try:
        Path(output).mkdir(parents=True, exist_ok=True)
        prompts_file = Path(output) / "prompts.jsonl"
        if not prompts_file.exists():
            prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in demo_prompts()))
        summary = run_recipe(demo_config(output, str(prompts_file), policy, rm, show_progress=show_progress,
                                         **overrides))
        print()
        import torch

        print("Iterative DPO on the tiny demo models (mean reward of each policy's 4 samples per prompt; the digits "
              f"are those of this CPU's {torch.backends.cpu.get_cpu_capability()} kernels):")
        print(format_table(summary))
        print(f"run directory: {output}" if scratch is None else
              "run directory: a temporary one, removed (pass --output DIR to keep the pairs and models)")
        return summary
    finally:
        if scratch is not None:
            scratch.cleanup()
