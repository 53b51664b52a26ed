"""The vLLM generation backend against the real vLLM API (the version the ``vllm`` extra pins, >= 0.33).

Runs only where vLLM and a CUDA GPU are present; elsewhere every test is skipped with the reason.
"""

import json

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'rmplugins[vllm]' on a Linux machine "
                                          "with a CUDA GPU); the vLLM generation backend is tested there")
torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="vLLM's generation backend needs a CUDA GPU")]

PROMPTS = ["Tell me something nice.", [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "What is the weather?"}]]


@pytest.fixture(scope="module")
def generator(tiny):
    from rmplugins.recipes.generation import VLLMGenerator

    gen = VLLMGenerator(tiny("policy"), seed=42, max_new_tokens=8, gpu_memory_utilization=0.2,
                        max_model_len=512)
    yield gen
    gen.close()


def test_n_samples_per_prompt_seeded_and_stopping_on_eos(generator):
    out = generator.generate(PROMPTS, 3, [11, 12])
    assert [len(c) for c in out] == [3, 3]
    assert all(isinstance(t, str) for c in out for t in c)
    assert generator.generate(PROMPTS, 3, [11, 12]) == out  # per-request seeds: reproducible
    assert generator.generate(PROMPTS[:1], 3, [11]) == out[:1]  # and independent of the batch
    assert "<|eot_id|>" not in "".join(t for c in out for t in c)
    assert generator.stop_token_ids()  # the policy's eos ids are passed as stop_token_ids


def test_sleep_wake_and_reload_weights(generator, tmp_path, tiny):
    import shutil

    before = generator.generate(PROMPTS, 2, [5, 6])
    generator.sleep()
    free_asleep = torch.cuda.mem_get_info()[0]
    generator.wake_up()
    assert torch.cuda.mem_get_info()[0] < free_asleep  # the engine took its memory back
    assert generator.generate(PROMPTS, 2, [5, 6]) == before
    # a "new iteration": the same weights copied elsewhere reload in place and sample identically
    copy = tmp_path / "policy-copy"
    shutil.copytree(tiny("policy"), copy)
    generator.sleep()
    generator.load(str(copy))
    assert generator.model_path == str(copy)
    assert generator.generate(PROMPTS, 2, [5, 6]) == before


def test_loop_with_the_vllm_backend(tiny, tmp_path):
    from rmplugins.recipes import RecipeConfig, run_recipe

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    summary = run_recipe(RecipeConfig(
        recipe="iterative-dpo", policy=tiny("policy"), reward_model=tiny("bt_llama3"), prompts=str(prompts),
        output=str(tmp_path / "run"), iterations=2, num_candidates=3, max_new_tokens=8, backend="vllm",
        gpu_memory_utilization=0.2, batch_size=2, epochs=1, max_length=128, show_progress=False))
    assert [it["iteration"] for it in summary["iterations"]] == ["iter-1", "iter-2"]
    assert all(it["selection"]["groups"] == 2 for it in summary["iterations"])
