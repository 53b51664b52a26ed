"""ArmoRM parity: the library against a re-implementation of the hub's ``LlamaForRewardModelWithGating`` and the
seed 002 card pipeline, one conversation at a time, on the tiny ArmoRM layout.

Reference, from the card and the hub modeling code (models.md section 2):
    input_ids = tokenizer.apply_chat_template(messages, return_tensors="pt")      # Llama-3 template, one BOS
    h = LlamaModel(input_ids).last_hidden_state
    reward position: (first pad - 1) % L when config.pad_token_id is set, else -1
    gating position: find_token_for_gating = start of the LAST occurrence of
        <|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n   (6 ids in the tiny tokenizer)
    rewards = regression_layer(h[reward pos]); gate = softmax(MLP(h[gate pos]) / T) * logit_scale[0]
    score = sum(gate * (rewards @ reward_transform_matrix), dim=1); coeffs = gate @ transform.T
The backbone comes from ``LlamaModel.from_pretrained`` and the heads straight from the safetensors file.
"""

from __future__ import annotations

import json
from pathlib import Path

import engines
import pytest
import torch
import torch.nn.functional as F
from engines import both
from reference_helpers import (
    ATOL,
    CANDIDATES,
    MULTI,
    MULTI_SYS,
    SINGLE,
    assert_close,
    assert_differs,
    conv,
    full_messages,
    pairwise_cases,
    pointwise_cases,
    sigmoid,
)
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaModel

from rmplugins import load_reward_model

ATTRIBUTES = ['helpsteer-helpfulness', 'helpsteer-correctness', 'helpsteer-coherence',
              'helpsteer-complexity', 'helpsteer-verbosity', 'ultrafeedback-overall_score',
              'ultrafeedback-instruction_following', 'ultrafeedback-truthfulness',
              'ultrafeedback-honesty', 'ultrafeedback-helpfulness', 'beavertails-is_safe',
              'prometheus-score', 'argilla-overall_quality', 'argilla-judge_lm', 'code-complexity',
              'code-style', 'code-explanation', 'code-instruction-following', 'code-readability']


class ReferenceArmoRM:
    def __init__(self, path: str):
        self.tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        self.backbone = LlamaModel.from_pretrained(path, dtype=torch.float32).eval()
        self.config = json.loads((Path(path) / "config.json").read_text())
        w = {k: v.float() for k, v in load_file(str(Path(path) / "model.safetensors")).items()
             if not k.startswith("model.")}
        self.w = w
        self.n_gate_layers = self.config["gating_n_hidden"] + 1
        self.temperature = self.config["gating_temperature"]
        # The hub code hard-codes Llama-3's ids [128009, 128006, 78191, 128007, 271]: on the published vocabulary
        # they are used as written; the tiny vocabulary has other ids, derived from the same text.
        derived = self.tokenizer.encode("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                                        add_special_tokens=False)
        if len(self.tokenizer) == 128256:
            self.token_pattern = [128009, 128006, 78191, 128007, 271]
            assert derived == self.token_pattern
        else:
            self.token_pattern = derived
            assert len(derived) == 6  # the tiny tokenizer splits "assistant" in two

    def find_token_for_gating(self, lst: list[int]) -> int:
        """Find the last occurrence of a token_pattern in a list (hub code)."""
        n = len(self.token_pattern)
        for j in range(len(lst) - n, -1, -1):
            if lst[j:j + n] == self.token_pattern:
                return j
        raise ValueError("Token pattern not found in the list.")

    def gating(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_gate_layers):
            x = F.linear(x, self.w[f"gating.layers.{i}.weight"], self.w[f"gating.layers.{i}.bias"])
            if i < self.n_gate_layers - 1:
                x = F.relu(x)
        x = F.softmax(x / self.temperature, dim=1)
        return x * self.w["gating.logit_scale"][0]

    def input_ids(self, messages: list[dict]) -> torch.Tensor:
        # The card's first snippet; its ArmoRMPipeline adds padding/truncation, no-ops for one short sample (and the
        # tiny tokenizer, like Llama-3's, has no pad token to pad with).
        out = self.tokenizer.apply_chat_template(messages, return_tensors="pt")
        return out["input_ids"] if not torch.is_tensor(out) else out

    @torch.no_grad()
    def __call__(self, messages: list[dict]) -> dict:
        input_ids = self.input_ids(messages)
        hidden = self.backbone(input_ids).last_hidden_state
        pad = self.config.get("pad_token_id")
        if pad is None:
            seq_len = torch.tensor([-1])
        else:
            seq_len = (torch.eq(input_ids, pad).int().argmax(-1) - 1) % input_ids.shape[-1]
        rows = torch.arange(input_ids.shape[0])
        rewards = F.linear(hidden[rows, seq_len], self.w["regression_layer.weight"])
        gate_pos = [self.find_token_for_gating(ids.tolist()) for ids in input_ids]
        gate = self.gating(hidden[rows, gate_pos, :])
        transform = self.w["reward_transform_matrix"]
        score = torch.sum(gate * (rewards @ transform), dim=1)
        return {"score": score.item(), "rewards": rewards[0], "gating_output": gate[0],
                "coefficients": (gate @ transform.T)[0], "gate_pos": gate_pos[0], "length": input_ids.shape[1],
                "hidden": hidden[0]}


@pytest.fixture(scope="module", params=both(["armorm", "armorm_real_vocab"]))  # tiny and published vocabularies
def setup(request, tiny, references):
    kind, engine = request.param
    path = tiny(kind)
    rm = engines.load(path, engine)
    yield rm, references(kind, lambda: ReferenceArmoRM(path))
    engines.close(rm)


def test_kind_detected(setup):
    assert setup[0].kind == "armorm"


def test_score_details_match_reference(setup):
    rm, ref = setup
    prompts, completions = pointwise_cases()
    details = rm.score_details(prompts, completions)
    want = [ref(full_messages(p, c)) for p, c in zip(prompts, completions)]
    assert_close(details["score"], [w["score"] for w in want], ATOL, "armorm score")
    assert_close(details["rewards"], torch.stack([w["rewards"] for w in want]), ATOL, "armorm rewards [N, 19]")
    assert_close(details["coefficients"], torch.stack([w["coefficients"] for w in want]), ATOL,
                 "armorm coefficients")
    assert list(details["objective_names"]) == ATTRIBUTES
    # the card's assertion: score == sum(rewards * coefficients)
    rewards = torch.as_tensor(details["rewards"])
    coeffs = torch.as_tensor(details["coefficients"])
    assert_close((rewards * coeffs).sum(dim=1), details["score"], 1e-4, "score = sum(rewards * coeffs)")
    assert_close(rm.score(prompts, completions), [w["score"] for w in want], ATOL, "armorm score()")


def test_bfloat16_keeps_the_heads_in_float32(tiny):
    """bf16 is the GPU default: the backbone runs in bf16, the regression layer and gating stay float32 (so the
    head arithmetic neither mixes dtypes nor rounds the 19 objectives); the scores stay within bf16 rounding."""
    path = tiny("armorm")
    prompts, completions = pointwise_cases()
    full = load_reward_model(path, dtype="float32").score_details(prompts, completions)
    rm = load_reward_model(path, dtype="bfloat16")
    assert rm.model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert {p.dtype for n, p in rm.model.named_parameters() if not n.startswith("model.")} == {torch.float32}
    half = rm.score_details(prompts, completions)
    scale = float(torch.as_tensor(full["score"]).abs().max())
    assert_close(half["score"], full["score"], 0.1 * scale, "armorm bf16 score")
    rewards, coeffs = torch.as_tensor(half["rewards"]), torch.as_tensor(half["coefficients"])
    assert_close((rewards * coeffs).sum(dim=1), half["score"], 1e-4, "bf16: score = sum(rewards * coeffs)")


def test_gating_reads_the_prompt_token(setup):
    """Non-vacuity: the gate position is not the last token, and gating there differs from the last token."""
    rm, ref = setup
    for prompt in (SINGLE, MULTI_SYS):
        out = ref(full_messages(prompt, CANDIDATES[2]))
        assert out["gate_pos"] < out["length"] - 1
        at_last = ref.gating(out["hidden"][-1:])[0]
        assert_differs(at_last, out["gating_output"], ATOL, "gate at last token vs. at gating token")
    # the LAST occurrence: in a multi-turn prompt the pattern also follows the first user turn
    ids = ref.input_ids(full_messages(MULTI, CANDIDATES[0]))[0].tolist()
    n = len(ref.token_pattern)
    first = next(j for j in range(len(ids)) if ids[j:j + n] == ref.token_pattern)
    assert first < ref.find_token_for_gating(ids)


def test_standard_and_conversational_forms(setup):
    rm, ref = setup
    got = rm.score([MULTI_SYS, SINGLE], [conv(CANDIDATES[1]), conv(CANDIDATES[4])])
    want = [ref(full_messages(MULTI_SYS, CANDIDATES[1]))["score"], ref(full_messages(SINGLE, CANDIDATES[4]))["score"]]
    assert_close(got, want, ATOL, "conversational")


def test_compare_is_sigmoid_of_score_gap(setup):
    rm, ref = setup
    prompts, a, b = pairwise_cases()
    got = rm.compare(prompts, a, b)
    want = [sigmoid(ref(full_messages(p, x))["score"] - ref(full_messages(p, y))["score"])
            for p, x, y in zip(prompts, a, b)]
    assert_close(got, want, ATOL, "armorm compare")


def test_rank_uses_scores(setup):
    rm, ref = setup
    for prompt in (SINGLE, MULTI_SYS):
        ranking = rm.rank(prompt, CANDIDATES)
        want = [ref(full_messages(prompt, c))["score"] for c in CANDIDATES]
        assert_close(ranking.scores, want, ATOL, "armorm rank")
        assert ranking.best == max(range(len(want)), key=lambda i: want[i])
        assert ranking.worst == min(range(len(want)), key=lambda i: want[i])
        assert_differs(max(want), min(want), ATOL, "rank spread")
