"""Real TRL trainers (GRPO, RLOO, online DPO) on CPU with the tiny policy and tiny reward models."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

import rmplugins
from rmplugins import RewardFunction

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is a cat?", "Name a color.", "Say hello.", "Count to three.", "Why is the sky blue?",
             "Give me a fruit."]


def _dataset(n, conversational=True):
    qs = (QUESTIONS * 4)[:n]
    prompts = [[{"role": "user", "content": q}] for q in qs] if conversational else qs
    return Dataset.from_dict({"prompt": prompts})


def _policy(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny("policy")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def _common(tmp_path, max_steps=1, **kw):
    return dict(output_dir=str(tmp_path / "out"), max_steps=max_steps, logging_steps=1, report_to="none", use_cpu=True,
                bf16=False, save_strategy="no", learning_rate=1e-5, seed=0, disable_tqdm=True, **kw)


def _metrics(trainer):
    merged = {}
    for entry in trainer.state.log_history:
        merged.update(entry)
    return merged


def _grpo_one_step(tiny, tmp_path, funcs):
    """One real GRPO step (4 completions, groups of 2) with ``funcs`` as reward_funcs; each is checked to have been
    called on the 4 completions and logged by TRL. Returns TRL's merged logs."""
    from trl import GRPOConfig, GRPOTrainer

    model, tok = _policy(tiny)
    args = GRPOConfig(**_common(tmp_path), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=8, beta=0.0)
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=_dataset(4),
                          processing_class=tok)
    trainer.train()
    logs = _metrics(trainer)
    for rf in funcs:
        assert rf.last_call is not None and len(rf.last_call["completions"]) == 4
        assert f"rewards/{rf.__name__}/mean" in logs
    return logs


def test_grpo_several_families_at_once(tiny, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    model, tok = _policy(tiny)
    armorm = RewardFunction(tiny("armorm"), device="cpu")
    pair_pm = RewardFunction(tiny("pair_pm"), device="cpu", num_generations=3)
    gpm = RewardFunction(tiny("gpm"), device="cpu")  # groups = runs of identical prompts
    args = GRPOConfig(**_common(tmp_path), per_device_train_batch_size=6, num_generations=3,
                      max_completion_length=8, beta=0.0)
    trainer = GRPOTrainer(model=model, reward_funcs=[armorm, pair_pm, gpm], args=args, train_dataset=_dataset(6),
                          processing_class=tok)
    trainer.train()
    logs = _metrics(trainer)
    for rf in (armorm, pair_pm, gpm):
        call = rf.last_call
        assert call is not None and len(call["completions"]) == 6
        assert f"rewards/{rf.__name__}/mean" in logs
        # the trainer's table holds exactly the rewards the function returned, for the trainer's completions
        assert list(trainer._logs["rewards"][rf.__name__]) == pytest.approx(call["rewards"], abs=1e-5)
        assert [x[0]["content"] for x in call["completions"]] == [
            x[0]["content"] if isinstance(x, list) else x for x in trainer._logs["completion"]]
    c = armorm.last_call
    assert c["rewards"] == pytest.approx(armorm.model.score(c["prompts"], c["completions"]), abs=1e-4)
    assert f"rewards/{armorm.__name__}/objective/helpsteer-helpfulness" in logs
    assert f"{armorm.__name__}/top_objectives" in trainer._logs["extra"]
    for rf in (pair_pm, gpm):
        c = rf.last_call
        expected = []
        for s in (0, 3):
            expected += rf.model.rank(c["prompts"][s], c["completions"][s:s + 3], method=rf.method).scores
        assert c["rewards"] == pytest.approx(expected, abs=1e-4)
    assert logs[f"rewards/{pair_pm.__name__}/comparisons"] == 6  # 2 groups x 3 pairs, round robin


def test_rloo_with_callbacks(tiny, tmp_path):
    from trl import RLOOConfig, RLOOTrainer

    from rmplugins.trl import CoLocationCallback, RewardBreakdownCallback, WinRateCallback

    model, tok = _policy(tiny)
    bt = RewardFunction(tiny("bt_llama3"), device="cpu", length_penalty=0.01, clip=50.0)
    pairrm = RewardFunction(tiny("pairrm"), device="cpu", num_generations=2, method="tournament")
    args = RLOOConfig(**_common(tmp_path, max_steps=2), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=8)
    trainer = RLOOTrainer(model=model, reward_funcs=[bt, pairrm], args=args, train_dataset=_dataset(8),
                          processing_class=tok)
    colocate = CoLocationCallback([bt, pairrm], device="cpu", offload_device="cpu")
    trainer.add_callback(colocate)
    breakdown = RewardBreakdownCallback([bt, pairrm], trainer=trainer, path=tmp_path / "breakdown.jsonl")
    judge = rmplugins.load_reward_model(tiny("pair_pm"), device="cpu")
    win = WinRateCallback(judge, trainer, prompts=QUESTIONS[:3], max_new_tokens=6, every_n_steps=1)
    # an untrained generating judge writes no [[A]]/[[B]]: no verdict is left out and counted, not a crash or a loss
    mute = rmplugins.load_reward_model(tiny("genrm_qwen3"), kind="genrm", device="cpu",
                                       judge=rmplugins.PRESETS["mt-bench"].with_options(max_new_tokens=4))
    unjudged = WinRateCallback(mute, trainer, prompts=QUESTIONS[:2], max_new_tokens=4, every_n_steps=2)
    trainer.train()

    logs = _metrics(trainer)
    assert f"rewards/{bt.__name__}/mean" in logs and f"rewards/{pairrm.__name__}/mean" in logs
    c = bt.last_call
    raw = bt.model.score(c["prompts"], c["completions"])
    assert c["raw"] == pytest.approx(raw, abs=1e-4)
    lengths = [len(ids) for ids in c["completion_ids"]]  # the trainer's completion token ids
    assert c["rewards"] == pytest.approx([max(-50.0, min(50.0, r - 0.01 * n)) for r, n in zip(raw, lengths)],
                                         abs=1e-4)
    # win rate: judged twice (steps 1 and 2) against the initial policy's greedy completions
    assert [r["step"] for r in win.results] == [1, 2]
    probs = judge.compare(QUESTIONS[:3], win.last_completions, win.reference)
    assert win.results[-1]["win_prob"] == pytest.approx(sum(probs) / 3, abs=1e-5)
    assert any("win_rate" in e for e in trainer.state.log_history)
    (last,) = unjudged.results
    assert last["win_no_verdict"] == 2 and math.isnan(last["win_rate"]) and math.isnan(last["win_prob"])
    # co-location: each scoring call acquired the model and offloaded it again
    events = [e for e, name, _ in colocate.history if name == bt.__name__]
    assert events[0] == "offload" and events.count("acquire") == bt.calls and events[-1] == "restore"
    # breakdown: in the logs and the JSON lines file
    assert f"breakdown/{bt.__name__}/length_penalty" in logs
    lines = [json.loads(x) for x in (tmp_path / "breakdown.jsonl").read_text().splitlines()]
    assert lines and f"breakdown/{pairrm.__name__}/comparisons" in lines[0]
    assert breakdown.reward_funcs == [bt, pairrm]


def test_online_dpo_with_pair_pm(tiny, tmp_path):
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from rmplugins.trl import RewardBreakdownCallback

    model, tok = _policy(tiny)
    ref, _ = _policy(tiny)
    pm = RewardFunction(tiny("pair_pm"), device="cpu")
    args = OnlineDPOConfig(**_common(tmp_path), per_device_train_batch_size=3, max_new_tokens=6, max_length=64)
    trainer = OnlineDPOTrainer(model=model, ref_model=ref, reward_funcs=[pm], args=args,
                               train_dataset=_dataset(3), processing_class=tok)
    RewardBreakdownCallback(pm, trainer=trainer)
    trainer.train()
    c = pm.last_call
    b = len(c["prompts"]) // 2
    assert b == 3 and c["prompts"][:b] == c["prompts"][b:]  # online DPO's block layout
    p = pm.model.compare(c["prompts"][:b], c["completions"][:b], c["completions"][b:])
    assert c["rewards"] == pytest.approx(list(p) + [1 - x for x in p], abs=1e-5)
    logs = _metrics(trainer)
    assert f"breakdown/{pm.__name__}/comparisons" in logs


def test_grpo_two_processes_group_straddles(tiny, tmp_path):
    """2 processes x 3 completions, groups of 2: the middle group is cut between the processes."""
    tiny("policy"), tiny("pair_pm")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    # torchrun: two CPU processes joined by gloo, which accelerate picks up (MULTI_CPU) from the environment
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "trl_two_process_script.py"), str(tmp_path)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for res in results:
        assert res["lengths"] == [3, 3] and res["gathered"]
    # stitched together, the two slices are whole groups scored with rank()
    prompts = results[0]["prompts"] + results[1]["prompts"]
    rewards = results[0]["rewards"] + results[1]["rewards"]
    assert prompts[2] == prompts[3]  # the straddling group
    rm = rmplugins.load_reward_model(tiny("pair_pm"), device="cpu")
    completions = results[0]["completions"] + results[1]["completions"]
    expected = []
    for s in range(0, 6, 2):
        expected += rm.rank(prompts[s], completions[s:s + 2], method="round_robin").scores
    assert rewards == pytest.approx(expected, abs=1e-4)
    assert results[0]["trainer_rewards"] == pytest.approx(rewards, abs=1e-4)
    # refusals across the processes keep their kind: rank 0's unreadable row, rank 1's row left without a rival
    first, second = results[0]["refused"], results[1]["refused"]
    assert first["rewards"][2] is None and None not in first["rewards"][:2] and first["kinds"] == {"2": "unreadable"}
    assert second["rewards"][0] is None and None not in second["rewards"][1:]
    assert second["kinds"] == {"0": "group_incomplete"}
    assert first["logged"]["none_frac/unreadable"] == pytest.approx(1 / 3)
    assert second["logged"]["none_frac/group_incomplete"] == pytest.approx(1 / 3)
