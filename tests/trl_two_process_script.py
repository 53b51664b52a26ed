"""Run by test_trl_trainers under ``torchrun --nproc_per_node 2`` (gloo on CPU): one GRPO step where each process
scores 3 completions in groups of 2, so a group straddles the processes. Writes ``rank{r}.json`` to argv[1]."""

import json
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from rmplugins import RewardFunction
from rmplugins.testing import tiny_checkpoint

out = sys.argv[1]
policy = tiny_checkpoint("policy")
model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(policy)
rf = RewardFunction(tiny_checkpoint("pair_pm"), device="cpu", num_generations=2)
data = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in
                                     ["What is a cat?", "Name a color.", "Say hello.", "Count to three."] * 2]})
args = GRPOConfig(output_dir=f"{out}/run", max_steps=1, logging_steps=1, report_to="none", use_cpu=True, bf16=False,
                  save_strategy="no", per_device_train_batch_size=3, num_generations=2, max_completion_length=6,
                  beta=0.0, seed=0, disable_tqdm=True)
trainer = GRPOTrainer(model=model, reward_funcs=[rf], args=args, train_dataset=data, processing_class=tok)
trainer.train()
rank = trainer.accelerator.process_index
call = rf.last_call
breakdown = rf.pop_breakdown()
# then a call as GRPO makes it whose straddling group has an unreadable row on rank 0: rank 1's row of that group is
# left without a rival; each process logs its own rows' kinds
cat, color, count = ([{"role": "user", "content": q}] for q in ("What is a cat?", "Name a color.", "Count to three."))
said = [[{"role": "assistant", "content": a}] for a in ("A pet.", "An animal.", "Blue.", "One, two.", "1 2 3.")]
unreadable = [{"role": "assistant", "content": 42}]
rows = ([cat, cat, color], [said[0], said[1], unreadable]) if trainer.accelerator.process_index == 0 else (
    [color, count, count], [said[2], said[3], said[4]])
logged = {}
refused = rf(prompts=rows[0], completions=rows[1], completion_ids=None, log_metric=lambda k, v: logged.update({k: v}))
with open(f"{out}/rank{rank}.json", "w") as fh:
    json.dump({"prompts": call["prompts"], "completions": call["completions"], "rewards": call["rewards"],
               "lengths": trainer.accelerator.gather_for_metrics([len(call["prompts"])], use_gather_object=True),
               "gathered": breakdown.get(f"{rf.__name__}/gathered") == 1.0,
               "trainer_rewards": list(trainer._logs["rewards"][rf.__name__]),
               "refused": {"rewards": refused, "kinds": {str(k): v for k, v in rf.last_call["kinds"].items()},
                           "logged": {k.rsplit("/", 2)[-2] + "/" + k.rsplit("/", 1)[-1]: v for k, v in logged.items()
                                      if "none_frac" in k}}}, fh)
# Leave no process group (and its gloo threads) for interpreter shutdown: torchrun reports an abort otherwise.
trainer.accelerator.wait_for_everyone()
torch.distributed.destroy_process_group()
